//! Batched messages, for clients that connect with `?batch=true`: the frames an outbox
//! drains together go out as one WebSocket text message, `\n` between frames. Nothing waits
//! to be batched: only what was already queued when the connection could write goes
//! together, so batching adds no delay.
//!
//! On a compressed connection a batch keeps each publication's shared compressed form
//! (src/frame.rs). Each is a run of deflate blocks ended by a sync flush, with no reference
//! to anything before it (no context takeover), so compressed forms can follow one another
//! in one message, with the newlines and the frames left uncompressed (too short, or not
//! smaller) as stored blocks between them: the message inflates, as one, to the joined
//! text, and no frame is deflated again for one connection. docs/benchmarks.md compares
//! this with deflating each batch per connection.
//!
//! A leaf: the outbox (src/outbox.rs) feeds its drain through a [`Batcher`].

use bytes::BytesMut;

use crate::deflate::TAIL;
use crate::frame::{body, header, Encoding, WsFrame, RSV1, TEXT};

/// The most payload one batched message grows to: a frame that would pass it starts the
/// next message, so a client behind by a long backlog gets messages it can start on
/// rather than one as large as the backlog. A longer frame goes alone.
pub const MAX_BATCH: usize = 64 * 1024;

/// The largest stored (uncompressed) deflate block (RFC 1951, 3.2.4).
const MAX_STORED: usize = u16::MAX as usize;

/// Writes a connection's drained frames into one chunk: each frame as it is, or, for a
/// connection that asked for batches, consecutive batchable frames joined into messages.
pub struct Batcher<'a> {
    encoding: &'a Encoding,
    /// Frames waiting to be joined (only for a batching connection).
    frames: Vec<&'a WsFrame>,
    /// Their payloads' length, with a newline each.
    len: usize,
}

impl<'a> Batcher<'a> {
    /// A batcher writing with `encoding` (which says whether the client asked for batches).
    pub fn new(encoding: &'a Encoding) -> Self {
        Batcher {
            encoding,
            frames: Vec::new(),
            len: 0,
        }
    }

    /// Adds the next frame, writing into `out` whatever is complete.
    pub fn push(&mut self, out: &mut BytesMut, frame: &'a WsFrame) {
        if !self.encoding.batch {
            return out.extend_from_slice(frame.wire(self.encoding));
        }
        if !frame.batchable() {
            self.finish(out);
            return out.extend_from_slice(frame.wire(self.encoding));
        }
        let len = frame.payload().len() + 1;
        if !self.frames.is_empty() && self.len + len > MAX_BATCH {
            self.finish(out);
        }
        self.frames.push(frame);
        self.len += len;
    }

    /// Writes the frames still waiting; call once the last frame was pushed.
    pub fn finish(&mut self, out: &mut BytesMut) {
        write(out, &self.frames, self.encoding);
        self.frames.clear();
        self.len = 0;
    }
}

/// Writes `frames` (text frames with no raw newline) as one message.
fn write(out: &mut BytesMut, frames: &[&WsFrame], encoding: &Encoding) {
    match frames {
        [] => {}
        [one] => out.extend_from_slice(one.wire(encoding)),
        _ => {
            let wires: Vec<&[u8]> = frames.iter().map(|f| f.wire(encoding)).collect();
            if wires.iter().any(|w| compressed(w)) {
                deflated(out, &wires);
            } else {
                joined(out, &wires);
            }
        }
    }
}

fn compressed(wire: &[u8]) -> bool {
    wire[0] & RSV1 != 0
}

/// The payloads joined by newlines, in one uncompressed text frame.
fn joined(out: &mut BytesMut, wires: &[&[u8]]) {
    let n = wires.iter().map(|w| body(w).len()).sum::<usize>() + wires.len() - 1;
    out.reserve(n + 10);
    header(out, TEXT, n);
    for (i, w) in wires.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\n");
        }
        out.extend_from_slice(body(w));
    }
}

/// One compressed text message whose deflate stream is the frames' own: each compressed
/// form gets its sync flush's `00 00 ff ff` back (removed when it was framed alone, RFC
/// 7692 7.2.1) so the next block starts on a byte boundary; newlines and uncompressed
/// payloads go in stored blocks; and the message ends as a lone message would, its final
/// flush's last four bytes removed.
fn deflated(out: &mut BytesMut, wires: &[&[u8]]) {
    let mut stream = BytesMut::with_capacity(wires.iter().map(|w| w.len() + 10).sum());
    // Plain bytes (newlines, uncompressed payloads) waiting for their stored blocks.
    let mut run: Vec<u8> = Vec::new();
    // The last thing written is a compressed form whose flush tail is still removed.
    let mut open = false;
    for (i, w) in wires.iter().enumerate() {
        if i > 0 {
            run.push(b'\n');
        }
        if compressed(w) {
            if open {
                stream.extend_from_slice(&TAIL);
            }
            stored(&mut stream, &run);
            run.clear();
            stream.extend_from_slice(body(w));
            open = true;
        } else {
            run.extend_from_slice(body(w));
        }
    }
    if !run.is_empty() {
        if open {
            stream.extend_from_slice(&TAIL);
        }
        stored(&mut stream, &run);
        // An empty stored block's first byte (BFINAL 0, type 00, padding): with the
        // `00 00 ff ff` the receiver appends, the sync flush a message ends with.
        stream.extend_from_slice(&[0x00]);
    }
    header(out, TEXT | RSV1, stream.len());
    out.extend_from_slice(&stream);
}

/// `data` as stored deflate blocks (RFC 1951, 3.2.4), each starting on a byte boundary and
/// ending on one; nothing for no data.
fn stored(stream: &mut BytesMut, data: &[u8]) {
    for chunk in data.chunks(MAX_STORED) {
        let len = chunk.len() as u16;
        stream.extend_from_slice(&[0x00]);
        stream.extend_from_slice(&len.to_le_bytes());
        stream.extend_from_slice(&(!len).to_le_bytes());
        stream.extend_from_slice(chunk);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prometheus::IntCounter;

    use super::*;
    use crate::deflate::offer::Agreed;
    use crate::deflate::sample::records;
    use crate::frame::Wire;

    fn encoding(deflate: bool, batch: bool) -> Encoding {
        let counter = |name: &str| IntCounter::new(name, "-").expect("counter");
        let wire = Arc::new(Wire::new(256, counter("c"), counter("u"), counter("w")));
        let agreed = deflate.then_some(Agreed {
            server_max_window_bits: 15,
        });
        Encoding::new(wire, agreed).batched(batch)
    }

    /// Splits a chunk of frames back into messages' texts (inflating compressed ones).
    fn messages(mut chunk: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        while !chunk.is_empty() {
            let (head, n) = match chunk[1] & 0x7f {
                126 => (4, u16::from_be_bytes([chunk[2], chunk[3]]) as usize),
                127 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&chunk[2..10]);
                    (10, u64::from_be_bytes(b) as usize)
                }
                n => (2, n as usize),
            };
            assert_eq!(chunk[0] & 0x8f, 0x81, "final text frames");
            let payload = &chunk[head..head + n];
            let text = if compressed(chunk) {
                crate::deflate::inflate(payload, 1 << 24)
                    .expect("inflates")
                    .to_vec()
            } else {
                payload.to_vec()
            };
            out.push(String::from_utf8(text).expect("utf-8"));
            chunk = &chunk[head + n..];
        }
        out
    }

    fn drain(frames: &[WsFrame], encoding: &Encoding) -> BytesMut {
        let mut out = BytesMut::new();
        let mut b = Batcher::new(encoding);
        for f in frames {
            b.push(&mut out, f);
        }
        b.finish(&mut out);
        out
    }

    /// Short and long frames mixed: some compressed, some stored, in every order.
    fn mixed() -> Vec<String> {
        [40, 1200, 1300, 90, 100, 5000, 30, 20_000, 70]
            .iter()
            .map(|&n| records(n))
            .collect()
    }

    #[test]
    fn without_batch_every_frame_is_its_own_message() {
        let texts = mixed();
        let frames: Vec<WsFrame> = texts.iter().map(|t| WsFrame::text(t)).collect();
        for deflate in [false, true] {
            let out = drain(&frames, &encoding(deflate, false));
            assert_eq!(messages(&out), texts, "deflate {deflate}");
        }
    }

    #[test]
    fn a_batch_joins_frames_with_newlines_plain_or_compressed() {
        let texts = mixed();
        let frames: Vec<WsFrame> = texts.iter().map(|t| WsFrame::text(t)).collect();
        let joined = texts.join("\n");
        for deflate in [false, true] {
            let out = drain(&frames, &encoding(deflate, true));
            assert_eq!(
                messages(&out),
                std::slice::from_ref(&joined),
                "deflate {deflate}"
            );
        }
        // Every order of compressed and stored neighbours, first and last included.
        for skip in 0..texts.len() {
            let some: Vec<&WsFrame> = frames
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != skip)
                .map(|(_, f)| f)
                .collect();
            let mut out = BytesMut::new();
            let enc = encoding(true, true);
            let mut b = Batcher::new(&enc);
            for f in some {
                b.push(&mut out, f);
            }
            b.finish(&mut out);
            let want: Vec<&str> = texts
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != skip)
                .map(|(_, t)| t.as_str())
                .collect();
            assert_eq!(messages(&out), [want.join("\n")], "without {skip}");
        }
    }

    #[test]
    fn only_short_frames_batch_uncompressed() {
        let texts: Vec<String> = (0..5).map(|i| records(60 + i)).collect();
        let frames: Vec<WsFrame> = texts.iter().map(|t| WsFrame::text(t)).collect();
        let out = drain(&frames, &encoding(true, true));
        assert_eq!(out[0], 0x81, "RSV1 clear: nothing in it was compressed");
        assert_eq!(messages(&out), [texts.join("\n")]);
    }

    #[test]
    fn batches_stop_at_max_batch_and_newlines_go_alone() {
        let texts: Vec<String> = (0..40).map(|_| records(5000)).collect();
        let mut frames: Vec<WsFrame> = texts.iter().map(|t| WsFrame::text(t)).collect();
        frames.insert(3, WsFrame::text("{\"a\":\n1}"));
        for deflate in [false, true] {
            let got = messages(&drain(&frames, &encoding(deflate, true)));
            assert!(
                got.iter().all(|m| m.len() <= MAX_BATCH),
                "deflate {deflate}"
            );
            assert_eq!(got[1], "{\"a\":\n1}", "a frame with a newline goes alone");
            let split: Vec<&str> = got
                .iter()
                .filter(|m| !m.starts_with("{\"a\""))
                .flat_map(|m| m.split('\n'))
                .collect();
            assert_eq!(split, texts.iter().map(String::as_str).collect::<Vec<_>>());
            assert!(got.len() < 10, "{} messages for 41 frames", got.len());
        }
    }

    #[test]
    fn stored_blocks_split_at_their_limit() {
        // Incompressible plain payloads longer than one stored block, next to a compressed one.
        let mut seed = 7u64;
        let noise: String = (0..70_000)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                char::from(b'!' + ((seed >> 33) % 90) as u8)
            })
            .filter(|c| *c != '"' && *c != '\\')
            .collect();
        let texts = [records(2000), format!("\"{noise}\""), records(3000)];
        let frames: Vec<WsFrame> = texts.iter().map(|t| WsFrame::text(t)).collect();
        let enc = encoding(true, true);
        // Below MAX_BATCH each: one message per frame would be fine too; the point is
        // that the stored run past 65535 bytes still inflates.
        let mut out = BytesMut::new();
        write(&mut out, &frames.iter().collect::<Vec<_>>(), &enc);
        assert_eq!(messages(&out), [texts.join("\n")]);
    }
}
