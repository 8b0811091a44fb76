// Hand-written types of relay-client (checked with `tsc --noEmit` in test.sh).

/** Where the client stands. */
export type ConnectionState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'stopped' | 'closed';

/** Something the WebSocket constructor of a browser or of the `ws` package looks like. */
export interface WebSocketLike {
  readonly readyState: number;
  binaryType: string;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: any }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: any) => void) | null;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[], options?: any) => WebSocketLike;

export interface RelayClientOptions {
  /** The node or load balancer: `http(s)://host[:port][/base]` or the `ws(s)://.../ws` URL. */
  url: string;
  /** Guest mode: the name to claim (`?user=`). */
  user?: string;
  /** Guest mode: a resume token from an earlier `welcome.resume` (`?resume=`). */
  resume?: string;
  /** Token or JWT mode: a token from `POST /api/login` or the application's JWT, or a function that returns one. */
  token?: string | (() => string | null | Promise<string | null>);
  /** Called on close 4001 (session expired / token revoked) or a 401 handshake: return a fresh token (then the client reconnects at once) or null (it stops). */
  getToken?: (ctx: { reason: 'expired' | 'unauthorized' }) => string | null | undefined | Promise<string | null | undefined>;
  /** How the token travels: `?token=` (default, works everywhere) or `Authorization: Bearer` (Node `ws` only). */
  tokenIn?: 'query' | 'header';
  /** Subprotocol: `relay.v1.json` (default) or `relay.v1.msgpack`. */
  format?: 'json' | 'msgpack';
  /** MessagePack implementation (default: `import('@msgpack/msgpack')` on first use). */
  msgpack?: { encode(value: unknown): Uint8Array; decode(data: Uint8Array): unknown };
  /** WebSocket constructor (default: globalThis.WebSocket, else the `ws` package). */
  WebSocket?: WebSocketConstructor;
  /** Extra options for the `ws` constructor (headers, agent, ...). */
  wsOptions?: Record<string, unknown>;
  /** fetch used to diagnose refused handshakes in browsers. */
  fetch?: typeof fetch;
  /** First backoff window in ms (default 500). */
  backoffBaseMs?: number;
  /** Largest backoff window in ms (default 15000). */
  backoffMaxMs?: number;
  /** Jitter window of the immediate reconnect after 1001/4000 (default 500). */
  reconnectJitterMs?: number;
  /** A connection that lived this long resets the backoff (default 5000). */
  stableMs?: number;
  /** No welcome within this: the attempt failed (default 10000). */
  connectTimeoutMs?: number;
  /** Reply timeout of requests (default 10000). */
  requestTimeoutMs?: number;
  /** A room message unacknowledged this long on an open connection is sent again, same client_id, up to maxSendRetries times, then rejected with `timeout` (default 8000). */
  ackTimeoutMs?: number;
  /** Give up on a send after this long, connected or not (0, the default: only the ack timeouts above, which do not run while disconnected). */
  sendTimeoutMs?: number;
  /** rate_limited / unavailable retries per message (default 5). */
  maxSendRetries?: number;
  /** How long a hole in the id sequence is waited for before delivering past it (default 500). */
  reorderMs?: number;
  /** Browsers: ask the server with a GET why a handshake failed (default true). */
  diagnose?: boolean;
  /** Call connect() from the constructor (default false). */
  autoConnect?: boolean;
}

/** A room message (`message` frame, or an entry of a history). */
export interface Message {
  type: 'message';
  room: string;
  id: number;
  from: string;
  text?: string;
  ts: number;
  /** Delivered from `joined.history` (the first join or a recovery), not live. */
  replayed?: boolean;
  /** Second edition: deleted entries keep their place without text. */
  deleted?: boolean;
  edited_ts?: number;
  [extra: string]: unknown;
}

export interface Welcome {
  type: 'welcome';
  user: string;
  node: string;
  session: string;
  protocol: number;
  resume: string | null;
  heartbeat_ms: number;
  /** Second edition with a durable store. */
  unread_dms?: Array<{ from: string; count: number }>;
  /** True from the second welcome on. */
  reconnect: boolean;
  [extra: string]: unknown;
}

export interface Joined {
  type: 'joined';
  room: string;
  epoch: string;
  presence: string[];
  /** As the server sent it; its new messages are also delivered one by one as 'message' events. */
  history: Message[];
  recovered: boolean;
  /** The join carried since/epoch (a re-join after a reconnect, or a resumed position). */
  rejoin: boolean;
  /** Messages may be missing between what was delivered before and this history (see the 'gap' event). */
  gap: boolean;
  firstJoin: boolean;
  private?: boolean;
  role?: string;
  unread?: number;
  [extra: string]: unknown;
}

export interface Gap {
  room: string;
  /** epoch: the room's history was lost; overflow: more than the server keeps were missed; missing: a hole in the live stream. */
  reason: 'epoch' | 'overflow' | 'missing';
  /** Last id delivered before the hole (null after an epoch change). */
  after: number | null;
  /** First id delivered after the hole: page back with `history(room, {before})`. */
  before: number | null;
}

export interface Ack { type: 'ack'; id: number; ts: number; room?: string; ref?: number | string }
export interface Direct { type: 'direct'; from: string; to: string; text: string; ts: number; id: number }
export interface UserJoined { type: 'user_joined'; room: string; user: string; ts: number }
export interface UserLeft { type: 'user_left'; room: string; user: string; ts: number; reason: 'leave' | 'disconnect' | 'timeout' | 'kicked' | string }
export interface TypingEvent { type: 'typing'; room: string; user: string; active: boolean }
export interface Presence { type: 'presence'; room: string; users: string[] }
export interface HistoryPage { type: 'history'; room: string; messages: Message[]; has_more?: boolean }
export interface DmHistoryPage { type: 'dm_history'; with: string; messages: Direct[]; has_more?: boolean }
/** An error reply that no pending request took: `command` names a command without a reply (typing, ping, read) or a join. */
export interface ErrorEvent { type: 'error'; code: string; message: string; ref?: number | string; retry_ms?: number; room?: string; command?: 'join' | 'typing' | 'ping' | 'read' | string; error: RelayError }
export interface Disconnect {
  code: number;
  reason: string;
  /** A welcome had arrived on the socket that closed. */
  wasOpen: boolean;
  willReconnect: boolean;
  delayMs: number;
  /** HTTP status of a refused handshake, when known (0: unreachable). */
  status?: number;
  /** The server's error code of a refused handshake, or `expired` / `unauthorized` / `policy`. */
  errorCode: string | null;
  everConnected: boolean;
}
export interface Kicked { type: 'kicked'; room: string; by: string }
export interface Deleted { type: 'deleted'; room: string; id: number; by: string }
export interface Edited { type: 'edited'; room: string; id: number; text: string; edited_ts: number }

export interface RelayEvents {
  state: { state: ConnectionState; prev: ConnectionState };
  welcome: Welcome;
  disconnect: Disconnect;
  joined: Joined;
  gap: Gap;
  message: Message;
  direct: Direct;
  user_joined: UserJoined;
  user_left: UserLeft;
  typing: TypingEvent;
  presence: Presence;
  history: HistoryPage;
  dm_history: DmHistoryPage;
  ack: Ack;
  error: ErrorEvent;
  kicked: Kicked;
  deleted: Deleted;
  edited: Edited;
  /** Every decoded frame, before any handling. */
  frame: { type: string; [k: string]: unknown };
  listenerError: { type: string; error: unknown };
}

export class Emitter<E = Record<string, any>> {
  on<K extends keyof E & string>(type: K, fn: (payload: E[K]) => void): () => void;
  on(type: string, fn: (payload: any) => void): () => void;
  once<K extends keyof E & string>(type: K, fn: (payload: E[K]) => void): () => void;
  once(type: string, fn: (payload: any) => void): () => void;
  off(type: string, fn: (payload: any) => void): void;
  emit(type: string, payload?: unknown): void;
}

export class RelayError extends Error {
  constructor(code: string, message?: string, extra?: { status?: number; retryMs?: number; frame?: unknown });
  /** A protocol error code (`invalid`, `not_member`, `rate_limited`, `forbidden`, ...) or `timeout`, `disconnected`, `closed`, `left`, `kicked`, `network`. */
  code: string;
  status?: number;
  retryMs?: number;
  frame?: unknown;
}

export interface TypistOptions { throttleMs?: number; restartMs?: number; idleMs?: number }
export class Typist {
  constructor(sendTyping: (active: boolean) => boolean, opts?: TypistOptions);
  readonly active: boolean;
  throttleMs: number;
  restartMs: number;
  idleMs: number;
  /** Call on every keystroke. */
  input(): void;
  /** Call on send, blur or an emptied box. */
  stop(notify?: boolean): void;
  reset(): void;
}

export interface OutboxEntry { kind: 'send' | 'dm'; room?: string; to?: string; text: string; clientId: string }

export class RelayClient extends Emitter<RelayEvents> {
  constructor(options: RelayClientOptions);
  readonly options: Required<Pick<RelayClientOptions, 'format' | 'tokenIn'>> & RelayClientOptions;
  readonly url: string;
  readonly state: ConnectionState;
  readonly user: string | null;
  token: string | null;
  readonly resume: string | null;
  readonly node: string | null;
  readonly session: string | null;
  readonly welcome: Welcome | null;
  readonly heartbeatMs: number;
  readonly reconnects: number;
  readonly retryAt: number;
  readonly outbox: OutboxEntry[];

  connect(): Promise<Welcome>;
  reconnect(): void;
  close(code?: number, reason?: string): void;

  join(room: string, from?: { since?: number; epoch?: string }): Promise<Joined>;
  leave(room: string): Promise<void>;
  presence(room: string): string[];
  position(room: string): { since: number; epoch: string } | null;

  send(room: string, text: string, opts?: { clientId?: string; timeoutMs?: number }): Promise<Ack>;
  dm(to: string, text: string, opts?: { timeoutMs?: number }): Promise<Ack>;
  typing(room: string, active: boolean): boolean;
  typist(room: string, opts?: TypistOptions): Typist;

  who(room: string): Promise<Presence>;
  history(room: string, opts?: { before?: number; limit?: number }): Promise<HistoryPage>;
  dmHistory(peer: string, opts?: { before?: number; limit?: number }): Promise<DmHistoryPage>;
  historyPages(room: string, opts?: { before?: number; limit?: number; pages?: number }): AsyncGenerator<Message[]>;
  ping(): Promise<{ type: 'pong' }>;
  request<T = any>(type: string, fields?: Record<string, unknown>, opts?: { timeoutMs?: number }): Promise<T>;
  notify(type: string, fields?: Record<string, unknown>): boolean;

  create(room: string, opts?: { private?: boolean }): Promise<{ type: 'created'; room: string; private: boolean }>;
  invite(room: string, user: string): Promise<{ type: 'ok'; op: string }>;
  kick(room: string, user: string): Promise<{ type: 'ok'; op: string }>;
  ban(room: string, user: string, opts?: { secs?: number }): Promise<{ type: 'ok'; op: string }>;
  unban(room: string, user: string): Promise<{ type: 'ok'; op: string }>;
  mute(room: string, user: string, opts?: { secs?: number }): Promise<{ type: 'ok'; op: string }>;
  unmute(room: string, user: string): Promise<{ type: 'ok'; op: string }>;
  promote(room: string, user: string): Promise<{ type: 'ok'; op: string }>;
  demote(room: string, user: string): Promise<{ type: 'ok'; op: string }>;
  deleteMessage(room: string, id: number): Promise<{ type: 'ok'; op: string }>;
  edit(room: string, id: number, text: string): Promise<{ type: 'ok'; op: string }>;
  members(room: string): Promise<{ type: 'members'; room: string; members: Array<{ user: string; role: 'owner' | 'moderator' | 'member' }> }>;
  markRead(room: string, id: number): boolean;
}

export function newClientId(): string;
export function backoffDelay(attempt: number, opts: { baseMs: number; maxMs: number }, random?: () => number): number;
export function closePolicy(code: number): 'now' | 'stop' | 'refresh' | 'backoff';

export interface Codec { format: 'json' | 'msgpack'; protocol: string; encode(frame: object): string | Uint8Array; decode(data: unknown): any }
export const SUBPROTOCOLS: { readonly json: 'relay.v1.json'; readonly msgpack: 'relay.v1.msgpack' };
export function jsonCodec(): Codec;
export function msgpackCodec(msgpack: { encode(v: unknown): Uint8Array; decode(b: Uint8Array): unknown }): Codec;
export function loadCodec(format: 'json' | 'msgpack', msgpack?: { encode(v: unknown): Uint8Array; decode(b: Uint8Array): unknown }): Promise<Codec>;

export interface HttpOptions { fetch?: typeof fetch; timeoutMs?: number; credentials?: RequestCredentials }
export function wsUrlOf(base: string): string;
export function httpBaseOf(url: string): string;
export function getConfig(base: string, opts?: HttpOptions): Promise<{ auth?: string; node?: string; max_text_chars?: number; [k: string]: unknown }>;
export function register(base: string, username: string, password: string, opts?: HttpOptions): Promise<void>;
export function login(base: string, username: string, password: string, opts?: HttpOptions): Promise<{ token: string; expires_at: number | null }>;
export function expiryMs(v: unknown): number | null;
export function diagnoseHandshake(url: string, opts?: HttpOptions): Promise<{ status: number; code: string | null; message: string | null }>;
