#!/usr/bin/env python3
"""Writes the committed seed corpus (fuzz/corpus/<target>/) and the dictionaries
(fuzz/dict/<target>.dict) of the fuzz targets: small valid inputs and the edges of each limit,
so that the fuzzer starts from real frames, the commands of docs/protocol.md, real tokens and
config/default.toml. The input format of each target is in its fuzz_targets/*.rs doc.

Run it again after changing a target's input format or a seed here: python3 fuzz/seeds.py
(it rewrites the named seed files; what libFuzzer added to corpus/ is left alone)."""
import base64
import hashlib
import hmac
import json
import os
import struct
import tomllib

FUZZ = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(FUZZ)
MAX = 1024  # ws_frame.rs `MAX`
SECRET = b"fuzz-secret"  # token.rs `SECRET`
FAR = 4102444800  # 2100-01-01: a token seed that does not expire


def write(target, name, data):
    d = os.path.join(FUZZ, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def dictionary(target, words):
    d = os.path.join(FUZZ, "dict")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, target + ".dict"), "w") as f:
        f.write(f"# libFuzzer dictionary of the {target} target, written by fuzz/seeds.py\n")
        for w in sorted(set(words)):
            f.write(json.dumps(w) + "\n")


# --- ws_frame: a read-size byte, then client frames (masked, as a client must) ---------------
def frame(opcode, payload, fin=True, mask=b"\x37\xfa\x21\x3d", length=None, rsv=0):
    payload = payload.encode() if isinstance(payload, str) else payload
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 1 << 16:
        head += bytes([bit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([bit | 127]) + struct.pack(">Q", n)
    if not mask:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


TEXT, BINARY, CONT, CLOSE, PING, PONG = 1, 2, 0, 8, 9, 10
RSV1, RSV2 = 0x40, 0x20  # RSV1: permessage-deflate's "compressed" bit
ping = '{"type":"ping","id":1}'


def deflated(text):
    """A message compressed as permessage-deflate sends it: raw deflate, sync flush, its
    trailing 00 00 ff ff removed (RFC 7692, 7.2.1)."""
    import zlib
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    out = c.compress(text.encode() if isinstance(text, str) else text) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


frames = {
    "text-one-read.bin": (0, frame(TEXT, ping)),
    "text-byte-by-byte.bin": (1, frame(TEXT, ping)),
    "two-texts-reads-of-7.bin": (7, frame(TEXT, ping) + frame(TEXT, '{"type":"subscribe","channel":"news"}')),
    "binary.bin": (0, frame(BINARY, b"\x00\x01\xff")),
    "empty-text.bin": (0, frame(TEXT, "")),
    "ping-pong-close.bin": (0, frame(PING, "hb") + frame(PONG, "") + frame(CLOSE, struct.pack(">H", 1000) + b"bye")),
    "close-empty.bin": (0, frame(CLOSE, "")),
    "close-bad-code.bin": (0, frame(CLOSE, struct.pack(">H", 999))),
    "ping-126.bin": (0, frame(PING, "p" * 126)),
    "fragmented.bin": (3, frame(TEXT, '{"type":', fin=False) + frame(PING, "") + frame(CONT, '"ping"', fin=False) + frame(CONT, "}")),
    "fragmented-at-limit.bin": (0, frame(TEXT, "a" * 1000, fin=False) + frame(CONT, "b" * 24)),
    "fragmented-past-limit.bin": (0, frame(TEXT, "a" * 1000, fin=False) + frame(CONT, "b" * 25)),
    "fragmented-many-small.bin": (64, b"".join([frame(TEXT, "x" * 100, fin=False)] + [frame(CONT, "x" * 100, fin=False)] * 10 + [frame(CONT, "")])),
    "continuation-unstarted.bin": (0, frame(CONT, "x")),
    "text-inside-fragments.bin": (0, frame(TEXT, "a", fin=False) + frame(TEXT, "b")),
    "len16-at-limit.bin": (0, frame(TEXT, "a" * MAX)),
    "len16-past-limit.bin": (0, frame(TEXT, "a" * (MAX + 1))),
    "len16-past-limit-reads-of-255.bin": (255, frame(BINARY, b"\x00" * (MAX + 100))),
    "len64-2-to-62-streaming.bin": (16, frame(BINARY, b"\x00" * 1500, length=1 << 62)),
    "len64-msb-set.bin": (0, frame(BINARY, b"", length=1 << 63)),
    "len64-small.bin": (0, frame(TEXT, b"x" * 10)[:1] + bytes([0x80 | 127]) + struct.pack(">Q", 10) + b"\x00" * 4 + b"x" * 10),
    "unmasked.bin": (0, frame(TEXT, ping, mask=None)),
    "rsv-bits.bin": (0, frame(TEXT, ping, rsv=RSV2)),
    "deflate-text.bin": (0, frame(TEXT, deflated(ping), rsv=RSV1)),
    "deflate-fragmented.bin": (5, frame(TEXT, deflated(ping)[:4], fin=False, rsv=RSV1) + frame(PING, "") + frame(CONT, deflated(ping)[4:])),
    "deflate-at-limit.bin": (0, frame(TEXT, deflated("a" * MAX), rsv=RSV1)),
    "deflate-past-limit.bin": (0, frame(BINARY, deflated(b"\x00" * (64 * MAX)), rsv=RSV1)),
    "deflate-rsv1-on-continuation.bin": (0, frame(TEXT, deflated(ping)[:3], fin=False, rsv=RSV1) + frame(CONT, deflated(ping)[3:], rsv=RSV1)),
    "deflate-rsv1-on-ping.bin": (0, frame(PING, "", rsv=RSV1)),
    "deflate-not-deflate.bin": (0, frame(TEXT, b"\xff\xff\xff\xff", rsv=RSV1)),
    "bad-opcode.bin": (0, frame(3, "x")),
}
for name, (read, data) in frames.items():
    write("ws_frame", name, bytes([read]) + data)

# --- command: one text message; the commands of docs/protocol.md, then edges -----------------
commands = {
    "subscribe.json": '{"type":"subscribe","id":1,"channel":"news"}',
    "subscribe-since.json": '{"type":"subscribe","id":1,"channel":"news","since":{"offset":1,"epoch":"3f9c2a7d41b8"}}',
    "unsubscribe.json": '{"type":"unsubscribe","id":"u-1","channel":"chat:lobby"}',
    "publish.json": '{"type":"publish","id":2,"channel":"news","data":{"headline":"hello"}}',
    "publish-null.json": '{"type":"publish","channel":"news","data":null}',
    "publish-depth-64.json": '{"type":"publish","channel":"n","data":' + "[" * 64 + "]" * 64 + "}",
    "publish-depth-65.json": '{"type":"publish","channel":"n","data":' + "[" * 65 + "]" * 65 + "}",
    "publish-lone-surrogate.json": '{"type":"publish","channel":"a","data":["\\ud83d"]}',
    "publish-huge-number.json": '{"type":"publish","channel":"a","data":{"n":-1.5e605}}',
    "publish-strings.json": '{"type":"publish","channel":"a:b","data":{"s":"[{\\"\\u00e9\\ud83d\\ude00","n":-1.5e300}}',
    "ping.json": '{"type":"ping"}',
    "presence.json": '{"type":"presence","id":9,"channel":"chat:lobby"}',
    "history.json": '{"type":"history","id":3,"channel":"news","limit":10}',
    "history-since.json": '{"type":"history","id":3,"channel":"news","since":{"offset":0,"epoch":"e"},"limit":null}',
    "refresh.json": '{"type":"refresh","id":5,"token":"eyJhbGciOiJIUzI1NiJ9.e30.sig"}',
    "bad-channel.json": '{"type":"subscribe","id":4,"channel":"breaking news"}',
    "channel-255.json": '{"type":"subscribe","channel":"' + "c" * 255 + '"}',
    "channel-256.json": '{"type":"subscribe","channel":"' + "c" * 256 + '"}',
    "id-64.json": '{"type":"ping","id":"' + "i" * 64 + '"}',
    "id-65.json": '{"type":"ping","id":"' + "i" * 65 + '"}',
    "id-negative.json": '{"type":"ping","id":-1}',
    "id-u64-max.json": '{"type":"ping","id":18446744073709551615}',
    "unknown-type.json": '{"type":"' + "z" * 100 + '","id":7}',
    "escaped-keys.json": '{"\\u0074ype":"ping","id":"\\ud800"}',
    "duplicate-field.json": '{"type":"ping","type":"subscribe"}',
    "trailing.json": '{"type":"ping"} x',
    "not-object.json": '["ping"]',
    "not-json.json": "ping",
    "whitespace.json": ' \t\n{ "type" : "ping" }\n',
}
for name, text in commands.items():
    write("command", name, text)
dictionary("command", ["type", "id", "channel", "data", "since", "limit", "token", "offset",
                       "epoch", "subscribe", "unsubscribe", "publish", "ping", "presence",
                       "history", "refresh", "null", "true", "false", "\\u", "\\ud83d"])


# --- token: a mode byte; 0 a token as sent, 1 HS256 / 2 ES256 claims signed by the target -----
def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(header, claims):
    msg = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    sig = hmac.new(SECRET, msg.encode(), hashlib.sha256).digest()
    return msg + "." + b64(sig)


alice = {"sub": "alice", "exp": FAR, "channels": ["chat:*"], "publish": ["chat:lobby"]}
tokens = {
    "raw-hs256.txt": hs256({"alg": "HS256", "typ": "JWT"}, alice),
    "raw-hs256-expired.txt": hs256({"alg": "HS256", "typ": "JWT"}, {"sub": "a", "exp": 1}),
    "raw-alg-none.txt": b64(b'{"alg":"none","typ":"JWT"}') + "." + b64(b'{"sub":"a"}') + ".",
    "raw-rs256-header.txt": b64(b'{"alg":"RS256"}') + "." + b64(b'{"sub":"a"}') + "." + "A" * 342,
    "raw-es256-header.txt": b64(b'{"alg":"ES256","kid":"k"}') + "." + b64(b"{}") + "." + "A" * 86,
    "raw-hs384.txt": b64(b'{"alg":"HS384"}') + "." + b64(b'{"sub":"a"}') + ".c2ln",
    "raw-junk.txt": "a.b.c.d",
}
for name, text in tokens.items():
    write("token", name, b"\x00" + text.encode())
signed = {
    "hs256-claims.json": (1, json.dumps(alice)),
    "hs256-empty.json": (1, "{}"),
    "hs256-exp-float.json": (1, '{"sub":"a","exp":4102444800.5}'),
    "hs256-expired-in-leeway.json": (1, '{"sub":"a","exp":1000}'),
    "hs256-nbf-future.json": (1, '{"sub":"a","nbf":4102444800}'),
    "hs256-nbf-float.json": (1, '{"sub":"a","nbf":4102444800.5}'),
    "hs256-exp-string.json": (1, '{"sub":"a","exp":"4102444800"}'),
    "hs256-header-kid.json": (1, '{"alg":"HS256","typ":"JWT","kid":"1","crit":["x"]}\x00{"sub":"a"}'),
    "hs256-header-es256.json": (1, '{"alg":"ES256"}\x00{"sub":"a"}'),
    "hs256-header-none.json": (1, '{"alg":"none"}\x00{"sub":"a"}'),
    "hs256-claims-not-object.json": (1, '["a"]'),
    "es256-claims.json": (2, json.dumps(alice)),
    "es256-aud.json": (2, '{"sub":"b","aud":["x"],"iss":"y","channels":"chat:*"}'),
}
for name, (mode, text) in signed.items():
    write("token", name, bytes([mode]) + text.encode())
dictionary("token", ["alg", "typ", "JWT", "kid", "none", "HS256", "HS384", "RS256", "ES256",
                     "EdDSA", "sub", "exp", "nbf", "iat", "aud", "iss", "channels", "publish",
                     "eyJ", "\\u0000"])

# --- config: TOML, then optionally NUL and NAME=VALUE lines -----------------------------------
default_toml = open(os.path.join(ROOT, "config", "default.toml"), encoding="utf-8").read()
write("config", "default.toml", default_toml)
configs = {
    "empty.toml": "",
    "namespaces.toml": '[channels]\nanonymous = false\n[namespaces.chat]\njoin_leave = true\n'
                       '[namespaces.public]\nanonymous = true\nhistory_ttl = 90\nhistory_size = 0\n',
    "durations.toml": '[heartbeat]\ninterval = 1.5\ntimeout = "1m 30s"\n[auth]\nleeway = "250ms"\n',
    "tls-and-origins.toml": '[server]\nbind = "[::1]:0"\nallowed_origins = ["http://localhost:3000", '
                            '"https://a.example:8443"]\ntls_cert = "c.pem"\ntls_key = "k.pem"\n',
    "secrets.toml": '[auth]\nhmac_secret = "12345"\npublic_key_pem = "-----BEGIN PUBLIC KEY-----"\n'
                    '[api]\nkeys = ["k1", "k\\"2"]\n[engine]\nkind = "redis"\n'
                    'redis_url = "redis://:pw@h:1/0"\nprefix = "sb"\n',
    "limits-edges.toml": '[limits]\nmax_message_size = 64\nmax_pending_bytes = 64\nmax_connections = 1\n'
                         'client_publish_rate = 4294967295\nmax_errors = 0\n'
                         'max_subscriptions_per_connection = 18446744073709551615\n',
    "bad-unknown-key.toml": "[limits]\nmax_bananas = 1\n",
    "bad-negative.toml": "[limits]\nmax_errors = -1\n",
    "bad-table-as-value.toml": "server = 1\n",
    "env.toml": '[heartbeat]\ninterval = "5s"\n\x00SWITCHBOARD__API__KEYS=k1,k2\n'
                'SWITCHBOARD__HEARTBEAT__INTERVAL=250ms\nSWITCHBOARD__LIMITS__MAX_ERRORS=3\n'
                'SWITCHBOARD__AUTH__HMAC_SECRET=12345\nSWITCHBOARD__NAMESPACES__CHAT__JOIN_LEAVE=true\n'
                'SWITCHBOARD__SERVER__ALLOWED_ORIGINS=["http://a", \'https://b:8443\']\n'
                'SWITCHBOARD_API_KEYS=typo\nswitchboard__api__keys=lower\nOTHER__THING=x\n',
    "env-bad.toml": "\x00SWITCHBOARD__API=1\nSWITCHBOARD__HEARTBEAT__TIMEOUT=soon\n",
}
for name, text in configs.items():
    write("config", name, text)
keys = []
for section, table in tomllib.loads(default_toml).items():
    keys.append(section)
    for key in table:
        keys += [key, f"SWITCHBOARD__{section.upper()}__{key.upper()}"]
dictionary("config", keys + ["namespaces", "tls_cert", "tls_key", "hmac_secret", "public_key_pem",
                             "redis", "memory", "ms", "s", "m", "h", "true", "false", "[", "]",
                             "=", "\\u", "'''", '"""', "SWITCHBOARD__", "__"])
