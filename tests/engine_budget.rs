//! What one connection may ask of the engine (issue 11, item 8): `subscribe`, `history` and
//! `presence` count against `limits.client_command_rate` (the last within the burst is
//! answered, the first past it gets `rate_limited`, and `ping`, `unsubscribe` and
//! `publish` are not counted against it); and a `history` or `presence` query of a channel
//! that does not exist creates nothing in Redis, while a subscription still gives the
//! channel the epoch its first publication carries.

mod common;

use common::{spawn_app, unique_prefix, Redis, WAIT};
use serde_json::json;

#[tokio::test]
async fn subscribe_history_and_presence_share_one_rate_per_connection() {
    // 2 a second, with a burst of 2: a token comes back every 500 ms, far longer than the
    // few commands below take to arrive, so the edge is exact.
    let s = spawn_app(&[("limits.client_command_rate", "2")]);
    let mut c = s.client().await;
    let commands = [
        json!({"type":"history","id":1,"channel":"a"}),
        json!({"type":"ping","id":2}),
        json!({"type":"presence","id":3,"channel":"a"}),
        json!({"type":"subscribe","id":4,"channel":"a"}),
        json!({"type":"publish","id":5,"channel":"a","data":1}),
        json!({"type":"unsubscribe","id":6,"channel":"a"}),
    ];
    for command in &commands {
        c.send(command.clone()).await;
    }
    let mut replies = Vec::new();
    while replies.len() < commands.len() {
        let r = c.recv().await;
        if r["type"] != "message" {
            replies.push(r);
        }
    }
    let kinds: Vec<(u64, String)> = replies
        .iter()
        .map(|r| {
            let kind = match r["type"].as_str() {
                Some("error") => r["code"].as_str().unwrap_or_default().to_string(),
                other => other.unwrap_or_default().to_string(),
            };
            (r["id"].as_u64().unwrap_or_default(), kind)
        })
        .collect();
    let expected: Vec<(u64, String)> = [
        (1, "history"),
        (2, "pong"),
        (3, "presence"),
        (4, "rate_limited"),
        (5, "published"),
        (6, "not_subscribed"),
    ]
    .iter()
    .map(|(i, k)| (*i, k.to_string()))
    .collect();
    assert_eq!(kinds, expected, "{replies:?}");
    let refused = &replies[3];
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.contains("limits.client_command_rate")),
        "{refused}"
    );

    // The bucket refills at the rate: the subscribe goes through once a token is back
    // (polled, as `eventually` does, within its deadline).
    let deadline = std::time::Instant::now() + WAIT;
    let r = loop {
        let r = c.call(json!({"type":"subscribe","channel":"a"})).await;
        if r["type"] == "subscribed" {
            break r;
        }
        assert_eq!(r["code"], "rate_limited", "{r}");
        assert!(std::time::Instant::now() < deadline, "no token came back");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(r["channel"], "a");
}

/// The keys Redis holds under `prefix` for channels (meta, history, presence).
async fn channel_keys(redis: &Redis, prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    for kind in ["meta", "history", "presence"] {
        let found: Vec<String> = ::redis::cmd("KEYS")
            .arg(format!("{prefix}:{kind}:*"))
            .query_async(&mut redis.con().await)
            .await
            .expect("KEYS");
        keys.extend(found);
    }
    keys
}

#[tokio::test]
async fn queries_of_channels_that_do_not_exist_create_nothing_in_redis() {
    // 300 commands pipelined: within the queue's bound (356 by default).
    const CHANNELS: usize = 150;
    let redis = Redis::start();
    let (url, prefix) = (redis.url(), unique_prefix());
    let s = spawn_app(&[
        ("engine.kind", "redis"),
        ("engine.redis_url", &url),
        ("engine.prefix", &prefix),
        ("limits.client_command_rate", "100000"),
    ]);
    s.wait_ready(200).await;
    let mut c = s.client().await;
    for i in 0..CHANNELS {
        c.send(json!({"type":"history","id":i,"channel":format!("unknown{i}")}))
            .await;
        c.send(json!({"type":"presence","id":i,"channel":format!("unknown{i}")}))
            .await;
    }
    for i in 0..CHANNELS {
        let h = c.recv().await;
        assert_eq!(
            (&h["type"], &h["id"], &h["offset"], &h["epoch"]),
            (&json!("history"), &json!(i), &json!(0), &json!("")),
            "{h}"
        );
        let p = c.recv().await;
        assert_eq!(
            (&p["type"], &p["clients"]),
            (&json!("presence"), &json!([]))
        );
    }
    let (status, body) = s.http("GET", "/api/history/unknown0", &[], None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(channel_keys(&redis, &prefix).await, Vec::<String>::new());

    // A subscription opens the channel: its epoch exists before the first publication, a
    // query now answers it, and the first publication carries it.
    let joined = c
        .call(json!({"type":"subscribe","channel":"unknown7"}))
        .await;
    let epoch = joined["epoch"].as_str().unwrap_or_default().to_string();
    assert!(!epoch.is_empty(), "{joined}");
    let h = c
        .call(json!({"type":"history","id":"h","channel":"unknown7"}))
        .await;
    assert_eq!(h["epoch"], epoch.as_str(), "{h}");
    // Its own `message` may come before `published` (docs/protocol.md, 2.1).
    c.send(json!({"type":"publish","id":"p","channel":"unknown7","data":1}))
        .await;
    let p = c.recv_type("published").await;
    assert_eq!(
        (&p["offset"], &p["epoch"]),
        (&json!(1), &json!(epoch)),
        "{p}"
    );
    let left = channel_keys(&redis, &prefix).await;
    assert!(
        left.iter().all(|k| k.contains("{unknown7}")),
        "only the subscribed channel has keys: {left:?}"
    );
}
