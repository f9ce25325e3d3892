// graphile-worker 0.17.3: enqueue JOBS no-op jobs (addJobs, 1000 per call), then process
// them all at concurrency 16 with the settings of its performance page
// (https://worker.graphile.org/docs/performance): local queue of 500 jobs, batched
// completion (completeJobBatchDelay 0, failJobBatchDelay 0), pool of concurrency + 2.
"use strict";

const { run, makeWorkerUtils } = require("graphile-worker");
const { JOBS, CONCURRENCY, freshDatabase, dropDatabase, waitForCount, now, report } = require("./common");

const DB = "postgame_peer_graphile";
const SETTINGS = {
  concurrentJobs: CONCURRENCY,
  maxPoolSize: CONCURRENCY + 2,
  localQueue: { size: 500 },
  completeJobBatchDelay: 0,
  failJobBatchDelay: 0,
  pollInterval: 2000,
};

async function main() {
  const url = await freshDatabase(DB);
  const utils = await makeWorkerUtils({ connectionString: url });
  await utils.migrate();

  let t0 = now();
  const CHUNK = 1000;
  for (let i = 0; i < JOBS; i += CHUNK) {
    const specs = [];
    for (let j = i; j < Math.min(JOBS, i + CHUNK); j++) specs.push({ identifier: "noop", payload: { i: j } });
    await utils.addJobs(specs);
  }
  const enqueueS = now() - t0;
  await utils.release();

  let done = 0;
  let allRan;
  const ran = new Promise((r) => (allRan = r));
  t0 = now();
  const runner = await run({
    connectionString: url,
    concurrency: CONCURRENCY,
    noHandleSignals: true,
    logger: new (require("graphile-worker").Logger)(() => () => {}),
    preset: { worker: SETTINGS },
    taskList: {
      noop: async () => {
        if (++done === JOBS) allRan();
      },
    },
  });
  await ran;
  // Processed = completed in the database (completions are batched).
  await waitForCount(url, "SELECT count(*) AS n FROM graphile_worker._private_jobs", 0);
  const processS = now() - t0;
  await runner.stop();
  await dropDatabase(DB);
  report({
    peer: "graphile-worker",
    version: require("graphile-worker/package.json").version,
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
