//! permessage-deflate (RFC 7692): compressing one message on its own, and inflating one
//! client message within a size limit; the negotiation at the handshake is in [`offer`].
//!
//! A leaf. The shared frames (src/frame.rs) compress through [`compress`], once per
//! frame whatever its number of subscribers; the `/ws` handshake negotiates with
//! [`offer::negotiate`] and hands [`inflate`] to the connection's codec (the vendored
//! actix-http calls it with each whole compressed message, vendor/README.md).
//!
//! Both directions are negotiated without context takeover, so no message depends on the
//! ones before it: a connection keeps no zlib state (an idle connection stays as small as
//! before), and one compressed form of a publication serves every subscriber. The working
//! state (about 300 KiB for a compressor, 45 KiB for a decompressor with miniz_oxide) is
//! kept once per thread and reset for each message.

pub mod offer;
#[doc(hidden)]
pub mod sample;

use std::cell::RefCell;

use actix_http::ws::ProtocolError;
use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The deflate level (miniz_oxide's 1 to 9). Measured on `message` frames of realistic JSON
/// (`tests::message`, a release build, the least of 60 runs):
///
/// | payload | level 1 | level 3 | level 6 |
/// |---|---|---|---|
/// | 982 B | 2.37x, 20 µs | 2.52x, 21 µs | 2.56x, 24 µs |
/// | 16,343 B | 3.69x, 81 µs | 4.36x, 204 µs | 4.80x, 379 µs |
///
/// Level 3 reaches 2.5x at 1 KiB and 4x at 16 KiB (issue 12's targets), for half the time
/// of level 6 on long messages; small ones cost the same at any level, mostly the reset
/// (about 8 µs: miniz_oxide zeroes its tables). Paid once per publication.
pub const LEVEL: u32 = 3;

/// What a sync flush ends with, and what RFC 7692 section 7.2.1 has the sender remove (and
/// section 7.2.2 the receiver append again).
pub(crate) const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

thread_local! {
    /// This thread's compressor, reset for each message.
    static DEFLATER: RefCell<Option<Compress>> = const { RefCell::new(None) };
    /// This thread's decompressor, reset for each message.
    static INFLATER: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

/// `payload` compressed as one permessage-deflate message with no context takeover (raw
/// deflate, ended by a sync flush whose `00 00 ff ff` is removed), or `None` when that is
/// not shorter than `payload` itself (the message then goes out uncompressed).
pub fn compress(payload: &[u8]) -> Option<Vec<u8>> {
    DEFLATER.with_borrow_mut(|slot| {
        let deflater = slot.get_or_insert_with(|| Compress::new(Compression::new(LEVEL), false));
        deflater.reset();
        let mut out = Vec::with_capacity(payload.len() / 2 + 64);
        let mut input = payload;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity());
            }
            let before = deflater.total_in();
            deflater
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .ok()?;
            input = &input[(deflater.total_in() - before) as usize..];
            // The flush is complete once everything was taken and output room was left.
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        if !out.ends_with(&TAIL) {
            return None;
        }
        out.truncate(out.len() - TAIL.len());
        (out.len() < payload.len()).then_some(out)
    })
}

/// Inflates one compressed client message (all its frames' payloads, joined), refusing it
/// with [`ProtocolError::Overflow`] (close 1009) as soon as its output passes `max` bytes:
/// memory stays bounded by `max` whatever the compressed bytes expand to. Data that is not
/// valid deflate is a protocol error (close 1002).
pub fn inflate(compressed: &[u8], max: usize) -> Result<Bytes, ProtocolError> {
    INFLATER.with_borrow_mut(|slot| {
        let inflater = slot.get_or_insert_with(|| Decompress::new(false));
        inflater.reset(false);
        // Grown as output comes, up to one byte past the limit (which is how passing it is
        // seen): a small message does not reserve `max`.
        let cap = max.saturating_add(1);
        let mut out: Vec<u8> = Vec::with_capacity((compressed.len() * 4).max(64).min(cap));
        for part in [compressed, &TAIL[..]] {
            let mut input = part;
            loop {
                if out.len() == out.capacity() {
                    let grow = out.capacity().min(cap - out.len());
                    out.reserve_exact(grow);
                }
                let (in_before, out_before) = (inflater.total_in(), out.len());
                let status = inflater
                    .decompress_vec(input, &mut out, FlushDecompress::None)
                    .map_err(|_| invalid("a compressed message is not valid deflate data"))?;
                if out.len() > max {
                    return Err(ProtocolError::Overflow);
                }
                input = &input[(inflater.total_in() - in_before) as usize..];
                if status == Status::StreamEnd {
                    // A final block (BFINAL): the message ends there (RFC 7692, 7.2.3.1).
                    return Ok(Bytes::from(out));
                }
                let progress = inflater.total_in() > in_before || out.len() > out_before;
                if (input.is_empty() && out.len() < out.capacity()) || !progress {
                    break;
                }
            }
            if !input.is_empty() {
                return Err(invalid("a compressed message has data past its end"));
            }
        }
        Ok(Bytes::from(out))
    })
}

fn invalid(why: &'static str) -> ProtocolError {
    ProtocolError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, why))
}

#[cfg(test)]
mod tests {
    use super::sample::message;
    use super::*;

    /// What a client does with a compressed message: append the tail, inflate.
    fn roundtrip(payload: &[u8]) -> Vec<u8> {
        let c = compress(payload).expect("compressible");
        inflate(&c, 1 << 20).expect("inflates").to_vec()
    }

    #[test]
    fn messages_survive_and_json_shrinks_as_the_issue_asks() {
        for (size, at_least) in [(1024usize, 2.5f64), (16 * 1024, 4.0)] {
            let json = message(size);
            let c = compress(json.as_bytes()).expect("compressible");
            let ratio = json.len() as f64 / c.len() as f64;
            assert!(
                ratio >= at_least,
                "{size}: {} -> {} bytes",
                json.len(),
                c.len()
            );
            assert_eq!(roundtrip(json.as_bytes()), json.as_bytes());
        }
        // Each message is on its own: compressing the same text twice gives the same bytes.
        let json = message(2048);
        assert_eq!(compress(json.as_bytes()), compress(json.as_bytes()));
    }

    #[test]
    fn incompressible_or_tiny_payloads_are_left_alone() {
        assert_eq!(compress(b""), None);
        assert_eq!(compress(b"{}"), None);
        let mut seed = 1u32;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (seed >> 16) as u8
            })
            .collect();
        assert_eq!(compress(&noise), None);
    }

    #[test]
    fn inflating_stops_at_the_limit() {
        // A zip bomb: 1 MiB of zeros compresses to about a kilobyte.
        let zeros = vec![0u8; 1 << 20];
        let bomb = compress(&zeros).expect("compressible");
        assert!(bomb.len() < 8 * 1024, "{}", bomb.len());
        assert!(matches!(
            inflate(&bomb, 65_536),
            Err(ProtocolError::Overflow)
        ));
        // Exactly at the limit is fine; one byte more is not.
        let c = compress(&zeros[..1000]).expect("compressible");
        assert_eq!(inflate(&c, 1000).expect("at the limit").len(), 1000);
        assert!(matches!(inflate(&c, 999), Err(ProtocolError::Overflow)));
    }

    #[test]
    fn bad_data_is_a_protocol_error_not_a_panic() {
        for bad in [&b"\xff\xff\xff\xff"[..], b"\x07", b"not deflate at all"] {
            match inflate(bad, 1 << 16) {
                Err(ProtocolError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::InvalidData),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        // A message that ends with a final block (BFINAL) rather than a sync flush.
        let mut c = Vec::new();
        let mut d = flate2::write::DeflateEncoder::new(&mut c, flate2::Compression::fast());
        std::io::Write::write_all(&mut d, b"hello hello hello").expect("write");
        d.finish().expect("finish");
        assert_eq!(
            &inflate(&c, 100).expect("final block")[..],
            b"hello hello hello"
        );
    }
}
