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
/// replies. With `paced` (the offset that reader has received so far), it never runs more
/// than 100 messages ahead of it, so a reader that keeps reading is never behind by more than
/// ~100 messages.
async fn flood(
    s: &App,
    channel: &str,
    n: usize,
    size: usize,
    mut paced: Option<watch::Receiver<u64>>,
) {
    let mut p = s.client().await;
    let pad = "x".repeat(size);
    for i in 0..n {
        if let Some(seen) = paced.as_mut() {
            let ahead = |seen: &u64| i as u64 <= seen + 100;
            tokio::time::timeout(WAIT, seen.wait_for(ahead))
                .await
                .expect("the paced reader stopped making progress")
                .expect("the paced reader is gone");
        }
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
    flood(&s, "flood", N, SIZE, Some(seen)).await;
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

/// The most the kernel holds for one loopback connection in its send queue, as this
/// machine's TCP autotuning allows (`net.ipv4.tcp_wmem`, third field).
fn tcp_send_buffer_max() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|t| t.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20)
}

#[tokio::test]
async fn shutdown_with_a_stuck_client_reports_not_ready_and_still_exits_in_time() {
    // A stuck client is one whose session cannot get its last frames out: more is queued for
    // it than the kernel will ever take (the server's send queue grows at most to tcp_wmem's
    // maximum, the client's receive buffer is pinned small and never read), so the bytes
    // behind, the 1001 Close among them, stay in the server. The flood is sized from this
    // machine's limit, and the test waits until the node has handed every message to the
    // session, rather than hoping the kernel buffers less than the flood.
    const SIZE: usize = 8192;
    const TIMEOUT: Duration = Duration::from_secs(3);
    let kernel = tcp_send_buffer_max().max(4 << 20);
    let n = (2 * kernel + (4 << 20)) / SIZE;
    let max_pending = (4 * n * SIZE).to_string();
    let mut s = spawn_app(&[
        ("server.shutdown_timeout", "3s"),
        ("limits.max_pending_bytes", &max_pending),
        ("limits.client_publish_rate", "1000000"),
        ("channels.history_size", "1"),
    ]);
    let mut stuck = stalled_client(&s, "stuck").await;
    flood(&s, "stuck", n, SIZE, None).await;
    // The stuck client is the channel's only subscriber: every message was queued for it,
    // far more than its socket holds. The publisher is gone; the stuck client is all that
    // is left, and it was not cut off as slow (the limit is above the flood).
    s.wait_metric("switchboard_deliveries_total", n as f64)
        .await;
    s.wait_metric("switchboard_connections", 1.0).await;
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
    // The client, reading at last, gets what the kernel held (a prefix, in order) and then
    // the end of the connection, never the `disconnect` nor the Close frame: it was stuck.
    let mut expected = 1u64;
    loop {
        match tokio::time::timeout(WAIT, stuck.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["type"], "message", "{v}");
                assert_eq!(v["offset"], expected);
                expected += 1;
            }
            Ok(Some(Ok(Message::Close(f)))) => panic!("the stuck client got a Close: {f:?}"),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_)) | None) => break,
            Err(_) => panic!("the connection did not end after the node exited"),
        }
    }
    eprintln!(
        "exit after {took:?}; the stuck client got {} of {n} messages",
        expected - 1
    );
    assert!((expected as usize) < n, "only a prefix arrived: {expected}");
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
