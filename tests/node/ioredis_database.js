// ioredis with a database in its URL through keygate (tests/databases.rs):
// `redis://jobs:jobspw@127.0.0.1:PORT/4` makes it SELECT 4 on connect.
//
// Usage: node ioredis_database.js PORT. Exits 0 printing "ioredis db ok".
"use strict";

const assert = require("node:assert/strict");
const IORedis = require("ioredis");

const timeout = setTimeout(() => {
  console.error("ioredis database session: no result after 20 s");
  process.exit(2);
}, 20_000);
timeout.unref();

async function main() {
  const port = Number(process.argv[2]);
  const r = new IORedis(`redis://jobs:jobspw@127.0.0.1:${port}/4`, { maxRetriesPerRequest: 1 });
  assert.equal(await r.set("node", "v"), "OK");
  assert.equal(await r.get("node"), "v");
  const res = await r.multi().incr("noden").incr("noden").exec();
  assert.deepEqual(res, [[null, 1], [null, 2]]);
  await r.quit();
  console.log("ioredis db ok");
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
