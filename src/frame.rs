//! A server message ready for the wire ([`WsFrame`]), built once and shared by every
//! connection it goes to, in its plain form and, made at most once, its compressed form
//! (permessage-deflate); and how one connection writes frames ([`Encoding`]): plain, or
//! compressed where it negotiated the extension.
//!
//! A leaf next to the outbox (which queues these frames and writes them out) and the broker
//! (which builds one per publication): compressing happens here, through
//! [`crate::deflate::compress`], the first time a compressed connection takes the frame, so
//! a publication costs one deflate pass however many of its subscribers are compressed, and
//! none when none is.

use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use prometheus::IntCounter;

use crate::deflate::offer::Agreed;

/// A server text message encoded for the wire (RFC 6455 §5.2: FIN + text opcode, payload
/// length, no mask, the payload), built once per message and shared by every session it
/// goes to. Fan-out hands these to the sessions' outboxes, which the response body writes
/// out as they are: no per-subscriber framing or compressing.
#[derive(Clone, Debug)]
pub struct WsFrame(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    /// The frame uncompressed.
    plain: Bytes,
    /// The frame compressed (RSV1 set), once a compressed connection asked for it; `None`
    /// inside when compressing does not make it smaller.
    deflated: OnceLock<Option<Bytes>>,
}

/// The header of a final frame with `first` as its first byte and a payload of `n` bytes.
pub(crate) fn header(out: &mut BytesMut, first: u8, n: usize) {
    out.extend_from_slice(&[first]);
    if n < 126 {
        out.extend_from_slice(&[n as u8]);
    } else if n <= u16::MAX as usize {
        out.extend_from_slice(&[126]);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.extend_from_slice(&[127]);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
}

/// FIN and the text opcode.
pub(crate) const TEXT: u8 = 0x81;
/// The payload of one encoded frame (ours: final, unmasked), after its header.
pub(crate) fn body(frame: &[u8]) -> &[u8] {
    let head = match frame[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    &frame[head..]
}

/// FIN and the binary opcode.
const BINARY: u8 = 0x82;
/// RSV1: the message is compressed (RFC 7692, 6).
pub(crate) const RSV1: u8 = 0x40;

impl WsFrame {
    /// Frames `text` as one final text frame.
    pub fn text(text: &str) -> WsFrame {
        WsFrame::message(TEXT, text.as_bytes())
    }

    /// Frames `data` as one final binary frame. `/ws` sends none (its protocol is JSON
    /// text); the conformance echo server (examples/echo.rs) echoes binary messages so.
    pub fn binary(data: &[u8]) -> WsFrame {
        WsFrame::message(BINARY, data)
    }

    /// One final frame whose first byte (FIN and opcode) is `first`, carrying `payload`.
    fn message(first: u8, payload: &[u8]) -> WsFrame {
        let mut out = BytesMut::with_capacity(payload.len() + 10);
        header(&mut out, first, payload.len());
        out.extend_from_slice(payload);
        WsFrame(Arc::new(Shared {
            plain: out.freeze(),
            deflated: OnceLock::new(),
        }))
    }

    /// The encoded bytes, uncompressed.
    pub fn bytes(&self) -> &[u8] {
        &self.0.plain
    }

    /// Length on the wire uncompressed, header included.
    pub fn len(&self) -> usize {
        self.0.plain.len()
    }

    /// Never true: a frame has at least its two header bytes.
    pub fn is_empty(&self) -> bool {
        self.0.plain.is_empty()
    }

    /// The message's payload (the JSON text), without the frame header.
    pub fn payload(&self) -> &[u8] {
        body(&self.0.plain)
    }

    /// True for a text frame whose payload has no raw newline: it may share a batched
    /// message (`?batch=true`) with others, `\n` separated. Publications are stored
    /// compact ([`crate::protocol::compact_data`]), so only a frame built some other way
    /// (history written by an older version) would go alone.
    pub fn batchable(&self) -> bool {
        self.0.plain[0] == TEXT && memchr::memchr(b'\n', self.payload()).is_none()
    }

    /// The bytes to write on a connection that writes with `encoding`: compressed when it
    /// negotiated permessage-deflate, the payload is at least `compression.min_size`, fits
    /// the window it agreed and compresses smaller; else plain. The same answer every time
    /// for one frame and one connection, so what the outbox counts when the frame is
    /// queued is what it writes.
    pub fn wire(&self, encoding: &Encoding) -> &[u8] {
        let Some(agreed) = encoding.deflate else {
            return &self.0.plain;
        };
        let payload = self.payload();
        if payload.len() < encoding.wire.min_size || !agreed.fits_window(payload.len()) {
            return &self.0.plain;
        }
        let deflated = self.0.deflated.get_or_init(|| {
            encoding.wire.compressions.inc();
            let compressed = crate::deflate::compress(payload)?;
            let mut out = BytesMut::with_capacity(compressed.len() + 10);
            // The frame's own FIN and opcode: a binary echo stays binary.
            header(&mut out, self.0.plain[0] | RSV1, compressed.len());
            out.extend_from_slice(&compressed);
            Some(out.freeze())
        });
        deflated.as_deref().unwrap_or(&self.0.plain)
    }
}

/// The node's side of writing frames, shared by every connection: the compression
/// threshold and the byte counters behind `/metrics`.
#[derive(Debug)]
pub struct Wire {
    /// `compression.min_size`: shorter payloads are never compressed.
    min_size: usize,
    /// Deflate passes: one per compressed message, however many connections it goes to.
    compressions: IntCounter,
    /// Bytes of the frames written, as they would be uncompressed.
    uncompressed: IntCounter,
    /// Bytes of the frames written, as written.
    written: IntCounter,
}

impl Wire {
    /// The node's wire settings and counters (`switchboard_compressions_total`,
    /// `switchboard_ws_bytes_uncompressed_total`, `switchboard_ws_bytes_written_total`).
    pub fn new(
        min_size: usize,
        compressions: IntCounter,
        uncompressed: IntCounter,
        written: IntCounter,
    ) -> Wire {
        Wire {
            min_size,
            compressions,
            uncompressed,
            written,
        }
    }
}

/// How one connection writes its frames.
#[derive(Debug, Clone)]
pub struct Encoding {
    wire: Arc<Wire>,
    /// The permessage-deflate agreement, when the connection has one.
    deflate: Option<Agreed>,
    /// The client asked for `?batch=true`: frames drained together go out as one message.
    pub(crate) batch: bool,
}

impl Encoding {
    /// A connection's encoding: compressed as `deflate` agreed, or plain.
    pub fn new(wire: Arc<Wire>, deflate: Option<Agreed>) -> Encoding {
        Encoding {
            wire,
            deflate,
            batch: false,
        }
    }

    /// The same encoding, batching frames drained together (`?batch=true`) when `batch`.
    pub fn batched(self, batch: bool) -> Encoding {
        Encoding { batch, ..self }
    }

    /// Plain frames, counted nowhere: for outboxes outside a node.
    #[cfg(test)]
    pub(crate) fn plain() -> Encoding {
        let counter = || IntCounter::new("unregistered", "-").expect("a valid name");
        Encoding::new(
            Arc::new(Wire::new(usize::MAX, counter(), counter(), counter())),
            None,
        )
    }

    /// Counts frames written: `uncompressed` bytes as `written` bytes.
    pub fn count_written(&self, uncompressed: usize, written: usize) {
        self.wire.uncompressed.inc_by(uncompressed as u64);
        self.wire.written.inc_by(written as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deflate::sample::{message, records};

    /// Our framing is byte for byte what actix-http's own encoder writes, at every length
    /// boundary (7-bit, 16-bit and 64-bit lengths).
    #[test]
    fn ws_frame_matches_actix_encoder() {
        for n in [0usize, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let text = "x".repeat(n);
            let mut expected = BytesMut::new();
            actix_http::ws::Parser::write_message(
                &mut expected,
                text.as_bytes(),
                actix_http::ws::OpCode::Text,
                true,
                false,
            );
            let ours = WsFrame::text(&text);
            assert_eq!(ours.bytes(), &expected[..], "length {n}");
            assert_eq!(ours.len(), expected.len());
            assert_eq!(ours.payload(), text.as_bytes());
        }
    }

    fn wire(min_size: usize) -> Arc<Wire> {
        let counter = |name: &str| IntCounter::new(name, "-").expect("counter");
        Arc::new(Wire::new(
            min_size,
            counter("c"),
            counter("u"),
            counter("w"),
        ))
    }

    fn agreed(bits: u8) -> Option<Agreed> {
        Some(Agreed {
            server_max_window_bits: bits,
        })
    }

    #[test]
    fn compressed_once_for_every_compressed_connection() {
        let wire = wire(256);
        let full = Encoding::new(wire.clone(), agreed(15));
        let also = Encoding::new(wire.clone(), agreed(15));
        let plain = Encoding::new(wire.clone(), None);
        let json = message(1024);
        let frame = WsFrame::text(&json);
        assert_eq!(frame.wire(&plain), frame.bytes());
        assert_eq!(
            wire.compressions.get(),
            0,
            "nothing compressed for a plain connection"
        );
        let once = frame.wire(&full).to_vec();
        assert_eq!(once[0], 0xc1, "FIN, RSV1, text");
        assert!(
            once.len() * 5 < frame.len() * 2,
            "{} -> {}",
            frame.len(),
            once.len()
        );
        assert_eq!(frame.clone().wire(&also), &once[..]);
        assert_eq!(wire.compressions.get(), 1);
        // The payload after the header inflates back to the JSON.
        let payload = &once[4..];
        assert_eq!(
            u16::from_be_bytes([once[2], once[3]]) as usize,
            payload.len()
        );
        let back = crate::deflate::inflate(payload, 1 << 20).expect("inflates");
        assert_eq!(&back[..], json.as_bytes());
    }

    #[test]
    fn small_or_out_of_window_messages_go_plain() {
        let wire = wire(256);
        let full = Encoding::new(wire.clone(), agreed(15));
        let small = WsFrame::text(&records(200));
        assert_eq!(small.wire(&full), small.bytes());
        // A 1 KiB window takes a 1000-byte message, not a 2000-byte one.
        let narrow = Encoding::new(wire.clone(), agreed(10));
        let fits = WsFrame::text(&"a".repeat(1000));
        assert_eq!(fits.wire(&narrow)[0], 0xc1);
        let long = WsFrame::text(&records(2000));
        assert_eq!(long.wire(&narrow), long.bytes());
        assert_eq!(wire.compressions.get(), 1);
    }
}
