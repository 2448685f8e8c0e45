//! The node's pub/sub connection: one long-lived reader task (spawned by
//! `RedisEngine::start`) owns it, subscribes and unsubscribes channels for the broker
//! (`subscribe_node` reads the subscription's baseline once SUBSCRIBE is confirmed), parses
//! what arrives and hands publications to the ordering ([`Tracks`](super::ordering::Tracks)),
//! pushes and control commands to the node. When Redis goes away it marks the engine not
//! ready, reconnects with exponential backoff and jitter, re-applies migrations if Redis
//! came back empty, resubscribes every channel held and catches up from history.

use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;
use futures_util::StreamExt;
use rand::Rng;
use redis::aio::{PubSubSink, PubSubStream};
use redis::{Msg, Value};
use tokio::sync::{mpsc, watch};

use super::ordering::{Incoming, Position};
use super::resp::{ms, value_array, value_string, value_u64};
use super::schema::MigrateError;
use super::Inner;
use crate::channel::ChannelName;
use crate::engine::EngineError;

/// Channels per SUBSCRIBE command when resubscribing after a reconnect.
const SUBSCRIBE_CHUNK: usize = 256;

/// Sent to the reader task by `subscribe_node`.
pub(super) enum Event {
    Baseline {
        channel: Arc<str>,
        generation: u64,
        position: Position,
    },
}

/// Subscribes the node's pub/sub connection to the channel and reads where its stream
/// stands (the baseline the reader orders from).
pub(super) async fn subscribe(inner: &Inner, channel: &ChannelName) -> Result<(), EngineError> {
    inner.check_ready()?;
    let Some(generation) = inner.tracks.insert(channel) else {
        return Ok(());
    };
    let key = channel.as_str();
    let sink = inner.sink.lock().clone();
    let Some(mut sink) = sink else {
        inner.tracks.forget(key, generation);
        return Err(EngineError::Unavailable("redis is not connected".into()));
    };
    let pubsub = inner.keys.pubsub(key);
    let subscribed =
        tokio::time::timeout(inner.opts.command_timeout, sink.subscribe(&pubsub)).await;
    if !matches!(subscribed, Ok(Ok(()))) {
        inner.tracks.forget(key, generation);
        return Err(EngineError::Unavailable("redis subscribe failed".into()));
    }
    if let Err(e) = read_baseline(inner, channel, generation).await {
        inner.tracks.forget(key, generation);
        let _ = tokio::time::timeout(inner.opts.command_timeout, sink.unsubscribe(&pubsub)).await;
        return Err(e);
    }
    Ok(())
}

/// Reads where a channel's stream stands and hands it to the reader as the subscription's
/// baseline. Called once the subscription is confirmed: every publication after the read
/// reaches this node, and the broker reads its own position later still.
pub(super) async fn read_baseline(
    inner: &Inner,
    channel: &ChannelName,
    generation: u64,
) -> Result<(), EngineError> {
    let cmd = redis::cmd("HMGET")
        .arg(inner.keys.meta(channel.as_str()))
        .arg("offset")
        .arg("epoch")
        .clone();
    let mut meta = value_array(inner.command(&cmd).await?).into_iter();
    let offset = meta.next().as_ref().and_then(value_u64).unwrap_or(0);
    let epoch = meta.next().and_then(value_string).map(Arc::from);
    let _ = inner.events.send(Event::Baseline {
        channel: channel.shared(),
        generation,
        position: Position { epoch, offset },
    });
    Ok(())
}

pub(super) async fn unsubscribe(inner: &Inner, channel: &ChannelName) -> Result<(), EngineError> {
    inner.tracks.remove(channel.as_str());
    // Without a connection there is nothing to undo: a reconnect only resubscribes
    // the channels still tracked.
    let sink = inner.sink.lock().clone();
    if let Some(mut sink) = sink {
        let pubsub = inner.keys.pubsub(channel.as_str());
        match tokio::time::timeout(inner.opts.command_timeout, sink.unsubscribe(&pubsub)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::debug!("unsubscribe failed channel={channel}: {e}"),
            Err(_) => log::debug!("unsubscribe timed out channel={channel}"),
        }
    }
    Ok(())
}

/// One pub/sub message on a channel's `<p>:ch:{name}`, as published: `p<offset>:<epoch>:
/// <stored publication>` by the publish function, `u<frame>` for a push.
#[derive(Debug, PartialEq, Eq)]
enum Payload<'a> {
    Publication {
        offset: u64,
        epoch: &'a str,
        body: &'a str,
    },
    Push(&'a str),
}

/// Why a payload was not understood (logged with the channel).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum PayloadError {
    #[error("malformed publication")]
    Malformed,
    #[error("malformed publication offset")]
    BadOffset,
    #[error("unknown message")]
    Unknown,
}

fn parse_payload(payload: &str) -> Result<Payload<'_>, PayloadError> {
    match payload.as_bytes().first() {
        Some(b'p') => {
            let mut parts = payload[1..].splitn(3, ':');
            let (Some(offset), Some(epoch), Some(body)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(PayloadError::Malformed);
            };
            // Offsets start at 1; anything else is not ours.
            let offset = offset
                .parse::<u64>()
                .ok()
                .filter(|o| *o > 0)
                .ok_or(PayloadError::BadOffset)?;
            Ok(Payload::Publication {
                offset,
                epoch,
                body,
            })
        }
        Some(b'u') => Ok(Payload::Push(&payload[1..])),
        _ => Err(PayloadError::Unknown),
    }
}

impl Inner {
    /// Handles one pub/sub message.
    async fn on_message(self: &Arc<Self>, msg: Msg) {
        self.on_pubsub(msg.get_channel_name(), msg.get_payload_bytes())
            .await;
    }

    /// Handles one message on a pub/sub name (classic or sharded): a control command, or
    /// a channel's publication or push.
    pub(super) async fn on_pubsub(self: &Arc<Self>, name: &str, payload: &[u8]) {
        if name == self.keys.control {
            self.on_control(payload);
            return;
        }
        let Some(channel) = self.keys.channel_of(name) else {
            return;
        };
        let Ok(payload) = std::str::from_utf8(payload) else {
            return;
        };
        match parse_payload(payload) {
            Ok(Payload::Publication {
                offset,
                epoch,
                body,
            }) => {
                let inc = Incoming {
                    offset,
                    epoch: Arc::from(epoch),
                    payload: body.to_string(),
                };
                let out = self.handler().map(|h| &**h);
                self.tracks.deliver(&**self, out, channel, inc).await;
            }
            Ok(Payload::Push(frame)) => {
                if let (Some(name), Some(h)) = (self.tracks.name(channel), self.handler()) {
                    h.on_push(name, ByteString::from(frame));
                }
            }
            Err(e) => log::warn!("{e} on channel={channel}"),
        }
    }

    pub(super) async fn on_event(&self, event: Event) {
        match event {
            Event::Baseline {
                channel,
                generation,
                position,
            } => {
                let out = self.handler().map(|h| &**h);
                self.tracks
                    .baseline(self, out, &channel, generation, position)
                    .await;
            }
        }
    }
}

/// Why a connected session of the reader ended.
enum SessionEnd {
    Shutdown,
    Lost(String),
}

/// The reader: owns the pub/sub connection, reconnects with backoff and jitter.
pub(super) async fn reader_task(
    inner: Arc<Inner>,
    mut events: mpsc::UnboundedReceiver<Event>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut attempt: u32 = 0;
    loop {
        match reader_session(&inner, &mut events, &mut shutdown).await {
            Ok(SessionEnd::Shutdown) => break,
            Ok(SessionEnd::Lost(why)) => {
                log::warn!("redis connection lost node={}: {why}", inner.opts.node_id);
                attempt = 0;
            }
            Err(why) => {
                if attempt == 0 || attempt.is_multiple_of(20) {
                    log::warn!("redis not available node={}: {why}", inner.opts.node_id);
                }
            }
        }
        inner.set_ready(false);
        *inner.sink.lock() = None;
        let delay = backoff_ms(attempt, ms(inner.opts.max_backoff), &mut rand::rng());
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(delay)) => {}
            _ = shutdown.changed() => break,
        }
        if *shutdown.borrow() {
            break;
        }
    }
    inner.set_ready(false);
    *inner.sink.lock() = None;
}

/// The pause before reconnection attempt `attempt` (0 first): exponential from 50 ms,
/// capped at `cap_ms`, with jitter (half to all of it) so that nodes do not reconnect in
/// lockstep after an outage.
pub(super) fn backoff_ms(attempt: u32, cap_ms: u64, rng: &mut impl Rng) -> u64 {
    let base = 50u64
        .saturating_mul(1u64 << attempt.min(16))
        .min(cap_ms.max(1));
    rng.random_range(base / 2..=base)
}

/// One connected life of the reader: connect, subscribe, migrate, resubscribe, catch up,
/// then read until the connection is lost or the engine shuts down.
async fn reader_session(
    inner: &Arc<Inner>,
    events: &mut mpsc::UnboundedReceiver<Event>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<SessionEnd, String> {
    let limit = inner.opts.command_timeout;
    let super::Mode::Single { client } = &inner.mode else {
        return Ok(SessionEnd::Shutdown);
    };
    let pubsub = tokio::time::timeout(limit, client.get_async_pubsub())
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sink, mut stream): (PubSubSink, PubSubStream) = pubsub.split();
    tokio::time::timeout(limit, sink.subscribe(&inner.keys.control))
        .await
        .map_err(|_| "subscribe timed out".to_string())?
        .map_err(|e| format!("subscribe: {e}"))?;
    // The command connection may still hold a dead socket from before an outage: its first
    // command fails and reconnects, so one failure here is retried at once. A newer schema
    // is not retried: it will not change by asking again.
    let migrated = match inner.repair().await {
        Err(e @ MigrateError::TooNew { .. }) => Err(e),
        Err(_) => inner.repair().await,
        ok => ok,
    };
    match migrated {
        Ok(_) => {}
        Err(e @ MigrateError::TooNew { .. }) => {
            log::error!("{e}; node={} stays not ready", inner.opts.node_id);
            return Err(e.to_string());
        }
        Err(e) => return Err(e.to_string()),
    }
    *inner.sink.lock() = Some(sink.clone());

    // Resubscribe every channel held, then deliver what was missed meanwhile.
    let held = inner.tracks.held();
    for chunk in held.chunks(SUBSCRIBE_CHUNK) {
        let names: Vec<String> = chunk.iter().map(|(c, _, _)| inner.keys.pubsub(c)).collect();
        tokio::time::timeout(limit, sink.subscribe(&names))
            .await
            .map_err(|_| "resubscribe timed out".to_string())?
            .map_err(|e| format!("resubscribe: {e}"))?;
    }
    let out = inner.handler().map(|h| &**h);
    for (channel, generation, last) in held {
        if let Some(last) = last {
            inner
                .tracks
                .catch_up(&**inner, out, &channel, generation, last)
                .await;
        }
    }
    inner.set_ready(true);
    log::info!("redis engine ready node={}", inner.opts.node_id);

    let mut health = tokio::time::interval(inner.opts.health_period);
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    health.tick().await;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => return Ok(SessionEnd::Shutdown),
            // Events first: a baseline sent before a message arrived is applied before it.
            event = events.recv() => match event {
                Some(event) => inner.on_event(event).await,
                None => return Ok(SessionEnd::Shutdown),
            },
            msg = stream.next() => match msg {
                Some(msg) => inner.on_message(msg).await,
                None => return Ok(SessionEnd::Lost("pub/sub connection closed".into())),
            },
            _ = health.tick() => {
                match tokio::time::timeout(limit, sink.ping::<Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Ok(SessionEnd::Lost(format!("ping: {e}"))),
                    Err(_) => return Ok(SessionEnd::Lost("ping timed out".into())),
                }
                // A Redis flushed under us keeps the connection but loses the schema.
                let exists = inner.query(redis::cmd("EXISTS").arg(inner.keys.schema())).await;
                if matches!(exists, Ok(Value::Int(0))) {
                    log::warn!("redis lost the schema key; applying migrations again");
                    if let Err(e) = inner.repair().await {
                        return Ok(SessionEnd::Lost(e.to_string()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse() {
        assert_eq!(
            parse_payload(r#"p12:ab12:{"data":{"a":"x:y"}}"#),
            Ok(Payload::Publication {
                offset: 12,
                epoch: "ab12",
                body: r#"{"data":{"a":"x:y"}}"#
            })
        );
        assert_eq!(
            parse_payload(r#"u{"push":1}"#),
            Ok(Payload::Push(r#"{"push":1}"#))
        );
        assert_eq!(parse_payload("p12:ab12"), Err(PayloadError::Malformed));
        assert_eq!(parse_payload("p0:e:{}"), Err(PayloadError::BadOffset));
        assert_eq!(parse_payload("px:e:{}"), Err(PayloadError::BadOffset));
        assert_eq!(parse_payload("x"), Err(PayloadError::Unknown));
        assert_eq!(parse_payload(""), Err(PayloadError::Unknown));
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut rng = rand::rng();
        for _ in 0..100 {
            let first = backoff_ms(0, 2000, &mut rng);
            assert!((25..=50).contains(&first), "{first}");
            let later = backoff_ms(30, 2000, &mut rng);
            assert!((1000..=2000).contains(&later), "{later}");
            assert!(backoff_ms(3, 0, &mut rng) <= 1, "a zero cap does not panic");
        }
    }
}
