#!/usr/bin/env node
// Interop scenarios for the amqplib client (promise API).
//
// Run: AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2F node interop/amqplib/test.js [NAME...]
//
// Every scenario opens its own connection(s), uses names with a per-run random
// suffix, deletes what it declared, and asserts exact outcomes. Exit status is
// 0 only when every selected scenario passed. The last line is
// "N passed, N failed".
'use strict';

const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const amqp = require('amqplib');

const URL = process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672/%2F';
const RUN = crypto.randomBytes(5).toString('hex');
const SCENARIO_TIMEOUT_MS = 20000;

const name = (suffix) => `interop.amqplib.${RUN}.${suffix}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(pred, what, timeoutMs = 5000) {
  const deadline = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs}ms waiting for ${what}`);
    await sleep(5);
  }
}

// Resolves with the first 'error' emitted by a channel (a channel.close from
// the broker), or rejects after timeoutMs.
function channelError(ch, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('no channel error within timeout')), timeoutMs);
    ch.once('error', (err) => {
      clearTimeout(t);
      resolve(err);
    });
  });
}

// A channel whose asynchronous 'error' events are recorded instead of
// crashing the process (EventEmitter throws on an unhandled 'error').
async function channel(conn, confirm = false) {
  const ch = confirm ? await conn.createConfirmChannel() : await conn.createChannel();
  ch.errors = [];
  ch.closed = false;
  ch.on('error', (e) => ch.errors.push(e));
  ch.on('close', () => {
    ch.closed = true;
  });
  return ch;
}

async function expectRejects(promise, what) {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  throw new assert.AssertionError({ message: `${what}: expected the broker to refuse, but it succeeded` });
}

class Ctx {
  constructor() {
    this.conns = [];
    this.queues = [];
    this.exchanges = [];
  }

  async connect() {
    const conn = await amqp.connect(URL);
    conn.errors = [];
    conn.on('error', (e) => conn.errors.push(e));
    this.conns.push(conn);
    return conn;
  }

  q(suffix) {
    const n = name(suffix);
    this.queues.push(n);
    return n;
  }

  async cleanup() {
    try {
      const conn = await this.connect();
      for (const q of this.queues) {
        const ch = await channel(conn);
        await ch.deleteQueue(q).catch(() => {});
        if (!ch.closed) await ch.close().catch(() => {});
      }
      for (const ex of this.exchanges) {
        const ch = await channel(conn);
        await ch.deleteExchange(ex).catch(() => {});
        if (!ch.closed) await ch.close().catch(() => {});
      }
    } catch (e) {
      console.log(`    (cleanup failed: ${e.message})`);
    }
    for (const c of this.conns) {
      await c.close().catch(() => {});
    }
  }
}

// ---------------------------------------------------------------------------
// scenarios

async function confirmChannelPublish1000(ctx) {
  const conn = await ctx.connect();
  const ch = await channel(conn, true);
  const q = ctx.q('confirm1000');
  const ok = await ch.assertQueue(q, { durable: true });
  assert.equal(ok.queue, q);
  assert.equal(ok.messageCount, 0);
  const n = 1000;
  const outcomes = new Array(n).fill(undefined);
  for (let i = 0; i < n; i++) {
    ch.sendToQueue(q, Buffer.from(`m-${i}`), { persistent: true }, (err) => {
      outcomes[i] = err === null || err === undefined ? 'ack' : `nack: ${err}`;
    });
  }
  await ch.waitForConfirms();
  const acked = outcomes.filter((o) => o === 'ack').length;
  const other = outcomes.filter((o) => o !== 'ack');
  assert.equal(acked, n, `acked confirms (others: ${JSON.stringify(other.slice(0, 5))})`);
  assert.deepEqual(ch.errors, []);
  const check = await ch.checkQueue(q);
  assert.equal(check.messageCount, n, 'messageCount after 1000 confirmed publishes');
  const first = await ch.get(q, { noAck: true });
  assert.equal(first.content.toString(), 'm-0');
  assert.equal(first.fields.messageCount, n - 1);
  assert.equal(first.properties.deliveryMode, 2);
}

async function prefetchFiveLimitsUnacked(ctx) {
  const conn = await ctx.connect();
  const ch = await channel(conn);
  const q = ctx.q('prefetch5');
  await ch.assertQueue(q);
  const n = 40;
  for (let i = 0; i < n; i++) ch.sendToQueue(q, Buffer.from(`p-${i}`));
  // RabbitMQ does not order a publish before a later queue.declare on the same channel: poll.
  let count = 0;
  const deadline = Date.now() + 5000;
  while ((count = (await ch.checkQueue(q)).messageCount) !== n && Date.now() < deadline) await sleep(5);
  assert.equal(count, n);
  await ch.prefetch(5);

  const received = [];
  const held = [];
  let outstanding = 0;
  let maxOutstanding = 0;
  let hold = true; // phase 1: ack nothing
  const { consumerTag } = await ch.consume(
    q,
    (msg) => {
      received.push(msg.content.toString());
      outstanding++;
      maxOutstanding = Math.max(maxOutstanding, outstanding);
      const ack = () => {
        outstanding--;
        ch.ack(msg);
      };
      if (hold) held.push(ack);
      else setTimeout(ack, 2);
    },
    { noAck: false },
  );
  await waitFor(() => received.length >= 5, '5 deliveries');
  await sleep(300);
  assert.equal(received.length, 5, 'deliveries while 5 are unacked');
  // phase 2: release the held ones and ack the rest shortly after delivery
  hold = false;
  for (const ack of held.splice(0)) ack();
  await waitFor(() => received.length === n && outstanding === 0, `all ${n} deliveries acked`, 10000);
  await sleep(100);
  assert.equal(maxOutstanding, 5, 'maximum number of unacked deliveries seen by the consumer');
  assert.deepEqual(
    received,
    Array.from({ length: n }, (_, i) => `p-${i}`),
    'bodies in order',
  );
  await ch.cancel(consumerTag);
  assert.equal((await ch.checkQueue(q)).messageCount, 0, 'messageCount after all acks');
  assert.deepEqual(ch.errors, []);
}

async function mandatoryUnroutableReturns312(ctx) {
  const conn = await ctx.connect();
  const ch = await channel(conn, true);
  const events = [];
  const returned = [];
  ch.on('return', (msg) => {
    events.push('return');
    returned.push(msg);
  });
  const missing = name('no-such-queue');
  await new Promise((resolve, reject) => {
    ch.publish('', missing, Buffer.from('bounce'), { mandatory: true, messageId: 'r-1', headers: { k: 'v' } }, (err) => {
      events.push(err ? 'nack' : 'ack');
      if (err) reject(err);
      else resolve();
    });
  });
  await waitFor(() => returned.length > 0, "'return' event");
  assert.deepEqual(events, ['return', 'ack'], 'basic.return arrives before the publisher confirm');
  const r = returned[0];
  assert.equal(r.fields.replyCode, 312);
  assert.equal(r.fields.replyText, 'NO_ROUTE');
  assert.equal(r.fields.exchange, '');
  assert.equal(r.fields.routingKey, missing);
  assert.equal(r.content.toString(), 'bounce');
  assert.equal(r.properties.messageId, 'r-1');
  assert.deepEqual(r.properties.headers, { k: 'v' });

  // without mandatory, the same publish is silently dropped (no return)
  ch.publish('', missing, Buffer.from('dropped'), {});
  await ch.waitForConfirms();
  await sleep(100);
  assert.equal(returned.length, 1, 'no return for a non-mandatory unroutable publish');
  assert.deepEqual(ch.errors, []);
  assert.equal(ch.closed, false);
}

async function checkQueueMissing404(ctx) {
  const conn = await ctx.connect();
  const ch = await channel(conn);
  const missing = name('missing');
  const err = await expectRejects(ch.checkQueue(missing), 'checkQueue on a missing queue');
  assert.equal(err.code, 404, `reply code (${err.message})`);
  assert.equal(err.classId, 50, 'close class id (queue)');
  assert.equal(err.methodId, 10, 'close method id (declare)');
  await waitFor(() => ch.closed, 'channel close');
  assert.equal(ch.errors.length, 1, 'channel error events');
  assert.equal(ch.errors[0].code, 404);
  // connection survives; a new channel works
  const ch2 = await channel(conn);
  const q = ctx.q('exists');
  await ch2.assertQueue(q);
  assert.equal((await ch2.checkQueue(q)).messageCount, 0);
  assert.deepEqual(conn.errors, []);
}

async function exclusiveQueueOtherConnection405(ctx) {
  const owner = await ctx.connect();
  const other = await ctx.connect();
  const och = await channel(owner);
  const q = ctx.q('exclusive');
  await och.assertQueue(q, { exclusive: true, durable: false });
  och.sendToQueue(q, Buffer.from('mine'));
  assert.equal((await och.checkQueue(q)).messageCount, 1);

  const attempts = [
    ['checkQueue', (ch) => ch.checkQueue(q)],
    ['consume', (ch) => ch.consume(q, () => {})],
    ['assertQueue', (ch) => ch.assertQueue(q, { exclusive: false, durable: false })],
    ['deleteQueue', (ch) => ch.deleteQueue(q)],
    ['purgeQueue', (ch) => ch.purgeQueue(q)],
  ];
  for (const [what, op] of attempts) {
    const ch = await channel(other);
    const err = await expectRejects(op(ch), `${what} from a second connection`);
    assert.equal(err.code, 405, `${what}: reply code (${err.message})`);
    await waitFor(() => ch.closed, `${what}: channel close`);
  }
  // the owner still has its queue and message
  assert.equal((await och.checkQueue(q)).messageCount, 1, 'owner still sees its message');
  const m = await och.get(q, { noAck: true });
  assert.equal(m.content.toString(), 'mine');

  // once the owner disconnects, the exclusive queue is gone
  await owner.close();
  let lastCode;
  const deadline = Date.now() + 3000;
  while (Date.now() < deadline) {
    const ch = await channel(other);
    try {
      await ch.checkQueue(q);
      lastCode = 200;
      await ch.close();
    } catch (e) {
      lastCode = e.code;
      if (lastCode === 404) break;
    }
    await sleep(50);
  }
  assert.equal(lastCode, 404, 'exclusive queue deleted after its owner closed');
  assert.deepEqual(other.errors, []);
}

async function publishToMissingExchange404(ctx) {
  const conn = await ctx.connect();
  const ch = await channel(conn);
  const closed = channelError(ch);
  const missing = name('no-such-exchange');
  assert.equal(ch.publish(missing, 'rk', Buffer.from('nowhere')), true);
  const err = await closed;
  assert.equal(err.code, 404, `reply code (${err.message})`);
  assert.equal(err.classId, 60, 'close class id (basic)');
  assert.equal(err.methodId, 40, 'close method id (publish)');
  await waitFor(() => ch.closed, 'channel close');
  // operations on the closed channel fail client-side; the connection is fine
  await expectRejects(ch.checkQueue(name('whatever')), 'rpc on a closed channel');
  const ch2 = await channel(conn);
  const q = ctx.q('after-404');
  await ch2.assertQueue(q);
  ch2.sendToQueue(q, Buffer.from('still-works'));
  const m = await (async () => {
    for (let i = 0; i < 100; i++) {
      const got = await ch2.get(q, { noAck: true });
      if (got) return got;
      await sleep(10);
    }
    return false;
  })();
  assert.ok(m, 'message on the new channel');
  assert.equal(m.content.toString(), 'still-works');
  assert.deepEqual(conn.errors, []);
}

async function queueDeletedCancelsConsumer(ctx) {
  const conn = await ctx.connect();
  const ch = await channel(conn);
  const q = ctx.q('cancel-notify');
  await ch.assertQueue(q);
  const seen = [];
  const cancels = [];
  ch.on('cancel', (fields) => cancels.push(fields));
  const { consumerTag } = await ch.consume(q, (msg) => seen.push(msg === null ? null : msg.content.toString()), {
    noAck: true,
  });
  ch.sendToQueue(q, Buffer.from('before'));
  await waitFor(() => seen.length === 1, 'delivery before delete');
  const other = await channel(await ctx.connect());
  const del = await other.deleteQueue(q);
  assert.equal(del.messageCount, 0);
  await waitFor(() => seen.length === 2, 'consumer callback with null (basic.cancel)');
  await sleep(100);
  assert.deepEqual(seen, ['before', null]);
  assert.equal(cancels.length, 1, "'cancel' events");
  assert.equal(cancels[0].consumerTag, consumerTag);
  assert.equal(ch.closed, false, 'channel stays open');
  assert.deepEqual(ch.errors, []);
  const q2 = ctx.q('after-cancel');
  assert.equal((await ch.assertQueue(q2)).messageCount, 0, 'channel usable');
}

async function bulkAcrossConnections(ctx) {
  const pubConn = await ctx.connect();
  const subConn = await ctx.connect();
  const pub = await channel(pubConn, true);
  const sub = await channel(subConn);
  const q = ctx.q('bulk');
  await pub.assertQueue(q);
  const n = 5000;
  const received = [];
  await sub.prefetch(200);
  await sub.consume(q, (msg) => {
    received.push(msg.content.readUInt32BE(0));
    sub.ack(msg);
  });
  for (let i = 0; i < n; i++) {
    const body = Buffer.alloc(64 + (i % 512));
    body.writeUInt32BE(i, 0);
    if (!pub.sendToQueue(q, body)) await new Promise((r) => pub.once('drain', r));
  }
  await pub.waitForConfirms();
  await waitFor(() => received.length >= n, `${n} deliveries`, 15000);
  await sleep(100);
  assert.equal(received.length, n, 'number of deliveries');
  for (let i = 0; i < n; i++) {
    if (received[i] !== i) assert.fail(`delivery ${i} carried message ${received[i]}`);
  }
  assert.deepEqual(pub.errors, []);
  assert.deepEqual(sub.errors, []);
}

async function exclusiveConsumer403(ctx) {
  const conn = await ctx.connect();
  const ch = await channel(conn);
  const q = ctx.q('exclusive-consumer');
  await ch.assertQueue(q);
  const { consumerTag } = await ch.consume(q, () => {}, { exclusive: true });
  const ch2 = await channel(conn);
  const err = await expectRejects(ch2.consume(q, () => {}), 'second consumer on an exclusively consumed queue');
  assert.equal(err.code, 403, `reply code (${err.message})`);
  const ch3 = await channel(conn);
  const err2 = await expectRejects(
    ch3.consume(q, () => {}, { exclusive: true }),
    'exclusive consumer on a queue that has a consumer',
  );
  assert.equal(err2.code, 403, `reply code (${err2.message})`);
  // once the exclusive consumer is cancelled, others may consume
  await ch.cancel(consumerTag);
  const ch4 = await channel(conn);
  await ch4.consume(q, () => {});
  assert.equal((await ch4.checkQueue(q)).consumerCount, 1);
}

class Skip extends Error {}

// connection.blocked / unblocked events: a publisher pushes a broker with a small memory
// watermark (INTEROP_ALARM_URL; run.sh starts one) over it, and a consumer-side purge
// clears the alarm.
async function memoryAlarmBlocksAndUnblocks(ctx) {
  const url = process.env.INTEROP_ALARM_URL;
  if (!url) throw new Skip('INTEROP_ALARM_URL is not set');
  const pub = await amqp.connect(url);
  ctx.conns.push(pub);
  pub.on('error', () => {});
  const events = [];
  pub.on('blocked', (reason) => events.push(['blocked', reason]));
  pub.on('unblocked', () => events.push(['unblocked']));
  const ch = await pub.createChannel();
  const q = name('alarm');
  await ch.assertQueue(q);
  const body = Buffer.alloc(64 * 1024, 7);
  for (let i = 0; i < 64 && events.length === 0; i++) {
    ch.sendToQueue(q, body);
    await sleep(2);
  }
  await waitFor(() => events.length > 0, 'connection.blocked', 10000);
  assert.deepEqual(events[0], ['blocked', 'low on memory']);
  // A connection that has not published is not blocked: it purges, and the alarm clears.
  const other = await amqp.connect(url);
  ctx.conns.push(other);
  const och = await other.createChannel();
  await och.purgeQueue(q);
  await waitFor(() => events.length > 1, 'connection.unblocked', 10000);
  assert.deepEqual(events[1], ['unblocked']);
  await och.deleteQueue(q);
}

const SCENARIOS = [
  ['confirm_channel_publish_1000', confirmChannelPublish1000],
  ['prefetch_5_limits_unacked', prefetchFiveLimitsUnacked],
  ['mandatory_unroutable_returns_312', mandatoryUnroutableReturns312],
  ['check_queue_missing_404', checkQueueMissing404],
  ['exclusive_queue_other_connection_405', exclusiveQueueOtherConnection405],
  ['publish_to_missing_exchange_404', publishToMissingExchange404],
  ['queue_deleted_cancels_consumer', queueDeletedCancelsConsumer],
  ['bulk_5000_across_connections', bulkAcrossConnections],
  ['exclusive_consumer_403', exclusiveConsumer403],
  ['memory_alarm_blocks_and_unblocks', memoryAlarmBlocksAndUnblocks],
];

function withTimeout(promise, ms, label) {
  let t;
  const timeout = new Promise((_, reject) => {
    t = setTimeout(() => reject(new Error(`${label} exceeded ${ms}ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(t));
}

async function main() {
  const filters = process.argv.slice(2);
  const selected = SCENARIOS.filter(([n]) => filters.length === 0 || filters.some((f) => n.includes(f)));
  const pkgPath = require('node:path').join(__dirname, 'node_modules', 'amqplib', 'package.json');
  const version = JSON.parse(require('node:fs').readFileSync(pkgPath, 'utf8')).version;
  console.log(`amqplib ${version} against ${URL} (run ${RUN})`);
  let passed = 0;
  let failed = 0;
  for (const [label, fn] of selected) {
    const ctx = new Ctx();
    const started = Date.now();
    try {
      await withTimeout(fn(ctx), SCENARIO_TIMEOUT_MS, label);
      passed++;
      console.log(`ok   ${label} (${((Date.now() - started) / 1000).toFixed(2)}s)`);
    } catch (e) {
      if (e instanceof Skip) {
        console.log(`skip ${label}: ${e.message}`);
        continue;
      }
      failed++;
      console.log(`FAIL ${label} (${((Date.now() - started) / 1000).toFixed(2)}s): ${e && e.message}`);
      const stack = String((e && e.stack) || '').split('\n').slice(1, 4);
      for (const line of stack) console.log(`    ${line.trim()}`);
    }
    await withTimeout(ctx.cleanup(), 10000, `${label} cleanup`).catch((e) =>
      console.log(`    (cleanup aborted: ${e.message})`),
    );
  }
  console.log(`amqplib: ${passed} passed, ${failed} failed`);
  return failed === 0 && passed > 0 ? 0 : 1;
}

process.on('unhandledRejection', (e) => {
  console.log(`unhandled rejection: ${e && e.stack}`);
  process.exitCode = 1;
});

main().then(
  (code) => {
    // process.exit: do not hang on a connection a failed scenario left open
    process.exit(process.exitCode || code);
  },
  (e) => {
    console.log(`runner crashed: ${e && e.stack}`);
    process.exit(1);
  },
);
