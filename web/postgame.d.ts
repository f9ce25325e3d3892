// Type declarations of postgame.js, the JavaScript client of postgame (docs/protocol.md).

/** The client's connection state. */
export type ConnectionState = 'connecting' | 'connected' | 'disconnected';

/** The protocol's error codes, plus `closed` (the client was closed) and `network` (HTTP unreachable). */
export type ErrorCode =
  | 'bad_request'
  | 'unauthorized'
  | 'forbidden'
  | 'not_found'
  | 'too_large'
  | 'rate_limited'
  | 'internal'
  | 'closed'
  | 'network';

export declare const ERROR_CODES: readonly ErrorCode[];

/** An error from the server or the client; program against `code`, not `message`. */
export declare class PostgameError extends Error {
  constructor(code: ErrorCode | string, message: string, details?: { status?: number; closeCode?: number });
  readonly name: 'PostgameError';
  readonly code: ErrorCode;
  /** The HTTP status, for errors of `request()`. */
  readonly status?: number;
  /** The WebSocket close code, for connection errors (4001 for a refused token, …). */
  readonly closeCode?: number;
  static codeOfStatus(status: number): ErrorCode;
  static codeOfClose(closeCode: number): ErrorCode | null;
}

/** A message delivered on a channel. */
export interface Message<T = any> {
  channel: string;
  /** Strictly increasing per channel; the client delivers each seq once, in order. */
  seq: number;
  name: string;
  data: T;
  /** RFC 3339. */
  ts: string;
  /** Absent on log messages (see {@link LatestMessage}). */
  latest?: undefined;
}

/**
 * The newest value of a conflated stream (a `latest` frame, such as Pong's per-tick
 * `state`): no seq, no history, no resume. Per (channel, name) the client delivers only
 * versions above the highest one it has delivered (across reconnects too); versions may
 * skip. Not ordered with respect to {@link Message}s: the data carries its own clock.
 */
export interface LatestMessage<T = any> {
  channel: string;
  name: string;
  data: T;
  /** RFC 3339. */
  ts: string;
  /** Strictly increasing per (channel, name). */
  version: number;
  latest: true;
  seq?: undefined;
}

/** What a subscription's `onMessage` receives: tell the two apart by `latest`. */
export type Delivery<T = any> = Message<T> | LatestMessage<T>;

/** The settled result of a publish: the server committed the message. */
export interface Ack {
  channel: string;
  msgId: string | number;
  /** True when the key had been seen before: the message was not processed again. */
  duplicate: boolean;
  /** The idempotency key the publish carried. */
  key: string;
}

/** A `localStorage` / `sessionStorage`-like store. */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export interface ConnectOptions {
  /** The server's base URL, http(s):// or ws(s)://; default `location.origin`. */
  url?: string;
  /** A token, or a function returning one (called at every connection attempt). Without it, a guest token is used. */
  token?: string | (() => string | Promise<string>);
  /** Where the guest token is kept (`localStorage`, `sessionStorage`, …); default: memory only. */
  storage?: StorageLike;
  /** The key in `storage`; default `'postgame.guest'`. */
  storageKey?: string;
  /** A display name for a new guest token. */
  name?: string;
  /** Reconnect delays: `initialMs` (default 500) doubling up to `maxMs` (default 10000), each with jitter. */
  backoff?: { initialMs?: number; maxMs?: number };
  /** A WebSocket class; default `globalThis.WebSocket`. */
  WebSocket?: typeof WebSocket;
  /** A fetch function; default `globalThis.fetch`. */
  fetch?: typeof fetch;
}

export interface SubscribeOptions {
  /** Start after this seq: the retained messages that follow are replayed first. Default: from now on. */
  since?: number;
  /**
   * Called after every (re)subscription. `resumed` is true after a reconnect;
   * `recovered: false` means messages were lost (pruned): rebuild your view from a fresh source.
   */
  onSubscribed?(info: { head: number; recovered: boolean; resumed: boolean }): void;
  /** The server refused the subscription (`forbidden`, `not_found`, `bad_request`); it is ended. */
  onError?(error: PostgameError): void;
}

export declare class Subscription {
  readonly channel: string;
  /** The seq of the last message delivered (the head after a subscribe without `since`). */
  readonly lastSeq: number | null;
  /** Per name, the highest `version` of a latest value delivered (kept across reconnects). */
  readonly latestVersions: ReadonlyMap<string, number>;
  /** False once unsubscribed or refused. */
  readonly active: boolean;
  /** The first `subscribed` reply, or the refusal. */
  readonly ready: Promise<{ head: number; recovered: boolean }>;
  /** Stops the subscription (on the server too). */
  unsubscribe(): Promise<void>;
}

export interface ConnectedEvent {
  clientId: string;
  connectionId: string;
  serverTime: string;
  /** True for every connection after the first. */
  resumed: boolean;
}

export interface DisconnectedEvent {
  /** The WebSocket close code (1001 server shutdown, 1006 network failure, 4001 unauthorized, …), or null. */
  code: number | null;
  reason: string;
  error: PostgameError | null;
  /** When the next attempt starts, or null when the client stops (closed, or a refused token given by the caller). */
  retryInMs: number | null;
}

export interface ClientEvents {
  connecting: undefined;
  connected: ConnectedEvent;
  disconnected: DisconnectedEvent;
  state: ConnectionState;
  error: PostgameError;
  closed: undefined;
}

export declare class Client {
  constructor(options?: ConnectOptions);
  /** The server's HTTP base URL. */
  readonly httpUrl: string;
  readonly state: ConnectionState;
  /** The client id (the token's `sub`): known once a stored guest token is loaded, or after `connected`. */
  readonly clientId: string | null;
  readonly connectionId: string | null;
  /** Server time minus local time, in ms, measured at the last `connected`. */
  readonly clockOffsetMs: number;
  readonly maxFrameBytes: number;

  on<E extends keyof ClientEvents>(event: E, listener: (arg: ClientEvents[E]) => void): () => void;
  off<E extends keyof ClientEvents>(event: E, listener: (arg: ClientEvents[E]) => void): void;
  /** Resolves when connected (at once if connected); rejects with `closed` if the client is closed first. */
  whenConnected(): Promise<void>;

  /**
   * Subscribes; messages arrive once each, in seq order, across reconnects; latest values
   * (`latest: true`) arrive in increasing version order per name, older ones dropped. One
   * subscription per channel.
   */
  subscribe<T = any>(channel: string, onMessage: (message: Delivery<T>) => void, options?: SubscribeOptions): Subscription;
  subscription(channel: string): Subscription | undefined;

  /**
   * Publishes; resolves once committed. A publish made while disconnected waits for the
   * connection; an unacknowledged one is resent with the same idempotency key after a
   * reconnect, and one refused with `internal` (not committed) is resent a few times before
   * the promise rejects. Other refusals reject at once.
   */
  publish(channel: string, name: string, data?: any, options?: { key?: string }): Promise<Ack>;

  /** An authenticated HTTP request to the API; resolves with the JSON body, rejects with a PostgameError. */
  request<T = any>(method: string, path: string, body?: any): Promise<T>;

  /** Drops the connection and connects again now (subscriptions resume, publishes are resent). */
  reconnect(): void;
  /** Closes for good; pending publishes reject with `closed`. */
  close(): void;
}

/** Connects to a postgame server; the client keeps itself connected until `close()`. */
export declare function connect(options?: ConnectOptions): Client;
