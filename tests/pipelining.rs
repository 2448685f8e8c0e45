//! Pipelined publishing (issue 9): one connection's publications no longer wait for each
//! other's engine round trip, yet they take effect and are answered in the order sent, on
//! both engines. A thousand publications sent at once over two channels: replies in order,
//! offsets strictly increasing per channel, a subscriber gets every one in order. Any other
//! command is a barrier: publications after a `subscribe` on the same connection reach that
//! subscription. And a Redis that stops answering mid-window: the publications caught in it
//! are answered `unavailable`, in order, and nothing is published out of order.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{spawn_app, unique_prefix, App, Client, Redis, WAIT};
use serde_json::{json, Value};

/// Publications per pipelined burst.
const BURST: u64 = 1000;

/// A node on `redis` (its own key prefix), publish rate raised, once it is ready.
async fn on_redis(redis: &Redis) -> App {
    let (url, prefix) = (redis.url(), unique_prefix());
    let s = spawn_app(&[
        ("engine.kind", "redis"),
        ("engine.redis_url", url.as_str()),
        ("engine.prefix", prefix.as_str()),
        ("limits.client_publish_rate", "100000"),
    ]);
    s.wait_ready(200).await;
    s
}

fn publish(id: u64, channel: &str) -> Value {
    json!({"type":"publish","id":id,"channel":channel,"data":{"id":id}})
}

/// The next `n` `message` frames as (channel, offset, data id), skipping nothing else.
async fn messages(c: &mut Client, n: usize) -> Vec<(String, u64, u64)> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let f = c.recv().await;
        assert_eq!(f["type"], "message", "{f}");
        got.push((
            f["channel"].as_str().unwrap_or_default().to_string(),
            f["offset"].as_u64().unwrap_or_default(),
            f["data"]["id"].as_u64().unwrap_or(u64::MAX),
        ));
    }
    got
}

/// One connection sends [`BURST`] publications over two channels without waiting; a second
/// connection subscribed to both.
async fn burst_over_two_channels(app: &App) {
    let (a, b) = ("pipe-a", "pipe-b");
    let mut sub = app.client().await;
    sub.subscribe(a).await;
    sub.subscribe(b).await;
    let mut p = app.client().await;
    let started = Instant::now();
    for id in 0..BURST {
        p.send(publish(id, if id % 2 == 0 { a } else { b })).await;
    }
    let mut last: HashMap<String, u64> = HashMap::new();
    for id in 0..BURST {
        let r = p.recv().await;
        assert_eq!(
            (r["type"].as_str(), r["id"].as_u64()),
            (Some("published"), Some(id)),
            "{r}"
        );
        let ch = r["channel"].as_str().unwrap_or_default().to_string();
        let offset = r["offset"].as_u64().unwrap_or_default();
        let before = last.insert(ch.clone(), offset).unwrap_or(0);
        assert_eq!(
            offset,
            before + 1,
            "offsets follow the send order on {ch}: {r}"
        );
    }
    eprintln!(
        "{BURST} pipelined publications answered in {:?}",
        started.elapsed()
    );
    let got = messages(&mut sub, BURST as usize).await;
    let mut seen: HashMap<String, (u64, u64)> = HashMap::new();
    for (ch, offset, id) in got {
        let (o, i) = seen.entry(ch.clone()).or_insert((0, 0));
        assert_eq!(offset, *o + 1, "no gap on {ch}");
        assert!(*o == 0 || id > *i, "in send order on {ch}");
        assert_eq!(id % 2, u64::from(ch == b), "{ch} got {id}");
        (*o, *i) = (offset, id);
    }
    assert_eq!(seen[a].0, BURST / 2);
    assert_eq!(seen[b].0, BURST / 2);
}

/// Publications, a `subscribe` of the same connection, publications: the subscribe waits
/// for the window to drain, and every publication sent after it reaches it.
async fn subscribe_is_a_barrier(app: &App) {
    let ch = "pipe-barrier";
    let mut c = app.client().await;
    for id in 0..100 {
        c.send(publish(id, ch)).await;
    }
    c.send(json!({"type":"subscribe","id":100,"channel":ch}))
        .await;
    for id in 101..200 {
        c.send(publish(id, ch)).await;
    }
    let mut replies = Vec::new();
    let mut after: Vec<(u64, u64)> = Vec::new();
    while replies.len() < 200 || after.len() < 99 {
        let f = c.recv().await;
        if f["type"] == "message" {
            assert!(replies.len() > 100, "a message before subscribed: {f}");
            let offset = f["offset"].as_u64().unwrap_or_default();
            if offset > 100 {
                after.push((offset, f["data"]["id"].as_u64().unwrap_or_default()));
            }
        } else {
            replies.push(f);
        }
    }
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r["id"], i, "replies in order: {r}");
        let ty = if i == 100 { "subscribed" } else { "published" };
        assert_eq!(r["type"], ty, "{r}");
    }
    let want: Vec<(u64, u64)> = (101..200).map(|id| (id, id)).collect();
    assert_eq!(
        after, want,
        "every publication after the subscribe, in order"
    );
}

#[tokio::test]
async fn a_burst_of_publications_is_pipelined_in_order_memory() {
    let app = spawn_app(&[("limits.client_publish_rate", "100000")]);
    burst_over_two_channels(&app).await;
    subscribe_is_a_barrier(&app).await;
}

#[tokio::test]
async fn a_burst_of_publications_is_pipelined_in_order_redis() {
    let redis = Redis::start();
    let app = on_redis(&redis).await;
    burst_over_two_channels(&app).await;
    subscribe_is_a_barrier(&app).await;
}

/// Redis stops answering with publications in flight: each is answered `unavailable` (in
/// order, after the command timeout); when Redis goes on it may still run them (the node
/// could not know), but only in the order sent, and what is published after comes after.
#[tokio::test]
async fn an_engine_failure_mid_window_fails_those_publications_in_order() {
    let redis = Redis::start();
    let app = on_redis(&redis).await;
    let ch = "pipe-fail";
    let mut sub = app.client().await;
    sub.subscribe(ch).await;
    let mut p = app.client().await;
    for id in 0..50 {
        p.send(publish(id, ch)).await;
    }
    for id in 0..50 {
        let r = p.recv().await;
        assert_eq!(
            (r["id"].as_u64(), r["offset"].as_u64()),
            (Some(id), Some(id + 1)),
            "{r}"
        );
    }

    redis.pause();
    for id in 50..100 {
        p.send(publish(id, ch)).await;
    }
    for id in 50..100 {
        let r = p.recv().await;
        assert_eq!(
            (r["id"].as_u64(), r["code"].as_str()),
            (Some(id), Some("unavailable")),
            "{r}"
        );
    }
    redis.resume();

    // The node may be reconnecting: one at a time until one gets through, then a burst.
    let deadline = Instant::now() + WAIT;
    let mut id = 100;
    let mut offsets = Vec::new();
    loop {
        let r = p.call(publish(id, ch)).await;
        id += 1;
        if r["type"] == "published" {
            offsets.push(r["offset"].as_u64().unwrap_or_default());
            break;
        }
        assert_eq!(r["code"], "unavailable", "{r}");
        assert!(Instant::now() < deadline, "Redis never came back: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first_after = id;
    for i in first_after..first_after + 50 {
        p.send(publish(i, ch)).await;
    }
    for i in first_after..first_after + 50 {
        let r = p.recv().await;
        assert_eq!(
            (r["id"].as_u64(), r["type"].as_str()),
            (Some(i), Some("published")),
            "{r}"
        );
        offsets.push(r["offset"].as_u64().unwrap_or_default());
    }
    assert!(offsets[0] > 50, "after the first 50: {offsets:?}");
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "{offsets:?}");

    // The subscriber: every offset up to the last, in order, and the data in send order
    // (whichever of the failed ones Redis ran in the end, they came in their place).
    let last = *offsets.last().unwrap_or(&0);
    let got = messages(&mut sub, last as usize).await;
    let offs: Vec<u64> = got.iter().map(|m| m.1).collect();
    assert_eq!(offs, (1..=last).collect::<Vec<u64>>());
    let ids: Vec<u64> = got.iter().map(|m| m.2).collect();
    assert!(
        ids.windows(2).all(|w| w[1] > w[0]),
        "published in send order: {ids:?}"
    );
    assert_eq!(&ids[..50], &(0..50).collect::<Vec<u64>>()[..]);
    assert_eq!(ids[ids.len() - 51..].to_vec(), {
        let mut v = vec![first_after - 1];
        v.extend(first_after..first_after + 50);
        v
    });
}
