//! Publishing from a WebSocket: the `publish` command, started in its turn of the session's
//! command queue. Publications pipeline: up to [`PUBLISH_WINDOW`] of one connection are in
//! flight at once. The engine fixes a publication's order when it is started (its offset
//! follows the previous one's), each waits for its answer (or finds its idempotency key
//! already used and answers the first result) and the broker's backpressure off the actor,
//! and the replies, errors included, are released strictly in command order. Any other
//! command waits until the window is empty (`queue`). Its rate limit is applied as commands
//! arrive ([`super::rate`]).

use std::sync::Arc;

use actix::prelude::*;
use actix_web_actors::ws;
use bytestring::ByteString;
use serde_json::value::RawValue;

use super::Session;
use crate::channel::ChannelName;
use crate::engine::Publish;
use crate::protocol::{error_frame, ErrorCode, Id, IdempotencyKey, ServerFrame};

/// The most publications of one connection in flight at once. Large enough that one
/// connection keeps the engine busy (the Redis engine sends what queued as one pipeline
/// per round trip), small enough that a connection holds little: a reply slot each, and
/// the broker's backpressure is felt within this many publications.
pub(super) const PUBLISH_WINDOW: usize = 64;

impl Session {
    /// The `publish` command, in its turn: started now (so offsets follow the command
    /// order), answered when its turn among the replies comes.
    pub(super) fn publish(
        &mut self,
        id: Option<Id>,
        channel: ChannelName,
        data: Box<RawValue>,
        idempotency_key: Option<IdempotencyKey>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let slot = self.open_reply();
        let ns = self.node.namespaces.get(channel.namespace()).clone();
        if !self.identity.can_publish(&channel, &ns) {
            let frame = error_frame(
                id.as_ref(),
                ErrorCode::Forbidden,
                "publishing to this channel is not allowed",
            );
            // Released after the replies of the publications before it.
            self.fill_reply(slot, frame);
            return self.release_replies(ctx);
        }
        let node = self.node.clone();
        let p = Publish {
            data: Arc::from(data),
            info: Some(self.info.clone()),
            idempotency_key,
        };
        let ticket = node.engine.publish(&channel, p, &ns);
        let fut = async move {
            let r = ticket.await;
            // This reply (and, once the window is full, the connection's next command)
            // waits while the channel's subscribers here are behind but reading:
            // backpressure. A repeated key delivered nothing, so there is nothing to wait
            // for.
            if r.as_ref().is_ok_and(|r| !r.duplicate) {
                node.broker.pace(&channel).await;
            }
            (channel, r)
        };
        ctx.spawn(fut.into_actor(self).map(move |(channel, r), act, ctx| {
            let frame = match r {
                Ok(res) => {
                    // A repeated key published nothing: the reply is the first one's, and
                    // it is not counted as a publication.
                    if !res.duplicate {
                        act.node.metrics.publications.inc();
                    }
                    ServerFrame::Published {
                        id: id.as_ref(),
                        channel: channel.as_str(),
                        offset: res.offset,
                        epoch: &res.epoch,
                    }
                    .to_text()
                }
                Err(e) => {
                    log::warn!("engine error client={}: {e}", act.client);
                    error_frame(
                        id.as_ref(),
                        ErrorCode::Unavailable,
                        "the engine cannot take this command now; try again",
                    )
                }
            };
            act.fill_reply(slot, frame);
            act.release_replies(ctx);
            act.pump(ctx);
        }));
    }

    /// A place for the next publication's reply; its number counts from the window's
    /// oldest reply still held, which only moves when replies are released.
    fn open_reply(&mut self) -> usize {
        self.commands.open_slot();
        self.replies.push_back(None);
        self.released + self.replies.len() - 1
    }

    /// The reply of publication `slot` is ready.
    fn fill_reply(&mut self, slot: usize, frame: ByteString) {
        if let Some(r) = slot
            .checked_sub(self.released)
            .and_then(|i| self.replies.get_mut(i))
        {
            *r = Some(frame);
        }
    }

    /// Sends the ready replies at the front of the window, in order, and frees their
    /// places; a reply still waiting holds back every one after it.
    fn release_replies(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let mut n = 0;
        while let Some(Some(_)) = self.replies.front() {
            if let Some(Some(frame)) = self.replies.pop_front() {
                self.send(ctx, frame);
            }
            n += 1;
        }
        self.released += n;
        self.commands.close_slots(n);
        if self.replies.is_empty() && self.replies.capacity() > PUBLISH_WINDOW {
            self.replies = Default::default();
        }
    }
}
