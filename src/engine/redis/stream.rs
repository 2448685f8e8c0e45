//! A channel's stream in Redis: publishing (one server-side function checks the optional
//! idempotency key, assigns the offset, appends to history, trims and expires it now and
//! then, and PUBLISHes; [`Outgoing`] is a publication ready for the lane, which may send
//! several of a channel as one call), pushes, history reads with recovery, the gap filler's
//! range reads (the [`History`] the ordering reads from), and keeping the meta hash of
//! subscribed channels alive. Reads never answer what exact trimming to `history_size`
//! would have dropped. Talks to Redis through the engine's command connection and asks
//! `refresh` when a publication should refresh its channel's TTLs; the stored form of a
//! publication is defined here.

use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;
use redis::Value;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::ordering::History;
use super::refresh;
use super::resp::{
    fcall, ms, parse_stream_reply, value_array, value_string, value_u64, CmdError, StreamReply,
};
use super::schema::{FN_HISTORY, FN_PUBLISH, FN_PUBLISH_MANY, FN_RANGE, FN_READ};
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

/// The pub/sub command the publish function ends with: `PUBLISH` on one Redis. A Redis
/// Cluster engine switches this to `SPUBLISH` (sharded pub/sub); the function accepts both.
pub(super) const PUBSUB_CMD: &str = "PUBLISH";

/// The most publications one `switchboard_v4_publish_many` call carries: one call runs
/// atomically, so it must stay short next to other clients' commands.
const MAX_PER_CALL: usize = 128;

/// One publication ready for the publisher lane: what its function call needs, kept apart
/// so the lane can send consecutive publications of a channel as one call.
pub(super) struct Outgoing {
    meta: String,
    history: String,
    /// `<p>:idem:{ch}:<key>` when the publication carries a key (and the window is on).
    idem: Option<String>,
    candidate: String,
    payload: String,
    size: usize,
    /// The TTLs a refresh sets, already padded.
    ttl_ms: u64,
    meta_ttl_ms: u64,
    pubsub: String,
    refresh: bool,
    window_ms: u64,
}

impl Outgoing {
    /// Whether this publication asked Redis to refresh its channel's TTLs.
    pub(super) fn refresh(&self) -> bool {
        self.refresh
    }

    /// Whether `next` can go in the same `switchboard_v4_publish_many` call: same channel
    /// and namespace options, and no idempotency key on either (a key is checked and
    /// recorded per publication by `switchboard_v4_publish`).
    pub(super) fn joins(&self, next: &Outgoing) -> bool {
        self.idem.is_none()
            && next.idem.is_none()
            && self.meta == next.meta
            && self.size == next.size
            && self.ttl_ms == next.ttl_ms
            && self.meta_ttl_ms == next.meta_ttl_ms
    }

    /// `FCALL switchboard_v4_publish` (the argument order is documented in the Lua file).
    pub(super) fn cmd(&self) -> redis::Cmd {
        let mut cmd = match &self.idem {
            Some(idem) => fcall(FN_PUBLISH, &[&self.meta, &self.history, idem]),
            None => fcall(FN_PUBLISH, &[&self.meta, &self.history]),
        };
        self.common_args(&mut cmd, &self.payload, self.refresh);
        if self.idem.is_some() {
            cmd.arg(self.window_ms);
        }
        cmd
    }

    fn common_args(&self, cmd: &mut redis::Cmd, payload: &str, refresh: bool) {
        cmd.arg(&self.candidate)
            .arg(payload)
            .arg(self.size)
            .arg(self.ttl_ms)
            .arg(self.meta_ttl_ms)
            .arg(&self.pubsub)
            .arg(if refresh { "1" } else { "0" })
            .arg(PUBSUB_CMD);
    }
}

/// How many of `group`'s leading publications fit one call (at least 1).
pub(super) fn joinable(group: &[Outgoing]) -> usize {
    let Some(first) = group.first() else {
        return 0;
    };
    1 + group[1..]
        .iter()
        .take(MAX_PER_CALL - 1)
        .take_while(|o| first.joins(o))
        .count()
}

/// `FCALL switchboard_v4_publish_many` for publications that [`Outgoing::joins`] the first:
/// one call, one offset each, in order; it refreshes when any of them asked to.
pub(super) fn publish_many_cmd(group: &[Outgoing]) -> Option<redis::Cmd> {
    let first = group.first()?;
    let mut cmd = fcall(FN_PUBLISH_MANY, &[&first.meta, &first.history]);
    first.common_args(&mut cmd, "", group.iter().any(|o| o.refresh));
    for o in group {
        cmd.arg(&o.payload);
    }
    Some(cmd)
}

/// One publication for the lane; with an idempotency key (and a window above 0) the
/// function also checks and records `<p>:idem:{ch}:<key>`, in the same atomic call. Made at
/// once, so the publisher lane sends publications in the order they were made; whether it
/// refreshes the channel's TTLs is decided (and recorded) now.
pub(super) fn outgoing(
    inner: &Inner,
    channel: &ChannelName,
    p: Publish,
    ns: &NamespaceOptions,
) -> Result<Outgoing, EngineError> {
    let payload = serde_json::to_string(&StoredRef {
        data: &p.data,
        info: p.info.as_ref(),
    })
    .map_err(|e| EngineError::Unavailable(format!("cannot encode publication: {e}")))?;
    let keys = &inner.keys;
    let window = ns.idempotency_window.0;
    // A window of 0 remembers nothing: the key is then only validated.
    let idem = p
        .idempotency_key
        .filter(|_| !window.is_zero())
        .map(|k| keys.idem(channel.as_str(), k.as_str()));
    let history_ttl = ns.history_ttl.0;
    let pad = refresh::pad(history_ttl);
    let refresh = inner
        .refreshes
        .due(channel.as_str(), pad, std::time::Instant::now());
    Ok(Outgoing {
        meta: keys.meta(channel.as_str()),
        history: keys.history(channel.as_str()),
        idem,
        candidate: new_epoch(),
        payload,
        size: ns.history_size,
        // No history TTL stays 0 (no history kept), not the pad.
        ttl_ms: if history_ttl.is_zero() {
            0
        } else {
            ms(history_ttl + pad)
        },
        meta_ttl_ms: ms(history_ttl + META_GRACE + pad),
        pubsub: keys.pubsub(channel.as_str()),
        refresh,
        // At least 1 ms: a window under a millisecond is still a window, not "off".
        window_ms: ms(window).max(1),
    })
}

/// Reads `switchboard_v4_publish`'s answer: offset, epoch, and whether the key was a repeat.
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

/// Reads `switchboard_v4_publish_many`'s answer `{last offset, epoch, count}` into one
/// result per publication, in order; `count` must be how many were sent.
pub(super) fn publish_many_reply(
    reply: Value,
    count: usize,
) -> Result<Vec<PublishResult>, EngineError> {
    let mut items = value_array(reply).into_iter();
    let bad = || CmdError::Reply("publish_many").into_engine();
    let (Some(last), Some(epoch), Some(n)) = (
        items.next().as_ref().and_then(value_u64),
        items.next().and_then(value_string),
        items.next().as_ref().and_then(value_u64),
    ) else {
        return Err(bad());
    };
    if n == 0 || usize::try_from(n).ok() != Some(count) {
        return Err(bad());
    }
    let first = last.checked_sub(n - 1).ok_or_else(bad)?;
    let epoch: Arc<str> = Arc::from(epoch);
    Ok((first..=last)
        .map(|offset| PublishResult {
            offset,
            epoch: epoch.clone(),
            duplicate: false,
        })
        .collect())
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
    let cmd = redis::cmd("PUBLISH")
        .arg(inner.keys.pubsub(channel.as_str()))
        .arg(payload)
        .clone();
    inner.command(&cmd).await.map(|_| ())
}

/// A history read; `create` gives a channel without state its epoch (a subscription
/// joining: `switchboard_v4_history`), else such a channel answers offset 0 with no epoch
/// and nothing is written (a query: `switchboard_v4_read`). Both answer nothing at or below
/// `latest - history_size`: the stream is trimmed only approximately (`XTRIM ~`), and
/// this bound, applied in Redis before `COUNT`, makes reads and recovery what exact
/// trimming would give.
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
            .arg(ns.history_size)
            .clone()
    } else {
        fcall(FN_READ, &[&meta, &history])
            .arg(from)
            .arg(count)
            .arg(ns.history_size)
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
    // `switchboard_v4_range` bounds the read with the history_size the publishing nodes
    // recorded in the meta hash: this node may not know the channel's namespace options.
    async fn range(&self, channel: &str, from: u64, to: u64) -> Result<StreamReply, CmdError> {
        let (meta, history) = (self.keys.meta(channel), self.keys.history(channel));
        let cmd = fcall(FN_RANGE, &[&meta, &history])
            .arg(from)
            .arg(to)
            .clone();
        parse_stream_reply(self.query(&cmd).await?).ok_or(CmdError::Reply("range"))
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
            let mut pipe = redis::pipe();
            for channel in chunk {
                pipe.cmd("PEXPIRE")
                    .arg(self.keys.meta(channel))
                    .arg(ms(META_GRACE))
                    .arg("GT")
                    .ignore();
            }
            self.run_pipe(&pipe).await?;
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
