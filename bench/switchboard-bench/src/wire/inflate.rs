//! The receiving side of permessage-deflate (RFC 7692) for the raw frame reader
//! (`super::raw`): one compressed message inflated on its own. The load generator offers the
//! extension with `server_no_context_takeover` (`net`), and a server that accepts must
//! honour it, so no message depends on the ones before: the decompressor is reset for each,
//! and one per thread serves every connection (its tables are about 11 KiB).
//!
//! `--inflate shared` (a fan-out run's way to measure a server past what one core can
//! inflate): a message whose compressed bytes equal those of one inflated recently on the
//! same thread is not inflated again; its inflated bytes are copied. Switchboard sends one
//! compressed form of a publication to every subscriber, so a thousand subscribers cost one
//! inflate per publication; a server that compresses per connection gets hits only where its
//! bytes come out the same. The bytes compared are the whole message, so what each
//! subscriber reads is still exactly what inflating it would give.
//!
//! Decompressed with miniz_oxide's core decompressor straight into the output buffer: its
//! reset is one field, where the streaming `InflateState` that flate2 wraps zeroes a 32 KiB
//! window and its tables for every message and copies the output through that window (about
//! 1.5 µs of the 13 µs a 1 KiB JSON message cost here). The rest is inflating itself, mostly
//! building each block's Huffman tables: about 10 µs per 1 KiB message and 35 µs per 16 KiB
//! on this machine, which is why `--inflate shared` exists.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};

use miniz_oxide::inflate::core::inflate_flags::{
    TINFL_FLAG_HAS_MORE_INPUT, TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
};
use miniz_oxide::inflate::core::{decompress, DecompressorOxide};
use miniz_oxide::inflate::TINFLStatus;

use crate::Res;

/// What the sender removed from the end of the message and the receiver appends again
/// (RFC 7692 section 7.2.2): the empty stored block of a sync flush.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

thread_local! {
    static INFLATER: RefCell<Option<Box<DecompressorOxide>>> = const { RefCell::new(None) };
    static RECENT: RefCell<Recent> = RefCell::new(Recent::default());
}

/// Messages remembered per thread: well above the publications a fan-out window keeps in
/// flight, so that subscribers a window apart still find what the first one inflated.
const RECENT_MAX: usize = 1024;

/// The recently inflated messages of one thread, by a hash of their compressed bytes, the
/// oldest forgotten first.
#[derive(Default)]
struct Recent {
    by_hash: HashMap<u64, (Vec<u8>, Vec<u8>)>,
    order: VecDeque<u64>,
}

/// A quick hash to find a message (its ends alone would not do: a run's messages share
/// their frame's head and, for a publisher's, its tail). Equality is decided on the bytes.
fn hash(b: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ b.len() as u64;
    let mut mix = |w: u64| {
        h = (h ^ w).wrapping_mul(0x0100_0000_01b3).rotate_left(29);
    };
    let words = b.chunks_exact(8);
    let rest = words.remainder();
    for c in words {
        mix(u64::from_le_bytes([
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
        ]));
    }
    let mut w = [0u8; 8];
    w[..rest.len()].copy_from_slice(rest);
    mix(u64::from_le_bytes(w));
    h
}

/// Hands `g` the inflated message: what the same compressed bytes inflated to when they
/// came recently on this thread (no copy), or else the message inflated into `scratch` and
/// remembered. Also says whether it inflated (a miss).
pub fn with_shared_inflate<R>(
    compressed: &[u8],
    max: usize,
    scratch: &mut Vec<u8>,
    g: impl FnOnce(&[u8]) -> R,
) -> Res<(R, bool)> {
    let h = hash(compressed);
    RECENT.with_borrow_mut(|recent| {
        if let Some((c, inflated)) = recent.by_hash.get(&h) {
            if c == compressed {
                return Ok((g(inflated), false));
            }
        }
        inflate_message(compressed, max, scratch)?;
        if recent
            .by_hash
            .insert(h, (compressed.to_vec(), scratch.clone()))
            .is_none()
        {
            recent.order.push_back(h);
            if recent.order.len() > RECENT_MAX {
                if let Some(old) = recent.order.pop_front() {
                    recent.by_hash.remove(&old);
                }
            }
        }
        Ok((g(scratch), true))
    })
}

/// Inflates one message's payload (its frames' payloads joined) into `out` (replacing what
/// it held); fails past `max` bytes of output or on data that is not raw deflate.
pub fn inflate_message(compressed: &[u8], max: usize, out: &mut Vec<u8>) -> Res<()> {
    INFLATER.with_borrow_mut(|slot| {
        let d = slot.get_or_insert_with(Box::default);
        d.init();
        let mut pos = 0;
        if !feed(d, compressed, out, &mut pos, max)? {
            feed(d, &TAIL, out, &mut pos, max)?;
        }
        out.truncate(pos);
        Ok(())
    })
}

/// Runs the decompressor over `input`, output from `out[*pos..]` (grown as needed, the
/// message so far kept in front for back-references). True once the stream ended (a final
/// block, which RFC 7692 allows a sender to use).
fn feed(
    d: &mut DecompressorOxide,
    mut input: &[u8],
    out: &mut Vec<u8>,
    pos: &mut usize,
    max: usize,
) -> Res<bool> {
    // More input always follows as far as the decompressor knows: a message ends with the
    // sync flush's empty stored block, not with a final block.
    let flags = TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF | TINFL_FLAG_HAS_MORE_INPUT;
    loop {
        if out.len() - *pos < 1024 {
            // Doubling, but never more than one byte past `max`: a bomb costs at most that.
            let more = out.len().max(4096).min(max.saturating_sub(*pos) + 1);
            out.resize(out.len() + more, 0);
        }
        let (status, used, written) = decompress(d, input, out, *pos, flags);
        input = &input[used..];
        *pos += written;
        if *pos > max {
            return Err(format!("a compressed message inflates past {max} bytes").into());
        }
        match status {
            TINFLStatus::Done => return Ok(true),
            TINFLStatus::NeedsMoreInput if input.is_empty() => return Ok(false),
            TINFLStatus::HasMoreOutput | TINFLStatus::NeedsMoreInput => {}
            other => return Err(format!("inflate: {other:?} (not raw deflate data)").into()),
        }
        if used == 0 && written == 0 && out.len() - *pos >= 1024 {
            return Err("inflate: no progress (truncated or corrupt message)".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    /// A message as a server with no context takeover sends it: raw deflate, sync flush,
    /// the trailing `00 00 ff ff` removed.
    pub fn deflate_message(payload: &[u8]) -> Vec<u8> {
        let mut c = Compress::new(Compression::new(6), false);
        let mut out = Vec::with_capacity(payload.len() + 1024);
        c.compress_vec(payload, &mut out, FlushCompress::Sync)
            .unwrap();
        assert!(out.ends_with(&TAIL));
        out.truncate(out.len() - 4);
        out
    }

    #[test]
    fn inflates_messages_one_by_one() {
        let mut out = Vec::new();
        // Two messages in a row through the same (per-thread) inflater: no context carried.
        for text in [
            r#"{"type":"message","channel":"a","offset":1,"data":{"x":[1,2,3,4,5,6,7,8]}}"#,
            r#"{"type":"message","channel":"b","offset":2,"data":"hello hello hello hello"}"#,
        ] {
            inflate_message(&deflate_message(text.as_bytes()), 1 << 20, &mut out).unwrap();
            assert_eq!(out, text.as_bytes());
        }
        // Long enough to need the output to grow several times.
        let long: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("{},", i % 977).into_bytes())
            .collect();
        inflate_message(&deflate_message(&long), 1 << 20, &mut out).unwrap();
        assert_eq!(out, long);
        // An empty message compresses to a single empty stored block.
        inflate_message(&deflate_message(b""), 16, &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn shared_inflate_inflates_each_distinct_message_once() {
        let mut scratch = Vec::new();
        let mut shared = |z: &[u8]| {
            with_shared_inflate(z, 1 << 20, &mut scratch, |m| {
                String::from_utf8_lossy(m).into_owned()
            })
        };
        // Same length, same first and last 32 bytes of text: told apart by the bytes.
        let pad = "x".repeat(40);
        let (ta, tb) = (format!("{pad}first.{pad}"), format!("{pad}other.{pad}"));
        let (a, b) = (
            deflate_message(ta.as_bytes()),
            deflate_message(tb.as_bytes()),
        );
        assert_eq!(shared(&a).unwrap(), (ta.clone(), true));
        assert_eq!(shared(&a).unwrap(), (ta.clone(), false));
        assert_eq!(shared(&b).unwrap(), (tb.clone(), true));
        assert_eq!(shared(&b).unwrap(), (tb, false));
        assert_eq!(shared(&a).unwrap().0, ta);
        // Bad data is refused every time, never remembered.
        assert!(shared(&[0x07, 0x00]).is_err());
        assert!(shared(&[0x07, 0x00]).is_err());
    }

    #[test]
    fn refuses_bombs_and_garbage() {
        let mut out = Vec::new();
        let zeros = vec![0u8; 1 << 20];
        let bomb = deflate_message(&zeros);
        assert!(bomb.len() < 8 * 1024);
        assert!(inflate_message(&bomb, 64 * 1024, &mut out).is_err());
        assert!(out.len() <= 64 * 1024 + 2048);
        // A reserved block type (BTYPE=11) is not deflate.
        assert!(inflate_message(&[0x07, 0x00], 1 << 20, &mut out).is_err());
        // Still usable afterwards: the inflater is reset per message.
        inflate_message(&deflate_message(b"ok"), 16, &mut out).unwrap();
        assert_eq!(out, b"ok");
    }
}
