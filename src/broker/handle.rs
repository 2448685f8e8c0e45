//! How the broker reaches one session: its ids, its control recipient and its outbox,
//! shared (`Arc`) by all of the session's subscriptions. Offering a frame here is where a
//! slow consumer is found and told to close with 4001.

use std::sync::Arc;

use actix::Recipient;

use crate::metrics::Metrics;
use crate::outbox::{Offer, Outbox, SessionControl, WsFrame};
use crate::protocol::{ClientInfo, CloseCode};

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
    /// Hands a `subscribed` reply to the session (see [`Outbox::offer_reply`]).
    pub(super) fn send_reply(&self, sub_id: u64, frame: WsFrame, metrics: &Metrics) {
        self.settle(self.outbox.offer_reply(sub_id, frame), metrics);
    }

    /// Hands a frame to the session; false when the session is (now) a slow consumer.
    pub(super) fn send(&self, sub_id: u64, frame: &WsFrame, metrics: &Metrics) -> bool {
        self.settle(self.outbox.offer(sub_id, frame), metrics)
    }

    /// True when the frame was taken; the offer that found the session slow counts it and
    /// tells the session to close with 4001 (once).
    fn settle(&self, offer: Offer, metrics: &Metrics) -> bool {
        match offer {
            Offer::Taken => true,
            Offer::Slow { first } => {
                if first {
                    metrics.slow_consumers.inc();
                    log::info!(
                        "slow consumer client={} pending={}",
                        self.client,
                        self.outbox.pending()
                    );
                    self.control
                        .do_send(SessionControl::Close(CloseCode::SlowConsumer));
                }
                false
            }
        }
    }
}
