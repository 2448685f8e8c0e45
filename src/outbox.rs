//! A session's outbox: the frames the broker has handed to one WebSocket session that are
//! not yet written out, the session's record of its live subscriptions, its slow-consumer
//! account, and the node-wide [`Pressure`] that paces publishers. Also the two things the
//! broker and the registry hand to a session: the ready RFC 6455 frame ([`WsFrame`], from
//! `crate::frame`) and the [`SessionControl`] message.
//!
//! Each outbox writes with its connection's [`Encoding`]: a compressed connection counts
//! and writes a frame's compressed form, so `limits.max_pending_bytes` bounds what is
//! really written.
//!
//! A leaf: the session creates and drains an outbox, broker shards fill it, and neither is
//! imported here, so the arrows between session, broker and registry go one way.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use actix::Message;
use bytestring::ByteString;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::batch::Batcher;
use crate::channel::ChannelName;
use crate::frame::Encoding;
pub use crate::frame::WsFrame;
use crate::protocol::CloseCode;
use crate::shrink::Shrink;

/// Broker or registry → session: control messages that are not subscription traffic.
#[derive(Message)]
#[rtype(result = "()")]
pub enum SessionControl {
    /// The broker could not complete a subscribe; `frame` is the error reply.
    SubscribeFailed {
        /// The failed subscription.
        sub_id: u64,
        /// Its channel.
        channel: ChannelName,
        /// The `error` frame to send.
        frame: ByteString,
    },
    /// The broker queued the `subscribed` reply of this subscription: the session's next
    /// command may run.
    Subscribed {
        /// The subscription.
        sub_id: u64,
    },
    /// Close the connection with this code (slow consumer, operator disconnect, shutdown).
    Close(CloseCode),
}

/// Frames the broker has handed to one session that are not yet written out, and their
/// size. Shared by the session, its response body and every shard.
///
/// Frames are already encoded for the wire ([`WsFrame`], one encoding per publication shared
/// by all its subscribers) and wait in a queue that the session's response body
/// (the session's) drains straight into the connection: the broker wakes it only when
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
    /// `Queue::closed`, readable without the lock (the response body asks on every poll).
    closed: AtomicBool,
    limit: usize,
    queue: Mutex<Queue>,
    waker: AtomicWaker,
    /// More than half of `limit` queued (counted once in `pressure`).
    behind: AtomicBool,
    /// When the session last wrote frames out ([`now_ms`]).
    last_write_ms: AtomicU64,
    pressure: Arc<Pressure>,
    /// Plain or compressed, and where written bytes are counted.
    encoding: Encoding,
}

/// The id under which the session's own frames (replies, pushes of its own, `disconnect`)
/// are queued: never a subscription's (those start at 1), so leaving a channel never drops
/// them, and they are written even once deliveries are refused.
pub const SESSION: u64 = 0;

/// How long a publishing session may wait, per publication, for subscribers of the channel
/// that are behind (the broker's `pace`).
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
        let id = self.0.remove(at).1;
        self.0.shrink_when_sparse();
        Some(id)
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
/// writes; publishing sessions wait on it in the broker's `pace`.
#[derive(Debug, Default)]
pub struct Pressure {
    behind: AtomicUsize,
    progress: Notify,
}

impl Pressure {
    /// True when some session of the node is more than half full: the one atomic load a
    /// publication costs when nobody is behind.
    pub fn any_behind(&self) -> bool {
        self.behind.load(Ordering::Acquire) > 0
    }

    /// Notified each time a session that was behind writes (or goes away).
    pub fn progress(&self) -> &Notify {
        &self.progress
    }
}

/// What became of a frame offered to an outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Counted and queued, or dropped because its subscription was left or the session
    /// closed (nothing to do about either).
    Taken,
    /// The session is a slow consumer and takes nothing more; `first` is true for the one
    /// offer that found it so, which tells the session to close with 4001.
    Slow {
        /// This offer marked the session slow.
        first: bool,
    },
}

impl Outbox {
    /// An empty outbox that holds at most `limit` bytes, written with `encoding`.
    pub fn new(limit: usize, pressure: Arc<Pressure>, encoding: Encoding) -> Self {
        Outbox {
            pending: AtomicUsize::new(0),
            slow: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            limit,
            queue: Mutex::new(Queue::default()),
            waker: AtomicWaker::new(),
            behind: AtomicBool::new(false),
            last_write_ms: AtomicU64::new(now_ms()),
            pressure,
            encoding,
        }
    }

    /// What `frame` counts here: its length as this connection writes it (compressing it
    /// first, once for every connection, when this is the first compressed one to ask).
    fn cost(&self, frame: &WsFrame) -> usize {
        frame.wire(&self.encoding).len()
    }

    /// Notes a new level of queued bytes after an increase.
    fn raised_to(&self, pending: usize) {
        if pending > self.limit / 2 && !self.behind.swap(true, Ordering::AcqRel) {
            self.pressure.behind.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Offers a publication's frame: counted and queued unless that would pass the limit,
    /// which makes the session a slow consumer.
    pub fn offer(&self, sub_id: u64, frame: &WsFrame) -> Offer {
        if self.is_slow() {
            return Offer::Slow { first: false };
        }
        if !self.try_reserve(self.cost(frame)) {
            return Offer::Slow {
                first: self.mark_slow(),
            };
        }
        self.enqueue(sub_id, frame.clone());
        Offer::Taken
    }

    /// Offers a `subscribed` reply: counted and never refused for its own size (a recovery
    /// is bounded by the namespace's history); but a session that already had more than
    /// the limit queued before it is slow, so replies cannot pile up unbounded.
    pub fn offer_reply(&self, sub_id: u64, frame: WsFrame) -> Offer {
        let len = self.cost(&frame);
        self.force_reserve(len);
        self.enqueue(sub_id, frame);
        if self.pending().saturating_sub(len) > self.limit {
            Offer::Slow {
                first: self.mark_slow(),
            }
        } else {
            Offer::Taken
        }
    }

    /// Queues one of the session's own frames, after everything queued before it, so
    /// replies and deliveries reach the client in the order they were queued. Counted like
    /// a `subscribed` reply: a session that already had more than the limit queued (it
    /// sends commands but does not read) is slow.
    pub fn offer_session(&self, frame: WsFrame) -> Offer {
        self.offer_reply(SESSION, frame)
    }

    /// Queues a counted frame; a frame refused (subscription left, session closed) is
    /// uncounted again.
    fn enqueue(&self, sub_id: u64, frame: WsFrame) {
        let len = self.cost(&frame);
        if !self.push(sub_id, frame) {
            self.uncount(len);
        }
    }

    /// True while this session is more than half full but still writing: a publisher to
    /// one of its channels should wait for it rather than push it over the limit.
    pub fn holds_back(&self) -> bool {
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
            if q.closed || (sub_id != SESSION && !q.subs.is_current(sub_id)) {
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
                    dropped += self.cost(f);
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
    ///
    /// The session's own frames already queued (replies, the `disconnect` push) stay, so
    /// they are written before the Close frame, as the session sent them.
    pub fn close(&self) {
        let dropped = {
            let mut q = self.queue.lock();
            q.closed = true;
            self.closed.store(true, Ordering::Release);
            let mut dropped = 0;
            q.frames.retain(|(id, f)| {
                let keep = *id == SESSION;
                if !keep {
                    dropped += self.cost(f);
                }
                keep
            });
            dropped
        };
        self.uncount(dropped);
    }

    /// True once the session closed: the response body then writes what is left here
    /// before the actor's Close frame.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// For the session's response body: everything queued, as one chunk ready to write
    /// (its frames joined into batched messages when the client asked for `?batch=true`,
    /// `crate::batch`; `spare` keeps its capacity between calls), or `Pending` with the waker registered.
    /// A slow or closed session's deliveries are dropped instead; its own frames (replies,
    /// `disconnect`) are still written.
    pub fn poll_drain(
        &self,
        spare: &mut VecDeque<(u64, WsFrame)>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<bytes::Bytes> {
        let deliver = {
            let mut q = self.queue.lock();
            if q.frames.is_empty() {
                // Registered under the lock: a push after this sees the waker.
                self.waker.register(cx.waker());
                return Poll::Pending;
            }
            std::mem::swap(&mut q.frames, spare);
            !q.closed
        } && !self.is_slow();
        // The two queues take turns: each is checked here against what it held, so a
        // connection that once had a backlog (up to `max_pending_bytes` of small frames)
        // does not keep its size for life.
        spare.shrink_when_sparse();
        let total: usize = spare.iter().map(|(_, f)| self.cost(f)).sum();
        let mut chunk = bytes::BytesMut::with_capacity(total);
        let (mut delivered, mut uncompressed) = (0, 0);
        let mut batcher = Batcher::new(&self.encoding);
        for (id, f) in spare.iter() {
            if deliver || *id == SESSION {
                batcher.push(&mut chunk, f);
                delivered += self.cost(f);
                uncompressed += f.len();
            }
        }
        batcher.finish(&mut chunk);
        spare.clear();
        // Counted and released frame by frame, at what each was counted when queued: a
        // batch's own length is not the sum of its frames'.
        self.uncount(total - delivered);
        self.encoding.count_written(uncompressed, chunk.len());
        if delivered == 0 {
            // All dropped (slow or closed): poll again, with the waker registered.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.release(delivered);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(name: &str) -> ChannelName {
        ChannelName::parse(name).unwrap()
    }

    #[test]
    fn subscriptions_look_up_by_channel_and_by_id_after_removals() {
        let a = Outbox::new(1000, Arc::default(), Encoding::plain());
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
    fn a_backlog_does_not_keep_its_queues() {
        let a = Outbox::new(1 << 30, Arc::default(), Encoding::plain());
        a.subscribe(ch("one"), 1);
        let mut spare = VecDeque::new();
        let mut cx = TaskContext::from_waker(futures_util::task::noop_waker_ref());
        let mut round = |n: usize, spare: &mut VecDeque<(u64, WsFrame)>| {
            for _ in 0..n {
                assert!(queue(&a, 1, "x"));
            }
            assert!(a.poll_drain(spare, &mut cx).is_ready());
        };
        round(10_000, &mut spare);
        assert!(spare.capacity() >= 10_000);
        // The two queues take turns: each is cut down on its next turn with little in it.
        round(1, &mut spare);
        round(1, &mut spare);
        assert!(spare.capacity() < 64, "{}", spare.capacity());
        assert!(a.queue.lock().frames.capacity() < 64);
    }

    #[test]
    fn outbox_takes_live_subscriptions_only_and_drains_in_one_chunk() {
        let a = Outbox::new(1000, Arc::default(), Encoding::plain());
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

    /// A compressed connection counts, and writes, a frame's compressed form: the
    /// slow-consumer limit bounds what is really written.
    #[test]
    fn a_compressed_outbox_counts_what_it_writes() {
        let counter = |name: &str| prometheus::IntCounter::new(name, "-").expect("counter");
        let (uncompressed, written) = (counter("u"), counter("w"));
        let wire = Arc::new(crate::frame::Wire::new(
            256,
            counter("c"),
            uncompressed.clone(),
            written.clone(),
        ));
        let agreed = crate::deflate::offer::negotiate(["permessage-deflate"]);
        let a = Outbox::new(1 << 20, Arc::default(), Encoding::new(wire, agreed));
        a.subscribe(ch("one"), 1);
        let frame = WsFrame::text(&crate::deflate::sample::message(4096));
        assert_eq!(a.offer(1, &frame), Offer::Taken);
        let pending = a.pending();
        assert!(pending * 3 < frame.len(), "{pending} of {}", frame.len());
        let chunk = drain(&a).expect("a chunk");
        assert_eq!(chunk.len(), pending);
        assert_eq!(chunk[0], 0xc1);
        assert_eq!(a.pending(), 0);
        assert_eq!(uncompressed.get() as usize, frame.len());
        assert_eq!(written.get() as usize, pending);
    }

    #[test]
    fn a_closed_outbox_drops_and_refuses_everything() {
        let a = Outbox::new(1000, Arc::default(), Encoding::plain());
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
        let a = Outbox::new(100, pressure.clone(), Encoding::plain());
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
        let a = Outbox::new(100, pressure.clone(), Encoding::plain());
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
        let a = Outbox::new(100, pressure.clone(), Encoding::plain());
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
