//! The Redis Cluster tests: a real 6-node Redis Cluster per test ([`common::RedisCluster`]:
//! 3 primaries, 3 replicas), and the topology changes the cluster engine has to survive
//! (a slot moved with its keys, a manual failover, a killed primary). Each test that changes
//! the topology starts a cluster of its own.

mod common;

use std::time::Instant;

use common::RedisCluster;

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
