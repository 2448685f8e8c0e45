// A minimal pub/sub server on the `ws` package speaking a subset of switchboard.v1.json
// (welcome; subscribe -> subscribed; unsubscribe; publish -> published plus a `message` to every
// subscriber with a per-channel offset; ping -> pong). A benchmark peer, not a product:
// no auth, history, presence, limits or heartbeats. Usage: node server.js PORT [HOST]
"use strict";
const crypto = require("crypto");
const { WebSocketServer } = require("ws");

const port = Number(process.argv[2] || 8090);
const host = process.argv[3] || "127.0.0.1";
const PROTOCOL = "switchboard.v1.json";
const epoch = crypto.randomBytes(6).toString("hex");
const channels = new Map(); // name -> { offset, subs: Set<WebSocket> }

const wss = new WebSocketServer({
  host, port, maxPayload: 65536, perMessageDeflate: false,
  handleProtocols: (offered) => (offered.has(PROTOCOL) ? PROTOCOL : false),
});
const reply = (ws, id, frame) => {
  if (id !== undefined) frame.id = id;
  ws.send(JSON.stringify(frame));
};
const error = (ws, id, code, message) => reply(ws, id, { type: "error", code, message });
const channel = (name) => {
  let ch = channels.get(name);
  if (!ch) channels.set(name, (ch = { offset: 0, subs: new Set() }));
  return ch;
};
const validName = (c) => typeof c === "string" && c.length > 0 && c.length <= 255 && /^[A-Za-z0-9_\-:.@=/]+$/.test(c);

wss.on("connection", (ws) => {
  const client = crypto.randomUUID();
  const subs = new Set();
  ws.send(JSON.stringify({ type: "welcome", client, node: "node-ws", user: "", heartbeat_ms: 10000, protocol: PROTOCOL }));
  ws.on("message", (raw, isBinary) => {
    let cmd;
    try { cmd = isBinary ? null : JSON.parse(raw.toString()); } catch (_) { cmd = null; }
    if (!cmd || typeof cmd !== "object" || typeof cmd.type !== "string") return error(ws, undefined, "bad_request", "not a command");
    const { type, id, channel: name } = cmd;
    if (type === "ping") return reply(ws, id, { type: "pong" });
    if (!["subscribe", "unsubscribe", "publish"].includes(type)) return error(ws, id, "bad_request", "unknown type");
    if (!validName(name)) return error(ws, id, "invalid_channel", "bad channel name");
    const ch = channel(name);
    if (type === "subscribe") {
      if (subs.has(name)) return error(ws, id, "already_subscribed", name);
      subs.add(name); ch.subs.add(ws);
      return reply(ws, id, { type: "subscribed", channel: name, offset: ch.offset, epoch });
    }
    if (type === "unsubscribe") {
      if (!subs.delete(name)) return error(ws, id, "not_subscribed", name);
      ch.subs.delete(ws);
      return reply(ws, id, { type: "unsubscribed", channel: name });
    }
    if (!("data" in cmd)) return error(ws, id, "bad_request", "missing data");
    const offset = ++ch.offset;
    const frame = Buffer.from(JSON.stringify({ type: "message", channel: name, offset, data: cmd.data, info: { client, user: "" } }));
    for (const sub of ch.subs) sub.send(frame, { binary: false }); // encoded once, sent to every subscriber
    reply(ws, id, { type: "published", channel: name, offset, epoch });
  });
  ws.on("close", () => {
    for (const name of subs) {
      const ch = channels.get(name);
      if (ch && ch.subs.delete(ws) && ch.subs.size === 0 && ch.offset === 0) channels.delete(name);
    }
  });
});
wss.on("listening", () => console.error(`listening on ${host}:${wss.address().port}`));
