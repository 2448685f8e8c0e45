//! Publishing from a WebSocket: the `publish` command, run in its turn of the session's
//! command queue while the engine assigns the offset, its `published` reply paced by the
//! broker's backpressure. Its rate limit is applied as commands arrive ([`super::rate`]).

use std::sync::Arc;

use actix_web_actors::ws;
use serde_json::value::RawValue;

use super::Session;
use crate::channel::ChannelName;
use crate::protocol::{ErrorCode, Id, ServerFrame};

impl Session {
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
