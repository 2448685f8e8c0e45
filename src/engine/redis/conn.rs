//! The engine's command connection, one Redis or a Redis Cluster behind one type: [`Conn`]
//! implements redis-rs's `ConnectionLike`, so every command, pipeline and migration in the
//! engine is written once. On a cluster, redis-rs routes each command by its first key
//! (following `MOVED`/`ASK` and refreshing its slot map); what it cannot route (a pipeline
//! spanning slots, a command every primary must run) is split or routed here, by slot
//! ([`slot_of`]). Knows no key names; used by every file of the engine that sends commands.

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::resp::{query_pipe, CmdError};

/// The number of hash slots of a Redis Cluster.
pub(super) const SLOTS: u16 = 16384;

/// A command connection: to one Redis, or to a Redis Cluster.
#[derive(Clone)]
pub(super) enum Conn {
    /// One Redis, reconnecting on its own (`engine.kind = "redis"`).
    Single(ConnectionManager),
    /// A Redis Cluster (`engine.kind = "redis_cluster"`).
    Cluster(ClusterConnection),
}

impl Conn {
    /// Whether this is a cluster connection: pipelines must then stay within one slot.
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    /// Runs `cmd` on every primary (one Redis: on it), answering the replies of all;
    /// what `FUNCTION LIST` needs on a cluster, where each primary has its own libraries.
    pub(super) async fn on_every_primary(&mut self, cmd: &Cmd) -> redis::RedisResult<Vec<Value>> {
        match self {
            Conn::Single(c) => Ok(vec![cmd.query_async::<Value>(c).await?]),
            Conn::Cluster(c) => {
                let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                let reply = c.route_command(cmd.clone(), routing).await?;
                // redis-rs answers a map of address -> reply when it does not aggregate.
                Ok(match reply {
                    Value::Map(pairs) => pairs.into_iter().map(|(_, v)| v).collect(),
                    other => vec![other],
                })
            }
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Runs commands for many channels, each paired with its channel's slot, and answers
/// each one's result in the same order: one pipeline on one Redis; on a cluster one
/// pipeline per slot (redis-rs refuses a pipeline spanning slots), all sent at once, each
/// keeping the given order. A pipeline that fails as a whole (no answer in time, a broken
/// connection, a shard down) fails each of its commands with [`CmdError::Batch`]; on a
/// cluster the other slots' commands still run.
pub(super) async fn send_many(
    con: &Conn,
    cmds: &[(u16, Cmd)],
    limit: std::time::Duration,
) -> Vec<Result<Value, CmdError>> {
    if !con.is_cluster() {
        let all: Vec<usize> = (0..cmds.len()).collect();
        let mut out = Vec::with_capacity(cmds.len());
        out.extend(pipeline(con, cmds, &all, limit).await);
        return out;
    }
    let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
    for (i, (slot, _)) in cmds.iter().enumerate() {
        match groups.iter_mut().find(|(s, _)| s == slot) {
            Some((_, members)) => members.push(i),
            None => groups.push((*slot, vec![i])),
        }
    }
    let answers =
        futures_util::future::join_all(groups.iter().map(|(_, m)| pipeline(con, cmds, m, limit)))
            .await;
    let mut out: Vec<Option<Result<Value, CmdError>>> = (0..cmds.len()).map(|_| None).collect();
    for ((_, members), results) in groups.iter().zip(answers) {
        for (&i, r) in members.iter().zip(results) {
            out[i] = Some(r);
        }
    }
    out.into_iter()
        .map(|r| r.unwrap_or(Err(CmdError::Reply("pipeline"))))
        .collect()
}

/// One pipeline of the `members` of `cmds`: an answer each.
async fn pipeline(
    con: &Conn,
    cmds: &[(u16, Cmd)],
    members: &[usize],
    limit: std::time::Duration,
) -> Vec<Result<Value, CmdError>> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for &i in members {
        pipe.add_command(cmds[i].1.clone());
    }
    let mut con = con.clone();
    match query_pipe::<Vec<redis::RedisResult<Value>>, _>(&pipe, &mut con, limit).await {
        Ok(answers) if answers.len() == members.len() => answers
            .into_iter()
            .map(|v| v.map_err(CmdError::Redis))
            .collect(),
        Ok(_) => members
            .iter()
            .map(|_| Err(CmdError::Reply("pipeline")))
            .collect(),
        Err(e) => {
            let why = e.to_string();
            members
                .iter()
                .map(|_| Err(CmdError::Batch(why.clone())))
                .collect()
        }
    }
}

/// The hash slot of a key whose hash tag is `tag` (the text between its first `{` and the
/// next `}`): CRC16-XMODEM of the tag, modulo 16384, as Redis Cluster computes it. The
/// engine's keys of one channel share the channel's tag, so this is the channel's slot.
pub(super) fn slot_of(tag: &str) -> u16 {
    let mut crc: u16 = 0;
    for &b in tag.as_bytes() {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_cluster_keyslot() {
        // `CLUSTER KEYSLOT {a}` and friends, measured on redis 7.0.15.
        assert_eq!(slot_of("a"), 15495);
        assert_eq!(slot_of("b"), 3300);
        assert_eq!(slot_of("c"), 7365);
        // The reference vector of CRC16-XMODEM.
        assert_eq!(slot_of("123456789"), 0x31c3 % SLOTS);
    }
}
