//! The Redis Cluster tests: a real 6-node Redis Cluster per test ([`common::RedisCluster`]:
//! 3 primaries, 3 replicas), and the topology changes the cluster engine has to survive
//! (a slot moved with its keys, a manual failover, a killed primary). Each test that changes
//! the topology starts a cluster of its own.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use common::conformance::conformance;
use common::engine::{ch, cluster_engine, data, ns, Recorder};
use common::{eventually, unique_prefix, wait_until, RedisCluster};
use switchboard::engine::redis::RedisEngine;
use switchboard::engine::Engine;

/// The harness alone, no engine: it forms a cluster, moves a slot with its key, fails a
/// primary over and survives a killed one, and reports how long each step took.
#[tokio::test]
async fn harness_forms_moves_and_fails_over() {
    assert_eq!(RedisCluster::slot_of("a"), 15495);
    assert_eq!(RedisCluster::slot_of("b"), 3300);
    assert_eq!(RedisCluster::slot_of("c"), 7365);
    assert_eq!(RedisCluster::slot_of("ch:{b}"), 3300);

    let t = Instant::now();
    let mut cluster = RedisCluster::start().await;
    let formed = t.elapsed();
    assert_eq!(cluster.urls().len(), 6);

    let slot = RedisCluster::slot_of("b");
    let owner = cluster.primary_of_slot(slot).await;
    assert_eq!(
        cluster.cli(owner, &["SET", "k:{b}", "v"]).await.trim(),
        "OK"
    );
    let primaries = cluster.primaries().await;
    assert_eq!(primaries.len(), 3, "{primaries:?}");
    assert!(primaries.contains(&owner));
    let others: Vec<u16> = primaries.into_iter().filter(|&p| p != owner).collect();

    // The slot and its key move; the old owner redirects.
    let t = Instant::now();
    cluster.migrate_slot(slot, others[0]).await;
    let migrated = t.elapsed();
    assert_eq!(cluster.primary_of_slot(slot).await, others[0]);
    assert_eq!(cluster.cli(others[0], &["GET", "k:{b}"]).await.trim(), "v");
    let moved = cluster.cli(owner, &["GET", "k:{b}"]).await;
    assert!(moved.contains("MOVED 3300"), "{moved}");

    // A manual failover of the new owner keeps the key.
    let t = Instant::now();
    let promoted = cluster.failover(others[0]).await;
    let failed_over = t.elapsed();
    assert!(cluster.cli(promoted, &["ROLE"]).await.starts_with("master"));
    let demoted = cluster.cli(others[0], &["ROLE"]).await;
    assert!(
        demoted.starts_with(&format!("slave\n127.0.0.1\n{promoted}\n")),
        "{demoted}"
    );
    assert_eq!(cluster.primary_of_slot(slot).await, promoted);
    assert_eq!(cluster.cli(promoted, &["GET", "k:{b}"]).await.trim(), "v");

    // A killed primary is replaced by its replica.
    let t = Instant::now();
    let successor = cluster.kill_primary(others[1]).await;
    let killed = t.elapsed();
    assert!(cluster
        .cli(successor, &["ROLE"])
        .await
        .starts_with("master"));
    assert!(!cluster.ports().contains(&others[1]));
    for p in cluster.ports() {
        let info = cluster.cli(p, &["CLUSTER", "INFO"]).await;
        assert!(info.contains("cluster_state:ok"), "{p}: {info}");
    }
    let mut now = cluster.primaries().await;
    now.sort_unstable();
    let mut expected = vec![owner, promoted, successor];
    expected.sort_unstable();
    assert_eq!(now, expected);

    eprintln!(
        "redis cluster: start {formed:?}, migrate_slot {migrated:?}, failover {failed_over:?}, \
         kill_primary {killed:?}"
    );
}

// ---------------------------------------------------------------------------------------
// The Redis Cluster engine.

/// Channels named `<base>:<i>` until every primary owns at least `per_shard` of them.
async fn channels_on_every_shard(
    cluster: &RedisCluster,
    base: &str,
    per_shard: usize,
) -> Vec<String> {
    let primaries = cluster.primaries().await;
    let mut by_primary: HashMap<u16, usize> = HashMap::new();
    let mut names = Vec::new();
    for i in 0.. {
        let name = format!("{base}:{i}");
        let owner = cluster.primary_of_slot(RedisCluster::slot_of(&name)).await;
        let n = by_primary.entry(owner).or_default();
        if *n < per_shard {
            *n += 1;
            names.push(name);
        }
        if primaries
            .iter()
            .all(|p| by_primary.get(p).copied().unwrap_or(0) >= per_shard)
        {
            break;
        }
    }
    names
}

#[tokio::test]
async fn conformance_redis_cluster() {
    let cluster = RedisCluster::start().await;
    let engine = cluster_engine(cluster.urls(), &unique_prefix(), "node-c").await;
    conformance(engine).await;
}

/// Two nodes on `cluster`: one whose handler records what it delivers, one to publish from.
async fn subscriber_and_publisher(
    cluster: &RedisCluster,
) -> (Arc<RedisEngine>, Arc<RedisEngine>, Arc<Recorder>) {
    let prefix = unique_prefix();
    let sub = cluster_engine(cluster.urls(), &prefix, "sub").await;
    let publisher = cluster_engine(cluster.urls(), &prefix, "pub").await;
    let rec = Arc::new(Recorder::default());
    sub.set_handler(rec.clone());
    (sub, publisher, rec)
}

/// Publishes `n` publications on each channel, round robin over the engines; answers what
/// was acknowledged per channel: (offset, epoch) in order.
async fn publish_round_robin(
    engines: &[Arc<RedisEngine>],
    channels: &[String],
    from: usize,
    n: usize,
) -> HashMap<String, Vec<(u64, String)>> {
    let ns10 = ns(1000);
    let mut acked: HashMap<String, Vec<(u64, String)>> = HashMap::new();
    for i in from..from + n {
        for (j, c) in channels.iter().enumerate() {
            let e = &engines[(i + j) % engines.len()];
            if let Ok(r) = e.publish(&ch(c), data(json!({ "i": i })), &ns10).await {
                acked
                    .entry(c.clone())
                    .or_default()
                    .push((r.offset, r.epoch.to_string()));
            }
        }
    }
    acked
}

/// The acknowledged publications of one channel over several rounds, in order.
fn acked_on(rounds: &[&HashMap<String, Vec<(u64, String)>>], c: &str) -> Vec<(u64, String)> {
    rounds
        .iter()
        .flat_map(|r| r.get(c).cloned().unwrap_or_default())
        .collect()
}

/// Every channel's offsets as a recorder got them: one epoch, 1..=n, in order.
fn assert_in_order(rec: &Recorder, channels: &[String], n: u64, who: &str) {
    for c in channels {
        let got: Vec<u64> = rec.of(c).iter().map(|g| g.offset).collect();
        let want: Vec<u64> = (1..=n).collect();
        assert_eq!(got, want, "{who} on {c}");
    }
}

#[tokio::test]
async fn three_nodes_share_one_order_over_every_shard() {
    let cluster = RedisCluster::start().await;
    let prefix = unique_prefix();
    let mut engines = Vec::new();
    let mut recs = Vec::new();
    for node in ["n1", "n2", "n3"] {
        let e = cluster_engine(cluster.urls(), &prefix, node).await;
        let rec = Arc::new(Recorder::default());
        e.set_handler(rec.clone());
        engines.push(e);
        recs.push(rec);
    }
    let channels = channels_on_every_shard(&cluster, "spread", 2).await;
    for e in &engines {
        for c in &channels {
            e.subscribe_node(&ch(c)).await.expect("subscribe");
        }
    }
    let acked = publish_round_robin(&engines, &channels, 0, 20).await;
    for c in &channels {
        let offsets: Vec<u64> = acked[c].iter().map(|a| a.0).collect();
        assert_eq!(
            offsets,
            (1..=20).collect::<Vec<u64>>(),
            "acknowledged on {c}"
        );
    }
    for (rec, who) in recs.iter().zip(["n1", "n2", "n3"]) {
        wait_until("every publication everywhere", || {
            channels.iter().all(|c| rec.of(c).len() >= 20)
        })
        .await;
        assert_in_order(rec, &channels, 20, who);
    }
    // Counts and presence span nodes: each node counts its subscribers, all see the sum.
    for (e, n) in engines.iter().zip([1usize, 2, 3]) {
        e.set_local_counts(vec![(channels[0].clone(), n)]);
    }
    let all = eventually("cluster-wide counts", || {
        let e = engines[0].clone();
        let c0 = channels[0].clone();
        async move {
            let list = e.channels(vec![(c0.clone(), 1)]).await.ok()?;
            list.iter()
                .any(|(c, n)| *c == c0 && *n == 6)
                .then_some(list)
        }
    })
    .await;
    assert!(all.iter().any(|(c, _)| *c == channels[0]));
}

/// Subscribers on one node, publications from another, while a slot moves to another
/// primary and then a primary hands over to its replica: every acknowledged publication
/// arrives, in order, exactly once.
#[tokio::test]
async fn slot_migration_and_failover_lose_nothing() {
    // The engine's log (RUST_LOG=switchboard=info) shows each subscription moving.
    let _ = env_logger::builder().is_test(true).try_init();
    let cluster = RedisCluster::start().await;
    let (sub, publisher, rec) = subscriber_and_publisher(&cluster).await;
    let channels = channels_on_every_shard(&cluster, "moving", 1).await;
    for c in &channels {
        sub.subscribe_node(&ch(c)).await.expect("subscribe");
    }
    let engines = vec![publisher.clone()];
    let first = publish_round_robin(&engines, &channels, 0, 10).await;

    // Move the first channel's slot to another primary.
    let slot = RedisCluster::slot_of(&channels[0]);
    let from = cluster.primary_of_slot(slot).await;
    let to = *cluster
        .primaries()
        .await
        .iter()
        .find(|p| **p != from)
        .expect("another primary");
    let traffic = {
        let (engines, channels) = (engines.clone(), channels.clone());
        tokio::spawn(async move { publish_round_robin(&engines, &channels, 10, 40).await })
    };
    cluster.migrate_slot(slot, to).await;
    let second = traffic.await.expect("traffic");

    // Then a planned failover of the second channel's primary.
    let primary = cluster
        .primary_of_slot(RedisCluster::slot_of(&channels[1]))
        .await;
    let traffic = {
        let (engines, channels) = (engines.clone(), channels.clone());
        tokio::spawn(async move { publish_round_robin(&engines, &channels, 50, 40).await })
    };
    cluster.failover(primary).await;
    let third = traffic.await.expect("traffic");
    // And some after it all, through the new topology.
    let fourth = publish_round_robin(&engines, &channels, 90, 10).await;

    for c in &channels {
        let acked = acked_on(&[&first, &second, &third, &fourth], c);
        let last = acked.last().expect("some acknowledged").0;
        wait_until("every acknowledged publication", || {
            rec.of(c).last().is_some_and(|g| g.offset >= last)
        })
        .await;
        let got: Vec<u64> = rec.of(c).iter().map(|g| g.offset).collect();
        assert_eq!(
            got,
            (1..=last).collect::<Vec<u64>>(),
            "in order, no gap, no repeat on {c}"
        );
        for (offset, _) in acked {
            assert!(
                got.contains(&offset),
                "acknowledged {offset} delivered on {c}"
            );
        }
        assert!(rec.resets.lock().is_empty(), "no reset: nothing was lost");
    }
    wait_until("ready again", || sub.is_ready() && publisher.is_ready()).await;
}

/// A primary SIGKILLed during traffic: once its replica took over, every subscriber has
/// every acknowledged publication of each channel in order, or an explicit `reset` of the
/// channel followed by its new epoch in order: never a silent gap.
#[tokio::test]
async fn killed_primary_leaves_no_silent_gap() {
    // The engine's log (RUST_LOG=switchboard=info) shows each subscription moving.
    let _ = env_logger::builder().is_test(true).try_init();
    let mut cluster = RedisCluster::start().await;
    let (sub, publisher, rec) = subscriber_and_publisher(&cluster).await;
    let channels = channels_on_every_shard(&cluster, "killed", 1).await;
    for c in &channels {
        sub.subscribe_node(&ch(c)).await.expect("subscribe");
    }
    let engines = vec![publisher.clone()];
    let first = publish_round_robin(&engines, &channels, 0, 10).await;
    let victim = cluster
        .primary_of_slot(RedisCluster::slot_of(&channels[0]))
        .await;
    let traffic = {
        let (engines, channels) = (engines.clone(), channels.clone());
        tokio::spawn(async move { publish_round_robin(&engines, &channels, 10, 30).await })
    };
    // The subscriber's node is not ready while that shard's channels are not served.
    let watch = {
        let sub = sub.clone();
        tokio::spawn(async move {
            loop {
                if !sub.is_ready() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
    };
    cluster.kill_primary(victim).await;
    let second = traffic.await.expect("traffic");
    tokio::time::timeout(common::WAIT, watch)
        .await
        .expect("not ready while a shard was down")
        .expect("watcher");
    wait_until("ready after the failover", || {
        sub.is_ready() && publisher.is_ready()
    })
    .await;
    let third = publish_round_robin(&engines, &channels, 40, 10).await;

    for c in &channels {
        let acked = acked_on(&[&first, &second, &third], c);
        let (last, epoch) = acked
            .last()
            .cloned()
            .expect("acknowledged after the failover");
        wait_until("the last acknowledged publication", || {
            rec.of(c)
                .iter()
                .any(|g| g.offset == last && g.epoch == epoch)
        })
        .await;
        let got = rec.of(c);
        let reset = rec.resets.lock().iter().any(|(name, _)| name == c);
        // Whatever came in the final epoch came in order from its start, with no gap.
        let in_final: Vec<u64> = got
            .iter()
            .filter(|g| g.epoch == epoch)
            .map(|g| g.offset)
            .collect();
        let start = if reset { 1 } else { in_final[0] };
        assert_eq!(
            in_final,
            (start..=last).collect::<Vec<u64>>(),
            "final epoch of {c}"
        );
        if !reset {
            // No reset: one epoch, and every acknowledged publication delivered.
            assert!(got.iter().all(|g| g.epoch == epoch), "one epoch on {c}");
            assert_eq!(start, 1, "from the first on {c}");
            for (offset, e) in &acked {
                assert!(
                    *e == epoch && *offset <= last,
                    "acknowledged {offset} in {e} on {c}"
                );
            }
        }
    }
}

/// A replica that missed its primary's last publications takes over (it was paused while
/// they were made and delivered): the subscriber's node sees the shard behind what it
/// delivered, ends the channel's epoch, and the subscriber gets `reset`, then the new epoch
/// from its first offset.
#[tokio::test]
async fn failover_that_lost_publications_resets() {
    let _ = env_logger::builder().is_test(true).try_init();
    let mut cluster = RedisCluster::start().await;
    let (sub, publisher, rec) = subscriber_and_publisher(&cluster).await;
    let c = "lost:0".to_string();
    sub.subscribe_node(&ch(&c)).await.expect("subscribe");
    let engines = vec![publisher.clone()];
    let channels = vec![c.clone()];
    let victim = cluster.primary_of_slot(RedisCluster::slot_of(&c)).await;
    let replica = cluster.replica_of(victim).await;
    let kept = publish_round_robin(&engines, &channels, 0, 3).await;
    // Those three are on the replica too.
    let synced = cluster.cli(victim, &["WAIT", "1", "5000"]).await;
    assert_eq!(synced.trim(), "1", "the replica acknowledged");
    // Stopped, and cut off: what the primary writes next does not even wait in the
    // replica's socket buffer.
    cluster.pause(replica);
    let killed = cluster
        .cli(victim, &["CLIENT", "KILL", "TYPE", "replica"])
        .await;
    assert_eq!(killed.trim(), "1", "the replica's link cut");
    let lost = publish_round_robin(&engines, &channels, 3, 3).await;
    assert_eq!(
        acked_on(&[&kept, &lost], &c).len(),
        6,
        "all six acknowledged"
    );
    wait_until("six delivered", || rec.of(&c).len() == 6).await;
    let old_epoch = rec.of(&c)[0].epoch.clone();
    cluster.kill_primary_behind(victim, replica).await;

    wait_until("reset", || rec.resets.lock().iter().any(|(n, _)| *n == c)).await;
    let new_epoch = rec.resets.lock()[0].1.clone();
    assert_ne!(new_epoch, old_epoch);
    wait_until("ready again", || sub.is_ready() && publisher.is_ready()).await;
    let after = publish_round_robin(&engines, &channels, 6, 2).await;
    let after = acked_on(&[&after], &c);
    assert_eq!(after, vec![(1, new_epoch.clone()), (2, new_epoch.clone())]);
    wait_until("the new epoch delivered", || rec.of(&c).len() == 8).await;
    let got: Vec<(u64, String)> = rec
        .of(&c)
        .iter()
        .map(|g| (g.offset, g.epoch.clone()))
        .collect();
    assert_eq!(
        &got[6..],
        &after[..],
        "the new epoch from 1, after the reset"
    );
}
