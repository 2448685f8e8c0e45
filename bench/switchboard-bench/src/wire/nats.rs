//! The NATS text protocol over WebSocket, server side read incrementally (`NatsParser`),
//! client side as binary frames (`nats_frame`). Used by `setup`, the publisher, the
//! subscribers and idle connections when `--protocol nats`.

use tokio_tungstenite::tungstenite::Message;

use super::find;
use crate::Res;

pub enum NatsEvent<'a> {
    Msg(&'a [u8]),
    Ping,
    Pong,
    Info,
    Err(String),
    Other,
}

/// Incremental parser for the server side of the NATS text protocol (frames may split or
/// join protocol messages anywhere).
#[derive(Default)]
pub struct NatsParser {
    pub buf: Vec<u8>,
}

impl NatsParser {
    pub fn feed(&mut self, data: &[u8], mut f: impl FnMut(NatsEvent<'_>)) -> Res<()> {
        self.buf.extend_from_slice(data);
        let mut pos = 0;
        loop {
            let rest = &self.buf[pos..];
            let Some(eol) = find(rest, b"\r\n") else {
                break;
            };
            let line = &rest[..eol];
            if line.starts_with(b"MSG ") {
                let n: usize = std::str::from_utf8(line)
                    .ok()
                    .and_then(|l| l.rsplit(' ').next())
                    .and_then(|n| n.parse().ok())
                    .ok_or("bad MSG line")?;
                let need = eol + 2 + n + 2;
                if rest.len() < need {
                    break;
                }
                f(NatsEvent::Msg(&rest[eol + 2..eol + 2 + n]));
                pos += need;
                continue;
            }
            let ev = if line == b"PING" {
                NatsEvent::Ping
            } else if line == b"PONG" {
                NatsEvent::Pong
            } else if line.starts_with(b"INFO") {
                NatsEvent::Info
            } else if line.starts_with(b"-ERR") {
                NatsEvent::Err(String::from_utf8_lossy(line).into_owned())
            } else {
                NatsEvent::Other
            };
            f(ev);
            pos += eol + 2;
        }
        self.buf.drain(..pos);
        Ok(())
    }
}

pub const NATS_CONNECT: &str =
    "CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"switchboard-bench\"}\r\n";

pub fn nats_frame(s: &str) -> Message {
    Message::binary(s.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_parser_handles_split_frames() {
        let mut p = NatsParser::default();
        let mut msgs = Vec::new();
        let mut pings = 0;
        let stream = b"INFO {}\r\nMSG a.b 1 5\r\nhello\r\nPING\r\nMSG a 1 2\r\nhi\r\n";
        for chunk in stream.chunks(3) {
            p.feed(chunk, |ev| match ev {
                NatsEvent::Msg(m) => msgs.push(m.to_vec()),
                NatsEvent::Ping => pings += 1,
                _ => {}
            })
            .unwrap();
        }
        assert_eq!(msgs, vec![b"hello".to_vec(), b"hi".to_vec()]);
        assert_eq!(pings, 1);
    }
}
