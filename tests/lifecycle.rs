//! Connection lifecycle against the real binary: heartbeat expiry, slow consumers (with the
//! server's memory watched), graceful shutdown on SIGTERM, and refusal of bad configuration.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, spawn_app, try_spawn_app, App, Client, Event, WAIT};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "lifecycle-key";
const DISCONNECTS_4000: &str = r#"switchboard_disconnects_total{code="4000"}"#;

#[tokio::test]
async fn silent_client_is_closed_4000_and_removed() {
    let s = spawn_app(&[
        ("heartbeat.interval", "100ms"),
        ("heartbeat.timeout", "300ms"),
        ("api.keys", KEY),
    ]);
    let mut silent = s.client().await;
    silent.subscribe("hb").await;
    let id = silent.id();
    let (_, p) = s.api("GET", "/api/presence/hb", KEY, None).await;
    assert_eq!(p["clients"][0]["client"], id.as_str());
    // The client reads nothing, so it answers no Ping: the server gives up on it, with 4000.
    s.wait_metric(DISCONNECTS_4000, 1.0).await;
    eventually("removed from presence", || async {
        let (_, p) = s.api("GET", "/api/presence/hb", KEY, None).await;
        (p["clients"] == json!([])).then_some(())
    })
    .await;
    eventually("removed from its channels", || async {
        let (_, ch) = s.api("GET", "/api/channels", KEY, None).await;
        (ch["channels"] == json!([])).then_some(())
    })
    .await;
    assert_eq!(s.metric("switchboard_connections").await, 0.0);
    silent.expect_disconnect(4000).await;
}

#[tokio::test]
async fn client_that_answers_pings_stays() {
    // The timeout leaves the test client room to be late on a busy machine; the client
    // stays over many of them.
    let s = spawn_app(&[
        ("heartbeat.interval", "100ms"),
        ("heartbeat.timeout", "500ms"),
    ]);
    let mut c = s.client().await;
    // Reading lets the client answer every Ping: 30 Pings (six timeouts) later it is still
    // connected, and was never told to go.
    let started = Instant::now();
    let mut pings = 0;
    while pings < 30 {
        match tokio::time::timeout(WAIT, c.ws.next()).await {
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            other => panic!("only Pings expected, got {other:?}"),
        }
    }
    assert!(
        started.elapsed() >= Duration::from_millis(2900),
        "a Ping every interval, not faster: {:?}",
        started.elapsed()
    );
    assert_eq!(c.call(json!({"type":"ping"})).await["type"], "pong");
    assert_eq!(s.metric(DISCONNECTS_4000).await, 0.0);
    assert_eq!(s.metric("switchboard_connections").await, 1.0);
}

/// A client whose socket has a small receive buffer and that does not read.
async fn stalled_client(s: &App, channel: &str) -> common::Ws {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(s.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(
        s.ws_url(),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    assert_eq!(next_text(&mut ws).await["type"], "welcome");
    ws.send(Message::text(
        json!({"type":"subscribe","channel":channel}).to_string(),
    ))
    .await
    .unwrap();
    let r = next_text(&mut ws).await;
    assert_eq!(r["type"], "subscribed", "{r}");
    ws
}

/// The next text frame of a raw WebSocket, as JSON.
async fn next_text(ws: &mut common::Ws) -> Value {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(&t).unwrap(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Publishes `n` messages of `size` bytes from a WebSocket publisher and waits for the
/// replies, never running more than 100 messages ahead of what a reader has received
/// (`seen`: the last offset it got), so a reader that keeps reading is never behind by more
/// than ~100 messages.
async fn flood(s: &App, channel: &str, n: usize, size: usize, mut seen: watch::Receiver<u64>) {
    let mut p = s.client().await;
    let pad = "x".repeat(size);
    for i in 0..n {
        let ahead = |seen: &u64| i as u64 <= seen + 100;
        tokio::time::timeout(WAIT, seen.wait_for(ahead))
            .await
            .expect("the reader stopped making progress")
            .expect("the reader is gone");
        p.send(json!({"type":"publish","channel":channel,"data":{"i":i,"pad":pad}}))
            .await;
    }
    for _ in 0..n {
        assert_eq!(p.recv().await["type"], "published");
    }
    p.close().await;
}

#[tokio::test]
async fn slow_consumer_is_cut_off_and_others_get_everything() {
    const N: usize = 3000;
    const SIZE: usize = 8192;
    let s = spawn_app(&[
        ("limits.max_pending_bytes", "4194304"),
        ("limits.client_publish_rate", "1000000"),
        ("channels.history_size", "10"),
    ]);
    let mut slow = stalled_client(&s, "flood").await;
    let mut fast = s.client().await;
    fast.subscribe("flood").await;
    let (progress, seen) = watch::channel(0u64);
    let reader = tokio::spawn(async move {
        let mut next = 1u64;
        while next <= N as u64 {
            let m = fast.recv().await;
            assert_eq!(m["offset"], next, "fast subscriber: in order, no gap");
            progress.send_replace(next);
            next += 1;
        }
        next - 1
    });
    let rss_before = s.rss_kib();
    flood(&s, "flood", N, SIZE, seen).await;
    // The slow client is cut off (it is the only one that stopped reading).
    s.wait_metric("switchboard_slow_consumers_total", 1.0).await;
    assert_eq!(reader.await.unwrap(), N as u64);
    let rss_after = s.rss_kib();
    // ~24 MiB went out; only what the kernel and the outbox hold for the slow client may stay.
    let growth_mib = rss_after.saturating_sub(rss_before) / 1024;
    eprintln!("server RSS before {rss_before} KiB, after {rss_after} KiB");
    assert!(growth_mib < 16, "server memory grew by {growth_mib} MiB");
    // The slow client, reading again, gets a prefix in order and then the 4001 close.
    let mut expected = 1u64;
    loop {
        let v = next_text(&mut slow).await;
        if v["type"] == "disconnect" {
            assert_eq!(
                v,
                json!({"type":"disconnect","code":4001,"reason":"slow_consumer","reconnect":true})
            );
            break;
        }
        assert_eq!(v["offset"], expected);
        expected += 1;
    }
    assert!(
        expected > 1 && expected < N as u64,
        "a prefix arrived: {expected}"
    );
    match tokio::time::timeout(WAIT, slow.next()).await {
        Ok(Some(Ok(Message::Close(Some(f))))) => assert_eq!(u16::from(f.code), 4001),
        other => panic!("expected Close 4001, got {other:?}"),
    }
    let (_, metrics) = s.http("GET", "/metrics", &[], None).await;
    assert!(
        metrics.contains("switchboard_slow_consumers_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let mut s = spawn_app(&[("server.shutdown_timeout", "5s")]);
    let mut a = s.client().await;
    a.subscribe("x").await;
    let mut b = s.client().await;
    s.signal("TERM");
    // SIGTERM is what drains: every session is told `shutdown` and closed with 1001.
    for c in [&mut a, &mut b] {
        let d = c.recv_type("disconnect").await;
        assert_eq!(
            d,
            json!({"type":"disconnect","code":1001,"reason":"shutdown","reconnect":true})
        );
        match c.next().await {
            Event::Closed(code) => assert_eq!(code, Some(1001)),
            Event::Frame(v) => panic!("frame after disconnect: {v}"),
        }
    }
    assert_eq!(s.wait_exit(Duration::from_secs(10)).await, Some(0));
}

/// The most the kernel holds in one TCP connection's send queue, as this machine's
/// autotuning allows (`net.ipv4.tcp_wmem`, third field).
fn tcp_send_buffer_max() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|t| t.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20)
}

/// Waits until at least `n` bytes wait unread in the client's socket, and returns them
/// (peeked: still unread).
async fn unread_bytes(ws: &common::Ws, n: usize) -> Vec<u8> {
    let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = ws.get_ref() else {
        panic!("a plain TCP client");
    };
    let mut buf = vec![0u8; n];
    let deadline = Instant::now() + WAIT;
    loop {
        let got = tokio::time::timeout(WAIT, tcp.peek(&mut buf))
            .await
            .expect("bytes arrive")
            .expect("peek");
        if got >= n {
            return buf;
        }
        assert!(Instant::now() < deadline, "only {got} bytes arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn shutdown_with_a_stuck_client_reports_not_ready_and_still_exits_in_time() {
    // A stuck client is one the node cannot close: its session has more unsent bytes in
    // hand than the kernel will ever take for a client that does not read (the server's
    // send queue grows at most to tcp_wmem's maximum; the client's receive buffer is pinned
    // small). That is made certain, not left to how much the kernel buffers: the client is
    // sent one message larger than all of that together, and a message leaves the session's
    // queue whole, so once its first bytes reach the client the rest of it sits in the
    // connection's write buffer, in front of anything the session writes later (its
    // `disconnect` and Close among them).
    const TIMEOUT: Duration = Duration::from_secs(3);
    let size = 2 * tcp_send_buffer_max().max(4 << 20) + (4 << 20);
    let max_message = (size + 4096).to_string();
    let max_pending = (2 * size + 8192).to_string();
    let mut s = spawn_app(&[
        ("server.shutdown_timeout", "3s"),
        ("limits.max_message_size", &max_message),
        ("limits.max_pending_bytes", &max_pending),
        ("channels.history_size", "1"),
        ("api.keys", KEY),
        // No Pings on the stuck connection: the message is the next thing it gets.
        ("heartbeat.interval", "1h"),
        ("heartbeat.timeout", "2h"),
    ]);
    let mut stuck = stalled_client(&s, "stuck").await;
    let (status, r) = s
        .api(
            "POST",
            "/api/publish",
            KEY,
            Some(json!({"channel":"stuck","data":"x".repeat(size)})),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    // The message has begun to arrive: a text frame (0x81) with a 64-bit length (127).
    let head = unread_bytes(&stuck, 2).await;
    assert_eq!(head, [0x81, 0x7f], "the big message's frame header");
    assert_eq!(s.metric("switchboard_connections").await, 1.0);
    assert_eq!(s.metric("switchboard_slow_consumers_total").await, 0.0);

    let started = Instant::now();
    s.signal("INT");
    // Draining: not ready, and new handshakes are refused.
    s.wait_ready(503).await;
    let refused = Client::try_connect(&s.ws_url(), &[])
        .await
        .err()
        .expect("refused while draining");
    assert!(refused.to_string().contains("503"), "{refused}");
    // The stuck session never closes, so the node waits for it the whole shutdown_timeout
    // (it cannot have exited sooner) and then exits anyway, cleanly and in time.
    assert_eq!(s.wait_exit(Duration::from_secs(15)).await, Some(0));
    let took = started.elapsed();
    assert!(
        took >= TIMEOUT,
        "exited after {took:?}: the stuck session closed before shutdown_timeout\n{}",
        s.log()
    );
    assert!(took < Duration::from_secs(12), "{took:?}");
    // The client, reading at last, gets what the kernel held (part of the message) and
    // then the end of the connection: never the whole message, nor a `disconnect` or a
    // Close frame.
    match tokio::time::timeout(WAIT, stuck.next()).await {
        Ok(Some(Err(_)) | None) => {}
        Ok(Some(Ok(m))) => panic!("the stuck client got a whole frame: {:.80}", m.to_string()),
        Err(_) => panic!("the connection did not end after the node exited"),
    }
}

fn start_fails(args: &[&str], env: &[(&str, &str)]) -> String {
    match try_spawn_app(args, env) {
        Ok(_) => panic!("server started with a bad configuration {args:?} {env:?}"),
        Err((code, log)) => {
            assert_eq!(code, Some(2), "exit code for {args:?} {env:?}: {log}");
            log
        }
    }
}

#[tokio::test]
async fn bad_configuration_exits_2_naming_the_key() {
    let log = start_fails(&[], &[("limits.max_bananas", "3")]);
    assert!(log.contains("max_bananas"), "{log}");
    let log = start_fails(&[], &[("heartbeat.timeout", "soonish")]);
    assert!(log.contains("timeout"), "{log}");
    let log = start_fails(&[], &[("limits.max_errors", "many")]);
    assert!(log.contains("max_errors"), "{log}");
    let log = start_fails(
        &[],
        &[("heartbeat.interval", "10s"), ("heartbeat.timeout", "5s")],
    );
    assert!(log.contains("heartbeat.timeout"), "{log}");
    let log = start_fails(
        &[],
        &[(
            "auth.public_key_pem",
            "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----",
        )],
    );
    assert!(log.contains("auth.public_key_pem"), "{log}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[server]\nbind = \"127.0.0.1:0\"\nwrokers = 2\n").unwrap();
    let log = start_fails(&["--config", file.to_str().unwrap()], &[]);
    assert!(log.contains("wrokers"), "{log}");
    std::fs::write(&file, "[server\nbind = ").unwrap();
    let log = start_fails(&["--config", file.to_str().unwrap()], &[]);
    assert!(log.contains("configuration error"), "{log}");
    let log = start_fails(&["--config", "/nonexistent/switchboard.toml"], &[]);
    assert!(log.contains("does not exist"), "{log}");
    // A good file is taken, and the environment wins over it.
    std::fs::write(
        &file,
        "[server]\nnode_id = \"from-file\"\n[heartbeat]\ninterval = \"3s\"\n",
    )
    .unwrap();
    let s = try_spawn_app(
        &["--config", file.to_str().unwrap()],
        &[("heartbeat.interval", "4s")],
    )
    .expect("starts");
    let c = s.client().await;
    assert_eq!(c.welcome["node"], "from-file");
    assert_eq!(c.welcome["heartbeat_ms"], 4000);
}
