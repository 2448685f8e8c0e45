//! The response body of a WebSocket connection: the session's outbox (its replies and the
//! deliveries, in one queue, so they reach the client in the order they were queued),
//! copied into the connection in one chunk per batch without waking the actor, and
//! between those the actor's control frames (Ping, Pong, the Close frame).

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
    /// The actor's last output (its Close frame), held while the outbox empties.
    pub held: Option<bytes::Bytes>,
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
        loop {
            // Once the session closed, what its outbox still holds (its last replies and the
            // `disconnect` push) goes before the actor's Close frame; nothing new enters it.
            if this.outbox.is_closed() {
                if let Poll::Ready(chunk) = this.outbox.poll_drain(&mut this.spare, cx) {
                    return Poll::Ready(Some(Ok(chunk)));
                }
                if let Some(held) = this.held.take() {
                    return Poll::Ready(Some(Ok(held)));
                }
                return std::pin::Pin::new(&mut this.actor).poll_next(cx);
            }
            // The actor writes only control frames (Ping, Pong, Close): it goes first, so a
            // Pong is not held behind a long run of deliveries. When the actor closed the
            // session while it was polled, its Close frame waits for the outbox's last.
            match std::pin::Pin::new(&mut this.actor).poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) if this.outbox.is_closed() => {
                    this.held = Some(bytes);
                    continue;
                }
                Poll::Pending => {}
                done_or_bytes => return done_or_bytes,
            }
            return this
                .outbox
                .poll_drain(&mut this.spare, cx)
                .map(|chunk| Some(Ok(chunk)));
        }
    }
}
