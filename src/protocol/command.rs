//! Client commands: one text frame parsed into a [`Request`], or the [`CommandError`] to
//! answer with (`bad_request` or `invalid_channel`, echoing the id when it was readable).

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{check_data, compact_data, ErrorCode, Id, IdempotencyKey, StreamPosition, MAX_ID_LEN};
use crate::channel::ChannelName;

/// A client command with its id.
#[derive(Debug, Clone)]
pub struct Request {
    /// The id to echo, when the command had one.
    pub id: Option<Id>,
    /// What the client asks for.
    pub command: Command,
}

/// The commands of section 2 of the contract.
#[derive(Debug, Clone)]
pub enum Command {
    /// Join a channel, optionally recovering from a position.
    Subscribe {
        /// The channel.
        channel: ChannelName,
        /// Recover publications after this position.
        since: Option<StreamPosition>,
    },
    /// Leave a channel.
    Unsubscribe {
        /// The channel.
        channel: ChannelName,
    },
    /// Publish a JSON value.
    Publish {
        /// The channel.
        channel: ChannelName,
        /// The value, unparsed.
        data: Box<RawValue>,
        /// A repeat of this key on this channel within the namespace's
        /// `idempotency_window` publishes nothing and gets the first result.
        idempotency_key: Option<IdempotencyKey>,
    },
    /// Application-level ping.
    Ping,
    /// List who is subscribed.
    Presence {
        /// The channel.
        channel: ChannelName,
    },
    /// Read history.
    History {
        /// The channel.
        channel: ChannelName,
        /// Return publications after this position.
        since: Option<StreamPosition>,
        /// At most this many.
        limit: Option<usize>,
    },
    /// Replace the connection's token.
    Refresh {
        /// The new JWT.
        token: String,
    },
}

/// A command that could not be accepted, with the id to echo when it was readable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    /// The id, when the frame had a valid one.
    pub id: Option<Id>,
    /// `bad_request` or `invalid_channel`.
    pub code: ErrorCode,
    /// Human text for the client.
    pub message: String,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    channel: Option<&'a RawValue>,
    /// Present-but-null must stay distinguishable from absent: `null` is valid data.
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    since: Option<&'a RawValue>,
    #[serde(borrow, default)]
    limit: Option<&'a RawValue>,
    #[serde(borrow, default)]
    token: Option<&'a RawValue>,
    #[serde(borrow, default)]
    idempotency_key: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

fn bad(id: &Option<Id>, message: impl Into<String>) -> CommandError {
    CommandError {
        id: id.clone(),
        code: ErrorCode::BadRequest,
        message: message.into(),
    }
}

fn parse_id(raw: Option<&RawValue>) -> Result<Option<Id>, String> {
    let Some(raw) = raw else { return Ok(None) };
    match serde_json::from_str::<serde_json::Value>(raw.get()) {
        Ok(serde_json::Value::Null) => Ok(None),
        Ok(serde_json::Value::Number(n)) => n
            .as_u64()
            .map(|n| Some(Id::Num(n)))
            .ok_or_else(|| "`id` must be a non-negative integer or a string".to_string()),
        Ok(serde_json::Value::String(s)) if s.len() <= MAX_ID_LEN => Ok(Some(Id::Str(s))),
        Ok(serde_json::Value::String(_)) => Err("`id` string is longer than 64 bytes".into()),
        _ => Err("`id` must be a non-negative integer or a string".into()),
    }
}

fn field<'a, T: Deserialize<'a>>(
    id: &Option<Id>,
    raw: Option<&'a RawValue>,
    name: &str,
    what: &str,
) -> Result<T, CommandError> {
    let raw = raw.ok_or_else(|| bad(id, format!("missing field `{name}`")))?;
    serde_json::from_str(raw.get()).map_err(|_| bad(id, format!("`{name}` must be {what}")))
}

fn optional<'a, T: Deserialize<'a>>(
    id: &Option<Id>,
    raw: Option<&'a RawValue>,
    name: &str,
    what: &str,
) -> Result<Option<T>, CommandError> {
    match raw {
        None => Ok(None),
        Some(r) if r.get() == "null" => Ok(None),
        Some(_) => field(id, raw, name, what).map(Some),
    }
}

fn channel(id: &Option<Id>, raw: Option<&RawValue>) -> Result<ChannelName, CommandError> {
    let name: String = field(id, raw, "channel", "a string")?;
    ChannelName::parse(&name).map_err(|e| CommandError {
        id: id.clone(),
        code: ErrorCode::InvalidChannel,
        message: e.to_string(),
    })
}

/// Parses one text frame into a command, or the error to answer with.
pub fn parse_command(text: &str) -> Result<Request, CommandError> {
    let trimmed = text.trim_start();
    if !trimmed.starts_with('{') {
        let message = if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
            "a command must be a JSON object"
        } else {
            "a command must be JSON"
        };
        return Err(bad(&None, message));
    }
    let env: Envelope = serde_json::from_str(text).map_err(|e| {
        bad(
            &None,
            if e.is_syntax() || e.is_eof() {
                format!("a command must be JSON: {e}")
            } else {
                format!("malformed command: {e}")
            },
        )
    })?;
    let id = parse_id(env.id).map_err(|m| bad(&None, m))?;
    let kind: String = field(&id, env.kind, "type", "a string")?;
    let command = match kind.as_str() {
        "subscribe" => Command::Subscribe {
            channel: channel(&id, env.channel)?,
            since: optional(&id, env.since, "since", "an object {offset, epoch}")?,
        },
        "unsubscribe" => Command::Unsubscribe {
            channel: channel(&id, env.channel)?,
        },
        "publish" => {
            let channel = channel(&id, env.channel)?;
            let data = env.data.ok_or_else(|| bad(&id, "missing field `data`"))?;
            check_data(data.get()).map_err(|m| bad(&id, m))?;
            let idempotency_key =
                IdempotencyKey::from_json(env.idempotency_key).map_err(|m| bad(&id, m))?;
            let data = compact_data(data);
            Command::Publish {
                channel,
                data,
                idempotency_key,
            }
        }
        "ping" => Command::Ping,
        "presence" => Command::Presence {
            channel: channel(&id, env.channel)?,
        },
        "history" => Command::History {
            channel: channel(&id, env.channel)?,
            since: optional(&id, env.since, "since", "an object {offset, epoch}")?,
            limit: optional(&id, env.limit, "limit", "a non-negative integer")?,
        },
        "refresh" => Command::Refresh {
            token: field(&id, env.token, "token", "a string")?,
        },
        other => {
            return Err(bad(
                &id,
                format!("unknown command type {:?}", truncate(other, 64)),
            ))
        }
    };
    Ok(Request { id, command })
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
