// The JavaScript client against the real server binary (and a real redis-server where the
// test needs a cluster): reply matching, errors with the server's code, timeouts, backoff
// bounds, no reconnect after a terminal close, recovery across a node restart, reset, token
// refresh, and a peer that answers garbage. Run with
// `node --experimental-websocket --test client/test/` (scripts/test.sh does).

import assert from "node:assert/strict";
import net from "node:net";
import { createHash } from "node:crypto";
import { after, describe, test } from "node:test";

import { Switchboard, SwitchboardError } from "../switchboard.js";
import { Node, Redis, signal, token, until } from "./harness.mjs";

const cleanup = [];
after(async () => {
  for (const f of cleanup.reverse()) await f();
});

async function node(overrides) {
  const n = await Node.start(overrides);
  cleanup.push(() => n.stop());
  return n;
}

function client(url, options) {
  const sb = new Switchboard(url, options);
  cleanup.push(() => sb.close());
  const states = [];
  const errors = [];
  sb.on("state", (s) => states.push({ ...s, at: Date.now() }));
  sb.on("error", (e) => errors.push(e));
  return { sb, states, errors };
}

function collect(sb, channel, extra = {}) {
  const got = [];
  const recovered = [];
  const sub = sb.subscribe(channel, {
    ...extra,
    onMessage: (m) => got.push(m),
    onRecovered: (r) => recovered.push(r),
  });
  return { sub, got, recovered };
}

describe("commands", () => {
  test("pipelined publishes resolve in order, matched by id; history, presence, ping", async () => {
    const n = await node();
    const { sb } = client(n.ws);
    sb.connect();
    const { sub, got } = collect(sb, "news");
    const reply = await sub.ready;
    assert.equal(reply.type, "subscribed");
    assert.equal(reply.offset, 0);
    const acks = await Promise.all([1, 2, 3, 4, 5].map((i) => sb.publish("news", { i })));
    assert.deepEqual(acks.map((a) => a.offset), [1, 2, 3, 4, 5]);
    assert.ok(acks.every((a) => a.epoch === reply.epoch));
    await until(() => got.length === 5, "five messages");
    assert.deepEqual(got.map((m) => [m.offset, m.data.i]), [[1, 1], [2, 2], [3, 3], [4, 4], [5, 5]]);
    assert.deepEqual(sub.position, { offset: 5, epoch: reply.epoch });
    const h = await sb.history("news", { limit: 2 });
    assert.deepEqual(h.publications.map((p) => p.offset), [4, 5]);
    const since = await sb.history("news", { since: { offset: 3, epoch: reply.epoch } });
    assert.deepEqual(since.publications.map((p) => p.data.i), [4, 5]);
    const p = await sb.presence("news");
    assert.deepEqual(p.clients.map((c) => c.client), [sb.welcome.client]);
    assert.ok((await sb.ping()) >= 0);
    await sub.unsubscribe();
    assert.equal(sub.state, "unsubscribed");
    await n.publish("news", "after");
    await sb.ping(); // a round trip after the publication: it would have arrived by now
    assert.equal(got.length, 5, "nothing after unsubscribe");
  });

  test("commands made before the welcome wait for it; before connect() they reject", async () => {
    const n = await node();
    const { sb } = client(n.ws);
    await assert.rejects(sb.publish("a", 1), (e) => e instanceof SwitchboardError && e.code === "closed");
    sb.connect();
    assert.equal(sb.state, "connecting");
    const ack = await sb.publish("a", 1);
    assert.equal(ack.offset, 1);
  });

  test("maxQueue commands wait for the connection; one more rejects with queue_full", async () => {
    const n = await node();
    const { sb } = client(n.ws, { maxQueue: 2 });
    sb.connect();
    const waiting = [sb.publish("q", 1), sb.publish("q", 2)];
    await assert.rejects(sb.publish("q", 3), (e) => e.code === "queue_full");
    assert.deepEqual((await Promise.all(waiting)).map((a) => a.offset), [1, 2]);
    // Once connected, nothing queues.
    assert.equal((await sb.publish("q", 4)).offset, 3);
  });

  test("server errors reject with a SwitchboardError carrying the server's code", async () => {
    const n = await node({ "namespaces.private.anonymous": "false", "limits.client_publish_rate": "2" });
    const { sb, errors } = client(n.ws);
    sb.connect();
    await assert.rejects(sb.publish("bad channel!", 1), (e) => e instanceof SwitchboardError && e.code === "invalid_channel" && /channel/.test(e.message));
    const refused = [];
    const sub = sb.subscribe("private:x", { onError: (e) => refused.push(e) });
    await assert.rejects(sub.ready, (e) => e.code === "forbidden");
    assert.equal(sub.state, "unsubscribed");
    assert.equal(refused[0].code, "forbidden");
    assert.ok(errors.some((e) => e.code === "forbidden"), "reported on the client too");
    // The same channel can be tried again once refused.
    assert.throws(() => sb.subscribe("", {}), (e) => e.code === "invalid_channel");
    const limited = await Promise.allSettled([1, 2, 3, 4].map((i) => sb.publish("r", i)));
    assert.ok(limited.some((r) => r.status === "rejected" && r.reason.code === "rate_limited"), JSON.stringify(limited));
    const s2 = sb.subscribe("ok");
    assert.throws(() => sb.subscribe("ok"), (e) => e.code === "already_subscribed");
    await s2.ready;
  });

  test("subscribes refused as rate_limited are sent again, not dropped", async () => {
    const n = await node({ "limits.client_command_rate": "2" });
    const { sb } = client(n.ws, { minReconnectDelay: 100 });
    sb.connect();
    const subs = ["a", "b", "c", "d", "e"].map((c) => sb.subscribe(c));
    const replies = await Promise.all(subs.map((s) => s.ready));
    assert.deepEqual(replies.map((r) => r.channel), ["a", "b", "c", "d", "e"]);
    assert.ok(subs.every((s) => s.state === "subscribed"));
  });

  test("a command without a reply rejects with timeout, and a dead link is dropped by ping", async () => {
    const n = await node();
    const { sb, states } = client(n.ws, { timeout: 300, pingInterval: 200, pingTimeout: 300, minReconnectDelay: 20, maxReconnectDelay: 100 });
    sb.connect();
    const { sub, got } = collect(sb, "t");
    await sub.ready;
    await n.pause();
    try {
      const started = Date.now();
      await assert.rejects(sb.publish("t", 1), (e) => e.code === "timeout" || e.code === "disconnected");
      assert.ok(Date.now() - started >= 250);
      // Nothing heard: the client's own ping goes unanswered and it gives the link up.
      await until(() => states.some((s) => s.state === "disconnected"), "the dead link dropped");
    } finally {
      n.resume();
    }
    await until(() => sb.state === "connected" && sub.state === "subscribed", "back");
    await n.publish("t", "live");
    await until(() => got.some((m) => m.data === "live"), "live message after recovery");
  });
});

describe("reconnect", () => {
  test("backoff waits between the configured bounds, with jitter", async () => {
    const n = await node();
    const { sb, states } = client(n.ws, { minReconnectDelay: 50, maxReconnectDelay: 400 });
    sb.connect();
    await until(() => sb.state === "connected", "connected");
    await n.kill();
    await until(() => states.filter((s) => s.state === "connecting").length >= 8, "eight attempts", 30000);
    const gaps = [];
    for (let i = 1; i < states.length; i++) {
      if (states[i].state === "connecting" && states[i - 1].state === "disconnected") gaps.push(states[i].at - states[i - 1].at);
    }
    assert.ok(gaps.length >= 6, JSON.stringify(gaps));
    // Timers fire no earlier than asked; a busy machine may fire them late.
    assert.ok(gaps.every((g) => g >= 48), `below the minimum: ${gaps}`);
    assert.ok(gaps.every((g) => g <= 400 + 1500), `far above the maximum: ${gaps}`);
    assert.ok(new Set(gaps).size > 1, "jittered");
    await n.start();
    await until(() => sb.state === "connected", "reconnected to the restarted node");
  });

  for (const [what, overrides, provoke, code] of [
    ["4003 (operator disconnect)", { "auth.hmac_secret": "s3cret" }, (n) => n.api("POST", "/api/disconnect", { user: "ann" }), 4003],
    ["1009 (message too big)", { "auth.hmac_secret": "s3cret", "limits.max_message_size": "1024" }, (n, sb) => sb.publish("big", "x".repeat(2000)).catch(() => {}), 1009],
  ]) {
    test(`no reconnect after ${what}`, async () => {
      const n = await node(overrides);
      const { sb, states, errors } = client(n.ws, { token: token("s3cret", { sub: "ann" }), minReconnectDelay: 10, maxReconnectDelay: 20 });
      sb.connect();
      await until(() => sb.state === "connected", "connected");
      await provoke(n, sb);
      await until(() => states.some((s) => s.state === "disconnected"), "disconnected");
      const last = states.at(-1);
      assert.equal(last.code, code);
      assert.ok(errors.some((e) => e.closeCode === code), "reported as an error with the close code");
      // Ten times the longest backoff: any retry would have started.
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(states.at(-1), last, `no attempt after ${code}: ${JSON.stringify(states)}`);
      await assert.rejects(sb.publish("a", 1), (e) => e.code === "closed");
    });
  }

  test("a node restart on the Redis engine loses nothing: recovered in order, then live", async () => {
    const redis = await Redis.start();
    cleanup.push(() => redis.stop());
    const cfg = { "engine.kind": "redis", "engine.redis_url": redis.url, "engine.prefix": "jsrec" };
    const a = await node(cfg);
    const b = await node(cfg);
    const { sb, states } = client(a.ws, { minReconnectDelay: 50, maxReconnectDelay: 200 });
    sb.connect();
    const { sub, got, recovered } = collect(sb, "feed");
    await sub.ready;
    await b.publish("feed", 1);
    await until(() => got.length === 1, "first message");
    await a.kill();
    for (let i = 2; i <= 6; i++) await b.publish("feed", i);
    await a.start();
    await until(() => recovered.length === 1, "recovery");
    assert.equal(recovered[0].recovered, true);
    assert.deepEqual(recovered[0].publications.map((p) => p.data), [2, 3, 4, 5, 6]);
    await b.publish("feed", 7);
    await until(() => got.length === 7, "seven messages");
    assert.deepEqual(got.map((m) => m.offset), [1, 2, 3, 4, 5, 6, 7]);
    assert.deepEqual(got.map((m) => m.data), [1, 2, 3, 4, 5, 6, 7]);
    assert.ok(states.some((s) => s.state === "disconnected" && s.code === 1006), JSON.stringify(states));
  });

  test("a restarted memory node has a new epoch: recovered false, then live", async () => {
    const n = await node();
    const { sb } = client(n.ws, { minReconnectDelay: 20, maxReconnectDelay: 100 });
    sb.connect();
    const { sub, got, recovered } = collect(sb, "m");
    const first = await sub.ready;
    await sb.publish("m", 1);
    await until(() => got.length === 1, "message");
    await n.kill();
    await n.start();
    await until(() => recovered.length === 1, "resubscribed");
    assert.deepEqual(recovered[0], { recovered: false, publications: [] });
    assert.notEqual(sub.position.epoch, first.epoch);
    await sb.publish("m", 2);
    await until(() => got.length === 2, "live");
    assert.deepEqual(got.map((m) => m.offset), [1, 1]);
  });

  test("close() then connect() recovers what was published in between", async () => {
    const n = await node();
    const { sb } = client(n.ws);
    sb.connect();
    const { sub, got, recovered } = collect(sb, "cc");
    await sub.ready;
    await sb.publish("cc", 1);
    await until(() => got.length === 1, "first");
    sb.close();
    await n.publish("cc", 2);
    sb.connect();
    await until(() => recovered.length === 1, "recovered");
    assert.equal(recovered[0].recovered, true);
    assert.deepEqual(got.map((m) => m.offset), [1, 2]);
  });

  test("reset: Redis restarted empty under a live subscription", async () => {
    const redis = await Redis.start();
    cleanup.push(() => redis.stop());
    const n = await node({ "engine.kind": "redis", "engine.redis_url": redis.url, "engine.prefix": "jsreset" });
    const { sb } = client(n.ws);
    sb.connect();
    const resets = [];
    const { sub, got } = collect(sb, "r", { onReset: (r) => resets.push(r) });
    const first = await sub.ready;
    await sb.publish("r", 1);
    await until(() => got.length === 1, "message");
    await redis.stop();
    await redis.restart();
    await n.ready();
    const ack = await until(async () => {
      try {
        return await n.publish("r", 2);
      } catch {
        return null;
      }
    }, "a publication in the new epoch");
    await until(() => got.length === 2, "message in the new epoch");
    assert.deepEqual(resets, [{ epoch: ack.epoch }]);
    assert.notEqual(ack.epoch, first.epoch);
    assert.deepEqual(sub.position, { offset: 1, epoch: ack.epoch });
    assert.equal(sb.state, "connected");
  });
});

describe("tokens", () => {
  test("a token function is called again to refresh before exp, with no disconnect", async () => {
    const n = await node({ "auth.hmac_secret": "s3cret", "channels.anonymous": "false" });
    let calls = 0;
    const tokenFn = async () => {
      calls += 1;
      return token("s3cret", { sub: "bo", exp: Math.floor(Date.now() / 1000) + 3, channels: ["c"], publish: ["c"] });
    };
    const { sb, states } = client(n.ws, { token: tokenFn });
    sb.connect();
    const { sub, got } = collect(sb, "c");
    await sub.ready;
    await until(() => calls >= 3, "two refreshes", 15000);
    await sb.publish("c", "still here");
    await until(() => got.length === 1, "message");
    assert.equal(states.filter((s) => s.state === "connected").length, 1, JSON.stringify(states));
    assert.equal(states.filter((s) => s.state === "disconnected").length, 0);
  });

  test("4002 reconnects with a new token from the function", async () => {
    const n = await node({ "auth.hmac_secret": "s3cret", "channels.anonymous": "false" });
    let calls = 0;
    // The first token expires in 2 s; this client has no chance to refresh (a refused
    // refresh: the function throws), so the server closes with 4002.
    const tokenFn = async () => {
      calls += 1;
      if (calls === 2) throw new Error("token service down");
      return token("s3cret", { sub: "cy", exp: Math.floor(Date.now() / 1000) + (calls === 1 ? 2 : 60), channels: ["c"] });
    };
    const { sb, states } = client(n.ws, { token: tokenFn, minReconnectDelay: 20, maxReconnectDelay: 50 });
    sb.connect();
    await until(() => sb.state === "connected", "connected");
    await until(() => states.some((s) => s.code === 4002), "token_expired", 15000);
    await until(() => sb.state === "connected" && calls >= 3, "reconnected with a new token");
    const sub = sb.subscribe("c");
    await sub.ready;
  });
});

describe("batches", () => {
  test("the client asks for ?batch=true and splits batched messages back into frames, in order", async () => {
    const n = await node({ "limits.client_publish_rate": "100000" });
    const urls = [];
    let messages = 0;
    // The platform's WebSocket, counting the messages that reach the client.
    class Counting extends globalThis.WebSocket {
      constructor(url, protocols) {
        super(url, protocols);
        urls.push(url);
        this.addEventListener("message", () => messages++);
      }
    }
    const { sb } = client(n.ws, { WebSocket: Counting });
    sb.connect();
    const { sub, got } = collect(sb, "burst");
    await sub.ready;
    const before = messages;
    const N = 300;
    const acks = await Promise.all(Array.from({ length: N }, (_, i) => sb.publish("burst", { i, pad: "x".repeat(i % 50) })));
    assert.deepEqual(acks.map((a) => a.offset), Array.from({ length: N }, (_, i) => i + 1));
    await until(() => got.length === N, "every publication");
    assert.deepEqual(got.map((m) => m.data.i), Array.from({ length: N }, (_, i) => i));
    assert.match(urls[0], /[?&]batch=true/);
    // 2N frames (a reply and a message per publication) came in fewer messages.
    assert.ok(messages - before < 2 * N, `${2 * N} frames in ${messages - before} messages`);
  });

  test("batch: false leaves the URL alone", async () => {
    const n = await node();
    const urls = [];
    class Recording extends globalThis.WebSocket {
      constructor(url, protocols) {
        super(url, protocols);
        urls.push(url);
      }
    }
    const { sb } = client(n.ws, { WebSocket: Recording, batch: false });
    sb.connect();
    await sb.subscribe("x").ready;
    assert.equal(urls[0], n.ws);
  });
});

describe("a peer that answers garbage", () => {
  // A WebSocket peer (RFC 6455 handshake by hand) that welcomes, then sends `payload`.
  function garbageServer(payload) {
    const accepted = [];
    const server = net.createServer((sock) => {
      sock.once("data", (req) => {
        const key = /sec-websocket-key: *(\S+)/i.exec(req.toString())[1];
        const accept = createHash("sha1").update(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest("base64");
        sock.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\nSec-WebSocket-Protocol: switchboard.v1.json\r\n\r\n`);
        const frame = (text) => {
          const b = Buffer.from(text);
          return Buffer.concat([Buffer.from([0x81, b.length]), b]);
        };
        sock.write(frame('{"type":"welcome","client":"c","node":"n","user":"","heartbeat_ms":10000,"protocol":"switchboard.v1.json"}'));
        sock.write(frame(payload));
        accepted.push(sock);
      });
      sock.on("error", () => {});
    });
    return new Promise((res) => server.listen(0, "127.0.0.1", () => res({ server, accepted, url: `ws://127.0.0.1:${server.address().port}/ws` })));
  }

  for (const payload of ["not json", "[1,2]", '{"no":"type"}']) {
    test(`${JSON.stringify(payload)}: reported as bad_frame, connection dropped, retried; nothing thrown`, async () => {
      const { server, accepted, url } = await garbageServer(payload);
      cleanup.push(() => new Promise((r) => server.close(r)));
      const uncaught = [];
      const onUncaught = (e) => uncaught.push(e);
      process.on("uncaughtException", onUncaught);
      try {
        const { sb, errors } = client(url, { minReconnectDelay: 20, maxReconnectDelay: 40 });
        const bad = signal();
        sb.on("error", (e) => e.code === "bad_frame" && bad.fire(e));
        sb.connect();
        const e = await bad.wait(5000, "bad_frame");
        assert.ok(e instanceof SwitchboardError);
        await until(() => accepted.length >= 2, "a retry after the garbage");
        sb.close();
        for (const s of accepted) s.destroy();
        assert.equal(uncaught.length, 0);
        assert.ok(errors.length >= 1);
      } finally {
        process.off("uncaughtException", onUncaught);
      }
    });
  }

  test("a handler that throws is reported, and delivery goes on", async () => {
    const n = await node();
    const { sb, errors } = client(n.ws);
    sb.connect();
    const got = [];
    const sub = sb.subscribe("h", {
      onMessage(m) {
        got.push(m.offset);
        if (m.offset === 1) throw new Error("app bug");
      },
    });
    await sub.ready;
    await sb.publish("h", 1);
    await sb.publish("h", 2);
    await until(() => got.length === 2, "both messages");
    assert.ok(errors.some((e) => e.code === "handler" && /app bug/.test(e.message)));
  });
});
