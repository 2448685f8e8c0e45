//! What travels over the wire. This file: the stamped payload every publication carries
//! (send time and per-channel sequence, read back by the subscribers to measure latency and
//! losses), in either form (`Payload`), and the byte search the parsers share. The
//! Switchboard and NATS protocols, the raw frame reader with its inflater, and the JSON
//! payloads are submodules.

use std::fmt::Write as _;

use crate::cli::PayloadKind;

pub mod inflate;
pub mod json;
pub mod nats;
pub mod raw;
pub mod switchboard;

/// The payloads of one run: `t=… s=… xxxx…` (the default), or JSON records with the stamp
/// as their first field (`--payload json`).
pub enum Payload {
    Stamp(usize),
    Json(json::JsonPayload),
}

impl Payload {
    pub fn new(kind: PayloadKind, size: usize) -> Self {
        match kind {
            PayloadKind::Stamp => Payload::Stamp(size),
            PayloadKind::Json => Payload::Json(json::JsonPayload::new(size)),
        }
    }

    /// Appends one payload to `out`.
    pub fn write(&self, out: &mut String, ts: u64, seq: u64) {
        match self {
            Payload::Stamp(size) => write_payload(out, ts, seq, *size),
            Payload::Json(j) => j.write(out, ts, seq),
        }
    }

    /// A JSON value as it is (`"data":{…}`), where the stamp form is a JSON string.
    pub fn is_json(&self) -> bool {
        matches!(self, Payload::Json(_))
    }
}

/// The stamp of a delivered payload, in either form: at its start (`t=… s=…`, as NATS hands
/// over the payload alone) or inside the first string that starts with it (`"t=…`, a
/// Switchboard frame's `data`, or a JSON payload's `stamp` field).
pub fn find_stamp(b: &[u8]) -> Option<(u64, u64)> {
    if b.starts_with(b"t=") {
        return parse_stamp(b);
    }
    let i = find(b, b"\"t=")?;
    parse_stamp(&b[i + 1..])
}

/// `t=<ns since the bench epoch> s=<per-channel sequence> xxxx…`, exactly `size` bytes.
pub fn write_payload(out: &mut String, ts: u64, seq: u64, size: usize) {
    let start = out.len();
    let _ = write!(out, "t={ts} s={seq} ");
    let used = out.len() - start;
    for _ in used..size {
        out.push('x');
    }
}

pub fn parse_digits(s: &[u8]) -> Option<(u64, &[u8])> {
    let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return None;
    }
    let mut v = 0u64;
    for b in &s[..n] {
        v = v * 10 + (b - b'0') as u64;
    }
    Some((v, &s[n..]))
}

/// Reads `t=<ts> s=<seq>` at the start of `s`.
pub fn parse_stamp(s: &[u8]) -> Option<(u64, u64)> {
    let (ts, rest) = parse_digits(s.strip_prefix(b"t=")?)?;
    let (seq, _) = parse_digits(rest.strip_prefix(b" s=")?)?;
    Some((ts, seq))
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (first, rest) = needle.split_first()?;
    let mut from = 0;
    while let Some(p) = hay[from..].iter().position(|b| b == first) {
        let at = from + p;
        if hay[at + 1..].starts_with(rest) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::switchboard::{sb_stamp, sb_type};
    use super::*;

    #[test]
    fn payload_has_exact_size_and_parses() {
        let mut s = String::new();
        write_payload(&mut s, 123_456_789, 42, 64);
        assert_eq!(s.len(), 64);
        assert_eq!(parse_stamp(s.as_bytes()), Some((123_456_789, 42)));
        let frame =
            format!("{{\"type\":\"message\",\"channel\":\"a\",\"offset\":3,\"data\":\"{s}\"}}");
        assert_eq!(sb_stamp(frame.as_bytes()), Some((123_456_789, 42)));
        assert_eq!(sb_type(&frame), "message");
        assert_eq!(find_stamp(s.as_bytes()), Some((123_456_789, 42)));
        assert_eq!(find_stamp(frame.as_bytes()), Some((123_456_789, 42)));
        assert_eq!(find_stamp(b"{\"x\":1}"), None);
    }
}
