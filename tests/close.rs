//! The end of a WebSocket connection as RFC 6455 section 7.1.1 wants it: once the close
//! handshake is done, the server closes the TCP connection first, and promptly (clients such
//! as Python's `websockets` wait for it in every `close()`). Whoever closes first, the
//! client here then only reads, and must see the end of the stream (EOF, not a reset).
//!
//! The client speaks RFC 6455 over a raw TCP socket, because the moment the server closes
//! the connection is what is tested: WebSocket client libraries end their `close()` at the
//! Close frame without showing when the TCP connection ended.
//!
//! Before the fix, the server lingered until the client closed its side or about 1 s passed
//! (actix-web's `client_disconnect_timeout`, counted from a clock that is updated every
//! 500 ms, so it took 0.5 to 1 s); after it, the server closes within a millisecond or two.
//! [`PROMPT`] lies between the two, with two orders of magnitude of room for a busy machine.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{now, spawn_app, token, WAIT};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How soon after the close handshake the server must have closed the connection.
const PROMPT: Duration = Duration::from_millis(400);

const KEY: &str = "k-close";
const SECRET: &str = "close-secret";

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;

/// A WebSocket client on a raw socket: masked frames out, frames in, and the socket's end.
struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Opens `/ws{query}` and reads the `welcome` frame.
    async fn connect(addr: SocketAddr, query: &str) -> RawWs {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request = format!(
            "GET /ws{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
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
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        ws.buf.drain(..end);
        let (op, welcome) = ws.frame().await;
        assert_eq!(op, TEXT);
        assert!(welcome.starts_with(br#"{"type":"welcome""#), "{welcome:?}");
        ws
    }

    /// Reads more bytes; the server must not end the stream here.
    async fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
            .await
            .expect("read timeout")
            .expect("read");
        assert!(n > 0, "the server closed the connection early");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// The next frame from the server: opcode and payload.
    async fn frame(&mut self) -> (u8, Vec<u8>) {
        loop {
            if self.buf.len() >= 2 {
                assert_eq!(self.buf[1] & 0x80, 0, "the server masked a frame");
                let head = match self.buf[1] & 0x7f {
                    126 => 4,
                    127 => panic!("no frame of these tests is that long"),
                    _ => 2,
                };
                if self.buf.len() >= head {
                    let len = match head {
                        4 => u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize,
                        _ => (self.buf[1] & 0x7f) as usize,
                    };
                    if self.buf.len() >= head + len {
                        let op = self.buf[0] & 0x0f;
                        let payload = self.buf[head..head + len].to_vec();
                        self.buf.drain(..head + len);
                        return (op, payload);
                    }
                }
            }
            self.fill().await;
        }
    }

    /// Frames until the server's Close: the texts before it, and its code.
    async fn until_close(&mut self) -> (Vec<String>, u16) {
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

    /// Sends a masked frame.
    async fn send(&mut self, opcode: u8, payload: &[u8]) {
        self.stream
            .write_all(&masked(opcode, payload))
            .await
            .expect("write");
    }

    /// How long until the server ends the stream, reading nothing more, within `limit`.
    async fn eof_within(&mut self, limit: Duration) -> Duration {
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

/// A client frame: final, masked, with `payload` (under 126 bytes).
fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x5a, 0x0f, 0xc3, 0x81];
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    f
}

fn close_payload(code: u16) -> Vec<u8> {
    code.to_be_bytes().to_vec()
}

#[tokio::test]
async fn after_the_clients_close_the_server_closes_the_connection_at_once() {
    let s = spawn_app(&[]);
    let mut c = RawWs::connect(s.addr, "").await;
    c.send(CLOSE, &close_payload(1000)).await;
    let (texts, code) = c.until_close().await;
    assert_eq!((texts.len(), code), (0, 1000), "{texts:?}");
    let took = c.eof_within(PROMPT).await;
    println!("client closed: EOF {took:?} after the server's Close");

    // A Close sent right behind a command, in the same write: the reply, the Close, the end.
    let mut c = RawWs::connect(s.addr, "").await;
    let mut both = masked(TEXT, br#"{"type":"ping","id":1}"#);
    both.extend(masked(CLOSE, &close_payload(1000)));
    c.stream.write_all(&both).await.expect("write");
    let (texts, code) = c.until_close().await;
    assert_eq!(texts, [r#"{"type":"pong","id":1}"#]);
    assert_eq!(code, 1000);
    c.eof_within(PROMPT).await;
}

#[tokio::test]
async fn after_the_servers_close_and_the_clients_reply_the_server_closes_at_once() {
    let s = spawn_app(&[("api.keys", KEY), ("auth.hmac_secret", SECRET)]);
    let t = token(SECRET, json!({"sub":"carol","exp":now()+60}));
    let mut c = RawWs::connect(s.addr, &format!("?token={t}")).await;
    let (status, r) = s
        .api(
            "POST",
            "/api/disconnect",
            KEY,
            Some(json!({"user":"carol"})),
        )
        .await;
    assert_eq!((status, r.clone()), (200, json!({"disconnected":1})), "{r}");
    let (texts, code) = c.until_close().await;
    assert_eq!(code, 4003);
    assert!(
        texts
            .last()
            .is_some_and(|t| t.contains(r#""type":"disconnect""#)),
        "{texts:?}"
    );
    c.send(CLOSE, &close_payload(code)).await;
    let took = c.eof_within(PROMPT).await;
    println!("server closed (4003): EOF {took:?} after the client's reply");

    // A close for a protocol matter (a binary frame: 1003), answered the same way.
    let mut c = RawWs::connect(s.addr, "").await;
    c.send(BINARY, b"not JSON").await;
    let (_, code) = c.until_close().await;
    assert_eq!(code, 1003);
    c.send(CLOSE, &close_payload(code)).await;
    c.eof_within(PROMPT).await;
}

#[tokio::test]
async fn a_client_that_does_not_answer_the_close_is_given_time_then_closed() {
    let s = spawn_app(&[]);
    let mut c = RawWs::connect(s.addr, "").await;
    c.send(BINARY, b"not JSON").await;
    let (_, code) = c.until_close().await;
    assert_eq!(code, 1003);
    // The server waits for the client's Close (src/session/body.rs: 1 s), then closes anyway.
    let took = c.eof_within(WAIT).await;
    assert!(
        took >= Duration::from_millis(500),
        "the server closed {took:?} after its Close, without waiting for the client's"
    );
}
