//! Presence in Redis: who is in a channel, across nodes. Each node writes its own clients'
//! entries with an expiry and re-adds them every `presence_period` (from the beat task in
//! `cluster.rs`), so the entries of a node that died expire on their own. The node's own
//! entries are also kept in memory ([`Inner::presence`]) for that refresh.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::conn::slot_of;
use super::resp::{fcall, ms, value_array, value_string, CmdError};
use super::schema::{FN_PRESENCE_ADD, FN_PRESENCE_LIST};
use super::Inner;
use crate::channel::ChannelName;
use crate::engine::{EngineError, PresenceEntry};
use crate::protocol::ClientInfo;
use crate::shrink::Shrink;

/// A channel's presence entries held by this node: (client, info JSON).
type PresencePairs = Vec<(String, String)>;

/// This node's presence entries: channel -> client -> info JSON.
pub(super) type LocalPresence = HashMap<Arc<str>, HashMap<String, String>>;

/// A presence entry's value in `<p>:presence:{ch}`.
#[derive(Serialize, Deserialize)]
struct PresenceInfo {
    user: String,
    node: String,
}

pub(super) async fn add(
    inner: &Inner,
    channel: &ChannelName,
    info: &ClientInfo,
) -> Result<(), EngineError> {
    let value = serde_json::to_string(&PresenceInfo {
        user: info.user.to_string(),
        node: inner.opts.node_id.clone(),
    })
    .map_err(|e| EngineError::Unavailable(format!("cannot encode presence: {e}")))?;
    // Remembered first, so the periodic refresh re-adds it even if this write fails.
    inner
        .presence
        .lock()
        .entry(channel.shared())
        .or_default()
        .insert(info.client.to_string(), value.clone());
    let keys = &inner.keys;
    let (h, z) = (
        keys.presence(channel.as_str()),
        keys.presence_exp(channel.as_str()),
    );
    let cmd = fcall(FN_PRESENCE_ADD, &[&h, &z])
        .arg(ms(inner.opts.presence_period * 3))
        .arg(&*info.client)
        .arg(value)
        .clone();
    inner.fcall(&cmd).await.map(|_| ())
}

pub(super) async fn remove(
    inner: &Inner,
    channel: &ChannelName,
    client: &str,
) -> Result<(), EngineError> {
    {
        let mut presence = inner.presence.lock();
        if let Some(set) = presence.get_mut(channel.as_str()) {
            set.remove(client);
            if set.is_empty() {
                presence.remove(channel.as_str());
                presence.shrink_when_sparse();
            } else {
                set.shrink_when_sparse();
            }
        }
    }
    let keys = &inner.keys;
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("HDEL")
        .arg(keys.presence(channel.as_str()))
        .arg(client)
        .ignore()
        .cmd("ZREM")
        .arg(keys.presence_exp(channel.as_str()))
        .arg(client)
        .ignore();
    inner.check_ready()?;
    inner.run_pipe(&pipe).await.map_err(CmdError::into_engine)
}

pub(super) async fn list(
    inner: &Inner,
    channel: &ChannelName,
) -> Result<Vec<PresenceEntry>, EngineError> {
    let keys = &inner.keys;
    let (h, z) = (
        keys.presence(channel.as_str()),
        keys.presence_exp(channel.as_str()),
    );
    let cmd = fcall(FN_PRESENCE_LIST, &[&h, &z]).clone();
    let mut items = value_array(inner.fcall(&cmd).await?).into_iter();
    let mut list = Vec::new();
    while let (Some(client), Some(info)) = (items.next(), items.next()) {
        let (Some(client), Some(info)) = (value_string(client), value_string(info)) else {
            continue;
        };
        let Ok(info) = serde_json::from_str::<PresenceInfo>(&info) else {
            continue;
        };
        list.push(PresenceEntry {
            client,
            user: info.user,
            node: info.node,
        });
    }
    list.sort_by(|a, b| a.client.cmp(&b.client));
    Ok(list)
}

impl Inner {
    /// Re-adds every presence entry of this node with a fresh expiry.
    pub(super) async fn refresh_presence(&self) -> Result<(), CmdError> {
        let snapshot: Vec<(Arc<str>, PresencePairs)> = self
            .presence
            .lock()
            .iter()
            .map(|(ch, set)| {
                (
                    ch.clone(),
                    set.iter().map(|(c, i)| (c.clone(), i.clone())).collect(),
                )
            })
            .collect();
        let ttl = ms(self.opts.presence_period * 3);
        for chunk in snapshot.chunks(100) {
            let mut cmds = Vec::with_capacity(chunk.len());
            for (channel, entries) in chunk {
                let (h, z) = (self.keys.presence(channel), self.keys.presence_exp(channel));
                let mut cmd = fcall(FN_PRESENCE_ADD, &[&h, &z]);
                cmd.arg(ttl);
                for (client, info) in entries {
                    cmd.arg(client).arg(info);
                }
                cmds.push((slot_of(channel), cmd));
            }
            self.run_all(&cmds).await?;
        }
        Ok(())
    }
}
