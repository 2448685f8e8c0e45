//! The server's frames as `sub` and `pub` read them, the commands they send, and the lines
//! they print. The server's own types in [`crate::protocol`] only serialize; these only
//! parse, keep `data` and `info` as the raw JSON the server sent (never re-encoded, so a
//! number is printed as it was published), and ignore fields and frame types they do not
//! know (additions within v1 must not break an old client). A frame that is not JSON, or
//! lacks a field its type needs, is an error: the connection is not a switchboard one.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use super::endpoint::Position;

/// One publication as `subscribed` (recovery) and `message` carry it.
#[derive(Debug, Deserialize)]
pub struct Publication {
    /// Its offset in the channel's epoch.
    pub offset: u64,
    /// The published JSON, as sent.
    #[serde(deserialize_with = "raw")]
    pub data: Box<RawValue>,
    /// Who published it, when known.
    #[serde(default)]
    pub info: Option<Box<RawValue>>,
}

/// A server frame; what the clients do not act on is [`Frame::Other`].
#[derive(Debug)]
pub enum Frame {
    /// The first frame of a connection.
    Welcome {
        /// The interval of the server's Pings, if it says.
        heartbeat_ms: Option<u64>,
    },
    /// Reply to `subscribe`.
    Subscribed {
        /// The echoed id.
        id: Option<Value>,
        /// The channel.
        channel: String,
        /// Where the channel is now.
        at: Position,
        /// `Some` when the subscribe asked to recover.
        recovered: Option<bool>,
        /// The recovered publications, in order.
        publications: Vec<Publication>,
    },
    /// A live publication.
    Message {
        /// The channel.
        channel: String,
        /// The publication.
        publication: Publication,
    },
    /// The channel's epoch changed under the subscription.
    Reset {
        /// The channel.
        channel: String,
        /// The new epoch.
        epoch: String,
    },
    /// Reply to `publish`.
    Published {
        /// The echoed id.
        id: Option<Value>,
        /// Where the publication went.
        at: Position,
    },
    /// A command was refused.
    Error {
        /// The echoed id, if the command had one.
        id: Option<Value>,
        /// The error code (`forbidden`, `rate_limited`, ...).
        code: String,
        /// The server's words.
        message: String,
    },
    /// The server is about to close the connection.
    Disconnect(Disconnect),
    /// Reply to `ping`.
    Pong,
    /// Anything else (`join`, `leave`, replies to commands these clients do not send, types
    /// added later): its type.
    Other(String),
}

/// A `disconnect` push: the close code that follows, and whether to come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// The close code.
    pub code: u16,
    /// Its reason.
    pub reason: String,
    /// Whether the server says to reconnect.
    pub reconnect: bool,
}

/// Every field any frame has; which are required depends on `type`. A flat struct rather
/// than a tagged enum, since serde buffers a tagged enum's fields and cannot then hand
/// out `data` as raw JSON.
#[derive(Deserialize)]
struct Fields {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<Value>,
    channel: Option<String>,
    offset: Option<u64>,
    epoch: Option<String>,
    #[serde(default, deserialize_with = "some_raw")]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    info: Option<Box<RawValue>>,
    recovered: Option<bool>,
    publications: Option<Vec<Publication>>,
    code: Option<Value>,
    message: Option<String>,
    reason: Option<String>,
    reconnect: Option<bool>,
    heartbeat_ms: Option<u64>,
}

/// `data` as raw JSON, `null` included (which `Option` would turn into `None`).
fn raw<'de, D: Deserializer<'de>>(d: D) -> Result<Box<RawValue>, D::Error> {
    Box::<RawValue>::deserialize(d)
}

fn some_raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    raw(d).map(Some)
}

/// Parses one WebSocket text message: one frame, or several separated by `\n` (a
/// connection opened with `?batch=true`).
pub fn parse(text: &str) -> Result<Vec<Frame>, String> {
    text.split('\n')
        .filter(|line| !line.trim().is_empty())
        .map(parse_one)
        .collect()
}

fn parse_one(text: &str) -> Result<Frame, String> {
    let f: Fields = serde_json::from_str(text)
        .map_err(|e| format!("not a switchboard frame ({e}): {}", excerpt(text)))?;
    let missing = |field: &str| {
        format!(
            "a {:?} frame without `{field}`: {}",
            f.kind.as_str(),
            excerpt(text)
        )
    };
    let position = |f: &Fields| -> Result<Position, String> {
        Ok(Position {
            offset: f.offset.ok_or_else(|| missing("offset"))?,
            epoch: f.epoch.clone().ok_or_else(|| missing("epoch"))?,
        })
    };
    let channel = |f: &Fields| f.channel.clone().ok_or_else(|| missing("channel"));
    Ok(match f.kind.as_str() {
        "welcome" => Frame::Welcome {
            heartbeat_ms: f.heartbeat_ms,
        },
        "subscribed" => Frame::Subscribed {
            at: position(&f)?,
            channel: channel(&f)?,
            id: f.id,
            recovered: f.recovered,
            publications: f.publications.unwrap_or_default(),
        },
        "message" => Frame::Message {
            channel: channel(&f)?,
            publication: Publication {
                offset: f.offset.ok_or_else(|| missing("offset"))?,
                data: f.data.ok_or_else(|| missing("data"))?,
                info: f.info,
            },
        },
        "reset" => Frame::Reset {
            channel: channel(&f)?,
            epoch: f.epoch.ok_or_else(|| missing("epoch"))?,
        },
        "published" => Frame::Published {
            at: position(&f)?,
            id: f.id,
        },
        "error" => Frame::Error {
            code: match f.code {
                Some(Value::String(code)) => code,
                _ => return Err(missing("code")),
            },
            message: f.message.unwrap_or_default(),
            id: f.id,
        },
        "disconnect" => Frame::Disconnect(Disconnect {
            code: f
                .code
                .as_ref()
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok())
                .ok_or_else(|| missing("code"))?,
            reason: f.reason.unwrap_or_default(),
            reconnect: f.reconnect.unwrap_or(false),
        }),
        "pong" => Frame::Pong,
        _ => Frame::Other(f.kind),
    })
}

/// The start of a frame, for an error message (a frame may be large).
pub fn excerpt(text: &str) -> String {
    const MAX: usize = 120;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// The line `sub` prints for a publication: the `message` frame, fields in the order the
/// server writes them.
pub fn message_line(channel: &str, p: &Publication) -> String {
    #[derive(Serialize)]
    struct Line<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        channel: &'a str,
        offset: u64,
        data: &'a RawValue,
        #[serde(skip_serializing_if = "Option::is_none")]
        info: Option<&'a RawValue>,
    }
    let line = Line {
        kind: "message",
        channel,
        offset: p.offset,
        data: &p.data,
        info: p.info.as_deref(),
    };
    // Serializing strings, numbers and already valid JSON cannot fail.
    serde_json::to_string(&line).unwrap_or_default()
}

/// The line `pub` prints for a publication.
pub fn published_line(at: &Position) -> String {
    #[derive(Serialize)]
    struct Line<'a> {
        offset: u64,
        epoch: &'a str,
    }
    let line = Line {
        offset: at.offset,
        epoch: &at.epoch,
    };
    serde_json::to_string(&line).unwrap_or_default()
}

/// A `subscribe` command, recovering from `since` when given.
pub fn subscribe(id: u64, channel: &str, since: Option<&Position>) -> String {
    let mut cmd = serde_json::json!({"type": "subscribe", "id": id, "channel": channel});
    if let Some(p) = since {
        cmd["since"] = serde_json::json!({"offset": p.offset, "epoch": p.epoch});
    }
    cmd.to_string()
}

/// A `publish` command with `data` as given.
pub fn publish(id: u64, channel: &str, data: &RawValue) -> String {
    #[derive(Serialize)]
    struct Publish<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        id: u64,
        channel: &'a str,
        data: &'a RawValue,
    }
    let cmd = Publish {
        kind: "publish",
        id,
        channel,
        data,
    };
    serde_json::to_string(&cmd).unwrap_or_default()
}

/// The app-level `ping`.
pub const PING: &str = r#"{"type":"ping"}"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_lines_keep_data_as_published() {
        let text = r#"{"type":"message","channel":"c","offset":3,"data":{"n":1.50,"big":123456789012345678901234567890},"info":{"client":"x","user":""}}"#;
        let null = r#"{"type":"message","channel":"c","offset":4,"data":null}"#;
        for text in [text, null] {
            let frames = parse(text).unwrap();
            let [Frame::Message {
                channel,
                publication,
            }] = &frames[..]
            else {
                panic!("not a message: {frames:?}")
            };
            assert_eq!(message_line(channel, publication), text);
        }
    }

    #[test]
    fn batches_unknown_types_and_garbage() {
        let frames = parse("{\"type\":\"pong\"}\n{\"type\":\"join\",\"channel\":\"c\"}\n").unwrap();
        assert!(matches!(frames[..], [Frame::Pong, Frame::Other(_)]));
        let d =
            parse(r#"{"type":"disconnect","code":4003,"reason":"disconnected","reconnect":false}"#)
                .unwrap();
        assert!(
            matches!(&d[..], [Frame::Disconnect(d)] if d.code == 4003 && !d.reconnect),
            "{d:?}"
        );
        for bad in [
            "garbage",
            "[1]",
            r#"{"no":"type"}"#,
            r#"{"type":"message","channel":"c","offset":1}"#,
            r#"{"type":"subscribed","channel":"c","offset":"1","epoch":"e"}"#,
            r#"{"type":"error","code":7}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn commands() {
        let since = Position {
            offset: 5,
            epoch: "e".into(),
        };
        let cmd: Value = serde_json::from_str(&subscribe(1, "c", Some(&since))).unwrap();
        assert_eq!(
            cmd,
            serde_json::json!({"type":"subscribe","id":1,"channel":"c","since":{"offset":5,"epoch":"e"}})
        );
        let data = RawValue::from_string("1.0e400".into()).unwrap();
        assert_eq!(
            publish(2, "c", &data),
            r#"{"type":"publish","id":2,"channel":"c","data":1.0e400}"#
        );
    }
}
