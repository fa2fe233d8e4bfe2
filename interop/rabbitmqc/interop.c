/* Interop scenarios for rabbitmq-c (librabbitmq): confirms, basic.get counts, a consumer
 * with manual acks, and 404 on a missing queue. Usage: interop HOST PORT QUEUE
 * Prints "ok   NAME" / "FAIL NAME: why" per scenario; exit status 0 only if all passed. */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failed;

#define CHECK(cond, ...)                                                     \
  do {                                                                       \
    if (!(cond)) {                                                           \
      printf("FAIL %s: ", scenario);                                         \
      printf(__VA_ARGS__);                                                   \
      printf("\n");                                                          \
      failed++;                                                              \
      return;                                                                \
    }                                                                        \
  } while (0)

static amqp_connection_state_t open_conn(const char *host, int port) {
  amqp_connection_state_t c = amqp_new_connection();
  amqp_socket_t *s = amqp_tcp_socket_new(c);
  if (!s || amqp_socket_open(s, host, port)) {
    fprintf(stderr, "cannot connect to %s:%d\n", host, port);
    exit(2);
  }
  amqp_rpc_reply_t r = amqp_login(c, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, "guest", "guest");
  if (r.reply_type != AMQP_RESPONSE_NORMAL) {
    fprintf(stderr, "login failed\n");
    exit(2);
  }
  amqp_channel_open(c, 1);
  if (amqp_get_rpc_reply(c).reply_type != AMQP_RESPONSE_NORMAL) {
    fprintf(stderr, "channel.open failed\n");
    exit(2);
  }
  return c;
}

static void confirms_gets_and_consume(const char *host, int port, const char *queue) {
  const char *scenario = "confirms_get_counts_and_manual_ack_consumer";
  amqp_connection_state_t c = open_conn(host, port);
  amqp_queue_declare(c, 1, amqp_cstring_bytes(queue), 0, 1, 0, 0, amqp_empty_table);
  CHECK(amqp_get_rpc_reply(c).reply_type == AMQP_RESPONSE_NORMAL, "queue.declare");
  amqp_confirm_select(c, 1);
  CHECK(amqp_get_rpc_reply(c).reply_type == AMQP_RESPONSE_NORMAL, "confirm.select");

  amqp_basic_properties_t props;
  props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
  props.delivery_mode = 2;
  char body[32];
  for (int i = 0; i < 100; i++) {
    snprintf(body, sizeof body, "m-%d", i);
    CHECK(amqp_basic_publish(c, 1, amqp_empty_bytes, amqp_cstring_bytes(queue), 0, 0, &props,
                             amqp_cstring_bytes(body)) == AMQP_STATUS_OK,
          "publish %d", i);
  }
  /* Every tag 1..100 confirmed exactly once (acks may cover ranges with `multiple`). */
  uint64_t confirmed = 0;
  while (confirmed < 100) {
    amqp_frame_t f;
    CHECK(amqp_simple_wait_frame(c, &f) == AMQP_STATUS_OK, "waiting for confirms");
    CHECK(f.frame_type == AMQP_FRAME_METHOD && f.payload.method.id == AMQP_BASIC_ACK_METHOD,
          "expected basic.ack, got frame %d method 0x%x", f.frame_type, f.payload.method.id);
    amqp_basic_ack_t *ack = f.payload.method.decoded;
    CHECK(ack->delivery_tag > confirmed, "tag %llu confirmed twice",
          (unsigned long long)ack->delivery_tag);
    CHECK(ack->multiple || ack->delivery_tag == confirmed + 1, "gap before tag %llu",
          (unsigned long long)ack->delivery_tag);
    confirmed = ack->delivery_tag;
  }

  /* basic.get: message_count is what is left after this one. */
  amqp_rpc_reply_t r = amqp_basic_get(c, 1, amqp_cstring_bytes(queue), 1);
  CHECK(r.reply_type == AMQP_RESPONSE_NORMAL && r.reply.id == AMQP_BASIC_GET_OK_METHOD,
        "basic.get");
  amqp_basic_get_ok_t *ok = r.reply.decoded;
  CHECK(ok->message_count == 99, "get-ok message_count %u", ok->message_count);
  amqp_message_t m;
  CHECK(amqp_read_message(c, 1, &m, 0).reply_type == AMQP_RESPONSE_NORMAL, "read message");
  CHECK(m.body.len == 3 && memcmp(m.body.bytes, "m-0", 3) == 0, "first body");
  CHECK(m.properties.delivery_mode == 2, "delivery_mode %d", m.properties.delivery_mode);
  amqp_destroy_message(&m);

  /* The other 99 through a consumer with prefetch 10 and manual acks, in order. */
  amqp_basic_qos(c, 1, 0, 10, 0);
  CHECK(amqp_get_rpc_reply(c).reply_type == AMQP_RESPONSE_NORMAL, "basic.qos");
  amqp_basic_consume(c, 1, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 0, 0,
                     amqp_empty_table);
  CHECK(amqp_get_rpc_reply(c).reply_type == AMQP_RESPONSE_NORMAL, "basic.consume");
  for (int i = 1; i < 100; i++) {
    amqp_envelope_t e;
    amqp_maybe_release_buffers(c);
    r = amqp_consume_message(c, &e, NULL, 0);
    CHECK(r.reply_type == AMQP_RESPONSE_NORMAL, "consume %d", i);
    snprintf(body, sizeof body, "m-%d", i);
    CHECK(e.message.body.len == strlen(body) && memcmp(e.message.body.bytes, body, strlen(body)) == 0,
          "body %d", i);
    CHECK(amqp_basic_ack(c, 1, e.delivery_tag, 0) == 0, "ack %d", i);
    amqp_destroy_envelope(&e);
  }
  amqp_queue_delete(c, 1, amqp_cstring_bytes(queue), 0, 0);
  amqp_channel_close(c, 1, AMQP_REPLY_SUCCESS);
  amqp_connection_close(c, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(c);
  printf("ok   %s\n", scenario);
}

static void missing_queue_404(const char *host, int port, const char *queue) {
  const char *scenario = "passive_declare_missing_queue_404";
  amqp_connection_state_t c = open_conn(host, port);
  char missing[300];
  snprintf(missing, sizeof missing, "%s.missing", queue);
  amqp_queue_declare(c, 1, amqp_cstring_bytes(missing), 1, 0, 0, 0, amqp_empty_table);
  amqp_rpc_reply_t r = amqp_get_rpc_reply(c);
  CHECK(r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
            r.reply.id == AMQP_CHANNEL_CLOSE_METHOD,
        "expected channel.close");
  amqp_channel_close_t *close = r.reply.decoded;
  CHECK(close->reply_code == 404, "reply code %d", close->reply_code);
  amqp_channel_close_ok_t close_ok;
  amqp_send_method(c, 1, AMQP_CHANNEL_CLOSE_OK_METHOD, &close_ok);
  amqp_connection_close(c, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(c);
  printf("ok   %s\n", scenario);
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s HOST PORT QUEUE\n", argv[0]);
    return 2;
  }
  int port = atoi(argv[2]);
  confirms_gets_and_consume(argv[1], port, argv[3]);
  missing_queue_404(argv[1], port, argv[3]);
  return failed ? 1 : 0;
}
