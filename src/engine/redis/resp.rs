//! Talking to Redis at the command level: running one command or pipeline under a time
//! limit ([`query`], [`query_pipe`]), what such a command fails with ([`CmdError`]), the
//! `FCALL` builder, and reading RESP2/RESP3 replies into plain values ([`value_u64`],
//! [`value_string`], [`value_array`], [`parse_stream_reply`]). Used by every other file of
//! the engine; knows no key names and no engine state.

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{ErrorKind, FromRedisValue, RedisError, ServerErrorKind, Value};

use crate::engine::EngineError;

/// A command that failed: Redis's own error, no answer in time, or an answer of a shape
/// the engine does not know.
#[derive(Debug, thiserror::Error)]
pub(super) enum CmdError {
    /// Redis refused the command or the connection failed.
    #[error(transparent)]
    Redis(#[from] RedisError),
    /// No answer within the command timeout.
    #[error("timed out")]
    Timeout,
    /// An answer that does not parse; the text names the command.
    #[error("unexpected reply to {0}")]
    Reply(&'static str),
    /// The pipeline the command was sent in failed as a whole (the text says why).
    #[error("{0}")]
    Batch(String),
}

impl CmdError {
    /// What a client is told: the engine is unavailable.
    pub(super) fn into_engine(self) -> EngineError {
        match self {
            CmdError::Redis(e) => EngineError::Unavailable(format!("redis: {e}")),
            CmdError::Timeout => EngineError::Unavailable("redis did not answer in time".into()),
            CmdError::Reply(what) => {
                EngineError::Unavailable(format!("unexpected reply to {what}"))
            }
            CmdError::Batch(why) => EngineError::Unavailable(format!("redis: {why}")),
        }
    }

    /// Redis does not know the function called: its library was lost (Redis came back
    /// empty, or FUNCTION FLUSH), and applying the migrations again repairs it.
    pub(super) fn function_missing(&self) -> bool {
        matches!(self, CmdError::Redis(e) if is_function_not_found(e))
    }
}

/// Whether Redis answered `ERR Function not found` (FCALL of a function no library
/// defines). Redis gives this failure no code of its own: it is the generic `ERR`
/// (`ServerErrorKind::ResponseError`), told apart only by its detail text, which is fixed
/// in Redis's `functions.c`. The text comparison is kept to this one function, on the
/// detail only, not on the whole message.
fn is_function_not_found(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::ResponseError)
        && e.detail() == Some("Function not found")
}

/// Runs one command against a connection, bounded by `limit`.
pub(super) async fn query<C: ConnectionLike + Send>(
    cmd: &redis::Cmd,
    con: &mut C,
    limit: Duration,
) -> Result<Value, CmdError> {
    match tokio::time::timeout(limit, cmd.query_async::<Value>(con)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(CmdError::Redis(e)),
        Err(_) => Err(CmdError::Timeout),
    }
}

/// Runs a pipeline against a connection, bounded by `limit`.
pub(super) async fn query_pipe<T: FromRedisValue, C: ConnectionLike + Send>(
    pipe: &redis::Pipeline,
    con: &mut C,
    limit: Duration,
) -> Result<T, CmdError> {
    match tokio::time::timeout(limit, pipe.query_async::<T>(con)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(CmdError::Redis(e)),
        Err(_) => Err(CmdError::Timeout),
    }
}

/// `FCALL name numkeys keys...`; the caller adds the arguments.
pub(super) fn fcall(name: &str, keys: &[&str]) -> redis::Cmd {
    let mut c = redis::cmd("FCALL");
    c.arg(name).arg(keys.len());
    for k in keys {
        c.arg(*k);
    }
    c
}

/// A duration in whole milliseconds, as Redis takes TTLs.
pub(super) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(super) fn value_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.trim().parse().ok(),
        Value::SimpleString(s) => s.trim().parse().ok(),
        _ => None,
    }
}

pub(super) fn value_string(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        Value::Int(i) => Some(i.to_string()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

/// The items of an array or set, or a map's keys and values in turn (RESP3 answers maps
/// where RESP2 answered flat arrays); empty for anything else.
pub(super) fn value_array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) | Value::Set(items) => items,
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

/// A channel's latest offset, its epoch (empty when unknown) and `(offset, payload)` entries.
pub(super) type StreamReply = (u64, String, Vec<(u64, String)>);

/// Parses `{offset, epoch, id, payload, ...}` as returned by the history and range
/// functions into the position and `(offset, payload)` entries.
pub(super) fn parse_stream_reply(v: Value) -> Option<StreamReply> {
    let mut items = value_array(v).into_iter();
    let offset = value_u64(&items.next()?)?;
    let epoch = value_string(items.next()?)?;
    let mut entries = Vec::new();
    while let (Some(id), Some(payload)) = (items.next(), items.next()) {
        let id = value_string(id)?;
        let offset = id.split('-').next()?.parse().ok()?;
        entries.push((offset, value_string(payload)?));
    }
    Some((offset, epoch, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error redis-rs makes of a raw RESP error reply, as it would from the wire.
    fn server_error(resp: &[u8]) -> RedisError {
        match redis::parse_redis_value(resp)
            .expect("parses")
            .extract_error()
        {
            Err(e) => e,
            Ok(v) => panic!("not an error: {v:?}"),
        }
    }

    #[test]
    fn function_not_found_is_told_by_kind_and_detail() {
        let missing = CmdError::Redis(server_error(b"-ERR Function not found\r\n"));
        assert!(missing.function_missing());
        // Same code, other detail; same detail, other code; no server error at all.
        let other = CmdError::Redis(server_error(b"-ERR unknown command 'FCALL'\r\n"));
        assert!(!other.function_missing());
        let noscript = CmdError::Redis(server_error(b"-NOSCRIPT Function not found\r\n"));
        assert!(!noscript.function_missing());
        assert!(!CmdError::Timeout.function_missing());
        let io = RedisError::from(std::io::Error::other("Function not found"));
        assert!(!CmdError::Redis(io).function_missing());
    }

    #[test]
    fn stream_reply_parses() {
        let v = Value::Array(vec![
            Value::Int(7),
            Value::BulkString(b"e1".to_vec()),
            Value::BulkString(b"6-0".to_vec()),
            Value::BulkString(br#"{"data":1}"#.to_vec()),
            Value::BulkString(b"7-0".to_vec()),
            Value::BulkString(br#"{"data":2,"info":{"client":"c","user":"u"}}"#.to_vec()),
        ]);
        let (offset, epoch, entries) = parse_stream_reply(v).expect("parses");
        assert_eq!((offset, epoch.as_str()), (7, "e1"));
        assert_eq!(
            entries.iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![6, 7],
            "offsets come from the stream ids"
        );
    }

    #[test]
    fn maps_read_as_flat_pairs() {
        let s = |t: &str| Value::BulkString(t.as_bytes().to_vec());
        let v = Value::Map(vec![(s("a"), Value::Int(1))]);
        let items = value_array(v);
        assert_eq!(items.len(), 2);
        assert_eq!(value_string(items[0].clone()).as_deref(), Some("a"));
        assert_eq!(value_u64(&items[1]), Some(1));
    }
}
