//! Server frames: replies and pushes serialized to text once, as shareable [`ByteString`]s.
//! The `message` push, built for every publication, is written by hand ([`message_frame`]);
//! the rest go through serde.

use bytestring::ByteString;
use serde::Serialize;

use super::{ClientInfo, CloseCode, ErrorCode, Id, Publication};

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
        /// Always [`SUBPROTOCOL`](super::SUBPROTOCOL).
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
