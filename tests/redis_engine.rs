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

use common::conformance::conformance;
use common::engine::{ch, data, info, ns, options, redis_engine, Recorder};
use common::{eventually, spawn_app_in_process, unique_prefix, wait_until, App, Redis};
use switchboard::config::Settings;
use switchboard::engine::memory::MemoryEngine;
use switchboard::engine::redis::{
    migrate, MigrateError, RedisEngine, RedisStartError, MIGRATIONS, SCHEMA_VERSION,
};
use switchboard::engine::{Engine, EngineError};

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
