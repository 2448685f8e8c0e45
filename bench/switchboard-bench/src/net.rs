//! Where the load goes: a `ws://` URL checked to be loopback, and the TCP connection and
//! WebSocket handshake to it (tungstenite). `setup` opens every connection through here.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
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

pub async fn open(ep: &Endpoint, proto: Protocol, source: Option<IpAddr>, big: bool) -> Res<Ws> {
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
    let mut req = ep.url.as_str().into_client_request()?;
    if proto == Protocol::Switchboard {
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(req, stream, Some(ws_config(big))).await?;
    Ok(ws)
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
}
