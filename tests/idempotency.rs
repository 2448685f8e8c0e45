//! Idempotent publish at the edges of a real node (docs/protocol.md, 2.1 and 5): the
//! optional `idempotency_key` of the WebSocket `publish`, `/api/publish` and `/api/broadcast`
//! is checked the same way everywhere (a non-empty string of at most 64 bytes of UTF-8, else
//! `bad_request` / 400); a repeat answers the first result in the usual shape and publishes
//! nothing (no message, no history entry, no count in `/metrics`); a namespace may turn keys
//! off. And the case keys exist for: a publish that timed out at a paused Redis, although
//! Redis ran it, is retried with its key, answers the offset the first run got, and the
//! subscriber gets the publication once.
//!
//! The engine-level contract (both engines, windows, concurrent repeats) is the idempotency
//! block of the conformance suite in `tests/redis_engine.rs`.

mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{spawn_app, unique_prefix, App, Client, Redis, WAIT};

const KEY: &str = "k-idem";

/// A `publish` command whose data is its own id, with `idempotency_key` set to `key`
/// (left out when `key` is `None`).
fn publish(id: u64, channel: &str, key: Option<Value>) -> Value {
    let mut cmd = json!({"type":"publish","id":id,"channel":channel,"data":{"id":id}});
    if let Some(key) = key {
        cmd["idempotency_key"] = key;
    }
    cmd
}

/// Keys the edge refuses: too long (in bytes, whatever the characters), empty, not a string.
fn refused_keys() -> Vec<Value> {
    vec![
        json!("a".repeat(65)),
        // 33 characters, 65 bytes.
        json!(format!("{}a", "é".repeat(32))),
        // 17 characters, 68 bytes.
        json!("😀".repeat(17)),
        json!(""),
        json!(1),
        json!(true),
        json!({"k": "v"}),
        json!(["a"]),
    ]
}

/// The next `n` frames, which must be messages: their offsets and the `id` in their data.
async fn messages(c: &mut Client, n: usize) -> Vec<(u64, Value)> {
    let mut got = Vec::new();
    for _ in 0..n {
        let m = c.recv().await;
        assert_eq!(m["type"], "message", "{m}");
        got.push((
            m["offset"].as_u64().expect("offset"),
            m["data"]["id"].clone(),
        ));
    }
    got
}

#[tokio::test]
async fn websocket_keys_are_checked_and_a_repeat_answers_the_first_result() {
    let app = spawn_app(&[]);
    let mut sub = app.client().await;
    sub.subscribe("edge").await;
    let mut p = app.client().await;

    let longest = json!("k".repeat(64));
    let first = p.call(publish(1, "edge", Some(longest.clone()))).await;
    let epoch = first["epoch"].clone();
    assert_eq!(
        first,
        json!({"type":"published","id":1,"channel":"edge","offset":1,"epoch":epoch})
    );
    // The repeat: the first offset and epoch, in the reply's usual shape.
    let again = p.call(publish(2, "edge", Some(longest))).await;
    assert_eq!(
        again,
        json!({"type":"published","id":2,"channel":"edge","offset":1,"epoch":epoch})
    );

    for (i, key) in refused_keys().into_iter().enumerate() {
        let id = 10 + i as u64;
        let r = p.call(publish(id, "edge", Some(key.clone()))).await;
        assert_eq!(
            (r["type"].as_str(), r["code"].as_str(), r["id"].as_u64()),
            (Some("error"), Some("bad_request"), Some(id)),
            "{key}: {r}"
        );
        let message = r["message"].as_str().unwrap_or_default();
        assert!(message.contains("idempotency_key"), "{key}: {message}");
    }

    // 64 bytes whatever the characters; `null` is no key, so it publishes every time.
    for (id, key) in [
        (20, json!("é".repeat(32))),
        (21, json!("😀".repeat(16))),
        (22, Value::Null),
        (23, Value::Null),
    ] {
        let r = p.call(publish(id, "edge", Some(key.clone()))).await;
        assert_eq!(r["type"], "published", "{key}: {r}");
    }

    // One message per publication, in order: the repeat and the refusals sent nothing.
    let got = messages(&mut sub, 5).await;
    let want: Vec<(u64, Value)> = [(1, 1), (2, 20), (3, 21), (4, 22), (5, 23)]
        .into_iter()
        .map(|(o, id)| (o, json!(id)))
        .collect();
    assert_eq!(got, want);
    let h = p
        .call(json!({"type":"history","id":30,"channel":"edge"}))
        .await;
    assert_eq!(h["offset"], 5, "{h}");
    assert_eq!(h["publications"].as_array().map(Vec::len), Some(5), "{h}");
    assert_eq!(h["publications"][0]["data"], json!({"id": 1}), "{h}");
    app.wait_metric("switchboard_publications_total", 5.0).await;
}

/// An API call with the test's key.
async fn api(app: &App, path: &str, body: Value) -> (u16, Value) {
    app.api("POST", path, KEY, Some(body)).await
}

#[tokio::test]
async fn http_keys_are_checked_and_broadcast_takes_one_key_per_channel() {
    let app = spawn_app(&[
        ("api.keys", KEY),
        ("namespaces.nokeys.idempotency_window", "0"),
    ]);
    let body = |key: Value| json!({"channel":"h","data":{"n":1},"idempotency_key":key});
    let longest = json!("k".repeat(64));
    let (status, first) = api(&app, "/api/publish", body(longest.clone())).await;
    assert_eq!((status, &first["offset"]), (200, &json!(1)), "{first}");
    // The repeat answers the first result, the same body: whatever the data.
    let (status, again) = api(
        &app,
        "/api/publish",
        json!({"channel":"h","data":"other","idempotency_key":longest}),
    )
    .await;
    assert_eq!((status, &again), (200, &first));
    for key in refused_keys() {
        for (path, body) in [
            ("/api/publish", body(key.clone())),
            (
                "/api/broadcast",
                json!({"channels":["h","h2"],"data":1,"idempotency_key":key}),
            ),
        ] {
            let (status, r) = api(&app, path, body).await;
            assert_eq!(status, 400, "{path} {key}: {r}");
            assert_eq!(r["error"]["code"], "bad_request", "{r}");
            let message = r["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains("idempotency_key"), "{message}");
        }
    }
    for key in [json!("é".repeat(32)), Value::Null] {
        let (status, r) = api(&app, "/api/publish", body(key.clone())).await;
        assert_eq!(status, 200, "{key}: {r}");
    }

    // Broadcast: one key for the call, remembered per channel.
    let call =
        |channels: &[&str]| json!({"channels":channels,"data":{"b":1},"idempotency_key":"bk"});
    let (status, first) = api(&app, "/api/broadcast", call(&["b1", "b2"])).await;
    assert_eq!(status, 200, "{first}");
    let offsets = |r: &Value| -> Vec<(String, u64)> {
        r["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|x| {
                let ch = x["channel"].as_str().expect("channel").to_string();
                (ch, x["offset"].as_u64().expect("offset"))
            })
            .collect()
    };
    assert_eq!(offsets(&first), [("b1".into(), 1), ("b2".into(), 1)]);
    let (_, again) = api(&app, "/api/broadcast", call(&["b1", "b2"])).await;
    assert_eq!(
        again, first,
        "a repeated broadcast answers the first results"
    );
    // A channel the first call did not reach is published; the others answer their first.
    let (_, wider) = api(&app, "/api/broadcast", call(&["b1", "b3"])).await;
    assert_eq!(offsets(&wider), [("b1".into(), 1), ("b3".into(), 1)]);
    assert_eq!(wider["results"][0], first["results"][0]);
    let (_, next) = api(&app, "/api/publish", json!({"channel":"b1","data":0})).await;
    assert_eq!(
        next["offset"], 2,
        "the repeats published nothing on b1: {next}"
    );
    let (_, h) = app.api("GET", "/api/history/h2", KEY, None).await;
    assert_eq!(h["offset"], 0, "refused broadcasts published nothing: {h}");

    // A namespace with a window of 0 remembers no key; the others still do.
    for expected in 1..=2 {
        let (_, r) = api(
            &app,
            "/api/publish",
            json!({"channel":"nokeys:x","data":1,"idempotency_key":"same"}),
        )
        .await;
        assert_eq!(r["offset"], expected, "{r}");
    }
    // h: 1 (the first and its repeat), the 64-byte é key, the null key; b1: 1 and 2;
    // b2: 1; b3: 1; nokeys:x: 1 and 2.
    app.wait_metric("switchboard_publications_total", 9.0).await;
}

/// Redis stops answering (SIGSTOP) with a keyed publish on its way: the node gives up after
/// its command timeout and answers `unavailable`, but Redis runs the publish when it goes
/// on. The client cannot tell, so it retries with the same key: the retry answers the
/// offset the first run got, and the subscriber gets that publication once.
#[tokio::test]
async fn a_publish_that_timed_out_is_retried_with_its_key_and_made_once() {
    let redis = Redis::start();
    let prefix = unique_prefix();
    let url = redis.url();
    let app = spawn_app(&[
        ("engine.kind", "redis"),
        ("engine.redis_url", url.as_str()),
        ("engine.prefix", prefix.as_str()),
        ("api.keys", KEY),
    ]);
    app.wait_ready(200).await;
    let mut sub = app.client().await;
    sub.subscribe("orders").await;
    let mut p = app.client().await;
    let r = p.call(publish(1, "orders", None)).await;
    assert_eq!(r["offset"], 1, "{r}");
    let epoch = r["epoch"].clone();
    assert_eq!(messages(&mut sub, 1).await, [(1, json!(1))]);

    redis.pause();
    let sent = Instant::now();
    let r = p.call(publish(2, "orders", Some(json!("order-2")))).await;
    let waited = sent.elapsed();
    redis.resume();
    assert_eq!(
        (r["code"].as_str(), r["id"].as_u64()),
        (Some("unavailable"), Some(2)),
        "{r}"
    );
    assert!(
        waited >= Duration::from_secs(1),
        "answered after {waited:?}: a timeout, not a refusal"
    );
    // Redis ran it when it went on: the subscriber gets it, although the publisher was
    // told `unavailable`.
    assert_eq!(messages(&mut sub, 1).await, [(2, json!(2))]);

    // The retry, with the same key (and, to show nothing is published again, other data):
    // the node may still be reconnecting, so it is retried while `unavailable`.
    let deadline = Instant::now() + WAIT;
    let retry = loop {
        let r = p.call(publish(3, "orders", Some(json!("order-2")))).await;
        if r["type"] == "published" {
            break r;
        }
        assert_eq!(r["code"], "unavailable", "{r}");
        assert!(
            Instant::now() < deadline,
            "the retry never got through: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        retry,
        json!({"type":"published","id":3,"channel":"orders","offset":2,"epoch":epoch}),
        "the offset the first run got"
    );
    // Nothing more came for it: the next publication is the next message.
    let r = p.call(publish(4, "orders", None)).await;
    assert_eq!(r["offset"], 3, "{r}");
    assert_eq!(messages(&mut sub, 1).await, [(3, json!(4))]);
    let (_, h) = app.api("GET", "/api/history/orders", KEY, None).await;
    let ids: Vec<&Value> = h["publications"]
        .as_array()
        .expect("publications")
        .iter()
        .map(|p| &p["data"]["id"])
        .collect();
    assert_eq!(ids, [&json!(1), &json!(2), &json!(4)], "{h}");
    // The key is kept beside the channel's keys, for the default window (5 minutes).
    let ttl: i64 = ::redis::cmd("PTTL")
        .arg(format!("{prefix}:idem:{{orders}}:order-2"))
        .query_async(&mut redis.con().await)
        .await
        .expect("PTTL");
    assert!((1..=300_000).contains(&ttl), "PTTL {ttl}");
}
