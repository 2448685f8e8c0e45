//! One shard of the broker: for each of its channels, the local subscribers and where the
//! node's own engine subscription stands; the handlers of every broker message; and
//! fan-out, the one place a publication is handed to sessions.

use std::sync::Arc;

use actix::prelude::*;
use bytestring::ByteString;

use super::join::{merge, reset_frame, same_epoch, Buffered, Joining};
use super::messages::{
    ChannelCounts, EnginePublication, EnginePush, EngineReset, JoinReady, Leave, NodeSubscribed,
    NodeUnsubscribed, Pace, Subscribe, Unsubscribe,
};
use super::SessionHandle;
use crate::channel::ChannelName;
use crate::config::NamespaceOptions;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::outbox::{SessionControl, WsFrame};
use crate::protocol::{error_frame, ErrorCode, ServerFrame};
use crate::shrink::Shrink;
use crate::FastMap;

/// One local subscriber of one channel.
struct Subscriber {
    /// How to reach its session.
    session: Arc<SessionHandle>,
    /// The session's id for this subscription (a resubscribe gets a new one).
    sub_id: u64,
    /// The channel's namespace options, as resolved when it subscribed.
    ns: NamespaceOptions,
    /// `Some` while joining (see [`Joining`]); `None` once live.
    joining: Option<Box<Joining>>,
    /// Once live: the epoch and offset this subscriber has been brought to. A publication
    /// at or below it is a duplicate (Redis delivers history reads and pub/sub on separate
    /// connections, so a publication can arrive after a reply that already covered it); a
    /// publication in another epoch is preceded by `reset`.
    position: Option<(Arc<str>, u64)>,
}

impl Subscriber {
    /// Tells the session its subscribe failed (`unavailable`, echoing the command's id).
    fn fail(&self, channel: &ChannelName, message: &str) {
        self.session
            .control
            .do_send(SessionControl::SubscribeFailed {
                sub_id: self.sub_id,
                channel: channel.clone(),
                frame: error_frame(
                    self.joining.as_ref().and_then(|j| j.id.as_ref()),
                    ErrorCode::Unavailable,
                    message,
                ),
            });
    }
}

/// Where the node's own engine subscription to a channel stands. Engine subscribe and
/// unsubscribe calls for one channel never overlap: each waits for the previous one's
/// completion message, so they reach the engine in the order the shard decided them.
#[derive(PartialEq, Eq)]
enum NodeState {
    Subscribing,
    Subscribed,
    Unsubscribing,
}

/// One channel of the shard.
struct ChannelEntry {
    /// Local subscribers by client id.
    subscribers: FastMap<Arc<str>, Subscriber>,
    /// The node's own engine subscription.
    node: NodeState,
    /// Clients waiting for the node subscription before reading history.
    waiting: Vec<Arc<str>>,
}

/// One shard of the broker.
pub struct BrokerShard {
    engine: Arc<dyn Engine>,
    metrics: Metrics,
    channels: FastMap<ChannelName, ChannelEntry>,
    /// The shard's own address, for completions of engine calls (set in `started`).
    me: Option<Addr<BrokerShard>>,
}

// Every message to a shard is sent with `do_send`, which ignores the mailbox capacity:
// publishers and engines must never block on a busy shard. Memory is bounded per session
// by its outbox instead.
impl Actor for BrokerShard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.me = Some(ctx.address());
    }
}

impl BrokerShard {
    /// An empty shard; its own address is known once it is started.
    pub(super) fn new(engine: Arc<dyn Engine>, metrics: Metrics) -> BrokerShard {
        BrokerShard {
            engine,
            metrics,
            channels: FastMap::default(),
            me: None,
        }
    }

    /// Asks the engine to subscribe the node; completion comes back as [`NodeSubscribed`].
    fn node_subscribe(&mut self, channel: &ChannelName) {
        if let Some(entry) = self.channels.get_mut(channel) {
            entry.node = NodeState::Subscribing;
        }
        let (engine, me, channel) = (self.engine.clone(), self.me.clone(), channel.clone());
        actix::spawn(async move {
            let result = engine.subscribe_node(&channel).await;
            if let Some(me) = me {
                me.do_send(NodeSubscribed { channel, result });
            }
        });
    }

    /// Asks the engine to unsubscribe the node; completion comes back as
    /// [`NodeUnsubscribed`], and the entry is kept until then.
    fn node_unsubscribe(&mut self, channel: &ChannelName) {
        if let Some(entry) = self.channels.get_mut(channel) {
            entry.node = NodeState::Unsubscribing;
        }
        let (engine, me, channel) = (self.engine.clone(), self.me.clone(), channel.clone());
        actix::spawn(async move {
            if let Err(e) = engine.unsubscribe_node(&channel).await {
                log::warn!("node unsubscribe failed channel={channel}: {e}");
            }
            if let Some(me) = me {
                me.do_send(NodeUnsubscribed { channel });
            }
        });
    }

    fn start_join(&mut self, channel: &ChannelName, client: Arc<str>, ctx: &mut Context<Self>) {
        let Some(sub) = self
            .channels
            .get(channel)
            .and_then(|e| e.subscribers.get(&client))
        else {
            return;
        };
        // A join starts once per subscriber; one already live was answered.
        let Some(joining) = &sub.joining else {
            return;
        };
        let since = joining.since.clone();
        let engine = self.engine.clone();
        let addr = ctx.address();
        let channel = channel.clone();
        let info = sub.session.info.clone();
        let sub_id = sub.sub_id;
        let ns = sub.ns.clone();
        actix::spawn(async move {
            let result = async {
                if ns.presence {
                    engine.presence_add(&channel, &info, &ns).await?;
                }
                let limit = if since.is_some() { ns.history_size } else { 0 };
                engine
                    .join_history(&channel, since.as_ref(), limit, &ns)
                    .await
            }
            .await;
            addr.do_send(JoinReady {
                channel,
                client,
                sub_id,
                result,
            });
        });
    }

    /// Removes a subscriber, cleans presence, sends `leave`, and unsubscribes the node from
    /// the channel when it was the last local subscriber.
    fn remove(&mut self, channel: &ChannelName, client: &str) {
        let Some(entry) = self.channels.get_mut(channel) else {
            return;
        };
        let Some(sub) = entry.subscribers.remove(client) else {
            return;
        };
        // A channel that had a crowd and keeps a few subscribers gives the crowd's table back.
        entry.subscribers.shrink_when_sparse();
        entry.waiting.retain(|c| &**c != client);
        self.metrics.subscriptions.dec();
        let engine = self.engine.clone();
        let ch = channel.clone();
        let was_live = sub.joining.is_none();
        let info = sub.session.info.clone();
        let ns = sub.ns.clone();
        actix::spawn(async move {
            if ns.presence {
                if let Err(e) = engine.presence_remove(&ch, &info.client).await {
                    log::warn!(
                        "presence remove failed channel={ch} client={}: {e}",
                        info.client
                    );
                }
            }
            if ns.join_leave && was_live {
                let frame = ServerFrame::Leave {
                    channel: ch.as_str(),
                    info: &info,
                }
                .to_text();
                if let Err(e) = engine.push(&ch, frame).await {
                    log::warn!("leave push failed channel={ch}: {e}");
                }
            }
        });
        // While a subscribe or unsubscribe is in flight, its completion decides.
        if entry.subscribers.is_empty() && entry.node == NodeState::Subscribed {
            self.node_unsubscribe(channel);
        }
    }

    /// Delivers `frame` to every live subscriber of the entry, buffers it for joining ones,
    /// and evicts subscribers that turned out to be slow. A publication (`position` given)
    /// skips subscribers already past it and brings those in another epoch over with
    /// `reset` first.
    fn fan_out(
        &mut self,
        channel: &ChannelName,
        frame: &ByteString,
        position: Option<(u64, &Arc<str>)>,
    ) {
        let Some(entry) = self.channels.get_mut(channel) else {
            return;
        };
        // Framed once for every subscriber.
        let frame = &WsFrame::text(frame);
        let mut slow: Vec<Arc<str>> = Vec::new();
        let mut delivered = 0u64;
        let mut reset: Option<WsFrame> = None;
        for (client, sub) in entry.subscribers.iter_mut() {
            let ok = match (&mut sub.joining, position) {
                (Some(joining), Some((offset, epoch))) => {
                    joining.buffer.push(Buffered {
                        offset,
                        epoch: epoch.clone(),
                        frame: frame.clone(),
                    });
                    continue;
                }
                // Pushes (join/leave) are not part of the stream: a joining subscriber
                // does not get them.
                (Some(_), None) => continue,
                (None, None) => sub.session.send(sub.sub_id, frame, &self.metrics),
                (None, Some((offset, epoch))) => {
                    let mut ok = true;
                    match &mut sub.position {
                        Some((e, o)) if same_epoch(e, epoch) => {
                            if offset <= *o {
                                continue;
                            }
                            // The common case: only the offset moves (no reference count
                            // traffic on the shared epoch per delivery).
                            *o = offset;
                        }
                        position => {
                            if position.is_some() {
                                let r = reset.get_or_insert_with(|| reset_frame(channel, epoch));
                                ok = sub.session.send(sub.sub_id, r, &self.metrics);
                            }
                            *position = Some((epoch.clone(), offset));
                        }
                    }
                    ok && sub.session.send(sub.sub_id, frame, &self.metrics)
                }
            };
            if ok {
                delivered += 1;
            } else {
                slow.push(client.clone());
            }
        }
        self.metrics.deliveries.inc_by(delivered);
        for client in slow {
            self.remove(channel, &client);
        }
    }
}

impl Handler<Subscribe> for BrokerShard {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, ctx: &mut Context<Self>) {
        let client = msg.session.client.clone();
        let is_new = !self.channels.contains_key(&msg.channel);
        let entry = self
            .channels
            .entry(msg.channel.clone())
            .or_insert_with(|| ChannelEntry {
                subscribers: FastMap::default(),
                node: NodeState::Subscribing,
                waiting: Vec::new(),
            });
        if let Some(old) = entry.subscribers.remove(&client) {
            // The session guards against double subscribes; a leftover here means an
            // unsubscribe raced a resubscribe, and the new one replaces it.
            log::debug!("replacing subscription client={client} sub={}", old.sub_id);
            self.metrics.subscriptions.dec();
        }
        entry.subscribers.insert(
            client.clone(),
            Subscriber {
                session: msg.session,
                sub_id: msg.sub_id,
                ns: msg.ns,
                joining: Some(Box::new(Joining {
                    id: msg.id,
                    since: msg.since,
                    buffer: Vec::new(),
                })),
                position: None,
            },
        );
        self.metrics.subscriptions.inc();
        if is_new {
            self.metrics.channels.inc();
            entry.waiting.push(client);
            self.node_subscribe(&msg.channel);
        } else if entry.node == NodeState::Subscribed {
            self.start_join(&msg.channel, client, ctx);
        } else {
            // Subscribing: joins once it completes. Unsubscribing: the node subscribes
            // again once the unsubscribe completes, then joins.
            entry.waiting.push(client);
        }
    }
}

impl Handler<NodeSubscribed> for BrokerShard {
    type Result = ();

    fn handle(&mut self, msg: NodeSubscribed, ctx: &mut Context<Self>) {
        let Some(entry) = self.channels.get_mut(&msg.channel) else {
            return;
        };
        match msg.result {
            Ok(()) => {
                entry.node = NodeState::Subscribed;
                if entry.subscribers.is_empty() {
                    // Everyone left while the node was subscribing.
                    self.node_unsubscribe(&msg.channel);
                    return;
                }
                for client in std::mem::take(&mut entry.waiting) {
                    self.start_join(&msg.channel, client, ctx);
                }
            }
            Err(e) => {
                log::warn!("node subscribe failed channel={}: {e}", msg.channel);
                if let Some(entry) = self.channels.remove(&msg.channel) {
                    self.channels.shrink_when_sparse();
                    self.metrics.channels.dec();
                    for (_, sub) in entry.subscribers {
                        self.metrics.subscriptions.dec();
                        sub.fail(&msg.channel, "the engine cannot subscribe now; try again");
                    }
                }
            }
        }
    }
}

impl Handler<NodeUnsubscribed> for BrokerShard {
    type Result = ();

    fn handle(&mut self, msg: NodeUnsubscribed, _ctx: &mut Context<Self>) {
        let Some(entry) = self.channels.get(&msg.channel) else {
            return;
        };
        if entry.subscribers.is_empty() {
            self.channels.remove(&msg.channel);
            self.channels.shrink_when_sparse();
            self.metrics.channels.dec();
        } else {
            // Someone subscribed while the node was leaving: subscribe it again.
            self.node_subscribe(&msg.channel);
        }
    }
}

impl Handler<JoinReady> for BrokerShard {
    type Result = ();

    fn handle(&mut self, msg: JoinReady, _ctx: &mut Context<Self>) {
        let Some(entry) = self.channels.get_mut(&msg.channel) else {
            return;
        };
        let Some(sub) = entry.subscribers.get_mut(&msg.client) else {
            return;
        };
        // A join completes once: a subscriber already live was answered.
        if sub.sub_id != msg.sub_id || sub.joining.is_none() {
            return;
        }
        let history = match msg.result {
            Ok(h) => h,
            Err(e) => {
                log::warn!(
                    "join failed channel={} client={}: {e}",
                    msg.channel,
                    msg.client
                );
                sub.fail(
                    &msg.channel,
                    "the engine cannot serve this subscription now; try again",
                );
                self.remove(&msg.channel, &msg.client);
                return;
            }
        };
        // Taken before the loop below: a subscriber evicted there is live (it gets `leave`).
        let Some(joining) = sub.joining.take() else {
            return;
        };
        let merged = merge(&msg.channel, *joining, &history);
        sub.session
            .send_reply(sub.sub_id, merged.reply, &self.metrics);
        // `subscribed` is queued: the session's next command may run (a publish it sends
        // now reaches this subscriber live, after the buffered ones below).
        sub.session
            .control
            .do_send(SessionControl::Subscribed { sub_id: sub.sub_id });
        let ok = !sub.session.outbox.is_slow()
            && merged
                .then
                .iter()
                .all(|f| sub.session.send(sub.sub_id, f, &self.metrics));
        sub.position = Some(merged.position);
        if !ok {
            self.remove(&msg.channel, &msg.client);
            return;
        }
        if sub.ns.join_leave {
            let engine = self.engine.clone();
            let info = sub.session.info.clone();
            let ch = msg.channel.clone();
            actix::spawn(async move {
                let frame = ServerFrame::Join {
                    channel: ch.as_str(),
                    info: &info,
                }
                .to_text();
                if let Err(e) = engine.push(&ch, frame).await {
                    log::warn!("join push failed channel={ch}: {e}");
                }
            });
        }
    }
}

impl Handler<Unsubscribe> for BrokerShard {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _ctx: &mut Context<Self>) {
        self.remove(&msg.channel, &msg.client);
    }
}

impl Handler<Leave> for BrokerShard {
    type Result = ();

    fn handle(&mut self, msg: Leave, _ctx: &mut Context<Self>) {
        for channel in &msg.channels {
            self.remove(channel, &msg.client);
        }
    }
}

impl Handler<EnginePublication> for BrokerShard {
    type Result = ();

    fn handle(&mut self, msg: EnginePublication, _ctx: &mut Context<Self>) {
        self.fan_out(&msg.channel, &msg.frame, Some((msg.offset, &msg.epoch)));
    }
}

impl Handler<EngineReset> for BrokerShard {
    type Result = ();

    fn handle(&mut self, msg: EngineReset, _ctx: &mut Context<Self>) {
        let Some(entry) = self.channels.get_mut(&msg.channel) else {
            return;
        };
        let mut reset: Option<WsFrame> = None;
        let mut slow = Vec::new();
        for (client, sub) in entry.subscribers.iter_mut() {
            let Some((epoch, _)) = &sub.position else {
                continue;
            };
            if same_epoch(epoch, &msg.epoch) {
                continue;
            }
            let r = reset.get_or_insert_with(|| reset_frame(&msg.channel, &msg.epoch));
            if !sub.session.send(sub.sub_id, r, &self.metrics) {
                slow.push(client.clone());
            }
            sub.position = Some((msg.epoch.clone(), 0));
        }
        for client in slow {
            self.remove(&msg.channel, &client);
        }
    }
}

impl Handler<EnginePush> for BrokerShard {
    type Result = ();

    fn handle(&mut self, msg: EnginePush, _ctx: &mut Context<Self>) {
        self.fan_out(&msg.channel, &msg.frame, None);
    }
}

impl Handler<Pace> for BrokerShard {
    type Result = bool;

    fn handle(&mut self, msg: Pace, _ctx: &mut Context<Self>) -> bool {
        self.channels.get(&msg.channel).is_some_and(|e| {
            e.subscribers
                .values()
                .any(|s| s.joining.is_none() && s.session.outbox.holds_back())
        })
    }
}

impl Handler<ChannelCounts> for BrokerShard {
    type Result = MessageResult<ChannelCounts>;

    fn handle(&mut self, _msg: ChannelCounts, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(
            self.channels
                .iter()
                .filter(|(_, e)| !e.subscribers.is_empty())
                .map(|(c, e)| (c.to_string(), e.subscribers.len()))
                .collect(),
        )
    }
}
