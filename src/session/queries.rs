//! The read commands of a session: `presence` and `history`. Each checks the permission
//! and the namespace, then holds the command queue while the engine answers, so its reply
//! comes in its turn.

use actix_web_actors::ws;

use super::Session;
use crate::channel::ChannelName;
use crate::protocol::{ClientInfo, ErrorCode, Id, ServerFrame, StreamPosition};

impl Session {
    /// The `presence` command.
    pub(super) fn presence(
        &mut self,
        id: Option<Id>,
        channel: ChannelName,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let ns = self.node.namespaces.get(channel.namespace());
        if !self.identity.can_subscribe(&channel, ns) {
            return self.reply_error(
                ctx,
                id.as_ref(),
                ErrorCode::Forbidden,
                "presence of this channel is not allowed",
            );
        }
        if !ns.presence {
            return self.reply_error(
                ctx,
                id.as_ref(),
                ErrorCode::NotAvailable,
                "presence is off in this namespace",
            );
        }
        let engine = self.node.engine.clone();
        let fut = async move {
            let r = engine.presence(&channel).await;
            (channel, r)
        };
        self.hold_for(ctx, fut, move |act, ctx, (channel, r)| match r {
            Ok(list) => {
                let clients: Vec<ClientInfo> = list
                    .into_iter()
                    .map(|e| ClientInfo {
                        client: e.client.into(),
                        user: e.user.into(),
                    })
                    .collect();
                let frame = ServerFrame::Presence {
                    id: id.as_ref(),
                    channel: channel.as_str(),
                    clients: &clients,
                }
                .to_text();
                act.send(ctx, frame);
            }
            Err(e) => act.engine_error(ctx, id.as_ref(), &e),
        });
    }

    /// The `history` command.
    pub(super) fn history(
        &mut self,
        id: Option<Id>,
        channel: ChannelName,
        since: Option<StreamPosition>,
        limit: Option<usize>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let ns = self.node.namespaces.get(channel.namespace()).clone();
        if !self.identity.can_subscribe(&channel, &ns) {
            return self.reply_error(
                ctx,
                id.as_ref(),
                ErrorCode::Forbidden,
                "history of this channel is not allowed",
            );
        }
        if ns.history_size == 0 {
            return self.reply_error(
                ctx,
                id.as_ref(),
                ErrorCode::NotAvailable,
                "history is off in this namespace",
            );
        }
        let limit = limit.unwrap_or(ns.history_size).min(ns.history_size);
        let engine = self.node.engine.clone();
        let fut = async move {
            let r = engine.history(&channel, since.as_ref(), limit, &ns).await;
            (channel, r)
        };
        self.hold_for(ctx, fut, move |act, ctx, (channel, r)| match r {
            Ok(h) => {
                let frame = ServerFrame::History {
                    id: id.as_ref(),
                    channel: channel.as_str(),
                    offset: h.offset,
                    epoch: &h.epoch,
                    publications: &h.publications,
                }
                .to_text();
                act.send(ctx, frame);
            }
            Err(e) => act.engine_error(ctx, id.as_ref(), &e),
        });
    }
}
