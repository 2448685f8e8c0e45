//! Publishing from a WebSocket: the `publish` command, run in its turn of the session's
//! command queue while the engine assigns the offset (or finds its idempotency key already
//! used and answers the first result), its `published` reply paced by the broker's
//! backpressure. Its rate limit is applied as commands arrive ([`super::rate`]).

use std::sync::Arc;

use actix_web_actors::ws;
use serde_json::value::RawValue;

use super::Session;
use crate::channel::ChannelName;
use crate::engine::Publish;
use crate::protocol::{ErrorCode, Id, IdempotencyKey, ServerFrame};

impl Session {
    /// The `publish` command, in its turn: the engine assigns the offset while the queue
    /// waits, so one connection's publications are published in the order they were sent.
    pub(super) fn publish(
        &mut self,
        id: Option<Id>,
        channel: ChannelName,
        data: Box<RawValue>,
        idempotency_key: Option<IdempotencyKey>,
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
        let p = Publish {
            data: Arc::from(data),
            info: Some(self.info.clone()),
            idempotency_key,
        };
        let fut = async move {
            let r = node.engine.publish(&channel, p, &ns).await;
            // `published` (and this connection's next command) waits while the channel's
            // subscribers here are behind but reading: backpressure. A repeated key
            // delivered nothing, so there is nothing to wait for.
            if r.as_ref().is_ok_and(|r| !r.duplicate) {
                node.broker.pace(&channel).await;
            }
            (channel, r)
        };
        self.hold_for(ctx, fut, move |act, ctx, (channel, r)| match r {
            Ok(res) => {
                // A repeated key published nothing: the reply is the first one's, and it
                // is not counted as a publication.
                if !res.duplicate {
                    act.node.metrics.publications.inc();
                }
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
