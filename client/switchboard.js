// Switchboard's JavaScript client: one dependency-free ES module for browsers and Node 20+.
//
// It speaks `switchboard.v1.json` (docs/protocol.md) over the platform's own WebSocket and
// does the parts every application would otherwise write by hand: replies matched to
// commands by `id`, reconnect with exponential backoff and full jitter, resubscribe with
// `since` so that nothing is lost or repeated across reconnects (on any node of a cluster),
// token refresh before `exp`, and an app-level `ping` that notices a dead link the browser
// has not noticed. Served by every node at `/switchboard.js`; types in switchboard.d.ts;
// guide in docs/clients.md.

const PROTOCOL = "switchboard.v1.json";

// Closes after which reconnecting cannot help: the same bytes, or the same user, would be
// refused again (docs/protocol.md, "Close codes").
const TERMINAL = new Set([1003, 1007, 1009, 4003, 4004]);

const DEFAULTS = {
  token: undefined,
  minReconnectDelay: 250,
  maxReconnectDelay: 10000,
  timeout: 10000,
  maxQueue: 1000,
  pingInterval: undefined,
  pingTimeout: undefined,
  batch: true,
  WebSocket: undefined,
};

/** An error with the server's `code` (`forbidden`, `rate_limited`, ...) or the client's own
 * (`timeout`, `disconnected`, `closed`, `queue_full`, `bad_frame`, `token`, `connection`). */
export class SwitchboardError extends Error {
  constructor(code, message, extra = {}) {
    super(message || code);
    this.name = "SwitchboardError";
    this.code = code;
    Object.assign(this, extra);
  }
}

/** One channel this client is subscribed to; made by `Switchboard.subscribe`. */
export class Subscription {
  constructor(client, channel, options) {
    this.channel = channel;
    this.state = "subscribing";
    // The last message seen, which a resubscribe asks to continue from.
    this.position = options.since ? { offset: options.since.offset, epoch: options.since.epoch } : null;
    this._client = client;
    this._handlers = options;
    // The next subscribe sends `since` (a reconnect, or a starting position given).
    this._recovering = Boolean(options.since);
    this._first = true;
    this.ready = new Promise((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
    });
    // Awaiting `ready` is optional: a refused subscribe is also reported through `onError`
    // and the client's `error` event, so an unawaited rejection must not kill a Node process.
    this.ready.catch(() => {});
  }

  /** Stops delivery at once and tells the server (when connected). */
  unsubscribe() {
    return this._client._unsubscribe(this);
  }

  _call(name, arg) {
    const fn = this._handlers[name];
    if (typeof fn !== "function") return;
    try {
      fn.call(this, arg);
    } catch (e) {
      this._client._report(new SwitchboardError("handler", `${name} threw: ${e && e.message}`, { cause: e }));
    }
  }

  // The `subscribed` reply: recovered publications first, in order, then live ones follow.
  _subscribed(reply) {
    const wasRecovering = this._recovering;
    this.state = "subscribed";
    this._recovering = false;
    if (wasRecovering && reply.recovered === true) {
      const fresh = [];
      for (const p of reply.publications || []) {
        if (this.position && p.offset <= this.position.offset) continue;
        fresh.push(p);
        this.position = { offset: p.offset, epoch: reply.epoch };
        this._call("onMessage", message(this.channel, p));
      }
      this.position = { offset: this.position ? this.position.offset : reply.offset, epoch: reply.epoch };
      this._call("onRecovered", { recovered: true, publications: fresh });
    } else {
      this.position = { offset: reply.offset, epoch: reply.epoch };
      if (wasRecovering) this._call("onRecovered", { recovered: false, publications: [] });
    }
    if (this._first) {
      this._first = false;
      this._resolve(reply);
    }
  }

  _message(frame) {
    if (this.state !== "subscribed") return;
    // Never a duplicate or a step back, whatever the network did.
    if (this.position && frame.offset <= this.position.offset) return;
    this.position = { offset: frame.offset, epoch: this.position ? this.position.epoch : "" };
    this._call("onMessage", frame);
  }

  _reset(frame) {
    if (this.state !== "subscribed") return;
    this.position = { offset: 0, epoch: frame.epoch };
    this._call("onReset", { epoch: frame.epoch });
  }

  _refused(err) {
    this.state = "unsubscribed";
    this._call("onError", err);
    if (this._first) {
      this._first = false;
      this._reject(err);
    }
  }
}

function message(channel, p) {
  const m = { type: "message", channel, offset: p.offset, data: p.data };
  if (p.info) m.info = p.info;
  return m;
}

// The `exp` claim of a JWT, without verifying it (the server does): when to refresh.
function tokenExpiry(token) {
  try {
    const part = token.split(".")[1];
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const text = typeof atob === "function" ? atob(b64) : Buffer.from(b64, "base64").toString("binary");
    const exp = JSON.parse(text).exp;
    return typeof exp === "number" ? exp : null;
  } catch {
    return null;
  }
}

/** A connection to a Switchboard server that stays connected until `close()`. */
export class Switchboard {
  constructor(url, options = {}) {
    this.url = url;
    this.options = { ...DEFAULTS, ...options };
    const WS = this.options.WebSocket || globalThis.WebSocket;
    if (typeof WS !== "function") {
      throw new SwitchboardError(
        "connection",
        "no WebSocket: pass one as options.WebSocket (Node 20 needs --experimental-websocket or the ws package)",
      );
    }
    this._WS = WS;
    this.state = "disconnected";
    this.welcome = null;
    this._listeners = new Map();
    this._subs = new Map();
    this._pending = new Map();
    this._queue = [];
    this._nextId = 1;
    this._attempt = 0;
    this._ws = null;
    this._wanted = false;
    this._timers = new Set();
    this._token = null;
  }

  /** Adds a listener: "state" ({state, code, reason}) or "error" (SwitchboardError). */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return this;
  }

  off(event, fn) {
    const set = this._listeners.get(event);
    if (set) set.delete(fn);
    return this;
  }

  _emit(event, arg) {
    for (const fn of this._listeners.get(event) || []) {
      try {
        fn(arg);
      } catch (e) {
        if (event !== "error") this._report(new SwitchboardError("handler", `${event} listener threw: ${e && e.message}`, { cause: e }));
      }
    }
  }

  _report(err) {
    this._emit("error", err);
  }

  _setState(state, code, reason) {
    this.state = state;
    const ev = { state };
    if (code !== undefined) ev.code = code;
    if (reason !== undefined) ev.reason = reason;
    this._emit("state", ev);
  }

  _later(ms, fn) {
    const t = setTimeout(() => {
      this._timers.delete(t);
      fn();
    }, ms);
    this._timers.add(t);
    return t;
  }

  _cancel(t) {
    if (t) {
      clearTimeout(t);
      this._timers.delete(t);
    }
  }

  /** Starts connecting (and reconnecting, until `close()`). */
  connect() {
    if (this._wanted) return this;
    this._wanted = true;
    this._open();
    return this;
  }

  /** Closes for good: no reconnect; pending and queued commands reject with `closed`. */
  close() {
    this._wanted = false;
    for (const t of this._timers) clearTimeout(t);
    this._timers.clear();
    if (this._pingTimer) clearInterval(this._pingTimer);
    this._pingTimer = null;
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      try {
        ws.close(1000, "client closed");
      } catch {
        // already closing
      }
    }
    this._failAll(new SwitchboardError("closed", "the client was closed"));
    this._awaitResubscribe();
    if (this.state !== "disconnected") this._setState("disconnected", 1000, "client closed");
  }

  async _open() {
    const generation = (this._generation = (this._generation || 0) + 1);
    this._setState("connecting");
    let token = this.options.token;
    try {
      if (typeof token === "function") token = await token();
    } catch (e) {
      if (generation !== this._generation || !this._wanted) return;
      this._report(new SwitchboardError("token", `the token function failed: ${e && e.message}`, { cause: e }));
      this._retry(undefined, "token function failed");
      return;
    }
    if (generation !== this._generation || !this._wanted) return;
    this._token = typeof token === "string" && token ? token : null;
    let url = this.url;
    const param = (p) => (url += (url.includes("?") ? "&" : "?") + p);
    // Several frames per message when the server has them at once: fewer events to handle
    // (a server that does not batch ignores the parameter). Compression needs nothing from
    // here: browsers offer permessage-deflate on every WebSocket.
    if (this.options.batch && !/[?&]batch=/.test(url)) param("batch=true");
    if (this._token) param("token=" + encodeURIComponent(this._token));
    let ws;
    try {
      ws = new this._WS(url, PROTOCOL);
    } catch (e) {
      // A malformed URL: no retry can fix it.
      this._wanted = false;
      this._report(new SwitchboardError("connection", `cannot open ${this.url}: ${e && e.message}`, { cause: e }));
      this._setState("disconnected", undefined, "bad url");
      return;
    }
    this._ws = ws;
    this._disconnect = null;
    this._welcomeTimer = this._later(this.options.timeout, () => {
      if (this._ws === ws && this.state !== "connected") this._drop(ws, "no welcome from the server");
    });
    ws.onmessage = (ev) => this._onData(ws, ev.data);
    ws.onclose = (ev) => this._onClose(ws, ev.code, ev.reason);
    // Browsers follow an error with a close event, but Node 20's WebSocket does not after a
    // refused handshake: the error alone ends this socket (a close that follows is ignored).
    // Neither tells the HTTP status of a refused handshake.
    ws.onerror = () => this._drop(ws, "connection error");
  }

  // Closes a socket this side gave up on; its close event, or this, schedules the retry.
  _drop(ws, why) {
    if (ws !== this._ws) return;
    // Handlers off first: closing a failed socket fires its error event again, at once.
    this._onClose(ws, 1006, why);
    try {
      ws.close(4000, why.slice(0, 100));
    } catch {
      // already closing
    }
  }

  _onData(ws, data) {
    if (ws !== this._ws) return;
    this._heard = Date.now();
    if (typeof data !== "string") {
      this._garbage(ws, "a binary frame");
      return;
    }
    // With `?batch=true` a message may hold several frames, one per line.
    for (const line of data.split("\n")) {
      if (!line) continue;
      let frame;
      try {
        frame = JSON.parse(line);
      } catch {
        this._garbage(ws, "a frame that is not JSON");
        return;
      }
      if (!frame || typeof frame !== "object" || typeof frame.type !== "string") {
        this._garbage(ws, "a frame that is not a JSON object with a type");
        return;
      }
      this._frame(frame);
      if (ws !== this._ws) return;
    }
  }

  _garbage(ws, what) {
    this._report(new SwitchboardError("bad_frame", `the server sent ${what}; reconnecting`));
    this._drop(ws, "bad frame");
  }

  _frame(f) {
    if (f.id !== undefined && f.id !== null) {
      const p = this._pending.get(f.id);
      if (!p) return;
      this._pending.delete(f.id);
      this._cancel(p.timer);
      if (f.type === "error") p.reject(new SwitchboardError(f.code, f.message, { reply: f }));
      else p.resolve(f);
      return;
    }
    switch (f.type) {
      case "welcome":
        return this._welcomed(f);
      case "message": {
        const sub = this._subs.get(f.channel);
        if (sub) sub._message(f);
        return;
      }
      case "join":
      case "leave": {
        const sub = this._subs.get(f.channel);
        if (sub && sub.state === "subscribed") sub._call(f.type === "join" ? "onJoin" : "onLeave", f.info);
        return;
      }
      case "reset": {
        const sub = this._subs.get(f.channel);
        if (sub) sub._reset(f);
        return;
      }
      case "disconnect":
        this._disconnect = f;
        return;
      case "error":
        this._report(new SwitchboardError(f.code, f.message, { reply: f }));
        return;
      default:
        // A newer server's push: ignored, as v1 allows additions.
        return;
    }
  }

  _welcomed(f) {
    this._cancel(this._welcomeTimer);
    this.welcome = f;
    this._attempt = 0;
    this._setState("connected");
    for (const sub of this._subs.values()) this._sendSubscribe(sub);
    const queued = this._queue;
    this._queue = [];
    for (const c of queued) this._transmit(c);
    this._startPing(f.heartbeat_ms);
    this._scheduleRefresh(this._token ? tokenExpiry(this._token) : null);
  }

  _onClose(ws, code, reason) {
    if (ws !== this._ws) return;
    this._ws = null;
    ws.onmessage = ws.onclose = ws.onerror = null;
    this._cancel(this._welcomeTimer);
    this._cancel(this._refreshTimer);
    if (this._pingTimer) clearInterval(this._pingTimer);
    this._pingTimer = null;
    const push = this._disconnect;
    if (push) {
      code = push.code;
      reason = push.reason;
    }
    // Whatever was in flight may or may not have run: the caller decides about a retry.
    this._failPending(new SwitchboardError("disconnected", `the connection closed (${code}) before the reply`));
    this._awaitResubscribe();
    if (!this._wanted) return;
    const again = push ? push.reconnect !== false : !TERMINAL.has(code);
    if (!again) {
      this._wanted = false;
      this._failAll(new SwitchboardError("disconnected", `closed by the server: ${code} ${reason || ""}`.trim()));
      this._report(new SwitchboardError(reason || "disconnected", `closed by the server with ${code} ${reason || ""}`.trim(), { closeCode: code }));
      this._setState("disconnected", code, reason);
      return;
    }
    this._retry(code, reason);
  }

  // The next connection resubscribes from the last position seen, whether this one was
  // lost or closed by `close()` (a later `connect()` recovers what came in between).
  _awaitResubscribe() {
    for (const sub of this._subs.values()) {
      if (sub.state === "subscribed") {
        sub.state = "subscribing";
        sub._recovering = sub.position !== null;
      }
    }
  }

  // Full jitter: a random delay up to the exponential bound, so that many clients dropped by
  // one node restart do not come back in lockstep.
  _retry(code, reason) {
    this._setState("disconnected", code, reason);
    const { minReconnectDelay: min, maxReconnectDelay: max } = this.options;
    const bound = Math.min(max, min * 2 ** this._attempt);
    this._attempt = Math.min(this._attempt + 1, 30);
    const delay = Math.max(min, Math.random() * bound);
    this._later(delay, () => {
      if (this._wanted && !this._ws) this._open();
    });
  }

  _startPing(heartbeatMs) {
    const every = this.options.pingInterval || heartbeatMs || 10000;
    const patience = this.options.pingTimeout || Math.min(every, this.options.timeout);
    const ws = this._ws;
    this._heard = Date.now();
    this._pingTimer = setInterval(() => {
      if (ws !== this._ws || Date.now() - this._heard < every) return;
      this._command({ type: "ping" }, patience).catch((e) => {
        if (ws === this._ws && e.code === "timeout") this._drop(ws, "no pong: the link is dead");
      });
    }, every);
  }

  // Refresh ahead of `exp` with a fresh token from the token function, so that the server
  // never closes with 4002 while this client is up.
  _scheduleRefresh(exp) {
    this._cancel(this._refreshTimer);
    if (!exp || typeof this.options.token !== "function") return;
    const left = exp * 1000 - Date.now();
    const wait = Math.max(0, left - Math.min(30000, left / 5));
    const ws = this._ws;
    this._refreshTimer = this._later(wait, async () => {
      if (ws !== this._ws) return;
      try {
        const token = await this.options.token();
        if (ws !== this._ws) return;
        this._token = token;
        const r = await this._command({ type: "refresh", token });
        this._scheduleRefresh(r.expires_at || tokenExpiry(token));
      } catch (e) {
        if (ws !== this._ws) return;
        this._report(e instanceof SwitchboardError ? e : new SwitchboardError("token", `refresh failed: ${e && e.message}`, { cause: e }));
        // Try again soon; at `exp` the server closes with 4002 and the reconnect asks anew.
        this._refreshTimer = this._later(Math.min(5000, Math.max(1000, left / 10)), () => this._scheduleRefresh(exp));
      }
    });
  }

  _failPending(err) {
    for (const p of this._pending.values()) {
      this._cancel(p.timer);
      p.reject(err);
    }
    this._pending.clear();
  }

  _failAll(err) {
    this._failPending(err);
    for (const c of this._queue) {
      this._cancel(c.timer);
      c.reject(err);
    }
    this._queue = [];
  }

  // Sends a command now, or queues it until connected; the timeout runs from the call.
  _command(body, timeout = this.options.timeout) {
    return new Promise((resolve, reject) => {
      if (!this._wanted) {
        reject(new SwitchboardError("closed", "the client is not connected: call connect() first"));
        return;
      }
      const c = { body, resolve, reject, id: this._nextId++ };
      c.timer = this._later(timeout, () => {
        this._pending.delete(c.id);
        const i = this._queue.indexOf(c);
        if (i >= 0) this._queue.splice(i, 1);
        reject(new SwitchboardError("timeout", `no reply to ${body.type} within ${timeout} ms`));
      });
      if (this.state === "connected") {
        this._transmit(c);
      } else if (this._queue.length >= this.options.maxQueue) {
        this._cancel(c.timer);
        reject(new SwitchboardError("queue_full", `${this.options.maxQueue} commands already wait for the connection`));
      } else {
        this._queue.push(c);
      }
    });
  }

  _transmit(c) {
    this._pending.set(c.id, c);
    try {
      this._ws.send(JSON.stringify({ ...c.body, id: c.id }));
    } catch (e) {
      this._pending.delete(c.id);
      this._cancel(c.timer);
      c.reject(new SwitchboardError("disconnected", `send failed: ${e && e.message}`));
    }
  }

  _sendSubscribe(sub) {
    const body = { type: "subscribe", channel: sub.channel };
    if (sub._recovering && sub.position) body.since = { offset: sub.position.offset, epoch: sub.position.epoch };
    const ws = this._ws;
    this._command(body).then(
      (reply) => {
        if (this._subs.get(sub.channel) === sub) sub._subscribed(reply);
      },
      (e) => {
        if (this._subs.get(sub.channel) !== sub) return;
        // A lost connection resubscribes on the next welcome; a timeout on a live one drops
        // the link, so the server and this client agree again on what is subscribed.
        if (e.code === "disconnected" || e.code === "closed") return;
        if (e.code === "timeout") {
          if (ws && ws === this._ws) this._drop(ws, "no reply to subscribe");
          return;
        }
        // Passing refusals: many subscriptions resent at once after a reconnect can outrun
        // `limits.client_command_rate`, and a Redis failover makes `unavailable` for a
        // moment. Try again on this connection after a jittered pause; never drop the
        // subscription for them.
        if (e.code === "rate_limited" || e.code === "unavailable") {
          const pause = this.options.minReconnectDelay * (1 + 3 * Math.random());
          this._later(pause, () => {
            if (ws === this._ws && this._subs.get(sub.channel) === sub && sub.state === "subscribing") this._sendSubscribe(sub);
          });
          return;
        }
        this._subs.delete(sub.channel);
        sub._refused(e);
        this._report(e);
      },
    );
  }

  /** Subscribes to `channel`; handlers and `since` in `options`. See switchboard.d.ts. */
  subscribe(channel, options = {}) {
    if (typeof channel !== "string" || !channel) throw new SwitchboardError("invalid_channel", "a channel name is a non-empty string");
    if (this._subs.has(channel)) throw new SwitchboardError("already_subscribed", `already subscribed to ${channel}`);
    const sub = new Subscription(this, channel, options);
    this._subs.set(channel, sub);
    if (this.state === "connected") this._sendSubscribe(sub);
    return sub;
  }

  _unsubscribe(sub) {
    if (this._subs.get(sub.channel) !== sub) return Promise.resolve();
    this._subs.delete(sub.channel);
    const was = sub.state;
    sub.state = "unsubscribed";
    if (was === "unsubscribed" || this.state !== "connected") return Promise.resolve();
    return this._command({ type: "unsubscribe", channel: sub.channel }).then(
      () => undefined,
      (e) => {
        // Not subscribed on the server (the subscribe was still in flight and refused):
        // the goal is reached all the same.
        if (e.code === "not_subscribed" || e.code === "disconnected" || e.code === "closed") return;
        throw e;
      },
    );
  }

  /** Publishes `data` (any JSON value); resolves `{offset, epoch}`. */
  async publish(channel, data) {
    const r = await this._command({ type: "publish", channel, data });
    return { offset: r.offset, epoch: r.epoch };
  }

  /** The channel's history: `{offset, epoch, publications}`. */
  async history(channel, { limit, since } = {}) {
    const body = { type: "history", channel };
    if (limit !== undefined) body.limit = limit;
    if (since) body.since = { offset: since.offset, epoch: since.epoch };
    const r = await this._command(body);
    return { offset: r.offset, epoch: r.epoch, publications: r.publications };
  }

  /** Who is in the channel: `{clients: [{client, user}]}`. */
  async presence(channel) {
    const r = await this._command({ type: "presence", channel });
    return { clients: r.clients };
  }

  /** An app-level round trip; resolves with the time it took, in ms. */
  async ping() {
    const start = Date.now();
    await this._command({ type: "ping" });
    return Date.now() - start;
  }
}

export default Switchboard;
