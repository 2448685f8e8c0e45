//! A channel's stream in Redis: publishing (one server-side function checks the optional
//! idempotency key, assigns the offset, appends to history and PUBLISHes), pushes, history
//! reads with recovery, the gap filler's range reads (the [`History`] the ordering reads
//! from), and keeping the meta hash of subscribed channels alive. Talks to Redis through the engine's command
//! connection; the stored form of a publication is defined here.

use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;
use redis::Value;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::conn::slot_of;
use super::ordering::History;
use super::resp::{
    fcall, ms, parse_stream_reply, value_array, value_string, value_u64, CmdError, StreamReply,
};
use super::schema::{FN_HISTORY, FN_PUBLISH, FN_RANGE, FN_READ};
use super::Inner;
use crate::channel::ChannelName;
use crate::config::NamespaceOptions;
use crate::engine::{recover_after, EngineError, HistoryResult, Publish, PublishResult};
use crate::protocol::{ClientInfo, Publication, StreamPosition};

/// How much longer than its history a channel's meta hash (offset, epoch) lives.
pub const META_GRACE: Duration = Duration::from_secs(60);

/// A publication as stored in history and sent over pub/sub (without offset and epoch,
/// which travel in front of it).
#[derive(Serialize)]
struct StoredRef<'a> {
    data: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<&'a ClientInfo>,
}

#[derive(Deserialize)]
struct Stored {
    data: Box<RawValue>,
    #[serde(default)]
    info: Option<ClientInfo>,
}

/// A stored publication (`{"data":..,"info":..}`) at `offset`; `None` when it does not
/// decode.
pub(super) fn parse_publication(offset: u64, payload: &str) -> Option<Publication> {
    let stored: Stored = serde_json::from_str(payload).ok()?;
    Some(Publication {
        offset,
        data: Arc::from(stored.data),
        info: stored.info,
    })
}

/// A fresh random epoch, offered to Redis for a channel whose meta hash does not exist.
fn new_epoch() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..12].to_string()
}

/// The `switchboard_v3_publish` call for one publication; with an idempotency key (and a
/// window above 0) the function also checks and records `<p>:idem:{ch}:<key>`, in the same
/// atomic call. Built at once, so the publisher lane sends calls in the order they were made.
pub(super) fn publish_cmd(
    inner: &Inner,
    channel: &ChannelName,
    p: Publish,
    ns: &NamespaceOptions,
) -> Result<redis::Cmd, EngineError> {
    let payload = serde_json::to_string(&StoredRef {
        data: &p.data,
        info: p.info.as_ref(),
    })
    .map_err(|e| EngineError::Unavailable(format!("cannot encode publication: {e}")))?;
    let keys = &inner.keys;
    let (meta, history) = (keys.meta(channel.as_str()), keys.history(channel.as_str()));
    let window = ns.idempotency_window.0;
    // A window of 0 remembers nothing: the key is then only validated.
    let idem = p
        .idempotency_key
        .filter(|_| !window.is_zero())
        .map(|k| keys.idem(channel.as_str(), k.as_str()));
    let history_ttl = ns.history_ttl.0;
    let mut cmd = match &idem {
        Some(idem) => fcall(FN_PUBLISH, &[&meta, &history, idem]),
        None => fcall(FN_PUBLISH, &[&meta, &history]),
    };
    cmd.arg(new_epoch())
        .arg(payload)
        .arg(ns.history_size)
        .arg(ms(history_ttl))
        .arg(ms(history_ttl + META_GRACE))
        .arg(keys.pubsub(channel.as_str()));
    if idem.is_some() {
        // At least 1 ms: a window under a millisecond is still a window, not "off".
        cmd.arg(ms(window).max(1));
    }
    Ok(cmd)
}

/// Reads the function's answer: offset, epoch, and whether the key was a repeat.
pub(super) fn publish_reply(reply: Value) -> Result<PublishResult, EngineError> {
    let mut items = value_array(reply).into_iter();
    match (
        items.next().as_ref().and_then(value_u64),
        items.next().and_then(value_string),
        items.next().as_ref().and_then(value_u64),
    ) {
        (Some(offset), Some(epoch), Some(duplicate)) => Ok(PublishResult {
            offset,
            epoch: Arc::from(epoch),
            duplicate: duplicate == 1,
        }),
        _ => Err(CmdError::Reply("publish").into_engine()),
    }
}

/// Sends a ready `join`/`leave` frame to every node subscribed to the channel.
pub(super) async fn push(
    inner: &Inner,
    channel: &ChannelName,
    frame: ByteString,
) -> Result<(), EngineError> {
    let mut payload = String::with_capacity(frame.len() + 1);
    payload.push('u');
    payload.push_str(&frame);
    let cmd = redis::cmd(inner.publish_verb())
        .arg(inner.keys.pubsub(channel.as_str()))
        .arg(payload)
        .clone();
    inner.command(&cmd).await.map(|_| ())
}

/// A history read; `create` gives a channel without state its epoch (a subscription
/// joining: `switchboard_v1_history`), else such a channel answers offset 0 with no epoch
/// and nothing is written (a query: `switchboard_v2_read`).
pub(super) async fn history(
    inner: &Inner,
    channel: &ChannelName,
    since: Option<&StreamPosition>,
    limit: usize,
    ns: &NamespaceOptions,
    create: bool,
) -> Result<HistoryResult, EngineError> {
    let keys = &inner.keys;
    let (meta, history) = (keys.meta(channel.as_str()), keys.history(channel.as_str()));
    // With `since`, one more than asked is not needed but at least one is: the entry
    // right after `since` tells whether the gap is still held.
    let (from, count) = match since {
        Some(pos) => (pos.offset.saturating_add(1), limit.max(1)),
        None => (0, limit),
    };
    let cmd = if create {
        fcall(FN_HISTORY, &[&meta, &history])
            .arg(new_epoch())
            .arg(ms(ns.history_ttl.0 + META_GRACE))
            .arg(from)
            .arg(count)
            .clone()
    } else {
        fcall(FN_READ, &[&meta, &history])
            .arg(from)
            .arg(count)
            .clone()
    };
    let (latest, epoch, entries) = parse_stream_reply(inner.fcall(&cmd).await?)
        .ok_or_else(|| CmdError::Reply("history").into_engine())?;
    let epoch: Arc<str> = Arc::from(epoch);
    let mut publications: Vec<Publication> = entries
        .iter()
        .filter_map(|(o, p)| parse_publication(*o, p))
        .collect();
    if since.is_none() {
        // XREVRANGE gave the newest first.
        publications.reverse();
    }
    let recovered = match since {
        Some(pos) => {
            let (kept, recovered) = recover_after(pos, latest, &epoch, publications, limit);
            publications = kept;
            recovered
        }
        None => false,
    };
    Ok(HistoryResult {
        offset: latest,
        epoch,
        publications,
        recovered,
    })
}

impl History for Inner {
    async fn range(&self, channel: &str, from: u64, to: u64) -> Result<StreamReply, CmdError> {
        let (meta, history) = (self.keys.meta(channel), self.keys.history(channel));
        let cmd = fcall(FN_RANGE, &[&meta, &history])
            .arg(from)
            .arg(to)
            .clone();
        let reply = match self.query(&cmd).await {
            // A Redis (or a cluster's new primary) that came back empty: load the
            // functions again, then the read finds no meta and the ordering resets.
            Err(e) if e.function_missing() => {
                self.repair()
                    .await
                    .map_err(|e| CmdError::Batch(e.to_string()))?;
                self.query(&cmd).await?
            }
            reply => reply?,
        };
        parse_stream_reply(reply).ok_or(CmdError::Reply("range"))
    }

    async fn open_epoch(&self, channel: &str) -> Result<StreamReply, CmdError> {
        let (meta, history) = (self.keys.meta(channel), self.keys.history(channel));
        // The meta lives META_GRACE; the node's periodic refresh keeps it while subscribed,
        // and the first publication sets the namespace's own TTL.
        let cmd = fcall(FN_HISTORY, &[&meta, &history])
            .arg(new_epoch())
            .arg(ms(META_GRACE))
            .arg(0)
            .arg(0)
            .clone();
        parse_stream_reply(self.query(&cmd).await?).ok_or(CmdError::Reply("history"))
    }
}

impl Inner {
    /// Keeps the meta hash (offset, epoch) of every channel this node is subscribed to
    /// alive for at least [`META_GRACE`] more, so a channel with live subscribers does not
    /// start a new epoch (and `reset` them) only because nobody published for a while; the
    /// memory engine likewise never forgets a channel it holds. `GT` never shortens a
    /// longer TTL, and a missing hash stays missing.
    pub(super) async fn keep_meta(&self) -> Result<(), CmdError> {
        let channels = self.tracks.channels();
        for chunk in channels.chunks(500) {
            let cmds: Vec<(u16, redis::Cmd)> = chunk
                .iter()
                .map(|channel| {
                    let mut cmd = redis::cmd("PEXPIRE");
                    cmd.arg(self.keys.meta(channel))
                        .arg(ms(META_GRACE))
                        .arg("GT");
                    (slot_of(channel), cmd)
                })
                .collect();
            self.run_all(&cmds).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_publications_round_trip() {
        let data: Arc<RawValue> =
            Arc::from(RawValue::from_string(r#"{"n":1}"#.to_string()).expect("raw json"));
        let stored = serde_json::to_string(&StoredRef {
            data: &data,
            info: None,
        })
        .expect("encodes");
        assert_eq!(
            stored, r#"{"data":{"n":1}}"#,
            "no info key when there is none"
        );
        let p = parse_publication(7, &stored).expect("decodes");
        assert_eq!((p.offset, p.data.get()), (7, r#"{"n":1}"#));
        let p = parse_publication(8, r#"{"data":2,"info":{"client":"c","user":"u"}}"#)
            .expect("decodes");
        assert_eq!(p.info.as_ref().map(|i| &*i.user), Some("u"));
        assert!(parse_publication(9, "not json").is_none());
    }
}
