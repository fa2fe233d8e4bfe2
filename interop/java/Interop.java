// Interop scenarios for the RabbitMQ Java client (Debian's librabbitmq-client-java).
// Run: java -cp /usr/share/java/amqp-client.jar:/usr/share/java/slf4j-api.jar:. Interop AMQP_URL
// Prints "ok   NAME" or "FAIL NAME: why" per scenario, then "java: N passed, N failed".

import com.rabbitmq.client.*;
import java.nio.charset.StandardCharsets;
import java.util.*;
import java.util.concurrent.*;

public class Interop {
    static String run = UUID.randomUUID().toString().substring(0, 10);
    static ConnectionFactory factory = new ConnectionFactory();

    interface Scenario { void run(Connection c) throws Exception; }

    static String name(String suffix) { return "interop.java." + run + "." + suffix; }

    static void eq(Object actual, Object expected, String what) {
        if (!Objects.equals(actual, expected))
            throw new AssertionError(what + ": expected " + expected + ", got " + actual);
    }

    static byte[] utf8(String s) { return s.getBytes(StandardCharsets.UTF_8); }

    /** 500 persistent publishes, then waitForConfirmsOrDie; every one is in the queue. */
    static void confirms(Connection c) throws Exception {
        Channel ch = c.createChannel();
        String q = ch.queueDeclare(name("confirms"), true, false, false, null).getQueue();
        try {
            ch.confirmSelect();
            for (int i = 0; i < 500; i++)
                ch.basicPublish("", q, MessageProperties.PERSISTENT_BASIC, utf8("c-" + i));
            ch.waitForConfirmsOrDie(10_000);
            eq(ch.messageCount(q), 500L, "messages after confirms");
            eq(ch.getNextPublishSeqNo(), 501L, "next publish seq no");
        } finally {
            ch.queueDelete(q);
            ch.close();
        }
    }

    /** tx.commit makes publishes visible; tx.rollback drops them. */
    static void transactions(Connection c) throws Exception {
        Channel ch = c.createChannel();
        Channel watcher = c.createChannel();
        String q = ch.queueDeclare(name("tx"), false, false, false, null).getQueue();
        try {
            ch.txSelect();
            ch.basicPublish("", q, null, utf8("kept"));
            eq(watcher.messageCount(q), 0L, "before commit");
            ch.txCommit();
            eq(watcher.messageCount(q), 1L, "after commit");
            ch.basicPublish("", q, null, utf8("dropped"));
            ch.txRollback();
            eq(watcher.messageCount(q), 1L, "after rollback");
            GetResponse r = watcher.basicGet(q, true);
            eq(new String(r.getBody(), StandardCharsets.UTF_8), "kept", "body");
        } finally {
            ch.queueDelete(q);
            watcher.close();
            ch.close();
        }
    }

    /** basic.get reports what is left; a consumer with manual acks sees the rest in order. */
    static void getAndConsume(Connection c) throws Exception {
        Channel ch = c.createChannel();
        String q = ch.queueDeclare(name("consume"), false, false, false, null).getQueue();
        try {
            for (int i = 0; i < 20; i++) ch.basicPublish("", q, null, utf8("m-" + i));
            ch.confirmSelect();
            ch.basicPublish("", q, null, utf8("m-20"));
            ch.waitForConfirmsOrDie(5_000);
            GetResponse g = ch.basicGet(q, false);
            eq(g.getMessageCount(), 20, "message_count after one get");
            eq(new String(g.getBody(), StandardCharsets.UTF_8), "m-0", "first body");
            ch.basicAck(g.getEnvelope().getDeliveryTag(), false);
            ch.basicQos(5);
            List<String> got = Collections.synchronizedList(new ArrayList<>());
            CountDownLatch done = new CountDownLatch(20);
            ch.basicConsume(q, false, new DefaultConsumer(ch) {
                @Override
                public void handleDelivery(String tag, Envelope env, AMQP.BasicProperties props,
                                           byte[] body) throws java.io.IOException {
                    got.add(new String(body, StandardCharsets.UTF_8));
                    getChannel().basicAck(env.getDeliveryTag(), false);
                    done.countDown();
                }
            });
            if (!done.await(10, TimeUnit.SECONDS)) throw new AssertionError("only " + got.size());
            List<String> want = new ArrayList<>();
            for (int i = 1; i <= 20; i++) want.add("m-" + i);
            eq(got, want, "consumed in order");
        } finally {
            ch.queueDelete(q);
            ch.close();
        }
    }

    /** A missing queue is 404 and closes the channel (ShutdownSignalException). */
    static void missingQueue(Connection c) throws Exception {
        Channel ch = c.createChannel();
        try {
            ch.queueDeclarePassive(name("missing"));
            throw new AssertionError("passive declare of a missing queue succeeded");
        } catch (java.io.IOException e) {
            ShutdownSignalException s = (ShutdownSignalException) e.getCause();
            AMQP.Channel.Close close = (AMQP.Channel.Close) s.getReason();
            eq(close.getReplyCode(), 404, "reply code");
        }
        eq(ch.isOpen(), false, "channel open after 404");
    }

    public static void main(String[] args) throws Exception {
        String url = args.length > 0 ? args[0] : "amqp://guest:guest@127.0.0.1:5672/%2F";
        factory.setUri(url.replace("%2F", "%2f"));
        factory.setAutomaticRecoveryEnabled(false); // consumer recovery off, as the issue asks
        factory.setConnectionTimeout(5_000);
        Map<String, Scenario> scenarios = new LinkedHashMap<>();
        scenarios.put("confirms_wait_for_confirms_or_die", Interop::confirms);
        scenarios.put("tx_commit_and_rollback", Interop::transactions);
        scenarios.put("basic_get_counts_and_manual_ack_consumer", Interop::getAndConsume);
        scenarios.put("passive_declare_missing_queue_404", Interop::missingQueue);
        System.out.println("java client " + ConnectionFactory.class.getPackage().getImplementationVersion()
                + " against " + url + " (run " + run + ")");
        int passed = 0, failed = 0;
        for (Map.Entry<String, Scenario> s : scenarios.entrySet()) {
            long started = System.nanoTime();
            try (Connection c = factory.newConnection()) {
                s.getValue().run(c);
                passed++;
                System.out.printf("ok   %s (%.2fs)%n", s.getKey(), (System.nanoTime() - started) / 1e9);
            } catch (Throwable t) {
                failed++;
                System.out.println("FAIL " + s.getKey() + ": " + t);
            }
        }
        System.out.println("java: " + passed + " passed, " + failed + " failed");
        System.exit(failed == 0 ? 0 : 1);
    }
}
