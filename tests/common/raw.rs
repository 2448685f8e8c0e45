//! A WebSocket client on a raw TCP socket, for the tests where what crosses the wire is the
//! point: the moment the server ends the connection (tests/close.rs), and hostile input that
//! a client library would refuse to send (tests/hardening.rs): a handshake RFC 6455 forbids,
//! a frame header declaring more than the node accepts, a payload that never ends.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;

pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CONTINUE: u8 = 0x0;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
/// RSV1, "compressed" under permessage-deflate: added to an opcode.
pub const RSV1: u8 = 0x40;

/// The masking key of every frame sent here.
const MASK: [u8; 4] = [0x5a, 0x0f, 0xc3, 0x81];

/// A valid upgrade request for `/ws{query}`.
pub fn upgrade_request(addr: SocketAddr, query: &str) -> String {
    upgrade_request_with(addr, query, &[])
}

/// A valid upgrade request for `/ws{query}` with `headers` added, in order.
pub fn upgrade_request_with(addr: SocketAddr, query: &str, headers: &[(&str, &str)]) -> String {
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    format!(
        "GET /ws{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// One raw connection: masked frames out, frames in, and the socket's end. `S` is the
/// socket, or only its read half while another task writes.
pub struct RawWs<S = TcpStream> {
    pub stream: S,
    pub buf: Vec<u8>,
}

impl RawWs {
    /// Opens `/ws{query}` and reads the `welcome` frame.
    pub async fn connect(addr: SocketAddr, query: &str) -> RawWs {
        let (head, mut ws) = RawWs::request(addr, &upgrade_request(addr, query)).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let (op, welcome) = ws.frame().await;
        assert_eq!(op, TEXT);
        assert!(welcome.starts_with(br#"{"type":"welcome""#), "{welcome:?}");
        ws
    }

    /// Sends `request` as it is and reads the response head (up to its blank line); what
    /// follows it stays in the buffer.
    pub async fn request(addr: SocketAddr, request: &str) -> (String, RawWs) {
        let stream = TcpStream::connect(addr).await.expect("connect");
        RawWs::request_on(stream, request).await
    }

    /// [`RawWs::request`] on a socket whose receive buffer is only `bytes` (the kernel
    /// doubles it): what the server sends piles up in its own queues sooner.
    pub async fn request_small(addr: SocketAddr, request: &str, bytes: u32) -> (String, RawWs) {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        let stream = socket.connect(addr).await.expect("connect");
        RawWs::request_on(stream, request).await
    }

    async fn request_on(mut stream: TcpStream, request: &str) -> (String, RawWs) {
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut ws = RawWs {
            stream,
            buf: Vec::new(),
        };
        let end = loop {
            if let Some(i) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            ws.fill().await;
        };
        let head = String::from_utf8_lossy(&ws.buf[..end]).to_string();
        ws.buf.drain(..end);
        (head, ws)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawWs<S> {
    /// Sends a final masked frame.
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) {
        self.stream
            .write_all(&masked(opcode, true, payload))
            .await
            .expect("write");
    }
}

impl<S: AsyncRead + Unpin> RawWs<S> {
    /// Reads more bytes; the server must not end the stream here.
    pub async fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
            .await
            .expect("read timeout")
            .expect("read");
        assert!(n > 0, "the server closed the connection early");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// The next frame from the server: opcode and payload.
    pub async fn frame(&mut self) -> (u8, Vec<u8>) {
        let (first, payload) = self.whole_frame().await;
        (first & 0x0f, payload)
    }

    /// The next frame from the server: its first byte (FIN, RSV1-3, opcode) and payload.
    pub async fn whole_frame(&mut self) -> (u8, Vec<u8>) {
        loop {
            if self.buf.len() >= 2 {
                assert_eq!(self.buf[1] & 0x80, 0, "the server masked a frame");
                let head = match self.buf[1] & 0x7f {
                    126 => 4,
                    127 => 10,
                    _ => 2,
                };
                if self.buf.len() >= head {
                    let len = match head {
                        4 => u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize,
                        10 => {
                            let mut n = [0u8; 8];
                            n.copy_from_slice(&self.buf[2..10]);
                            usize::try_from(u64::from_be_bytes(n)).expect("a sane length")
                        }
                        _ => (self.buf[1] & 0x7f) as usize,
                    };
                    if self.buf.len() >= head + len {
                        let first = self.buf[0];
                        let payload = self.buf[head..head + len].to_vec();
                        self.buf.drain(..head + len);
                        return (first, payload);
                    }
                }
            }
            self.fill().await;
        }
    }

    /// The next text frame, skipping control frames other than Close (which fails).
    pub async fn text(&mut self) -> String {
        loop {
            match self.frame().await {
                (TEXT, p) => return String::from_utf8(p).expect("UTF-8"),
                (CLOSE, p) => panic!("closed: {p:?}"),
                _ => {}
            }
        }
    }

    /// Frames until the server's Close: the texts before it, and its code.
    pub async fn until_close(&mut self) -> (Vec<String>, u16) {
        let mut texts = Vec::new();
        loop {
            match self.frame().await {
                (CLOSE, p) => {
                    assert!(p.len() >= 2, "Close without a code");
                    return (texts, u16::from_be_bytes([p[0], p[1]]));
                }
                (TEXT, p) => texts.push(String::from_utf8(p).expect("UTF-8")),
                _ => {}
            }
        }
    }

    /// How long until the server ends the stream, reading nothing more, within `limit`.
    pub async fn eof_within(&mut self, limit: Duration) -> Duration {
        assert!(self.buf.is_empty(), "bytes after the Close: {:?}", self.buf);
        let start = Instant::now();
        let mut chunk = [0u8; 64];
        match tokio::time::timeout(limit, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) => start.elapsed(),
            Ok(Ok(n)) => panic!("bytes after the Close: {:?}", &chunk[..n]),
            Ok(Err(e)) => panic!("the connection ended with an error, not an EOF: {e}"),
            Err(_) => panic!(
                "the server had not closed the connection {limit:?} after the close handshake"
            ),
        }
    }
}

/// The header of a masked client frame declaring `len` payload bytes (any length RFC 6455
/// can express, whether or not the payload ever follows). `opcode` may carry RSV bits.
pub fn header(opcode: u8, fin: bool, len: u64) -> Vec<u8> {
    let mut f = vec![if fin { 0x80 | opcode } else { opcode }];
    match len {
        0..=125 => f.push(0x80 | len as u8),
        126..=0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            f.push(0x80 | 127);
            f.extend_from_slice(&len.to_be_bytes());
        }
    }
    f.extend_from_slice(&MASK);
    f
}

/// A whole masked client frame.
pub fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = header(opcode, fin, payload.len() as u64);
    f.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m));
    f
}

/// What a client does with a compressed message from the server (RFC 7692, 7.2.2): flate2
/// here, not the server's own code.
pub fn inflate(payload: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::new();
    let mut d = flate2::read::DeflateDecoder::new(&input[..]);
    // The stream has no final block: reading ends with an "unexpected end" once all of the
    // message is out.
    match d.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => panic!("the server's compressed message does not inflate: {e}"),
    }
    out
}

/// A Close frame's payload: the code alone.
pub fn close_payload(code: u16) -> Vec<u8> {
    code.to_be_bytes().to_vec()
}
