//! The embedded engine for a node that runs alone: offsets, epochs, bounded history with a
//! TTL and presence live in this process, in lock shards keyed by channel. A publication is
//! handed back to the node through the same [`EngineHandler`] a Redis message would take.
//!
//! The channel's lock is held while the publication is handed to the handler (a
//! non-blocking mailbox send), so concurrent publishers on one channel reach the broker in
//! offset order. Idempotency keys are checked and remembered under that same lock, so two
//! publishes with one key publish once; they are kept apart from the channel's state, so a
//! key still answers within its window after an idle channel was forgotten.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytestring::ByteString;
use parking_lot::Mutex;

use super::{
    recover_after, Engine, EngineError, EngineHandler, HistoryResult, PresenceEntry, Publish,
    PublishResult, PublishTicket, NO_EPOCH,
};
use crate::channel::ChannelName;
use crate::config::NamespaceOptions;
use crate::protocol::{message_frame, ClientInfo, Publication, StreamPosition};
use crate::shrink::Shrink;
use crate::FastMap;

/// Number of lock shards; a power of two comfortably above the core count.
const LOCK_SHARDS: usize = 32;

struct Entry {
    publication: Publication,
    expires: Instant,
}

struct ChannelState {
    offset: u64,
    epoch: Arc<str>,
    history: VecDeque<Entry>,
    /// When the last publication's history entry expires; the state may be dropped after.
    idle_after: Instant,
}

impl ChannelState {
    fn new() -> Self {
        ChannelState {
            offset: 0,
            epoch: new_epoch(),
            history: VecDeque::new(),
            idle_after: Instant::now(),
        }
    }

    fn drop_expired(&mut self, now: Instant) {
        while self.history.front().is_some_and(|e| e.expires <= now) {
            self.history.pop_front();
        }
    }
}

/// A fresh random epoch: a process restart (or a channel forgotten after its history
/// expired) starts a new one, so a client never recovers across it.
fn new_epoch() -> Arc<str> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    Arc::from(&id[..12])
}

/// The first result published with an idempotency key, until the key's window ends.
struct Remembered {
    offset: u64,
    epoch: Arc<str>,
    expires: Instant,
}

#[derive(Default)]
struct Shard {
    channels: FastMap<ChannelName, ChannelState>,
    /// Idempotency keys used on each channel within their window (expired ones are ignored
    /// on lookup and dropped by the sweep).
    keys: FastMap<ChannelName, FastMap<Box<str>, Remembered>>,
    /// Keyed by the entry's own client id (shared with it, not copied).
    presence: HashMap<ChannelName, HashMap<Arc<str>, ClientInfo>>,
    /// Channels the node is subscribed to: never forgotten, or live subscribers would see
    /// their epoch change under them.
    held: HashSet<ChannelName>,
}

/// The in-memory engine.
pub struct MemoryEngine {
    node_id: String,
    shards: Vec<Mutex<Shard>>,
    handler: OnceLock<Arc<dyn EngineHandler>>,
}

impl MemoryEngine {
    /// A new, empty engine for the node `node_id`.
    pub fn new(node_id: &str) -> Self {
        MemoryEngine {
            node_id: node_id.to_string(),
            shards: (0..LOCK_SHARDS)
                .map(|_| Mutex::new(Shard::default()))
                .collect(),
            handler: OnceLock::new(),
        }
    }

    fn shard(&self, channel: &ChannelName) -> &Mutex<Shard> {
        let h = foldhash::fast::FixedState::default().hash_one(channel);
        &self.shards[(h as usize) % LOCK_SHARDS]
    }

    /// A history read; `create` gives a channel without state its epoch (a subscription
    /// joining), else such a channel answers [`NO_EPOCH`] and nothing is kept.
    fn read(
        &self,
        channel: &ChannelName,
        since: Option<&StreamPosition>,
        limit: usize,
        create: bool,
    ) -> HistoryResult {
        let now = Instant::now();
        let mut shard = self.shard(channel).lock();
        if !create && !shard.channels.contains_key(channel) {
            return HistoryResult {
                offset: 0,
                epoch: Arc::from(NO_EPOCH),
                publications: Vec::new(),
                recovered: false,
            };
        }
        let state = shard
            .channels
            .entry(channel.clone())
            .or_insert_with(ChannelState::new);
        state.drop_expired(now);
        // Only the publications returned are cloned, never the whole history.
        let held = state.history.iter().map(|e| &e.publication);
        let (publications, recovered) = match since {
            Some(pos) => {
                // One more than `limit` is not needed, but at least one is: it tells
                // whether the gap after `since` is still held.
                let after = held
                    .filter(|p| p.offset > pos.offset)
                    .take(limit.max(1))
                    .cloned()
                    .collect();
                recover_after(pos, state.offset, &state.epoch, after, limit)
            }
            None => {
                let skip = state.history.len().saturating_sub(limit);
                (held.skip(skip).cloned().collect(), false)
            }
        };
        HistoryResult {
            offset: state.offset,
            epoch: state.epoch.clone(),
            publications,
            recovered,
        }
    }

    /// Forgets channels whose history has expired and that nobody on the node subscribes to,
    /// so memory does not grow with every channel ever used; such a channel's next
    /// publication starts a new epoch. Also forgets idempotency keys past their window.
    /// Called periodically by the node.
    pub fn sweep(&self) {
        let now = Instant::now();
        for shard in &self.shards {
            let mut shard = shard.lock();
            let Shard {
                channels,
                keys,
                presence,
                held,
            } = &mut *shard;
            keys.retain(|_, used| {
                used.retain(|_, r| r.expires > now);
                used.shrink_when_sparse();
                !used.is_empty()
            });
            keys.shrink_when_sparse();
            channels.retain(|name, state| {
                state.drop_expired(now);
                let forgettable = state.history.is_empty()
                    && state.idle_after <= now
                    && !presence.contains_key(name)
                    && !held.contains(name);
                !forgettable
            });
            // After a burst of channels, the table goes back to the size of what is left
            // (presence and held shrink as their entries are removed).
            channels.shrink_when_sparse();
        }
    }

    /// Channels whose state is held (for tests of the sweep).
    pub fn channel_count(&self) -> usize {
        self.shards.iter().map(|s| s.lock().channels.len()).sum()
    }
}

impl MemoryEngine {
    /// [`Engine::publish`], done at once.
    fn publish_now(
        &self,
        channel: &ChannelName,
        p: Publish,
        ns: &NamespaceOptions,
    ) -> Result<PublishResult, EngineError> {
        let now = Instant::now();
        let mut shard = self.shard(channel).lock();
        let window = ns.idempotency_window.0;
        // A window of 0 remembers nothing: the key is then only validated.
        let key = p.idempotency_key.filter(|_| !window.is_zero());
        if let Some(key) = &key {
            let first = shard
                .keys
                .get(channel)
                .and_then(|used| used.get(key.as_str()))
                .filter(|r| r.expires > now);
            if let Some(r) = first {
                return Ok(PublishResult {
                    offset: r.offset,
                    epoch: r.epoch.clone(),
                    duplicate: true,
                });
            }
        }
        let state = shard
            .channels
            .entry(channel.clone())
            .or_insert_with(ChannelState::new);
        state.offset += 1;
        let publication = Publication {
            offset: state.offset,
            data: p.data,
            info: p.info,
        };
        let frame = message_frame(channel.as_str(), &publication);
        let ttl: Duration = ns.history_ttl.0;
        state.idle_after = now + ttl;
        if ns.history_size > 0 && !ttl.is_zero() {
            state.history.push_back(Entry {
                publication,
                expires: now + ttl,
            });
            while state.history.len() > ns.history_size {
                state.history.pop_front();
            }
        }
        state.drop_expired(now);
        let result = PublishResult {
            offset: state.offset,
            epoch: state.epoch.clone(),
            duplicate: false,
        };
        if let Some(key) = key {
            shard.keys.entry(channel.clone()).or_default().insert(
                Box::from(key.as_str()),
                Remembered {
                    offset: result.offset,
                    epoch: result.epoch.clone(),
                    expires: now + window,
                },
            );
        }
        if let Some(h) = self.handler.get() {
            h.on_publication(channel.clone(), result.offset, result.epoch.clone(), frame);
        }
        Ok(result)
    }
}

#[async_trait]
impl Engine for MemoryEngine {
    fn set_handler(&self, handler: Arc<dyn EngineHandler>) {
        let _ = self.handler.set(handler);
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn publish(&self, channel: &ChannelName, p: Publish, ns: &NamespaceOptions) -> PublishTicket {
        // All of it happens now, under the shard lock: the order is the call order.
        Box::pin(std::future::ready(self.publish_now(channel, p, ns)))
    }

    async fn push(&self, channel: &ChannelName, frame: ByteString) -> Result<(), EngineError> {
        if let Some(h) = self.handler.get() {
            h.on_push(channel.clone(), frame);
        }
        Ok(())
    }

    async fn subscribe_node(&self, channel: &ChannelName) -> Result<(), EngineError> {
        self.shard(channel).lock().held.insert(channel.clone());
        Ok(())
    }

    async fn unsubscribe_node(&self, channel: &ChannelName) -> Result<(), EngineError> {
        let mut shard = self.shard(channel).lock();
        shard.held.remove(channel);
        shard.held.shrink_when_sparse();
        Ok(())
    }

    async fn history(
        &self,
        channel: &ChannelName,
        since: Option<&StreamPosition>,
        limit: usize,
        _ns: &NamespaceOptions,
    ) -> Result<HistoryResult, EngineError> {
        Ok(self.read(channel, since, limit, false))
    }

    async fn join_history(
        &self,
        channel: &ChannelName,
        since: Option<&StreamPosition>,
        limit: usize,
        _ns: &NamespaceOptions,
    ) -> Result<HistoryResult, EngineError> {
        Ok(self.read(channel, since, limit, true))
    }

    async fn presence_add(
        &self,
        channel: &ChannelName,
        info: &ClientInfo,
        _ns: &NamespaceOptions,
    ) -> Result<(), EngineError> {
        self.shard(channel)
            .lock()
            .presence
            .entry(channel.clone())
            .or_default()
            .insert(info.client.clone(), info.clone());
        Ok(())
    }

    async fn presence_remove(
        &self,
        channel: &ChannelName,
        client: &str,
    ) -> Result<(), EngineError> {
        let mut shard = self.shard(channel).lock();
        if let Some(set) = shard.presence.get_mut(channel) {
            set.remove(client);
            if set.is_empty() {
                shard.presence.remove(channel);
                shard.presence.shrink_when_sparse();
            } else {
                set.shrink_when_sparse();
            }
        }
        Ok(())
    }

    async fn presence(&self, channel: &ChannelName) -> Result<Vec<PresenceEntry>, EngineError> {
        let shard = self.shard(channel).lock();
        let mut list: Vec<PresenceEntry> = shard
            .presence
            .get(channel)
            .map(|set| {
                set.values()
                    .map(|i| PresenceEntry {
                        client: i.client.to_string(),
                        user: i.user.to_string(),
                        node: self.node_id.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        list.sort_by(|a, b| a.client.cmp(&b.client));
        Ok(list)
    }

    async fn channels(
        &self,
        local: Vec<(String, usize)>,
    ) -> Result<Vec<(String, usize)>, EngineError> {
        Ok(local)
    }

    async fn disconnect_user(&self, user: &str) -> Result<usize, EngineError> {
        Ok(self.handler.get().map_or(0, |h| h.disconnect_user(user)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;
    use crate::protocol::IdempotencyKey;
    use serde_json::value::RawValue;

    fn keyed(key: &str) -> Publish {
        let data = RawValue::from_string("1".into()).expect("json");
        Publish {
            idempotency_key: Some(IdempotencyKey::parse(key).expect("a valid key")),
            ..Publish::new(Arc::from(data))
        }
    }

    fn keys_held(engine: &MemoryEngine) -> usize {
        let held = |s: &Mutex<Shard>| s.lock().keys.values().map(|k| k.len()).sum::<usize>();
        engine.shards.iter().map(held).sum()
    }

    #[tokio::test]
    async fn keys_outlive_a_forgotten_channel_and_are_swept_after_their_window() {
        let engine = MemoryEngine::new("n");
        let window = Duration::from_millis(50);
        // No history: the channel may be forgotten at the first sweep.
        let ns = NamespaceOptions {
            history_size: 0,
            history_ttl: HumanDuration(Duration::ZERO),
            idempotency_window: HumanDuration(window),
            ..NamespaceOptions::default()
        };
        let c = ChannelName::parse("sweep").expect("channel");
        let started = Instant::now();
        let first = engine.publish(&c, keyed("a"), &ns).await.expect("publish");
        engine.publish(&c, keyed("b"), &ns).await.expect("publish");
        engine.sweep();
        if started.elapsed() < window {
            assert_eq!(engine.channel_count(), 0, "the channel was forgotten");
            assert_eq!(keys_held(&engine), 2, "its keys were not");
            let again = engine.publish(&c, keyed("a"), &ns).await.expect("repeat");
            assert!(again.duplicate);
            assert_eq!((again.offset, &again.epoch), (first.offset, &first.epoch));
        }
        // Then the sweep drops them, once their window is over and not before.
        let deadline = started + Duration::from_secs(10);
        while keys_held(&engine) > 0 {
            assert!(Instant::now() < deadline, "keys never swept");
            std::thread::sleep(Duration::from_millis(5));
            engine.sweep();
        }
        assert!(started.elapsed() >= window);
        let later = engine.publish(&c, keyed("a"), &ns).await.expect("publish");
        assert!(!later.duplicate, "a key publishes again after its window");
    }
}
