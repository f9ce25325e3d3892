// postgame.js: the JavaScript client of postgame's wire protocol (docs/protocol.md).
//
// A dependency-free ES module for browsers and Node.js (20 with --experimental-websocket,
// or 22+). Served by `postgame serve` at /postgame.js; types are in /postgame.d.ts.
//
//   import { connect } from '/postgame.js';
//   const client = connect({ url: location.origin, storage: sessionStorage });
//   client.subscribe('lobby', (msg) => console.log(msg.name, msg.data));
//   await client.publish(`control:${matchId}`, 'move', { cell: 4 });
//
// What it does for you:
// - gets a guest token from POST /v1/tokens when none is given, and keeps it in `storage`
//   so that a reload keeps the same identity;
// - reconnects after any drop, with exponential backoff and jitter;
// - resubscribes every channel after a reconnect with `since` = the last seq it delivered,
//   so a subscriber sees every message once, in order (no gap, no duplicate);
// - delivers `latest` frames (conflated latest values, such as Pong's per-tick states) to
//   the same handler, marked `latest: true`, dropping any whose `version` is not above the
//   highest one seen for its (channel, name), across reconnects too;
// - gives every publish an idempotency key and resends unacknowledged publishes with the
//   same key after a reconnect, so a publish is applied at most once and is never lost
//   while the client lives;
// - answers with PostgameError, whose `code` is one of the protocol's error codes.

/** @typedef {'connecting' | 'connected' | 'disconnected'} ConnectionState */

/**
 * @typedef {object} Message A message delivered on a channel.
 * @property {string} channel
 * @property {number} seq strictly increasing per channel
 * @property {string} name
 * @property {any} data
 * @property {string} ts RFC 3339
 */

/**
 * @typedef {object} LatestMessage The newest value of a conflated stream (a `latest` frame):
 *   no seq, no history, no resume; versions may skip, and are delivered in increasing order
 *   per (channel, name). Not ordered with respect to `message` frames.
 * @property {string} channel
 * @property {string} name
 * @property {any} data
 * @property {string} ts RFC 3339
 * @property {number} version strictly increasing per (channel, name)
 * @property {true} latest
 */

/**
 * @typedef {object} Ack
 * @property {string} channel
 * @property {string | number} msgId
 * @property {boolean} duplicate true when the key had been used before: nothing was done again
 * @property {string} key the idempotency key the publish carried
 */

/**
 * @typedef {object} StorageLike A `localStorage`/`sessionStorage`-like store.
 * @property {(key: string) => string | null} getItem
 * @property {(key: string, value: string) => void} setItem
 * @property {(key: string) => void} removeItem
 */

/** The error codes of the protocol, plus `closed` and `network` (client-side). */
export const ERROR_CODES = Object.freeze([
  'bad_request',
  'unauthorized',
  'forbidden',
  'not_found',
  'too_large',
  'rate_limited',
  'internal',
  'closed',
  'network',
]);

const STATUS_CODES = {
  400: 'bad_request',
  401: 'unauthorized',
  403: 'forbidden',
  404: 'not_found',
  405: 'bad_request',
  413: 'too_large',
  429: 'rate_limited',
};

const CLOSE_CODES = {
  1009: 'too_large',
  1011: 'internal',
  4000: 'bad_request',
  4001: 'unauthorized',
  4003: 'forbidden',
  4008: 'rate_limited',
};

/** An error from the server or the client, with a machine-readable `code`. */
export class PostgameError extends Error {
  /**
   * @param {string} code one of ERROR_CODES
   * @param {string} message a sentence for people
   * @param {{status?: number, closeCode?: number}} [details]
   */
  constructor(code, message, details = {}) {
    super(message);
    this.name = 'PostgameError';
    /** @type {string} */
    this.code = ERROR_CODES.includes(code) ? code : 'internal';
    /** @type {number | undefined} the HTTP status, for HTTP errors */
    this.status = details.status;
    /** @type {number | undefined} the WebSocket close code, for connection errors */
    this.closeCode = details.closeCode;
  }

  /** The error code of an HTTP status. @param {number} status */
  static codeOfStatus(status) {
    return STATUS_CODES[status] || (status >= 500 ? 'internal' : 'bad_request');
  }

  /** The error code of a WebSocket close code, or null for an ordinary close. @param {number} closeCode */
  static codeOfClose(closeCode) {
    return CLOSE_CODES[closeCode] || null;
  }
}

/** @returns {string} a random idempotency key */
function randomKey() {
  const c = globalThis.crypto;
  // randomUUID exists only in secure contexts (https, localhost); getRandomValues everywhere.
  if (c && typeof c.randomUUID === 'function') return c.randomUUID();
  const bytes = new Uint8Array(16);
  if (c && typeof c.getRandomValues === 'function') c.getRandomValues(bytes);
  else for (let i = 0; i < 16; i++) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** @returns {StorageLike} */
function memoryStorage() {
  const map = new Map();
  return {
    getItem: (k) => (map.has(k) ? map.get(k) : null),
    setItem: (k, v) => void map.set(k, String(v)),
    removeItem: (k) => void map.delete(k),
  };
}

/**
 * One subscription to a channel. Made by {@link Client#subscribe}.
 */
export class Subscription {
  /** @param {Client} client @param {string} channel @param {(m: Message | LatestMessage) => void} onMessage @param {SubscribeOptions} options */
  constructor(client, channel, onMessage, options) {
    this._client = client;
    /** @type {string} */
    this.channel = channel;
    this._onMessage = onMessage;
    this._options = options;
    /** @type {number | null} the seq of the last message delivered (null before the first `subscribed` without `since`) */
    this.lastSeq = typeof options.since === 'number' ? options.since : null;
    /** @type {Map<string, number>} per name, the highest `version` of a `latest` frame seen (kept across reconnects) */
    this.latestVersions = new Map();
    /** @type {boolean} */
    this.active = true;
    this._pending = false; // a subscribe request awaits its reply
    this._live = false; // `subscribed` received on the current connection
    /** @type {{head: number, recovered: boolean} | null} */
    this.info = null;
    /** @type {(v: {head: number, recovered: boolean}) => void} */
    let resolve = () => {};
    /** @type {(e: PostgameError) => void} */
    let reject = () => {};
    /** Settled by the first `subscribed` (or the refusal). @type {Promise<{head: number, recovered: boolean}>} */
    this.ready = new Promise((res, rej) => {
      resolve = res;
      reject = rej;
    });
    this.ready.catch(() => {}); // a refusal is reported through onError and the 'error' event too
    this._resolve = resolve;
    this._reject = reject;
  }

  /** Stops the subscription (on the server too). @returns {Promise<void>} */
  unsubscribe() {
    return this._client._unsubscribe(this);
  }
}

/**
 * @typedef {object} SubscribeOptions
 * @property {number} [since] start after this seq (replays what follows); default: from now on
 * @property {(info: {head: number, recovered: boolean, resumed: boolean}) => void} [onSubscribed]
 *   called after every (re)subscription; `recovered: false` means messages were lost (pruned):
 *   rebuild your view from a fresh source
 * @property {(error: PostgameError) => void} [onError] the subscription was refused
 */

/**
 * @typedef {object} ConnectOptions
 * @property {string} [url] the server's base URL (http(s)://host:port or ws(s)://…); default: location.origin
 * @property {string | (() => string | Promise<string>)} [token] a token, or a function that returns one (called at every connect)
 * @property {StorageLike} [storage] where a guest token is kept (e.g. localStorage or sessionStorage); default: memory only
 * @property {string} [storageKey] the key in `storage`; default 'postgame.guest'
 * @property {string} [name] display name for a new guest token
 * @property {{initialMs?: number, maxMs?: number}} [backoff] reconnect delays; default 500 ms doubling up to 10 s, with jitter
 * @property {typeof WebSocket} [WebSocket] a WebSocket class; default: globalThis.WebSocket
 * @property {typeof fetch} [fetch] a fetch function; default: globalThis.fetch
 */

/**
 * A connection to postgame that stays connected: see the module comment.
 */
export class Client {
  /** @param {ConnectOptions} options */
  constructor(options = {}) {
    const loc = globalThis.location;
    const url = (options.url || (loc && loc.origin) || '').replace(/\/+$/, '');
    if (!url) throw new PostgameError('bad_request', 'connect(): `url` is required outside a browser');
    /** @type {string} the server's HTTP base URL */
    this.httpUrl = url.replace(/^ws(s?):/i, 'http$1:');
    this._wsUrl = this.httpUrl.replace(/^http(s?):/i, 'ws$1:') + '/v1/ws';
    this._tokenOption = options.token;
    this._storage = options.storage || memoryStorage();
    this._storageKey = options.storageKey || 'postgame.guest';
    this._name = options.name;
    this._backoff = { initialMs: 500, maxMs: 10000, ...(options.backoff || {}) };
    this._WebSocket = options.WebSocket || globalThis.WebSocket;
    this._fetch = options.fetch || globalThis.fetch.bind(globalThis);
    if (typeof this._WebSocket !== 'function') {
      throw new PostgameError('bad_request', 'no WebSocket class: pass `WebSocket` (Node.js 20 needs --experimental-websocket)');
    }

    /** @type {ConnectionState} */
    this.state = 'disconnected';
    /** @type {string | null} the client id (the token's `sub`), known once a guest token is loaded or the server greeted */
    this.clientId = null;
    /** @type {string | null} */
    this.connectionId = null;
    /** @type {number} server time minus local time, in ms (from the `connected` greeting) */
    this.clockOffsetMs = 0;
    /** @type {number} */
    this.maxFrameBytes = 65536;

    /** @type {Map<string, Set<Function>>} */
    this._listeners = new Map();
    /** @type {Map<string, Subscription>} */
    this._subs = new Map();
    /** Publishes not yet acknowledged, in the order they were made. @type {Map<number, any>} */
    this._publishes = new Map();
    this._publishNo = 0;
    /** Replies awaited on the current socket, by request id. @type {Map<number, (frame: any) => void>} */
    this._replies = new Map();
    this._nextId = 1;
    /** @type {WebSocket | null} */
    this._ws = null;
    this._attempt = 0;
    this._gen = 0;
    this._timer = null;
    this._heartbeat = null;
    this._lastRx = 0;
    this._closed = false;
    this._stopped = false; // a fatal error (a refused caller token): no more reconnects
    this._everConnected = false;
    this._guest = this._tokenOption === undefined;
    this._guestFetch = null;
    this._memoryGuest = null;

    const saved = this._guest ? this._loadGuest() : null;
    if (saved) this.clientId = saved.client_id;

    this._onOnline = () => this._retryNow();
    if (typeof window !== 'undefined' && window.addEventListener) {
      window.addEventListener('online', this._onOnline);
      document.addEventListener('visibilitychange', this._onOnline);
    }
    this._open();
  }

  // ---- events ---------------------------------------------------------------------------

  /**
   * Listens to an event: 'connecting', 'connected' ({clientId, connectionId, serverTime}),
   * 'disconnected' ({code, reason, error, retryInMs}), 'state' (the new ConnectionState),
   * 'error' (a PostgameError without a request to reject, such as a refused token).
   * @param {string} event @param {(arg: any) => void} fn @returns {() => void} removes the listener
   */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  /** @param {string} event @param {(arg: any) => void} fn */
  off(event, fn) {
    const set = this._listeners.get(event);
    if (set) set.delete(fn);
  }

  _emit(event, arg) {
    for (const fn of [...(this._listeners.get(event) || [])]) {
      try {
        fn(arg);
      } catch (e) {
        console.error(`postgame: a '${event}' listener threw`, e);
      }
    }
  }

  _setState(state, arg) {
    if (this.state === state) return;
    this.state = state;
    this._emit(state, arg);
    this._emit('state', state);
  }

  /**
   * Resolves at the next moment the client is connected (at once if it is).
   * @returns {Promise<void>}
   */
  whenConnected() {
    if (this.state === 'connected') return Promise.resolve();
    if (this._closed) return Promise.reject(new PostgameError('closed', 'the client is closed'));
    if (this._stopped && this._fatal) return Promise.reject(this._fatal);
    return new Promise((resolve, reject) => {
      const offs = [
        this.on('connected', () => done(null)),
        this.on('closed', () => done(new PostgameError('closed', 'the client is closed'))),
        // retryInMs null: the client gave up (a refused token of the caller's).
        this.on('disconnected', (e) => this._stopped && !this._closed && done(e.error || this._fatal)),
      ];
      const done = (error) => {
        for (const off of offs) off();
        if (error) reject(error);
        else resolve();
      };
    });
  }

  // ---- tokens and HTTP ------------------------------------------------------------------

  _loadGuest() {
    try {
      const raw = this._storage.getItem(this._storageKey);
      const saved = raw ? JSON.parse(raw) : this._memoryGuest;
      if (!saved) return null;
      const exp = Date.parse(saved.expires_at);
      if (!saved.token || !saved.client_id || !(exp - Date.now() > 60000)) return null;
      return saved;
    } catch {
      return null;
    }
  }

  _forgetGuest() {
    this._memoryGuest = null;
    try {
      this._storage.removeItem(this._storageKey);
    } catch {
      // a storage that refuses is a storage that keeps nothing
    }
  }

  /** The token to use now: the caller's, or a (stored or new) guest token. @returns {Promise<string>} */
  async _token() {
    if (typeof this._tokenOption === 'string') return this._tokenOption;
    if (typeof this._tokenOption === 'function') return await this._tokenOption();
    const saved = this._loadGuest();
    if (saved) {
      this.clientId = saved.client_id;
      return saved.token;
    }
    // One request at a time: two guests at once would be two identities.
    if (!this._guestFetch) {
      const body = this._name ? { name: this._name } : {};
      this._guestFetch = this._http('POST', '/v1/tokens', body, null)
        .then((guest) => {
          try {
            this._storage.setItem(this._storageKey, JSON.stringify(guest));
          } catch {
            this._memoryGuest = guest; // a storage that refuses: keep it for this client's life
          }
          this.clientId = guest.client_id;
          return guest;
        })
        .finally(() => {
          this._guestFetch = null;
        });
    }
    return (await this._guestFetch).token;
  }

  async _http(method, path, body, token) {
    /** @type {Record<string, string>} */
    const headers = {};
    if (token) headers.authorization = `Bearer ${token}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    let res;
    try {
      res = await this._fetch(this.httpUrl + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw new PostgameError('network', `the server cannot be reached (${e && e.message ? e.message : e})`);
    }
    const text = await res.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = null;
    }
    if (!res.ok) {
      const code = json && typeof json.code === 'string' ? json.code : PostgameError.codeOfStatus(res.status);
      const message = json && typeof json.message === 'string' ? json.message : text || res.statusText;
      throw new PostgameError(code, message, { status: res.status });
    }
    return json;
  }

  /**
   * An authenticated HTTP request to the server's API (e.g. `request('GET', '/v1/matches?game=tictactoe')`).
   * Resolves with the JSON body; rejects with a PostgameError (with `status`). A refused guest
   * token is replaced once.
   * @param {string} method @param {string} path @param {any} [body] @returns {Promise<any>}
   */
  async request(method, path, body) {
    try {
      return await this._http(method, path, body, await this._token());
    } catch (e) {
      if (!(e instanceof PostgameError) || e.code !== 'unauthorized' || !this._guest) throw e;
      this._forgetGuest();
      return await this._http(method, path, body, await this._token());
    }
  }

  // ---- the connection -------------------------------------------------------------------

  async _open() {
    if (this._closed || this._stopped) return;
    const gen = ++this._gen; // a newer _open (reconnect()) makes this one give up
    this._timer = null;
    this._setState('connecting');
    let token;
    try {
      token = await this._token();
    } catch (e) {
      if (gen !== this._gen || this._closed) return;
      const err = e instanceof PostgameError ? e : new PostgameError('internal', String(e));
      if (err.code !== 'network') this._emit('error', err);
      // No guest tokens on this server, or a bad request: trying again will not help.
      if (err.code === 'forbidden' || err.code === 'bad_request') this._stopped = true;
      this._scheduleReconnect(null, err.message, err);
      return;
    }
    if (gen !== this._gen || this._closed) return;
    let ws;
    try {
      ws = new this._WebSocket(`${this._wsUrl}?token=${encodeURIComponent(token)}`);
    } catch (e) {
      this._scheduleReconnect(null, String(e), new PostgameError('network', String(e)));
      return;
    }
    this._ws = ws;
    /** @type {any} */
    let refusal = null;
    ws.onmessage = (ev) => {
      if (this._ws !== ws) return;
      this._lastRx = Date.now();
      let frame;
      try {
        frame = JSON.parse(typeof ev.data === 'string' ? ev.data : String(ev.data));
      } catch {
        return;
      }
      if (frame && frame.op === 'error' && frame.id == null && frame.code === 'unauthorized') refusal = frame;
      this._onFrame(frame);
    };
    /** @param {number} code @param {string} reason */
    const onClose = (code, reason) => {
      if (this._ws !== ws) return;
      this._dropSocket();
      const errCode = PostgameError.codeOfClose(code);
      const error = errCode
        ? new PostgameError(errCode, (refusal && refusal.message) || reason || `closed with ${code}`, { closeCode: code })
        : null;
      if (code === 4001) {
        if (this._guest) {
          this._forgetGuest(); // expired or from another server: the next attempt takes a fresh one
        } else if (typeof this._tokenOption === 'string') {
          this._stopped = true; // the same token will be refused again
        }
        if (error) this._emit('error', error);
      }
      if (code === 1009 || code === 4000) {
        // The frame that caused it is among the ones sent: do not send them again.
        for (const [no, p] of this._publishes) {
          if (p.sent) {
            this._publishes.delete(no);
            p.reject(error);
          }
        }
        if (error) this._emit('error', error);
      }
      this._scheduleReconnect(code, reason, error);
    };
    ws.onclose = (ev) => onClose(ev.code, ev.reason);
    ws.onerror = () => {
      // Browsers follow an error with a close; some WebSocket implementations (Node.js
      // 20's) do not when the connection cannot even be made.
      setTimeout(() => onClose(1006, 'connection failed'), 100);
    };
  }

  _dropSocket() {
    const ws = this._ws;
    this._ws = null;
    const replies = [...this._replies.values()];
    this._replies.clear();
    this.connectionId = null;
    if (this._heartbeat) clearInterval(this._heartbeat);
    this._heartbeat = null;
    for (const p of this._publishes.values()) p.sent = false;
    for (const sub of this._subs.values()) {
      sub._pending = false;
      sub._live = false;
    }
    // Requests that will never be answered: publishes and subscriptions are sent again on
    // the next connection; an unsubscribe is done (the server forgets the socket's).
    for (const onReply of replies) onReply({ op: '$dropped' });
    if (ws) {
      ws.onmessage = ws.onclose = ws.onerror = ws.onopen = null;
      try {
        ws.close();
      } catch {
        // already closed
      }
    }
  }

  _scheduleReconnect(code, reason, error) {
    if (this._closed) return;
    if (this._stopped) {
      this._fatal = error || new PostgameError('unauthorized', 'the token was refused');
      this._rejectAll(this._fatal);
      this._setState('disconnected', { code, reason, error, retryInMs: null });
      return;
    }
    const base = Math.min(this._backoff.maxMs, this._backoff.initialMs * 2 ** Math.min(this._attempt, 20));
    const delay = Math.round(base / 2 + (Math.random() * base) / 2); // "equal jitter"
    this._attempt += 1;
    this._setState('disconnected', { code, reason, error, retryInMs: delay });
    this._timer = setTimeout(() => this._open(), delay);
  }

  /** Skips the backoff wait (when the browser says it is back online or visible). */
  _retryNow() {
    if (this._timer && !this._closed && !this._stopped) {
      if (typeof document !== 'undefined' && document.visibilityState === 'hidden') return;
      clearTimeout(this._timer);
      this._timer = null;
      this._open();
    }
  }

  /**
   * Drops the current connection (as a network failure would) and connects again at once.
   * Subscriptions resume and unacknowledged publishes are resent.
   */
  reconnect() {
    if (this._closed) return;
    this._stopped = false;
    this._fatal = null;
    if (this._timer) clearTimeout(this._timer);
    this._timer = null;
    if (this._ws) this._dropSocket();
    this._attempt = 0;
    this._setState('disconnected', { code: null, reason: 'reconnect() called', error: null, retryInMs: 0 });
    this._open();
  }

  /** Closes the client for good: no more reconnects; pending publishes are rejected with `closed`. */
  close() {
    if (this._closed) return;
    this._closed = true;
    if (this._timer) clearTimeout(this._timer);
    this._timer = null;
    const ws = this._ws;
    this._dropSocket();
    if (ws) {
      try {
        ws.close(1000);
      } catch {
        // already closed
      }
    }
    this._rejectAll(new PostgameError('closed', 'the client is closed'));
    for (const sub of this._subs.values()) sub.active = false;
    this._subs.clear();
    if (typeof window !== 'undefined' && window.removeEventListener) {
      window.removeEventListener('online', this._onOnline);
      document.removeEventListener('visibilitychange', this._onOnline);
    }
    this._setState('disconnected', { code: 1000, reason: 'closed by the client', error: null, retryInMs: null });
    this._emit('closed');
  }

  _rejectAll(error) {
    for (const p of this._publishes.values()) p.reject(error);
    this._publishes.clear();
  }

  _send(frame) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1 || this.state !== 'connected') return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  _request(frame, onReply) {
    const id = this._nextId++;
    this._replies.set(id, onReply);
    if (!this._send({ ...frame, id })) this._replies.delete(id);
    return id;
  }

  _onFrame(frame) {
    if (!frame || typeof frame.op !== 'string') return;
    if (frame.id != null && this._replies.has(frame.id) && frame.op !== 'message' && frame.op !== 'latest') {
      const onReply = this._replies.get(frame.id);
      this._replies.delete(frame.id);
      onReply(frame);
      return;
    }
    switch (frame.op) {
      case 'connected':
        this._onConnected(frame);
        break;
      case 'message': {
        const sub = this._subs.get(frame.channel);
        // `subscribed` precedes the first message of a subscription: anything before it
        // belongs to an older subscription of the same channel.
        if (!sub || !sub.active || !sub._live || typeof frame.seq !== 'number') return;
        if (sub.lastSeq !== null && frame.seq <= sub.lastSeq) return; // a duplicate
        sub.lastSeq = frame.seq;
        const msg = { channel: frame.channel, seq: frame.seq, name: frame.name, data: frame.data, ts: frame.ts };
        try {
          sub._onMessage(msg);
        } catch (e) {
          console.error(`postgame: the handler of ${frame.channel} threw`, e);
        }
        break;
      }
      case 'latest': {
        const sub = this._subs.get(frame.channel);
        // Like messages, a subscription's latest values follow its `subscribed`.
        if (!sub || !sub.active || !sub._live || typeof frame.version !== 'number') return;
        const seen = sub.latestVersions.get(frame.name);
        if (seen !== undefined && frame.version <= seen) return; // older than what was delivered
        sub.latestVersions.set(frame.name, frame.version);
        const msg = {
          channel: frame.channel,
          name: frame.name,
          data: frame.data,
          ts: frame.ts,
          version: frame.version,
          latest: true,
        };
        try {
          sub._onMessage(msg);
        } catch (e) {
          console.error(`postgame: the handler of ${frame.channel} threw`, e);
        }
        break;
      }
      case 'error':
        // unauthorized and too_large are followed by a close, reported then.
        if (frame.code !== 'unauthorized' && frame.code !== 'too_large') {
          this._emit('error', new PostgameError(frame.code, frame.message || frame.code));
        }
        break;
      default:
        break; // pong, or a reply nobody waits for any more
    }
  }

  _onConnected(frame) {
    this.clientId = frame.client_id;
    this.connectionId = frame.connection_id;
    const serverTime = Date.parse(frame.server_time);
    if (!Number.isNaN(serverTime)) this.clockOffsetMs = serverTime - Date.now();
    if (typeof frame.max_frame_bytes === 'number') this.maxFrameBytes = frame.max_frame_bytes;
    const heartbeatMs = Math.max(1, Number(frame.heartbeat_s) || 25) * 1000;
    this._attempt = 0;
    const resumed = this._everConnected;
    this._everConnected = true;
    this.state = 'connected';
    // App-level pings: the server counts them as traffic, and a silent socket (a dead
    // network path that never closed) is noticed and replaced.
    const ws = this._ws;
    this._heartbeat = setInterval(() => {
      if (this._ws !== ws) return;
      if (Date.now() - this._lastRx > 2 * heartbeatMs) {
        this._dropSocket();
        this._scheduleReconnect(null, 'no answer from the server', null);
        return;
      }
      this._request({ op: 'ping' }, () => {});
    }, heartbeatMs);
    // Subscriptions first, then the publishes that were not acknowledged, in their order.
    for (const sub of this._subs.values()) this._sendSubscribe(sub);
    for (const p of this._publishes.values()) if (!p.sent) this._sendPublish(p);
    const info = { clientId: this.clientId, connectionId: this.connectionId, serverTime: frame.server_time, resumed };
    this._emit('connected', info);
    this._emit('state', 'connected');
  }

  // ---- subscribe ------------------------------------------------------------------------

  /**
   * Subscribes to a channel. Messages reach `onMessage` once each, in seq order, across
   * reconnects. Latest values (`latest: true`, no seq) reach it too, each name's in
   * increasing `version` order, older ones dropped. One subscription per channel and client.
   * @param {string} channel
   * @param {(message: Message | LatestMessage) => void} onMessage
   * @param {SubscribeOptions} [options]
   * @returns {Subscription}
   */
  subscribe(channel, onMessage, options = {}) {
    if (this._closed) throw new PostgameError('closed', 'the client is closed');
    if (this._subs.has(channel)) throw new PostgameError('bad_request', `already subscribed to ${channel}`);
    const sub = new Subscription(this, channel, onMessage, options);
    this._subs.set(channel, sub);
    if (this.state === 'connected') this._sendSubscribe(sub);
    return sub;
  }

  _sendSubscribe(sub) {
    if (sub._pending) return;
    sub._pending = true;
    const resumed = sub.info !== null;
    /** @type {any} */
    const frame = { op: 'subscribe', channel: sub.channel };
    if (sub.lastSeq !== null) frame.since = sub.lastSeq;
    this._request(frame, (reply) => {
      if (reply.op === '$dropped') return;
      sub._pending = false;
      if (!sub.active || this._subs.get(sub.channel) !== sub) return;
      if (reply.op === 'subscribed') {
        sub._live = true;
        const head = Number(reply.head) || 0;
        // Without `since`, the subscription starts at the head; a `since` beyond the head
        // (a reset channel) starts there too.
        if (sub.lastSeq === null || sub.lastSeq > head) sub.lastSeq = head;
        const info = { head, recovered: reply.recovered !== false };
        sub.info = info;
        sub._resolve(info);
        if (sub._options.onSubscribed) {
          try {
            sub._options.onSubscribed({ ...info, resumed });
          } catch (e) {
            console.error(`postgame: onSubscribed of ${sub.channel} threw`, e);
          }
        }
      } else if (reply.op === 'error') {
        const err = new PostgameError(reply.code, reply.message || reply.code);
        if (err.code === 'internal') {
          // The database failed: try again later, on this connection or the next one.
          setTimeout(() => {
            if (sub.active && this._subs.get(sub.channel) === sub && this.state === 'connected') this._sendSubscribe(sub);
          }, 1000);
          return;
        }
        sub.active = false;
        this._subs.delete(sub.channel);
        sub._reject(err);
        if (sub._options.onError) sub._options.onError(err);
        else this._emit('error', err);
      }
    });
  }

  /** @param {Subscription} sub @returns {Promise<void>} */
  _unsubscribe(sub) {
    if (!sub.active) return Promise.resolve();
    sub.active = false;
    if (this._subs.get(sub.channel) === sub) this._subs.delete(sub.channel);
    if (this.state !== 'connected') return Promise.resolve();
    return new Promise((resolve) => {
      this._request({ op: 'unsubscribe', channel: sub.channel }, () => resolve());
      if (this.state !== 'connected') resolve();
    });
  }

  /** The subscription to `channel`, if any. @param {string} channel @returns {Subscription | undefined} */
  subscription(channel) {
    return this._subs.get(channel);
  }

  // ---- publish --------------------------------------------------------------------------

  /**
   * Publishes a message. Resolves with the ack once the server has committed it; rejects
   * with a PostgameError if the server refuses it (or `closed` if the client is closed
   * first). A publish made while disconnected waits for the connection; one that was sent
   * but not acknowledged when the connection dropped is sent again with the same key.
   * @param {string} channel
   * @param {string} name
   * @param {any} [data]
   * @param {{key?: string}} [options] `key`: an idempotency key of your own (default: a random one)
   * @returns {Promise<Ack>}
   */
  publish(channel, name, data = null, options = {}) {
    if (this._closed) return Promise.reject(new PostgameError('closed', 'the client is closed'));
    if (this._stopped && this._fatal) return Promise.reject(this._fatal);
    const key = options.key || randomKey();
    return new Promise((resolve, reject) => {
      const no = ++this._publishNo;
      const p = { no, channel, name, data, key, resolve, reject, sent: false, failures: 0 };
      this._publishes.set(no, p);
      if (this.state === 'connected') this._sendPublish(p);
    });
  }

  _sendPublish(p) {
    const frame = { op: 'publish', channel: p.channel, name: p.name, data: p.data, key: p.key };
    const size = new TextEncoder().encode(JSON.stringify(frame)).length + 32;
    if (size > this.maxFrameBytes) {
      this._publishes.delete(p.no);
      p.reject(new PostgameError('too_large', `the message is larger than ${this.maxFrameBytes} bytes`));
      return;
    }
    p.sent = true;
    this._request(frame, (reply) => {
      if (reply.op === '$dropped' || !this._publishes.has(p.no)) return;
      if (reply.op === 'error' && reply.code === 'internal' && p.failures < 4) {
        // Not committed (the database failed, or the server is shutting down): the same key
        // makes a resend safe. On this connection after a pause, or on the next one.
        p.failures += 1;
        p.sent = false;
        const ws = this._ws;
        setTimeout(() => {
          if (this._ws === ws && !p.sent && this._publishes.has(p.no)) this._sendPublish(p);
        }, 500 * 2 ** p.failures);
        return;
      }
      this._publishes.delete(p.no);
      if (reply.op === 'ack') {
        p.resolve({ channel: reply.channel, msgId: reply.msg_id, duplicate: reply.duplicate === true, key: p.key });
      } else {
        p.reject(new PostgameError(reply.code, reply.message || reply.code));
      }
    });
  }
}

/**
 * Connects to a postgame server; the client keeps itself connected until `close()`.
 * @param {ConnectOptions} [options]
 * @returns {Client}
 */
export function connect(options = {}) {
  return new Client(options);
}
