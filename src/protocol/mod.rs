//! The `switchboard.v1.json` wire protocol: client commands parsed from text frames
//! ([`command`]), server replies and pushes serialized to text ([`frames`]), and the one
//! table of client-visible codes for WebSocket and HTTP alike ([`codes`]), with the HTTP
//! error body ([`http`]). Nothing else in the crate builds or parses frames; the session
//! calls [`parse_command`] and the frame builders, the broker and engines call
//! [`message_frame`] once per publication. A leaf: it knows channel names and nothing of
//! sessions, brokers or engines.
//!
//! Parsing goes through a borrowed envelope of raw JSON pieces so that `data` is never
//! decoded and re-encoded: it is checked to be JSON once and copied into the frame as is.

pub mod codes;
pub mod command;
pub mod frames;
pub mod http;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use codes::{CloseCode, ErrorCode};
pub use command::{parse_command, Command, CommandError, Request};
pub use frames::{disconnect_frame, error_frame, message_frame, ServerFrame};
pub use http::ApiError;

/// The one subprotocol this server speaks.
pub const SUBPROTOCOL: &str = "switchboard.v1.json";

/// Longest string `id` a command may carry, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// How deep a publication's `data` may nest (arrays and objects inside one another). The
/// `message` frame puts `data` one level down, and the JSON readers our clients use stop at
/// 128 levels (serde_json) or soon after (Python near 1,000): 64 leaves room for all.
pub const MAX_DATA_DEPTH: usize = 64;

/// How deep the arrays and objects of a valid JSON text nest (0 for a scalar). Counts
/// brackets outside strings, in one pass, without building anything.
pub fn json_depth(json: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in json.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

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

#[cfg(test)]
mod tests;
