//! The broker: which local sessions are subscribed to which channel, and the only code that
//! fans publications out to them. It is sharded by channel hash into actors, one per HTTP
//! worker thread by default and hosted on it, so fan-out of different channels uses every
//! core and a worker's own sessions reach their shard without a thread hop.
//!
//! Sessions send [`Subscribe`], [`Unsubscribe`] and [`Leave`]; the engine's handler sends
//! [`EnginePublication`] and [`EnginePush`]. A shard asks the engine to subscribe the node to
//! a channel on its first local subscriber and to unsubscribe on its last.
//!
//! Joining races with live traffic, so a new subscriber is held in a joining state that
//! buffers live publications while the node subscription, presence and history reads
//! complete; the `subscribed` reply then goes out first, followed by the buffered
//! publications newer than the reply's offset: no gap, no duplicate, and never a live
//! message before `subscribed`.
//!
//! Fan-out never blocks and never queues without bound: every frame handed to a session is
//! counted in its outbox (`crate::outbox`); a session whose unsent bytes would pass
//! `limits.max_pending_bytes` is evicted from the shard's channels and told to close with
//! 4001, while the other subscribers keep receiving.
//!
//! Files: [`messages`] (what sessions and the engine send to a shard), `handle` (how a
//! shard reaches a session), `shard` (membership, the node's engine subscriptions, and
//! fan-out), `join` (the merge of a joining subscriber's history with live traffic);
//! this file routes each message to its channel's shard and paces publishers.

mod handle;
mod join;
pub mod messages;
mod shard;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix::prelude::*;
use parking_lot::Mutex;

use crate::channel::ChannelName;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::outbox::Pressure;
use crate::shrink::{thread_hook_ticker, ThreadHook};
pub use handle::SessionHandle;
pub use messages::{
    ChannelCounts, EnginePublication, EnginePush, EngineReset, Leave, Pace, Subscribe, Unsubscribe,
};
pub use shard::BrokerShard;

/// How long a publishing session may wait, per publication, for subscribers of the channel
/// that are behind ([`Broker::pace`]).
pub const MAX_STALL: Duration = Duration::from_millis(50);

/// The broker as the rest of the node sees it: routes each message to its channel's shard.
///
/// A shard runs on an HTTP worker's thread when one claims it ([`Broker::host_shard`], called
/// as each worker starts), so sessions of that worker reach it without a thread hop: on one
/// core, a hop per publication and per delivery batch was a context switch each, and those
/// took about 40% of the server's time in the many-channels benchmark (`perf record`).
/// A shard no worker claimed (more shards than workers, or a message before the workers
/// are up) gets an arbiter thread of its own on first use.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<BrokerInner>,
}

struct BrokerInner {
    slots: Vec<OnceLock<Addr<BrokerShard>>>,
    engine: Arc<dyn Engine>,
    metrics: Metrics,
    pressure: Arc<Pressure>,
    /// Dedicated shard threads, stopped when the last broker handle goes away.
    arbiters: Mutex<Vec<ArbiterGuard>>,
    /// Run on each dedicated thread now and then (HTTP workers run their own).
    hook: Option<ThreadHook>,
}

/// Stops a shard's arbiter thread when the broker goes away.
struct ArbiterGuard(Arbiter);

impl Drop for ArbiterGuard {
    fn drop(&mut self) {
        self.0.stop();
    }
}

impl BrokerInner {
    fn new_shard(&self) -> BrokerShard {
        BrokerShard::new(self.engine.clone(), self.metrics.clone())
    }

    fn shard(&self, i: usize) -> &Addr<BrokerShard> {
        self.slots[i].get_or_init(|| {
            let arbiter = Arbiter::new();
            if let Some(hook) = self.hook {
                arbiter.spawn(thread_hook_ticker(hook));
            }
            let shard = self.new_shard();
            let addr = BrokerShard::start_in_arbiter(&arbiter.handle(), move |_| shard);
            self.arbiters.lock().push(ArbiterGuard(arbiter));
            addr
        })
    }
}

impl Broker {
    /// A broker of `shards` shards (at least one); none is started yet. Shards that get a
    /// thread of their own run `hook` there now and then.
    pub fn new(
        shards: usize,
        engine: Arc<dyn Engine>,
        metrics: Metrics,
        hook: Option<ThreadHook>,
    ) -> Broker {
        Broker {
            inner: Arc::new(BrokerInner {
                slots: (0..shards.max(1)).map(|_| OnceLock::new()).collect(),
                engine,
                metrics,
                pressure: Arc::default(),
                arbiters: Mutex::new(Vec::new()),
                hook,
            }),
        }
    }

    /// Starts shard `i` on the current thread's arbiter (an HTTP worker as it starts),
    /// unless it is already running or there is no such shard.
    pub fn host_shard(&self, i: usize) {
        if let Some(slot) = self.inner.slots.get(i) {
            slot.get_or_init(|| {
                let shard = self.inner.new_shard();
                BrokerShard::start_in_arbiter(&Arbiter::current(), move |_| shard)
            });
        }
    }

    fn index(&self, channel: &ChannelName) -> usize {
        let n = self.inner.slots.len();
        if n == 1 {
            return 0;
        }
        let h = foldhash::fast::FixedState::default().hash_one(channel);
        (h as usize) % n
    }

    /// The shard that owns `channel`.
    pub fn shard(&self, channel: &ChannelName) -> &Addr<BrokerShard> {
        self.inner.shard(self.index(channel))
    }

    /// The node's pressure account, shared by every session's outbox.
    pub fn pressure(&self) -> Arc<Pressure> {
        self.inner.pressure.clone()
    }

    /// Backpressure for a publisher: waits while a live local subscriber of `channel` is
    /// more than half full and still reading, at most [`MAX_STALL`]. A publisher paced by
    /// its `published` replies then slows to what the subscribers take, instead of pushing
    /// them all past `limits.max_pending_bytes` (4001). Subscribers that stopped reading
    /// do not hold it back. Costs one atomic load when no session anywhere is behind.
    pub async fn pace(&self, channel: &ChannelName) {
        let pressure = &self.inner.pressure;
        if !pressure.any_behind() {
            return;
        }
        let deadline = tokio::time::Instant::now() + MAX_STALL;
        loop {
            let progress = pressure.progress().notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            let pace = Pace {
                channel: channel.clone(),
            };
            if !self.shard(channel).send(pace).await.unwrap_or(false) {
                return;
            }
            if tokio::time::timeout_at(deadline, progress).await.is_err() {
                return;
            }
        }
    }

    /// Routes a subscribe.
    pub fn subscribe(&self, msg: Subscribe) {
        self.shard(&msg.channel).do_send(msg);
    }

    /// Routes an unsubscribe.
    pub fn unsubscribe(&self, client: Arc<str>, channel: ChannelName) {
        self.shard(&channel)
            .do_send(Unsubscribe { client, channel });
    }

    /// Removes a closing session from all its channels, one message per shard involved.
    pub fn leave(&self, client: &Arc<str>, channels: impl IntoIterator<Item = ChannelName>) {
        let mut per_shard: HashMap<usize, Vec<ChannelName>> = HashMap::new();
        for c in channels {
            per_shard.entry(self.index(&c)).or_default().push(c);
        }
        for (i, channels) in per_shard {
            self.inner.shard(i).do_send(Leave {
                client: client.clone(),
                channels,
            });
        }
    }

    /// Routes an engine publication to its shard.
    pub fn publication(&self, msg: EnginePublication) {
        self.shard(&msg.channel).do_send(msg);
    }

    /// Routes an engine reset to its shard.
    pub fn reset(&self, msg: EngineReset) {
        self.shard(&msg.channel).do_send(msg);
    }

    /// Routes an engine push to its shard.
    pub fn push(&self, msg: EnginePush) {
        self.shard(&msg.channel).do_send(msg);
    }

    /// Local channels and subscriber counts, sorted by name.
    pub async fn channel_counts(&self) -> Vec<(String, usize)> {
        let mut all = Vec::new();
        for i in 0..self.inner.slots.len() {
            if let Ok(mut part) = self.inner.shard(i).send(ChannelCounts).await {
                all.append(&mut part);
            }
        }
        all.sort();
        all
    }
}
