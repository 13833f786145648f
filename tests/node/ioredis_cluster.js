// ioredis `Cluster` against keygate's cluster emulation: the client
// discovers a one-node cluster at keygate's address (CLUSTER SLOTS) and
// sends everything there. Over RESP2 with ioredis 5 and over RESP3 with
// ioredis 6 (`protocol: 3`).
//
// Usage: node ioredis_cluster.js PORT
// Exits 0 printing "ioredis cluster ok"; on the first difference, exits 1
// naming it. A hard timeout keeps a stuck reply from hanging the test.
"use strict";

const assert = require("node:assert/strict");
const IORedis5 = require("ioredis");
const IORedis6 = require("ioredis6");

const HARD_TIMEOUT_MS = 30_000;

const hardTimeout = setTimeout(() => {
  console.error(`ioredis cluster: no result after ${HARD_TIMEOUT_MS} ms (a reply never came)`);
  process.exit(2);
}, HARD_TIMEOUT_MS);
hardTimeout.unref();

async function session(IORedis, port, proto) {
  const redisOptions = proto === 3 ? { protocol: 3 } : {};
  const cluster = new IORedis.Cluster([{ host: "127.0.0.1", port }], {
    redisOptions,
    enableReadyCheck: true,
  });
  try {
    const p = `nodec:resp${proto}`;
    assert.equal(await cluster.set(`${p}:k`, "v"), "OK");
    assert.equal(await cluster.get(`${p}:k`), "v");
    assert.equal(await cluster.mset(`{${p}}:a`, "1", `{${p}}:b`, "2"), "OK");
    assert.deepEqual(await cluster.mget(`{${p}}:a`, `{${p}}:b`, `{${p}}:none`), ["1", "2", null]);
    assert.equal(await cluster.incr(`${p}:n`), 1);
    const pipe = cluster.pipeline();
    for (let i = 0; i < 20; i++) pipe.set(`{${p}}:pipe:${i}`, String(i));
    for (let i = 0; i < 20; i++) pipe.get(`{${p}}:pipe:${i}`);
    const out = await pipe.exec();
    const values = out.map(([err, v]) => {
      assert.equal(err, null);
      return v;
    });
    assert.deepEqual(values, [...Array(20).fill("OK"), ...Array.from({ length: 20 }, (_, i) => String(i))]);
    const nodes = cluster.nodes("master");
    assert.equal(nodes.length, 1, "one master");
    assert.equal(nodes[0].options.port, port);
    const info = await cluster.cluster("INFO");
    assert.match(String(info), /cluster_state:ok/);
  } finally {
    cluster.disconnect();
  }
}

(async () => {
  const port = Number(process.argv[2]);
  await session(IORedis5, port, 2);
  await session(IORedis6, port, 3);
  console.log("ioredis cluster ok");
  process.exit(0);
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
