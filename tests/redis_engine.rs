//! The engine contract, run against both engines through one conformance suite, plus what
//! only the Redis engine does: migrations under a lock, refusing a newer schema, surviving a
//! Redis that restarts empty, gap filling from history, and cluster-wide presence, counts
//! and disconnects between several engines ("nodes") in one process, and two in-process
//! applications delivering to each other.
//!
//! Every test starts its own `redis-server` on a free port with a unique key prefix, and
//! waits on events by bounded polling, never on a fixed sleep.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytestring::ByteString;
use serde_json::{json, Value as Json};

use common::engine::{ch, data, info, keyed, ns, options, redis_engine, Recorder};
use common::{eventually, spawn_app_in_process, unique_prefix, wait_until, App, Redis};
use switchboard::config::{HumanDuration, NamespaceOptions, Settings};
use switchboard::engine::memory::MemoryEngine;
use switchboard::engine::redis::{
    migrate, MigrateError, RedisEngine, RedisStartError, MIGRATIONS, SCHEMA_VERSION,
};
use switchboard::engine::{Engine, EngineError, Publish, NO_EPOCH};
use switchboard::protocol::StreamPosition;

// ---------------------------------------------------------------------------------------
// The conformance suite, for any engine.

async fn conformance(engine: Arc<dyn Engine>) {
    let rec = Arc::new(Recorder::default());
    engine.set_handler(rec.clone());
    wait_until("engine ready", || engine.is_ready()).await;
    let ns10 = ns(10);

    // Publish assigns 1, 2, 3 in one epoch.
    let c = ch("conf:offsets");
    let mut epochs = Vec::new();
    for (i, expected) in (1..=3u64).enumerate() {
        let r = engine
            .publish(&c, data(serde_json::json!({ "n": i })), &ns10)
            .await
            .expect("publish");
        assert_eq!(r.offset, expected);
        epochs.push(r.epoch);
    }
    assert!(
        epochs.iter().all(|e| *e == epochs[0]),
        "one epoch: {epochs:?}"
    );
    let epoch = epochs[0].to_string();

    // History: newest N, oldest first; and "since".
    let h = engine.history(&c, None, 2, &ns10).await.expect("history");
    assert_eq!(h.offset, 3);
    assert_eq!(&*h.epoch, epoch.as_str());
    assert_eq!(offsets(&h.publications), vec![2, 3]);
    assert_eq!(h.publications[1].data.get(), r#"{"n":2}"#);
    let since = StreamPosition {
        offset: 1,
        epoch: epoch.clone(),
    };
    let h = engine
        .history(&c, Some(&since), 1, &ns10)
        .await
        .expect("history since");
    assert_eq!(offsets(&h.publications), vec![2]);
    assert!(h.recovered);
    let h = engine
        .history(&c, None, 0, &ns10)
        .await
        .expect("position only");
    assert_eq!((h.offset, h.publications.len()), (3, 0));

    // Recovery: same epoch within the window; up to date; other epoch; gap trimmed out.
    let h = engine
        .history(&c, Some(&since), 10, &ns10)
        .await
        .expect("recover");
    assert!(h.recovered);
    assert_eq!(offsets(&h.publications), vec![2, 3]);
    let latest = StreamPosition {
        offset: 3,
        epoch: epoch.clone(),
    };
    let h = engine
        .history(&c, Some(&latest), 10, &ns10)
        .await
        .expect("up to date");
    assert!(h.recovered);
    assert!(h.publications.is_empty());
    let other = StreamPosition {
        offset: 1,
        epoch: "another".into(),
    };
    let h = engine
        .history(&c, Some(&other), 10, &ns10)
        .await
        .expect("other epoch");
    assert!(!h.recovered);
    assert!(h.publications.is_empty());
    let small = ns(3);
    let t = ch("conf:trimmed");
    let mut e = String::new();
    for i in 0..6 {
        e = engine
            .publish(&t, data(serde_json::json!(i)), &small)
            .await
            .expect("publish")
            .epoch
            .to_string();
    }
    let h = engine
        .history(
            &t,
            Some(&StreamPosition {
                offset: 1,
                epoch: e.clone(),
            }),
            3,
            &small,
        )
        .await
        .expect("trimmed");
    assert!(!h.recovered, "offsets 2 and 3 were trimmed");
    let h = engine
        .history(
            &t,
            Some(&StreamPosition {
                offset: 3,
                epoch: e.clone(),
            }),
            3,
            &small,
        )
        .await
        .expect("still held");
    assert!(h.recovered);
    assert_eq!(offsets(&h.publications), vec![4, 5, 6]);

    // A position from nowhere (an offset past anything) is simply not recovered.
    let far = StreamPosition {
        offset: u64::MAX,
        epoch: epoch.clone(),
    };
    let h = engine
        .history(&c, Some(&far), 10, &ns10)
        .await
        .expect("far offset");
    assert!(!h.recovered);
    assert!(h.publications.is_empty());

    // A channel never published nor joined: a query answers offset 0 with no epoch and
    // keeps nothing; a join gives it the epoch its first publication then carries.
    let fresh = ch("conf:fresh");
    let h = engine
        .history(&fresh, None, 10, &ns10)
        .await
        .expect("fresh");
    assert_eq!((h.offset, &*h.epoch), (0, NO_EPOCH));
    let h = engine
        .join_history(&fresh, None, 0, &ns10)
        .await
        .expect("fresh join");
    assert_eq!(h.offset, 0);
    assert_ne!(&*h.epoch, NO_EPOCH);
    let r = engine
        .publish(&fresh, data(serde_json::json!(1)), &ns10)
        .await
        .expect("publish");
    assert_eq!((r.offset, &*r.epoch), (1, &*h.epoch));

    // Presence: add, list, remove.
    let p = ch("conf:presence");
    engine
        .presence_add(&p, &info("c1", "alice"), &ns10)
        .await
        .expect("add");
    engine
        .presence_add(&p, &info("c2", ""), &ns10)
        .await
        .expect("add");
    let list = engine.presence(&p).await.expect("presence");
    let pairs: Vec<(&str, &str)> = list
        .iter()
        .map(|e| (e.client.as_str(), e.user.as_str()))
        .collect();
    assert_eq!(pairs, vec![("c1", "alice"), ("c2", "")]);
    assert!(list.iter().all(|e| !e.node.is_empty()));
    engine.presence_remove(&p, "c1").await.expect("remove");
    let list = engine.presence(&p).await.expect("presence");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].client, "c2");

    // Publications reach the handler, in order, with their ready frame.
    let live = ch("conf:live");
    engine.subscribe_node(&live).await.expect("subscribe node");
    let who = info("c9", "bob");
    let mut live_epoch = String::new();
    for i in 1..=20u64 {
        let r = engine
            .publish(
                &live,
                Publish {
                    info: Some(who.clone()),
                    ..data(serde_json::json!({ "i": i }))
                },
                &ns10,
            )
            .await
            .expect("publish");
        live_epoch = r.epoch.to_string();
    }
    wait_until("20 live publications", || rec.of("conf:live").len() >= 20).await;
    let got = rec.of("conf:live");
    assert_eq!(
        got.iter().map(|g| g.offset).collect::<Vec<_>>(),
        (1..=20).collect::<Vec<_>>()
    );
    assert!(got.iter().all(|g| g.epoch == live_epoch));
    assert_eq!(
        got[4].frame,
        serde_json::json!({"type":"message","channel":"conf:live","offset":5,"data":{"i":5},"info":{"client":"c9","user":"bob"}})
    );

    // Pushes reach on_push as they were sent.
    let frame = r#"{"type":"join","channel":"conf:live","info":{"client":"c9","user":"bob"}}"#;
    engine
        .push(&live, ByteString::from(frame))
        .await
        .expect("push");
    wait_until("push", || !rec.pushes.lock().is_empty()).await;
    assert_eq!(
        rec.pushes.lock()[0],
        ("conf:live".to_string(), frame.to_string())
    );
    engine
        .unsubscribe_node(&live)
        .await
        .expect("unsubscribe node");

    // history_size 0: offsets still assigned, nothing kept.
    let none = ns(0);
    let z = ch("conf:nohistory");
    for expected in 1..=3u64 {
        let r = engine
            .publish(&z, data(serde_json::json!(expected)), &none)
            .await
            .expect("publish");
        assert_eq!(r.offset, expected);
    }
    let h = engine.history(&z, None, 10, &none).await.expect("history");
    assert_eq!(h.offset, 3);
    assert!(h.publications.is_empty());

    // disconnect_user reaches this node's handler.
    let n = engine.disconnect_user("alice").await.expect("disconnect");
    assert_eq!(n, 0);
    assert_eq!(rec.disconnects.lock().as_slice(), ["alice".to_string()]);

    idempotency(&*engine, &rec).await;
}

/// The conformance block of idempotency keys: a repeat of a key on a channel within the
/// window publishes nothing (no delivery, no history entry) and answers the first offset
/// and epoch; another key, no key or another channel publishes; concurrent repeats publish
/// once; after the window the key publishes again; a window of 0 remembers nothing.
async fn idempotency(engine: &dyn Engine, rec: &Recorder) {
    let ns10 = ns(10);
    let c = ch("conf:idem");
    engine.subscribe_node(&c).await.expect("subscribe node");
    let first = engine
        .publish(&c, keyed(json!("first"), "k1"), &ns10)
        .await
        .expect("publish");
    assert_eq!((first.offset, first.duplicate), (1, false));
    let again = engine
        .publish(&c, keyed(json!("again"), "k1"), &ns10)
        .await
        .expect("repeat");
    assert_eq!((again.offset, again.duplicate), (1, true));
    assert_eq!(again.epoch, first.epoch);
    let other_key = engine
        .publish(&c, keyed(json!("k2"), "k2"), &ns10)
        .await
        .expect("key 2");
    let no_key = engine
        .publish(&c, data(json!("none")), &ns10)
        .await
        .expect("no key");
    assert_eq!((other_key.offset, other_key.duplicate), (2, false));
    assert_eq!((no_key.offset, no_key.duplicate), (3, false));
    let d = ch("conf:idem-other");
    let elsewhere = engine
        .publish(&d, keyed(json!("there"), "k1"), &ns10)
        .await
        .expect("elsewhere");
    assert_eq!(
        (elsewhere.offset, elsewhere.duplicate),
        (1, false),
        "a key is per channel"
    );
    // One history entry and one delivery per publication, with the first data.
    let h = engine.history(&c, None, 10, &ns10).await.expect("history");
    let held: Vec<(u64, &str)> = h
        .publications
        .iter()
        .map(|p| (p.offset, p.data.get()))
        .collect();
    assert_eq!(held, [(1, r#""first""#), (2, r#""k2""#), (3, r#""none""#)]);
    // A last publication: once it is delivered, any stray delivery would have come first.
    engine
        .publish(&c, data(json!("last")), &ns10)
        .await
        .expect("last");
    wait_until("four deliveries", || {
        rec.of("conf:idem").iter().any(|g| g.offset == 4)
    })
    .await;
    let got: Vec<(u64, Json)> = rec
        .of("conf:idem")
        .into_iter()
        .map(|g| (g.offset, g.frame["data"].clone()))
        .collect();
    let want = [(1, "first"), (2, "k2"), (3, "none"), (4, "last")];
    assert_eq!(got, want.map(|(o, d)| (o, json!(d))));
    engine.unsubscribe_node(&c).await.expect("unsubscribe node");

    // Repeats racing each other: one publishes, all answer its offset.
    let race = ch("conf:idem-race");
    let tries = (0..8).map(|i| engine.publish(&race, keyed(json!(i), "once"), &ns10));
    let results: Vec<_> = futures_util::future::join_all(tries)
        .await
        .into_iter()
        .map(|r| r.expect("publish"))
        .collect();
    assert_eq!(results.iter().filter(|r| !r.duplicate).count(), 1);
    assert!(results.iter().all(|r| r.offset == 1), "{results:?}");
    let h = engine
        .history(&race, None, 10, &ns10)
        .await
        .expect("history");
    assert_eq!(h.offset, 1);

    // After the window the key publishes again, and not before. Each try that comes
    // within the window publishes nothing, so the next offset is 2 whenever it comes.
    let short = NamespaceOptions {
        idempotency_window: HumanDuration(Duration::from_millis(200)),
        ..ns(10)
    };
    let w = ch("conf:idem-window");
    let started = Instant::now();
    let first = engine
        .publish(&w, keyed(json!(1), "w"), &short)
        .await
        .expect("publish");
    assert_eq!(first.offset, 1);
    eventually("the window to end", || async {
        let r = engine.publish(&w, keyed(json!(2), "w"), &short).await;
        (!r.expect("publish").duplicate).then_some(())
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "published again after {:?}, within the window",
        started.elapsed()
    );
    assert_eq!(
        engine
            .history(&w, None, 0, &short)
            .await
            .expect("history")
            .offset,
        2
    );

    // A window of 0 remembers no key.
    let off = NamespaceOptions {
        idempotency_window: HumanDuration(Duration::ZERO),
        ..ns(10)
    };
    let z = ch("conf:idem-off");
    for expected in 1..=2 {
        let r = engine
            .publish(&z, keyed(json!(expected), "z"), &off)
            .await
            .expect("publish");
        assert_eq!((r.offset, r.duplicate), (expected, false));
    }
}

fn offsets(p: &[switchboard::protocol::Publication]) -> Vec<u64> {
    p.iter().map(|p| p.offset).collect()
}

#[tokio::test]
async fn conformance_memory() {
    conformance(Arc::new(MemoryEngine::new("node-mem"))).await;
}

#[tokio::test]
async fn conformance_redis() {
    let redis = Redis::start();
    let engine = redis_engine(&redis, &unique_prefix(), "node-a").await;
    conformance(engine).await;
}

// ---------------------------------------------------------------------------------------
// Redis only.

#[tokio::test]
async fn three_nodes_starting_together_migrate_once() {
    let redis = Redis::start();
    let p = unique_prefix();
    let (a, b, c) = tokio::join!(
        RedisEngine::start(options(&redis, &p, "n1")),
        RedisEngine::start(options(&redis, &p, "n2")),
        RedisEngine::start(options(&redis, &p, "n3")),
    );
    let nodes = [a.expect("n1"), b.expect("n2"), c.expect("n3")];
    for n in &nodes {
        wait_until("ready", || n.is_ready()).await;
    }
    let mut con = redis.con().await;
    let schema: String = redis::cmd("GET")
        .arg(format!("{p}:schema"))
        .query_async(&mut con)
        .await
        .expect("schema");
    assert_eq!(schema, SCHEMA_VERSION.to_string());
    let log: Vec<String> = redis::cmd("LRANGE")
        .arg(format!("{p}:migrations"))
        .arg(0)
        .arg(-1)
        .query_async(&mut con)
        .await
        .expect("migration log");
    assert_eq!(log.len(), MIGRATIONS.len(), "each applied once: {log:?}");
    let libs: redis::Value = redis::cmd("FUNCTION")
        .arg("LIST")
        .query_async(&mut con)
        .await
        .expect("list");
    match libs {
        redis::Value::Array(l) => assert_eq!(l.len(), MIGRATIONS.len(), "one library each"),
        other => panic!("unexpected FUNCTION LIST reply {other:?}"),
    }
    // The stand-alone migration agrees and applies nothing more.
    let mut settings = Settings::default();
    settings.engine.redis_url = redis.url();
    settings.engine.prefix = p.clone();
    assert_eq!(migrate(&settings).await, Ok(SCHEMA_VERSION));
}

#[tokio::test]
async fn newer_schema_refuses_start() {
    let redis = Redis::start();
    let p = unique_prefix();
    let mut con = redis.con().await;
    let _: () = redis::cmd("SET")
        .arg(format!("{p}:schema"))
        .arg(SCHEMA_VERSION + 41)
        .query_async(&mut con)
        .await
        .expect("set schema");
    let err = RedisEngine::start(options(&redis, &p, "n1"))
        .await
        .expect_err("refused");
    let too_new =
        |e: &RedisStartError| matches!(e, RedisStartError::Migrate(MigrateError::TooNew { .. }));
    assert!(too_new(&err), "{err:?}");
    let err = err.to_string();
    let newer = (SCHEMA_VERSION + 41).to_string();
    assert!(
        err.contains(&newer) && err.contains(&SCHEMA_VERSION.to_string()),
        "{err}"
    );
    let mut settings = Settings::default();
    settings.engine.redis_url = redis.url();
    settings.engine.prefix = p;
    let err = migrate(&settings).await.expect_err("refused");
    assert!(too_new(&err), "{err:?}");
    let err = err.to_string();
    assert!(err.contains(&newer), "{err}");
}

#[tokio::test]
async fn unreachable_redis_starts_not_ready_then_connects() {
    let mut redis = Redis::start();
    let p = unique_prefix();
    redis.kill();
    let engine = RedisEngine::start(options(&redis, &p, "n1"))
        .await
        .expect("starts anyway");
    assert!(!engine.is_ready());
    let started = Instant::now();
    let err = engine
        .publish(&ch("x"), data(serde_json::json!(1)), &ns(10))
        .await
        .expect_err("unavailable");
    assert!(matches!(err, EngineError::Unavailable(_)));
    assert!(started.elapsed() < Duration::from_secs(2), "fails fast");
    redis.start_again();
    wait_until("ready after redis appears", || engine.is_ready()).await;
    let r = engine
        .publish(&ch("x"), data(serde_json::json!(1)), &ns(10))
        .await
        .expect("publish");
    assert_eq!(r.offset, 1);
}

#[tokio::test]
async fn redis_restarted_empty_recovers_with_a_new_epoch() {
    let mut redis = Redis::start();
    let p = unique_prefix();
    let engine = redis_engine(&redis, &p, "n1").await;
    let rec = Arc::new(Recorder::default());
    engine.set_handler(rec.clone());
    let c = ch("room");
    engine.subscribe_node(&c).await.expect("subscribe");
    let first = engine
        .publish(&c, data(serde_json::json!(1)), &ns(10))
        .await
        .expect("publish");
    engine
        .publish(&c, data(serde_json::json!(2)), &ns(10))
        .await
        .expect("publish");
    wait_until("two publications", || rec.of("room").len() == 2).await;

    redis.kill();
    wait_until("not ready", || !engine.is_ready()).await;
    let started = Instant::now();
    let err = engine
        .publish(&c, data(serde_json::json!(3)), &ns(10))
        .await;
    assert!(matches!(err, Err(EngineError::Unavailable(_))), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "fails fast");

    redis.restart();
    wait_until("ready again", || engine.is_ready()).await;
    let again = engine
        .publish(&c, data(serde_json::json!(4)), &ns(10))
        .await
        .expect("publish");
    assert_eq!(again.offset, 1, "offsets restart");
    assert_ne!(again.epoch, first.epoch, "in a new epoch");
    wait_until("publication after restart", || rec.of("room").len() == 3).await;
    let got = rec.of("room");
    assert_eq!((got[2].offset, got[2].epoch.as_str()), (1, &*again.epoch));
    // The node was told of the new epoch when it caught up, before that publication.
    assert_eq!(
        rec.resets.lock().clone(),
        vec![("room".to_string(), again.epoch.to_string())]
    );
    let mut con = redis.con().await;
    let schema: Option<String> = redis::cmd("GET")
        .arg(format!("{p}:schema"))
        .query_async(&mut con)
        .await
        .expect("get");
    assert_eq!(
        schema,
        Some(SCHEMA_VERSION.to_string()),
        "migrations re-applied"
    );
}

#[tokio::test]
async fn function_flushed_is_reloaded_on_publish() {
    let redis = Redis::start();
    let engine = redis_engine(&redis, &unique_prefix(), "n1").await;
    let mut con = redis.con().await;
    let _: () = redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async(&mut con)
        .await
        .expect("flush");
    let r = engine
        .publish(&ch("x"), data(serde_json::json!(1)), &ns(10))
        .await
        .expect("publish");
    assert_eq!(r.offset, 1);
}

#[tokio::test]
async fn publications_cross_nodes_and_gaps_are_filled_from_history() {
    let redis = Redis::start();
    let p = unique_prefix();
    let a = redis_engine(&redis, &p, "na").await;
    let b = redis_engine(&redis, &p, "nb").await;
    let rec = Arc::new(Recorder::default());
    b.set_handler(rec.clone());
    let c = ch("chat:gap");
    b.subscribe_node(&c).await.expect("subscribe");
    let r1 = a
        .publish(&c, data(serde_json::json!(1)), &ns(10))
        .await
        .expect("publish");
    wait_until("first", || rec.of("chat:gap").len() == 1).await;

    // Offsets 2 and 3 are assigned and stored but their pub/sub messages are lost.
    let mut con = redis.con().await;
    for i in 2..=3 {
        raw_publish(&mut con, &p, "chat:gap", i, "nowhere").await;
    }
    a.publish(&c, data(serde_json::json!(4)), &ns(10))
        .await
        .expect("publish");
    wait_until("gap filled", || rec.of("chat:gap").len() == 4).await;
    let got = rec.of("chat:gap");
    assert_eq!(
        got.iter().map(|g| g.offset).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(got[2].frame["data"], 3);
    assert!(got.iter().all(|g| g.epoch == *r1.epoch));
}

#[tokio::test]
async fn presence_counts_and_disconnects_span_nodes() {
    let redis = Redis::start();
    let p = unique_prefix();
    let a = redis_engine(&redis, &p, "na").await;
    let b = redis_engine(&redis, &p, "nb").await;
    let (ra, rb) = (Recorder::with_sessions(2), Recorder::with_sessions(3));
    a.set_handler(ra.clone());
    b.set_handler(rb.clone());

    // Disconnect reaches every node and sums their answers.
    let n = a.disconnect_user("mallory").await.expect("disconnect");
    assert_eq!(n, 5);
    assert_eq!(rb.disconnects.lock().as_slice(), ["mallory".to_string()]);

    // Channel counts add up across live nodes.
    b.set_local_counts(vec![("x".into(), 3), ("y".into(), 1)]);
    eventually("b's counts", || async {
        let counts = a.channels(vec![("x".into(), 2)]).await.ok();
        (counts == Some(vec![("x".to_string(), 5), ("y".to_string(), 1)])).then_some(())
    })
    .await;

    // Presence from both nodes; a node that goes away takes its entries with it.
    let c = ch("room:p");
    a.presence_add(&c, &info("ca", "alice"), &ns(10))
        .await
        .expect("add");
    b.presence_add(&c, &info("cb", "bob"), &ns(10))
        .await
        .expect("add");
    let list = a.presence(&c).await.expect("presence");
    let nodes: Vec<(&str, &str)> = list
        .iter()
        .map(|e| (e.client.as_str(), e.node.as_str()))
        .collect();
    assert_eq!(nodes, vec![("ca", "na"), ("cb", "nb")]);
    b.shutdown();
    drop(b);
    eventually("b's presence expires", || async {
        (a.presence(&c).await.map(|l| l.len()).ok() == Some(1)).then_some(())
    })
    .await;
    // ...and so do its counts, while a's own entry is still refreshed.
    eventually("b's counts expire", || async {
        let counts = a.channels(vec![("x".into(), 2)]).await.ok();
        (counts == Some(vec![("x".to_string(), 2)])).then_some(())
    })
    .await;
    assert_eq!(a.presence(&c).await.expect("presence")[0].client, "ca");
}

#[tokio::test]
async fn subscription_resumes_after_restart_across_nodes() {
    let mut redis = Redis::start();
    let p = unique_prefix();
    let a = redis_engine(&redis, &p, "na").await;
    let b = redis_engine(&redis, &p, "nb").await;
    let rec = Arc::new(Recorder::default());
    b.set_handler(rec.clone());
    let c = ch("resume");
    b.subscribe_node(&c).await.expect("subscribe");
    a.publish(&c, data(serde_json::json!(1)), &ns(10))
        .await
        .expect("publish");
    wait_until("first", || rec.of("resume").len() == 1).await;
    redis.restart();
    wait_until("both ready", || a.is_ready() && b.is_ready()).await;
    // a may still hold its dead connection for one command; the caller would retry.
    eventually("publish works again", || async {
        a.publish(&c, data(serde_json::json!(2)), &ns(10))
            .await
            .ok()
    })
    .await;
    wait_until("publication in the new epoch", || {
        rec.of("resume").len() >= 2
    })
    .await;
    let got = rec.of("resume");
    assert_eq!(got[1].offset, 1);
    assert_ne!(got[1].epoch, got[0].epoch);
}

// ---------------------------------------------------------------------------------------
// Two real nodes (in-process applications) sharing one Redis.

/// A node of its own in this process, on the Redis engine.
async fn node(redis: &Redis, prefix: &str, node: &str) -> App {
    spawn_app_in_process(&[
        ("server.workers", "1"),
        ("server.broker_shards", "1"),
        ("server.node_id", node),
        ("engine.kind", "redis"),
        ("engine.redis_url", &redis.url()),
        ("engine.prefix", prefix),
        ("api.keys", "k"),
    ])
    .await
}

#[actix_web::test]
async fn two_nodes_deliver_across_redis() {
    let redis = Redis::start();
    let p = unique_prefix();
    let n1 = node(&redis, &p, "n1").await;
    let n2 = node(&redis, &p, "n2").await;

    let mut sub = n1.client().await;
    let r = sub
        .call(serde_json::json!({"type":"subscribe","id":1,"channel":"chat:x"}))
        .await;
    assert_eq!(
        (r["type"].as_str(), r["offset"].as_u64()),
        (Some("subscribed"), Some(0)),
        "{r}"
    );
    let epoch = r["epoch"].as_str().expect("epoch").to_string();

    let mut publisher = n2.client().await;
    for i in 1..=5 {
        let r = publisher
            .call(serde_json::json!({"type":"publish","id":i,"channel":"chat:x","data":{"i":i}}))
            .await;
        assert_eq!(
            (r["type"].as_str(), r["offset"].as_u64()),
            (Some("published"), Some(i)),
            "{r}"
        );
        assert_eq!(
            r["epoch"],
            epoch.as_str(),
            "the epoch given at subscribe time"
        );
    }
    for i in 1..=5u64 {
        let m = sub.recv().await;
        assert_eq!(m["type"], "message", "{m}");
        assert_eq!(
            (m["offset"].as_u64(), m["data"]["i"].as_u64()),
            (Some(i), Some(i)),
            "{m}"
        );
    }

    // Recovery on the other node, from offset 2.
    let mut late = n2.client().await;
    let r = late
        .call(serde_json::json!({"type":"subscribe","id":9,"channel":"chat:x","since":{"offset":2,"epoch":epoch}}))
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(
        r["publications"].as_array().map(|a| a.len()),
        Some(3),
        "{r}"
    );

    n1.shutdown();
    n2.shutdown();
}

#[tokio::test]
async fn reconnect_catches_up_from_history() {
    let redis = Redis::start();
    let p = unique_prefix();
    let b = redis_engine(&redis, &p, "nb").await;
    let rec = Arc::new(Recorder::default());
    b.set_handler(rec.clone());
    let c = ch("catchup");
    let live = format!("{p}:ch:{{catchup}}");
    b.subscribe_node(&c).await.expect("subscribe");
    b.publish(&c, data(serde_json::json!(1)), &ns(10))
        .await
        .expect("publish");
    wait_until("first", || rec.of("catchup").len() == 1).await;

    // Keep the node from coming back, then cut its pub/sub connection: Redis now asks new
    // connections for a password, which the node does not have (connections already open,
    // like the test's own and the node's command connection, stay in).
    let mut con = redis.con().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("catch-up-gap")
        .query_async(&mut con)
        .await
        .expect("set a password");
    let _: redis::Value = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut con)
        .await
        .expect("client kill");
    wait_until("the node sees its subscription lost", || !b.is_ready()).await;
    let listeners: (String, u64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(&live)
        .query_async(&mut con)
        .await
        .expect("numsub");
    assert_eq!(listeners.1, 0, "nobody hears the channel during the gap");

    // Published during the gap, on the live channel as another node would: nobody hears
    // them, so they can only reach the node from history.
    for i in 2..=4 {
        raw_publish(&mut con, &p, "catchup", i, &live).await;
    }
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("")
        .query_async(&mut con)
        .await
        .expect("clear the password");
    wait_until("ready again", || b.is_ready()).await;
    wait_until("caught up", || rec.of("catchup").len() >= 4).await;
    // Then live again: one more publication, after which nothing may have come twice.
    b.publish(&c, data(serde_json::json!(5)), &ns(10))
        .await
        .expect("publish after the gap");
    wait_until("live after the gap", || {
        rec.of("catchup").iter().any(|g| g.offset == 5)
    })
    .await;
    let got = rec.of("catchup");
    assert_eq!(
        got.iter().map(|g| g.offset).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5],
        "recovered in order, no gap, no duplicate"
    );
    assert_eq!(
        got.iter()
            .map(|g| g.frame["data"].clone())
            .collect::<Vec<_>>(),
        (1..=5).map(|i| serde_json::json!(i)).collect::<Vec<_>>()
    );
    assert!(got.iter().all(|g| g.epoch == got[0].epoch), "one epoch");
    assert!(
        rec.resets.lock().is_empty(),
        "no new epoch: {:?}",
        rec.resets.lock()
    );
}

/// Publishes `{"data":i}` to `channel` by calling the server-side function directly, as a
/// node would, with the pub/sub notice sent to `notify` ("nowhere": nobody hears it).
async fn raw_publish(
    con: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    channel: &str,
    i: u64,
    notify: &str,
) {
    let _: redis::Value = redis::cmd("FCALL")
        .arg("switchboard_v1_publish")
        .arg(2)
        .arg(format!("{prefix}:meta:{{{channel}}}"))
        .arg(format!("{prefix}:history:{{{channel}}}"))
        .arg("unused")
        .arg(format!(r#"{{"data":{i}}}"#))
        .arg(10)
        .arg(60_000)
        .arg(120_000)
        .arg(notify)
        .query_async(con)
        .await
        .expect("raw publish");
}
