//! Connection lifecycle against the real binary: heartbeat expiry, slow consumers (with the
//! server's memory watched), graceful shutdown on SIGTERM, and refusal of bad configuration.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Client, Server};
use futures_util::StreamExt;
use serde_json::json;

const KEY: &str = "lifecycle-key";

#[tokio::test]
async fn silent_client_is_closed_4000_and_removed() {
    let s = Server::start(&[
        ("SWITCHBOARD__HEARTBEAT__INTERVAL", "100ms"),
        ("SWITCHBOARD__HEARTBEAT__TIMEOUT", "300ms"),
        ("SWITCHBOARD__API__KEYS", KEY),
    ]);
    let mut silent = s.client().await;
    silent.subscribe("hb").await;
    let id = silent.id();
    let (_, p) = s.api("GET", "/api/presence/hb", KEY, None).await;
    assert_eq!(p["clients"][0]["client"], id.as_str());
    // The client reads nothing, so it answers no Ping: the server gives up on it.
    s.wait_log(&["connection closed", &id, "code=4000"]).await;
    let (_, p) = s.api("GET", "/api/presence/hb", KEY, None).await;
    assert_eq!(p["clients"], json!([]), "removed from presence");
    let (_, ch) = s.api("GET", "/api/channels", KEY, None).await;
    assert_eq!(ch["channels"], json!([]), "removed from its channels");
    silent.expect_disconnect(4000).await;
}

#[tokio::test]
async fn client_that_answers_pings_stays() {
    let s = Server::start(&[
        ("SWITCHBOARD__HEARTBEAT__INTERVAL", "100ms"),
        ("SWITCHBOARD__HEARTBEAT__TIMEOUT", "300ms"),
    ]);
    let mut c = s.client().await;
    // Reading lets the client answer every Ping; ten timeouts later it is still connected.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut pings = 0;
    while let Ok(msg) = tokio::time::timeout_at(deadline, c.ws.next()).await {
        match msg {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Ping(_))) => pings += 1,
            other => panic!("only Pings expected, got {other:?}"),
        }
    }
    assert!(pings >= 5, "a Ping every interval: {pings}");
    assert_eq!(c.call(json!({"type":"ping"})).await["type"], "pong");
    assert!(!s.log().contains("code=4000"));
}

/// A client whose socket has a small receive buffer and that does not read.
async fn stalled_client(s: &Server, channel: &str) -> (common::Ws, String) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(s.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(
        s.ws_url(),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    use futures_util::SinkExt;
    let welcome = ws.next().await.unwrap().unwrap();
    let welcome: serde_json::Value = serde_json::from_str(welcome.to_text().unwrap()).unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        json!({"type":"subscribe","channel":channel}).to_string(),
    ))
    .await
    .unwrap();
    let r = ws.next().await.unwrap().unwrap();
    assert!(r.to_text().unwrap().contains("subscribed"));
    (ws, welcome["client"].as_str().unwrap().to_string())
}

/// Publishes `n` messages of `size` bytes from a WebSocket publisher and waits for the
/// replies. With `paced`, it never runs more than 100 messages ahead of what that reader has
/// received, so a reader that keeps reading is never behind by more than ~100 messages.
async fn flood(s: &Server, channel: &str, n: usize, size: usize, paced: Option<&AtomicU64>) {
    let mut p = s.client().await;
    let pad = "x".repeat(size);
    for i in 0..n {
        if let Some(seen) = paced {
            while (i as u64) > seen.load(Ordering::Acquire) + 100 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        p.send(json!({"type":"publish","channel":channel,"data":{"i":i,"pad":pad}}))
            .await;
    }
    for _ in 0..n {
        assert_eq!(p.recv().await["type"], "published");
    }
}

#[tokio::test]
async fn slow_consumer_is_cut_off_and_others_get_everything() {
    const N: usize = 3000;
    const SIZE: usize = 8192;
    let s = Server::start(&[
        ("SWITCHBOARD__LIMITS__MAX_PENDING_BYTES", "4194304"),
        ("SWITCHBOARD__LIMITS__CLIENT_PUBLISH_RATE", "1000000"),
        ("SWITCHBOARD__CHANNELS__HISTORY_SIZE", "10"),
    ]);
    let (mut slow, slow_id) = stalled_client(&s, "flood").await;
    let mut fast = s.client().await;
    fast.subscribe("flood").await;
    let seen = Arc::new(AtomicU64::new(0));
    let progress = seen.clone();
    let reader = tokio::spawn(async move {
        let mut next = 1u64;
        while next <= N as u64 {
            let m = fast.recv().await;
            assert_eq!(m["offset"], next, "fast subscriber: in order, no gap");
            progress.store(next, Ordering::Release);
            next += 1;
        }
        next - 1
    });
    let rss_before = s.rss_kib();
    flood(&s, "flood", N, SIZE, Some(&seen)).await;
    s.wait_log(&["slow consumer", &slow_id]).await;
    assert_eq!(reader.await.unwrap(), N as u64);
    let rss_after = s.rss_kib();
    // ~24 MiB went out; only what the kernel and the outbox hold for the slow client may stay.
    let growth_mib = rss_after.saturating_sub(rss_before) / 1024;
    eprintln!("server RSS before {rss_before} KiB, after {rss_after} KiB");
    assert!(growth_mib < 16, "server memory grew by {growth_mib} MiB");
    // The slow client, reading again, gets a prefix in order and then the 4001 close.
    let mut expected = 1u64;
    loop {
        match slow.next().await {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
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
            Some(Ok(_)) => continue,
            other => panic!("unexpected end {other:?}"),
        }
    }
    assert!(
        expected > 1 && expected < N as u64,
        "a prefix arrived: {expected}"
    );
    match slow.next().await {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(f)))) => {
            assert_eq!(u16::from(f.code), 4001)
        }
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
    let mut s = Server::start(&[("SWITCHBOARD__SERVER__SHUTDOWN_TIMEOUT", "5s")]);
    let mut a = s.client().await;
    a.subscribe("x").await;
    let mut b = s.client().await;
    s.signal("TERM");
    a.expect_disconnect(1001).await;
    b.expect_disconnect(1001).await;
    assert_eq!(s.wait_exit(Duration::from_secs(10)).await, Some(0));
    assert!(s.log().contains("SIGTERM received"));
}

#[tokio::test]
async fn shutdown_with_a_stuck_client_reports_not_ready_and_still_exits_in_time() {
    let mut s = Server::start(&[
        ("SWITCHBOARD__SERVER__SHUTDOWN_TIMEOUT", "2s"),
        ("SWITCHBOARD__LIMITS__MAX_PENDING_BYTES", "67108864"),
        ("SWITCHBOARD__LIMITS__CLIENT_PUBLISH_RATE", "1000000"),
        ("SWITCHBOARD__CHANNELS__HISTORY_SIZE", "1"),
    ]);
    let (_stuck, _) = stalled_client(&s, "stuck").await;
    flood(&s, "stuck", 1500, 8192, None).await;
    let started = std::time::Instant::now();
    s.signal("INT");
    s.wait_log(&["draining"]).await;
    let (status, body) = s.http("GET", "/readyz", &[], None).await;
    assert_eq!(status, 503, "{body}");
    let refused = Client::try_connect(&s.ws_url(), &[])
        .await
        .err()
        .expect("refused while draining");
    assert!(refused.to_string().contains("503"), "{refused}");
    assert_eq!(s.wait_exit(Duration::from_secs(15)).await, Some(0));
    assert!(started.elapsed() < Duration::from_secs(12));
    assert!(
        s.log()
            .contains("shutdown timeout with 1 sessions still open"),
        "{}",
        s.log()
    );
}

fn start_fails(args: &[&str], env: &[(&str, &str)]) -> String {
    match Server::try_start_with(args, env) {
        Ok(_) => panic!("server started with a bad configuration {args:?} {env:?}"),
        Err((code, log)) => {
            assert_eq!(code, Some(2), "exit code for {args:?} {env:?}: {log}");
            log
        }
    }
}

#[tokio::test]
async fn bad_configuration_exits_2_naming_the_key() {
    let log = start_fails(&[], &[("SWITCHBOARD__LIMITS__MAX_BANANAS", "3")]);
    assert!(log.contains("max_bananas"), "{log}");
    let log = start_fails(&[], &[("SWITCHBOARD__HEARTBEAT__TIMEOUT", "soonish")]);
    assert!(log.contains("timeout"), "{log}");
    let log = start_fails(&[], &[("SWITCHBOARD__LIMITS__MAX_ERRORS", "many")]);
    assert!(log.contains("max_errors"), "{log}");
    let log = start_fails(
        &[],
        &[
            ("SWITCHBOARD__HEARTBEAT__INTERVAL", "10s"),
            ("SWITCHBOARD__HEARTBEAT__TIMEOUT", "5s"),
        ],
    );
    assert!(log.contains("heartbeat.timeout"), "{log}");
    let log = start_fails(
        &[],
        &[(
            "SWITCHBOARD__AUTH__PUBLIC_KEY_PEM",
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
    let s = Server::try_start_with(
        &["--config", file.to_str().unwrap()],
        &[("SWITCHBOARD__HEARTBEAT__INTERVAL", "4s")],
    )
    .expect("starts");
    let c = s.client().await;
    assert_eq!(c.welcome["node"], "from-file");
    assert_eq!(c.welcome["heartbeat_ms"], 4000);
}
