//! Giving memory back after a burst: the node's long-lived maps and queues (the broker's
//! channels and subscribers, the engines' channel state and presence, the registry) keep
//! the capacity of their biggest moment unless told otherwise, so a node that once held
//! 200,000 subscriptions kept their tables after every one of them closed. Each owner
//! calls [`Shrink::shrink_when_sparse`] after it removes entries; a leaf, used by all.
//! Also the [`ThreadHook`] the binary hands `startup` to run on each of the node's threads
//! (the allocator keeps a cache per thread that only that thread can empty).
//!
//! A collection shrinks only once it is mostly empty (fewer entries than a quarter of its
//! capacity), and then to twice its size: it must lose half its entries again before the
//! next shrink, or double before it grows, so churn around any size costs amortised O(1)
//! per change and never rehashes on every removal.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hash};
use std::time::Duration;

/// Below this capacity a collection is left alone: a few hundred bytes are not worth a
/// rehash, and small maps that come and go (one channel's subscribers) would churn.
const MIN_CAPACITY: usize = 64;

/// True when a collection of `len` entries in `capacity` places should shrink.
fn sparse(len: usize, capacity: usize) -> bool {
    capacity >= MIN_CAPACITY && len < capacity / 4
}

/// A collection that can hand back the capacity it no longer uses.
pub trait Shrink {
    /// Shrinks to twice the current size when under a quarter of the capacity is used.
    fn shrink_when_sparse(&mut self);
}

impl<K: Eq + Hash, V, S: BuildHasher> Shrink for HashMap<K, V, S> {
    fn shrink_when_sparse(&mut self) {
        if sparse(self.len(), self.capacity()) {
            self.shrink_to(self.len() * 2);
        }
    }
}

impl<K: Eq + Hash, S: BuildHasher> Shrink for HashSet<K, S> {
    fn shrink_when_sparse(&mut self) {
        if sparse(self.len(), self.capacity()) {
            self.shrink_to(self.len() * 2);
        }
    }
}

impl<T> Shrink for Vec<T> {
    fn shrink_when_sparse(&mut self) {
        if sparse(self.len(), self.capacity()) {
            self.shrink_to(self.len() * 2);
        }
    }
}

impl<T> Shrink for VecDeque<T> {
    fn shrink_when_sparse(&mut self) {
        if sparse(self.len(), self.capacity()) {
            self.shrink_to(self.len() * 2);
        }
    }
}

/// What the binary runs on every thread of the node (HTTP workers, the broker's own threads,
/// the main thread) every [`THREAD_HOOK_PERIOD`]: jemalloc's thread caches are emptied
/// only by their own thread, as it allocates, so an idle node kept each worker's cache of
/// a burst's freed objects, and the pages they sit on, for good. The library knows no
/// allocator: the binary chooses it and says what to run.
pub type ThreadHook = fn();

/// How often a [`ThreadHook`] runs: rare enough to cost nothing under load, soon enough
/// for memory to be back well within a minute.
pub const THREAD_HOOK_PERIOD: Duration = Duration::from_secs(5);

/// Runs `hook` every [`THREAD_HOOK_PERIOD`] for as long as it is polled: spawned on each
/// thread's runtime, it ends with it.
pub async fn thread_hook_ticker(hook: ThreadHook) {
    let mut tick = tokio::time::interval(THREAD_HOOK_PERIOD);
    loop {
        tick.tick().await;
        hook();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_shrinks_once_mostly_empty_and_not_before() {
        let mut m: HashMap<u32, u32> = (0..10_000).map(|i| (i, i)).collect();
        let peak = m.capacity();
        // Down to a quarter of the capacity: not shrunk (hashbrown's `capacity` drifts
        // down a little as removals leave tombstones, but no rehash halves it).
        let quarter = (peak / 4) as u32;
        for i in 0..10_000 - quarter {
            m.remove(&i);
            m.shrink_when_sparse();
        }
        assert!(m.capacity() > peak / 2, "{} of {peak}", m.capacity());
        for i in 10_000 - quarter..9_990 {
            m.remove(&i);
            m.shrink_when_sparse();
        }
        assert_eq!(m.len(), 10);
        assert!(m.capacity() < MIN_CAPACITY * 4, "{}", m.capacity());
        assert!((9_990..10_000).all(|i| m[&i] == i));
    }

    #[test]
    fn churn_at_one_size_does_not_shrink_every_time() {
        let mut v: Vec<u32> = Vec::with_capacity(4096);
        v.extend(0..100);
        v.shrink_when_sparse();
        let after = v.capacity();
        assert!((200..4096).contains(&after), "{after}");
        // Removing and adding one entry at a time around 100 entries never shrinks again.
        for i in 0..10_000 {
            v.pop();
            v.shrink_when_sparse();
            v.push(i);
            assert_eq!(v.capacity(), after);
        }
    }

    #[test]
    fn small_collections_are_left_alone() {
        let mut q: VecDeque<u8> = VecDeque::with_capacity(32);
        q.push_back(1);
        q.shrink_when_sparse();
        assert!(q.capacity() >= 32);
        let mut s: HashSet<u8> = HashSet::with_capacity(1000);
        s.shrink_when_sparse();
        assert!(s.capacity() < 1000);
    }
}
