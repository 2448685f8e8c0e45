//! The response body of a WebSocket connection: what the session actor writes (replies,
//! pings, the Close frame), and between those the deliveries waiting in the session's
//! outbox, already framed by the broker, copied into the connection in one chunk per batch
//! without waking the actor.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::outbox::{Outbox, WsFrame};

/// The body: the actor's output goes first within a poll, and once the actor has closed,
/// nothing from the outbox follows.
pub(super) struct SessionBody<S> {
    /// The actor's own output stream.
    pub actor: S,
    /// The session's outbox, drained between the actor's frames.
    pub outbox: Arc<Outbox>,
    /// The drained queue, kept for its capacity.
    pub spare: VecDeque<(u64, WsFrame)>,
}

impl<S> futures_util::Stream for SessionBody<S>
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, actix_web::Error>> + Unpin,
{
    type Item = Result<bytes::Bytes, actix_web::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.actor).poll_next(cx) {
            Poll::Pending => {}
            done_or_bytes => return done_or_bytes,
        }
        this.outbox
            .poll_drain(&mut this.spare, cx)
            .map(|chunk| Some(Ok(chunk)))
    }
}
