#!/usr/bin/env node
// A quorum queue on a 3-node cluster through amqplib, with its leader killed mid-run (the
// same scenario as interop/pika/test_quorum.py; run.sh sets QUORUM_URLS=A,B,C,
// INTEROP_KILL and INTEROP_REVIVE for node B).
//
// The queue is declared on node B with x-queue-leader-locator client-local, so B leads. A
// confirm channel on B publishes; B is killed; the publisher reconnects to node C and goes
// on, publishing again what was nacked or not confirmed. A consumer on node A takes
// everything: lost = 0 and unexpected = 0 are required, duplicates are counted. Last
// line: "amqplibquorum: N passed, N failed".
'use strict';

const { execSync } = require('node:child_process');
const crypto = require('node:crypto');
const amqp = require('amqplib');

const URLS = process.env.QUORUM_URLS.split(',');
const QUEUE = `interop.amqplib.${crypto.randomBytes(5).toString('hex')}.quorum`;
const BEFORE = 100;
const AFTER = 100;
const DEADLINE_MS = 40000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function connect(url) {
  const conn = await amqp.connect(url);
  conn.on('error', () => {});
  return conn;
}

// Publish `id` with a confirm: resolves true on ack, false on nack or a lost channel.
function publish(ch, id) {
  return new Promise((resolve) => {
    try {
      ch.sendToQueue(QUEUE, Buffer.from(`m${id}`), { persistent: true }, (err) => resolve(!err));
    } catch (e) {
      resolve(false);
    }
  });
}

async function publishUntilConfirmed(url, ids, confirmed, deadline) {
  const pending = [...ids];
  while (pending.length > 0) {
    if (Date.now() > deadline) throw new Error(`${pending.length} publishes never confirmed on ${url}`);
    let conn;
    try {
      conn = await connect(url);
      const ch = await conn.createConfirmChannel();
      ch.on('error', () => {});
      while (pending.length > 0 && Date.now() < deadline) {
        if (await publish(ch, pending[0])) {
          confirmed.add(pending.shift());
        } else {
          await sleep(200);
        }
      }
      await conn.close().catch(() => {});
    } catch (e) {
      if (conn) await conn.close().catch(() => {});
      await sleep(200);
    }
  }
}

async function scenario(stats) {
  const deadline = Date.now() + DEADLINE_MS;
  const a = await connect(URLS[0]);
  const b = await connect(URLS[1]);
  const ch = await b.createConfirmChannel();
  ch.on('error', () => {});
  await ch.assertQueue(QUEUE, {
    durable: true,
    arguments: { 'x-queue-type': 'quorum', 'x-queue-leader-locator': 'client-local' },
  });
  const confirmed = new Set();
  for (let i = 0; i < BEFORE; i++) {
    if (!(await publish(ch, i))) throw new Error(`m${i} nacked before the kill`);
    confirmed.add(i);
  }
  execSync(process.env.INTEROP_KILL, { stdio: 'inherit' });
  if (await publish(ch, -1)) throw new Error("a publish on the killed node's connection was confirmed");
  await publishUntilConfirmed(URLS[2], Array.from({ length: AFTER }, (_, i) => BEFORE + i), confirmed, deadline);

  const got = [];
  const cch = await a.createChannel();
  await cch.prefetch(50);
  const seen = new Set();
  const { consumerTag } = await cch.consume(QUEUE, (m) => {
    const id = Number(m.content.toString().slice(1));
    got.push(id);
    seen.add(id);
    cch.ack(m);
  });
  while ([...confirmed].some((id) => !seen.has(id)) && Date.now() < deadline) await sleep(20);
  await cch.cancel(consumerTag);
  const published = new Set([-1, ...Array.from({ length: BEFORE + AFTER }, (_, i) => i)]);
  const lost = [...confirmed].filter((id) => !seen.has(id));
  const unexpected = [...seen].filter((id) => !published.has(id));
  Object.assign(stats, {
    confirmed: confirmed.size,
    consumed: got.length,
    duplicates: got.length - seen.size,
    lost: lost.length,
    unexpected: unexpected.length,
  });
  if (lost.length || unexpected.length) {
    throw new Error(`lost ${lost.slice(0, 10)}, unexpected ${unexpected.slice(0, 10)}`);
  }
  execSync(process.env.INTEROP_REVIVE, { stdio: 'inherit' });
  await cch.deleteQueue(QUEUE);
  await a.close();
}

async function main() {
  const stats = {};
  let passed = 0;
  let failed = 0;
  try {
    await scenario(stats);
    passed++;
    console.log(`ok   leader_killed_publisher_reconnects ${JSON.stringify(stats)}`);
  } catch (e) {
    failed++;
    console.log(`FAIL leader_killed_publisher_reconnects: ${e && e.stack} ${JSON.stringify(stats)}`);
  }
  console.log(`amqplibquorum: ${passed} passed, ${failed} failed`);
  return failed === 0 ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (e) => {
    console.log(`runner crashed: ${e && e.stack}`);
    process.exit(1);
  },
);
