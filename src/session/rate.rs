//! The per-connection rate limits, applied as commands arrive (before they queue): a token
//! bucket each for publications (`limits.client_publish_rate`) and for the commands that
//! reach the engine otherwise (`limits.client_command_rate`: subscribe, history, presence),
//! so one connection cannot keep the engine busy for every other. A refused command is
//! still answered in its turn, with `rate_limited`.

use std::time::Instant;

use super::queue::Queued;
use super::Session;
use crate::protocol::{Command, CommandError, ErrorCode, Request};

/// A token bucket: `rate` tokens a second, holding at most `rate`. The clock is passed in,
/// so tests drive it without sleeping.
pub(super) struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub(super) fn new(rate: u32, now: Instant) -> Self {
        TokenBucket {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            last: now,
        }
    }

    /// Takes one token at `now` if there is one.
    pub(super) fn take(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate);
        self.last = self.last.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Session {
    /// A command as it arrives: a publication over `limits.client_publish_rate`, or a
    /// command that reaches the engine (subscribe, history, presence) over
    /// `limits.client_command_rate`, is refused now (the rate is the client's sending rate),
    /// though answered in its turn.
    pub(super) fn admit(&mut self, request: Request) -> Queued {
        let (bucket, message) = match request.command {
            Command::Publish { .. } => (
                &mut self.bucket,
                "publishing faster than limits.client_publish_rate",
            ),
            Command::Subscribe { .. } | Command::History { .. } | Command::Presence { .. } => (
                &mut self.engine_bucket,
                "sending subscribe, history and presence faster than limits.client_command_rate",
            ),
            Command::Ping | Command::Unsubscribe { .. } | Command::Refresh { .. } => {
                return Queued::Command(request)
            }
        };
        if !bucket.take(Instant::now()) {
            return Queued::Refused(CommandError {
                id: request.id,
                code: ErrorCode::RateLimited,
                message: message.into(),
            });
        }
        Queued::Command(request)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_full_bucket_gives_one_burst_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, t0);
        assert!((0..10).all(|_| b.take(t0)), "a burst of `rate`");
        assert!(!b.take(t0), "the eleventh at once is refused");
        // 100 ms at 10/s is one token, and only one.
        let t1 = t0 + Duration::from_millis(100);
        assert!(b.take(t1));
        assert!(!b.take(t1));
        // A long pause refills to the burst, never past it.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| b.take(t2)).count(), 10);
    }

    #[test]
    fn partial_tokens_add_up_and_a_clock_going_back_takes_nothing() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(4, t0);
        assert_eq!((0..4).filter(|_| b.take(t0)).count(), 4);
        // Two steps of 125 ms at 4/s: half a token each, one in all.
        let t1 = t0 + Duration::from_millis(125);
        assert!(!b.take(t1));
        let t2 = t1 + Duration::from_millis(125);
        assert!(b.take(t2));
        // An earlier instant (another thread's clock read) adds no tokens.
        assert!(!b.take(t0));
        assert!(!b.take(t2));
    }
}
