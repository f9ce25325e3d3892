// postgame.js against the real server: `node --experimental-websocket --test web/test`
// (Node.js 22+ needs no flag). Needs target/debug/postgame (cargo build) and PostgreSQL.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { connect, PostgameError, ERROR_CODES } from '../postgame.js';
import { Server } from '../testlib/server.mjs';
import { waitFor } from '../testlib/wait.mjs';
import { CuttableProxy } from '../testlib/proxy.mjs';

if (typeof WebSocket !== 'function') {
  throw new Error('no global WebSocket: run node with --experimental-websocket (Node.js 20)');
}

/** Every test fails rather than hangs. */
const T = { timeout: 60_000 };

/** @type {Server} */
let server;
/** @type {Set<import('../postgame.js').Client>} */
const clients = new Set();

before(async () => {
  server = new Server({ name: 'client' });
  await server.start();
});

after(async () => {
  for (const c of clients) c.close();
  await server.destroy();
});

function memoryStorage() {
  const map = new Map();
  return {
    map,
    getItem: (k) => (map.has(k) ? map.get(k) : null),
    setItem: (k, v) => map.set(k, String(v)),
    removeItem: (k) => map.delete(k),
  };
}

/** A client with quick reconnects, closed after the tests. */
function client(options = {}) {
  const c = connect({ url: server.url, backoff: { initialMs: 50, maxMs: 500 }, ...options });
  clients.add(c);
  return c;
}


async function newMatch(c, config = { turn_seconds: 600, reconnect_seconds: 600 }) {
  const m = await c.request('POST', '/v1/matches', { game: 'tictactoe', config });
  assert.equal(m.status, 'waiting');
  return m.id;
}

async function history(c, channel) {
  const { messages } = await c.request('GET', `/v1/channels/${channel}/history?since=0&limit=1000`);
  return messages;
}

async function assertRejects(promise, code) {
  await assert.rejects(promise, (e) => {
    assert.ok(e instanceof PostgameError, `a PostgameError, not ${e}`);
    assert.ok(e instanceof Error);
    assert.equal(e.code, code, `code of "${e.message}"`);
    return true;
  });
}

test('connect fetches a guest token, keeps it in storage, and a second client reuses it', T, async () => {
  const storage = memoryStorage();
  let tokenPosts = 0;
  const countingFetch = (url, init) => {
    if (String(url).endsWith('/v1/tokens')) tokenPosts += 1;
    return fetch(url, init);
  };
  const states = [];
  const a = client({ storage, fetch: countingFetch, name: 'alice' });
  a.on('state', (s) => states.push(s));
  await a.request('GET', '/v1/matches?limit=1'); // races the connection for the guest token
  await a.whenConnected();
  assert.deepEqual(states, ['connected']); // 'connecting' was emitted synchronously by connect()
  assert.equal(a.state, 'connected');
  assert.match(a.clientId, /^guest-[0-9a-f]{32}$/);
  assert.ok(a.connectionId);
  const saved = JSON.parse(storage.getItem('postgame.guest'));
  assert.equal(saved.client_id, a.clientId);
  assert.equal(tokenPosts, 1);
  a.close();
  assert.equal(a.state, 'disconnected');

  // A reload: a new client with the same storage is the same client.
  const b = client({ storage, fetch: countingFetch });
  assert.equal(b.clientId, saved.client_id, 'known before connecting');
  await b.whenConnected();
  assert.equal(b.clientId, saved.client_id);
  assert.equal(tokenPosts, 1, 'no second guest token');
});

test('subscribe, publish and ack; a rejected move arrives on user:<id>', T, async () => {
  const a = client();
  await a.whenConnected();
  const id = await newMatch(a);
  const matchMsgs = [];
  const userMsgs = [];
  const sub = a.subscribe(`match:${id}`, (m) => matchMsgs.push(m), { since: 0 });
  const info = await sub.ready;
  assert.equal(info.recovered, true);
  assert.ok(info.head >= 1);
  await a.subscribe(`user:${a.clientId}`, (m) => userMsgs.push(m)).ready;
  await waitFor('the first state', () => matchMsgs.length >= 1);
  assert.equal(matchMsgs[0].seq, 1);
  assert.equal(matchMsgs[0].name, 'state');
  assert.equal(matchMsgs[0].data.status, 'waiting');

  const ack = await a.publish(`control:${id}`, 'join', {});
  assert.equal(ack.duplicate, false);
  assert.equal(typeof ack.msgId, 'number');
  assert.equal(ack.channel, `control:${id}`);
  assert.ok(ack.key);
  await waitFor('seat X', () => matchMsgs.find((m) => m.data?.players?.X === a.clientId));

  const move = await a.publish(`control:${id}`, 'move', { cell: 4 });
  const rejected = await waitFor('a rejection', () => userMsgs.find((m) => m.name === 'rejected'));
  assert.deepEqual(rejected.data, { reason: 'not_started', ref: move.msgId });
  assert.equal(sub.lastSeq, matchMsgs.at(-1).seq);
});

test('resume after forced disconnects: every message once, in order', T, async () => {
  const proxy = new CuttableProxy(server.port);
  const proxyUrl = await proxy.listen();
  try {
    const a = client({ url: proxyUrl });
    const b = client();
    await Promise.all([a.whenConnected(), b.whenConnected()]);
    const id = await newMatch(b);
    const got = [];
    const resubscribed = [];
    const sub = a.subscribe(`match:${id}`, (m) => m.name === 'chat' && got.push(m), {
      onSubscribed: (info) => resubscribed.push(info),
    });
    await sub.ready;
    const events = [];
    a.on('disconnected', (e) => events.push(['disconnected', e.code]));
    a.on('connected', (e) => events.push(['connected', e.resumed]));

    const N = 60;
    const sending = (async () => {
      for (let i = 0; i < N; i++) await b.publish(`control:${id}`, 'chat', { text: `m${i}` });
    })();
    await waitFor('some messages', () => got.length >= 10);
    proxy.cut(); // the network fails: an abnormal close
    await waitFor('a reconnect', () => events.some(([e]) => e === 'connected'));
    await waitFor('more messages', () => got.length >= 30);
    a.reconnect(); // and a client-side drop
    await sending;
    await waitFor('every message', () => got.length >= N);

    assert.deepEqual(
      got.map((m) => m.data.text),
      Array.from({ length: N }, (_, i) => `m${i}`),
    );
    for (let i = 1; i < got.length; i++) assert.equal(got[i].seq, got[i - 1].seq + 1, 'no gap');
    assert.ok(events.filter(([e]) => e === 'connected').length >= 2, JSON.stringify(events));
    assert.ok(resubscribed.length >= 3);
    assert.ok(resubscribed.every((r) => r.recovered));
    assert.deepEqual(
      resubscribed.map((r) => r.resumed),
      [false, ...resubscribed.slice(1).map(() => true)],
    );
  } finally {
    await proxy.close();
  }
});

test('a publish whose ack was lost is resent with the same key and applied once', T, async () => {
  const proxy = new CuttableProxy(server.port);
  const proxyUrl = await proxy.listen();
  try {
    const a = client({ url: proxyUrl });
    const direct = client(); // HTTP through the proxy would be muted too
    await a.whenConnected();
    const id = await newMatch(direct);
    const chats = [];
    await a.subscribe(`match:${id}`, (m) => m.name === 'chat' && chats.push(m.data.text)).ready;

    proxy.muteDown = true; // the server's answers are lost from now on
    const pending = a.publish(`control:${id}`, 'chat', { text: 'once' });
    await waitFor('the commit', async () =>
      (await history(direct, `match:${id}`)).some((m) => m.name === 'chat'),
    );
    proxy.muteDown = false;
    proxy.cut();
    const ack = await pending;
    assert.equal(ack.duplicate, true, 'the retry was recognised by its key');

    // A publish made while disconnected waits for the connection.
    proxy.cut();
    const later = await a.publish(`control:${id}`, 'chat', { text: 'later' });
    assert.equal(later.duplicate, false);

    await waitFor('both chats', () => chats.length >= 2);
    assert.deepEqual(chats, ['once', 'later']);
    const texts = (await history(direct, `match:${id}`)).filter((m) => m.name === 'chat').map((m) => m.data.text);
    assert.deepEqual(texts, ['once', 'later']);

    // An explicit key: the second publish is a duplicate with the first msg_id.
    const k1 = await a.publish(`control:${id}`, 'chat', { text: 'keyed' }, { key: 'my-key-1' });
    const k2 = await a.publish(`control:${id}`, 'chat', { text: 'keyed again' }, { key: 'my-key-1' });
    assert.equal(k1.duplicate, false);
    assert.equal(k2.duplicate, true);
    assert.equal(k2.msgId, k1.msgId);
  } finally {
    await proxy.close();
  }
});

test('reconnects with backoff across a server restart and resumes', T, async () => {
  const a = client();
  const b = client();
  await Promise.all([a.whenConnected(), b.whenConnected()]);
  const id = await newMatch(b);
  const chats = [];
  await a.subscribe(`match:${id}`, (m) => m.name === 'chat' && chats.push(m.data.text)).ready;
  await b.publish(`control:${id}`, 'chat', { text: 'before' });
  await waitFor('before', () => chats.length === 1);

  const retries = [];
  a.on('disconnected', (e) => retries.push(e));
  await server.stop();
  await waitFor('some retries', () => retries.length >= 3);
  assert.equal(retries[0].code, 1001, 'a graceful shutdown closes with 1001');
  assert.ok(retries.every((r) => r.retryInMs > 0));
  // Exponential: the later delays are longer than the first (jitter keeps them within [d/2, d]).
  assert.ok(retries.at(-1).retryInMs > retries[0].retryInMs, JSON.stringify(retries.map((r) => r.retryInMs)));
  assert.equal(a.state === 'connected', false);
  const queued = a.publish(`control:${id}`, 'chat', { text: 'queued' });

  await server.start();
  await Promise.all([a.whenConnected(), b.whenConnected()]);
  assert.equal((await queued).duplicate, false);
  await b.publish(`control:${id}`, 'chat', { text: 'after' });
  await waitFor('all chats', () => chats.length >= 3);
  assert.deepEqual(chats, ['before', 'queued', 'after']);
});

test('errors are PostgameErrors with the protocol codes', T, async () => {
  assert.deepEqual(ERROR_CODES.slice(0, 7), [
    'bad_request',
    'unauthorized',
    'forbidden',
    'not_found',
    'too_large',
    'rate_limited',
    'internal',
  ]);
  const a = client();
  await a.whenConnected();
  const id = await newMatch(a);
  const missing = '00000000-0000-4000-8000-000000000000';

  let onErrorCalled = null;
  const control = a.subscribe(`control:${id}`, () => {}, { onError: (e) => (onErrorCalled = e) });
  await assertRejects(control.ready, 'forbidden');
  assert.equal(onErrorCalled?.code, 'forbidden');
  assert.equal(a.subscription(`control:${id}`), undefined, 'a refused subscription is gone');
  await assertRejects(a.subscribe(`match:${missing}`, () => {}, { onError() {} }).ready, 'not_found');
  await assertRejects(a.subscribe('no spaces allowed', () => {}, { onError() {} }).ready, 'bad_request');
  await assertRejects(a.subscribe('user:someone-else', () => {}, { onError() {} }).ready, 'forbidden');
  assert.throws(() => {
    a.subscribe(`match:${id}`, () => {});
    a.subscribe(`match:${id}`, () => {});
  }, (e) => e instanceof PostgameError && e.code === 'bad_request');

  await assertRejects(a.publish(`control:${missing}`, 'join', {}), 'not_found');
  await assertRejects(a.publish(`control:${id}`, '$connected', {}), 'bad_request');
  await assertRejects(a.publish('lobby', 'match', {}), 'forbidden');
  await assertRejects(a.publish(`control:${id}`, 'chat', { text: 'x'.repeat(70000) }), 'too_large');
  assert.equal(a.state, 'connected', 'refusals keep the connection');

  await assert.rejects(a.request('GET', `/v1/matches/${missing}`), (e) => {
    assert.ok(e instanceof PostgameError);
    assert.equal(e.code, 'not_found');
    assert.equal(e.status, 404);
    return true;
  });
  await assertRejects(a.request('POST', '/v1/matches', { game: 'chess' }), 'bad_request');

  // A refused token: an `unauthorized` error with close code 4001, and no reconnect loop.
  const bad = client({ token: 'not-a-jwt' });
  const error = await new Promise((resolve) => bad.on('error', resolve));
  assert.equal(error.code, 'unauthorized');
  assert.equal(error.closeCode, 4001);
  await assertRejects(bad.publish(`control:${id}`, 'join', {}), 'unauthorized');
  await assertRejects(bad.whenConnected(), 'unauthorized');
  assert.equal(bad.state, 'disconnected');

  // A stored guest token the server refuses is replaced by a fresh one.
  const storage = memoryStorage();
  storage.setItem(
    'postgame.guest',
    JSON.stringify({ token: 'stale', client_id: 'guest-old', expires_at: new Date(Date.now() + 3600e3).toISOString() }),
  );
  const renewed = client({ storage });
  await renewed.whenConnected();
  assert.notEqual(renewed.clientId, 'guest-old');
  assert.equal(JSON.parse(storage.getItem('postgame.guest')).client_id, renewed.clientId);

  // close() rejects what is still pending with `closed`.
  const closing = client();
  const pending = closing.publish(`control:${id}`, 'chat', { text: 'never sent' });
  closing.close();
  await assertRejects(pending, 'closed');
  await assertRejects(closing.whenConnected(), 'closed');
});
