//! When a publication asks Redis to refresh its channel's TTLs. The publish function
//! (`migrations/0004_lean_publish.lua`) sets the history and meta TTLs only when told to,
//! because two PEXPIREs per publication were a large part of its cost; this node remembers,
//! per channel, when it last asked ([`Refreshes`]), and asks again once half the padding
//! [`pad`] has passed. The TTLs it sends are padded by that much, so a channel's history
//! still lives at least `history_ttl` after each publication (and at most `history_ttl` +
//! pad after the last). Used by `stream::outgoing` when it builds a publication and by
//! the engine when a refresh may not have happened (the call failed, or was a repeat).
//! No I/O; the map is bounded, and forgetting an entry only costs one early refresh.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::stream::META_GRACE;

/// The longest padding: a busy channel refreshes at least every 15 s.
const MAX_PAD: Duration = Duration::from_secs(30);

/// How many channels are remembered at most; past it, the entries too old to matter go,
/// and all of them when that is not enough.
const MAX_CHANNELS: usize = 65_536;

/// The padding S added to the TTLs a refresh sets: min(history_ttl / 8, 30 s), or, for a
/// namespace that keeps no history, min(grace / 8, 30 s) for the meta hash alone.
pub(super) fn pad(history_ttl: Duration) -> Duration {
    let base = if history_ttl.is_zero() {
        META_GRACE
    } else {
        history_ttl
    };
    (base / 8).min(MAX_PAD)
}

/// The last time this node asked for each channel's refresh.
pub(super) struct Refreshes {
    last: Mutex<HashMap<Box<str>, Instant>>,
    limit: usize,
}

impl Refreshes {
    pub(super) fn new() -> Self {
        Self::with_limit(MAX_CHANNELS)
    }

    fn with_limit(limit: usize) -> Self {
        Refreshes {
            last: Mutex::new(HashMap::new()),
            limit,
        }
    }

    /// Whether a publication of `channel` made at `now` should refresh its TTLs (padded by
    /// `pad`), recording it when so. Asks again once pad / 2 has passed, not pad: the
    /// publications behind the refresh in the lane may run a little later than they were
    /// made, and the other half absorbs that delay.
    pub(super) fn due(&self, channel: &str, pad: Duration, now: Instant) -> bool {
        let mut last = self.last.lock();
        if let Some(at) = last.get_mut(channel) {
            if now.saturating_duration_since(*at) < pad / 2 {
                return false;
            }
            *at = now;
            return true;
        }
        if last.len() >= self.limit {
            // An entry older than MAX_PAD / 2 would ask for a refresh anyway.
            last.retain(|_, at| now.saturating_duration_since(*at) < MAX_PAD / 2);
            if last.len() >= self.limit / 4 * 3 {
                last.clear();
            }
        }
        last.insert(channel.into(), now);
        true
    }

    /// Forgets `channel`: its next publication refreshes. For a refresh that may not have
    /// run (the call failed, or an idempotency key made it a repeat).
    pub(super) fn forget(&self, channel: &str) {
        self.last.lock().remove(channel);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.last.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pad_is_an_eighth_of_the_ttl_up_to_30_s() {
        assert_eq!(pad(Duration::from_secs(8)), Duration::from_secs(1));
        assert_eq!(pad(Duration::from_secs(3600)), MAX_PAD);
        assert_eq!(pad(Duration::ZERO), META_GRACE / 8);
    }

    #[test]
    fn a_channel_refreshes_first_then_after_half_the_pad() {
        let r = Refreshes::new();
        let t = Instant::now();
        let s = Duration::from_secs(10);
        assert!(r.due("a", s, t), "unknown: refresh");
        assert!(!r.due("a", s, t + Duration::from_secs(4)));
        assert!(r.due("b", s, t + Duration::from_secs(4)), "per channel");
        assert!(r.due("a", s, t + Duration::from_secs(5)), "pad / 2 passed");
        assert!(!r.due("a", s, t + Duration::from_secs(9)));
        r.forget("a");
        assert!(r.due("a", s, t + Duration::from_secs(9)), "forgotten");
    }

    #[test]
    fn the_map_stays_bounded() {
        let r = Refreshes::with_limit(100);
        let t = Instant::now();
        let s = Duration::from_secs(10);
        for i in 0..1000 {
            assert!(r.due(&format!("c{i}"), s, t));
            assert!(r.len() <= 100);
        }
        // Old entries go first when the map is full.
        let r = Refreshes::with_limit(100);
        for i in 0..99 {
            r.due(&format!("old{i}"), s, t);
        }
        let later = t + MAX_PAD;
        r.due("fresh", s, later);
        r.due("fresh2", s, later);
        assert_eq!(r.len(), 2, "stale entries pruned, fresh ones kept");
        assert!(!r.due("fresh", s, later));
    }
}
