//! The cheaper publish function of schema 4 (`migrations/0004_lean_publish.lua`), against a
//! real Redis: the stream is trimmed only approximately (`XTRIM ~` every 32 offsets) yet
//! history reads, recovery and the gap filler answer exactly what trimming to
//! `history_size` would keep; the TTLs are set only now and then (when the node asks for a
//! refresh), yet history still lives at least `history_ttl` after every publication and is
//! gone soon after the last; new keys always get a TTL; and consecutive publications of a
//! channel sent as one call keep one result per publication, in call order, idempotency
//! keys included.
//!
//! Every test starts its own `redis-server` on a free port with a unique key prefix.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use common::engine::{ch, data, keyed, ns, redis_engine, Recorder};
use common::{unique_prefix, wait_until, Redis};
use switchboard::config::{HumanDuration, NamespaceOptions};
use switchboard::engine::redis::META_GRACE;
use switchboard::engine::{Engine, PublishResult};
use switchboard::protocol::StreamPosition;

fn offsets(h: &[switchboard::protocol::Publication]) -> Vec<u64> {
    h.iter().map(|p| p.offset).collect()
}

async fn int(con: &mut redis::aio::MultiplexedConnection, cmd: &str, key: &str) -> i64 {
    redis::cmd(cmd)
        .arg(key)
        .query_async(con)
        .await
        .expect("redis answers")
}

/// Publishes `values` on `channel` as one pipelined burst (every ticket taken before any
/// is awaited, as a WebSocket session's window does) and returns the results in order.
async fn burst(
    engine: &dyn Engine,
    channel: &str,
    values: std::ops::RangeInclusive<u64>,
    o: &NamespaceOptions,
) -> Vec<PublishResult> {
    let c = ch(channel);
    let tickets: Vec<_> = values
        .map(|i| engine.publish(&c, data(json!(i)), o))
        .collect();
    let mut out = Vec::new();
    for t in tickets {
        out.push(t.await.expect("publish"));
    }
    out
}

#[tokio::test]
async fn approximate_trimming_reads_as_exact_trimming() {
    let redis = Redis::start();
    let p = unique_prefix();
    let a = redis_engine(&redis, &p, "na").await;
    let b = redis_engine(&redis, &p, "nb").await;
    let small = ns(5);
    let c = ch("lean:trim");
    let mut epoch = String::new();
    for i in 1..=40u64 {
        let r = a
            .publish(&c, data(json!(i)), &small)
            .await
            .expect("publish");
        assert_eq!(r.offset, i);
        epoch = r.epoch.to_string();
    }
    let r = burst(&*a, "lean:trim", 41..=70, &small).await;
    assert_eq!(
        r.iter().map(|r| r.offset).collect::<Vec<_>>(),
        (41..=70).collect::<Vec<_>>()
    );
    let mut con = redis.con().await;
    let held = int(&mut con, "XLEN", &format!("{p}:history:{{lean:trim}}")).await;
    assert!(held > 5, "`~` keeps whole stream nodes: {held} entries");

    // Clients see the newest 5, as exact trimming would keep them.
    let h = a.history(&c, None, 5, &small).await.expect("history");
    assert_eq!(
        (h.offset, offsets(&h.publications)),
        (70, (66..=70).collect())
    );
    let at = |offset| StreamPosition {
        offset,
        epoch: epoch.as_str().into(),
    };
    let h = a
        .history(&c, Some(&at(60)), 5, &small)
        .await
        .expect("since");
    assert!(!h.recovered, "61..=65 are beyond history_size");
    assert_eq!(offsets(&h.publications), (66..=70).collect::<Vec<_>>());
    let h = a
        .join_history(&c, Some(&at(65)), 5, &small)
        .await
        .expect("join");
    assert!(h.recovered);
    assert_eq!(offsets(&h.publications), (66..=70).collect::<Vec<_>>());
    let h = a
        .history(&c, Some(&at(1)), 5, &small)
        .await
        .expect("since 1");
    assert!(!h.recovered);
    assert_eq!(offsets(&h.publications), (66..=70).collect::<Vec<_>>());

    // The gap filler reads with the size the publishers recorded: b misses 72..=100 (their
    // pub/sub messages go nowhere) and gets only what exact trimming keeps once 101 is in,
    // 97..=101.
    let rec = Arc::new(Recorder::default());
    b.set_handler(rec.clone());
    b.subscribe_node(&c).await.expect("subscribe");
    let first = a
        .publish(&c, data(json!(0)), &small)
        .await
        .expect("publish");
    assert_eq!(first.offset, 71);
    wait_until("b gets 71", || rec.of("lean:trim").len() == 1).await;
    for i in 72..=100u64 {
        let _: redis::Value = redis::cmd("FCALL")
            .arg("switchboard_v4_publish")
            .arg(2)
            .arg(format!("{p}:meta:{{lean:trim}}"))
            .arg(format!("{p}:history:{{lean:trim}}"))
            .arg("unused")
            .arg(format!(r#"{{"data":{i}}}"#))
            .arg(5)
            .arg(60_000)
            .arg(120_000)
            .arg("nowhere")
            .arg(0)
            .arg("PUBLISH")
            .query_async(&mut con)
            .await
            .expect("raw publish");
    }
    a.publish(&c, data(json!(101)), &small)
        .await
        .expect("publish");
    wait_until("b gets 101", || {
        rec.of("lean:trim").last().map(|g| g.offset) == Some(101)
    })
    .await;
    let got: Vec<u64> = rec.of("lean:trim").iter().map(|g| g.offset).collect();
    assert_eq!(got, vec![71, 97, 98, 99, 100, 101]);
}

#[tokio::test]
async fn history_outlives_each_publication_by_its_ttl_then_expires() {
    let redis = Redis::start();
    let p = unique_prefix();
    let e = redis_engine(&redis, &p, "na").await;
    let ttl = Duration::from_secs(2);
    // The node pads the TTLs by an eighth of history_ttl (refresh.rs).
    let pad = ttl / 8;
    let o = NamespaceOptions {
        history_ttl: HumanDuration(ttl),
        ..ns(10)
    };
    let c = ch("lean:ttl");
    let (history, meta) = (
        format!("{p}:history:{{lean:ttl}}"),
        format!("{p}:meta:{{lean:ttl}}"),
    );
    let mut con = redis.con().await;
    let mut last_reply = Instant::now();
    // Publications over more than a refresh period: after each, both keys expire no sooner
    // than the TTL counted from when it was sent, and no later than TTL + pad.
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < pad * 3 || n < 10 {
        let sent = Instant::now();
        n += 1;
        let r = e.publish(&c, data(json!(n)), &o).await.expect("publish");
        assert_eq!(r.offset, n);
        let h_ttl = int(&mut con, "PTTL", &history).await;
        let m_ttl = int(&mut con, "PTTL", &meta).await;
        let since_sent = sent.elapsed().as_millis() as i64;
        last_reply = Instant::now();
        assert!(
            h_ttl >= ttl.as_millis() as i64 - since_sent,
            "history expires in {h_ttl} ms, {since_sent} ms after publication {n}"
        );
        assert!(h_ttl <= (ttl + pad).as_millis() as i64, "{h_ttl}");
        assert!(
            m_ttl >= (ttl + META_GRACE).as_millis() as i64 - since_sent,
            "meta expires in {m_ttl} ms"
        );
        let h = e.history(&c, None, 10, &o).await.expect("history");
        assert_eq!(h.publications.last().map(|p| p.offset), Some(n));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every refresh ran before the last reply, so by then + TTL + pad (+ a millisecond of
    // rounding) the history is gone; the meta hash lives on, so the offset stays known.
    let gone_by = last_reply + ttl + pad + Duration::from_millis(2);
    tokio::time::sleep_until(gone_by.into()).await;
    let h = e.history(&c, None, 10, &o).await.expect("history");
    assert!(h.publications.is_empty(), "history expired");
    assert_eq!(h.offset, n, "the offset outlives the entries");
    assert_eq!(int(&mut con, "EXISTS", &history).await, 0);

    // The stream created again after expiry gets its TTL at once, whatever the node
    // remembers of its last refresh.
    e.publish(&c, data(json!(0)), &o).await.expect("publish");
    let h_ttl = int(&mut con, "PTTL", &history).await;
    assert!(h_ttl > 0, "a new stream has a TTL: {h_ttl}");
    // And so does one deleted behind the node's back, just after a refresh.
    let _: i64 = redis::cmd("DEL")
        .arg(&history)
        .query_async(&mut con)
        .await
        .expect("del");
    e.publish(&c, data(json!(0)), &o).await.expect("publish");
    let h_ttl = int(&mut con, "PTTL", &history).await;
    assert!(h_ttl > 0, "a recreated stream has a TTL: {h_ttl}");
}

#[tokio::test]
async fn a_burst_mixing_channels_and_keys_keeps_each_result_in_call_order() {
    let redis = Redis::start();
    let p = unique_prefix();
    let e = redis_engine(&redis, &p, "na").await;
    let rec = Arc::new(Recorder::default());
    e.set_handler(rec.clone());
    let (a, b) = (ch("lean:a"), ch("lean:b"));
    e.subscribe_node(&a).await.expect("subscribe");
    let o = ns(1000);
    let mut tickets = Vec::new();
    let mut expected = Vec::new();
    let (mut na, mut nb) = (0u64, 0u64);
    for i in 0..600u64 {
        // Runs of a, a keyed publication now and then (twice with the same key), and b.
        let (t, want) = match i % 10 {
            7 | 8 => {
                let key = format!("k{}", i / 10);
                let first = i % 10 == 7;
                if first {
                    na += 1;
                }
                (e.publish(&a, keyed(json!(i), &key), &o), ("a", na, !first))
            }
            9 => {
                nb += 1;
                (e.publish(&b, data(json!(i)), &o), ("b", nb, false))
            }
            _ => {
                na += 1;
                (e.publish(&a, data(json!(i)), &o), ("a", na, false))
            }
        };
        tickets.push(t);
        expected.push(want);
    }
    let mut epochs = std::collections::HashMap::new();
    for (t, (channel, offset, duplicate)) in tickets.into_iter().zip(expected) {
        let r = t.await.expect("publish");
        assert_eq!((r.offset, r.duplicate), (offset, duplicate), "{channel}");
        let epoch = epochs.entry(channel).or_insert_with(|| r.epoch.clone());
        assert_eq!(*epoch, r.epoch);
    }
    wait_until("every publication of a delivered", || {
        rec.of("lean:a").len() as u64 == na
    })
    .await;
    let got = rec.of("lean:a");
    assert_eq!(
        got.iter().map(|g| g.offset).collect::<Vec<_>>(),
        (1..=na).collect::<Vec<_>>()
    );
    let h = e.history(&a, None, 1000, &o).await.expect("history");
    assert_eq!(offsets(&h.publications), (1..=na).collect::<Vec<_>>());
}
