//! A WebSocket frame reader and writer straight on the socket (RFC 6455), for the
//! subscribers' receive loop (`load::subscriber`) and the set-up of connections whose first
//! frames may be compressed (`setup`): tungstenite's per-message cost made the load
//! generator, not the server, the limit above about 3 M deliveries/s, and tungstenite has no
//! permessage-deflate. Compressed messages (RSV1, RFC 7692) are inflated with `super::inflate`.

use super::inflate::{inflate_message, with_shared_inflate};
use crate::cli::MAX_SIZE;
use crate::Res;

/// A subscriber's read buffer: room for many deliveries per read.
pub const SUBSCRIBER_BUF: usize = 256 * 1024;

/// The largest message (inflated) or frame the reader accepts.
const MAX_MESSAGE: usize = MAX_SIZE * 4;

/// Where a subscriber's raw reader stands: bytes read but not yet parsed, a fragmented
/// message being put together, and what it has seen of the messages.
pub struct RawReader {
    pub buf: Vec<u8>,
    pub start: usize,
    pub end: usize,
    pub fragments: Vec<u8>,
    pub fragment_op: u8,
    /// The fragmented message being put together came with RSV1 (compressed).
    pub fragment_compressed: bool,
    /// permessage-deflate was negotiated: RSV1 is allowed on a message's first frame.
    pub deflate: bool,
    /// Identical compressed messages are inflated once per thread (`--inflate shared`).
    pub shared_inflate: bool,
    /// The last compressed message, inflated.
    pub inflated: Vec<u8>,
    /// Data messages parsed, how many of them were compressed, and their bytes (as the
    /// application sees them, after inflating), since the counters were last taken.
    pub counts: MessageCounts,
}

#[derive(Default, Clone, Copy, Debug, PartialEq)]
pub struct MessageCounts {
    pub messages: u64,
    pub compressed: u64,
    /// Compressed messages actually inflated (all of them, unless `shared_inflate`).
    pub inflated: u64,
    pub bytes: u64,
}

/// One complete WebSocket message, or what ends the connection.
pub enum RawEvent<'a> {
    Text(&'a [u8]),
    Binary(&'a [u8]),
    Ping(&'a [u8]),
    Close(String),
}

impl RawReader {
    /// A reader for a subscriber: room for many deliveries per read.
    pub fn new(deflate: bool) -> Self {
        Self::with_capacity(SUBSCRIBER_BUF, deflate)
    }

    /// A reader with `cap` bytes of buffer (it grows for a frame that does not fit).
    pub fn with_capacity(cap: usize, deflate: bool) -> Self {
        RawReader {
            buf: vec![0; cap],
            start: 0,
            end: 0,
            fragments: Vec::new(),
            fragment_op: 0,
            fragment_compressed: false,
            deflate,
            shared_inflate: false,
            inflated: Vec::new(),
            counts: MessageCounts::default(),
        }
    }

    /// Bytes read and not parsed yet.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Appends bytes read elsewhere (what followed the handshake's answer).
    pub fn push(&mut self, data: &[u8]) {
        if self.buf.len() - self.end < data.len() {
            self.buf.resize(self.end + data.len(), 0);
        }
        self.buf[self.end..self.end + data.len()].copy_from_slice(data);
        self.end += data.len();
    }

    /// The free part of the buffer, for the next read; grows it when it is full.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.end == self.buf.len() {
            let more = self.buf.len().max(4096);
            self.buf.resize(self.buf.len() + more, 0);
        }
        &mut self.buf[self.end..]
    }

    /// The message counters since the last call, reset.
    pub fn take_counts(&mut self) -> MessageCounts {
        std::mem::take(&mut self.counts)
    }

    /// Parses every complete frame buffered; `f` returns false to stop early (then the
    /// rest stays buffered). Errors on what a server must not send (a masked frame).
    pub fn parse(&mut self, mut f: impl FnMut(RawEvent<'_>) -> bool) -> Res<()> {
        loop {
            let b = &self.buf[self.start..self.end];
            if b.len() < 2 {
                break;
            }
            let (fin, op) = (b[0] & 0x80 != 0, b[0] & 0x0f);
            let rsv1 = b[0] & 0x40 != 0;
            if b[1] & 0x80 != 0 {
                return Err("the server sent a masked frame".into());
            }
            if b[0] & 0x30 != 0 {
                return Err("the server set RSV2 or RSV3".into());
            }
            // RFC 7692 6.1: RSV1 only on the first frame of a data message, and only when
            // the extension was negotiated.
            if rsv1 && (!self.deflate || !matches!(op, 0x1 | 0x2)) {
                return Err(format!("RSV1 on a frame with opcode {op:#x}").into());
            }
            let (len, head) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 if b.len() >= 10 => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&b[2..10]);
                    (u64::from_be_bytes(n) as usize, 10)
                }
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if len > MAX_MESSAGE {
                return Err(format!("frame of {len} bytes").into());
            }
            if b.len() < head + len {
                let need = head + len;
                if need > self.buf.len() {
                    self.buf.resize(need, 0);
                }
                break;
            }
            let payload = &b[head..head + len];
            self.start += head + len;
            let go_on = match (op, fin) {
                (0x1 | 0x2, true) => {
                    let (shared, counts) = (self.shared_inflate, &mut self.counts);
                    message(
                        op,
                        rsv1,
                        payload,
                        shared,
                        &mut self.inflated,
                        counts,
                        &mut f,
                    )?
                }
                (0x1 | 0x2, false) => {
                    self.fragment_op = op;
                    self.fragment_compressed = rsv1;
                    self.fragments.clear();
                    self.fragments.extend_from_slice(payload);
                    true
                }
                (0x0, _) => {
                    self.fragments.extend_from_slice(payload);
                    if self.fragments.len() > MAX_MESSAGE {
                        return Err("a fragmented message past the size limit".into());
                    }
                    if fin {
                        let whole = std::mem::take(&mut self.fragments);
                        let go_on = message(
                            self.fragment_op,
                            self.fragment_compressed,
                            &whole,
                            self.shared_inflate,
                            &mut self.inflated,
                            &mut self.counts,
                            &mut f,
                        )?;
                        self.fragments = whole;
                        go_on
                    } else {
                        true
                    }
                }
                (0x8, _) => {
                    let why = if payload.len() >= 2 {
                        let code = u16::from_be_bytes([payload[0], payload[1]]);
                        format!("close {code} {}", String::from_utf8_lossy(&payload[2..]))
                    } else {
                        "close".to_string()
                    };
                    f(RawEvent::Close(why));
                    false
                }
                (0x9, _) => f(RawEvent::Ping(payload)),
                _ => true,
            };
            if !go_on {
                return Ok(());
            }
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && self.buf.len() - self.end < 16 * 1024 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        Ok(())
    }
}

/// Hands one whole data message to `f` (inflated first when `compressed`, through the
/// per-thread memory of recent messages when `shared`) and counts it.
fn message(
    op: u8,
    compressed: bool,
    data: &[u8],
    shared: bool,
    scratch: &mut Vec<u8>,
    counts: &mut MessageCounts,
    f: &mut impl FnMut(RawEvent<'_>) -> bool,
) -> Res<bool> {
    counts.messages += 1;
    counts.compressed += u64::from(compressed);
    let mut call = |msg: &[u8]| {
        let ev = if op == 0x1 {
            RawEvent::Text(msg)
        } else {
            RawEvent::Binary(msg)
        };
        (f(ev), msg.len() as u64)
    };
    let ((go_on, len), inflated) = if !compressed {
        (call(data), false)
    } else if shared {
        with_shared_inflate(data, MAX_MESSAGE, scratch, call)?
    } else {
        inflate_message(data, MAX_MESSAGE, scratch)?;
        (call(scratch), true)
    };
    counts.bytes += len;
    counts.inflated += u64::from(inflated);
    Ok(go_on)
}

/// A masked client frame (RFC 6455 5.3; the key need not be secret towards our own server).
pub fn client_frame(op: u8, payload: &[u8]) -> Vec<u8> {
    const KEY: [u8; 4] = [0x5b, 0x1f, 0x93, 0x2e];
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | op);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&KEY);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Server frames as actix sends them: unmasked, 7-bit and 16-bit lengths, a ping, a
    /// fragmented message and a close, fed in small pieces.
    #[test]
    fn raw_reader_parses_split_frames() {
        fn server_frame(first: u8, payload: &[u8]) -> Vec<u8> {
            let mut out = vec![first];
            if payload.len() < 126 {
                out.push(payload.len() as u8);
            } else {
                out.push(126);
                out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            }
            out.extend_from_slice(payload);
            out
        }
        let big = vec![b'x'; 300];
        let mut wire = Vec::new();
        wire.extend(server_frame(0x81, b"hello"));
        wire.extend(server_frame(0x82, &big));
        wire.extend(server_frame(0x89, b"p"));
        wire.extend(server_frame(0x01, b"ab"));
        wire.extend(server_frame(0x80, b"cd"));
        wire.extend(server_frame(0x88, b"\x0f\xa1bye"));
        wire.extend(server_frame(0x81, b"after close"));
        let mut r = RawReader::new(false);
        let mut seen = Vec::new();
        for chunk in wire.chunks(7) {
            r.buf[r.end..r.end + chunk.len()].copy_from_slice(chunk);
            r.end += chunk.len();
            r.parse(|ev| {
                let (label, go_on) = match ev {
                    RawEvent::Text(t) => (format!("text {}", String::from_utf8_lossy(t)), true),
                    RawEvent::Binary(b) => (format!("binary {}", b.len()), true),
                    RawEvent::Ping(p) => (format!("ping {}", String::from_utf8_lossy(p)), true),
                    RawEvent::Close(why) => (why, false),
                };
                seen.push(label);
                go_on
            })
            .unwrap();
            if seen.last().is_some_and(|l| l.starts_with("close")) {
                break;
            }
        }
        assert_eq!(
            seen,
            [
                "text hello",
                "binary 300",
                "ping p",
                "text abcd",
                "close 4001 bye"
            ]
        );
        let masked = client_frame(0x1, b"hi");
        assert_eq!(masked[1], 0x80 | 2);
        assert_eq!(masked[6] ^ masked[2], b'h');
    }

    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        if payload.len() < 126 {
            out.push(payload.len() as u8);
        } else {
            out.push(126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(payload);
        out
    }

    fn deflated(text: &[u8]) -> Vec<u8> {
        use flate2::{Compress, Compression, FlushCompress};
        let mut c = Compress::new(Compression::new(3), false);
        let mut out = Vec::with_capacity(text.len() + 64);
        c.compress_vec(text, &mut out, FlushCompress::Sync).unwrap();
        out.truncate(out.len() - 4);
        out
    }

    fn texts(r: &mut RawReader, wire: &[u8]) -> Res<Vec<String>> {
        let mut seen = Vec::new();
        for chunk in wire.chunks(5) {
            r.push(chunk);
            r.parse(|ev| {
                if let RawEvent::Text(t) = ev {
                    seen.push(String::from_utf8_lossy(t).into_owned());
                }
                true
            })?;
        }
        Ok(seen)
    }

    /// Compressed messages (RSV1 on the first frame) come out inflated, whole or
    /// fragmented, between uncompressed ones and control frames; the counters see them.
    #[test]
    fn raw_reader_inflates_compressed_messages() {
        let a = r#"{"type":"message","channel":"c","offset":1,"data":{"stamp":"t=5 s=0","orders":[1,2,3,1,2,3]}}"#;
        let b = r#"{"type":"message","channel":"c","offset":2,"data":{"stamp":"t=6 s=1","orders":[4,5,6,4,5,6]}}"#;
        let (za, zb) = (deflated(a.as_bytes()), deflated(b.as_bytes()));
        let mut wire = frame(0x81 | 0x40, &za);
        wire.extend(frame(0x81, b"plain"));
        wire.extend(frame(0x01 | 0x40, &zb[..7]));
        wire.extend(frame(0x89, b"ping"));
        wire.extend(frame(0x80, &zb[7..]));
        let mut r = RawReader::new(true);
        assert_eq!(texts(&mut r, &wire).unwrap(), [a, "plain", b]);
        let c = r.take_counts();
        assert_eq!((c.messages, c.compressed), (3, 2));
        assert_eq!(c.bytes as usize, a.len() + b.len() + 5);
        assert_eq!(r.take_counts(), MessageCounts::default());
    }

    /// RSV1 where the extension was not negotiated, on a continuation or a control frame,
    /// and RSV2, are protocol errors; so is a compressed payload that is not deflate.
    #[test]
    fn raw_reader_refuses_misplaced_rsv_bits() {
        let z = deflated(b"hello");
        assert!(texts(&mut RawReader::new(false), &frame(0xC1, &z)).is_err());
        let mut frag = frame(0x41, &z[..2]);
        frag.extend(frame(0xC0, &z[2..]));
        assert!(texts(&mut RawReader::new(true), &frag).is_err());
        assert!(texts(&mut RawReader::new(true), &frame(0xC9, b"")).is_err());
        assert!(texts(&mut RawReader::new(true), &frame(0xA1, b"x")).is_err());
        assert!(texts(&mut RawReader::new(true), &frame(0xC1, &[0x07, 0x00])).is_err());
        assert_eq!(
            texts(&mut RawReader::new(true), &frame(0xC1, &z)).unwrap(),
            ["hello"]
        );
    }
}
