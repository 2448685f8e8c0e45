//! A WebSocket frame reader and writer straight on the socket (RFC 6455), for the
//! subscribers' receive loop (`load::subscriber`): tungstenite's per-message cost made the
//! load generator, not the server, the limit above about 3 M deliveries/s.

use crate::cli::MAX_SIZE;
use crate::Res;

/// Where a subscriber's raw reader stands: bytes read but not yet parsed, and a fragmented
/// message being put together.
pub struct RawReader {
    pub buf: Vec<u8>,
    pub start: usize,
    pub end: usize,
    pub fragments: Vec<u8>,
    pub fragment_op: u8,
}

/// One complete WebSocket message, or what ends the connection.
pub enum RawEvent<'a> {
    Text(&'a [u8]),
    Binary(&'a [u8]),
    Ping(&'a [u8]),
    Close(String),
}

impl RawReader {
    pub fn new() -> Self {
        RawReader {
            buf: vec![0; 256 * 1024],
            start: 0,
            end: 0,
            fragments: Vec::new(),
            fragment_op: 0,
        }
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
            if b[1] & 0x80 != 0 {
                return Err("the server sent a masked frame".into());
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
            if len > MAX_SIZE * 4 {
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
                (0x1, true) => f(RawEvent::Text(payload)),
                (0x2, true) => f(RawEvent::Binary(payload)),
                (0x1 | 0x2, false) => {
                    self.fragment_op = op;
                    self.fragments.clear();
                    self.fragments.extend_from_slice(payload);
                    true
                }
                (0x0, _) => {
                    self.fragments.extend_from_slice(payload);
                    if fin {
                        let whole = std::mem::take(&mut self.fragments);
                        let go_on = if self.fragment_op == 0x1 {
                            f(RawEvent::Text(&whole))
                        } else {
                            f(RawEvent::Binary(&whole))
                        };
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
        let mut r = RawReader::new();
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
}
