// postgame.js and `latest` frames (a conflated latest value per channel and name, such as
// Pong's per-tick `state`), against the real server:
// `node --experimental-websocket --test web/test`. Needs target/debug/postgame and PostgreSQL.
// A raw WebSocket beside the library checks that the server really sends `latest` frames.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { connect } from '../postgame.js';
import { Server } from '../testlib/server.mjs';
import { sleep, waitFor } from '../testlib/wait.mjs';

if (typeof WebSocket !== 'function') {
  throw new Error('no global WebSocket: run node with --experimental-websocket (Node.js 20)');
}

const T = { timeout: 60_000 };

/** @type {Server} */
let server;
const clients = new Set();
/** @type {Set<WebSocket>} */
const sockets = new Set();

before(async () => {
  server = new Server({ name: 'latest' });
  await server.start();
});

after(async () => {
  for (const c of clients) c.close();
  for (const ws of sockets) ws.close();
  await server.destroy();
});

function client() {
  const c = connect({ url: server.url, backoff: { initialMs: 50, maxMs: 500 } });
  clients.add(c);
  return c;
}



/** A bare WebSocket subscribed to `channel`, recording every frame the server sends. */
async function rawSubscriber(channel) {
  const { token } = await server.guest();
  const ws = new WebSocket(`${server.url.replace(/^http/, 'ws')}/v1/ws?token=${encodeURIComponent(token)}`);
  sockets.add(ws);
  const frames = [];
  ws.onmessage = (ev) => frames.push(JSON.parse(ev.data));
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = reject;
  });
  await waitFor('connected', () => frames.some((f) => f.op === 'connected'));
  ws.send(JSON.stringify({ op: 'subscribe', id: 1, channel }));
  await waitFor('subscribed', () => frames.some((f) => f.op === 'subscribed'));
  return { ws, frames };
}

test('latest frames reach onMessage as {latest: true, version}, deduplicated by version across reconnects', T, async () => {
  const a = client();
  const b = client();
  await Promise.all([a.whenConnected(), b.whenConnected()]);
  const { id } = await a.request('POST', '/v1/matches', { game: 'pong', config: { points_to_win: 21 } });
  const channel = `match:${id}`;
  const got = [];
  const resubscribed = [];
  const sub = a.subscribe(channel, (m) => got.push(m), { onSubscribed: (info) => resubscribed.push(info) });
  await sub.ready;
  const raw = await rawSubscriber(channel);
  await a.publish(`control:${id}`, 'join', {});
  await b.publish(`control:${id}`, 'join', {});
  await waitFor('play', () => got.some((m) => m.data.status === 'playing'));

  // The server sends per-tick states as `latest` frames.
  await waitFor('a latest frame', () => raw.frames.some((f) => f.op === 'latest'));

  await waitFor('latest values', () => got.filter((m) => m.latest).length >= 5);
  // A reconnect in the middle of play.
  const before = got.length;
  a.reconnect();
  await waitFor('the resubscription', () => resubscribed.length >= 2);
  await waitFor('more latest values', () => got.slice(before).filter((m) => m.latest).length >= 5);

  // Then the match ends (B leaves): no more ticks, the latest value stays put.
  await b.publish(`control:${id}`, 'leave', {});
  await waitFor('the end', () => got.some((m) => m.latest && m.data.status === 'finished'));
  await waitFor('the logged end', () => got.some((m) => !m.latest && m.data.status === 'finished'));
  const version = sub.latestVersions.get('state');
  assert.equal(version, got.filter((m) => m.latest).at(-1).version);

  // After subscribing, the server sends the current latest value (a fresh raw subscriber
  // sees it, with that same version)...
  const late = await rawSubscriber(channel);
  const current = await waitFor('the current value', () => late.frames.find((f) => f.op === 'latest'));
  assert.equal(current.version, version);
  assert.equal(current.data.status, 'finished');
  // ...so a reconnect of A gets it again, and postgame.js must not deliver it twice.
  const count = got.length;
  a.reconnect();
  await waitFor('the second resubscription', () => resubscribed.length >= 3);
  await sleep(1000); // time for the re-sent value to arrive (and be dropped)
  assert.deepEqual(got.slice(count), [], 'nothing new after the match ended');
  assert.equal(sub.latestVersions.get('state'), version, 'the version map survives the reconnect');

  // Shapes: latest values have a version and no seq; log messages keep their gap-free seqs.
  const latest = got.filter((m) => m.latest);
  const logged = got.filter((m) => !m.latest);
  for (const m of latest) {
    assert.deepEqual(Object.keys(m).sort(), ['channel', 'data', 'latest', 'name', 'ts', 'version']);
    assert.equal(m.latest, true);
    assert.equal(m.channel, channel);
    assert.equal(m.name, 'state');
    assert.equal(typeof m.version, 'number');
    assert.ok(!Number.isNaN(Date.parse(m.ts)));
  }
  for (let i = 1; i < latest.length; i++) {
    assert.ok(latest[i].version > latest[i - 1].version, `versions increase: ${latest[i - 1].version} then ${latest[i].version}`);
    assert.ok(latest[i].data.tick >= latest[i - 1].data.tick, 'and so do the ticks');
  }
  assert.ok(logged.length >= 3, 'the joins and the end are logged too');
  for (const m of logged) {
    assert.equal(m.latest, undefined);
    assert.equal(typeof m.seq, 'number');
  }
  for (let i = 1; i < logged.length; i++) assert.equal(logged[i].seq, logged[i - 1].seq + 1, 'no gap, no duplicate');
});
