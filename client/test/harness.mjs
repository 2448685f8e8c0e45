// Real parts for the JavaScript tests (client unit tests and browser tests alike): the
// `switchboard` binary started on port 0 (its address read from its `listening on <addr>`
// log line, as tests/common/app.rs does), a `redis-server` of the test's own on a free port
// (never the machine's shared one), HTTP API calls, JWTs, and waiting on events rather than
// on fixed sleeps. SWITCHBOARD_BIN names the binary (scripts/test.sh builds it); the default
// is target/debug/switchboard.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
// Resolved now: the binary runs in a temporary working directory, where a relative path
// would name nothing.
export const BIN = resolve(process.env.SWITCHBOARD_BIN || join(ROOT, "target/debug/switchboard"));
export const WAIT = 20000;
export const API_KEY = "test-key";

/** A free loopback port (bound then released). */
export function freePort() {
  return new Promise((res, rej) => {
    const s = net.createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

function envFor(overrides) {
  const env = { PATH: process.env.PATH, RUST_LOG: "info,actix_server=warn" };
  const all = { "server.bind": "127.0.0.1:0", "server.workers": "2", "server.broker_shards": "2", "api.keys": API_KEY, ...overrides };
  for (const [k, v] of Object.entries(all)) env[`SWITCHBOARD__${k.replace(/\./g, "__").toUpperCase()}`] = String(v);
  return env;
}

/** A running node (the real binary); `kill()` is SIGKILL, `start()` again reuses the port. */
export class Node {
  constructor(overrides = {}) {
    this.overrides = overrides;
    this.log = [];
    this.dir = mkdtempSync(join(tmpdir(), "sb-node-"));
  }

  static async start(overrides = {}) {
    const n = new Node(overrides);
    await n.start();
    return n;
  }

  /** Starts (or starts again on the same address once it has been bound). */
  async start() {
    const bind = this.addr ? { "server.bind": this.addr } : {};
    // An empty working directory: no config/default.toml but what the test gives.
    this.child = spawn(BIN, [], { cwd: this.dir, env: envFor({ ...this.overrides, ...bind }), stdio: ["ignore", "ignore", "pipe"] });
    const child = this.child;
    this.exited = new Promise((res) => child.once("exit", (code, signal) => res({ code, signal })));
    let buffered = "";
    this.addr = await new Promise((res, rej) => {
      const timer = setTimeout(() => rej(new Error(`switchboard did not start:\n${this.log.join("\n")}`)), WAIT);
      child.once("error", (e) => {
        clearTimeout(timer);
        rej(new Error(`cannot run ${BIN}: ${e.message} (build it: cargo build --bin switchboard)`));
      });
      child.stderr.setEncoding("utf8");
      child.stderr.on("data", (chunk) => {
        buffered += chunk;
        const lines = buffered.split("\n");
        buffered = lines.pop();
        for (const line of lines) {
          this.log.push(line);
          const m = line.match(/listening on (\S+)/);
          if (m) {
            clearTimeout(timer);
            res(m[1]);
          }
        }
      });
      this.exited.then(({ code }) => {
        clearTimeout(timer);
        rej(new Error(`switchboard exited (${code}) before listening:\n${this.log.join("\n")}`));
      });
    });
    return this;
  }

  get http() {
    return `http://${this.addr}`;
  }

  get ws() {
    return `ws://${this.addr}/ws`;
  }

  /** SIGKILL, and wait until the process is gone. */
  async kill() {
    if (!this.child) return;
    this.child.kill("SIGKILL");
    await this.exited;
    this.child = null;
  }

  async stop() {
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** A call to the HTTP API with the test key; resolves `{status, body}`. */
  async api(method, path, body) {
    const r = await fetch(this.http + path, {
      method,
      headers: { authorization: `apikey ${API_KEY}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await r.text();
    let json;
    try {
      json = JSON.parse(text);
    } catch {
      json = text;
    }
    return { status: r.status, body: json };
  }

  /** Waits until `/readyz` answers 200 (the engine connected and migrated). */
  async ready() {
    await until(async () => {
      try {
        return (await fetch(this.http + "/readyz")).status === 200;
      } catch {
        return false;
      }
    }, `${this.addr} ready`);
  }

  /** Pauses (SIGSTOP) or resumes (SIGCONT) the process: its sockets stay open, unanswered. */
  async pause() {
    this.child.kill("SIGSTOP");
    // The signal is only queued when kill() returns: wait until every thread has stopped
    // (state T in /proc), or a command sent now could still be answered.
    const pid = this.child.pid;
    await until(() => {
      try {
        return readdirSync(`/proc/${pid}/task`).every((t) => {
          const stat = readFileSync(`/proc/${pid}/task/${t}/stat`, "utf8");
          return stat.slice(stat.lastIndexOf(")") + 2)[0] === "T";
        });
      } catch {
        return false;
      }
    }, `node ${pid} stopped`);
  }

  resume() {
    this.child.kill("SIGCONT");
  }

  async publish(channel, data) {
    const r = await this.api("POST", "/api/publish", { channel, data });
    if (r.status !== 200) throw new Error(`publish ${r.status}: ${JSON.stringify(r.body)}`);
    return r.body;
  }
}

/** A `redis-server` of the test's own, without persistence. */
export class Redis {
  static async start() {
    const r = new Redis();
    r.port = await freePort();
    await r.restart();
    return r;
  }

  /** Starts (again, empty) on its port. */
  async restart() {
    const r = this;
    r.child = spawn("redis-server", ["--port", String(r.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: "ignore" });
    r.exited = new Promise((res) => r.child.once("exit", res));
    r.child.once("error", () => {});
    await until(() => canConnect(r.port), `redis-server on ${r.port}`);
  }

  get url() {
    return `redis://127.0.0.1:${this.port}/0`;
  }

  async stop() {
    if (!this.child) return;
    this.child.kill("SIGKILL");
    await this.exited;
    this.child = null;
  }
}

function canConnect(port) {
  return new Promise((res) => {
    const s = net.connect(port, "127.0.0.1");
    s.once("connect", () => {
      s.destroy();
      res(true);
    });
    s.once("error", () => res(false));
  });
}

/** Polls `check` (sync or async) every 20 ms until it is truthy; throws after `within` ms. */
export async function until(check, what, within = WAIT) {
  const deadline = Date.now() + within;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** An HS256 JWT. */
export function token(secret, claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const head = b64({ alg: "HS256", typ: "JWT" });
  const body = b64(claims);
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

/** A one-shot event: `wait()` resolves with the first value `fire` was given. */
export function signal() {
  let fire;
  const p = new Promise((r) => (fire = r));
  const wait = (ms = WAIT, what = "an event") => {
    let timer;
    const late = new Promise((_, rej) => (timer = setTimeout(() => rej(new Error(`timed out waiting for ${what}`)), ms)));
    return Promise.race([p, late]).finally(() => clearTimeout(timer));
  };
  return { fire, wait };
}
