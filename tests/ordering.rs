//! Commands of one connection take effect, and are answered, in the order they were sent
//! (docs/protocol.md, 2.1), on both engines and many times over: a client pipelines a mix of
//! commands without waiting, and every reply comes in order, every command sees the effect
//! of those before it (a publish after a subscribe is delivered to it; presence and history
//! after them show them). And the bound on the commands one connection may have waiting.

mod common;

use common::{spawn_app, unique_prefix, App, Client, Redis};
use serde_json::{json, Value};

/// Rounds per engine: each a new connection, new channels, the whole pipeline at once.
const ROUNDS: usize = 30;

/// Sends the pipeline in one go, then checks what comes back.
async fn pipelined_round(c: &mut Client, tag: &str) {
    let a = format!("order-{tag}-a");
    let b = format!("order-{tag}-b");
    let commands = [
        json!({"type":"subscribe","id":1,"channel":a}),
        json!({"type":"publish","id":2,"channel":a,"data":{"n":1}}),
        json!({"type":"presence","id":3,"channel":a}),
        json!({"type":"history","id":4,"channel":a}),
        json!({"type":"ping","id":5}),
        json!({"type":"bogus","id":6}),
        json!({"type":"subscribe","id":7,"channel":b}),
        json!({"type":"publish","id":8,"channel":b,"data":{"n":2}}),
        json!({"type":"unsubscribe","id":9,"channel":"never-subscribed"}),
        json!({"type":"ping","id":10}),
    ];
    for cmd in &commands {
        c.send(cmd.clone()).await;
    }
    let mut replies: Vec<Value> = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    while replies.len() < commands.len() || messages.len() < 2 {
        let f = c.recv().await;
        if f["type"] == "message" {
            // Never a live message before its channel's `subscribed`.
            let sub_id = if f["channel"] == a.as_str() { 1 } else { 7 };
            assert!(
                replies.iter().any(|r| r["id"] == sub_id),
                "{tag}: message before subscribed: {f}"
            );
            messages.push(f);
        } else {
            replies.push(f);
        }
    }
    let ids: Vec<&Value> = replies.iter().map(|r| &r["id"]).collect();
    assert_eq!(
        ids,
        (1..=10).collect::<Vec<u64>>(),
        "{tag}: replies out of order"
    );
    let kinds: Vec<&str> = replies
        .iter()
        .map(|r| match r["type"].as_str() {
            Some("error") => r["code"].as_str().unwrap_or_default(),
            Some(t) => t,
            None => "",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "subscribed",
            "published",
            "presence",
            "history",
            "pong",
            "bad_request",
            "subscribed",
            "published",
            "not_subscribed",
            "pong"
        ],
        "{tag}"
    );
    // The subscribe took effect before the publish: both channels were empty, and each
    // publication went to its subscription.
    assert_eq!(replies[0]["offset"], 0, "{tag}: {}", replies[0]);
    assert_eq!(replies[1]["offset"], 1);
    let on = |ch: &str| messages.iter().find(|m| m["channel"] == ch).cloned();
    let ma = on(&a).expect("the message on a");
    assert_eq!(
        (ma["offset"].clone(), ma["data"].clone()),
        (json!(1), json!({"n":1}))
    );
    let mb = on(&b).expect("the message on b");
    assert_eq!(
        (mb["offset"].clone(), mb["data"].clone()),
        (json!(1), json!({"n":2}))
    );
    // Presence after the subscribe shows this client; history after the publish holds it.
    let me = c.id();
    let clients = replies[2]["clients"].as_array().expect("clients");
    assert!(
        clients.iter().any(|x| x["client"] == me.as_str()),
        "{}",
        replies[2]
    );
    assert_eq!(replies[3]["offset"], 1, "{}", replies[3]);
    assert_eq!(replies[3]["publications"][0]["data"], json!({"n":1}));
}

async fn rounds(s: &App, engine: &str) {
    for round in 0..ROUNDS {
        let mut c = s.client().await;
        pipelined_round(&mut c, &format!("{engine}-{round}")).await;
        c.close().await;
    }
}

/// A node on `redis` (its own key prefix) with `extra` settings, once it is ready.
async fn on_redis(redis: &Redis, extra: &[(&str, &str)]) -> App {
    let (url, prefix) = (redis.url(), unique_prefix());
    let mut overrides = vec![
        ("engine.kind", "redis"),
        ("engine.redis_url", url.as_str()),
        ("engine.prefix", prefix.as_str()),
    ];
    overrides.extend_from_slice(extra);
    let s = spawn_app(&overrides);
    s.wait_ready(200).await;
    s
}

#[tokio::test]
async fn pipelined_commands_take_effect_and_are_answered_in_order_memory() {
    let s = spawn_app(&[("limits.client_publish_rate", "100000")]);
    rounds(&s, "memory").await;
}

#[tokio::test]
async fn pipelined_commands_take_effect_and_are_answered_in_order_redis() {
    let redis = Redis::start();
    let s = on_redis(&redis, &[("limits.client_publish_rate", "100000")]).await;
    rounds(&s, "redis").await;
}

/// At most `client_publish_rate + max_subscriptions_per_connection` commands wait behind the
/// running one; the next is refused at once with `rate_limited`, ahead of the replies still
/// due, and those then come in order.
#[tokio::test]
async fn waiting_commands_are_bounded_at_the_edge() {
    let redis = Redis::start();
    let s = on_redis(
        &redis,
        &[
            ("limits.client_publish_rate", "1"),
            ("limits.max_subscriptions_per_connection", "2"),
        ],
    )
    .await;
    let mut c = s.client().await;
    // Redis stops answering: the publish runs until the engine gives up on it, and the
    // commands behind it wait.
    redis.pause();
    c.send(json!({"type":"publish","id":0,"channel":"bound","data":0}))
        .await;
    for id in 1..=4 {
        c.send(json!({"type":"ping","id":id})).await;
    }
    let first = c.recv().await;
    redis.resume();
    assert_eq!(
        (
            first["type"].clone(),
            first["code"].clone(),
            first["id"].clone()
        ),
        (json!("error"), json!("rate_limited"), json!(4)),
        "the fourth waiting command is one too many: {first}"
    );
    // Then the running publish (answered `unavailable`, or `published` had Redis come back
    // in time), and the three that waited, in order.
    let publish = c.recv().await;
    assert_eq!(publish["id"], 0, "{publish}");
    for id in 1..=3 {
        let r = c.recv().await;
        assert_eq!(
            (r["type"].clone(), r["id"].clone()),
            (json!("pong"), json!(id))
        );
    }
    // Nothing else was due; the connection serves on.
    let r = c.call(json!({"type":"ping","id":5})).await;
    assert_eq!(
        (r["type"].clone(), r["id"].clone()),
        (json!("pong"), json!(5))
    );
}
