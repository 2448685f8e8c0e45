//! The publisher lane: every publication of this node goes to Redis through one task, in
//! the order [`Engine::publish`](crate::engine::Engine::publish) was called. The task takes
//! everything queued since its last batch, sends it as one pipeline of `FCALL`s on the
//! engine's command connection (consecutive publications of one channel as one
//! `switchboard_v4_publish_many` call, which costs Redis far less per publication), waits
//! for the answers, hands each to its caller, and repeats. One batch in flight at a time keeps the order by construction (Redis runs a
//! connection's commands in the order they arrive); batches grow with the load, so a
//! connection pipelining publishes costs one round trip per batch, not per publication
//! (group commit).
//!
//! A batch that fails or gets no answer within the command timeout fails every member with
//! `unavailable` (ambiguous: Redis may still run it; an idempotency key makes the retry
//! safe). A batch refused because Redis lost the functions (it came back empty) ran nothing:
//! the migrations are applied again and those members are sent once more.
//!
//! Talks to [`Inner`] (its connection, timeout and repair) and to callers through oneshot
//! channels; the queue is unbounded, bounded in practice by its callers (a session's window
//! of publishes, one publish per HTTP request).

use std::sync::Arc;

use redis::Value;
use tokio::sync::{mpsc, oneshot, watch};

use super::resp::{query_pipe, CmdError};
use super::stream::{joinable, publish_many_cmd, publish_many_reply, publish_reply, Outgoing};
use super::Inner;
use crate::engine::{EngineError, PublishResult};

/// The most publications sent in one pipeline: large enough that a busy node pays one
/// round trip for many, small enough that one batch's answers stay a few hundred KB.
const MAX_BATCH: usize = 512;

/// One publication waiting for its turn.
pub(super) struct Job {
    /// What its function call needs.
    pub(super) publication: Outgoing,
    /// Where its result goes.
    pub(super) reply: oneshot::Sender<Result<PublishResult, EngineError>>,
}

/// One function call of a batch: one publication (`switchboard_v4_publish`), or several
/// consecutive ones of a channel (`switchboard_v4_publish_many`).
struct Call {
    many: bool,
    replies: Vec<oneshot::Sender<Result<PublishResult, EngineError>>>,
}

impl Call {
    /// Hands the call's answer to its publications, in order.
    fn answer(self, result: Result<Value, EngineError>) {
        let results = result.and_then(|v| {
            if self.many {
                publish_many_reply(v, self.replies.len())
            } else {
                publish_reply(v).map(|r| vec![r])
            }
        });
        match results {
            Ok(results) => {
                for (reply, r) in self.replies.into_iter().zip(results) {
                    // A caller that went away (its connection closed) no longer wants it.
                    let _ = reply.send(Ok(r));
                }
            }
            Err(e) => {
                for reply in self.replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// The batch as function calls, in order, with the command of each: consecutive
/// publications of one channel that can share a call do.
fn calls(batch: Vec<Job>) -> (Vec<redis::Cmd>, Vec<Call>) {
    let (publications, replies): (Vec<Outgoing>, Vec<_>) =
        batch.into_iter().map(|j| (j.publication, j.reply)).unzip();
    let mut calls = Vec::with_capacity(publications.len());
    let mut cmds = Vec::with_capacity(publications.len());
    let mut replies = replies.into_iter();
    let mut i = 0;
    while i < publications.len() {
        let n = joinable(&publications[i..]).max(1);
        let group = &publications[i..i + n];
        cmds.push(match (n, publish_many_cmd(group)) {
            (2.., Some(cmd)) => cmd,
            _ => group[0].cmd(),
        });
        calls.push(Call {
            many: n > 1,
            replies: replies.by_ref().take(n).collect(),
        });
        i += n;
    }
    (cmds, calls)
}

/// Runs batches until the engine shuts down (or is dropped).
pub(super) async fn lane_task(
    inner: Arc<Inner>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut batch = Vec::with_capacity(64);
    loop {
        if *shutdown.borrow() {
            return;
        }
        tokio::select! {
            n = jobs.recv_many(&mut batch, MAX_BATCH) => {
                if n == 0 {
                    return;
                }
            }
            changed = shutdown.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        }
        run_batch(&inner, std::mem::take(&mut batch)).await;
        if batch.capacity() == 0 {
            batch = Vec::with_capacity(64);
        }
    }
}

/// Sends one batch and answers each member; repairs and resends once what met a Redis
/// that lost its functions.
async fn run_batch(inner: &Inner, batch: Vec<Job>) {
    let (cmds, calls) = calls(batch);
    let mut results = match send(inner, &cmds).await {
        Ok(results) => results,
        Err(e) => {
            for call in calls {
                call.answer(Err(e.clone()));
            }
            return;
        }
    };
    let missing = |r: &Result<Value, CmdError>| matches!(r, Err(e) if e.function_missing());
    if results.iter().any(missing) {
        log::warn!("redis lost the switchboard functions; applying migrations again");
        match inner.repair().await {
            Ok(_) => {
                // Only the calls refused for the missing function: they ran nothing.
                let again: Vec<usize> = (0..results.len())
                    .filter(|&i| missing(&results[i]))
                    .collect();
                let resend: Vec<redis::Cmd> = again.iter().map(|&i| cmds[i].clone()).collect();
                match send(inner, &resend).await {
                    Ok(answers) => {
                        for (i, r) in again.into_iter().zip(answers) {
                            results[i] = r;
                        }
                    }
                    Err(e) => {
                        for i in again {
                            results[i] = Err(CmdError::Reply("publish after repair"));
                        }
                        log::warn!("publish batch failed after repair: {e}");
                    }
                }
            }
            Err(e) => log::warn!("cannot apply migrations again: {e}"),
        }
    }
    for (call, r) in calls.into_iter().zip(results) {
        call.answer(r.map_err(CmdError::into_engine));
    }
}

/// One pipeline of `cmds`: an answer each, or one failure for the whole batch (no answer
/// in time, a broken connection).
async fn send(
    inner: &Inner,
    cmds: &[redis::Cmd],
) -> Result<Vec<Result<Value, CmdError>>, EngineError> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for c in cmds {
        pipe.add_command(c.clone());
    }
    let mut con = inner.conn.clone();
    let answers = query_pipe::<Vec<redis::RedisResult<Value>>, _>(
        &pipe,
        &mut con,
        inner.opts.command_timeout,
    )
    .await
    .map_err(|e| {
        log::warn!(
            "publish batch failed size={} node={}: {e}",
            cmds.len(),
            inner.opts.node_id
        );
        e.into_engine()
    })?;
    if answers.len() != cmds.len() {
        return Err(CmdError::Reply("publish pipeline").into_engine());
    }
    Ok(answers
        .into_iter()
        .map(|v| v.map_err(CmdError::Redis))
        .collect())
}
