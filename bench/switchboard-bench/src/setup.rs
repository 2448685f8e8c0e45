//! Bringing one connection to the point where the measurement starts: handshake, the
//! server's greeting, and (with a channel) a confirmed subscription, in either protocol.
//! `load` and `idle` open every connection through `setup_conn` and gather the outcomes with
//! `count_ready`.
//!
//! With `--compress` a Switchboard connection is still set up through tungstenite: the
//! server sends what is shorter than `compression.min_size` (256 B) uncompressed, and its
//! `welcome` and `subscribed` are, so tungstenite, which refuses RSV1, reads them as before.
//! A NATS server compresses its first frame (`INFO`, about 300 B) as soon as the extension is
//! on, so a compressed NATS connection is set up on the raw frame reader, which inflates.

use std::fmt::Write as _;
use std::net::IpAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout_at;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::Protocol;
use crate::net::{into_ws, open, Endpoint, Link, Ws};
use crate::wire::nats::{nats_frame, NatsEvent, NatsParser, NATS_CONNECT};
use crate::wire::raw::{client_frame, RawEvent, RawReader, SUBSCRIBER_BUF};
use crate::wire::switchboard::sb_type;
use crate::Res;

/// How a connection is opened.
#[derive(Clone, Copy)]
pub struct ConnOpts {
    /// Offer permessage-deflate and insist that it is accepted (`--compress`).
    pub compress: bool,
    /// The URL asks for batched frames (`--batch`): a text message may hold several frames,
    /// one a line.
    pub batch: bool,
    /// Large read and write buffers (a subscriber or publisher), or small ones (idle).
    pub big: bool,
}

impl ConnOpts {
    /// The publisher's and the flood's connections: no extension, no batching.
    pub const PLAIN: ConnOpts = ConnOpts {
        compress: false,
        batch: false,
        big: true,
    };
}

/// A connection once set up: in tungstenite, or on the raw reader holding whatever it read
/// past the set-up's last reply.
pub enum Conn {
    Ws(Ws),
    Raw {
        stream: TcpStream,
        reader: RawReader,
    },
}

impl Conn {
    /// The connection in tungstenite, for what reads uncompressed frames only (the publisher,
    /// idle connections). Nothing read is lost.
    pub async fn into_ws(self, big: bool) -> Ws {
        match self {
            Conn::Ws(ws) => ws,
            Conn::Raw { stream, reader } => into_ws(stream, reader.pending().to_vec(), big).await,
        }
    }

    /// The socket and a raw reader for a subscriber. From tungstenite, the socket alone: the
    /// set-up's last reply is the last frame the server sends before the publisher starts,
    /// so tungstenite holds nothing unread (anything lost would show as a loss anyway).
    pub fn into_raw(self, deflate: bool) -> (TcpStream, RawReader) {
        match self {
            Conn::Ws(ws) => (ws.into_inner(), RawReader::new(deflate)),
            Conn::Raw { stream, mut reader } => {
                if reader.buf.len() < SUBSCRIBER_BUF {
                    reader.buf.resize(SUBSCRIBER_BUF, 0);
                }
                (stream, reader)
            }
        }
    }
}

pub fn describe_close(m: &Message) -> String {
    match m {
        Message::Close(Some(cf)) => format!("close {} {}", u16::from(cf.code), cf.reason),
        Message::Close(None) => "close".into(),
        _ => "unexpected".into(),
    }
}

/// Reads Switchboard frames until one of type `want`; an `error` frame or a close fails.
/// With `batch`, a text message is split into its lines first.
pub async fn sb_expect(
    ws: &mut Ws,
    want: &str,
    batch: bool,
    deadline: tokio::time::Instant,
) -> Res<()> {
    loop {
        let m = timeout_at(deadline, ws.next())
            .await
            .map_err(|_| format!("timed out waiting for {want}"))?
            .ok_or("connection closed")??;
        match &m {
            Message::Text(t) => {
                let text = t.as_str();
                let frames: Vec<&str> = if batch {
                    text.split('\n').collect()
                } else {
                    vec![text]
                };
                for frame in frames {
                    let ty = sb_type(frame);
                    if ty == want {
                        return Ok(());
                    }
                    if ty == "error" || ty == "disconnect" {
                        return Err(format!("waiting for {want}: {frame}").into());
                    }
                }
            }
            Message::Close(_) => return Err(describe_close(&m).into()),
            _ => {}
        }
    }
}

/// Reads NATS frames until a PONG (the answer to the PING sent after CONNECT/SUB).
pub async fn nats_expect_pong(
    ws: &mut Ws,
    parser: &mut NatsParser,
    deadline: tokio::time::Instant,
) -> Res<()> {
    loop {
        let m = timeout_at(deadline, ws.next())
            .await
            .map_err(|_| "timed out waiting for PONG")?
            .ok_or("connection closed")??;
        let data = match m {
            Message::Binary(b) => b.to_vec(),
            Message::Text(t) => t.as_str().as_bytes().to_vec(),
            Message::Close(_) => return Err(describe_close(&m).into()),
            _ => continue,
        };
        let mut pong = false;
        let mut ping = false;
        let mut err = None;
        parser.feed(&data, |ev| match ev {
            NatsEvent::Pong => pong = true,
            NatsEvent::Ping => ping = true,
            NatsEvent::Err(e) => err = Some(e),
            _ => {}
        })?;
        if let Some(e) = err {
            return Err(e.into());
        }
        if ping {
            ws.send(nats_frame("PONG\r\n")).await?;
        }
        if pong {
            return Ok(());
        }
    }
}

/// Opens a connection and, with `channel`, subscribes it; returns once the server confirmed.
pub async fn setup_conn(
    ep: &Endpoint,
    proto: Protocol,
    channel: Option<&str>,
    source: Option<IpAddr>,
    opts: ConnOpts,
    deadline: tokio::time::Instant,
) -> Res<(Conn, NatsParser)> {
    let link = timeout_at(deadline, open(ep, proto, source, opts.big, opts.compress))
        .await
        .map_err(|_| "timed out connecting")??;
    let mut parser = NatsParser::default();
    let mut ws = match (proto, link) {
        (Protocol::Nats, Link::Upgraded { stream, after }) => {
            return nats_setup_raw(stream, &after, channel, deadline).await;
        }
        (_, Link::Ws(ws)) => ws,
        (Protocol::Switchboard, Link::Upgraded { stream, after }) => {
            into_ws(stream, after, opts.big).await
        }
    };
    match proto {
        Protocol::Switchboard => {
            sb_expect(&mut ws, "welcome", opts.batch, deadline).await?;
            if let Some(ch) = channel {
                let cmd = format!("{{\"type\":\"subscribe\",\"id\":1,\"channel\":\"{ch}\"}}");
                ws.send(Message::text(cmd)).await?;
                sb_expect(&mut ws, "subscribed", opts.batch, deadline).await?;
            }
        }
        Protocol::Nats => {
            ws.send(nats_frame(&nats_hello(channel))).await?;
            nats_expect_pong(&mut ws, &mut parser, deadline).await?;
        }
    }
    Ok((Conn::Ws(ws), parser))
}

/// CONNECT, SUB (with a channel) and the PING whose PONG says both were taken.
fn nats_hello(channel: Option<&str>) -> String {
    let mut hello = String::from(NATS_CONNECT);
    if let Some(ch) = channel {
        let _ = write!(hello, "SUB {ch} 1\r\n");
    }
    hello.push_str("PING\r\n");
    hello
}

/// The NATS set-up on the raw reader (a compressed connection): up to the PONG, leaving
/// what follows it unparsed in the reader.
async fn nats_setup_raw(
    mut stream: TcpStream,
    after: &[u8],
    channel: Option<&str>,
    deadline: tokio::time::Instant,
) -> Res<(Conn, NatsParser)> {
    let mut reader = RawReader::with_capacity(8 * 1024, true);
    reader.push(after);
    let mut parser = NatsParser::default();
    stream
        .write_all(&client_frame(0x2, nats_hello(channel).as_bytes()))
        .await?;
    loop {
        let (mut pong, mut err, mut closed) = (false, None, None);
        let mut replies: Vec<Vec<u8>> = Vec::new();
        reader.parse(|ev| {
            match ev {
                RawEvent::Binary(b) | RawEvent::Text(b) => {
                    let fed = parser.feed(b, |ev| match ev {
                        NatsEvent::Pong => pong = true,
                        NatsEvent::Ping => replies.push(client_frame(0x2, b"PONG\r\n")),
                        NatsEvent::Err(e) => err = Some(e),
                        _ => {}
                    });
                    if let Err(e) = fed {
                        err = Some(e.to_string());
                    }
                }
                RawEvent::Ping(p) => replies.push(client_frame(0xA, p)),
                RawEvent::Close(why) => closed = Some(why),
            }
            !pong && err.is_none() && closed.is_none()
        })?;
        reader.take_counts();
        if let Some(e) = err.or(closed) {
            return Err(e.into());
        }
        for r in replies {
            stream.write_all(&r).await?;
        }
        if pong {
            return Ok((Conn::Raw { stream, reader }, parser));
        }
        let n = timeout_at(deadline, stream.read(reader.spare()))
            .await
            .map_err(|_| "timed out waiting for PONG")??;
        if n == 0 {
            return Err("connection closed".into());
        }
        reader.end += n;
    }
}

/// Waits until `n` connections reported their set-up (or every sender is gone): how many
/// are ready, how many failed, and the first failure.
pub async fn count_ready(
    rx: &mut mpsc::UnboundedReceiver<Result<(), String>>,
    n: usize,
) -> (usize, usize, Option<String>) {
    let (mut ready, mut failed, mut first_error) = (0, 0, None);
    while ready + failed < n {
        match rx.recv().await {
            Some(Ok(())) => ready += 1,
            Some(Err(e)) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            None => break,
        }
    }
    (ready, failed, first_error)
}
