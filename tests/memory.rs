//! Memory given back after a burst (issue 11, item 7): a node that held 100,000
//! subscriptions goes back to at most twice its resident memory from before the burst within
//! a minute of them closing, and still serves a client afterwards. Before the fix a node
//! kept most of its peak for good (here 114 MiB of a 130 MiB peak a minute after, from
//! 20 MiB): the maps kept their capacity, jemalloc purged freed pages only when the same
//! arena allocated again, and each thread's allocator cache was emptied only by that thread
//! allocating, none of which an idle node does. The node now takes 7 to 10 s.
//!
//! Also: the allocator settings that make this happen are compiled into the binary, and an
//! operator's `_RJEM_MALLOC_CONF` overrides them key by key.

mod common;

use std::time::{Duration, Instant};

use common::app::run_with_env;
use common::{spawn_app, App, Client, WAIT};
use futures_util::{stream, SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// Connections in the burst, each with [`PER_CONNECTION`] subscriptions (the default
/// `limits.max_subscriptions_per_connection` is 256).
const CONNECTIONS: usize = 400;
const PER_CONNECTION: usize = 250;
/// How many of each connection's subscriptions go to channels every connection shares (each
/// then has [`CONNECTIONS`] subscribers); the others go to channels of its own.
const SHARED: usize = 50;
/// How long the node has to give the memory back once the burst has closed.
const SETTLE: Duration = Duration::from_secs(60);

/// One connection of the burst: subscribes to its channels in one batch, and returns once
/// every `subscribed` has come back.
async fn subscriber(app: &App, n: usize) -> Client {
    let mut c = app.client().await;
    for i in 0..PER_CONNECTION {
        let channel = if i < SHARED {
            format!("shared-{i}")
        } else {
            format!("own-{n}-{i}")
        };
        let cmd = json!({"type": "subscribe", "id": i, "channel": channel});
        c.ws.feed(Message::text(cmd.to_string()))
            .await
            .expect("send");
    }
    c.ws.flush().await.expect("flush");
    // Read as text, not parsed: 100,000 replies parsed by an unoptimised test build took
    // longer than the node took to answer them.
    let mut left = PER_CONNECTION;
    while left > 0 {
        match tokio::time::timeout(WAIT, c.ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.starts_with(r#"{"type":"subscribed""#) => left -= 1,
            Ok(Some(Ok(Message::Ping(_)))) => {}
            other => panic!("connection {n}: {other:?} with {left} subscriptions unanswered"),
        }
    }
    c
}

/// A client that subscribes, publishes and receives its publication on `channel`.
async fn round_trip(app: &App, channel: &str) {
    let mut c = app.client().await;
    c.subscribe(channel).await;
    let data = json!({"n": 1});
    let cmd = json!({"type": "publish", "id": 9, "channel": channel, "data": data});
    c.send(cmd).await;
    // The reply and the publication come in either order (live messages are not ordered
    // with replies).
    let (mut published, mut received) = (false, false);
    while !(published && received) {
        let frame = c.recv().await;
        match frame["type"].as_str() {
            Some("published") => published = true,
            Some("message") if frame["data"] == data => received = true,
            _ => panic!("unexpected {frame}"),
        }
    }
    c.close().await;
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[tokio::test]
async fn a_burst_of_subscriptions_gives_its_memory_back() {
    let app = spawn_app(&[]);
    // The baseline is a node that has served one client, as any node in service has.
    round_trip(&app, "warm-up").await;
    app.wait_metric("switchboard_connections", 0.0).await;
    let baseline = app.rss_kib();
    assert!(baseline > 0, "no VmRSS for the node");

    let started = Instant::now();
    let clients: Vec<Client> = stream::iter(0..CONNECTIONS)
        .map(|n| subscriber(&app, n))
        // Not all 400 at once: this test's one thread cannot poll 400 handshakes while it
        // feeds and reads 100,000 commands, and on a busy machine a connection whose request
        // was not sent within actix's 5 s got 408.
        .buffer_unordered(32)
        .collect()
        .await;
    let total = (CONNECTIONS * PER_CONNECTION) as f64;
    app.wait_metric("switchboard_subscriptions", total).await;
    let burst = started.elapsed();
    let peak = app.rss_kib();
    // A peak that is not well above the baseline would prove nothing.
    assert!(
        peak > 4 * baseline,
        "peak {} too close to baseline {}",
        mib(peak),
        mib(baseline)
    );

    let started = Instant::now();
    stream::iter(clients)
        .for_each_concurrent(32, |c| c.close())
        .await;
    app.wait_metric("switchboard_connections", 0.0).await;
    app.wait_metric("switchboard_subscriptions", 0.0).await;
    app.wait_metric("switchboard_channels", 0.0).await;
    let closed = Instant::now();
    let close = closed - started;

    // Polled: the allocator returns pages over its decay time, in steps.
    let mut rss = app.rss_kib();
    let mut samples = vec![(Duration::ZERO, rss)];
    while rss > 2 * baseline {
        assert!(
            closed.elapsed() < SETTLE,
            "RSS still {} (baseline {}, peak {}) {SETTLE:?} after {} subscriptions closed; \
             samples (s after close, KiB): {samples:?}",
            mib(rss),
            mib(baseline),
            mib(peak),
            total
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        rss = app.rss_kib();
        if samples.last().is_some_and(|&(_, last)| last != rss) {
            samples.push((closed.elapsed(), rss));
        }
    }
    let settled = closed.elapsed();
    eprintln!(
        "memory: baseline {}; {total} subscriptions on {CONNECTIONS} connections in {burst:.1?}, \
         peak {}; closed in {close:.1?}; {} (at most 2 x baseline) {settled:.1?} after",
        mib(baseline),
        mib(peak),
        mib(rss),
    );
    round_trip(&app, "after").await;
}

/// The allocator's settings as jemalloc reports them at exit (`stats_print`), for a run of
/// `--check-config` with `_RJEM_MALLOC_CONF` set to `conf` (which an operator may set too).
fn allocator_options(conf: &str) -> String {
    let out = run_with_env(&["--check-config"], &[("_RJEM_MALLOC_CONF", conf)]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.trim_start().starts_with("opt."))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn allocator_settings_are_compiled_in_and_the_environment_overrides_them() {
    let built_in = allocator_options("stats_print:true");
    for line in [
        "opt.background_thread: true",
        "opt.dirty_decay_ms: 10000",
        "opt.muzzy_decay_ms: 0",
    ] {
        assert!(built_in.contains(line), "{line} not in:\n{built_in}");
    }
    let overridden =
        allocator_options("stats_print:true,background_thread:false,dirty_decay_ms:500");
    for line in [
        "opt.background_thread: false",
        "opt.dirty_decay_ms: 500",
        "opt.muzzy_decay_ms: 0",
    ] {
        assert!(overridden.contains(line), "{line} not in:\n{overridden}");
    }
}
