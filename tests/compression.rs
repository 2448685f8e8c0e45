//! permessage-deflate (RFC 7692) on `/ws`, issue 12: what the handshake answers to each kind
//! of offer (raw socket, so every edge can be sent), messages intact both ways with a client
//! that compresses (raw frames deflated here with flate2, and Python's `websockets`, which
//! offers the extension by default), `compression.min_size`, one deflate pass per
//! publication however many subscribers are compressed (seen in `/metrics`), the size limit
//! applied to the inflated message (a zip bomb gets 1009 and the node's memory stays flat),
//! and RSV1 where it is not allowed (1002).

mod common;

use std::io::Write;
use std::net::SocketAddr;

use common::raw::{
    inflate, masked, upgrade_request_with, RawWs, CLOSE, CONTINUE, PING, RSV1, TEXT,
};
use common::spawn_app;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

/// What the server answers to any offer it takes, before window parameters.
const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// What a client does to compress a message with no context takeover: raw deflate, a sync
/// flush, and its `00 00 ff ff` removed (RFC 7692, 7.2.1). The server's own code is not used.
fn deflate(payload: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(payload).expect("deflate");
    e.flush().expect("sync flush");
    let mut out = e.finish().expect("finish");
    // `finish` adds an empty final block after the sync flush's tail: cut both.
    let tail = out
        .windows(4)
        .rposition(|w| w == [0, 0, 0xff, 0xff])
        .expect("a sync flush");
    out.truncate(tail);
    out
}

/// The response head to an upgrade request offering `offers` (one
/// `Sec-WebSocket-Extensions` header each), and the connection.
async fn offer(addr: SocketAddr, offers: &[&str]) -> (String, RawWs) {
    let headers: Vec<(&str, &str)> = offers
        .iter()
        .map(|o| ("Sec-WebSocket-Extensions", *o))
        .collect();
    let (head, mut ws) = RawWs::request(addr, &upgrade_request_with(addr, "", &headers)).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{offers:?}: {head}");
    let (first, welcome) = ws.whole_frame().await;
    assert_eq!(first, 0x81, "welcome is a plain text frame");
    assert!(welcome.starts_with(br#"{"type":"welcome""#));
    (head, ws)
}

/// The `Sec-WebSocket-Extensions` value of a response head, if any.
fn extension(head: &str) -> Option<String> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-extensions"))
        .map(|(_, value)| value.trim().to_string())
}

/// A compressed connection (the offer browsers send).
async fn compressed(addr: SocketAddr) -> RawWs {
    let (head, ws) = offer(addr, &["permessage-deflate; client_max_window_bits"]).await;
    assert_eq!(extension(&head).as_deref(), Some(ANSWER));
    ws
}

/// Sends `v` as one compressed message in `parts` frames (RSV1 on the first only).
async fn send_compressed(ws: &mut RawWs, v: &Value, parts: usize) {
    let c = deflate(v.to_string().as_bytes());
    let size = c.len().div_ceil(parts).max(1);
    let chunks: Vec<&[u8]> = c.chunks(size).collect();
    let mut bytes = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let op = if i == 0 { TEXT | RSV1 } else { CONTINUE };
        bytes.extend(masked(op, i + 1 == chunks.len(), chunk));
    }
    ws.stream.write_all(&bytes).await.expect("write");
}

/// A text message as received.
struct Received {
    /// Its JSON.
    v: Value,
    /// It came compressed (RSV1).
    rsv1: bool,
    /// Its length uncompressed.
    len: usize,
}

/// The next text message, inflated when RSV1 is set.
async fn recv_message(ws: &mut RawWs) -> Received {
    loop {
        let (first, payload) = ws.whole_frame().await;
        assert_eq!(
            first & 0xb0,
            0x80,
            "FIN set, RSV2 and RSV3 clear: {first:#x}"
        );
        match first & 0x0f {
            TEXT => {
                let rsv1 = first & RSV1 != 0;
                let text = if rsv1 { inflate(&payload) } else { payload };
                let v = serde_json::from_slice(&text).expect("JSON");
                return Received {
                    v,
                    rsv1,
                    len: text.len(),
                };
            }
            CLOSE => panic!("closed: {payload:?}"),
            _ => {}
        }
    }
}

/// The next text message and whether it came compressed.
async fn recv(ws: &mut RawWs) -> (Value, bool) {
    let r = recv_message(ws).await;
    (r.v, r.rsv1)
}

/// The next message of type `ty`.
async fn recv_type(ws: &mut RawWs, ty: &str) -> Received {
    loop {
        let r = recv_message(ws).await;
        if r.v["type"] == ty {
            return r;
        }
    }
}

/// Realistic JSON records (not repeated characters), about `n` of them.
fn records(n: usize) -> Value {
    const CITIES: &[&str] = &["Lisbon", "Nairobi", "Osaka", "Quito", "Tallinn", "Lyon"];
    Value::Array(
        (0..n)
            .map(|i| {
                json!({
                    "id": 1000 + i * 37 % 911,
                    "user": format!("user{}", i * 7919 % 1000),
                    "city": CITIES[i * 5 % CITIES.len()],
                    "score": (i * 13 % 100) as f64 + 0.5,
                    "active": i % 3 == 0,
                    "updated_at": format!("2026-11-{:02}T{:02}:{:02}:00Z", 1 + i % 28, i % 24, i * 7 % 60),
                })
            })
            .collect(),
    )
}

#[tokio::test]
async fn each_kind_of_offer_gets_the_answer_the_rfc_allows() {
    let s = spawn_app(&[]);
    let a = s.addr;
    let with_window = |bits: u8| format!("{ANSWER}; server_max_window_bits={bits}");
    let cases: Vec<(Vec<&str>, Option<String>)> = vec![
        // What Chromium and Python's websockets send: client_max_window_bits alone.
        (
            vec!["permessage-deflate; client_max_window_bits"],
            Some(ANSWER.into()),
        ),
        (vec!["permessage-deflate"], Some(ANSWER.into())),
        // A server window: answered, and kept (see `a_narrow_window_is_kept`).
        (
            vec!["permessage-deflate; server_max_window_bits=10"],
            Some(with_window(10)),
        ),
        (
            vec![r#"permessage-deflate; server_max_window_bits="9""#],
            Some(with_window(9)),
        ),
        // An unknown parameter, a repeated one, a bad value: that offer is declined and the
        // next one taken, in the same header or the next.
        (
            vec!["permessage-deflate; x-foo=1, permessage-deflate; server_max_window_bits=12"],
            Some(with_window(12)),
        ),
        (
            vec![
                "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
                "permessage-deflate; server_max_window_bits=11",
            ],
            Some(with_window(11)),
        ),
        (
            vec!["permessage-deflate; server_max_window_bits=16, permessage-deflate"],
            Some(ANSWER.into()),
        ),
        // Two good offers: the first (the client's preference).
        (
            vec!["permessage-deflate; server_max_window_bits=9, permessage-deflate"],
            Some(with_window(9)),
        ),
        // Nothing acceptable, or nothing that parses: no extension, never a refusal.
        (vec!["permessage-deflate; server_max_window_bits"], None),
        (
            vec![r#"permessage-deflate; server_max_window_bits="10"#],
            None,
        ),
        (vec!["x-webkit-deflate-frame"], None),
        (vec![";;,=\"", "permessage deflate"], None),
        (vec![], None),
    ];
    for (offers, expected) in cases {
        let (head, mut ws) = offer(a, &offers).await;
        assert_eq!(extension(&head), expected, "{offers:?}");
        // The connection works either way.
        ws.send(TEXT, br#"{"type":"ping","id":1}"#).await;
        assert_eq!(recv(&mut ws).await.0, json!({"type":"pong","id":1}));
    }

    // compression.enabled = false: never negotiated.
    let off = spawn_app(&[("compression.enabled", "false")]);
    let (head, _) = offer(off.addr, &["permessage-deflate"]).await;
    assert_eq!(extension(&head), None, "{head}");
}

#[tokio::test]
async fn messages_arrive_intact_both_ways_and_short_ones_uncompressed() {
    let s = spawn_app(&[]);
    let mut ws = compressed(s.addr).await;
    // A command compressed in one frame, then one in three fragments: both understood.
    send_compressed(
        &mut ws,
        &json!({"type":"subscribe","id":1,"channel":"c"}),
        1,
    )
    .await;
    let (reply, _) = recv(&mut ws).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let data = records(40);
    send_compressed(
        &mut ws,
        &json!({"type":"publish","id":2,"channel":"c","data":data}),
        3,
    )
    .await;
    let message = recv_type(&mut ws, "message").await;
    assert_eq!(message.v["data"], data);
    assert!(message.rsv1, "a message of several KiB comes compressed");
    // Uncompressed commands still work on a compressed connection.
    ws.send(TEXT, br#"{"type":"ping","id":3}"#).await;
    let pong = recv_type(&mut ws, "pong").await;
    assert_eq!(pong.v["id"], 3);
    assert!(!pong.rsv1, "a short reply is not compressed");

    // Around compression.min_size (256): compressed exactly from 256 bytes of JSON.
    let mut seen = (false, false);
    for n in (100..200).step_by(2) {
        let data = "ab".repeat(n / 2);
        ws.send(
            TEXT,
            json!({"type":"publish","channel":"c","data":data})
                .to_string()
                .as_bytes(),
        )
        .await;
        let message = recv_type(&mut ws, "message").await;
        assert_eq!(message.v["data"], data);
        let (len, rsv1) = (message.len, message.rsv1);
        assert_eq!(rsv1, len >= 256, "a message of {len} bytes");
        seen = (seen.0 || !rsv1, seen.1 || rsv1);
    }
    assert_eq!(seen, (true, true), "both sides of the threshold were tried");

    // A higher threshold keeps even a long message uncompressed.
    let high = spawn_app(&[("compression.min_size", "100000")]);
    let mut ws = compressed(high.addr).await;
    ws.send(TEXT, br#"{"type":"subscribe","id":1,"channel":"c"}"#)
        .await;
    recv_type(&mut ws, "subscribed").await;
    let data = records(40);
    ws.send(
        TEXT,
        json!({"type":"publish","channel":"c","data":data})
            .to_string()
            .as_bytes(),
    )
    .await;
    let message = recv_type(&mut ws, "message").await;
    assert_eq!(message.v["data"], data);
    assert!(!message.rsv1);
}

#[tokio::test]
async fn a_fan_out_is_compressed_once_for_all_compressed_subscribers() {
    const COMPRESSED: usize = 12;
    const PLAIN: usize = 3;
    let s = spawn_app(&[("api.keys", "k")]);
    let mut zs = Vec::new();
    for _ in 0..COMPRESSED {
        let mut ws = compressed(s.addr).await;
        ws.send(TEXT, br#"{"type":"subscribe","id":1,"channel":"fan"}"#)
            .await;
        recv_type(&mut ws, "subscribed").await;
        zs.push(ws);
    }
    let mut plain = Vec::new();
    for _ in 0..PLAIN {
        let mut c = s.client().await;
        c.subscribe("fan").await;
        plain.push(c);
    }
    let metric = |name: &'static str| {
        let s = &s;
        async move { s.metric(name).await as usize }
    };
    let passes = metric("switchboard_compressions_total").await;
    let before = metric("switchboard_ws_bytes_uncompressed_total").await;
    let written = metric("switchboard_ws_bytes_written_total").await;

    let data = records(20);
    let (status, _) = s
        .api(
            "POST",
            "/api/publish",
            "k",
            Some(json!({"channel":"fan","data":data})),
        )
        .await;
    assert_eq!(status, 200);
    let mut forms = Vec::new();
    for ws in &mut zs {
        let (first, payload) = ws.whole_frame().await;
        assert_eq!(first, 0xc1, "FIN, RSV1, text");
        forms.push(payload);
    }
    let mut got = Vec::new();
    for c in &mut plain {
        got.push(c.recv().await);
    }
    // One compressed form, the same bytes for every compressed subscriber, and it inflates
    // to what the others got.
    assert!(forms.iter().all(|f| *f == forms[0]));
    let text = String::from_utf8(inflate(&forms[0])).expect("UTF-8");
    let inflated: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(inflated["data"], data);
    assert!(got.iter().all(|m| *m == inflated));
    assert_eq!(metric("switchboard_compressions_total").await - passes, 1);
    // Bytes counted per delivery: each subscriber's frame, before and after compression.
    let frame = |payload: usize| payload + if payload < 126 { 2 } else { 4 };
    let plain_frame = frame(text.len());
    assert_eq!(
        metric("switchboard_ws_bytes_uncompressed_total").await - before,
        (COMPRESSED + PLAIN) * plain_frame
    );
    assert_eq!(
        metric("switchboard_ws_bytes_written_total").await - written,
        COMPRESSED * frame(forms[0].len()) + PLAIN * plain_frame
    );
    eprintln!(
        "a {}-byte message: {} bytes compressed ({:.1}x)",
        text.len(),
        forms[0].len(),
        text.len() as f64 / forms[0].len() as f64
    );
}

#[tokio::test]
async fn a_narrow_window_is_kept() {
    let s = spawn_app(&[]);
    let (head, mut ws) = offer(s.addr, &["permessage-deflate; server_max_window_bits=9"]).await;
    assert_eq!(
        extension(&head),
        Some(format!("{ANSWER}; server_max_window_bits=9"))
    );
    ws.send(TEXT, br#"{"type":"subscribe","id":1,"channel":"w"}"#)
        .await;
    recv_type(&mut ws, "subscribed").await;
    // Up to 512 bytes compressed, longer ones not: no reference can reach past 2^9 bytes.
    for (n, compressed) in [(300, true), (2000, false)] {
        let data = "xy".repeat(n / 2);
        ws.send(
            TEXT,
            json!({"type":"publish","channel":"w","data":data})
                .to_string()
                .as_bytes(),
        )
        .await;
        let message = recv_type(&mut ws, "message").await;
        assert_eq!(message.v["data"], data);
        assert_eq!(message.rsv1, compressed, "{n}");
    }
}

/// A `publish` command of exactly `len` bytes.
fn publish_of(len: usize) -> String {
    let head = r#"{"type":"publish","channel":"edge","data":""#;
    let tail = r#""}"#;
    format!("{head}{}{tail}", " ".repeat(len - head.len() - tail.len()))
}

#[tokio::test]
async fn the_size_limit_applies_to_the_inflated_message() {
    let s = spawn_app(&[("limits.max_message_size", "1024")]);
    // 1024 bytes inflated is a command; 1025 closes with 1009 (both compress to a few bytes).
    let mut ws = compressed(s.addr).await;
    let text = publish_of(1024);
    ws.send(TEXT | RSV1, &deflate(text.as_bytes())).await;
    let (reply, _) = recv(&mut ws).await;
    assert_eq!(reply["type"], "published", "{reply}");
    let mut ws = compressed(s.addr).await;
    ws.send(TEXT | RSV1, &deflate(publish_of(1025).as_bytes()))
        .await;
    let (texts, code) = ws.until_close().await;
    assert_eq!(code, 1009, "{texts:?}");
}

#[tokio::test]
async fn zip_bombs_close_with_1009_and_cost_the_node_no_memory() {
    // The default limit (64 KiB). 48 MiB of spaces deflate to about 48 KiB, under the limit
    // as received; inflated whole, each would hold 48 MiB.
    const CLIENTS: usize = 24;
    let s = spawn_app(&[]);
    let mut warm = compressed(s.addr).await;
    warm.send(TEXT | RSV1, &deflate(publish_of(60_000).as_bytes()))
        .await;
    assert_eq!(recv(&mut warm).await.0["type"], "published");
    let head = r#"{"type":"publish","channel":"bomb","data":""#;
    let mut bomb = head.as_bytes().to_vec();
    bomb.resize(48 << 20, b' ');
    let bomb = deflate(&bomb);
    assert!(bomb.len() < 64 << 10, "{}", bomb.len());
    let before = s.rss_kib();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let mut ws = compressed(s.addr).await;
        let bomb = bomb.clone();
        tasks.push(tokio::spawn(async move {
            ws.send(TEXT | RSV1, &bomb).await;
            ws.until_close().await.1
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("client"), 1009);
    }
    let after = s.rss_kib();
    eprintln!(
        "{CLIENTS} clients sent {} KiB that inflate to 48 MiB each: node RSS {before} KiB \
         before, {after} KiB after",
        bomb.len() / 1024
    );
    assert!(
        after.saturating_sub(before) < 16 << 10,
        "the node grew from {before} KiB to {after} KiB"
    );
    // Still serving.
    let mut ok = compressed(s.addr).await;
    ok.send(TEXT | RSV1, &deflate(br#"{"type":"ping","id":9}"#))
        .await;
    assert_eq!(recv(&mut ok).await.0, json!({"type":"pong","id":9}));
}

#[tokio::test]
async fn rsv1_where_it_is_not_allowed_is_a_protocol_error() {
    let s = spawn_app(&[]);
    let ping = br#"{"type":"ping","id":1}"#;
    // Not negotiated: RSV1 on a text frame, compressed or not.
    for payload in [deflate(ping), ping.to_vec()] {
        let (head, mut ws) = offer(s.addr, &[]).await;
        assert_eq!(extension(&head), None);
        ws.send(TEXT | RSV1, &payload).await;
        assert_eq!(ws.until_close().await.1, 1002);
    }
    // Negotiated, but: on a control frame, on a continuation frame, RSV2, data that is not
    // deflate.
    let mut fragmented = masked(TEXT | RSV1, false, &deflate(ping)[..3]);
    fragmented.extend(masked(CONTINUE | RSV1, true, &deflate(ping)[3..]));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("RSV1 on a Ping", masked(PING | RSV1, true, b"")),
        ("RSV1 on a continuation", fragmented),
        ("RSV2", masked(TEXT | 0x20, true, ping)),
        (
            "not deflate",
            masked(TEXT | RSV1, true, b"\xff\xff\xff\xff"),
        ),
    ];
    for (what, bytes) in cases {
        let mut ws = compressed(s.addr).await;
        ws.stream.write_all(&bytes).await.expect("write");
        assert_eq!(ws.until_close().await.1, 1002, "{what}");
    }
    // Inflated, but not UTF-8: 1007, as for an uncompressed frame.
    let mut ws = compressed(s.addr).await;
    ws.send(TEXT | RSV1, &deflate(b"\xff\xfe not text")).await;
    assert_eq!(ws.until_close().await.1, 1007);
}

/// Python's `websockets` with its defaults (it offers permessage-deflate, and compresses
/// what it sends): subscribes, publishes realistic JSON twice, and checks what comes back.
const PYTHON_CLIENT: &str = r#"
import asyncio, json, sys
from websockets.asyncio.client import connect

async def main(url, n):
    async with connect(url, subprotocols=["switchboard.v1.json"]) as ws:
        ext = ws.response.headers.get("Sec-WebSocket-Extensions")
        assert json.loads(await ws.recv())["type"] == "welcome"
        await ws.send(json.dumps({"type": "subscribe", "id": 1, "channel": "py"}))
        assert json.loads(await ws.recv())["type"] == "subscribed"
        data = [{"id": i, "user": "user%d" % (i * 7919 % 1000), "score": i * 1.5,
                 "city": ["Lisbon", "Osaka", "Quito"][i % 3]} for i in range(n)]
        for i in range(2):
            await ws.send(json.dumps({"type": "publish", "id": 2 + i, "channel": "py",
                                      "data": data}))
        got = []
        while len(got) < 2:
            m = json.loads(await ws.recv())
            if m["type"] == "message":
                got.append(m["data"])
        assert got == [data, data], "the messages came back changed"
        print(json.dumps({"extension": ext}))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"#;

#[tokio::test]
async fn python_websockets_negotiates_and_round_trips() {
    let s = spawn_app(&[]);
    let url = format!("ws://{}/ws", s.addr);
    let said = common::run_python(PYTHON_CLIENT, &[&url, "60"]).await;
    assert_eq!(said["extension"], ANSWER);
    // Its two messages came back compressed, one deflate pass each.
    assert_eq!(s.metric("switchboard_compressions_total").await, 2.0);
    let uncompressed = s.metric("switchboard_ws_bytes_uncompressed_total").await;
    let written = s.metric("switchboard_ws_bytes_written_total").await;
    assert!(written * 2.0 < uncompressed, "{written} of {uncompressed}");
}
