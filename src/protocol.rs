//! The `switchboard.v1.json` wire protocol: client commands parsed from text frames, server
//! replies and pushes serialized to text, and the tables of error codes and close codes.
//! Nothing else in the crate builds or parses frames; the session calls [`parse_command`] and
//! the frame builders, the broker and engines call [`message_frame`] once per publication.
//!
//! Parsing goes through a borrowed envelope of raw JSON pieces so that `data` is never
//! decoded and re-encoded: it is checked to be JSON once and copied into the frame as is.

use std::fmt;
use std::sync::Arc;

use bytestring::ByteString;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::channel::ChannelName;

/// The one subprotocol this server speaks.
pub const SUBPROTOCOL: &str = "switchboard.v1.json";

/// Longest string `id` a command may carry, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// A command's `id`, echoed in its reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Id {
    /// A non-negative integer id.
    Num(u64),
    /// A string id of at most [`MAX_ID_LEN`] bytes.
    Str(String),
}

/// A position in a channel's stream: what a client remembers to recover from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamPosition {
    /// The last offset the client saw.
    pub offset: u64,
    /// The epoch that offset belongs to.
    pub epoch: String,
}

/// Who published, or who joined or left.
///
/// The strings are shared (`Arc<str>`, serialized as plain JSON strings): a session's info
/// is cloned into its broker handle, every publication it makes and every presence entry,
/// and a clone is then a reference count rather than two heap strings per copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// The connection's id.
    pub client: Arc<str>,
    /// The token's `sub`, or empty for an anonymous connection.
    pub user: Arc<str>,
}

/// A publication as held in history and returned by `subscribed` and `history`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Publication {
    /// Its offset within the channel's epoch.
    pub offset: u64,
    /// The published JSON value, as published.
    pub data: Arc<RawValue>,
    /// Who published it, when a client did.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub info: Option<ClientInfo>,
}

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

/// The client-visible error codes (section 2, "Errors").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Not JSON, not an object, unknown `type`, missing or mistyped field.
    BadRequest,
    /// Channel name empty, too long or with a forbidden character.
    InvalidChannel,
    /// The token or namespace does not allow it.
    Forbidden,
    /// `unsubscribe` of a channel the client is not in.
    NotSubscribed,
    /// `subscribe` twice to one channel.
    AlreadySubscribed,
    /// Too many subscriptions.
    LimitExceeded,
    /// Publishing faster than the rate limit.
    RateLimited,
    /// History or presence on a namespace without it.
    NotAvailable,
    /// The engine cannot take the command now.
    Unavailable,
}

impl ErrorCode {
    /// The code as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidChannel => "invalid_channel",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::AlreadySubscribed => "already_subscribed",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NotAvailable => "not_available",
            ErrorCode::Unavailable => "unavailable",
        }
    }

    /// Only malformed commands count toward `limits.max_errors`.
    pub fn counts_as_malformed(self) -> bool {
        matches!(self, ErrorCode::BadRequest | ErrorCode::InvalidChannel)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Why the server closes a connection (section 2, "Close codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1001: the node is draining.
    Shutdown,
    /// 1003: a binary frame.
    UnsupportedData,
    /// 1007: a text frame that is not UTF-8.
    InvalidPayload,
    /// 1009: a message over `limits.max_message_size`.
    MessageTooBig,
    /// 4000: nothing heard within `heartbeat.timeout`.
    HeartbeatTimeout,
    /// 4001: unsent output passed `limits.max_pending_bytes`.
    SlowConsumer,
    /// 4002: the token expired without a `refresh`.
    TokenExpired,
    /// 4003: an operator disconnected the user.
    Disconnected,
    /// 4004: too many malformed commands in a row.
    TooManyErrors,
}

impl CloseCode {
    /// Every close code, for metrics.
    pub const ALL: [CloseCode; 9] = [
        CloseCode::Shutdown,
        CloseCode::UnsupportedData,
        CloseCode::InvalidPayload,
        CloseCode::MessageTooBig,
        CloseCode::HeartbeatTimeout,
        CloseCode::SlowConsumer,
        CloseCode::TokenExpired,
        CloseCode::Disconnected,
        CloseCode::TooManyErrors,
    ];

    /// The numeric WebSocket close code.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Shutdown => 1001,
            CloseCode::UnsupportedData => 1003,
            CloseCode::InvalidPayload => 1007,
            CloseCode::MessageTooBig => 1009,
            CloseCode::HeartbeatTimeout => 4000,
            CloseCode::SlowConsumer => 4001,
            CloseCode::TokenExpired => 4002,
            CloseCode::Disconnected => 4003,
            CloseCode::TooManyErrors => 4004,
        }
    }

    /// The reason text, in the `disconnect` push and the Close frame.
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Shutdown => "shutdown",
            CloseCode::UnsupportedData => "unsupported_data",
            CloseCode::InvalidPayload => "invalid_payload",
            CloseCode::MessageTooBig => "message_too_big",
            CloseCode::HeartbeatTimeout => "heartbeat_timeout",
            CloseCode::SlowConsumer => "slow_consumer",
            CloseCode::TokenExpired => "token_expired",
            CloseCode::Disconnected => "disconnected",
            CloseCode::TooManyErrors => "too_many_errors",
        }
    }

    /// Whether the client should reconnect.
    pub fn reconnect(self) -> bool {
        matches!(
            self,
            CloseCode::Shutdown
                | CloseCode::HeartbeatTimeout
                | CloseCode::SlowConsumer
                | CloseCode::TokenExpired
        )
    }
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
            let data = env
                .data
                .ok_or_else(|| bad(&id, "missing field `data`"))?
                .to_owned();
            Command::Publish { channel, data }
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

/// Replies and pushes, serialized with `"type"` first.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// First frame of every connection.
    Welcome {
        /// This connection's id.
        client: &'a str,
        /// The node's id.
        node: &'a str,
        /// The token's `sub`, or empty.
        user: &'a str,
        /// The Ping interval.
        heartbeat_ms: u64,
        /// Always [`SUBPROTOCOL`].
        protocol: &'a str,
    },
    /// Reply to `subscribe`.
    Subscribed {
        /// Echoed id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Id>,
        /// The channel.
        channel: &'a str,
        /// Latest offset of the channel.
        offset: u64,
        /// Current epoch.
        epoch: &'a str,
        /// Present when the client asked to recover.
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        /// Recovered publications, when the client asked to recover.
        #[serde(skip_serializing_if = "Option::is_none")]
        publications: Option<&'a [Publication]>,
    },
    /// Reply to `unsubscribe`.
    Unsubscribed {
        /// Echoed id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Id>,
        /// The channel.
        channel: &'a str,
    },
    /// Reply to `publish`.
    Published {
        /// Echoed id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Id>,
        /// The channel.
        channel: &'a str,
        /// Offset given to the publication.
        offset: u64,
        /// Its epoch.
        epoch: &'a str,
    },
    /// Reply to `ping`.
    Pong {
        /// Echoed id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Id>,
    },
    /// Reply to `presence`.
    Presence {
        /// Echoed id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Id>,
        /// The channel.
        channel: &'a str,
        /// Who is subscribed.
        clients: &'a [ClientInfo],
    },
    /// Reply to `history`.
    History {
        /// Echoed id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Id>,
        /// The channel.
        channel: &'a str,
        /// Latest offset.
        offset: u64,
        /// Current epoch.
        epoch: &'a str,
        /// Oldest first.
        publications: &'a [Publication],
    },
    /// Reply to `refresh`.
    Refreshed {
        /// Echoed id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Id>,
        /// The new token's `exp` (0 when it has none).
        expires_at: u64,
    },
    /// A refused command.
    Error {
        /// Echoed id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Id>,
        /// Machine-readable code.
        code: ErrorCode,
        /// Human text.
        message: &'a str,
    },
    /// Someone subscribed, on a `join_leave` namespace.
    Join {
        /// The channel.
        channel: &'a str,
        /// Who.
        info: &'a ClientInfo,
    },
    /// Someone left, on a `join_leave` namespace.
    Leave {
        /// The channel.
        channel: &'a str,
        /// Who.
        info: &'a ClientInfo,
    },
    /// The channel's epoch changed under live subscribers.
    Reset {
        /// The channel.
        channel: &'a str,
        /// The new epoch.
        epoch: &'a str,
    },
    /// The server is about to close the connection.
    Disconnect {
        /// The close code that follows.
        code: u16,
        /// Its reason.
        reason: &'a str,
        /// Whether to reconnect.
        reconnect: bool,
    },
}

impl ServerFrame<'_> {
    /// Serializes the frame to a shareable text payload.
    pub fn to_text(&self) -> ByteString {
        // Serializing these types cannot fail: every map key is a string and every value is
        // a plain struct, string, number or already-valid raw JSON.
        match serde_json::to_string(self) {
            Ok(s) => ByteString::from(s),
            Err(e) => {
                log::error!("frame serialization failed: {e}");
                ByteString::from_static(
                    r#"{"type":"error","code":"bad_request","message":"internal serialization error"}"#,
                )
            }
        }
    }
}

/// The `disconnect` push for a close code.
pub fn disconnect_frame(code: CloseCode) -> ByteString {
    ServerFrame::Disconnect {
        code: code.code(),
        reason: code.reason(),
        reconnect: code.reconnect(),
    }
    .to_text()
}

/// An error reply.
pub fn error_frame(id: Option<&Id>, code: ErrorCode, message: &str) -> ByteString {
    ServerFrame::Error { id, code, message }.to_text()
}

/// Appends `s` as a JSON string; strings with nothing to escape (ids, most user names) are
/// copied as they are.
fn push_json_str(out: &mut String, s: &str) {
    if s.bytes()
        .all(|b| (0x20..0x80).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        match serde_json::to_string(s) {
            Ok(escaped) => out.push_str(&escaped),
            Err(_) => out.push_str("\"\""),
        }
    }
}

/// The `message` push for a publication: built once per publication and shared by every
/// subscriber on the node.
///
/// Written by hand rather than through serde: it runs for every publication, a validated
/// channel name needs no escaping and `data` is already JSON, and serde_json's
/// per-character string escaping was the largest single cost in a callgrind profile of the
/// many-channels benchmark.
pub fn message_frame(channel: &str, publication: &Publication) -> ByteString {
    let data = publication.data.get();
    let info_len = publication
        .info
        .as_ref()
        .map_or(0, |i| 32 + i.client.len() + i.user.len());
    let mut out = String::with_capacity(48 + channel.len() + data.len() + info_len);
    out.push_str(r#"{"type":"message","channel":"#);
    if channel.bytes().all(crate::channel::is_channel_byte) {
        out.push('"');
        out.push_str(channel);
        out.push('"');
    } else {
        push_json_str(&mut out, channel);
    }
    out.push_str(r#","offset":"#);
    out.push_str(&publication.offset.to_string());
    out.push_str(r#","data":"#);
    out.push_str(data);
    if let Some(info) = &publication.info {
        out.push_str(r#","info":{"client":"#);
        push_json_str(&mut out, &info.client);
        out.push_str(r#","user":"#);
        push_json_str(&mut out, &info.user);
        out.push('}');
    }
    out.push('}');
    ByteString::from(out)
}

/// A server text frame encoded for the wire (RFC 6455 §5.2: FIN + text opcode, payload
/// length, no mask, the payload), built once per frame and shared by every session it goes
/// to. Fan-out hands these to the sessions' outboxes, which the response body writes out as
/// they are: no per-subscriber framing.
#[derive(Clone, Debug)]
pub struct WsFrame(bytes::Bytes);

impl WsFrame {
    /// Frames `text` as one final text frame.
    pub fn text(text: &str) -> WsFrame {
        let payload = text.as_bytes();
        let n = payload.len();
        let mut out = bytes::BytesMut::with_capacity(n + 10);
        out.extend_from_slice(&[0x81]);
        if n < 126 {
            out.extend_from_slice(&[n as u8]);
        } else if n <= u16::MAX as usize {
            out.extend_from_slice(&[126]);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.extend_from_slice(&[127]);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
        out.extend_from_slice(payload);
        WsFrame(out.freeze())
    }

    /// The encoded bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// Length on the wire, header included: what the frame counts in a session's pending
    /// bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true: a frame has at least its two header bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our framing is byte for byte what actix-http's own encoder writes, at every length
    /// boundary (7-bit, 16-bit and 64-bit lengths).
    #[test]
    fn ws_frame_matches_actix_encoder() {
        for n in [0usize, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let text = "x".repeat(n);
            let mut expected = bytes::BytesMut::new();
            actix_http::ws::Parser::write_message(
                &mut expected,
                text.as_bytes(),
                actix_http::ws::OpCode::Text,
                true,
                false,
            );
            let ours = WsFrame::text(&text);
            assert_eq!(ours.bytes(), &expected[..], "length {n}");
            assert_eq!(ours.len(), expected.len());
        }
    }
    use serde_json::json;

    fn text(f: ServerFrame) -> serde_json::Value {
        serde_json::from_str(&f.to_text()).expect("valid json")
    }

    fn raw(s: &str) -> Arc<RawValue> {
        Arc::from(RawValue::from_string(s.to_string()).expect("raw"))
    }

    #[test]
    fn golden_commands_parse() {
        let r = parse_command(r#"{"type":"subscribe","id":1,"channel":"chat:lobby","since":{"offset":5,"epoch":"e1"}}"#)
            .expect("subscribe");
        assert_eq!(r.id, Some(Id::Num(1)));
        match r.command {
            Command::Subscribe { channel, since } => {
                assert_eq!(channel.as_str(), "chat:lobby");
                assert_eq!(
                    since,
                    Some(StreamPosition {
                        offset: 5,
                        epoch: "e1".into()
                    })
                );
            }
            other => panic!("{other:?}"),
        }
        let r = parse_command(r#"{"type":"publish","id":"a","channel":"c","data":{"x":[1,2]}}"#)
            .expect("publish");
        assert_eq!(r.id, Some(Id::Str("a".into())));
        match r.command {
            Command::Publish { data, .. } => assert_eq!(data.get(), r#"{"x":[1,2]}"#),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_command(r#"{"type":"ping"}"#).unwrap().command,
            Command::Ping
        ));
        assert!(matches!(
            parse_command(r#"{"type":"history","channel":"c","limit":3}"#)
                .unwrap()
                .command,
            Command::History {
                limit: Some(3),
                since: None,
                ..
            }
        ));
        assert!(matches!(
            parse_command(r#"{"type":"refresh","token":"t"}"#)
                .unwrap()
                .command,
            Command::Refresh { .. }
        ));
        assert!(matches!(
            parse_command(r#"{"type":"presence","channel":"c"}"#)
                .unwrap()
                .command,
            Command::Presence { .. }
        ));
        assert!(matches!(
            parse_command(r#"{"type":"unsubscribe","channel":"c"}"#)
                .unwrap()
                .command,
            Command::Unsubscribe { .. }
        ));
        // Escaped characters in a channel name are decoded before validation.
        assert!(matches!(
            parse_command(r#"{"type":"unsubscribe","channel":"\u0063"}"#).unwrap().command,
            Command::Unsubscribe { channel } if channel.as_str() == "c"
        ));
    }

    #[test]
    fn malformed_commands_get_the_right_code_and_keep_the_id() {
        let cases = [
            ("not json", ErrorCode::BadRequest, None),
            ("[1,2]", ErrorCode::BadRequest, None),
            ("\"str\"", ErrorCode::BadRequest, None),
            ("{}", ErrorCode::BadRequest, None),
            (
                r#"{"type":"fly","id":7}"#,
                ErrorCode::BadRequest,
                Some(Id::Num(7)),
            ),
            (r#"{"type":5}"#, ErrorCode::BadRequest, None),
            (
                r#"{"type":"subscribe","id":2}"#,
                ErrorCode::BadRequest,
                Some(Id::Num(2)),
            ),
            (
                r#"{"type":"subscribe","id":2,"channel":7}"#,
                ErrorCode::BadRequest,
                Some(Id::Num(2)),
            ),
            (
                r#"{"type":"subscribe","id":2,"channel":""}"#,
                ErrorCode::InvalidChannel,
                Some(Id::Num(2)),
            ),
            (
                r#"{"type":"subscribe","channel":"a b"}"#,
                ErrorCode::InvalidChannel,
                None,
            ),
            (
                r#"{"type":"publish","channel":"a"}"#,
                ErrorCode::BadRequest,
                None,
            ),
            (
                r#"{"type":"subscribe","channel":"a","since":{"offset":-1,"epoch":"x"}}"#,
                ErrorCode::BadRequest,
                None,
            ),
            (
                r#"{"type":"history","channel":"a","limit":"x"}"#,
                ErrorCode::BadRequest,
                None,
            ),
            (r#"{"type":"ping","id":-1}"#, ErrorCode::BadRequest, None),
            (r#"{"type":"ping","id":1.5}"#, ErrorCode::BadRequest, None),
        ];
        for (input, code, id) in cases {
            let e = parse_command(input).expect_err(input);
            assert_eq!(e.code, code, "{input}");
            assert_eq!(e.id, id, "{input}");
        }
        let long_id = format!(r#"{{"type":"ping","id":"{}"}}"#, "x".repeat(65));
        assert_eq!(
            parse_command(&long_id).unwrap_err().code,
            ErrorCode::BadRequest
        );
        let ok_id = format!(r#"{{"type":"ping","id":"{}"}}"#, "x".repeat(64));
        assert!(parse_command(&ok_id).is_ok());
    }

    #[test]
    fn golden_frames_serialize() {
        assert_eq!(
            text(ServerFrame::Welcome {
                client: "c1",
                node: "n1",
                user: "",
                heartbeat_ms: 10000,
                protocol: SUBPROTOCOL
            }),
            json!({"type":"welcome","client":"c1","node":"n1","user":"","heartbeat_ms":10000,"protocol":"switchboard.v1.json"})
        );
        let pubs = vec![Publication {
            offset: 3,
            data: raw("{\"a\":1}"),
            info: None,
        }];
        assert_eq!(
            text(ServerFrame::Subscribed {
                id: Some(&Id::Num(1)),
                channel: "c",
                offset: 3,
                epoch: "e",
                recovered: Some(true),
                publications: Some(&pubs)
            }),
            json!({"type":"subscribed","id":1,"channel":"c","offset":3,"epoch":"e","recovered":true,"publications":[{"offset":3,"data":{"a":1}}]})
        );
        assert_eq!(
            text(ServerFrame::Subscribed {
                id: None,
                channel: "c",
                offset: 0,
                epoch: "e",
                recovered: None,
                publications: None
            }),
            json!({"type":"subscribed","channel":"c","offset":0,"epoch":"e"})
        );
        assert_eq!(
            text(ServerFrame::Error {
                id: Some(&Id::Str("x".into())),
                code: ErrorCode::RateLimited,
                message: "slow down"
            }),
            json!({"type":"error","id":"x","code":"rate_limited","message":"slow down"})
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&disconnect_frame(CloseCode::SlowConsumer))
                .unwrap(),
            json!({"type":"disconnect","code":4001,"reason":"slow_consumer","reconnect":true})
        );
        let info = ClientInfo {
            client: "c".into(),
            user: "u".into(),
        };
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&message_frame(
                "ch",
                &Publication {
                    offset: 9,
                    data: raw("[1]"),
                    info: Some(info.clone())
                }
            ))
            .unwrap(),
            json!({"type":"message","channel":"ch","offset":9,"data":[1],"info":{"client":"c","user":"u"}})
        );
        assert_eq!(
            text(ServerFrame::Join {
                channel: "ch",
                info: &info
            }),
            json!({"type":"join","channel":"ch","info":{"client":"c","user":"u"}})
        );
        assert_eq!(
            text(ServerFrame::Reset {
                channel: "ch",
                epoch: "e2"
            }),
            json!({"type":"reset","channel":"ch","epoch":"e2"})
        );
        assert_eq!(text(ServerFrame::Pong { id: None }), json!({"type":"pong"}));
    }

    #[test]
    fn message_frame_matches_serde_for_awkward_strings() {
        for user in [
            "",
            "plain",
            "quo\"te",
            "back\\slash",
            "tab\there",
            "é ü 字",
            "\u{7f}\u{1}",
        ] {
            let info = ClientInfo {
                client: "c-1".into(),
                user: user.into(),
            };
            let p = Publication {
                offset: 12,
                data: raw(r#"{"k":"v"}"#),
                info: Some(info.clone()),
            };
            let got: serde_json::Value =
                serde_json::from_str(&message_frame("a:b", &p)).expect("valid JSON");
            assert_eq!(
                got,
                json!({"type":"message","channel":"a:b","offset":12,"data":{"k":"v"},"info":{"client":"c-1","user":user}})
            );
        }
        let p = Publication {
            offset: 1,
            data: raw("null"),
            info: None,
        };
        assert_eq!(
            &*message_frame("x", &p),
            r#"{"type":"message","channel":"x","offset":1,"data":null}"#
        );
    }

    #[test]
    fn publications_round_trip() {
        let p: Publication =
            serde_json::from_str(r#"{"offset":4,"data":"hi","info":{"client":"a","user":""}}"#)
                .unwrap();
        assert_eq!(p.offset, 4);
        assert_eq!(p.data.get(), "\"hi\"");
        let back = serde_json::to_string(&p).unwrap();
        assert_eq!(
            back,
            r#"{"offset":4,"data":"hi","info":{"client":"a","user":""}}"#
        );
    }

    #[test]
    fn close_codes_match_the_table() {
        let table: Vec<(u16, &str, bool)> = CloseCode::ALL
            .iter()
            .map(|c| (c.code(), c.reason(), c.reconnect()))
            .collect();
        assert_eq!(
            table,
            vec![
                (1001, "shutdown", true),
                (1003, "unsupported_data", false),
                (1007, "invalid_payload", false),
                (1009, "message_too_big", false),
                (4000, "heartbeat_timeout", true),
                (4001, "slow_consumer", true),
                (4002, "token_expired", true),
                (4003, "disconnected", false),
                (4004, "too_many_errors", false),
            ]
        );
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics_on_any_text(s in "\\PC*") {
            let _ = parse_command(&s);
        }

        #[test]
        fn parser_never_panics_on_json_like_text(
            t in proptest::sample::select(vec!["subscribe","unsubscribe","publish","ping","presence","history","refresh","x"]),
            ch in "[ -~]{0,300}",
            extra in "[{}\\[\\]\":,0-9a-z ]{0,40}",
        ) {
            let frame = format!(r#"{{"type":"{t}","channel":{ch:?},"data":{extra},"since":{extra}}}"#);
            let _ = parse_command(&frame);
            let frame = format!(r#"{{"type":"{t}","channel":{ch:?},"id":{extra}}}"#);
            let _ = parse_command(&frame);
        }
    }
}
