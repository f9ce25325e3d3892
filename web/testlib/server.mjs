// Test helper: runs the real `postgame serve` on a free port with a fresh database of its
// own, and can stop and start it again (same port, same database) to test restarts.

import { spawn, execFileSync } from 'node:child_process';
import { createWriteStream, mkdirSync, existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BIN =
  process.env.POSTGAME_BIN || path.join(process.env.CARGO_TARGET_DIR || path.join(ROOT, 'target'), 'debug/postgame');
// The server of DATABASE_URL (run-tests.sh sets it); each test server gets a database of
// its own there.
const BASE_URL = process.env.DATABASE_URL || 'postgres://postgres@localhost:5432/postgame';

/** `BASE_URL` naming database `db` (query parameters, such as a socket's host, kept). */
function databaseUrl(db) {
  const url = new URL(BASE_URL);
  url.pathname = `/${db}`;
  return url.toString();
}

/** A free TCP port on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = /** @type {net.AddressInfo} */ (srv.address());
      srv.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export class Server {
  /**
   * @param {{name: string, args?: string[], bin?: string}} options `bin`: another binary
   *   built on postgame (such as `connect4`, in the same target folder), default postgame.
   */
  constructor({ name, args = [], bin }) {
    this.name = name;
    this.args = args;
    this.bin = bin ? path.join(path.dirname(BIN), bin) : BIN;
    // run-tests.sh sets POSTGAME_WEBTEST_RUN to drop whatever a killed run leaves behind.
    const run = process.env.POSTGAME_WEBTEST_RUN || `p${process.pid}`;
    this.db = `postgame_webtest_${run}_${name}_${Math.random().toString(36).slice(2, 8)}`;
    this.databaseUrl = databaseUrl(this.db);
    this.port = 0;
    this.url = '';
    this.proc = null;
    this.runs = 0;
    const logDir = path.join(ROOT, 'target/web-test-logs');
    mkdirSync(logDir, { recursive: true });
    this.logPath = path.join(logDir, `${this.db}.log`);
    this.log = createWriteStream(this.logPath);
  }

  /** Starts the server (on the same port and database as before, after a stop). */
  async start() {
    if (!existsSync(this.bin)) throw new Error(`${this.bin} is missing: run \`cargo build --workspace\` first`);
    if (!this.port) this.port = await freePort();
    this.url = `http://127.0.0.1:${this.port}`;
    this.runs += 1;
    this.log.write(`\n==== start #${this.runs} ====\n`);
    const proc = spawn(
      this.bin,
      ['serve', '--listen', `127.0.0.1:${this.port}`, '--database-url', this.databaseUrl, ...this.args],
      { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' } },
    );
    proc.stdout.pipe(this.log, { end: false });
    proc.stderr.pipe(this.log, { end: false });
    this.proc = proc;
    let exited = null;
    proc.once('exit', (code, signal) => (exited = { code, signal }));
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline) {
      if (exited) throw new Error(`postgame exited (${JSON.stringify(exited)}) at start; log: ${this.logPath}`);
      try {
        const res = await fetch(`${this.url}/readyz`);
        if (res.ok) return this;
      } catch {
        // not listening yet
      }
      await sleep(100);
    }
    throw new Error(`postgame was not ready within 60 s; log: ${this.logPath}`);
  }

  /** Stops the server gracefully (SIGTERM: connections close with 1001). */
  async stop() {
    const proc = this.proc;
    if (!proc) return;
    this.proc = null;
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise((r) => proc.once('exit', r));
    proc.kill('SIGTERM');
    const timer = setTimeout(() => proc.kill('SIGKILL'), 15_000);
    await exited;
    clearTimeout(timer);
  }

  async restart() {
    await this.stop();
    await this.start();
  }

  /** Stops the server and drops its database. */
  async destroy() {
    await this.stop();
    try {
      execFileSync('psql', [databaseUrl('postgres'), '-qAtc', `DROP DATABASE IF EXISTS "${this.db}" WITH (FORCE)`], {
        stdio: 'ignore',
      });
    } catch {
      // the database is left behind; it is named postgame_webtest_* for a cleanup step
    }
    this.log.end();
  }

  /** A guest token straight from the HTTP API. */
  async guest(name) {
    const res = await fetch(`${this.url}/v1/tokens`, { method: 'POST', body: JSON.stringify(name ? { name } : {}) });
    if (res.status !== 201) throw new Error(`POST /v1/tokens: ${res.status}`);
    return res.json();
  }
}
