//! The broker's actor messages: what sessions, the engine's handler and the API send to a
//! shard, and what a shard sends itself when an engine call completes. Every one is sent
//! with `do_send` (or `send` for the two that answer), so publishers and engines never
//! block on a busy shard.

use std::sync::Arc;

use actix::prelude::*;
use bytestring::ByteString;

use super::SessionHandle;
use crate::channel::ChannelName;
use crate::config::NamespaceOptions;
use crate::engine::{EngineError, HistoryResult};
use crate::protocol::{Id, StreamPosition};

/// Session → broker: subscribe a session to a channel. The broker answers through the
/// session's recipients: a `subscribed` frame, or `SessionControl::SubscribeFailed`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    /// Who subscribes (the session's one shared handle).
    pub session: Arc<SessionHandle>,
    /// The session's id for this subscription; frames carry it back.
    pub sub_id: u64,
    /// The channel.
    pub channel: ChannelName,
    /// The command's id, echoed in the reply.
    pub id: Option<Id>,
    /// Recover from this position.
    pub since: Option<StreamPosition>,
    /// The channel's namespace options.
    pub ns: NamespaceOptions,
}

/// Session → broker: leave one channel (the session already answered `unsubscribed`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    /// Who leaves.
    pub client: Arc<str>,
    /// The channel.
    pub channel: ChannelName,
}

/// Session → broker: the session is closing; leave every listed channel of this shard.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    /// Who leaves.
    pub client: Arc<str>,
    /// Its channels on this shard.
    pub channels: Vec<ChannelName>,
}

/// Engine → broker: a publication of a channel this node is subscribed to.
#[derive(Message)]
#[rtype(result = "()")]
pub struct EnginePublication {
    /// The channel.
    pub channel: ChannelName,
    /// Its offset.
    pub offset: u64,
    /// Its epoch.
    pub epoch: Arc<str>,
    /// The ready `message` frame.
    pub frame: ByteString,
}

/// Engine → broker: a ready push (join/leave) for live subscribers of a channel.
#[derive(Message)]
#[rtype(result = "()")]
pub struct EnginePush {
    /// The channel.
    pub channel: ChannelName,
    /// The frame.
    pub frame: ByteString,
}

/// Engine → broker: the channel's stream was lost and a new epoch opened; live subscribers
/// get `reset`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct EngineReset {
    /// The channel.
    pub channel: ChannelName,
    /// The new epoch.
    pub epoch: Arc<str>,
}

/// Session → broker: does a live subscriber of this channel hold publishers back (more than
/// half full, still reading)?
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Pace {
    /// The channel just published to.
    pub channel: ChannelName,
}

/// API → broker: this shard's channels and their local subscriber counts.
#[derive(Message)]
#[rtype(result = "Vec<(String, usize)>")]
pub struct ChannelCounts;

/// Shard → itself: the engine finished (or failed) subscribing the node to a channel.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct NodeSubscribed {
    /// The channel.
    pub channel: ChannelName,
    /// What the engine said.
    pub result: Result<(), EngineError>,
}

/// Shard → itself: the engine finished unsubscribing the node from a channel.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct NodeUnsubscribed {
    /// The channel.
    pub channel: ChannelName,
}

/// Shard → itself: presence and history for a joining subscriber are ready.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct JoinReady {
    /// The channel.
    pub channel: ChannelName,
    /// The joining session.
    pub client: Arc<str>,
    /// Its subscription (a later one of the same client replaces it).
    pub sub_id: u64,
    /// The channel's position, and its history after `since` when recovery was asked.
    pub result: Result<HistoryResult, EngineError>,
}
