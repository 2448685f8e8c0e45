//! Publishing from a WebSocket: the per-connection rate limit (a token bucket, applied as
//! commands arrive), and the `publish` command, run in its turn of the session's command
//! queue while the engine assigns the offset, its `published` reply paced by the broker's
//! backpressure.

use std::sync::Arc;
use std::time::Instant;

use actix_web_actors::ws;
use serde_json::value::RawValue;

use super::queue::Queued;
use super::Session;
use crate::channel::ChannelName;
use crate::protocol::{Command, CommandError, ErrorCode, Id, Request, ServerFrame};

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
    /// A command as it arrives: a publication over `limits.client_publish_rate` is refused
    /// now (the rate is the client's sending rate), though answered in its turn.
    pub(super) fn admit(&mut self, request: Request) -> Queued {
        if matches!(request.command, Command::Publish { .. }) && !self.bucket.take(Instant::now()) {
            return Queued::Refused(CommandError {
                id: request.id,
                code: ErrorCode::RateLimited,
                message: "publishing faster than limits.client_publish_rate".into(),
            });
        }
        Queued::Command(request)
    }

    /// The `publish` command, in its turn: the engine assigns the offset while the queue
    /// waits, so one connection's publications are published in the order they were sent.
    pub(super) fn publish(
        &mut self,
        id: Option<Id>,
        channel: ChannelName,
        data: Box<RawValue>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let ns = self.node.namespaces.get(channel.namespace()).clone();
        if !self.identity.can_publish(&channel, &ns) {
            return self.reply_error(
                ctx,
                id.as_ref(),
                ErrorCode::Forbidden,
                "publishing to this channel is not allowed",
            );
        }
        let node = self.node.clone();
        let info = self.info.clone();
        let fut = async move {
            let r = node
                .engine
                .publish(&channel, Arc::from(data), Some(info), &ns)
                .await;
            // `published` (and this connection's next command) waits while the channel's
            // subscribers here are behind but reading: backpressure.
            if r.is_ok() {
                node.broker.pace(&channel).await;
            }
            (channel, r)
        };
        self.hold_for(ctx, fut, move |act, ctx, (channel, r)| match r {
            Ok(res) => {
                act.node.metrics.publications.inc();
                let frame = ServerFrame::Published {
                    id: id.as_ref(),
                    channel: channel.as_str(),
                    offset: res.offset,
                    epoch: &res.epoch,
                }
                .to_text();
                act.send(ctx, frame);
            }
            Err(e) => act.engine_error(ctx, id.as_ref(), &e),
        });
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
