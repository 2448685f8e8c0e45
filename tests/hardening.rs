//! Hostile bytes on the WebSocket side (issue 11, items 1 and 6), sent over a raw socket
//! (tests/common/raw.rs) because client libraries refuse to send them: a frame header that
//! declares more than `limits.max_message_size` is refused with 1009 as soon as the header
//! arrives (and a fragmented message as soon as its running total would pass the limit),
//! so memory is bounded from the first byte; and the opening handshake is checked as
//! strictly as RFC 6455 reads. Each edge is tried on both sides: the last allowed and the
//! first refused, with the node still serving a well-behaved client afterwards.

mod common;

use common::raw::{header, masked, upgrade_request, RawWs, CONTINUE, TEXT};
use common::spawn_app;
use serde_json::json;
use tokio::io::AsyncWriteExt;

/// A `publish` command of exactly `len` bytes.
fn publish_of(len: usize) -> String {
    let head = r#"{"type":"publish","channel":"edge","data":""#;
    let tail = r#""}"#;
    format!("{head}{}{tail}", "y".repeat(len - head.len() - tail.len()))
}

#[tokio::test]
async fn a_frame_declared_over_the_limit_is_refused_at_its_header() {
    let s = spawn_app(&[("limits.max_message_size", "1024")]);

    // The last allowed: the header declares 1024, the payload follows later.
    let mut c = RawWs::connect(s.addr, "").await;
    let text = publish_of(1024);
    let mut frame = masked(TEXT, true, text.as_bytes());
    let payload = frame.split_off(header(TEXT, true, 1024).len());
    c.stream.write_all(&frame).await.expect("write");
    c.stream.write_all(&payload).await.expect("write");
    let reply = c.text().await;
    assert!(reply.contains(r#""type":"published""#), "{reply}");

    // The first refused, and far past it: the header alone gets 1009, no payload is sent
    // (the node must not wait for it).
    for declared in [1025, u32::MAX as u64, 1 << 62] {
        let mut c = RawWs::connect(s.addr, "").await;
        c.stream
            .write_all(&header(TEXT, true, declared))
            .await
            .expect("write");
        let (texts, code) = c.until_close().await;
        assert_eq!(code, 1009, "declared {declared}: {texts:?}");
    }

    // A fragmented message is limited as a whole, at the header of the fragment that would
    // pass the limit: 600 + 424 bytes is a command, 600 + 425 is refused unsent.
    let mut c = RawWs::connect(s.addr, "").await;
    let (first, rest) = text.split_at(600);
    c.stream
        .write_all(&masked(TEXT, false, first.as_bytes()))
        .await
        .expect("write");
    c.stream
        .write_all(&masked(CONTINUE, true, rest.as_bytes()))
        .await
        .expect("write");
    let reply = c.text().await;
    assert!(reply.contains(r#""type":"published""#), "{reply}");
    let mut c = RawWs::connect(s.addr, "").await;
    c.stream
        .write_all(&masked(TEXT, false, &[b' '; 600]))
        .await
        .expect("write");
    c.stream
        .write_all(&header(CONTINUE, true, 425))
        .await
        .expect("write");
    let (_, code) = c.until_close().await;
    assert_eq!(code, 1009);

    let mut ok = s.client().await;
    ok.subscribe("edge").await;
}

#[tokio::test]
async fn clients_streaming_a_frame_that_never_ends_cost_the_node_no_memory() {
    // The default limit (64 KiB). Before the fix each of these connections held everything
    // it sent: 32 x 4 MiB here.
    const CLIENTS: usize = 32;
    const STREAMED: usize = 4 << 20;
    let s = spawn_app(&[]);
    let mut warm = s.client().await;
    warm.subscribe("warm").await;
    let before = s.rss_kib();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let c = RawWs::connect(s.addr, "").await;
        tasks.push(tokio::spawn(async move {
            let RawWs { stream, buf } = c;
            let (read, mut write) = stream.into_split();
            // The node closes the connection long before this ends: writes then fail.
            let writer = tokio::spawn(async move {
                let _ = write.write_all(&header(TEXT, true, 1 << 62)).await;
                let zeros = vec![0u8; 64 << 10];
                let mut sent = 0;
                while sent < STREAMED {
                    if write.write_all(&zeros).await.is_err() {
                        break;
                    }
                    sent += zeros.len();
                }
                sent
            });
            let mut c = RawWs { stream: read, buf };
            let (_, code) = c.until_close().await;
            (code, writer.await.unwrap_or(0))
        }));
    }
    let mut sent = 0;
    for t in tasks {
        let (code, n) = t.await.expect("client task");
        assert_eq!(code, 1009);
        sent += n;
    }
    let after = s.rss_kib();
    eprintln!(
        "{CLIENTS} clients declared 2^62-byte frames and sent {} KiB in all: node RSS {before} KiB \
         before, {after} KiB after",
        sent / 1024
    );
    assert!(
        after.saturating_sub(before) < 16 << 10,
        "the node grew from {before} KiB to {after} KiB"
    );
    let mut ok = s.client().await;
    ok.subscribe("after").await;
    let r = ok
        .call(json!({"type":"publish","id":7,"channel":"after","data":1}))
        .await;
    assert_eq!(r["type"], "published", "{r}");
}

/// The response head to an upgrade request built from [`upgrade_request`] with `edit`.
async fn handshake(addr: std::net::SocketAddr, edit: impl Fn(String) -> String) -> String {
    RawWs::request(addr, &edit(upgrade_request(addr, "")))
        .await
        .0
}

#[tokio::test]
async fn the_handshake_is_as_strict_as_rfc_6455() {
    let s = spawn_app(&[]);
    let a = s.addr;
    let ok = handshake(a, |r| r).await;
    assert!(ok.starts_with("HTTP/1.1 101"), "{ok}");

    // A version other than 13: 426, naming the one we speak.
    for version in ["8", "7", "14"] {
        let head = handshake(a, |r| {
            r.replace(
                "Sec-WebSocket-Version: 13",
                &format!("Sec-WebSocket-Version: {version}"),
            )
        })
        .await;
        assert!(head.starts_with("HTTP/1.1 426"), "{version}: {head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-version: 13\r\n"),
            "{head}"
        );
    }

    // A key that is not 16 bytes of base64: 3, 15 and 17 bytes, not base64 at all. The
    // same nonce as a 16-byte key is accepted (above).
    for key in [
        "YWJj",
        "dGhlIHNhbXBsZSBub25j",
        "dGhlIHNhbXBsZSBub25jZXM=",
        "not base64 at all!!!!!==",
    ] {
        let head = handshake(a, |r| {
            r.replace(
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                &format!("Sec-WebSocket-Key: {key}"),
            )
        })
        .await;
        assert!(head.starts_with("HTTP/1.1 400"), "{key}: {head}");
    }

    // HTTP/1.0 has no Upgrade: 400.
    let head = handshake(a, |r| r.replacen("HTTP/1.1", "HTTP/1.0", 1)).await;
    assert!(head.contains(" 400 "), "{head}");

    let metrics = s.metrics().await;
    assert_eq!(
        metrics.get(r#"switchboard_handshakes_refused_total{status="426"}"#),
        Some(&3.0),
        "{metrics:?}"
    );
    let mut c = s.client().await;
    c.subscribe("still").await;
}

#[tokio::test]
async fn a_client_that_stops_reading_loses_its_connection_within_the_heartbeat_timeout() {
    // The session of a client that reads nothing is decided slow (4001), but it runs only
    // while its output can be written: without a bound on a stalled write, the connection
    // and up to `limits.max_pending_bytes` of output stayed for as long as the client kept
    // it open. TCP_USER_TIMEOUT (= heartbeat.timeout) now ends it.
    const KEY: &str = "k-stall";
    let s = spawn_app(&[
        ("api.keys", KEY),
        ("heartbeat.interval", "1s"),
        ("heartbeat.timeout", "2s"),
        ("limits.max_message_size", "8192"),
        ("limits.max_pending_bytes", "8192"),
    ]);
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stream = socket.connect(s.addr).await.expect("connect");
    // The upgrade and a subscribe in one write; nothing is ever read.
    let mut hello = upgrade_request(s.addr, "").into_bytes();
    hello.extend(masked(
        TEXT,
        true,
        br#"{"type":"subscribe","channel":"stalled"}"#,
    ));
    stream.write_all(&hello).await.expect("write");
    let listed = |v: &serde_json::Value| v.to_string().contains("\"stalled\"");
    let deadline = std::time::Instant::now() + common::WAIT;
    while !listed(&s.api("GET", "/api/channels", KEY, None).await.1) {
        assert!(std::time::Instant::now() < deadline, "never subscribed");
        tokio::task::yield_now().await;
    }
    let data = "x".repeat(4000);
    let mut published = 0;
    while s.metric("switchboard_slow_consumers_total").await < 1.0 {
        assert!(published < 10_000, "never a slow consumer");
        for _ in 0..16 {
            let body = json!({"channel":"stalled","data":data});
            let (status, r) = s.api("POST", "/api/publish", KEY, Some(body)).await;
            assert_eq!(status, 200, "{r}");
            published += 1;
        }
    }
    s.wait_metric("switchboard_connections", 0.0).await;
    eprintln!("{published} publications of 4 KB to a client that reads nothing: closed");
    drop(stream);
    let mut ok = s.client().await;
    ok.subscribe("after").await;
}
