//! Bringing one connection to the point where the measurement starts: handshake, the
//! server's greeting, and (with a channel) a confirmed subscription, in either protocol.
//! `load` and `idle` open every connection through `setup_conn` and gather the outcomes with
//! `count_ready`.

use std::fmt::Write as _;
use std::net::IpAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::timeout_at;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::Protocol;
use crate::net::{open, Endpoint, Ws};
use crate::wire::nats::{nats_frame, NatsEvent, NatsParser, NATS_CONNECT};
use crate::wire::switchboard::sb_type;
use crate::Res;

pub fn describe_close(m: &Message) -> String {
    match m {
        Message::Close(Some(cf)) => format!("close {} {}", u16::from(cf.code), cf.reason),
        Message::Close(None) => "close".into(),
        _ => "unexpected".into(),
    }
}

/// Reads Switchboard frames until one of type `want`; an `error` frame or a close fails.
pub async fn sb_expect(ws: &mut Ws, want: &str, deadline: tokio::time::Instant) -> Res<()> {
    loop {
        let m = timeout_at(deadline, ws.next())
            .await
            .map_err(|_| format!("timed out waiting for {want}"))?
            .ok_or("connection closed")??;
        match &m {
            Message::Text(t) => {
                let ty = sb_type(t.as_str());
                if ty == want {
                    return Ok(());
                }
                if ty == "error" || ty == "disconnect" {
                    return Err(format!("waiting for {want}: {}", t.as_str()).into());
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
    big: bool,
    deadline: tokio::time::Instant,
) -> Res<(Ws, NatsParser)> {
    let mut ws = timeout_at(deadline, open(ep, proto, source, big))
        .await
        .map_err(|_| "timed out connecting")??;
    let mut parser = NatsParser::default();
    match proto {
        Protocol::Switchboard => {
            sb_expect(&mut ws, "welcome", deadline).await?;
            if let Some(ch) = channel {
                let cmd = format!("{{\"type\":\"subscribe\",\"id\":1,\"channel\":\"{ch}\"}}");
                ws.send(Message::text(cmd)).await?;
                sb_expect(&mut ws, "subscribed", deadline).await?;
            }
        }
        Protocol::Nats => {
            let mut hello = String::from(NATS_CONNECT);
            if let Some(ch) = channel {
                let _ = write!(hello, "SUB {ch} 1\r\n");
            }
            hello.push_str("PING\r\n");
            ws.send(nats_frame(&hello)).await?;
            nats_expect_pong(&mut ws, &mut parser, deadline).await?;
        }
    }
    Ok((ws, parser))
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
