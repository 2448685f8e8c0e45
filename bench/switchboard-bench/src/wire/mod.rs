//! What travels over the wire. This file: the stamped payload every publication carries
//! (send time and per-channel sequence, read back by the subscribers to measure latency and
//! losses) and the byte search the parsers share. The Switchboard and NATS protocols and the
//! raw frame reader are submodules.

use std::fmt::Write as _;

pub mod nats;
pub mod raw;
pub mod switchboard;

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
    }
}
