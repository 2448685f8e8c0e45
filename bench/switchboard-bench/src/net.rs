//! Where the load goes: a `ws://` URL checked to be loopback, and the TCP connection and
//! WebSocket handshake to it: tungstenite's, or with `--compress` our own, which offers
//! permessage-deflate (RFC 7692) and hands back the bytes that came after the answer (a NATS
//! server's first frame, compressed, can arrive with it, and tungstenite would keep it and
//! refuse it). `setup` opens every connection through here.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::cli::Protocol;
use crate::wire::switchboard::SUBPROTOCOL;
use crate::Res;

pub type Ws = WebSocketStream<TcpStream>;

pub struct Endpoint {
    pub url: String,
    pub addr: SocketAddr,
}

/// Parses a `ws://` URL and refuses anything that is not a loopback address. Host names other
/// than `localhost` are refused without being looked up.
pub fn resolve(url: &str) -> Res<Endpoint> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or("only ws:// URLs to a loopback address are accepted")?;
    let hostport = rest.split(['/', '?']).next().unwrap_or("");
    let addrs: Vec<SocketAddr> = if let Ok(a) = hostport.parse::<SocketAddr>() {
        vec![a]
    } else {
        let (host, port) = hostport
            .rsplit_once(':')
            .ok_or("the URL must give a port (ws://127.0.0.1:PORT/...)")?;
        if !host.eq_ignore_ascii_case("localhost") {
            return Err(format!(
                "refusing target {hostport:?}: only 127.0.0.0/8, ::1 or localhost are allowed"
            )
            .into());
        }
        let port: u16 = port.parse().map_err(|_| "bad port in URL")?;
        ("localhost", port).to_socket_addrs()?.collect()
    };
    if addrs.is_empty() {
        return Err("the URL resolves to no address".into());
    }
    if let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        return Err(format!("refusing non-loopback target {a}").into());
    }
    Ok(Endpoint {
        url: url.to_string(),
        addr: addrs[0],
    })
}

pub fn ws_config(big: bool) -> WebSocketConfig {
    if big {
        WebSocketConfig::default()
            .read_buffer_size(64 * 1024)
            .write_buffer_size(64 * 1024)
    } else {
        // Idle connections: small eager buffers keep the load generator's own memory low.
        WebSocketConfig::default()
            .read_buffer_size(2048)
            .write_buffer_size(0)
    }
}

/// What `--compress` offers: each message on its own both ways, so the subscribers can
/// inflate with one reset inflater (`wire::inflate`) and never compress anything themselves.
pub const DEFLATE_OFFER: &str =
    "permessage-deflate; client_no_context_takeover; server_no_context_takeover";

/// An open WebSocket: tungstenite's stream, or (after our own handshake) the socket and the
/// bytes read past the server's answer.
// One per connection, moved once or twice during its set-up: not worth a box.
#[allow(clippy::large_enum_variant)]
pub enum Link {
    Ws(Ws),
    Upgraded { stream: TcpStream, after: Vec<u8> },
}

/// Wraps an upgraded socket in tungstenite for frames it can read (uncompressed ones).
pub async fn into_ws(stream: TcpStream, after: Vec<u8>, big: bool) -> Ws {
    WebSocketStream::from_partially_read(stream, after, Role::Client, Some(ws_config(big))).await
}

pub async fn open(
    ep: &Endpoint,
    proto: Protocol,
    source: Option<IpAddr>,
    big: bool,
    compress: bool,
) -> Res<Link> {
    let sock = if ep.addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        sock.bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    let stream = sock.connect(ep.addr).await?;
    stream.set_nodelay(true)?;
    if compress {
        let (stream, after) = upgrade_with_deflate(stream, &ep.url, proto).await?;
        return Ok(Link::Upgraded { stream, after });
    }
    let mut req = ep.url.as_str().into_client_request()?;
    if proto == Protocol::Switchboard {
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(req, stream, Some(ws_config(big))).await?;
    Ok(Link::Ws(ws))
}

/// The opening handshake (RFC 6455 4.1) offering permessage-deflate; fails unless the
/// server accepted it with `server_no_context_takeover` (which it must answer when it takes
/// this offer, RFC 7692 7.1.1.1). Returns the socket and what was read past the answer.
async fn upgrade_with_deflate(
    mut stream: TcpStream,
    url: &str,
    proto: Protocol,
) -> Res<(TcpStream, Vec<u8>)> {
    let rest = url.strip_prefix("ws://").ok_or("only ws:// URLs")?;
    let (host, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    let key = generate_key();
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\
         Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n"
    );
    if proto == Protocol::Switchboard {
        req.push_str(&format!("Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(i) = crate::wire::find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 16 * 1024 {
            return Err("handshake answer longer than 16 KiB".into());
        }
        let mut chunk = [0u8; 2048];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err("connection closed during the handshake".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "handshake answer not UTF-8")?;
    check_answer(head, &derive_accept_key(key.as_bytes()), proto)?;
    let after = buf[head_end..].to_vec();
    Ok((stream, after))
}

/// Checks a handshake answer (status line and headers): 101, the accept key, the
/// subprotocol, and permessage-deflate accepted without server context takeover.
pub fn check_answer(head: &str, accept: &str, proto: Protocol) -> Res<()> {
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    if status.split(' ').nth(1) != Some("101") {
        return Err(format!("handshake refused: {status}").into());
    }
    let header = |name: &str| -> Vec<&str> {
        head.split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .collect()
    };
    if header("Sec-WebSocket-Accept") != [accept] {
        return Err("handshake: wrong Sec-WebSocket-Accept".into());
    }
    if proto == Protocol::Switchboard && header("Sec-WebSocket-Protocol") != [SUBPROTOCOL] {
        return Err("handshake: the server did not accept the subprotocol".into());
    }
    let ext = header("Sec-WebSocket-Extensions").join(", ");
    let params: Vec<String> = ext
        .split(';')
        .map(|p| p.trim().to_ascii_lowercase())
        .collect();
    if params.first().map(String::as_str) != Some("permessage-deflate") || ext.contains(',') {
        return Err(format!(
            "--compress: the server did not accept permessage-deflate (it answered {ext:?})"
        )
        .into());
    }
    if !params.iter().any(|p| p == "server_no_context_takeover") {
        return Err(format!(
            "--compress: the server accepted permessage-deflate with context takeover ({ext:?}), which the load generator does not follow"
        )
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets() {
        assert!(resolve("ws://127.0.0.1:9/ws").is_ok());
        assert!(resolve("ws://127.3.2.1:9/ws").is_ok());
        assert!(resolve("ws://[::1]:9/").is_ok());
        assert!(resolve("ws://10.0.0.1:9/ws").is_err());
        assert!(resolve("ws://example.com:80/ws").is_err());
        assert!(resolve("wss://127.0.0.1:9/ws").is_err());
        assert!(resolve("ws://127.0.0.1/ws").is_err());
    }

    #[test]
    fn handshake_answers_are_checked() {
        let ok = "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nsec-websocket-accept: K\r\n\
                  sec-websocket-protocol: switchboard.v1.json\r\n\
                  sec-websocket-extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n\r\n";
        assert!(check_answer(ok, "K", Protocol::Switchboard).is_ok());
        assert!(check_answer(ok, "L", Protocol::Switchboard).is_err());
        let declined = ok.replace("sec-websocket-extensions", "x-ignored");
        assert!(check_answer(&declined, "K", Protocol::Switchboard).is_err());
        let takeover = ok.replace("server_no_context_takeover; ", "");
        assert!(check_answer(&takeover, "K", Protocol::Switchboard).is_err());
        let nats = "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: K\r\n\
                    Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n\r\n";
        assert!(check_answer(nats, "K", Protocol::Nats).is_ok());
        assert!(check_answer("HTTP/1.1 400 Bad Request\r\n\r\n", "K", Protocol::Nats).is_err());
    }
}
