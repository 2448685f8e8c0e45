//! Switchboard's JSON protocol as the load generator needs it: the subprotocol name and
//! cheap byte-level reads of a frame's type, id, error code and payload stamp, without a
//! JSON parser on the hot receive path (`load::subscriber`, `load::publisher`, `setup`).

use super::{find, parse_digits, parse_stamp};

pub const SUBPROTOCOL: &str = "switchboard.v1.json";

/// The stamp inside a Switchboard `message` frame (`"data":"t=… s=… xx"`).
pub fn sb_stamp(b: &[u8]) -> Option<(u64, u64)> {
    let i = find(b, b"\"t=")?;
    parse_stamp(&b[i + 1..])
}

pub fn sb_type(text: &str) -> &str {
    let b = text.as_bytes();
    match find(b, b"\"type\":\"") {
        Some(i) => {
            let rest = &text[i + 8..];
            &rest[..rest.find('"').unwrap_or(0)]
        }
        None => "",
    }
}

/// A numeric `"id":N` in a reply.
pub fn sb_id(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let i = find(b, b"\"id\":")?;
    parse_digits(&b[i + 5..]).map(|(v, _)| v)
}

pub fn sb_error_code(text: &str) -> String {
    let b = text.as_bytes();
    match find(b, b"\"code\":\"") {
        Some(i) => {
            let rest = &text[i + 8..];
            rest[..rest.find('"').unwrap_or(0)].to_string()
        }
        None => "unknown".into(),
    }
}
