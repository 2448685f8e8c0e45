//! The engine conformance suite: one contract run against every engine (memory, Redis,
//! Redis Cluster), driving the engine directly with a [`Recorder`] as its node. Used by
//! `tests/redis_engine.rs` and `tests/redis_cluster.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytestring::ByteString;
use serde_json::{json, Value as Json};

use super::engine::{ch, data, info, keyed, ns, Recorder};
use super::{eventually, wait_until};
use switchboard::config::{HumanDuration, NamespaceOptions};
use switchboard::engine::{Engine, Publish, NO_EPOCH};
use switchboard::protocol::StreamPosition;

/// The whole engine contract against `engine`: offsets and epochs, history and recovery,
/// trimming, fresh channels, presence, live publications and pushes through the handler,
/// history size 0, disconnects, and idempotency keys.
pub async fn conformance(engine: Arc<dyn Engine>) {
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

pub fn offsets(p: &[switchboard::protocol::Publication]) -> Vec<u64> {
    p.iter().map(|p| p.offset).collect()
}
