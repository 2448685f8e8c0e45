// Types for switchboard.js, Switchboard's JavaScript client (docs/clients.md).

/** `{offset, epoch}`: where a channel's stream stands. Offsets count from 1 within an epoch. */
export interface StreamPosition {
  offset: number;
  epoch: string;
}

/** Who published, when the server knows. */
export interface ClientInfo {
  client: string;
  user: string;
}

/** A publication as history and recovery return it. */
export interface Publication {
  offset: number;
  data: unknown;
  info?: ClientInfo;
}

/** The `message` push: one publication on a subscribed channel. */
export interface Message {
  type: "message";
  channel: string;
  offset: number;
  data: unknown;
  info?: ClientInfo;
}

/** The server's `subscribed` reply. */
export interface SubscribedReply {
  type: "subscribed";
  channel: string;
  offset: number;
  epoch: string;
  recovered?: boolean;
  publications?: Publication[];
}

/** The server's `welcome`, the first frame of every connection. */
export interface Welcome {
  type: "welcome";
  client: string;
  node: string;
  user: string;
  heartbeat_ms: number;
  protocol: string;
}

export type ConnectionState = "connecting" | "connected" | "disconnected";

export interface StateEvent {
  state: ConnectionState;
  /** The close code (the server's `disconnect` code when it sent one). */
  code?: number;
  reason?: string;
}

export interface SwitchboardOptions {
  /** A token, or a function returning one (called before every connect and to refresh). */
  token?: string | (() => string | Promise<string>);
  /** Backoff bounds in ms: each retry waits a random time up to min·2^attempt, capped at max. Default 250 / 10000. */
  minReconnectDelay?: number;
  maxReconnectDelay?: number;
  /** How long a command waits for its reply, counted from the call (queueing included). Default 10000 ms. */
  timeout?: number;
  /** How many commands may wait for the connection; more reject with `queue_full`. Default 1000. */
  maxQueue?: number;
  /** Ask for `?batch=true` (several frames per message, split here). Default true. */
  batch?: boolean;
  /** Send an app-level ping after this long without a frame. Default: the server's `heartbeat_ms`. */
  pingInterval?: number;
  /** A ping unanswered this long drops the link and reconnects. Default: min(pingInterval, timeout). */
  pingTimeout?: number;
  /** The WebSocket constructor; default `globalThis.WebSocket`. */
  WebSocket?: unknown;
}

export interface SubscribeOptions {
  /** Start after this position: the first subscribe recovers from it. */
  since?: StreamPosition;
  /** Every message, in offset order, recovered ones first; never a duplicate. */
  onMessage?(message: Message): void;
  onJoin?(info: ClientInfo): void;
  onLeave?(info: ClientInfo): void;
  /** After each subscribe that asked to recover (every resubscribe after a reconnect), once
   * the recovered messages went through `onMessage`. `recovered: false`: messages were lost
   * (the epoch changed or the gap left the history): resync from your own source. */
  onRecovered?(event: { recovered: boolean; publications: Publication[] }): void;
  /** The channel's epoch changed under the subscription: offsets start again at 1. */
  onReset?(event: { epoch: string }): void;
  /** The server refused this subscription (first time or on a resubscribe); it is dropped. */
  onError?(error: SwitchboardError): void;
}

export class SwitchboardError extends Error {
  /** The server's code (`forbidden`, `rate_limited`, `unavailable`, ...) or the client's own:
   * `timeout`, `disconnected`, `closed`, `queue_full`, `bad_frame`, `token`, `connection`, `handler`. */
  code: string;
  /** The close code, on an error reporting a terminal close. */
  closeCode?: number;
  /** The server's error frame, when there was one. */
  reply?: unknown;
  constructor(code: string, message?: string, extra?: object);
}

export class Subscription {
  readonly channel: string;
  readonly state: "subscribing" | "subscribed" | "unsubscribed";
  /** The last message seen (or the subscribe's position before any). */
  readonly position: StreamPosition | null;
  /** Resolves with the first `subscribed` reply; rejects if the server refuses it. */
  readonly ready: Promise<SubscribedReply>;
  unsubscribe(): Promise<void>;
}

export class Switchboard {
  constructor(url: string, options?: SwitchboardOptions);
  readonly url: string;
  readonly state: ConnectionState;
  /** The current connection's `welcome` frame. */
  readonly welcome: Welcome | null;
  on(event: "state", listener: (event: StateEvent) => void): this;
  on(event: "error", listener: (error: SwitchboardError) => void): this;
  off(event: "state" | "error", listener: (arg: any) => void): this;
  connect(): this;
  close(): void;
  subscribe(channel: string, options?: SubscribeOptions): Subscription;
  publish(channel: string, data: unknown): Promise<StreamPosition>;
  history(
    channel: string,
    options?: { limit?: number; since?: StreamPosition },
  ): Promise<{ offset: number; epoch: string; publications: Publication[] }>;
  presence(channel: string): Promise<{ clients: ClientInfo[] }>;
  /** An app-level round trip; resolves with its time in ms. */
  ping(): Promise<number>;
}

export default Switchboard;
