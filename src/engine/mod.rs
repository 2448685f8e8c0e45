//! The engine seam: everything that crosses nodes or outlives one (offsets and epochs,
//! history, presence, node-level channel subscriptions, cluster-wide control). The broker,
//! the session and the HTTP API talk to an `Arc<dyn Engine>`; the engine talks back through
//! one [`EngineHandler`], which is the only way a publication reaches local subscribers, for
//! the memory engine as for Redis, so one delivery path is exercised by every test.

pub mod memory;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytestring::ByteString;
use serde_json::value::RawValue;

use crate::channel::ChannelName;
use crate::config::NamespaceOptions;
use crate::protocol::{ClientInfo, IdempotencyKey, Publication, StreamPosition};

/// Why the engine could not do what was asked; the client sees `unavailable`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The backing store cannot be reached or refused the command.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
}

/// What to publish on a channel.
#[derive(Debug, Clone)]
pub struct Publish {
    /// The JSON value, as it will be stored and delivered.
    pub data: Arc<RawValue>,
    /// Who published it, when a client did (none through the HTTP API).
    pub info: Option<ClientInfo>,
    /// When given, a repeat of the key on the same channel within the namespace's
    /// `idempotency_window` publishes nothing and answers the first publication's offset
    /// and epoch (with [`PublishResult::duplicate`] set). A window of 0 remembers no key.
    pub idempotency_key: Option<IdempotencyKey>,
}

impl Publish {
    /// A publication of `data` with no `info` and no idempotency key.
    pub fn new(data: Arc<RawValue>) -> Self {
        Publish {
            data,
            info: None,
            idempotency_key: None,
        }
    }
}

/// The answer to one [`Engine::publish`], owned (no borrow of the engine or the
/// arguments), so it can be awaited after later publishes were started.
pub type PublishTicket =
    Pin<Box<dyn Future<Output = Result<PublishResult, EngineError>> + Send + 'static>>;

/// Offset and epoch given to a publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishResult {
    /// The publication's offset.
    pub offset: u64,
    /// The channel's epoch (for a duplicate, the epoch the first publication had, even if
    /// the channel has started another since).
    pub epoch: Arc<str>,
    /// True when the idempotency key was seen within the window: nothing was published
    /// now (no delivery, no history entry), and `offset` and `epoch` are the first
    /// publication's. Callers count it as no publication.
    pub duplicate: bool,
}

/// A slice of a channel's history plus its current position.
#[derive(Debug, Clone)]
pub struct HistoryResult {
    /// Latest offset of the channel (0 when nothing was published in this epoch).
    pub offset: u64,
    /// Current epoch.
    pub epoch: Arc<str>,
    /// Publications, oldest first.
    pub publications: Vec<Publication>,
    /// When `since` was given: true when its epoch matches and every publication after it
    /// is in `publications` (so nothing was lost).
    pub recovered: bool,
}

/// One presence entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PresenceEntry {
    /// Connection id.
    pub client: String,
    /// User id (empty when anonymous).
    pub user: String,
    /// Node the connection is on.
    pub node: String,
}

/// What an engine hands to the node: publications and pushes of channels this node
/// subscribed to, and control commands from other nodes.
pub trait EngineHandler: Send + Sync + 'static {
    /// A publication, with its ready `message` frame.
    fn on_publication(&self, channel: ChannelName, offset: u64, epoch: Arc<str>, frame: ByteString);
    /// A `join`/`leave` push, ready to send.
    fn on_push(&self, channel: ChannelName, frame: ByteString);
    /// Disconnect this user's sessions on this node (4003); returns how many.
    fn disconnect_user(&self, user: &str) -> usize;
    /// The channel's stream was lost and a new epoch opened before any publication in it:
    /// live subscribers get `reset` now. (An engine that never loses streams never calls it;
    /// a new epoch first seen on a publication is noticed by the broker itself.)
    fn on_reset(&self, channel: ChannelName, epoch: Arc<str>);
}

/// The engine interface; both implementations pass the same conformance tests.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Installs the handler that receives publications; called once before use.
    fn set_handler(&self, handler: Arc<dyn EngineHandler>);

    /// True when the engine can serve commands (connected and migrated).
    fn is_ready(&self) -> bool;

    /// Assigns the next offset, appends to history and delivers the publication to every
    /// node subscribed to the channel (this one included). With an idempotency key already
    /// used on the channel within `ns.idempotency_window`, does none of that and answers
    /// the first result: the check and the publication are one atomic step, so two
    /// concurrent publishes with one key publish once.
    ///
    /// The order is fixed when this is *called*, not when the ticket is first polled:
    /// successive calls take effect in call order (per channel, offsets in call order), so
    /// a caller may hold many tickets at once and still publish in order (the session's
    /// window of pipelined publishes). Dropping a ticket does not cancel the publication.
    fn publish(
        &self,
        channel: &ChannelName,
        publication: Publish,
        ns: &NamespaceOptions,
    ) -> PublishTicket;

    /// Delivers a ready push (join/leave) to every node subscribed to the channel.
    async fn push(&self, channel: &ChannelName, frame: ByteString) -> Result<(), EngineError>;

    /// Starts receiving the channel's publications on this node.
    async fn subscribe_node(&self, channel: &ChannelName) -> Result<(), EngineError>;

    /// Stops receiving the channel's publications on this node.
    async fn unsubscribe_node(&self, channel: &ChannelName) -> Result<(), EngineError>;

    /// Reads history for a `history` query: with `since`, the first `limit` publications
    /// after it; without, the newest `limit`. `limit` 0 returns only the position. Creates
    /// nothing: a channel without state (never published to, no subscriber) answers offset
    /// 0 and the epoch [`NO_EPOCH`], so reading unknown channels costs no memory.
    async fn history(
        &self,
        channel: &ChannelName,
        since: Option<&StreamPosition>,
        limit: usize,
        ns: &NamespaceOptions,
    ) -> Result<HistoryResult, EngineError>;

    /// Reads history for a subscription joining the channel, as [`Engine::history`] does,
    /// but a channel without state gets its epoch now: the subscriber's position is then in
    /// the epoch the channel's first publication will carry, and recovers from it.
    async fn join_history(
        &self,
        channel: &ChannelName,
        since: Option<&StreamPosition>,
        limit: usize,
        ns: &NamespaceOptions,
    ) -> Result<HistoryResult, EngineError>;

    /// Adds a connection to the channel's presence.
    async fn presence_add(
        &self,
        channel: &ChannelName,
        info: &ClientInfo,
        ns: &NamespaceOptions,
    ) -> Result<(), EngineError>;

    /// Removes a connection from the channel's presence.
    async fn presence_remove(&self, channel: &ChannelName, client: &str)
        -> Result<(), EngineError>;

    /// Lists the channel's presence.
    async fn presence(&self, channel: &ChannelName) -> Result<Vec<PresenceEntry>, EngineError>;

    /// Subscriber counts across the cluster, given this node's own.
    async fn channels(
        &self,
        local: Vec<(String, usize)>,
    ) -> Result<Vec<(String, usize)>, EngineError>;

    /// Disconnects the user's sessions on every node; returns how many.
    async fn disconnect_user(&self, user: &str) -> Result<usize, EngineError>;
}

/// The epoch a `history` query answers for a channel that has no state: no publication
/// was made in any epoch it could name. A `since` in it recovers nothing.
pub const NO_EPOCH: &str = "";

/// The recovery rule both engines apply to a `since` read. `after` holds publications
/// after `since.offset`, oldest first, at least the first one when it is still held. The
/// result is the first `limit` of them (none in another epoch) and whether nothing was lost:
/// the epoch matches and either `since` is the latest offset or the publication right after
/// it is still in history.
pub fn recover_after(
    pos: &StreamPosition,
    latest: u64,
    epoch: &str,
    mut after: Vec<Publication>,
    limit: usize,
) -> (Vec<Publication>, bool) {
    let same_epoch = *pos.epoch == *epoch;
    let held = pos.offset == latest
        || after
            .first()
            .is_some_and(|p| p.offset == pos.offset.saturating_add(1));
    let recovered = same_epoch && pos.offset <= latest && held;
    if same_epoch {
        after.truncate(limit);
    } else {
        after.clear();
    }
    (after, recovered)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pubs(offsets: std::ops::RangeInclusive<u64>) -> Vec<Publication> {
        offsets
            .map(|offset| Publication {
                offset,
                data: Arc::from(RawValue::from_string("null".into()).expect("json")),
                info: None,
            })
            .collect()
    }

    fn at(offset: u64, epoch: &str) -> StreamPosition {
        StreamPosition {
            offset,
            epoch: epoch.into(),
        }
    }

    fn offsets(p: &[Publication]) -> Vec<u64> {
        p.iter().map(|p| p.offset).collect()
    }

    #[test]
    fn a_client_at_the_latest_offset_recovers_nothing_and_loses_nothing() {
        let (kept, recovered) = recover_after(&at(7, "e"), 7, "e", vec![], 10);
        assert!(recovered);
        assert!(kept.is_empty());
    }

    #[test]
    fn the_gap_still_held_is_recovered_up_to_the_limit() {
        let (kept, recovered) = recover_after(&at(3, "e"), 9, "e", pubs(4..=9), 10);
        assert!(recovered);
        assert_eq!(offsets(&kept), [4, 5, 6, 7, 8, 9]);
        let (kept, recovered) = recover_after(&at(3, "e"), 9, "e", pubs(4..=9), 2);
        assert!(recovered, "the first `limit` of an unbroken gap");
        assert_eq!(offsets(&kept), [4, 5]);
    }

    #[test]
    fn a_gap_partly_trimmed_from_history_is_not_recovered() {
        // Offset 4 is gone: the client would miss it.
        let (kept, recovered) = recover_after(&at(3, "e"), 9, "e", pubs(5..=9), 10);
        assert!(!recovered);
        assert_eq!(offsets(&kept), [5, 6, 7, 8, 9]);
        // Nothing held at all while the channel moved on.
        let (_, recovered) = recover_after(&at(3, "e"), 9, "e", vec![], 10);
        assert!(!recovered);
    }

    #[test]
    fn another_epoch_recovers_nothing() {
        let (kept, recovered) = recover_after(&at(3, "old"), 9, "e", pubs(4..=9), 10);
        assert!(!recovered);
        assert!(kept.is_empty());
        // Even at the same offset: offsets of two epochs are not comparable.
        let (_, recovered) = recover_after(&at(9, "old"), 9, "e", vec![], 10);
        assert!(!recovered);
    }

    #[test]
    fn a_position_past_the_latest_offset_is_not_recovered() {
        let (_, recovered) = recover_after(&at(12, "e"), 9, "e", vec![], 10);
        assert!(!recovered);
        let (_, recovered) = recover_after(&at(u64::MAX, "e"), 9, "e", vec![], 10);
        assert!(!recovered, "no overflow at the largest offset");
    }
}
