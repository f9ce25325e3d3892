// pg-boss 10.4.2: enqueue JOBS no-op jobs (insert(), 1000 per call), then process them all
// with 16 workers (each work() call adds one polling worker), each fetching BATCH jobs per
// poll at the smallest polling interval pg-boss accepts (0.5 s). A worker that fetched jobs
// still waits out the rest of its interval before the next fetch, so pg-boss is poll-bound:
// at most 16 x BATCH / 0.5 s.
"use strict";

const PgBoss = require("pg-boss");
const { JOBS, CONCURRENCY, freshDatabase, dropDatabase, waitForCount, now, report } = require("./common");

const DB = "postgame_peer_pgboss";
const BATCH = Number(process.env.PGBOSS_BATCH || 100);
const SETTINGS = {
  workers: CONCURRENCY,
  batchSize: BATCH,
  pollingIntervalSeconds: 0.5,
  max: CONCURRENCY + 4,
};

async function main() {
  const url = await freshDatabase(DB);
  const boss = new PgBoss({ connectionString: url, max: SETTINGS.max });
  boss.on("error", (e) => console.error(e));
  await boss.start();
  await boss.createQueue("noop");

  let t0 = now();
  const CHUNK = 1000;
  for (let i = 0; i < JOBS; i += CHUNK) {
    const jobs = [];
    for (let j = i; j < Math.min(JOBS, i + CHUNK); j++) jobs.push({ name: "noop", data: { i: j } });
    await boss.insert(jobs);
  }
  const enqueueS = now() - t0;

  t0 = now();
  for (let w = 0; w < CONCURRENCY; w++) {
    await boss.work(
      "noop",
      { batchSize: BATCH, pollingIntervalSeconds: SETTINGS.pollingIntervalSeconds },
      async () => {}
    );
  }
  // Processed = completed in the database (workers complete a batch after its handler).
  await waitForCount(
    url,
    "SELECT count(*) AS n FROM pgboss.job WHERE name = 'noop' AND state = 'completed'",
    JOBS
  );
  const processS = now() - t0;
  await boss.stop({ graceful: false, wait: true });
  await dropDatabase(DB);
  report({
    peer: "pg-boss",
    version: require("pg-boss/package.json").version,
    enqueue_per_s: JOBS / enqueueS,
    process_per_s: JOBS / processS,
    process_s: processS,
    settings: SETTINGS,
  });
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
