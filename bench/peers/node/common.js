// Shared plumbing of the Node peers: a fresh database per run, a clock, and one JSON line
// of results on stdout (what bench/peers/run.sh and bench/run-all.sh read).
"use strict";

const { Client } = require("pg");

const JOBS = Number(process.env.JOBS || 50000);
const CONCURRENCY = Number(process.env.CONCURRENCY || 16);
const BASE_URL = process.env.DATABASE_URL || "postgres://postgres@localhost:5432/postgame";

/** Drops and creates `name` on the server of DATABASE_URL; returns its URL. */
async function freshDatabase(name) {
  const server = BASE_URL.slice(0, BASE_URL.lastIndexOf("/"));
  const admin = new Client({ connectionString: `${server}/postgres` });
  await admin.connect();
  await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.end();
  return `${server}/${name}`;
}

async function dropDatabase(name) {
  const server = BASE_URL.slice(0, BASE_URL.lastIndexOf("/"));
  const admin = new Client({ connectionString: `${server}/postgres` });
  await admin.connect();
  await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  await admin.end();
}

/** Polls `sql` (one row, one integer column `n`) every 10 ms until it returns `want`. */
async function waitForCount(url, sql, want, timeoutMs = 600000) {
  const c = new Client({ connectionString: url });
  await c.connect();
  const deadline = Date.now() + timeoutMs;
  try {
    for (;;) {
      const { rows } = await c.query(sql);
      if (Number(rows[0].n) === want) return;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${sql} = ${want}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  } finally {
    await c.end();
  }
}

const now = () => Number(process.hrtime.bigint()) / 1e9;

function report(fields) {
  process.stdout.write(JSON.stringify({ jobs: JOBS, concurrency: CONCURRENCY, ...fields }) + "\n");
}

module.exports = { JOBS, CONCURRENCY, freshDatabase, dropDatabase, waitForCount, now, report };
