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
//! counted in its [`Outbox`]; a session whose unsent bytes would pass
//! `limits.max_pending_bytes` is evicted from the shard's channels and told to close with
//! 4001, while the other subscribers keep receiving.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytestring::ByteString;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::channel::ChannelName;
use crate::config::NamespaceOptions;
use crate::engine::{Engine, EngineError, HistoryResult};
use crate::metrics::Metrics;
use crate::protocol::{
    error_frame, ClientInfo, CloseCode, ErrorCode, Id, ServerFrame, StreamPosition, WsFrame,
};
use crate::session::SessionControl;
use crate::FastMap;

/// Frames the broker has handed to one session that are not yet written out, and their
/// size. Shared by the session, its response body and every shard.
///
/// Frames are already encoded for the wire ([`WsFrame`], one encoding per publication shared
/// by all its subscribers) and wait in a queue that the session's response body
/// ([`crate::session`]) drains straight into the connection: the broker wakes it only when
/// the queue goes from empty to non-empty, and it writes everything queued in one chunk,
/// without passing through the session actor. Idle, the empty queue allocates nothing.
///
/// The outbox also knows which of the session's subscriptions are current: a frame for one
/// that was left (or failed) is dropped when queued, and leaving drops what was queued for
/// it, so nothing of a channel arrives after its `unsubscribed`.
#[derive(Debug)]
pub struct Outbox {
    pending: AtomicUsize,
    slow: AtomicBool,
    limit: usize,
    queue: Mutex<Queue>,
    waker: AtomicWaker,
    /// More than half of `limit` queued (counted once in `pressure`).
    behind: AtomicBool,
    /// When the session last wrote frames out ([`now_ms`]).
    last_write_ms: AtomicU64,
    pressure: Arc<Pressure>,
}

/// How long a publishing session may wait, per publication, for subscribers of the channel
/// that are behind ([`Broker::pace`]).
pub const MAX_STALL: Duration = Duration::from_millis(50);

/// A subscriber that wrote nothing for this long is not reading: publishers do not wait for
/// it (it is cut at the limit instead).
const STUCK_MS: u64 = 100;

/// A session's subscriptions: (channel, subscription id) pairs in one small vector, in the
/// order they were made, which is id order (a session's ids only grow): the per-frame
/// check in [`Outbox::push`] is a binary search, lookups by channel scan (only commands do
/// them). Two hash maps would cost about a hundred bytes more per idle connection for a set
/// bounded by `limits.max_subscriptions_per_connection` and usually a handful long.
#[derive(Debug, Default)]
struct Subscriptions(Vec<(ChannelName, u64)>);

impl Subscriptions {
    fn get(&self, channel: &ChannelName) -> Option<u64> {
        self.0.iter().find(|(c, _)| c == channel).map(|&(_, id)| id)
    }

    fn is_current(&self, id: u64) -> bool {
        self.0.binary_search_by_key(&id, |&(_, i)| i).is_ok()
    }

    fn insert(&mut self, channel: ChannelName, id: u64) {
        // Grown exactly (1, 2, 4, ...) rather than to Vec's minimum of four: most
        // connections hold one or two subscriptions.
        if self.0.len() == self.0.capacity() {
            self.0.reserve_exact(self.0.len().max(1));
        }
        let at = self.0.partition_point(|&(_, i)| i < id);
        self.0.insert(at, (channel, id));
    }

    /// Removes the subscription of `channel` (only if its id is `only`, when given).
    fn remove(&mut self, channel: &ChannelName, only: Option<u64>) -> Option<u64> {
        let at = self
            .0
            .iter()
            .position(|(c, id)| c == channel && only.is_none_or(|o| o == *id))?;
        // `remove`, not `swap_remove`: `is_current` relies on the id order.
        Some(self.0.remove(at).1)
    }
}

/// What the outbox's lock guards.
#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<(u64, WsFrame)>,
    /// The session's current subscriptions: the one record of them, for the session's
    /// commands and for refusing frames of a subscription already left.
    subs: Subscriptions,
    /// The session wrote its Close frame: nothing more may follow it.
    closed: bool,
}

/// Milliseconds since the first call: a cheap clock shared by every outbox.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// The node's count of sessions more than half full, and a signal each time one of them
/// writes; publishing sessions wait on it in [`Broker::pace`].
#[derive(Debug, Default)]
pub struct Pressure {
    behind: AtomicUsize,
    progress: Notify,
}

impl Outbox {
    /// An empty outbox that holds at most `limit` bytes.
    pub fn new(limit: usize, pressure: Arc<Pressure>) -> Self {
        Outbox {
            pending: AtomicUsize::new(0),
            slow: AtomicBool::new(false),
            limit,
            queue: Mutex::new(Queue::default()),
            waker: AtomicWaker::new(),
            behind: AtomicBool::new(false),
            last_write_ms: AtomicU64::new(now_ms()),
            pressure,
        }
    }

    /// Notes a new level of queued bytes after an increase.
    fn raised_to(&self, pending: usize) {
        if pending > self.limit / 2 && !self.behind.swap(true, Ordering::AcqRel) {
            self.pressure.behind.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// True while this session is more than half full but still writing: a publisher to
    /// one of its channels should wait for it rather than push it over the limit.
    fn holds_back(&self) -> bool {
        self.holds_back_at(now_ms())
    }

    fn holds_back_at(&self, now_ms: u64) -> bool {
        self.behind.load(Ordering::Acquire)
            && !self.is_slow()
            && now_ms.saturating_sub(self.last_write_ms.load(Ordering::Acquire)) < STUCK_MS
    }

    /// Queues a frame (already counted) and wakes the body when the queue was empty; false
    /// (and nothing queued) when its subscription is no longer current or the session
    /// closed, and the caller releases the count.
    fn push(&self, sub_id: u64, frame: WsFrame) -> bool {
        let was_empty = {
            let mut q = self.queue.lock();
            if q.closed || !q.subs.is_current(sub_id) {
                return false;
            }
            q.frames.push_back((sub_id, frame));
            q.frames.len() == 1
        };
        if was_empty {
            self.waker.wake();
        }
        true
    }

    /// The session's current subscription id for `channel`.
    pub fn subscription(&self, channel: &ChannelName) -> Option<u64> {
        self.queue.lock().subs.get(channel)
    }

    /// How many subscriptions the session holds.
    pub fn subscription_count(&self) -> usize {
        self.queue.lock().subs.0.len()
    }

    /// A new subscription of the session (ids only grow): its frames are accepted from now
    /// on.
    pub fn subscribe(&self, channel: ChannelName, sub_id: u64) {
        self.queue.lock().subs.insert(channel, sub_id);
    }

    /// Ends the subscription of `channel` (only if its id is `only`, when given: a failure
    /// reported for a subscription since replaced changes nothing) and returns its id. Its
    /// frames are refused from now on, and those queued are dropped.
    pub fn unsubscribe(&self, channel: &ChannelName, only: Option<u64>) -> Option<u64> {
        let (sub_id, dropped) = {
            let mut q = self.queue.lock();
            let sub_id = q.subs.remove(channel, only)?;
            let mut dropped = 0;
            q.frames.retain(|(id, f)| {
                let keep = *id != sub_id;
                if !keep {
                    dropped += f.len();
                }
                keep
            });
            (sub_id, dropped)
        };
        self.uncount(dropped);
        Some(sub_id)
    }

    /// Empties the subscription set as the session ends, yielding its channels.
    pub fn take_subscriptions(&self) -> Vec<ChannelName> {
        let subs = std::mem::take(&mut self.queue.lock().subs);
        subs.0.into_iter().map(|(c, _)| c).collect()
    }

    /// The session wrote its Close frame: drops what is queued and refuses the rest.
    pub fn close(&self) {
        let dropped = {
            let mut q = self.queue.lock();
            q.closed = true;
            q.frames.drain(..).map(|(_, f)| f.len()).sum()
        };
        self.uncount(dropped);
    }

    /// For the session's response body: everything queued, as one chunk ready to write
    /// (`spare` keeps its capacity between calls), or `Pending` with the waker registered.
    /// A slow or closed session's frames are dropped instead.
    pub fn poll_drain(
        &self,
        spare: &mut VecDeque<(u64, WsFrame)>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<bytes::Bytes> {
        let write = {
            let mut q = self.queue.lock();
            if q.frames.is_empty() {
                // Registered under the lock: a push after this sees the waker.
                self.waker.register(cx.waker());
                return Poll::Pending;
            }
            std::mem::swap(&mut q.frames, spare);
            !q.closed
        };
        let total: usize = spare.iter().map(|(_, f)| f.len()).sum();
        let mut chunk = bytes::BytesMut::new();
        if write && !self.is_slow() {
            chunk.reserve(total);
            for (_, f) in spare.iter() {
                chunk.extend_from_slice(f.bytes());
            }
        }
        spare.clear();
        if chunk.is_empty() {
            self.uncount(total);
            // Dropped (slow or closed): nothing to write, and nothing more will come.
            return Poll::Pending;
        }
        self.release(total);
        Poll::Ready(chunk.freeze())
    }

    /// Counts `n` more bytes, unless that would pass the limit.
    fn try_reserve(&self, n: usize) -> bool {
        let before = self.pending.fetch_add(n, Ordering::AcqRel);
        if before + n > self.limit {
            self.pending.fetch_sub(n, Ordering::AcqRel);
            false
        } else {
            self.raised_to(before + n);
            true
        }
    }

    /// Counts `n` more bytes whatever the limit: for a `subscribed` reply, whose recovered
    /// publications are bounded by the namespace's history and must not count as slowness.
    fn force_reserve(&self, n: usize) {
        let before = self.pending.fetch_add(n, Ordering::AcqRel);
        self.raised_to(before + n);
    }

    /// `n` bytes handed to the session were written out: also a sign that the client reads.
    pub fn release(&self, n: usize) {
        self.last_write_ms.store(now_ms(), Ordering::Release);
        self.uncount(n);
    }

    /// Uncounts `n` bytes that were dropped, not written: no sign that the client reads.
    fn uncount(&self, n: usize) {
        let after = self.pending.fetch_sub(n, Ordering::AcqRel) - n;
        if self.behind.load(Ordering::Acquire) {
            if after <= self.limit / 2 && self.behind.swap(false, Ordering::AcqRel) {
                self.pressure.behind.fetch_sub(1, Ordering::AcqRel);
            }
            self.pressure.progress.notify_waiters();
        }
    }

    /// Marks the session slow; true for the first caller only.
    fn mark_slow(&self) -> bool {
        !self.slow.swap(true, Ordering::AcqRel)
    }

    /// True once the session was found slow; it then drops everything still queued.
    pub fn is_slow(&self) -> bool {
        self.slow.load(Ordering::Acquire)
    }

    /// Bytes currently queued.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if *self.behind.get_mut() {
            self.pressure.behind.fetch_sub(1, Ordering::AcqRel);
            self.pressure.progress.notify_waiters();
        }
    }
}

/// How the broker reaches one session. A session builds it once and shares it (`Arc`) with
/// every subscription, rather than a copy of its ids, recipient and outbox per subscription.
#[derive(Clone)]
pub struct SessionHandle {
    /// The connection id.
    pub client: Arc<str>,
    /// Client and user ids, for presence and join/leave.
    pub info: ClientInfo,
    /// Where subscribe failures and close orders go.
    pub control: Recipient<SessionControl>,
    /// The session's unsent-bytes account.
    pub outbox: Arc<Outbox>,
}

impl SessionHandle {
    /// Hands a reply to the session, counted and never refused for its own size (a
    /// recovery is bounded by the namespace's history); but a session that already had
    /// more than the limit queued before it is slow, so replies cannot pile up unbounded.
    fn send_reply(&self, sub_id: u64, frame: WsFrame, metrics: &Metrics) {
        let len = frame.len();
        self.outbox.force_reserve(len);
        self.enqueue(sub_id, frame);
        if self.outbox.pending().saturating_sub(len) > self.outbox.limit {
            self.mark_slow(metrics);
        }
    }

    /// Marks the session slow and tells it to close with 4001 (once).
    fn mark_slow(&self, metrics: &Metrics) {
        if self.outbox.mark_slow() {
            metrics.slow_consumers.inc();
            log::info!(
                "slow consumer client={} pending={}",
                self.client,
                self.outbox.pending()
            );
            self.control
                .do_send(SessionControl::Close(CloseCode::SlowConsumer));
        }
    }

    /// Queues a counted frame; a frame the outbox refuses (subscription left, session
    /// closed) is uncounted again.
    fn enqueue(&self, sub_id: u64, frame: WsFrame) {
        let len = frame.len();
        if !self.outbox.push(sub_id, frame) {
            self.outbox.uncount(len);
        }
    }

    /// Hands a frame to the session; false when the session is (now) a slow consumer.
    fn send(&self, sub_id: u64, frame: &WsFrame, metrics: &Metrics) -> bool {
        if self.outbox.is_slow() {
            return false;
        }
        if !self.outbox.try_reserve(frame.len()) {
            self.mark_slow(metrics);
            return false;
        }
        self.enqueue(sub_id, frame.clone());
        true
    }
}

/// Session → broker: subscribe a session to a channel. The broker answers through the
/// session's recipients: a `subscribed` frame, or [`SessionControl::SubscribeFailed`].
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
struct NodeSubscribed {
    channel: ChannelName,
    result: Result<(), EngineError>,
}

/// Shard → itself: the engine finished unsubscribing the node from a channel.
#[derive(Message)]
#[rtype(result = "()")]
struct NodeUnsubscribed {
    channel: ChannelName,
}

/// Shard → itself: presence and history for a joining subscriber are ready.
#[derive(Message)]
#[rtype(result = "()")]
struct JoinReady {
    channel: ChannelName,
    client: Arc<str>,
    sub_id: u64,
    result: Result<HistoryResult, EngineError>,
}

struct Buffered {
    offset: u64,
    epoch: Arc<str>,
    frame: WsFrame,
}

/// What a subscriber needs only until its `subscribed` reply is sent. Boxed apart from
/// [`Subscriber`] so that a live subscription, the long-lived state, carries one pointer
/// instead of the command's id, the recovery position and an empty buffer.
struct Joining {
    /// The subscribe command's id, echoed in `subscribed` or the error reply.
    id: Option<Id>,
    /// Recover from this position.
    since: Option<StreamPosition>,
    /// Live publications held back until `subscribed` is sent.
    buffer: Vec<Buffered>,
}

struct Subscriber {
    session: Arc<SessionHandle>,
    sub_id: u64,
    ns: NamespaceOptions,
    /// `Some` while joining (see [`Joining`]); `None` once live.
    joining: Option<Box<Joining>>,
    /// Once live: the epoch and offset this subscriber has been brought to. A publication
    /// at or below it is a duplicate (Redis delivers history reads and pub/sub on separate
    /// connections, so a publication can arrive after a reply that already covered it); a
    /// publication in another epoch is preceded by `reset`.
    position: Option<(Arc<str>, u64)>,
}

impl Subscriber {
    /// Tells the session its subscribe failed (`unavailable`, echoing the command's id).
    fn fail(&self, channel: &ChannelName, message: &str) {
        self.session
            .control
            .do_send(SessionControl::SubscribeFailed {
                sub_id: self.sub_id,
                channel: channel.clone(),
                frame: error_frame(
                    self.joining.as_ref().and_then(|j| j.id.as_ref()),
                    ErrorCode::Unavailable,
                    message,
                ),
            });
    }
}

fn same_epoch(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

/// Where the node's own engine subscription to a channel stands. Engine subscribe and
/// unsubscribe calls for one channel never overlap: each waits for the previous one's
/// completion message, so they reach the engine in the order the shard decided them.
#[derive(PartialEq, Eq)]
enum NodeState {
    Subscribing,
    Subscribed,
    Unsubscribing,
}

struct ChannelEntry {
    subscribers: FastMap<Arc<str>, Subscriber>,
    node: NodeState,
    /// Clients waiting for the node subscription before reading history.
    waiting: Vec<Arc<str>>,
}

/// One shard of the broker.
pub struct BrokerShard {
    engine: Arc<dyn Engine>,
    metrics: Metrics,
    channels: FastMap<ChannelName, ChannelEntry>,
    /// The shard's own address, for completions of engine calls (set in `started`).
    me: Option<Addr<BrokerShard>>,
}

// Every message to a shard is sent with `do_send`, which ignores the mailbox capacity:
// publishers and engines must never block on a busy shard. Memory is bounded per session
// by its outbox instead.
impl Actor for BrokerShard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.me = Some(ctx.address());
    }
}

impl BrokerShard {
    /// Asks the engine to subscribe the node; completion comes back as [`NodeSubscribed`].
    fn node_subscribe(&mut self, channel: &ChannelName) {
        if let Some(entry) = self.channels.get_mut(channel) {
            entry.node = NodeState::Subscribing;
        }
        let (engine, me, channel) = (self.engine.clone(), self.me.clone(), channel.clone());
        actix::spawn(async move {
            let result = engine.subscribe_node(&channel).await;
            if let Some(me) = me {
                me.do_send(NodeSubscribed { channel, result });
            }
        });
    }

    /// Asks the engine to unsubscribe the node; completion comes back as
    /// [`NodeUnsubscribed`], and the entry is kept until then.
    fn node_unsubscribe(&mut self, channel: &ChannelName) {
        if let Some(entry) = self.channels.get_mut(channel) {
            entry.node = NodeState::Unsubscribing;
        }
        let (engine, me, channel) = (self.engine.clone(), self.me.clone(), channel.clone());
        actix::spawn(async move {
            if let Err(e) = engine.unsubscribe_node(&channel).await {
                log::warn!("node unsubscribe failed channel={channel}: {e}");
            }
            if let Some(me) = me {
                me.do_send(NodeUnsubscribed { channel });
            }
        });
    }

    fn start_join(&mut self, channel: &ChannelName, client: Arc<str>, ctx: &mut Context<Self>) {
        let Some(sub) = self
            .channels
            .get(channel)
            .and_then(|e| e.subscribers.get(&client))
        else {
            return;
        };
        // A join starts once per subscriber; one already live was answered.
        let Some(joining) = &sub.joining else {
            return;
        };
        let since = joining.since.clone();
        let engine = self.engine.clone();
        let addr = ctx.address();
        let channel = channel.clone();
        let info = sub.session.info.clone();
        let sub_id = sub.sub_id;
        let ns = sub.ns.clone();
        actix::spawn(async move {
            let result = async {
                if ns.presence {
                    engine.presence_add(&channel, &info, &ns).await?;
                }
                let limit = if since.is_some() { ns.history_size } else { 0 };
                engine.history(&channel, since.as_ref(), limit, &ns).await
            }
            .await;
            addr.do_send(JoinReady {
                channel,
                client,
                sub_id,
                result,
            });
        });
    }

    /// Removes a subscriber, cleans presence, sends `leave`, and unsubscribes the node from
    /// the channel when it was the last local subscriber.
    fn remove(&mut self, channel: &ChannelName, client: &str) {
        let Some(entry) = self.channels.get_mut(channel) else {
            return;
        };
        let Some(sub) = entry.subscribers.remove(client) else {
            return;
        };
        entry.waiting.retain(|c| &**c != client);
        self.metrics.subscriptions.dec();
        let engine = self.engine.clone();
        let ch = channel.clone();
        let was_live = sub.joining.is_none();
        let info = sub.session.info.clone();
        let ns = sub.ns.clone();
        actix::spawn(async move {
            if ns.presence {
                if let Err(e) = engine.presence_remove(&ch, &info.client).await {
                    log::warn!(
                        "presence remove failed channel={ch} client={}: {e}",
                        info.client
                    );
                }
            }
            if ns.join_leave && was_live {
                let frame = ServerFrame::Leave {
                    channel: ch.as_str(),
                    info: &info,
                }
                .to_text();
                if let Err(e) = engine.push(&ch, frame).await {
                    log::warn!("leave push failed channel={ch}: {e}");
                }
            }
        });
        // While a subscribe or unsubscribe is in flight, its completion decides.
        if entry.subscribers.is_empty() && entry.node == NodeState::Subscribed {
            self.node_unsubscribe(channel);
        }
    }

    /// Delivers `frame` to every live subscriber of the entry, buffers it for joining ones,
    /// and evicts subscribers that turned out to be slow. A publication (`position` given)
    /// skips subscribers already past it and brings those in another epoch over with
    /// `reset` first.
    fn fan_out(
        &mut self,
        channel: &ChannelName,
        frame: &ByteString,
        position: Option<(u64, &Arc<str>)>,
    ) {
        let Some(entry) = self.channels.get_mut(channel) else {
            return;
        };
        // Framed once for every subscriber.
        let frame = &WsFrame::text(frame);
        let mut slow: Vec<Arc<str>> = Vec::new();
        let mut delivered = 0u64;
        let mut reset: Option<WsFrame> = None;
        for (client, sub) in entry.subscribers.iter_mut() {
            let ok = match (&mut sub.joining, position) {
                (Some(joining), Some((offset, epoch))) => {
                    joining.buffer.push(Buffered {
                        offset,
                        epoch: epoch.clone(),
                        frame: frame.clone(),
                    });
                    continue;
                }
                // Pushes (join/leave) are not part of the stream: a joining subscriber
                // does not get them.
                (Some(_), None) => continue,
                (None, None) => sub.session.send(sub.sub_id, frame, &self.metrics),
                (None, Some((offset, epoch))) => {
                    let mut ok = true;
                    match &mut sub.position {
                        Some((e, o)) if same_epoch(e, epoch) => {
                            if offset <= *o {
                                continue;
                            }
                            // The common case: only the offset moves (no reference count
                            // traffic on the shared epoch per delivery).
                            *o = offset;
                        }
                        position => {
                            if position.is_some() {
                                let r = reset.get_or_insert_with(|| reset_frame(channel, epoch));
                                ok = sub.session.send(sub.sub_id, r, &self.metrics);
                            }
                            *position = Some((epoch.clone(), offset));
                        }
                    }
                    ok && sub.session.send(sub.sub_id, frame, &self.metrics)
                }
            };
            if ok {
                delivered += 1;
            } else {
                slow.push(client.clone());
            }
        }
        self.metrics.deliveries.inc_by(delivered);
        for client in slow {
            self.remove(channel, &client);
        }
    }
}

fn reset_frame(channel: &ChannelName, epoch: &str) -> WsFrame {
    WsFrame::text(
        &ServerFrame::Reset {
            channel: channel.as_str(),
            epoch,
        }
        .to_text(),
    )
}

impl Handler<Subscribe> for BrokerShard {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, ctx: &mut Context<Self>) {
        let client = msg.session.client.clone();
        let is_new = !self.channels.contains_key(&msg.channel);
        let entry = self
            .channels
            .entry(msg.channel.clone())
            .or_insert_with(|| ChannelEntry {
                subscribers: FastMap::default(),
                node: NodeState::Subscribing,
                waiting: Vec::new(),
            });
        if let Some(old) = entry.subscribers.remove(&client) {
            // The session guards against double subscribes; a leftover here means an
            // unsubscribe raced a resubscribe, and the new one replaces it.
            log::debug!("replacing subscription client={client} sub={}", old.sub_id);
            self.metrics.subscriptions.dec();
        }
        entry.subscribers.insert(
            client.clone(),
            Subscriber {
                session: msg.session,
                sub_id: msg.sub_id,
                ns: msg.ns,
                joining: Some(Box::new(Joining {
                    id: msg.id,
                    since: msg.since,
                    buffer: Vec::new(),
                })),
                position: None,
            },
        );
        self.metrics.subscriptions.inc();
        if is_new {
            self.metrics.channels.inc();
            entry.waiting.push(client);
            self.node_subscribe(&msg.channel);
        } else if entry.node == NodeState::Subscribed {
            self.start_join(&msg.channel, client, ctx);
        } else {
            // Subscribing: joins once it completes. Unsubscribing: the node subscribes
            // again once the unsubscribe completes, then joins.
            entry.waiting.push(client);
        }
    }
}

impl Handler<NodeSubscribed> for BrokerShard {
    type Result = ();

    fn handle(&mut self, msg: NodeSubscribed, ctx: &mut Context<Self>) {
        let Some(entry) = self.channels.get_mut(&msg.channel) else {
            return;
        };
        match msg.result {
            Ok(()) => {
                entry.node = NodeState::Subscribed;
                if entry.subscribers.is_empty() {
                    // Everyone left while the node was subscribing.
                    self.node_unsubscribe(&msg.channel);
                    return;
                }
                for client in std::mem::take(&mut entry.waiting) {
                    self.start_join(&msg.channel, client, ctx);
                }
            }
            Err(e) => {
                log::warn!("node subscribe failed channel={}: {e}", msg.channel);
                if let Some(entry) = self.channels.remove(&msg.channel) {
                    self.metrics.channels.dec();
                    for (_, sub) in entry.subscribers {
                        self.metrics.subscriptions.dec();
                        sub.fail(&msg.channel, "the engine cannot subscribe now; try again");
                    }
                }
            }
        }
    }
}

impl Handler<NodeUnsubscribed> for BrokerShard {
    type Result = ();

    fn handle(&mut self, msg: NodeUnsubscribed, _ctx: &mut Context<Self>) {
        let Some(entry) = self.channels.get(&msg.channel) else {
            return;
        };
        if entry.subscribers.is_empty() {
            self.channels.remove(&msg.channel);
            self.metrics.channels.dec();
        } else {
            // Someone subscribed while the node was leaving: subscribe it again.
            self.node_subscribe(&msg.channel);
        }
    }
}

impl Handler<JoinReady> for BrokerShard {
    type Result = ();

    fn handle(&mut self, msg: JoinReady, _ctx: &mut Context<Self>) {
        let Some(entry) = self.channels.get_mut(&msg.channel) else {
            return;
        };
        let Some(sub) = entry.subscribers.get_mut(&msg.client) else {
            return;
        };
        // A join completes once: a subscriber already live was answered.
        if sub.sub_id != msg.sub_id || sub.joining.is_none() {
            return;
        }
        let history = match msg.result {
            Ok(h) => h,
            Err(e) => {
                log::warn!(
                    "join failed channel={} client={}: {e}",
                    msg.channel,
                    msg.client
                );
                sub.fail(
                    &msg.channel,
                    "the engine cannot serve this subscription now; try again",
                );
                self.remove(&msg.channel, &msg.client);
                return;
            }
        };
        // Taken before the loop below: a subscriber evicted there is live (it gets `leave`).
        let Some(joining) = sub.joining.take() else {
            return;
        };
        let (recovered, publications) = match &joining.since {
            Some(_) if history.recovered => (Some(true), Some(&history.publications[..])),
            Some(_) => (Some(false), Some(&[][..])),
            None => (None, None),
        };
        let reply = ServerFrame::Subscribed {
            id: joining.id.as_ref(),
            channel: msg.channel.as_str(),
            offset: history.offset,
            epoch: &history.epoch,
            recovered,
            publications,
        }
        .to_text();
        let buffered = joining.buffer;
        sub.session
            .send_reply(sub.sub_id, WsFrame::text(&reply), &self.metrics);
        let mut ok = !sub.session.outbox.is_slow();
        let mut position = (history.epoch.clone(), history.offset);
        for b in buffered {
            if !ok {
                break;
            }
            if same_epoch(&b.epoch, &position.0) && b.offset <= position.1 {
                continue;
            }
            if !same_epoch(&b.epoch, &position.0) {
                let r = reset_frame(&msg.channel, &b.epoch);
                ok = sub.session.send(sub.sub_id, &r, &self.metrics);
            }
            ok = ok && sub.session.send(sub.sub_id, &b.frame, &self.metrics);
            position = (b.epoch.clone(), b.offset);
        }
        sub.position = Some(position);
        if !ok {
            self.remove(&msg.channel, &msg.client);
            return;
        }
        if sub.ns.join_leave {
            let engine = self.engine.clone();
            let info = sub.session.info.clone();
            let ch = msg.channel.clone();
            actix::spawn(async move {
                let frame = ServerFrame::Join {
                    channel: ch.as_str(),
                    info: &info,
                }
                .to_text();
                if let Err(e) = engine.push(&ch, frame).await {
                    log::warn!("join push failed channel={ch}: {e}");
                }
            });
        }
    }
}

impl Handler<Unsubscribe> for BrokerShard {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _ctx: &mut Context<Self>) {
        self.remove(&msg.channel, &msg.client);
    }
}

impl Handler<Leave> for BrokerShard {
    type Result = ();

    fn handle(&mut self, msg: Leave, _ctx: &mut Context<Self>) {
        for channel in &msg.channels {
            self.remove(channel, &msg.client);
        }
    }
}

impl Handler<EnginePublication> for BrokerShard {
    type Result = ();

    fn handle(&mut self, msg: EnginePublication, _ctx: &mut Context<Self>) {
        self.fan_out(&msg.channel, &msg.frame, Some((msg.offset, &msg.epoch)));
    }
}

impl Handler<EngineReset> for BrokerShard {
    type Result = ();

    fn handle(&mut self, msg: EngineReset, _ctx: &mut Context<Self>) {
        let Some(entry) = self.channels.get_mut(&msg.channel) else {
            return;
        };
        let mut reset: Option<WsFrame> = None;
        let mut slow = Vec::new();
        for (client, sub) in entry.subscribers.iter_mut() {
            let Some((epoch, _)) = &sub.position else {
                continue;
            };
            if same_epoch(epoch, &msg.epoch) {
                continue;
            }
            let r = reset.get_or_insert_with(|| reset_frame(&msg.channel, &msg.epoch));
            if !sub.session.send(sub.sub_id, r, &self.metrics) {
                slow.push(client.clone());
            }
            sub.position = Some((msg.epoch.clone(), 0));
        }
        for client in slow {
            self.remove(&msg.channel, &client);
        }
    }
}

impl Handler<EnginePush> for BrokerShard {
    type Result = ();

    fn handle(&mut self, msg: EnginePush, _ctx: &mut Context<Self>) {
        self.fan_out(&msg.channel, &msg.frame, None);
    }
}

impl Handler<Pace> for BrokerShard {
    type Result = bool;

    fn handle(&mut self, msg: Pace, _ctx: &mut Context<Self>) -> bool {
        self.channels.get(&msg.channel).is_some_and(|e| {
            e.subscribers
                .values()
                .any(|s| s.joining.is_none() && s.session.outbox.holds_back())
        })
    }
}

impl Handler<ChannelCounts> for BrokerShard {
    type Result = MessageResult<ChannelCounts>;

    fn handle(&mut self, _msg: ChannelCounts, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(
            self.channels
                .iter()
                .filter(|(_, e)| !e.subscribers.is_empty())
                .map(|(c, e)| (c.to_string(), e.subscribers.len()))
                .collect(),
        )
    }
}

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
        BrokerShard {
            engine: self.engine.clone(),
            metrics: self.metrics.clone(),
            channels: FastMap::default(),
            me: None,
        }
    }

    fn shard(&self, i: usize) -> &Addr<BrokerShard> {
        self.slots[i].get_or_init(|| {
            let arbiter = Arbiter::new();
            let shard = self.new_shard();
            let addr = BrokerShard::start_in_arbiter(&arbiter.handle(), move |_| shard);
            self.arbiters.lock().push(ArbiterGuard(arbiter));
            addr
        })
    }
}

impl Broker {
    /// A broker of `shards` shards (at least one); none is started yet.
    pub fn new(shards: usize, engine: Arc<dyn Engine>, metrics: Metrics) -> Broker {
        Broker {
            inner: Arc::new(BrokerInner {
                slots: (0..shards.max(1)).map(|_| OnceLock::new()).collect(),
                engine,
                metrics,
                pressure: Arc::default(),
                arbiters: Mutex::new(Vec::new()),
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
        if pressure.behind.load(Ordering::Acquire) == 0 {
            return;
        }
        let deadline = tokio::time::Instant::now() + MAX_STALL;
        loop {
            let progress = pressure.progress.notified();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(name: &str) -> ChannelName {
        ChannelName::parse(name).unwrap()
    }

    #[test]
    fn subscriptions_look_up_by_channel_and_by_id_after_removals() {
        let a = Outbox::new(1000, Arc::default());
        for (i, name) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            a.subscribe(ch(name), i as u64 + 1);
        }
        assert_eq!(a.unsubscribe(&ch("b"), None), Some(2));
        assert_eq!(a.unsubscribe(&ch("b"), None), None);
        a.subscribe(ch("b"), 6);
        // A failure reported for a subscription since replaced changes nothing.
        assert_eq!(a.unsubscribe(&ch("b"), Some(2)), None);
        assert_eq!(a.subscription_count(), 5);
        assert_eq!(a.subscription(&ch("b")), Some(6));
        assert_eq!(a.subscription(&ch("x")), None);
        {
            let q = a.queue.lock();
            assert!(!q.subs.is_current(2));
            assert!((1..=6).filter(|&i| i != 2).all(|i| q.subs.is_current(i)));
        }
        let left: Vec<String> = a
            .take_subscriptions()
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(left, ["a", "c", "d", "e", "b"]);
        assert_eq!(a.subscription_count(), 0);
    }

    fn frame(n: usize) -> WsFrame {
        WsFrame::text(&"x".repeat(n))
    }

    /// Queues like the broker does: counted first, uncounted when refused.
    fn queue(a: &Outbox, sub_id: u64, text: &str) -> bool {
        let f = WsFrame::text(text);
        assert!(a.try_reserve(f.len()));
        let len = f.len();
        let taken = a.push(sub_id, f);
        if !taken {
            a.uncount(len);
        }
        taken
    }

    fn drain(a: &Outbox) -> Option<Vec<u8>> {
        let mut spare = VecDeque::new();
        let mut cx = TaskContext::from_waker(futures_util::task::noop_waker_ref());
        match a.poll_drain(&mut spare, &mut cx) {
            Poll::Ready(chunk) => Some(chunk.to_vec()),
            Poll::Pending => None,
        }
    }

    #[test]
    fn outbox_takes_live_subscriptions_only_and_drains_in_one_chunk() {
        let a = Outbox::new(1000, Arc::default());
        assert!(!queue(&a, 1, "early"), "not subscribed yet");
        a.subscribe(ch("one"), 1);
        a.subscribe(ch("two"), 2);
        assert!(queue(&a, 1, "one"));
        assert!(queue(&a, 2, "two"));
        assert!(queue(&a, 1, "three"));
        // Leaving 2 drops what was queued for it and refuses more.
        assert_eq!(a.unsubscribe(&ch("two"), None), Some(2));
        assert!(!queue(&a, 2, "late"));
        let mut expected = Vec::new();
        expected.extend_from_slice(WsFrame::text("one").bytes());
        expected.extend_from_slice(WsFrame::text("three").bytes());
        assert_eq!(drain(&a), Some(expected));
        assert_eq!(a.pending(), 0);
        assert_eq!(drain(&a), None);
    }

    #[test]
    fn a_closed_outbox_drops_and_refuses_everything() {
        let a = Outbox::new(1000, Arc::default());
        a.subscribe(ch("one"), 1);
        assert!(queue(&a, 1, "before close"));
        a.close();
        assert_eq!(a.pending(), 0);
        assert!(!queue(&a, 1, "after close"));
        assert_eq!(drain(&a), None);
        assert_eq!(a.pending(), 0);
    }

    #[test]
    fn outbox_counts_behind_once_and_releases_on_drain() {
        let pressure = Arc::new(Pressure::default());
        let a = Outbox::new(100, pressure.clone());
        // Exactly half is not behind; one byte more is.
        a.subscribe(ch("one"), 1);
        assert!(a.try_reserve(50));
        assert!(a.push(1, frame(10)));
        assert_eq!(pressure.behind.load(Ordering::Acquire), 0);
        assert!(a.try_reserve(1));
        assert_eq!(pressure.behind.load(Ordering::Acquire), 1);
        assert!(a.holds_back());
        // Counted once however much more is queued; the limit itself still refuses.
        assert!(a.try_reserve(49));
        assert!(!a.try_reserve(1));
        assert_eq!(pressure.behind.load(Ordering::Acquire), 1);
        // Writing down to half clears it.
        a.release(50);
        assert_eq!(pressure.behind.load(Ordering::Acquire), 0);
        assert!(!a.holds_back());
    }

    #[test]
    fn a_stuck_or_slow_outbox_does_not_hold_back_and_dropping_uncounts() {
        let pressure = Arc::new(Pressure::default());
        let a = Outbox::new(100, pressure.clone());
        a.force_reserve(80);
        assert!(a.holds_back());
        // No write for longer than STUCK_MS: the reader stopped, publishers go on.
        let last = a.last_write_ms.load(Ordering::Acquire);
        assert!(a.holds_back_at(last + STUCK_MS - 1));
        assert!(!a.holds_back_at(last + STUCK_MS));
        assert!(a.mark_slow());
        assert!(!a.holds_back());
        drop(a);
        assert_eq!(pressure.behind.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn a_write_wakes_a_waiting_publisher() {
        let pressure = Arc::new(Pressure::default());
        let a = Outbox::new(100, pressure.clone());
        a.force_reserve(80);
        let waiting = pressure.progress.notified();
        tokio::pin!(waiting);
        waiting.as_mut().enable();
        a.release(10);
        // Still behind (70 > 50), but the write is progress: the waiter is woken.
        assert_eq!(pressure.behind.load(Ordering::Acquire), 1);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the write");
    }
}
