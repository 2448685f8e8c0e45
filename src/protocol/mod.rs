//! The `switchboard.v1.json` wire protocol: client commands parsed from text frames
//! ([`command`]), server replies and pushes serialized to text ([`frames`]), and the one
//! table of client-visible codes for WebSocket and HTTP alike ([`codes`]), with the HTTP
//! error body ([`http`]), and the optional idempotency key of a publication
//! ([`idempotency`]), read the same way from WebSocket and HTTP. Nothing else in the crate builds or parses frames; the session
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
pub mod idempotency;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use codes::{CloseCode, ErrorCode};
pub use command::{parse_command, Command, CommandError, Request};
pub use frames::{disconnect_frame, error_frame, message_frame, ServerFrame};
pub use http::ApiError;
pub use idempotency::{IdempotencyKey, MAX_IDEMPOTENCY_KEY_LEN};

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

/// What in a valid JSON text some readers refuse although JSON's grammar allows it, if
/// anything: a `\u` escape of half a UTF-16 surrogate pair without its other half (`"\ud83d"`
/// alone is no character: serde_json refuses the whole text, other readers replace it or keep
/// a broken string), or a number beyond 1e308 in magnitude (64-bit floats end near 1.8e308:
/// serde_json and Go refuse the text, JavaScript reads infinity). One pass over the bytes.
pub fn unreadable(json: &str) -> Option<&'static str> {
    let b = json.as_bytes();
    // The text is valid JSON: a backslash starts an escape, and `\u` has 4 hex digits.
    let hex = |at: usize| {
        b.get(at..at + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u16::from_str_radix(h, 16).ok())
    };
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] != b'\\' {
                        i += 1;
                        continue;
                    }
                    if b.get(i + 1) != Some(&b'u') {
                        i += 2;
                        continue;
                    }
                    let lone = match hex(i + 2) {
                        Some(0xD800..=0xDBFF) => {
                            let paired = b.get(i + 6..i + 8) == Some(b"\\u".as_slice())
                                && matches!(hex(i + 8), Some(0xDC00..=0xDFFF));
                            i += if paired { 12 } else { 6 };
                            !paired
                        }
                        Some(0xDC00..=0xDFFF) => true,
                        _ => {
                            i += 6;
                            false
                        }
                    };
                    if lone {
                        return Some("a \\u escape of half a UTF-16 surrogate pair");
                    }
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < b.len() && matches!(b[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let number = &json[start..i];
                // Without an exponent, 17 characters stay below 1e17.
                let may_be_huge = number.len() > 17 || number.contains(['e', 'E']);
                if may_be_huge && !number.parse::<f64>().is_ok_and(|f| f.abs() <= 1e308) {
                    return Some("a number beyond 1e308 in magnitude");
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// Why a publication's `data` (valid JSON) is refused, in the words of the `bad_request`
/// answer, if it is: it nests deeper than [`MAX_DATA_DEPTH`], or has what some JSON readers
/// refuse ([`unreadable`]). Either would make the `message` push unreadable to some
/// subscribers. The one check of `data`, for the WebSocket and the HTTP API alike.
pub fn check_data(json: &str) -> Result<(), String> {
    if json_depth(json) > MAX_DATA_DEPTH {
        return Err(format!("`data` nests deeper than {MAX_DATA_DEPTH} levels"));
    }
    match unreadable(json) {
        Some(what) => Err(format!("`data` has {what}")),
        None => Ok(()),
    }
}

/// `data` as it is stored and sent: as written, or, when it has a raw line break (JSON
/// whitespace), with its whitespace outside strings removed. No frame then holds a raw
/// newline, which is what lets a batch (`?batch=true`) separate frames with one. Called
/// after [`check_data`], for the WebSocket and the HTTP API alike.
pub fn compact_data(data: &RawValue) -> Box<RawValue> {
    let json = data.get();
    if memchr::memchr2(b'\n', b'\r', json.as_bytes()).is_none() {
        return data.to_owned();
    }
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    // Valid JSON less insignificant whitespace is valid JSON; should it somehow not be,
    // the value goes as written (it then travels unbatched).
    RawValue::from_string(out).unwrap_or_else(|_| data.to_owned())
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
