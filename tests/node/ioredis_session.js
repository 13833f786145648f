// ioredis sessions through keygate, the way a Node.js application uses it.
//
// Usage:
//   node ioredis_session.js PORT
//       The full session twice: over RESP2 with ioredis 5 (which speaks only
//       RESP2: its parser rejects RESP3 reply types) and over RESP3 with
//       ioredis 6 (`protocol: 3`, which sends `HELLO 3` on connect; the
//       session checks RESP3 was really negotiated rather than fallen back).
//   node ioredis_session.js PORT SERVICE PASSWORD
//       Logs in to a namespaced service (AUTH SERVICE PASSWORD under RESP2,
//       HELLO 3 AUTH SERVICE PASSWORD under RESP3), writes
//       `node:ns:resp2` / `node:ns:resp3` and checks they read back without
//       the prefix; the caller checks the backend holds them WITH the prefix.
//
// Exits 0 printing "ioredis ok"; on the first difference from what Redis
// itself would answer, exits 1 with a message naming it. A hard timeout
// keeps a stuck reply from hanging the test.
"use strict";

const assert = require("node:assert/strict");
const IORedis5 = require("ioredis");
const IORedis6 = require("ioredis6");

const HARD_TIMEOUT_MS = 30_000;

const hardTimeout = setTimeout(() => {
  console.error(`ioredis session: no result after ${HARD_TIMEOUT_MS} ms (a reply never came)`);
  process.exit(2);
}, HARD_TIMEOUT_MS);
hardTimeout.unref();

/** The two ways a Node.js application reaches keygate. */
const PROTOCOLS = [
  { name: "resp2", Redis: IORedis5, options: {} },
  { name: "resp3", Redis: IORedis6, options: { protocol: 3, replyMapping: "resp3" } },
];

const clients = [];

/** A client that fails fast instead of reconnecting forever. */
function connect(proto, port, extra = {}) {
  const client = new proto.Redis({
    host: "127.0.0.1",
    port,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    enableReadyCheck: false,
    ...proto.options,
    ...extra,
  });
  // Errors reach the awaiting promise; keep the unhandled-error warning quiet.
  client.on("error", () => {});
  clients.push(client);
  return client;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Resolves with the first `message` event on `sub`, or rejects after `ms`. */
function nextMessage(sub, ms) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no pub/sub message within ${ms} ms`)), ms);
    sub.once("message", (channel, message) => {
      clearTimeout(timer);
      resolve([channel, message]);
    });
  });
}

/** Every key `scanStream` yields for `match`. */
function scanAll(client, match) {
  return new Promise((resolve, reject) => {
    const seen = new Set();
    const stream = client.scanStream({ match, count: 7 });
    stream.on("data", (keys) => keys.forEach((k) => seen.add(k)));
    stream.on("end", () => resolve(seen));
    stream.on("error", reject);
  });
}

async function checkProtocol(proto, r) {
  if (proto.name === "resp3") {
    // A double is a RESP3 type: only a RESP3 connection yields a number here.
    await r.zadd("node:resp3:z", "1.5", "m");
    const score = await r.zscore("node:resp3:z", "m");
    assert.equal(score, 1.5, "ZSCORE over RESP3 should be the double 1.5 (connection fell back to RESP2?)");
    const hello = await r.call("HELLO", "3");
    assert.equal(hello.proto, 3, `HELLO 3 reply: ${JSON.stringify(hello)}`);
  } else {
    const hello = await r.call("HELLO", "2");
    const proto = hello[hello.indexOf("proto") + 1];
    assert.equal(proto, 2, `HELLO 2 reply: ${JSON.stringify(hello)}`);
  }
}

async function session(proto, port) {
  const p = `node:${proto.name}`;
  const r = connect(proto, port);

  assert.equal(await r.ping(), "PONG");
  await checkProtocol(proto, r);

  // Strings with a TTL, counters, multi-key.
  assert.equal(await r.set(`${p}:k`, "v", "EX", 100), "OK");
  assert.equal(await r.get(`${p}:k`), "v");
  const ttl = await r.ttl(`${p}:k`);
  assert.ok(ttl > 0 && ttl <= 100, `TTL after SET EX 100: ${ttl}`);
  assert.equal(await r.incr(`${p}:n`), 1);
  assert.equal(await r.incrby(`${p}:n`, 41), 42);
  assert.equal(await r.mset(`${p}:a`, "1", `${p}:b`, "2"), "OK");
  assert.deepEqual(await r.mget(`${p}:a`, `${p}:missing`, `${p}:b`), ["1", null, "2"]);

  // Hashes.
  assert.equal(await r.hset(`${p}:h`, { f1: "x", f2: "y" }), 2);
  assert.deepEqual(await r.hgetall(`${p}:h`), { f1: "x", f2: "y" });

  // A pipeline of 200 mixed commands: every reply, in order.
  const pipe = r.pipeline();
  const expected = [];
  for (let i = 0; i < 50; i++) {
    pipe.set(`${p}:pipe:${i}`, `val${i}`);
    expected.push("OK");
    pipe.incr(`${p}:pipe:count`);
    expected.push(i + 1);
    pipe.get(`${p}:pipe:${i}`);
    expected.push(`val${i}`);
    pipe.rpush(`${p}:pipe:list`, String(i));
    expected.push(i + 1);
  }
  const results = await pipe.exec();
  assert.equal(results.length, 200);
  results.forEach(([err, value], i) => {
    assert.equal(err, null, `pipeline reply ${i} is an error: ${err}`);
    assert.deepEqual(value, expected[i], `pipeline reply ${i}`);
  });

  // MULTI/EXEC.
  const tx = await r.multi().set(`${p}:tx`, "1").incr(`${p}:tx`).get(`${p}:tx`).exec();
  assert.deepEqual(tx, [
    [null, "OK"],
    [null, 2],
    [null, "2"],
  ]);

  // Pub/sub between two clients.
  const sub = connect(proto, port);
  const pub = connect(proto, port);
  assert.equal(await sub.subscribe(`${p}:chan`), 1);
  const received = nextMessage(sub, 5_000);
  assert.equal(await pub.publish(`${p}:chan`, "hello"), 1);
  assert.deepEqual(await received, [`${p}:chan`, "hello"]);
  await sub.unsubscribe(`${p}:chan`);

  // BLPOP on one client, woken by a push from another.
  const blocker = connect(proto, port);
  const popped = blocker.blpop(`${p}:queue`, 5);
  await sleep(200);
  assert.equal(await pub.rpush(`${p}:queue`, "job"), 1);
  assert.deepEqual(await popped, [`${p}:queue`, "job"]);

  // Errors surface as rejected promises, and the connection stays usable.
  await assert.rejects(r.call("NOSUCHCOMMAND", "x"), /unknown command/i);
  await assert.rejects(r.incr(`${p}:h`), /WRONGTYPE/);
  assert.equal(await r.get(`${p}:k`), "v");

  // SCAN as a stream over the keys written above.
  const scanned = await scanAll(r, `${p}:pipe:*`);
  const wanted = new Set([`${p}:pipe:count`, `${p}:pipe:list`]);
  for (let i = 0; i < 50; i++) wanted.add(`${p}:pipe:${i}`);
  assert.deepEqual([...scanned].sort(), [...wanted].sort());

  // INFO carries keygate's own section.
  const info = await r.info();
  assert.ok(info.includes("\r\n# Proxy\r\n"), `INFO lacks "# Proxy": ${info.slice(0, 300)}...`);
  assert.ok(info.includes("redis_version:"), `INFO lacks redis_version: ${info.slice(0, 300)}...`);
}

async function namespaced(proto, port, service, password) {
  const r = connect(proto, port, { username: service, password });
  assert.equal(await r.ping(), "PONG");
  const key = `node:ns:${proto.name}`;
  assert.equal(await r.set(key, proto.name), "OK");
  assert.equal(await r.get(key), proto.name);
  const scanned = await scanAll(r, "node:ns:*");
  assert.ok(scanned.has(key), `SCAN should show ${key} without the prefix: ${[...scanned]}`);
  const info = await r.info();
  assert.ok(info.includes(`\r\nservice:${service}\r\n`), `INFO lacks service:${service}`);

  const wrong = connect(proto, port, { username: service, password: `${password}-wrong` });
  await assert.rejects(wrong.ping(), /WRONGPASS|invalid|auth/i);
}

async function main() {
  const port = Number(process.argv[2]);
  if (!Number.isInteger(port) || port <= 0) {
    throw new Error("usage: ioredis_session.js PORT [SERVICE PASSWORD]");
  }
  const [service, password] = process.argv.slice(3);
  for (const proto of PROTOCOLS) {
    try {
      if (service === undefined) {
        await session(proto, port);
      } else {
        await namespaced(proto, port, service, password);
      }
    } catch (err) {
      err.message = `[${proto.name}] ${err.message}`;
      throw err;
    }
  }
}

main()
  .then(() => {
    console.log("ioredis ok");
    clients.forEach((c) => c.disconnect());
    process.exit(0);
  })
  .catch((err) => {
    console.error(`ioredis session FAILED: ${err.stack || err}`);
    clients.forEach((c) => c.disconnect());
    process.exit(1);
  });
