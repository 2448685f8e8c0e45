//! The ordering of each channel's stream as this node delivers it: every publication once,
//! in offset order, with no gap within an epoch. [`Tracks`] remembers, per channel the node
//! is subscribed to, the last position delivered; a publication that jumps ahead (a lost
//! message, a reconnect) has the missing range read from history first, a duplicate is
//! dropped, and publications that arrive before the subscription's baseline is known are
//! held. After a reconnect, [`Tracks::catch_up`] delivers what was missed meanwhile, and
//! opens a new epoch (telling the node to `reset`) when Redis lost the channel.
//!
//! The state machine does no I/O of its own: it reads history through the [`History`] it
//! is handed (the engine's Redis, or a fake in the tests below) and delivers to the
//! node's [`EngineHandler`]. The reader task (`reader.rs`) feeds it.

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::resp::{CmdError, StreamReply};
use super::stream::parse_publication;
use crate::channel::ChannelName;
use crate::engine::EngineHandler;
use crate::protocol::message_frame;
use crate::shrink::Shrink;

/// Publications held for a channel whose subscription baseline is not known yet; past it
/// they are dropped (and the gap filler finds them in history).
const MAX_PENDING: usize = 10_000;

/// The upper bound of "everything after": past any real offset, and still exact as a Lua
/// number (a double holds integers up to 2^53), which is what the range function reads.
const TO_END: u64 = u64::MAX >> 12;

/// Where a channel's stream stands for this node.
#[derive(Debug, Clone)]
pub(super) struct Position {
    /// `None` when the channel had no meta hash when the node subscribed.
    pub(super) epoch: Option<Arc<str>>,
    pub(super) offset: u64,
}

/// A publication received over pub/sub, not yet delivered.
pub(super) struct Incoming {
    pub(super) offset: u64,
    pub(super) epoch: Arc<str>,
    /// The stored publication, `{"data":..,"info":..}`.
    pub(super) payload: String,
}

/// What the ordering reads when pub/sub did not bring everything: a channel's history.
/// The engine reads Redis; the tests use a fake. Static dispatch, so delivery in order
/// costs no allocation for the seam.
pub(super) trait History: Sync {
    /// Offsets `from..=to` of a channel's history with the channel's latest offset and
    /// epoch (empty when Redis has no meta hash for it); creates nothing.
    fn range(
        &self,
        channel: &str,
        from: u64,
        to: u64,
    ) -> impl Future<Output = Result<StreamReply, CmdError>> + Send;

    /// Creates the channel's meta hash (a new epoch) if it is missing, and answers the
    /// channel's latest offset and epoch.
    fn open_epoch(
        &self,
        channel: &str,
    ) -> impl Future<Output = Result<StreamReply, CmdError>> + Send;
}

/// A channel the node is subscribed to.
struct Track {
    name: ChannelName,
    /// Tells one subscription from an earlier one of the same channel.
    generation: u64,
    /// The last position delivered; `None` until `subscribe_node` has read the baseline.
    last: Option<Position>,
    /// Publications received before the baseline was known.
    pending: Vec<Incoming>,
    /// The offset and [`digest`] of the last publication handed to the node: after a
    /// failover the node compares it with what Redis holds at that offset (`shards.rs`).
    digest: Cell<(u64, u64)>,
}

/// A digest of a stored publication, to tell whether the one Redis holds at an offset is
/// the one this node delivered (the same within one process, not across processes).
pub(super) fn digest(payload: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    payload.hash(&mut h);
    h.finish()
}

impl Track {
    /// Hands one publication to the handler.
    fn emit(&self, out: Option<&dyn EngineHandler>, offset: u64, epoch: &Arc<str>, payload: &str) {
        let Some(handler) = out else {
            return;
        };
        let name = &self.name;
        self.digest.set((offset, digest(payload)));
        match parse_publication(offset, payload) {
            Some(publication) => {
                let frame = message_frame(name.as_str(), &publication);
                handler.on_publication(name.clone(), offset, epoch.clone(), frame);
            }
            None => log::warn!("undecodable publication channel={name} offset={offset}"),
        }
    }

    /// Delivers `inc` and records it as the last position.
    fn emit_last(&mut self, out: Option<&dyn EngineHandler>, inc: Incoming) {
        self.emit(out, inc.offset, &inc.epoch, &inc.payload);
        self.last = Some(Position {
            epoch: Some(inc.epoch),
            offset: inc.offset,
        });
    }

    /// Takes a received publication: holds it while the baseline is unknown, drops a
    /// duplicate, delivers it when it is next in order. Otherwise hands it back with the
    /// first offset missing before it, to be read from history.
    fn receive(
        &mut self,
        out: Option<&dyn EngineHandler>,
        inc: Incoming,
    ) -> Option<(u64, Incoming)> {
        let Some(last) = &self.last else {
            if self.pending.len() < MAX_PENDING {
                self.pending.push(inc);
            } else {
                log::warn!(
                    "dropping publication held before baseline channel={}",
                    self.name
                );
            }
            return None;
        };
        let same_epoch = last.epoch.as_deref() == Some(&*inc.epoch);
        if same_epoch && inc.offset <= last.offset {
            return None;
        }
        // A new epoch starts at 1: what came before this message in it is missing too.
        let from = if same_epoch {
            last.offset.saturating_add(1)
        } else {
            1
        };
        if inc.offset == from {
            self.emit_last(out, inc);
            return None;
        }
        Some((from, inc))
    }

    /// Delivers what history held of `from..inc.offset`, then `inc` itself; a gap history
    /// no longer covers is logged and skipped.
    fn fill(
        &mut self,
        out: Option<&dyn EngineHandler>,
        from: u64,
        inc: Incoming,
        found: Result<StreamReply, CmdError>,
    ) {
        let to = inc.offset.saturating_sub(1);
        let mut next = from;
        match found {
            Ok((_, epoch, entries)) if *epoch == *inc.epoch => {
                for (offset, payload) in &entries {
                    if *offset >= next && *offset <= to {
                        self.emit(out, *offset, &inc.epoch, payload);
                        next = offset.saturating_add(1);
                    }
                }
            }
            Ok((_, epoch, _)) => log::warn!(
                "gap not filled, the channel moved to another epoch channel={} epoch={epoch}",
                self.name
            ),
            Err(e) => log::warn!("gap fill failed channel={}: {e}", self.name),
        }
        if next <= to {
            log::warn!(
                "publications lost from history channel={} epoch={} missing={next}..={to}",
                self.name,
                inc.epoch
            );
        }
        self.emit_last(out, inc);
    }
}

/// The channels this node is subscribed to and where each one's stream stands.
pub(super) struct Tracks {
    map: Mutex<HashMap<Arc<str>, Track>>,
    /// The next subscription's generation.
    generation: AtomicU64,
}

impl Tracks {
    pub(super) fn new() -> Self {
        Tracks {
            map: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(1),
        }
    }

    /// Starts tracking a channel, its baseline not known yet; answers the subscription's
    /// generation, or `None` when the channel is tracked already.
    pub(super) fn insert(&self, channel: &ChannelName) -> Option<u64> {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let mut map = self.map.lock();
        if map.contains_key(channel.as_str()) {
            return None;
        }
        map.insert(
            channel.shared(),
            Track {
                name: channel.clone(),
                generation,
                last: None,
                pending: Vec::new(),
                digest: Cell::new((0, 0)),
            },
        );
        Some(generation)
    }

    /// Stops tracking a channel if it is still the subscription of `generation` (a
    /// subscribe that failed half-way).
    pub(super) fn forget(&self, channel: &str, generation: u64) {
        let mut map = self.map.lock();
        if map.get(channel).is_some_and(|t| t.generation == generation) {
            map.remove(channel);
            map.shrink_when_sparse();
        }
    }

    /// Stops tracking a channel.
    pub(super) fn remove(&self, channel: &str) {
        let mut map = self.map.lock();
        map.remove(channel);
        // After a burst of channels the table goes back to the size of what is left.
        map.shrink_when_sparse();
    }

    /// The name of a tracked channel.
    pub(super) fn name(&self, channel: &str) -> Option<ChannelName> {
        self.map.lock().get(channel).map(|t| t.name.clone())
    }

    /// Every tracked channel.
    pub(super) fn channels(&self) -> Vec<Arc<str>> {
        self.map.lock().keys().cloned().collect()
    }

    /// Every tracked channel with its generation and last position (to resubscribe and
    /// catch up after a reconnect).
    pub(super) fn held(&self) -> Vec<(Arc<str>, u64, Option<Position>)> {
        self.map
            .lock()
            .iter()
            .map(|(k, t)| (k.clone(), t.generation, t.last.clone()))
            .collect()
    }

    /// One tracked channel's generation, last position and the offset and [`digest`] of the
    /// last publication delivered (to check and catch up after its subscription alone was
    /// lost and restored, on a cluster).
    pub(super) fn held_one(&self, channel: &str) -> Option<(u64, Option<Position>, (u64, u64))> {
        self.map
            .lock()
            .get(channel)
            .map(|t| (t.generation, t.last.clone(), t.digest.get()))
    }

    /// Sets a subscription's baseline (read by `subscribe_node` after SUBSCRIBE was
    /// confirmed) and delivers what was held until then.
    pub(super) async fn baseline(
        &self,
        history: &impl History,
        out: Option<&dyn EngineHandler>,
        channel: &str,
        generation: u64,
        position: Position,
    ) {
        let pending = {
            let mut map = self.map.lock();
            let Some(track) = map.get_mut(channel) else {
                return;
            };
            if track.generation != generation || track.last.is_some() {
                return;
            }
            track.last = Some(position);
            std::mem::take(&mut track.pending)
        };
        for inc in pending {
            self.deliver(history, out, channel, inc).await;
        }
    }

    /// Delivers a received publication in order: drops duplicates, holds it while the
    /// subscription's baseline is unknown, and fills a gap from history first.
    pub(super) async fn deliver(
        &self,
        history: &impl History,
        out: Option<&dyn EngineHandler>,
        channel: &str,
        inc: Incoming,
    ) {
        let (generation, from, inc) = {
            let mut map = self.map.lock();
            let Some(track) = map.get_mut(channel) else {
                return;
            };
            match track.receive(out, inc) {
                None => return,
                Some((from, inc)) => (track.generation, from, inc),
            }
        };
        let found = history
            .range(channel, from, inc.offset.saturating_sub(1))
            .await;
        let mut map = self.map.lock();
        if let Some(track) = same_subscription(&mut map, channel, generation) {
            track.fill(out, from, inc, found);
        }
    }

    /// After a reconnect: delivers what a channel missed while the node was away.
    pub(super) async fn catch_up(
        &self,
        history: &impl History,
        out: Option<&dyn EngineHandler>,
        channel: &str,
        generation: u64,
        last: Position,
    ) {
        let mut from = last.offset.saturating_add(1);
        let mut read = history.range(channel, from, TO_END).await;
        if let Ok((offset, epoch, _)) = &read {
            if !epoch.is_empty() && last.epoch.as_deref() != Some(epoch.as_str()) && *offset > 0 {
                // A new epoch: its stream starts at 1.
                from = 1;
                read = history.range(channel, from, TO_END).await;
            }
        }
        let (offset, epoch, entries) = match read {
            Ok(r) => r,
            Err(e) => {
                log::warn!("catch-up failed channel={channel}: {e}");
                return;
            }
        };
        if epoch.is_empty() {
            // Nothing in Redis any more (it restarted empty): open the new epoch now, so
            // live subscribers are told to resync at once rather than at the next publication.
            self.open_new_epoch(history, out, channel, generation, last)
                .await;
            return;
        }
        let epoch: Arc<str> = Arc::from(epoch);
        let mut map = self.map.lock();
        let Some(track) = same_subscription(&mut map, channel, generation) else {
            return;
        };
        let current = track.last.clone().unwrap_or(last);
        let mut next = if current.epoch.as_deref() == Some(&*epoch) {
            current.offset.saturating_add(1)
        } else {
            1
        };
        if next > offset {
            return;
        }
        if entries.first().is_none_or(|(o, _)| *o > next) {
            log::warn!(
                "publications lost from history channel={channel} epoch={epoch} from={next}"
            );
        }
        for (o, payload) in &entries {
            if *o >= next {
                track.emit(out, *o, &epoch, payload);
                next = o + 1;
            }
        }
        track.last = Some(Position {
            epoch: Some(epoch),
            offset: offset.max(next.saturating_sub(1)),
        });
    }

    /// Creates the channel's meta hash (a new epoch) after Redis lost it, and tells the node
    /// (`reset`) when that epoch differs from the one its subscribers were in.
    async fn open_new_epoch(
        &self,
        history: &impl History,
        out: Option<&dyn EngineHandler>,
        channel: &str,
        generation: u64,
        last: Position,
    ) {
        let (offset, epoch) = match history.open_epoch(channel).await {
            Ok((offset, epoch, _)) => (offset, epoch),
            Err(e) => {
                log::warn!("could not open a new epoch channel={channel}: {e}");
                return;
            }
        };
        if offset > 0 {
            // Another node published in the new epoch meanwhile: its publications come over
            // pub/sub (or from history, as a gap) and the change of epoch shows with them.
            return;
        }
        let epoch: Arc<str> = Arc::from(epoch);
        let name = {
            let mut map = self.map.lock();
            let Some(track) = same_subscription(&mut map, channel, generation) else {
                return;
            };
            let current = track.last.clone().unwrap_or(last);
            if current.epoch.as_deref() == Some(&*epoch) {
                return;
            }
            track.last = Some(Position {
                epoch: Some(epoch.clone()),
                offset: 0,
            });
            track.name.clone()
        };
        if let Some(handler) = out {
            handler.on_reset(name, epoch);
        }
    }
}

/// The channel's track if it is still the subscription a background read (gap fill,
/// catch-up, new epoch) started for: a read that raced an unsubscribe and resubscribe must
/// not touch the newer subscription.
fn same_subscription<'a>(
    tracks: &'a mut HashMap<Arc<str>, Track>,
    channel: &str,
    generation: u64,
) -> Option<&'a mut Track> {
    tracks
        .get_mut(channel)
        .filter(|t| t.generation == generation)
}

#[cfg(test)]
mod tests {
    use bytestring::ByteString;

    use super::*;

    /// What the node was handed, in order.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Out {
        Publication(u64, String),
        Reset(String),
    }

    /// A node handler that records what it is handed.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Out>>);

    impl Recorder {
        fn take(&self) -> Vec<Out> {
            std::mem::take(&mut *self.0.lock())
        }
    }

    impl EngineHandler for Recorder {
        fn on_publication(&self, _: ChannelName, offset: u64, epoch: Arc<str>, frame: ByteString) {
            assert!(frame.contains("\"message\""), "a message frame: {frame}");
            self.0
                .lock()
                .push(Out::Publication(offset, epoch.to_string()));
        }
        fn on_push(&self, _: ChannelName, _: ByteString) {}
        fn disconnect_user(&self, _: &str) -> usize {
            0
        }
        fn on_reset(&self, _: ChannelName, epoch: Arc<str>) {
            self.0.lock().push(Out::Reset(epoch.to_string()));
        }
    }

    /// A channel's history as Redis would hold it, with a switch to make reads fail and a
    /// hook that runs during a read (to race it).
    #[derive(Default)]
    struct FakeHistory {
        /// The channel's epoch; empty when Redis lost the channel.
        epoch: Mutex<String>,
        /// The latest offset in `epoch`.
        latest: Mutex<u64>,
        /// Offsets still held in history.
        held: Mutex<Vec<u64>>,
        failing: Mutex<bool>,
        /// `(from, to)` of every range read.
        reads: Mutex<Vec<(u64, u64)>>,
        /// What `open_epoch` answers: (offset, epoch).
        opened: Mutex<Option<(u64, String)>>,
        during_read: Mutex<Option<Box<dyn Fn() + Send>>>,
    }

    impl FakeHistory {
        fn with(epoch: &str, latest: u64, held: &[u64]) -> Self {
            let h = FakeHistory::default();
            *h.epoch.lock() = epoch.to_string();
            *h.latest.lock() = latest;
            *h.held.lock() = held.to_vec();
            h
        }
        fn reads(&self) -> Vec<(u64, u64)> {
            std::mem::take(&mut *self.reads.lock())
        }
    }

    impl History for FakeHistory {
        async fn range(&self, _: &str, from: u64, to: u64) -> Result<StreamReply, CmdError> {
            self.reads.lock().push((from, to));
            if let Some(hook) = &*self.during_read.lock() {
                hook();
            }
            if *self.failing.lock() {
                return Err(CmdError::Timeout);
            }
            let epoch = self.epoch.lock().clone();
            let entries = self
                .held
                .lock()
                .iter()
                .filter(|o| (from..=to).contains(*o) && !epoch.is_empty())
                .map(|o| (*o, payload(*o)))
                .collect();
            Ok((*self.latest.lock(), epoch, entries))
        }

        async fn open_epoch(&self, _: &str) -> Result<StreamReply, CmdError> {
            match self.opened.lock().clone() {
                Some((offset, epoch)) => Ok((offset, epoch, Vec::new())),
                None => Err(CmdError::Reply("history")),
            }
        }
    }

    fn payload(offset: u64) -> String {
        format!(r#"{{"data":{offset}}}"#)
    }

    fn inc(offset: u64, epoch: &str) -> Incoming {
        Incoming {
            offset,
            epoch: Arc::from(epoch),
            payload: payload(offset),
        }
    }

    fn at(offset: u64, epoch: &str) -> Position {
        Position {
            epoch: Some(Arc::from(epoch)),
            offset,
        }
    }

    fn pubs(offsets: &[u64], epoch: &str) -> Vec<Out> {
        offsets
            .iter()
            .map(|o| Out::Publication(*o, epoch.to_string()))
            .collect()
    }

    const CH: &str = "news";

    /// Tracks with `news` subscribed at `position`.
    async fn subscribed(h: &FakeHistory, out: &Recorder, position: Position) -> (Tracks, u64) {
        let tracks = Tracks::new();
        let name = ChannelName::parse(CH).expect("valid channel");
        let generation = tracks.insert(&name).expect("new subscription");
        tracks
            .baseline(h, Some(out), CH, generation, position)
            .await;
        (tracks, generation)
    }

    fn last(tracks: &Tracks) -> Option<(Option<String>, u64)> {
        let map = tracks.map.lock();
        let p = map.get(CH)?.last.clone()?;
        Some((p.epoch.map(|e| e.to_string()), p.offset))
    }

    #[tokio::test]
    async fn publications_in_order_go_out_at_once() {
        let (h, out) = (FakeHistory::with("e", 0, &[]), Recorder::default());
        let (tracks, _) = subscribed(&h, &out, at(0, "e")).await;
        for o in 1..=3 {
            tracks.deliver(&h, Some(&out), CH, inc(o, "e")).await;
        }
        assert_eq!(out.take(), pubs(&[1, 2, 3], "e"));
        assert!(h.reads().is_empty(), "no history read on the hot path");
        assert_eq!(last(&tracks), Some((Some("e".into()), 3)));
    }

    #[tokio::test]
    async fn duplicates_are_dropped() {
        let (h, out) = (FakeHistory::with("e", 0, &[]), Recorder::default());
        let (tracks, _) = subscribed(&h, &out, at(4, "e")).await;
        for o in [3, 4, 5, 5, 4, 6] {
            tracks.deliver(&h, Some(&out), CH, inc(o, "e")).await;
        }
        assert_eq!(out.take(), pubs(&[5, 6], "e"));
        assert!(h.reads().is_empty());
    }

    #[tokio::test]
    async fn a_jump_is_filled_from_history_before_the_newer_publication() {
        let (h, out) = (
            FakeHistory::with("e", 6, &[1, 2, 3, 4, 5, 6]),
            Recorder::default(),
        );
        let (tracks, _) = subscribed(&h, &out, at(2, "e")).await;
        tracks.deliver(&h, Some(&out), CH, inc(6, "e")).await;
        assert_eq!(h.reads(), vec![(3, 5)]);
        assert_eq!(out.take(), pubs(&[3, 4, 5, 6], "e"));
        // The filled ones arriving late over pub/sub are duplicates now.
        for o in [4, 5, 7] {
            tracks.deliver(&h, Some(&out), CH, inc(o, "e")).await;
        }
        assert_eq!(out.take(), pubs(&[7], "e"));
    }

    #[tokio::test]
    async fn what_history_lost_is_skipped_and_the_stream_goes_on() {
        let (h, out) = (FakeHistory::with("e", 5, &[4, 5]), Recorder::default());
        let (tracks, _) = subscribed(&h, &out, at(1, "e")).await;
        tracks.deliver(&h, Some(&out), CH, inc(5, "e")).await;
        assert_eq!(out.take(), pubs(&[4, 5], "e"));
        assert_eq!(last(&tracks), Some((Some("e".into()), 5)));
    }

    #[tokio::test]
    async fn a_failed_read_still_delivers_the_publication_once() {
        let (h, out) = (FakeHistory::with("e", 4, &[2, 3, 4]), Recorder::default());
        *h.failing.lock() = true;
        let (tracks, _) = subscribed(&h, &out, at(1, "e")).await;
        tracks.deliver(&h, Some(&out), CH, inc(4, "e")).await;
        assert_eq!(h.reads(), vec![(2, 3)]);
        assert_eq!(out.take(), pubs(&[4], "e"));
        *h.failing.lock() = false;
        for o in [3, 4, 5] {
            tracks.deliver(&h, Some(&out), CH, inc(o, "e")).await;
        }
        assert_eq!(
            out.take(),
            pubs(&[5], "e"),
            "no step back once a gap was given up"
        );
        assert!(h.reads().is_empty());
    }

    #[tokio::test]
    async fn a_new_epoch_starts_at_one_and_is_filled_from_its_own_history() {
        let (h, out) = (FakeHistory::with("e2", 3, &[1, 2, 3]), Recorder::default());
        let (tracks, _) = subscribed(&h, &out, at(9, "e1")).await;
        tracks.deliver(&h, Some(&out), CH, inc(3, "e2")).await;
        assert_eq!(h.reads(), vec![(1, 2)]);
        assert_eq!(out.take(), pubs(&[1, 2, 3], "e2"));
        assert_eq!(last(&tracks), Some((Some("e2".into()), 3)));
        // The first publication of yet another epoch needs no read.
        tracks.deliver(&h, Some(&out), CH, inc(1, "e3")).await;
        assert!(h.reads().is_empty());
        assert_eq!(out.take(), pubs(&[1], "e3"));
    }

    #[tokio::test]
    async fn a_fill_from_another_epoch_delivers_only_the_publication() {
        // History already moved on to e2 when the e1 gap is read.
        let (h, out) = (FakeHistory::with("e2", 2, &[1, 2]), Recorder::default());
        let (tracks, _) = subscribed(&h, &out, at(1, "e1")).await;
        tracks.deliver(&h, Some(&out), CH, inc(4, "e1")).await;
        assert_eq!(out.take(), pubs(&[4], "e1"));
    }

    #[tokio::test]
    async fn publications_before_the_baseline_are_held_then_ordered() {
        let (h, out) = (FakeHistory::with("e", 0, &[]), Recorder::default());
        let tracks = Tracks::new();
        let name = ChannelName::parse(CH).expect("valid channel");
        let generation = tracks.insert(&name).expect("new subscription");
        assert_eq!(tracks.insert(&name), None, "subscribed once");
        for o in [3, 4, 5] {
            tracks.deliver(&h, Some(&out), CH, inc(o, "e")).await;
        }
        assert!(out.take().is_empty(), "held until the baseline is known");
        // A baseline of an older subscription does not apply.
        tracks
            .baseline(&h, Some(&out), CH, generation + 7, at(0, "e"))
            .await;
        assert!(out.take().is_empty());
        tracks
            .baseline(&h, Some(&out), CH, generation, at(3, "e"))
            .await;
        assert_eq!(out.take(), pubs(&[4, 5], "e"), "3 was in the baseline");
    }

    #[tokio::test]
    async fn a_read_that_raced_a_resubscribe_leaves_the_new_subscription_alone() {
        let (h, out) = (
            FakeHistory::with("e", 5, &[2, 3, 4, 5]),
            Recorder::default(),
        );
        let (tracks, _) = subscribed(&h, &out, at(1, "e")).await;
        let tracks = Arc::new(tracks);
        let during = tracks.clone();
        *h.during_read.lock() = Some(Box::new(move || {
            during.remove(CH);
            let name = ChannelName::parse(CH).expect("valid channel");
            during.insert(&name).expect("subscribed again");
        }));
        tracks.deliver(&h, Some(&out), CH, inc(5, "e")).await;
        assert!(out.take().is_empty());
        assert_eq!(
            last(&tracks),
            None,
            "the new subscription still awaits its baseline"
        );
    }

    #[tokio::test]
    async fn catch_up_delivers_what_was_missed_in_the_same_epoch() {
        let (h, out) = (
            FakeHistory::with("e", 5, &[1, 2, 3, 4, 5]),
            Recorder::default(),
        );
        let (tracks, generation) = subscribed(&h, &out, at(2, "e")).await;
        tracks
            .catch_up(&h, Some(&out), CH, generation, at(2, "e"))
            .await;
        assert_eq!(h.reads(), vec![(3, TO_END)]);
        assert_eq!(out.take(), pubs(&[3, 4, 5], "e"));
        assert_eq!(last(&tracks), Some((Some("e".into()), 5)));
    }

    #[tokio::test]
    async fn catch_up_into_a_new_epoch_reads_it_from_one() {
        let (h, out) = (FakeHistory::with("e2", 2, &[1, 2]), Recorder::default());
        let (tracks, generation) = subscribed(&h, &out, at(7, "e1")).await;
        tracks
            .catch_up(&h, Some(&out), CH, generation, at(7, "e1"))
            .await;
        assert_eq!(h.reads(), vec![(8, TO_END), (1, TO_END)]);
        assert_eq!(out.take(), pubs(&[1, 2], "e2"));
        assert_eq!(last(&tracks), Some((Some("e2".into()), 2)));
    }

    #[tokio::test]
    async fn catch_up_after_redis_lost_the_channel_resets_into_a_new_epoch() {
        let (h, out) = (FakeHistory::with("", 0, &[]), Recorder::default());
        *h.opened.lock() = Some((0, "fresh".into()));
        let (tracks, generation) = subscribed(&h, &out, at(7, "e1")).await;
        tracks
            .catch_up(&h, Some(&out), CH, generation, at(7, "e1"))
            .await;
        assert_eq!(out.take(), vec![Out::Reset("fresh".into())]);
        assert_eq!(last(&tracks), Some((Some("fresh".into()), 0)));
        tracks.deliver(&h, Some(&out), CH, inc(1, "fresh")).await;
        assert_eq!(out.take(), pubs(&[1], "fresh"));
    }

    #[tokio::test]
    async fn no_reset_when_the_new_epoch_already_has_publications() {
        let (h, out) = (FakeHistory::with("", 0, &[]), Recorder::default());
        *h.opened.lock() = Some((2, "busy".into()));
        let (tracks, generation) = subscribed(&h, &out, at(7, "e1")).await;
        tracks
            .catch_up(&h, Some(&out), CH, generation, at(7, "e1"))
            .await;
        assert!(
            out.take().is_empty(),
            "they arrive as a gap with their own epoch"
        );
        assert_eq!(last(&tracks), Some((Some("e1".into()), 7)));
    }

    #[tokio::test]
    async fn a_failed_catch_up_changes_nothing() {
        let (h, out) = (FakeHistory::with("e", 5, &[3, 4, 5]), Recorder::default());
        *h.failing.lock() = true;
        let (tracks, generation) = subscribed(&h, &out, at(2, "e")).await;
        tracks
            .catch_up(&h, Some(&out), CH, generation, at(2, "e"))
            .await;
        assert!(out.take().is_empty());
        assert_eq!(last(&tracks), Some((Some("e".into()), 2)));
        // The next publication fills the gap instead.
        *h.failing.lock() = false;
        tracks.deliver(&h, Some(&out), CH, inc(6, "e")).await;
        assert_eq!(out.take(), pubs(&[3, 4, 5, 6], "e"));
    }
}
