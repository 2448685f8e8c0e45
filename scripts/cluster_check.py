#!/usr/bin/env python3
"""End-to-end check of a running Switchboard cluster behind a load balancer.

Called by `scripts/cluster.sh --check` (which starts Redis, three nodes and nginx on loopback);
it can also be pointed at any cluster, e.g. the one of docker-compose.yml:

    python3 scripts/cluster_check.py --lb http://127.0.0.1:8080 \\
        --node http://127.0.0.1:PORT1 --node http://127.0.0.1:PORT2 --node ... --key dev-key

The standard library only: urllib for the HTTP API, and a small RFC 6455 client over a socket
for /ws. What it checks, on a fresh channel:

- /healthz, /readyz and /metrics answer through the load balancer;
- WebSocket connections through the load balancer land on every node (round robin);
- a subscriber connected through the load balancer receives, in order and without a gap,
  publications made through the API via the load balancer, through the API of another node
  directly, and by a WebSocket client on another node;
- /api/history of every node, asked directly, reports the same epoch and offsets;
- /api/channels of every node lists the subscriber's channel (cluster-wide; the nodes share
  their counts through Redis every couple of seconds, so this one waits up to 8 s);
- with --cluster-dir (a cluster of scripts/cluster.sh, which --check passes): failover. It
  kills the node a subscriber is on with `scripts/cluster.sh kill`, sees the subscriber's
  connection drop, the load balancer keep serving and a publication succeed meanwhile, the
  subscriber reconnect through the load balancer to another node and recover what it missed
  with `since`; then `scripts/cluster.sh start` brings the node back, which serves again,
  directly and (once nginx's fail_timeout of 10 s is over) through the load balancer.
- with --redis-member (a cluster of `scripts/cluster.sh --redis-cluster`, nodes on the
  redis_cluster engine): a Redis primary's crash. It SIGKILLs the primary that holds a
  subscribed channel (`scripts/cluster.sh kill redisN`) and keeps publishing through the load
  balancer (each publication retried with its idempotency_key until acknowledged) until the
  replica has taken the slot over and three more were acknowledged. The subscriber must then
  have every acknowledged publication, with the data it was acknowledged with, unless it was
  told of a loss (`reset`, or `recovered: false` on a reconnection): an unplanned failover may
  lose the last writes of the failed shard, but never silently. Then the nodes are ready again
  and `scripts/cluster.sh start redisN` brings the member back as a replica.

With --follow CHANNEL it checks nothing: it is the subscriber of `scripts/cluster.sh follow`,
which prints what it receives and reconnects with `since` whenever its connection drops.

Prints one line per check, then `N passed, N failed`; exits 0 when all passed, 1 otherwise.
"""

import argparse
import base64
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

PROTOCOL = "switchboard.v1.json"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TIMEOUT = 5.0
CLUSTER_SH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cluster.sh")

# Loopback only: never go through an HTTP proxy from the environment.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(method, url, key=None, body=None, timeout=TIMEOUT):
    """Returns (status, body text); never raises for an HTTP status."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if key is not None:
        req.add_header("Authorization", f"apikey {key}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with OPENER.open(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class WsClosed(Exception):
    """The server closed the WebSocket (or the socket)."""


class WebSocket:
    """A minimal RFC 6455 client: text frames out (masked), text/ping/close frames in."""

    def __init__(self, base_url, path="/ws"):
        u = urllib.parse.urlsplit(base_url)
        self.host, self.port = u.hostname, u.port or 80
        self.sock = socket.create_connection((self.host, self.port), timeout=TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\n"
            f"Host: {self.host}:{self.port}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: {PROTOCOL}\r\n"
            "\r\n"
        )
        self.sock.sendall(request.encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise WsClosed("connection closed during the handshake")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        if " 101 " not in lines[0] + " ":
            raise WsClosed(f"handshake refused: {lines[0]}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        if headers.get("sec-websocket-accept") != accept:
            raise WsClosed("bad Sec-WebSocket-Accept")
        if headers.get("sec-websocket-protocol") != PROTOCOL:
            raise WsClosed(f"subprotocol not echoed: {headers.get('sec-websocket-protocol')!r}")
        self.welcome = self.recv()
        if self.welcome.get("type") != "welcome":
            raise WsClosed(f"first frame is not welcome: {self.welcome}")
        self.node = self.welcome.get("node")

    def _send_frame(self, opcode, payload):
        head = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def send(self, obj):
        self._send_frame(0x1, json.dumps(obj).encode())

    def _read(self, n, deadline):
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame in time")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout as e:
                raise TimeoutError("no frame in time") from e
            if not chunk:
                raise WsClosed("socket closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self, timeout=TIMEOUT):
        """The next JSON text message; answers pings on the way."""
        deadline = time.monotonic() + timeout
        message = b""
        while True:
            b0, b1 = self._read(2, deadline)
            fin, opcode, n = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", self._read(2, deadline))
            elif n == 127:
                (n,) = struct.unpack("!Q", self._read(8, deadline))
            mask = self._read(4, deadline) if b1 & 0x80 else None
            payload = self._read(n, deadline)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x9:
                self._send_frame(0xA, payload)
            elif opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                raise WsClosed(f"closed by the server: code={code} {payload[2:]!r}")
            elif opcode in (0x0, 0x1):
                message += payload
                if fin:
                    return json.loads(message)
            # pong (0xA) and anything else: ignored

    def expect(self, kind, timeout=TIMEOUT):
        """The next frame of type `kind`, skipping pushes of other types."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.recv(max(0.01, deadline - time.monotonic()))
            if frame.get("type") == kind:
                return frame
            if frame.get("type") == "error":
                raise AssertionError(f"error frame while waiting for {kind}: {frame}")

    def close(self):
        """A clean close: our Close frame, then the server's (briefly), then the socket."""
        try:
            self._send_frame(0x8, struct.pack("!H", 1000))
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                self.recv(deadline - time.monotonic())
        except (OSError, TimeoutError, WsClosed, ValueError):
            pass
        finally:
            self.sock.close()


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, ok, detail=""):
        if ok:
            self.passed += 1
            print(f"  ok    {name}")
        else:
            self.failed += 1
            print(f"  FAIL  {name}{': ' + detail if detail else ''}")
        return ok


def ws_on_other_node(lb, avoid, tries=9):
    """A WebSocket through the load balancer that landed on a node not in `avoid`."""
    for _ in range(tries):
        ws = WebSocket(lb)
        if ws.node not in avoid:
            return ws
        ws.close()
    raise AssertionError(f"{tries} connections through the load balancer all landed on {avoid}")


def run(lb, nodes, key, c):
    print(f"checking the cluster behind {lb}")

    # 1. Operations endpoints through the load balancer.
    status, body = http("GET", f"{lb}/healthz")
    c.check("GET /healthz via the LB is 200 ok", status == 200 and '"ok"' in body, f"{status} {body}")
    status, body = http("GET", f"{lb}/readyz")
    c.check("GET /readyz via the LB is 200 ready", status == 200 and '"ready"' in body, f"{status} {body}")
    status, body = http("GET", f"{lb}/metrics")
    c.check("GET /metrics via the LB is Prometheus text", status == 200 and "switchboard_" in body, f"{status}")

    # 2. Which node is which, asked directly; then round robin through the load balancer.
    node_ids = {}
    for url in nodes:
        ws = WebSocket(url)
        node_ids[url] = ws.node
        ws.close()
    c.check(
        f"the {len(nodes)} nodes have distinct ids",
        len(set(node_ids.values())) == len(nodes),
        str(node_ids),
    )
    seen = []
    for _ in range(2 * len(nodes)):
        ws = WebSocket(lb)
        seen.append(ws.node)
        ws.close()
    c.check(
        "WebSocket connections through the LB reach every node",
        set(seen) == set(node_ids.values()),
        f"landed on {seen}",
    )

    # 3. A subscriber through the load balancer, on a fresh channel.
    channel = "cluster-check-" + os.urandom(4).hex()
    sub = WebSocket(lb)
    sub.send({"type": "subscribe", "id": 1, "channel": channel})
    subscribed = sub.expect("subscribed")
    c.check(
        f"subscriber via the LB (on {sub.node}) subscribed to {channel} at offset 0",
        subscribed.get("offset") == 0 and subscribed.get("id") == 1,
        str(subscribed),
    )

    # 4. Publications by three other paths.
    sent = []  # (path, data, offset, epoch)
    for i in range(3):
        data = {"via": "api-lb", "n": i}
        status, body = http("POST", f"{lb}/api/publish", key, {"channel": channel, "data": data})
        ok = c.check(f"POST /api/publish via the LB #{i + 1} is 200", status == 200, f"{status} {body}")
        if ok:
            reply = json.loads(body)
            sent.append(("api-lb", data, reply.get("offset"), reply.get("epoch")))
    other = next((u for u, n in node_ids.items() if n != sub.node), nodes[0])
    data = {"via": "api-direct", "node": node_ids[other]}
    status, body = http("POST", f"{other}/api/publish", key, {"channel": channel, "data": data})
    if c.check(f"POST /api/publish directly on {node_ids[other]} is 200", status == 200, f"{status} {body}"):
        reply = json.loads(body)
        sent.append(("api-direct", data, reply.get("offset"), reply.get("epoch")))
    pub = ws_on_other_node(lb, {sub.node})
    data = {"via": "ws", "node": pub.node}
    pub.send({"type": "publish", "id": 7, "channel": channel, "data": data})
    published = pub.expect("published")
    pub.close()
    if c.check(
        f"WebSocket publish via the LB (on {pub.node}) is acknowledged",
        published.get("id") == 7 and isinstance(published.get("offset"), int),
        str(published),
    ):
        sent.append(("ws", data, published["offset"], published["epoch"]))

    offsets = [s[2] for s in sent]
    epochs = {s[3] for s in sent}
    c.check(
        "the publications got offsets 1..N in order, in one epoch",
        offsets == list(range(1, len(sent) + 1)) and len(epochs) == 1,
        f"offsets={offsets} epochs={epochs}",
    )

    # 5. The subscriber got every one of them, in order.
    received = []
    try:
        while len(received) < len(sent):
            frame = sub.expect("message")
            received.append((frame.get("offset"), frame.get("data")))
    except (TimeoutError, WsClosed, AssertionError) as e:
        c.check("the subscriber received every publication", False, f"{e}; got {received}")
    else:
        expected = [(s[2], s[1]) for s in sent]
        c.check(
            f"the subscriber on {sub.node} received all {len(sent)} publications in order",
            received == expected,
            f"got {received}, expected {expected}",
        )

    # 6. Every node, asked directly, has the same history.
    histories = {}
    for url in nodes:
        status, body = http("GET", f"{url}/api/history/{urllib.parse.quote(channel, safe='')}", key)
        if c.check(f"GET /api/history on {node_ids[url]} is 200", status == 200, f"{status} {body}"):
            h = json.loads(body)
            histories[node_ids[url]] = (
                h.get("offset"),
                h.get("epoch"),
                [(p.get("offset"), p.get("data")) for p in h.get("publications", [])],
            )
    want = (len(sent), next(iter(epochs), None), [(s[2], s[1]) for s in sent])
    c.check(
        "every node reports the same offset, epoch and publications",
        len(histories) == len(nodes) and all(h == want for h in histories.values()),
        f"{histories} expected {want}",
    )

    # 7. Cluster-wide channel listing, asked of every node directly. Each node publishes its
    #    subscriber counts on its Redis heartbeat (every 2 s), so allow a few seconds.
    counts, deadline = {}, time.monotonic() + 8.0
    while True:
        for url in nodes:
            status, body = http("GET", f"{url}/api/channels", key)
            entry = None
            if status == 200:
                listed = json.loads(body).get("channels", [])
                entry = next((x for x in listed if x.get("channel") == channel), None)
            counts[node_ids[url]] = entry and entry.get("subscribers")
        if all(n == 1 for n in counts.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    c.check(
        "GET /api/channels on every node lists the channel with its 1 subscriber",
        all(n == 1 for n in counts.values()),
        f"subscribers seen: {counts}",
    )
    sub.close()
    return node_ids


def cluster_sh(cluster_dir, *args):
    """Runs scripts/cluster.sh ARGS on the cluster in `cluster_dir`; (ok, output)."""
    env = dict(os.environ, CLUSTER_DIR=cluster_dir)
    proc = subprocess.run(
        ["bash", CLUSTER_SH, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


def wait_closed(ws, timeout):
    """True once the server side of `ws` is gone (frames before that are skipped)."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            ws.recv(max(0.01, deadline - time.monotonic()))
    except (WsClosed, OSError):
        return True
    except TimeoutError:
        return False
    finally:
        ws.sock.close()


def failover(lb, nodes, node_ids, key, cluster_dir, c):
    """Kill the node a subscriber is on; it recovers on another one; start the node again."""
    print("failover (scripts/cluster.sh kill / start)")
    channel = "cluster-failover-" + os.urandom(4).hex()
    sub = WebSocket(lb)
    victim = sub.node
    sub.send({"type": "subscribe", "id": 1, "channel": channel})
    epoch = sub.expect("subscribed").get("epoch")
    for i in (1, 2):
        status, body = http("POST", f"{lb}/api/publish", key, {"channel": channel, "data": {"n": i}})
        c.check(f"publish #{i} before the failure is 200", status == 200, f"{status} {body}")
    got = [sub.expect("message").get("offset") for _ in (1, 2)]
    c.check(f"the subscriber on {victim} received offsets 1, 2", got == [1, 2], str(got))

    ok, out = cluster_sh(cluster_dir, "kill", victim)
    if not c.check(f"scripts/cluster.sh kill {victim}", ok, out):
        sub.close()
        return
    c.check(
        f"the subscriber's connection through the LB dropped with {victim}",
        wait_closed(sub, 10.0),
        "still open 10 s after the kill",
    )

    # nginx finds the dead node on its first attempt and moves on to the next one.
    answers = [http("GET", f"{lb}/readyz")[0] for _ in range(2 * len(nodes))]
    c.check(
        f"the LB answers /readyz 200 with {victim} down ({len(answers)} calls)",
        all(a == 200 for a in answers),
        str(answers),
    )
    status, body = http("POST", f"{lb}/api/publish", key, {"channel": channel, "data": {"n": 3}})
    c.check(f"publish #3 through the LB with {victim} down is 200", status == 200, f"{status} {body}")

    again = WebSocket(lb)
    c.check(f"the subscriber reconnected through the LB to another node ({again.node})", again.node != victim)
    again.send({"type": "subscribe", "id": 1, "channel": channel, "since": {"offset": 2, "epoch": epoch}})
    subscribed = again.expect("subscribed")
    missed = [(p.get("offset"), p.get("data")) for p in subscribed.get("publications") or []]
    c.check(
        "subscribe with since offset 2 recovers the missed publication 3",
        subscribed.get("recovered") is True and missed == [(3, {"n": 3})] and subscribed.get("epoch") == epoch,
        str(subscribed),
    )
    status, body = http("POST", f"{lb}/api/publish", key, {"channel": channel, "data": {"n": 4}})
    live = again.expect("message") if status == 200 else {}
    c.check(
        f"the reconnected subscriber on {again.node} receives publication 4 live",
        live.get("offset") == 4 and live.get("data") == {"n": 4},
        f"{status} {live}",
    )
    again.close()

    ok, out = cluster_sh(cluster_dir, "start", victim)
    if not c.check(f"scripts/cluster.sh start {victim} (returns once it is ready)", ok, out):
        return
    url = next(u for u, n in node_ids.items() if n == victim)
    status, _ = http("GET", f"{url}/readyz")
    direct = WebSocket(url)
    direct.send({"type": "subscribe", "id": 1, "channel": channel, "since": {"offset": 0, "epoch": epoch}})
    subscribed = direct.expect("subscribed")
    direct.close()
    c.check(
        f"{victim}, started again on {url}, is ready and recovers offsets 1..4",
        status == 200
        and direct.node == victim
        and [p.get("offset") for p in subscribed.get("publications") or []] == [1, 2, 3, 4],
        f"readyz {status}, node {direct.node}, {subscribed}",
    )
    # nginx tries a server that failed again once its fail_timeout (10 s) is over: until then
    # every connection lands elsewhere, so this polls for up to 15 s.
    landed, deadline = [], time.monotonic() + 15.0
    while time.monotonic() < deadline:
        ws = WebSocket(lb)
        landed.append(ws.node)
        ws.close()
        if landed[-1] == victim:
            break
        time.sleep(0.2)
    c.check(
        f"connections through the LB reach {victim} again",
        landed[-1:] == [victim],
        f"{len(landed)} connections in 15 s, none on {victim}",
    )


class Collector(threading.Thread):
    """Reads every frame of a WebSocket in the background (answering pings) until it closes."""

    def __init__(self, ws):
        super().__init__(daemon=True)
        self.ws, self.frames, self.closed = ws, [], None

    def run(self):
        try:
            while True:
                self.frames.append(self.ws.recv(timeout=3600))
        except (OSError, TimeoutError, WsClosed, ValueError) as e:
            self.closed = str(e) or type(e).__name__

    def stop(self):
        try:
            self.ws.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.join(5)
        self.ws.sock.close()


class RedisCluster:
    """The members of the Redis Cluster, asked with redis-cli (CLUSTER NODES, KEYSLOT)."""

    def __init__(self, members):
        self.members = {}  # name -> (host, port)
        for m in members:
            name, _, addr = m.partition("=")
            host, _, port = addr.rpartition(":")
            self.members[name] = (host, port)

    def cli(self, name, *args):
        host, port = self.members[name]
        proc = subprocess.run(
            ["redis-cli", "-h", host, "-p", port, *args], capture_output=True, text=True, timeout=5, check=False
        )
        return proc.stdout.replace("\r", "") if proc.returncode == 0 else None

    def name_of(self, addr):
        """`host:port@bus` of CLUSTER NODES -> member name."""
        hp = addr.split("@")[0]
        return next((n for n, (h, p) in self.members.items() if f"{h}:{p}" == hp), hp)

    def nodes(self, avoid=()):
        """CLUSTER NODES as seen by the first member that answers: [(name, flags, master id, id, slots)]."""
        for name in self.members:
            if name in avoid:
                continue
            out = self.cli(name, "cluster", "nodes")
            if out:
                rows = []
                for line in out.splitlines():
                    f = line.split()
                    if len(f) >= 8:
                        rows.append((self.name_of(f[1]), f[2], f[3], f[0], f[8:]))
                return rows
        return []

    def slot_of(self, channel):
        # The engine keeps a channel's keys and shard channel under the hash tag {channel}.
        for name in self.members:
            out = self.cli(name, "cluster", "keyslot", "{" + channel + "}")
            if out and out.strip().isdigit():
                return int(out)
        raise AssertionError("no Redis Cluster member answers CLUSTER KEYSLOT")

    def owner(self, slot, avoid=()):
        """(primary, [its replicas]) serving `slot` in a live member's view, or (None, [])."""
        rows = self.nodes(avoid)
        for name, flags, _, node_id, slots in rows:
            if "master" not in flags or "fail" in flags:
                continue
            for r in slots:
                lo, _, hi = r.partition("-")
                if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                    return name, [n for n, fl, m, _, _ in rows if m == node_id and "fail" not in fl]
        return None, []


def judge(frames, channel, epoch, acked):
    """What a subscriber of `channel` (subscribed in `epoch`) made of `frames` (pushes, and the
    `subscribed` reply of a reconnection), against the publications acknowledged to the
    publisher, `acked` [(epoch, offset, n)] with data {"n": n}, in order. ok: every one was
    delivered as acknowledged, except, once a loss was signalled (`reset`, `recovered:
    false`), publications of an epoch before the last acknowledged one's; and none twice."""
    seen, cur, last, loss = {}, epoch, 0, []
    for f in frames:
        kind, mine = f.get("type"), f.get("channel") in (None, channel)
        if kind == "reset" and mine:
            cur, last = f.get("epoch"), 0
            loss.append(f)
        elif kind == "subscribed":
            if f.get("recovered") is False:
                loss.append(f)
            cur, last = f.get("epoch"), f.get("offset", 0)
            for p in f.get("publications") or []:
                seen.setdefault((cur, p.get("offset")), []).append(p.get("data"))
        elif kind == "message" and mine:
            seen.setdefault((cur, f.get("offset")), []).append(f.get("data"))
            last = f.get("offset")
    final = acked[-1][0] if acked else epoch

    def excused(e):  # a loss was signalled, and the publication is of an epoch left behind
        return bool(loss) and e != final

    missing = [(e, o, n) for e, o, n in acked if (e, o) not in seen]
    # Other data at an acknowledged position is a silent divergence (offsets reused after a
    # rollback) unless a loss was signalled for that epoch; twice the same is always wrong.
    wrong = [
        (e, o, n, seen[(e, o)])
        for e, o, n in acked
        if (e, o) in seen and seen[(e, o)] != [{"n": n}] and not (excused(e) and len(seen[(e, o)]) == 1)
    ]
    complete = all(excused(e) for e, _, _ in missing)
    return {"ok": complete and not wrong, "missing": missing, "wrong": wrong, "loss": loss, "position": (cur, last)}


def redis_failover(lb, nodes, key, cluster_dir, members, c):
    """SIGKILL the Redis primary of a subscribed channel; no acknowledged publication is lost
    silently; the member comes back as a replica."""
    print("Redis primary failover (scripts/cluster.sh kill / start redisN)")
    redis = RedisCluster(members)
    channel = "cluster-redis-failover-" + os.urandom(4).hex()
    slot = redis.slot_of(channel)
    victim, replicas = redis.owner(slot)
    if not c.check(
        f"{channel} (slot {slot}) is on primary {victim}, replica {replicas}",
        victim is not None and len(replicas) == 1,
        f"owner {victim}, replicas {replicas}",
    ):
        return
    sub = WebSocket(lb)
    sub.send({"type": "subscribe", "id": 1, "channel": channel})
    epoch = sub.expect("subscribed").get("epoch")
    collector = Collector(sub)
    collector.start()
    acked = []  # (epoch, offset, n)

    def publish(n, timeout):
        body = {"channel": channel, "data": {"n": n}, "idempotency_key": f"{channel}-{n}"}
        try:
            status, text = http("POST", f"{lb}/api/publish", key, body, timeout=timeout)
        except OSError:
            return False
        if status != 200:
            return False
        reply = json.loads(text)
        acked.append((reply.get("epoch"), reply.get("offset"), n))
        return True

    for n in (1, 2):
        c.check(f"publish #{n} before the crash is 200", publish(n, TIMEOUT))

    ok, out = cluster_sh(cluster_dir, "kill", victim)
    if not c.check(f"scripts/cluster.sh kill {victim}", ok, out):
        collector.stop()
        return
    # Publish until the replica serves the slot and three more were acknowledged after that.
    started, taken_over, after, refused, n = time.monotonic(), None, 0, 0, 3
    while after < 3 and time.monotonic() - started < 45:
        if publish(n, 10.0):
            n += 1
            after += taken_over is not None
        else:
            refused += 1
            time.sleep(0.2)
        if taken_over is None and redis.owner(slot, avoid={victim})[0] not in (None, victim):
            taken_over = time.monotonic() - started
    c.check(
        f"replica {replicas[0]} took slot {slot} over",
        taken_over is not None,
        f"no live primary serves slot {slot} {time.monotonic() - started:.0f} s after the kill",
    )
    c.check(
        f"publications through the LB are acknowledged again after the takeover "
        f"({len(acked)} acknowledged, {refused} attempts refused or timed out)",
        after >= 3,
        f"{after} acknowledged after the takeover",
    )

    # The subscriber: every acknowledged publication, or an explicit loss. Its connection may
    # have been closed (then it reconnects with `since`, as a client does).
    first, resumed = collector, []  # resumed: the `subscribed` reply of a reconnection

    def verdict():
        frames = first.frames if not resumed else first.frames + resumed + collector.frames
        return judge(frames, channel, epoch, acked)

    deadline = time.monotonic() + 15.0
    while not verdict()["ok"] and collector.closed is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if not verdict()["ok"] and collector.closed is not None:
        cur, last = verdict()["position"]
        again = WebSocket(lb)
        again.send({"type": "subscribe", "id": 1, "channel": channel, "since": {"offset": last, "epoch": cur}})
        resumed.append(again.expect("subscribed"))
        print(f"  (the subscriber's connection closed: {first.closed}; resumed on {again.node} from offset {last})")
        collector = Collector(again)
        collector.start()
        deadline = time.monotonic() + 15.0
        while not verdict()["ok"] and time.monotonic() < deadline:
            time.sleep(0.1)
    v = verdict()
    c.check(
        "no acknowledged publication delivered twice or with other data",
        not v["wrong"],
        f"(epoch, offset, n, delivered) {v['wrong']}",
    )
    c.check(
        f"the subscriber got all {len(acked)} acknowledged publications, or was told of a loss "
        f"({len(v['missing'])} missing, {len(v['loss'])} reset / recovered:false)",
        v["ok"],
        f"missing (epoch, offset, n) {v['missing']}; loss signals {v['loss']}",
    )
    collector.stop()
    first.stop()

    answers, deadline = {}, time.monotonic() + 15.0
    while time.monotonic() < deadline:
        answers = {u: http("GET", f"{u}/readyz")[0] for u in nodes}
        if all(a == 200 for a in answers.values()):
            break
        time.sleep(0.25)
    c.check("every node is ready after the takeover", all(a == 200 for a in answers.values()), str(answers))

    ok, out = cluster_sh(cluster_dir, "start", victim)
    if c.check(f"scripts/cluster.sh start {victim} (returns once it has joined)", ok, out):
        mine = [r for r in redis.nodes() if r[0] == victim]
        c.check(
            f"{victim} is back as a replica",
            bool(mine) and "slave" in mine[0][1] and "fail" not in mine[0][1],
            str(mine),
        )


def follow(lb, channel):
    """A subscriber that reconnects with `since`, printing what happens (cluster.sh follow)."""

    def say(text):
        print(f"[follow] {text}", flush=True)

    since, down_since = None, None
    while True:
        try:
            ws = WebSocket(lb)
        except (OSError, TimeoutError, WsClosed, ValueError) as e:
            if down_since is None:
                down_since = time.monotonic()
                say(f"cannot connect to {lb}: {e}; retrying every 0.5 s")
            time.sleep(0.5)
            continue
        down_since = None
        say(f"connected through {lb} to {ws.node}")
        command = {"type": "subscribe", "id": 1, "channel": channel}
        if since is not None:
            command["since"] = since
        try:
            ws.send(command)
            subscribed = ws.expect("subscribed")
            since = {"offset": subscribed["offset"], "epoch": subscribed["epoch"]}
            if "recovered" in subscribed:
                missed = subscribed.get("publications") or []
                say(
                    f"subscribed to {channel} at offset {subscribed['offset']}, "
                    f"recovered: {str(subscribed['recovered']).lower()}, "
                    f"{len(missed)} missed publication(s)"
                )
                for p in missed:
                    say(f"message offset {p['offset']} (recovered) {json.dumps(p.get('data'))}")
            else:
                say(f"subscribed to {channel} at offset {subscribed['offset']}")
            while True:
                frame = ws.recv(timeout=3600)
                kind = frame.get("type")
                if kind == "message" and frame.get("channel") == channel:
                    since = {"offset": frame["offset"], "epoch": since["epoch"]}
                    say(f"message offset {frame['offset']} {json.dumps(frame.get('data'))}")
                elif kind == "reset" and frame.get("channel") == channel:
                    # A new epoch: its offsets start again after 0.
                    since = {"offset": 0, "epoch": frame["epoch"]}
                    say(f"reset: the channel starts epoch {frame['epoch']}")
                elif kind in ("disconnect", "error"):
                    say(json.dumps(frame))
        except (OSError, TimeoutError, WsClosed, ValueError, AssertionError, KeyError) as e:
            say(f"connection lost ({e}); reconnecting with since offset {since and since['offset']}")
        finally:
            ws.sock.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lb", required=True, help="load balancer base URL, http://HOST:PORT")
    p.add_argument("--node", action="append", default=[], help="a node's base URL (repeat)")
    p.add_argument("--key", default="dev-key", help="an API key the nodes accept")
    p.add_argument("--cluster-dir", help="the work dir of a scripts/cluster.sh cluster: check failover")
    p.add_argument("--follow", metavar="CHANNEL", help="no checks: subscribe and print, reconnecting")
    p.add_argument(
        "--redis-member",
        action="append",
        default=[],
        metavar="NAME=HOST:PORT",
        help="a Redis Cluster member (repeat); with --cluster-dir: check a Redis primary's crash",
    )
    args = p.parse_args()
    lb = args.lb.rstrip("/")
    if args.follow:
        try:
            follow(lb, args.follow)
        except KeyboardInterrupt:
            return 0
    if not args.node:
        p.error("--node is required (repeat it for every node)")
    nodes = [n.rstrip("/") for n in args.node]
    c = Checks()
    try:
        node_ids = run(lb, nodes, args.key, c)
        if args.cluster_dir:
            failover(lb, nodes, node_ids, args.key, args.cluster_dir, c)
        if args.cluster_dir and args.redis_member:
            redis_failover(lb, nodes, args.key, args.cluster_dir, args.redis_member, c)
    except (OSError, TimeoutError, WsClosed, AssertionError, ValueError, subprocess.SubprocessError) as e:
        c.check("the check ran to the end", False, f"{type(e).__name__}: {e}")
    print(f"{c.passed} passed, {c.failed} failed")
    return 0 if c.failed == 0 and c.passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
