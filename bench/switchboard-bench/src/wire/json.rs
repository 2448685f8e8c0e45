//! `--payload json`: publications that look like what applications publish (a list of order
//! records with pseudo-random values, and a line of free text), so that what deflate makes of
//! them is what it would make of real traffic; repeated characters would compress hundreds of
//! times and say nothing. The publisher (`load::publisher`) writes one per publication, with
//! the stamp the subscribers read (`super::find_stamp`) as the first field.
//!
//! Building records for every publication would cost the load generator more than the
//! measurement can spare at 16 KiB, so a small pool is built once and each publication takes
//! the next body and splices its own stamp in. With no context takeover every message is
//! compressed on its own, so the pool's repetition across messages cannot help deflate.

use std::fmt::Write as _;

/// Bodies built up front; publication `seq` of a channel uses body `seq % POOL`.
const POOL: usize = 32;
/// Room kept for `t=<ts> s=<seq>`: a 12-digit time in ns (1000 s) and a 15-digit sequence.
const STAMP_ROOM: usize = 32;

const FIRST: &[&str] = &[
    "Amara", "Bilal", "Camille", "Dario", "Elif", "Farid", "Greta", "Hana", "Ivan", "Jia", "Kwame",
    "Leila", "Mateo", "Nadia", "Oskar", "Priya", "Rafael", "Sofia", "Tomasz", "Yuki",
];
const LAST: &[&str] = &[
    "Okoye",
    "Lindqvist",
    "Moreau",
    "Tanaka",
    "Haddad",
    "Kowalski",
    "Silva",
    "Novak",
    "Reyes",
    "Chen",
    "Mensah",
    "Ivanova",
    "Byrne",
    "Costa",
    "Nakamura",
    "Fischer",
];
const SYMBOLS: &[&str] = &[
    "EURUSD", "GBPUSD", "USDJPY", "AUDUSD", "USDCHF", "EURGBP", "NZDUSD", "USDCAD", "EURJPY",
];
const VENUES: &[&str] = &["XLON", "XPAR", "XETR", "XNYS", "XTKS", "XAMS"];
const STATUS: &[&str] = &["new", "partially_filled", "filled", "cancelled", "rejected"];
const WORDS: &[&str] = &[
    "order",
    "routed",
    "to",
    "venue",
    "after",
    "price",
    "check",
    "client",
    "requested",
    "partial",
    "fill",
    "limit",
    "adjusted",
    "for",
    "spread",
    "settlement",
    "expected",
    "on",
    "next",
    "business",
    "day",
    "margin",
    "call",
    "cleared",
    "by",
    "desk",
    "risk",
    "review",
    "pending",
    "the",
    "and",
    "of",
    "market",
    "opened",
    "above",
    "prior",
    "close",
    "liquidity",
    "thin",
    "in",
    "early",
    "session",
    "confirmation",
    "sent",
    "account",
    "manager",
    "notes",
];

/// A small deterministic generator (SplitMix64): the same bodies on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len() as u64) as usize]
    }
}

/// One order record, about 250 bytes of compact JSON.
fn record(rng: &mut Rng, out: &mut String) {
    let (first, last) = (rng.pick(FIRST), rng.pick(LAST));
    let qty = (1 + rng.below(400)) * 25;
    let price = 100_000 + rng.below(60_000);
    let _ = write!(
        out,
        r#"{{"id":"ord_{:08x}","account":{},"trader":{{"name":"{first} {last}","email":"{}.{}@example.com"}},"symbol":"{}","side":"{}","qty":{qty},"price":{}.{:05},"filled":{},"status":"{}","venue":"{}","ts":"2026-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z"}}"#,
        rng.next() as u32,
        10_000_000 + rng.below(90_000_000),
        first.to_lowercase(),
        last.to_lowercase(),
        rng.pick(SYMBOLS),
        if rng.below(2) == 0 { "buy" } else { "sell" },
        price / 100_000,
        price % 100_000,
        qty * rng.below(5) / 4,
        rng.pick(STATUS),
        rng.pick(VENUES),
        1 + rng.below(12),
        1 + rng.below(28),
        rng.below(24),
        rng.below(60),
        rng.below(60),
        rng.below(1000),
    );
}

/// One body of the pool: a publication is `{"stamp":"<stamp>"` + `rest` + `,"note":"` + the
/// note cut to length + `"}`.
struct Body {
    /// `,"orders":[...]` (empty when not even one record fits the size).
    rest: String,
    /// Words, at least as long as any note this body can need.
    note: String,
}

/// The JSON payloads of one run, all of `size` bytes (more only when a stamp is longer than
/// the room kept for it).
pub struct JsonPayload {
    size: usize,
    bodies: Vec<Body>,
}

const HEAD: &str = r#"{"stamp":""#;
const NOTE: &str = r#","note":""#;
const END: &str = r#""}"#;

impl JsonPayload {
    pub fn new(size: usize) -> Self {
        let fixed = HEAD.len() + 1 + NOTE.len() + END.len() + STAMP_ROOM;
        let bodies = (0..POOL as u64)
            .map(|i| {
                let mut rng = Rng(0x5eed_0000 + i);
                let mut rest = String::new();
                let mut records = String::new();
                let mut one = String::new();
                loop {
                    one.clear();
                    record(&mut rng, &mut one);
                    // `,"orders":[` + records + `,` + one + `]`
                    let would = 11 + records.len() + usize::from(!records.is_empty()) + one.len();
                    if fixed + would + 1 > size {
                        break;
                    }
                    if !records.is_empty() {
                        records.push(',');
                    }
                    records.push_str(&one);
                    rest = format!(r#","orders":[{records}]"#);
                }
                let mut note = String::new();
                while note.len() < size {
                    if !note.is_empty() {
                        note.push(' ');
                    }
                    note.push_str(rng.pick(WORDS));
                }
                Body { rest, note }
            })
            .collect();
        JsonPayload { size, bodies }
    }

    /// Appends publication `seq`'s payload to `out`, its stamp first.
    pub fn write(&self, out: &mut String, ts: u64, seq: u64) {
        let start = out.len();
        let body = &self.bodies[(seq % POOL as u64) as usize];
        out.push_str(HEAD);
        let _ = write!(out, "t={ts} s={seq}\"");
        out.push_str(&body.rest);
        out.push_str(NOTE);
        let used = out.len() - start + END.len();
        let fill = self.size.saturating_sub(used).min(body.note.len());
        out.push_str(&body.note[..fill]);
        // A cut that ends on a space would read as padding.
        if out.ends_with(' ') {
            out.pop();
            out.push('.');
        }
        out.push_str(END);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{find_stamp, write_payload};
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    fn deflated_len(b: &[u8]) -> usize {
        let mut c = Compress::new(Compression::new(3), false);
        let mut out = Vec::with_capacity(b.len() + 64);
        c.compress_vec(b, &mut out, FlushCompress::Sync).unwrap();
        out.len()
    }

    #[test]
    fn json_payloads_are_valid_exact_and_stamped() {
        for size in [64usize, 100, 256, 300, 1024, 4096, 16 * 1024] {
            let p = JsonPayload::new(size);
            for seq in [0u64, 1, 31, 32, 999_999] {
                let mut s = String::from("prefix");
                p.write(&mut s, 12_345_678_901, seq);
                let body = &s["prefix".len()..];
                assert_eq!(body.len(), size, "size {size} seq {seq}: {body}");
                let v: serde_json::Value = serde_json::from_str(body).unwrap();
                assert_eq!(v["stamp"], format!("t=12345678901 s={seq}"));
                assert_eq!(find_stamp(body.as_bytes()), Some((12_345_678_901, seq)));
                assert!(!body.contains('\n'));
                if size >= 1024 {
                    assert!(v["orders"].as_array().unwrap().len() >= 3, "{body}");
                }
            }
        }
    }

    /// Realistic, not repeated characters: deflate gets a ratio in the range real JSON gets
    /// (a few times), far from what `xxxx…` gets, and the bodies differ from one another.
    #[test]
    fn json_payloads_compress_like_json_not_like_padding() {
        for size in [1024usize, 16 * 1024] {
            let p = JsonPayload::new(size);
            let (mut a, mut b) = (String::new(), String::new());
            p.write(&mut a, 1, 0);
            p.write(&mut b, 1, 1);
            assert_ne!(a[30..], b[30..]);
            let ratio = size as f64 / deflated_len(a.as_bytes()) as f64;
            assert!((1.5..8.0).contains(&ratio), "{size}: ratio {ratio:.2}");
            let mut x = String::new();
            write_payload(&mut x, 1, 0, size);
            let padding = size as f64 / deflated_len(x.as_bytes()) as f64;
            assert!(padding > 3.0 * ratio, "{size}: {padding:.1} vs {ratio:.1}");
        }
    }
}
