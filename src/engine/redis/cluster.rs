//! What the nodes of a cluster tell each other: commands on `<p>:control` (disconnect a
//! user everywhere, each node answering in `<p>:disc:{req}`), each node's liveness and
//! local subscriber counts in `<p>:nodes` and `<p>:subs:{node}` (summed into the
//! cluster-wide channel list), and the beat task that refreshes those, this node's
//! presence and the meta hashes it keeps alive.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Value;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::resp::{fcall, ms, query_pipe, value_array, value_string, value_u64, CmdError};
use super::schema::{FN_LIVE_NODES, FN_NODE_BEAT};
use super::Inner;
use crate::engine::EngineError;

/// A node-to-node command on `<p>:control`.
#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Control {
    /// Disconnect the user's sessions and answer in `<p>:disc:{req}`.
    Disconnect { user: String, req: String },
}

/// How long a node's answer to a disconnect request is kept.
const DISC_ANSWER_TTL_MS: u64 = 10_000;

/// Asks every node (this one included) to disconnect the user's sessions, and sums their
/// answers, waiting at most `disconnect_wait` for them.
pub(super) async fn disconnect_user(inner: &Inner, user: &str) -> Result<usize, EngineError> {
    let req = uuid::Uuid::new_v4().simple().to_string();
    let message = serde_json::to_string(&Control::Disconnect {
        user: user.to_string(),
        req: req.clone(),
    })
    .map_err(|e| EngineError::Unavailable(format!("cannot encode control: {e}")))?;
    let cmd = redis::cmd(inner.publish_verb())
        .arg(&inner.keys.control)
        .arg(message)
        .clone();
    // PUBLISH answers how many nodes (this one included) received the request.
    let receivers = value_u64(&inner.command(&cmd).await?).unwrap_or(0);
    let key = inner.keys.disc(&req);
    let deadline = Instant::now() + inner.opts.disconnect_wait;
    loop {
        let replies = value_array(inner.command(redis::cmd("HVALS").arg(&key)).await?);
        let answered = replies.len() as u64;
        if answered >= receivers || Instant::now() >= deadline {
            if answered < receivers {
                log::warn!("disconnect_user: {answered} of {receivers} nodes answered in time");
            }
            let total: u64 = replies.iter().filter_map(value_u64).sum();
            return Ok(usize::try_from(total).unwrap_or(usize::MAX));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every channel with subscribers on a live node, with its cluster-wide count; writes this
/// node's own counts first.
pub(super) async fn channels(inner: &Inner) -> Result<Vec<(String, usize)>, EngineError> {
    inner.beat().await.map_err(CmdError::into_engine)?;
    let stale = ms(inner.opts.node_period * 5);
    let cmd = fcall(FN_LIVE_NODES, &[&inner.keys.nodes()])
        .arg(stale)
        .clone();
    let nodes: Vec<String> = value_array(inner.fcall(&cmd).await?)
        .into_iter()
        .filter_map(value_string)
        .collect();
    let mut pipe = redis::pipe();
    for node in &nodes {
        pipe.cmd("HGETALL").arg(inner.keys.subs(node));
    }
    let mut con = inner.conn.clone();
    let replies: Vec<Value> = query_pipe(&pipe, &mut con, inner.opts.command_timeout)
        .await
        .map_err(CmdError::into_engine)?;
    let mut totals: HashMap<String, usize> = HashMap::new();
    for reply in replies {
        let mut items = value_array(reply).into_iter();
        while let (Some(ch), Some(n)) = (items.next(), items.next()) {
            if let (Some(ch), Some(n)) = (value_string(ch), value_u64(&n)) {
                *totals.entry(ch).or_default() += usize::try_from(n).unwrap_or(usize::MAX);
            }
        }
    }
    let mut all: Vec<(String, usize)> = totals.into_iter().filter(|(_, n)| *n > 0).collect();
    all.sort();
    Ok(all)
}

impl Inner {
    /// A command from another node (or this one) on `<p>:control`.
    pub(super) fn on_control(self: &Arc<Self>, payload: &[u8]) {
        let Ok(control) = serde_json::from_slice::<Control>(payload) else {
            log::warn!("unknown control message");
            return;
        };
        match control {
            Control::Disconnect { user, req } => {
                let n = self.handler().map_or(0, |h| h.disconnect_user(&user));
                // Answer off the reader task, so publications keep flowing meanwhile.
                let inner = self.clone();
                tokio::spawn(async move {
                    let key = inner.keys.disc(&req);
                    let mut pipe = redis::pipe();
                    pipe.atomic()
                        .cmd("HSET")
                        .arg(&key)
                        .arg(&inner.opts.node_id)
                        .arg(n)
                        .ignore()
                        .cmd("PEXPIRE")
                        .arg(&key)
                        .arg(DISC_ANSWER_TTL_MS)
                        .ignore();
                    if inner.run_pipe(&pipe).await.is_err() {
                        log::warn!("could not answer a disconnect request req={req}");
                    }
                });
            }
        }
    }

    /// Writes this node's liveness and local counts.
    pub(super) async fn beat(&self) -> Result<(), CmdError> {
        let counts = self.local_counts.lock().clone();
        let (nodes, subs) = (self.keys.nodes(), self.keys.subs(&self.opts.node_id));
        let mut cmd = fcall(FN_NODE_BEAT, &[&nodes, &subs]);
        cmd.arg(&self.opts.node_id)
            .arg(ms(self.opts.node_period * 5));
        for (channel, count) in &counts {
            cmd.arg(channel).arg(*count);
        }
        self.query(&cmd).await.map(|_| ())
    }
}

/// Refreshes presence, the meta hashes of subscribed channels and the node beat while
/// ready. Only Redis's own errors are logged here: a timeout is a connection in trouble,
/// which the reader's health check finds and reports.
pub(super) async fn beat_task(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    let mut presence = tokio::time::interval(inner.opts.presence_period);
    let mut node = tokio::time::interval(inner.opts.node_period);
    presence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    node.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = presence.tick() => {
                if inner.ready.load(Ordering::Acquire) {
                    if let Err(CmdError::Redis(e)) = inner.refresh_presence().await {
                        log::warn!("presence refresh failed node={}: {e}", inner.opts.node_id);
                    }
                    if let Err(CmdError::Redis(e)) = inner.keep_meta().await {
                        log::warn!("channel keep-alive failed node={}: {e}", inner.opts.node_id);
                    }
                }
            }
            _ = node.tick() => {
                if inner.ready.load(Ordering::Acquire) {
                    if let Err(CmdError::Redis(e)) = inner.beat().await {
                        log::warn!("node beat failed node={}: {e}", inner.opts.node_id);
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
    fn control_messages_keep_their_wire_form() {
        let c = Control::Disconnect {
            user: "u1".into(),
            req: "r1".into(),
        };
        let json = serde_json::to_string(&c).expect("encodes");
        assert_eq!(json, r#"{"op":"disconnect","user":"u1","req":"r1"}"#);
        assert!(serde_json::from_str::<Control>(r#"{"op":"reboot"}"#).is_err());
    }
}
