//! One WebSocket connection after its handshake: the session actor. It parses frames,
//! enforces the per-connection limits (message size, subscriptions, publish rate,
//! malformed commands in a row), runs the heartbeat and token expiry, holds the client's
//! subscriptions (in its outbox), and runs its commands in the order they were sent (one
//! at a time, except a window of publications in flight, answered in order). Its replies go into the outbox behind the deliveries queued before them: the
//! broker queues deliveries there, already framed, without passing through the actor, and
//! the connection's response body copies the outbox out between the actor's own frames.
//!
//! Files: [`handshake`] (the `/ws` route: checks, upgrade), this file (the actor, its
//! commands' turns and the subscribe/unsubscribe/refresh commands), [`incoming`] (the
//! client's messages made whole, and which failure closes how), `queue` (the command
//! queue and its bounds), `publish` (the rate limit and `publish`), `queries` (`presence`
//! and `history`), `body` (the response body, and when the connection ends). It talks to
//! the broker (subscriptions), the engine trait (publish, history, presence) and the
//! registry; it never talks to Redis.
//!
//! This is the only module that knows actix-web-actors (deprecated upstream in favour of
//! actix-ws), so moving off it touches this directory only.

mod body;
pub mod handshake;
pub mod incoming;
mod publish;
mod queries;
mod queue;
mod rate;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use actix_http::ws::{CloseReason, ProtocolError};
use actix_web::web;
use actix_web_actors::ws;
use bytestring::ByteString;

use crate::auth::Identity;
use crate::broker::{SessionHandle, Subscribe};
use crate::channel::ChannelName;
use crate::engine::EngineError;
use crate::frame::Encoding;
use crate::node::Node;
use crate::outbox::{Offer, Outbox, SessionControl, WsFrame};
use crate::protocol::{
    disconnect_frame, error_frame, parse_command, ClientInfo, CloseCode, Command, ErrorCode, Id,
    Request, ServerFrame, StreamPosition, SUBPROTOCOL,
};
use crate::registry::Slot;
pub use handshake::ws_route;
use incoming::{Incoming, Received, Refusal};
use queue::{CommandQueue, Queued};
use rate::TokenBucket;

/// The session actor.
pub struct Session {
    node: web::Data<Node>,
    client: Arc<str>,
    identity: Identity,
    info: ClientInfo,
    outbox: Arc<Outbox>,
    /// Holds this connection's place under `limits.max_connections`.
    _slot: Slot,
    last_heard: Instant,
    next_sub: u64,
    /// Malformed commands in a row.
    errors: u32,
    /// `limits.client_publish_rate`.
    bucket: TokenBucket,
    /// `limits.client_command_rate`: subscribe, history, presence.
    engine_bucket: TokenBucket,
    /// Commands wait here for their turn, so they take effect and are answered in order.
    commands: CommandQueue,
    /// Replies of the publications in the window, oldest first: `None` until its engine
    /// answer came. Released from the front only, so replies keep the command order.
    replies: VecDeque<Option<ByteString>>,
    /// Publication replies released so far (numbers the window's places).
    released: usize,
    /// The subscription whose `subscribed` reply (or failure) the queue waits for.
    joining: Option<u64>,
    /// The client's messages, made whole.
    incoming: Incoming,
    expiry: Option<SpawnHandle>,
    /// The code this side closed with, for the log line.
    closed_with: Option<u16>,
    /// The broker's handle on this session, built on the first subscribe and shared by
    /// every subscription.
    handle: Option<Arc<SessionHandle>>,
}

impl Session {
    /// A session whose outbox writes with `encoding` (compressed when the handshake
    /// negotiated permessage-deflate).
    fn new(node: web::Data<Node>, identity: Identity, slot: Slot, encoding: Encoding) -> Session {
        let client: Arc<str> = Arc::from(uuid::Uuid::new_v4().to_string());
        let info = ClientInfo {
            client: client.clone(),
            user: Arc::from(identity.user()),
        };
        let limits = &node.settings.limits;
        // One burst of publications at the rate limit may wait for the engine, and as many
        // other commands as a connection may hold subscriptions.
        let commands = CommandQueue::new(
            limits.client_publish_rate as usize + limits.max_subscriptions_per_connection,
            limits.client_publish_rate as usize,
            publish::PUBLISH_WINDOW,
        );
        Session {
            outbox: Arc::new(Outbox::new(
                limits.max_pending_bytes,
                node.broker.pressure(),
                encoding,
            )),
            bucket: TokenBucket::new(limits.client_publish_rate, Instant::now()),
            engine_bucket: TokenBucket::new(limits.client_command_rate, Instant::now()),
            node,
            client,
            identity,
            info,
            _slot: slot,
            last_heard: Instant::now(),
            next_sub: 1,
            errors: 0,
            commands,
            replies: VecDeque::new(),
            released: 0,
            joining: None,
            incoming: Incoming::new(false),
            expiry: None,
            closed_with: None,
            handle: None,
        }
    }

    /// The session's one broker handle, built when first needed.
    fn session_handle(&mut self, ctx: &mut ws::WebsocketContext<Self>) -> Arc<SessionHandle> {
        self.handle
            .get_or_insert_with(|| {
                Arc::new(SessionHandle {
                    client: self.client.clone(),
                    info: self.info.clone(),
                    control: ctx.address().recipient(),
                    outbox: self.outbox.clone(),
                })
            })
            .clone()
    }

    /// Sends `disconnect`, then a Close frame with the same code, and stops.
    fn close(&mut self, ctx: &mut ws::WebsocketContext<Self>, code: CloseCode) {
        if self.closed_with.is_some() {
            return;
        }
        self.closed_with = Some(code.code());
        self.node.metrics.disconnected(code);
        // After the replies already queued, `disconnect`, then the Close frame; deliveries
        // still queued are dropped (the outbox keeps the session's own frames).
        self.outbox
            .offer_session(WsFrame::text(&disconnect_frame(code)));
        self.close_raw(
            ctx,
            Some(CloseReason {
                code: code.code().into(),
                description: Some(code.reason().to_string()),
            }),
        );
    }

    /// Closes without a `disconnect` push (RFC 6455 violations, the client's own Close):
    /// the replies already queued, then the Close frame, and nothing after it.
    fn close_raw(&mut self, ctx: &mut ws::WebsocketContext<Self>, reason: Option<CloseReason>) {
        self.outbox.close();
        ctx.close(reason);
        ctx.stop();
    }

    fn reply_error(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        id: Option<&Id>,
        code: ErrorCode,
        message: &str,
    ) {
        if code.counts_as_malformed() {
            self.errors += 1;
            if self.errors > self.node.settings.limits.max_errors {
                self.close(ctx, CloseCode::TooManyErrors);
                return;
            }
        }
        self.send(ctx, error_frame(id, code, message));
    }

    /// Queues one of the session's own frames (a reply, `welcome`), in order with the
    /// deliveries queued before it. A client that sends commands but does not read is a
    /// slow consumer like one that does not read its deliveries.
    fn send(&mut self, ctx: &mut ws::WebsocketContext<Self>, frame: ByteString) {
        if self.closed_with.is_some() {
            return;
        }
        if let Offer::Slow { first: true } = self.outbox.offer_session(WsFrame::text(&frame)) {
            self.node.metrics.slow_consumers.inc();
            log::info!(
                "slow consumer client={} pending={}",
                self.client,
                self.outbox.pending()
            );
            self.close(ctx, CloseCode::SlowConsumer);
        }
    }

    /// Runs the commands that wait, in order, until one must wait for the engine or the
    /// broker (it resumes the queue when it is done) or none is left.
    fn pump(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        while self.closed_with.is_none() {
            let Some(item) = self.commands.next() else {
                return;
            };
            self.run(item, ctx);
        }
    }

    /// Runs one command in its turn.
    fn run(&mut self, item: Queued, ctx: &mut ws::WebsocketContext<Self>) {
        match item {
            Queued::Refused(e) => {
                // A command that parsed, refused for its rate, still resets the count of
                // malformed ones.
                if !e.code.counts_as_malformed() {
                    self.errors = 0;
                }
                self.reply_error(ctx, e.id.as_ref(), e.code, &e.message);
            }
            Queued::Command(request) => {
                self.errors = 0;
                self.dispatch(request, ctx);
            }
        }
    }

    /// Holds the command queue while `fut` runs off the actor; then `then` answers with
    /// its output and the next command runs.
    fn hold_for<T: 'static>(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        fut: impl std::future::Future<Output = T> + 'static,
        then: impl FnOnce(&mut Self, &mut ws::WebsocketContext<Self>, T) + 'static,
    ) {
        self.commands.hold();
        ctx.spawn(fut.into_actor(self).map(move |out, act, ctx| {
            then(act, ctx, out);
            act.resume(ctx);
        }));
    }

    /// The running command is done: the next one runs.
    fn resume(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        self.commands.done();
        self.pump(ctx);
    }

    fn schedule_expiry(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        if let Some(h) = self.expiry.take() {
            ctx.cancel_future(h);
        }
        let Some(exp) = self.identity.claims.as_ref().and_then(|c| c.exp) else {
            return;
        };
        // A far-future `exp` (it is signed, but may be any number) means no expiry.
        let Some(deadline) = Duration::from_secs(exp).checked_add(self.node.settings.auth.leeway.0)
        else {
            return;
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let wait = deadline.saturating_sub(now);
        self.expiry = Some(ctx.run_later(wait, |act, ctx| {
            act.close(ctx, CloseCode::TokenExpired);
        }));
    }

    /// A whole text message: parsed, and queued behind the commands before it. The
    /// publish rate is measured as commands arrive, not as they run.
    fn on_text(&mut self, text: &str, ctx: &mut ws::WebsocketContext<Self>) {
        let item = match parse_command(text) {
            Err(e) => Queued::Refused(e),
            Ok(request) => self.admit(request),
        };
        if self.commands.is_idle() {
            // Nothing runs or waits: its turn is now, and the queue allocates nothing (most
            // connections send a command or two, and an idle one keeps no empty buffer).
            return self.run(item, ctx);
        }
        if let Err(item) = self.commands.push(item) {
            // Past the queue's bound the command is refused at once, ahead of the replies
            // still due (docs/protocol.md, 2.1): memory stays bounded whatever is sent.
            let id = match item {
                Queued::Command(r) => r.id,
                Queued::Refused(e) => e.id,
            };
            self.reply_error(
                ctx,
                id.as_ref(),
                ErrorCode::RateLimited,
                "too many commands waiting for their turn; this one was not run",
            );
            return;
        }
        self.pump(ctx);
    }

    fn dispatch(&mut self, request: Request, ctx: &mut ws::WebsocketContext<Self>) {
        let Request { id, command } = request;
        match command {
            Command::Ping => self.send(ctx, ServerFrame::Pong { id: id.as_ref() }.to_text()),
            Command::Subscribe { channel, since } => self.subscribe(id, channel, since, ctx),
            Command::Unsubscribe { channel } => {
                // Nothing of the channel after `unsubscribed`: the outbox drops what it
                // queued for it and refuses late frames.
                if self.outbox.unsubscribe(&channel, None).is_none() {
                    return self.reply_error(
                        ctx,
                        id.as_ref(),
                        ErrorCode::NotSubscribed,
                        "not subscribed to this channel",
                    );
                }
                self.node
                    .broker
                    .unsubscribe(self.client.clone(), channel.clone());
                let frame = ServerFrame::Unsubscribed {
                    id: id.as_ref(),
                    channel: channel.as_str(),
                }
                .to_text();
                self.send(ctx, frame);
            }
            Command::Publish {
                channel,
                data,
                idempotency_key,
            } => self.publish(id, channel, data, idempotency_key, ctx),
            Command::Presence { channel } => self.presence(id, channel, ctx),
            Command::History {
                channel,
                since,
                limit,
            } => self.history(id, channel, since, limit, ctx),
            Command::Refresh { token } => self.refresh(id, &token, ctx),
        }
    }

    fn engine_error(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        id: Option<&Id>,
        e: &EngineError,
    ) {
        log::warn!("engine error client={}: {e}", self.client);
        self.reply_error(
            ctx,
            id,
            ErrorCode::Unavailable,
            "the engine cannot take this command now; try again",
        );
    }

    fn subscribe(
        &mut self,
        id: Option<Id>,
        channel: ChannelName,
        since: Option<StreamPosition>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let ns = self.node.namespaces.get(channel.namespace()).clone();
        if !self.identity.can_subscribe(&channel, &ns) {
            return self.reply_error(
                ctx,
                id.as_ref(),
                ErrorCode::Forbidden,
                "subscribing to this channel is not allowed",
            );
        }
        if self.outbox.subscription(&channel).is_some() {
            return self.reply_error(
                ctx,
                id.as_ref(),
                ErrorCode::AlreadySubscribed,
                "already subscribed to this channel",
            );
        }
        if self.outbox.subscription_count()
            >= self.node.settings.limits.max_subscriptions_per_connection
        {
            return self.reply_error(
                ctx,
                id.as_ref(),
                ErrorCode::LimitExceeded,
                "limits.max_subscriptions_per_connection reached",
            );
        }
        let sub_id = self.next_sub;
        self.next_sub += 1;
        self.outbox.subscribe(channel.clone(), sub_id);
        let session = self.session_handle(ctx);
        self.node.broker.subscribe(Subscribe {
            session,
            sub_id,
            channel,
            id,
            since,
            ns,
        });
        // The next command waits until the broker has queued `subscribed` (with what
        // recovery found) or failed: a publish that follows is then delivered to it.
        self.joining = Some(sub_id);
        self.commands.hold();
    }

    /// The broker is done with subscription `sub_id` (answered or failed).
    fn joined(&mut self, sub_id: u64, ctx: &mut ws::WebsocketContext<Self>) {
        if self.joining == Some(sub_id) {
            self.joining = None;
            self.resume(ctx);
        }
    }

    fn refresh(&mut self, id: Option<Id>, token: &str, ctx: &mut ws::WebsocketContext<Self>) {
        let claims = match self.node.verifier.verify(token) {
            Ok(c) => c,
            Err(e) => {
                return self.reply_error(
                    ctx,
                    id.as_ref(),
                    ErrorCode::Forbidden,
                    &format!("refresh refused: {e}"),
                );
            }
        };
        if claims.sub != self.identity.user() {
            return self.reply_error(
                ctx,
                id.as_ref(),
                ErrorCode::Forbidden,
                "refresh token names another user",
            );
        }
        let expires_at = claims.exp.unwrap_or(0);
        self.identity.claims = Some(claims);
        self.schedule_expiry(ctx);
        let frame = ServerFrame::Refreshed {
            id: id.as_ref(),
            expires_at,
        }
        .to_text();
        self.send(ctx, frame);
    }
}

impl Actor for Session {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let node = self.node.clone();
        node.metrics.connections.inc();
        node.registry.register(
            self.client.clone(),
            self.identity.user(),
            ctx.address().recipient(),
        );
        log::info!(
            "connection opened client={} user={:?} node={}",
            self.client,
            self.identity.user(),
            node.id
        );
        let heartbeat = &node.settings.heartbeat;
        // The first frame, so it may go the actor's own way: nothing queued can precede it,
        // and an idle connection's outbox then allocates for its `subscribed` reply alone.
        ctx.text(
            ServerFrame::Welcome {
                client: &self.client,
                node: &node.id,
                user: self.identity.user(),
                heartbeat_ms: heartbeat.interval.0.as_millis() as u64,
                protocol: SUBPROTOCOL,
            }
            .to_text(),
        );
        let timeout = heartbeat.timeout.0;
        ctx.run_interval(heartbeat.interval.0, move |act, ctx| {
            if act.last_heard.elapsed() >= timeout {
                act.close(ctx, CloseCode::HeartbeatTimeout);
            } else {
                ctx.ping(b"");
            }
        });
        self.schedule_expiry(ctx);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        let node = &self.node;
        node.broker
            .leave(&self.client, self.outbox.take_subscriptions());
        node.registry.unregister(&self.client);
        node.metrics.connections.dec();
        match self.closed_with {
            Some(code) => log::info!("connection closed client={} code={code}", self.client),
            None => log::info!("connection closed client={} code=peer", self.client),
        }
    }
}

impl Handler<SessionControl> for Session {
    type Result = ();

    fn handle(&mut self, msg: SessionControl, ctx: &mut Self::Context) {
        match msg {
            SessionControl::Close(code) => self.close(ctx, code),
            SessionControl::SubscribeFailed {
                sub_id,
                channel,
                frame,
            } => {
                self.outbox.unsubscribe(&channel, Some(sub_id));
                self.send(ctx, frame);
                self.joined(sub_id, ctx);
            }
            SessionControl::Subscribed { sub_id } => self.joined(sub_id, ctx),
        }
    }
}

impl StreamHandler<Result<ws::Message, ProtocolError>> for Session {
    fn handle(&mut self, msg: Result<ws::Message, ProtocolError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        if self.closed_with.is_some() {
            return;
        }
        match self.incoming.take(msg) {
            Received::Text(text) => self.on_text(&text, ctx),
            // Not taken by this `Incoming`: refused as their first frame comes.
            Received::Binary(_) => self.close(ctx, CloseCode::UnsupportedData),
            Received::Ping(p) => ctx.pong(&p),
            Received::Nothing => {}
            Received::Close(reason) => {
                log::debug!("client closed client={} reason={reason:?}", self.client);
                self.close_raw(ctx, reason);
            }
            Received::Refused(Refusal::Close(code)) => self.close(ctx, code),
            Received::Refused(Refusal::Protocol(why)) => {
                log::info!("protocol error client={}: {why}", self.client);
                self.close_raw(ctx, Some(ws::CloseCode::Protocol.into()));
            }
        }
    }
}
