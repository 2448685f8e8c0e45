//! Several real `switchboard` processes sharing one real Redis (started per test on a free
//! port): one order and one set of offsets across nodes, recovery on another node after a
//! SIGKILL, a Redis outage mid-traffic, and nodes starting together on an empty Redis (the
//! migration they applied once is read back from Redis); plus three in-process nodes in one
//! test process sharing presence, join/leave and an operator disconnect.

mod common;

use common::app::run_command;
use common::{eventually, spawn_app, spawn_app_in_process, unique_prefix, App, Client, Redis};
use serde_json::{json, Value};
use switchboard::engine::redis::{MIGRATIONS, SCHEMA_VERSION};

const KEY: &str = "cluster-key";

fn node(redis: &Redis, prefix: &str, name: &str) -> App {
    spawn_app(&[
        ("engine.kind", "redis"),
        ("engine.redis_url", &redis.url()),
        ("engine.prefix", prefix),
        ("server.node_id", name),
        ("api.keys", KEY),
        ("limits.client_publish_rate", "100000"),
        ("channels.history_size", "1000"),
    ])
}

/// Nodes "a" and "b" on one fresh prefix of `redis`, both ready.
async fn two_ready_nodes(redis: &Redis) -> (App, App) {
    let prefix = unique_prefix();
    let a = node(redis, &prefix, "a");
    let b = node(redis, &prefix, "b");
    ready(&a).await;
    ready(&b).await;
    (a, b)
}

async fn ready(s: &App) {
    s.wait_ready(200).await;
}

/// Reads `n` messages of `channel` and returns (offset, data) pairs.
async fn read_messages(c: &mut Client, n: usize) -> Vec<(u64, Value)> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let m = c.recv().await;
        if m["type"] == "message" {
            got.push((m["offset"].as_u64().unwrap(), m["data"].clone()));
        }
    }
    got
}

#[tokio::test]
async fn every_node_sees_one_order_and_one_set_of_offsets() {
    let redis = Redis::start();
    let prefix = unique_prefix();
    let nodes: Vec<App> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| node(&redis, &prefix, n))
        .collect();
    for n in &nodes {
        ready(n).await;
    }
    let mut subs = Vec::new();
    for n in &nodes {
        for _ in 0..2 {
            let mut c = n.client().await;
            c.subscribe("room").await;
            subs.push(c);
        }
    }
    const PER_NODE: usize = 100;
    let mut publishers = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let url = n.ws_url();
        publishers.push(tokio::spawn(async move {
            let mut p = Client::connect(&url, &[]).await;
            for k in 0..PER_NODE {
                p.send(json!({"type":"publish","channel":"room","data":{"node":i,"k":k}}))
                    .await;
            }
            let mut offsets = Vec::new();
            for _ in 0..PER_NODE {
                let r = p.recv().await;
                assert_eq!(r["type"], "published", "{r}");
                offsets.push(r["offset"].as_u64().unwrap());
            }
            offsets
        }));
    }
    let mut all_offsets = Vec::new();
    for p in publishers {
        let offsets = p.await.unwrap();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "one connection's publications keep their order"
        );
        all_offsets.extend(offsets);
    }
    all_offsets.sort();
    assert_eq!(all_offsets, (1..=(3 * PER_NODE) as u64).collect::<Vec<_>>());
    let mut sequences = Vec::new();
    for c in subs.iter_mut() {
        let got = read_messages(c, 3 * PER_NODE).await;
        assert_eq!(
            got.iter().map(|g| g.0).collect::<Vec<_>>(),
            (1..=(3 * PER_NODE) as u64).collect::<Vec<_>>()
        );
        sequences.push(got);
    }
    assert!(
        sequences.windows(2).all(|w| w[0] == w[1]),
        "every subscriber on every node saw the same sequence"
    );
    // The API counts subscribers across the cluster, from any node.
    let counted = eventually("cluster-wide channel counts", || async {
        let (_, r) = nodes[0].api("GET", "/api/channels", KEY, None).await;
        (r["channels"] == json!([{"channel":"room","subscribers":6}])).then_some(r)
    })
    .await;
    assert_eq!(counted["channels"][0]["subscribers"], 6);
}

#[tokio::test]
async fn a_killed_node_s_subscriber_recovers_on_another_node() {
    let redis = Redis::start();
    let (a, b) = two_ready_nodes(&redis).await;
    let mut sub = a.client().await;
    let r = sub.subscribe("feed").await;
    let epoch = r["epoch"].as_str().unwrap().to_string();
    let mut publ = b.client().await;
    for i in 1..=10 {
        publ.call(json!({"type":"publish","channel":"feed","data":i}))
            .await;
    }
    let got = read_messages(&mut sub, 10).await;
    let last = got.last().unwrap().0;
    assert_eq!(last, 10);
    a.signal("KILL");
    // Publications continue while the subscriber is away.
    for i in 11..=25 {
        publ.call(json!({"type":"publish","channel":"feed","data":i}))
            .await;
    }
    let mut again = b.client().await;
    let r = again
        .call(json!({"type":"subscribe","channel":"feed","since":{"offset":last,"epoch":epoch}}))
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    let offs: Vec<u64> = r["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offs, (11..=25).collect::<Vec<u64>>());
    publ.call(json!({"type":"publish","channel":"feed","data":26}))
        .await;
    assert_eq!(
        read_messages(&mut again, 1).await[0].0,
        26,
        "live traffic continues with no gap"
    );
}

#[tokio::test]
async fn redis_outage_mid_traffic() {
    let mut redis = Redis::start();
    let (a, b) = two_ready_nodes(&redis).await;
    let mut sub = a.client().await;
    let first = sub.subscribe("live").await;
    let old_epoch = first["epoch"].as_str().unwrap().to_string();
    let mut publ = b.client().await;
    publ.call(json!({"type":"publish","channel":"live","data":1}))
        .await;
    assert_eq!(read_messages(&mut sub, 1).await[0].0, 1);

    redis.kill();
    a.wait_ready(503).await;
    b.wait_ready(503).await;
    let r = publ
        .call(json!({"type":"publish","id":1,"channel":"live","data":2}))
        .await;
    assert_eq!(
        (r["type"].as_str(), r["code"].as_str()),
        (Some("error"), Some("unavailable")),
        "{r}"
    );
    let (status, _) = b
        .api(
            "POST",
            "/api/publish",
            KEY,
            Some(json!({"channel":"live","data":2})),
        )
        .await;
    assert_eq!(status, 503);
    // Clients stay connected and local work goes on.
    assert_eq!(sub.call(json!({"type":"ping"})).await["type"], "pong");

    redis.restart();
    ready(&a).await;
    ready(&b).await;
    // Redis came back empty: the channel opens a new epoch and its live subscribers are told
    // at once, before anything is published in it.
    let reset = sub.recv_type("reset").await;
    let new_epoch = reset["epoch"].as_str().unwrap().to_string();
    assert_ne!(new_epoch, old_epoch);
    let r = publ
        .call(json!({"type":"publish","channel":"live","data":3}))
        .await;
    assert_eq!(r["type"], "published", "{r}");
    assert_eq!(
        (r["offset"].as_u64(), r["epoch"].as_str()),
        (Some(1), Some(new_epoch.as_str()))
    );
    let m = sub.recv().await;
    assert_eq!(m["type"], "message", "no second reset: {m}");
    assert_eq!(
        (m["offset"].as_u64(), m["data"].clone()),
        (Some(1), json!(3))
    );
    // An old position is not recovered in the new epoch.
    let mut late = b.client().await;
    let r = late
        .call(json!({"type":"subscribe","channel":"live","since":{"offset":1,"epoch":old_epoch}}))
        .await;
    assert_eq!(r["recovered"], false);
}

#[tokio::test]
async fn three_nodes_start_together_on_an_empty_redis() {
    let redis = Redis::start();
    let prefix = unique_prefix();
    let handles: Vec<_> = ["x", "y", "z"]
        .iter()
        .map(|n| {
            let url = redis.url();
            let prefix = prefix.clone();
            let n = n.to_string();
            std::thread::spawn(move || {
                spawn_app(&[
                    ("engine.kind", "redis"),
                    ("engine.redis_url", &url),
                    ("engine.prefix", &prefix),
                    ("server.node_id", &n),
                ])
            })
        })
        .collect();
    let nodes: Vec<App> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for n in &nodes {
        ready(n).await;
    }
    // Each application of a migration is recorded in Redis, with the node that applied it.
    let applied = redis.list(&format!("{prefix}:migrations")).await;
    assert_eq!(
        applied.len(),
        MIGRATIONS.len(),
        "each migration applied once: {applied:?}"
    );
    assert!(
        ["x", "y", "z"]
            .iter()
            .any(|n| applied.iter().all(|a| a.ends_with(&format!("node={n}")))),
        "exactly one node applied the schema: {applied:?}"
    );
    assert_eq!(
        redis.get(&format!("{prefix}:schema")).await,
        Some(SCHEMA_VERSION.to_string())
    );
    let mut c = nodes[2].client().await;
    c.subscribe("s").await;
    let mut p = nodes[0].client().await;
    p.call(json!({"type":"publish","channel":"s","data":"hello"}))
        .await;
    assert_eq!(c.recv_type("message").await["data"], "hello");
}

#[tokio::test]
async fn migrate_command_and_newer_schema_refusal() {
    let redis = Redis::start();
    let prefix = unique_prefix();
    let url = redis.url();
    let overrides = [
        ("engine.kind", "redis"),
        ("engine.redis_url", url.as_str()),
        ("engine.prefix", prefix.as_str()),
    ];
    let migrations = format!("{prefix}:migrations");
    let first = run_command(&["migrate"], &overrides);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(
        redis.list(&migrations).await.len(),
        MIGRATIONS.len(),
        "applied"
    );
    let second = run_command(&["migrate"], &overrides);
    assert!(second.status.success());
    assert_eq!(
        redis.list(&migrations).await.len(),
        MIGRATIONS.len(),
        "applied once"
    );
    assert_eq!(
        redis.get(&format!("{prefix}:schema")).await,
        Some(SCHEMA_VERSION.to_string())
    );
    // A schema from a newer release: the node refuses to start, naming both versions.
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}:schema"))
        .arg(999)
        .query_async(&mut redis.con().await)
        .await
        .expect("SET");
    // Its refusal is only seen as an exit code and the message it prints.
    let refused = common::try_spawn_app(&[], &overrides);
    let (code, log) = match refused {
        Ok(_) => panic!("started against a newer schema"),
        Err(e) => e,
    };
    // Exit code 3: a schema this build must not touch, not a configuration error (2).
    assert_eq!(code, Some(3), "{log}");
    assert!(log.contains("999"), "{log}");
    let refused = run_command(&["migrate"], &overrides);
    assert_eq!(refused.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("999"));
    assert_eq!(
        redis.get(&format!("{prefix}:schema")).await,
        Some("999".into()),
        "left as found"
    );
}

#[tokio::test]
async fn migrate_exit_codes_tell_an_unreachable_redis_from_a_bad_url() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let out = run_command(
        &["migrate"],
        &[("engine.kind", "redis"), ("engine.redis_url", &url)],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("cannot reach redis"), "{err}");
    let out = run_command(
        &["migrate"],
        &[
            ("engine.kind", "redis"),
            ("engine.redis_url", "http://nope"),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("engine.redis_url"), "{err}");
}

/// Starts an in-process node (the cluster of one test process).
async fn app_node(redis: &Redis, prefix: &str, name: &str) -> App {
    spawn_app_in_process(&[
        ("server.workers", "1"),
        ("server.broker_shards", "1"),
        ("engine.kind", "redis"),
        ("engine.redis_url", &redis.url()),
        ("engine.prefix", prefix),
        ("server.node_id", name),
        ("api.keys", KEY),
        ("auth.hmac_secret", "cluster-secret"),
        ("namespaces.room.join_leave", "true"),
    ])
    .await
}

#[actix_web::test]
async fn three_in_process_nodes_share_presence_join_leave_and_disconnect() {
    let redis = Redis::start();
    let prefix = unique_prefix();
    let mut nodes = Vec::new();
    for name in ["p1", "p2", "p3"] {
        nodes.push(app_node(&redis, &prefix, name).await);
    }
    for n in &nodes {
        n.wait_ready(200).await;
    }
    let url = |i: usize| nodes[i].ws_url();
    let tok = common::token(
        "cluster-secret",
        json!({"sub":"ivy","exp":common::now()+60}),
    );
    // One session of ivy on every node, all in room:1; a watcher on node 1.
    let mut watcher = Client::connect(&url(0), &[]).await;
    watcher.subscribe("room:1").await;
    assert_eq!(
        watcher.recv_type("join").await["info"]["client"],
        watcher.id().as_str()
    );
    let mut ivy = Vec::new();
    for i in 0..3 {
        let mut c = Client::connect(&format!("{}?token={tok}", url(i)), &[]).await;
        c.subscribe("room:1").await;
        let join = watcher.recv_type("join").await;
        assert_eq!(
            join["info"],
            json!({"client": c.id(), "user": "ivy"}),
            "join crosses nodes"
        );
        ivy.push(c);
    }
    let (status, p) = nodes[2].api("GET", "/api/presence/room:1", KEY, None).await;
    assert_eq!(status, 200);
    let mut seen_nodes: Vec<String> = p["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["node"].as_str().unwrap().to_string())
        .collect();
    seen_nodes.sort();
    assert_eq!(seen_nodes, vec!["p1", "p1", "p2", "p3"], "{p}");
    // An operator disconnect from node 2 reaches ivy's sessions on every node.
    let (status, r) = nodes[1]
        .api("POST", "/api/disconnect", KEY, Some(json!({"user":"ivy"})))
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r, json!({"disconnected": 3}));
    for c in ivy.iter_mut() {
        c.expect_disconnect(4003).await;
    }
    for _ in 0..3 {
        assert_eq!(watcher.recv_type("leave").await["info"]["user"], "ivy");
    }
    for n in &nodes {
        n.shutdown();
    }
}

#[tokio::test]
async fn quick_unsubscribe_resubscribe_keeps_the_node_subscribed() {
    let redis = Redis::start();
    let (a, b) = two_ready_nodes(&redis).await;
    let mut c = a.client().await;
    // Back-to-back subscribe/unsubscribe without waiting: the node's own Redis subscription
    // must end up present, whatever order the engine calls would have raced in.
    for _ in 0..20 {
        c.send(json!({"type":"subscribe","channel":"flip"})).await;
        c.send(json!({"type":"unsubscribe","channel":"flip"})).await;
    }
    c.send(json!({"type":"subscribe","id":"last","channel":"flip"}))
        .await;
    loop {
        let r = c.recv().await;
        if r["type"] == "subscribed" && r["id"] == "last" {
            break;
        }
    }
    let mut p = b.client().await;
    p.call(json!({"type":"publish","channel":"flip","data":"after"}))
        .await;
    let m = c.recv_type("message").await;
    assert_eq!(m["data"], "after");
}
