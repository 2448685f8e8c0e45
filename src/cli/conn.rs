//! One WebSocket connection from `sub` or `pub` to a node, over tokio-tungstenite: the
//! handshake (with the subprotocol and the token as `Authorization: Bearer`), the
//! `welcome` frame, text messages in (Pings answered, fragments joined by tungstenite) and
//! out; and the one HTTP call, `pub --api-key`'s, over ureq. It says what went wrong in
//! terms a caller can act on: [`ConnectError::retry`] tells a refused or failed handshake
//! worth retrying (no connection, 5xx) from one that is not (4xx, a server that does not
//! speak HTTP, WebSocket or TLS); [`Event`] tells a close with its code from a connection
//! that just ended and from a server that sent garbage. It knows nothing of channels.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::endpoint::Endpoint;
use super::frames::{self, Frame as ServerFrame};
use crate::protocol::SUBPROTOCOL;

/// The largest message taken from the server: a `subscribed` reply carries up to a
/// namespace's whole history, each publication up to `limits.max_message_size`.
const MAX_MESSAGE: usize = 64 << 20;
/// How long the connection and its handshake, or an HTTP request, may take; and then the
/// `welcome` frame.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection could not be opened.
#[derive(Debug)]
pub enum ConnectError {
    /// The server answered the handshake with an HTTP error.
    Refused {
        /// The HTTP status.
        status: u16,
        /// The server's reason, from its error body when it sent one.
        reason: String,
    },
    /// No connection, or it went away or stalled before the `welcome` frame: worth retrying.
    Unreachable(String),
    /// Whatever answered does not speak HTTP, WebSocket or this protocol (or TLS failed).
    Garbage(String),
}

impl ConnectError {
    /// Worth retrying: no connection yet, or a refusal that says "later" (5xx: over
    /// capacity, draining, a proxy with no node behind it).
    pub fn retry(&self) -> bool {
        match self {
            ConnectError::Refused { status, .. } => *status >= 500,
            ConnectError::Unreachable(_) => true,
            ConnectError::Garbage(_) => false,
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Refused { status, reason } => {
                write!(
                    f,
                    "the server refused the connection: HTTP {status} {reason}"
                )
            }
            ConnectError::Unreachable(why) => write!(f, "cannot connect: {why}"),
            ConnectError::Garbage(why) => write!(f, "not a switchboard server: {why}"),
        }
    }
}

/// What came from the server.
#[derive(Debug)]
pub enum Event {
    /// A text message (one frame, or several with `?batch=true`).
    Text(String),
    /// A Ping or Pong: the link is alive.
    Heard,
    /// A Close frame, with its code when it had one.
    Closed {
        /// The close code.
        code: Option<u16>,
        /// Its reason text.
        reason: String,
    },
    /// The connection ended without a Close frame (reset, EOF).
    Ended(String),
    /// Something no WebSocket server sends (a broken frame, binary, text not UTF-8).
    Garbage(String),
}

/// An open connection, past its `welcome`.
pub struct Conn {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// The `welcome` frame, as far as the clients use it.
#[derive(Debug, Clone, Copy)]
pub struct Welcome {
    /// The server's Ping interval, when it says.
    pub heartbeat: Option<Duration>,
}

impl Conn {
    /// Connects, and reads the `welcome` frame.
    pub async fn open(
        endpoint: &Endpoint,
        token: Option<&str>,
    ) -> Result<(Conn, Welcome), ConnectError> {
        let mut request = endpoint
            .connect_url()
            .into_client_request()
            .map_err(|e| ConnectError::Garbage(format!("bad URL: {e}")))?;
        let headers = request.headers_mut();
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
        if let Some(token) = token {
            // `token_value` let only visible ASCII through.
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ConnectError::Garbage("a token with odd characters".into()))?;
            headers.insert(header::AUTHORIZATION, value);
        }
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let connect = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
        let ws = match tokio::time::timeout(REQUEST_TIMEOUT, connect).await {
            Err(_) => {
                return Err(ConnectError::Unreachable(format!(
                    "no answer within {REQUEST_TIMEOUT:?}"
                )))
            }
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => return Err(handshake_error(e)),
        };
        let mut conn = Conn { ws };
        let first = tokio::time::timeout(REQUEST_TIMEOUT, conn.next_text()).await;
        let text = match first {
            Err(_) => {
                return Err(ConnectError::Unreachable(format!(
                    "no welcome frame within {REQUEST_TIMEOUT:?}"
                )))
            }
            Ok(Ok(text)) => text,
            Ok(Err(Event::Garbage(why))) => return Err(ConnectError::Garbage(why)),
            Ok(Err(other)) => {
                return Err(ConnectError::Unreachable(format!(
                    "closed before the welcome frame: {}",
                    describe(&other)
                )))
            }
        };
        match frames::parse(&text).map_err(ConnectError::Garbage)?.first() {
            Some(ServerFrame::Welcome { heartbeat_ms }) => {
                let heartbeat = heartbeat_ms.map(Duration::from_millis);
                Ok((conn, Welcome { heartbeat }))
            }
            _ => Err(ConnectError::Garbage(format!(
                "the first frame is not a welcome: {}",
                frames::excerpt(&text)
            ))),
        }
    }

    /// The next text message; `Err` with the event that ended the wait otherwise.
    async fn next_text(&mut self) -> Result<String, Event> {
        loop {
            match self.recv().await {
                Event::Text(text) => return Ok(text),
                Event::Heard => continue,
                other => return Err(other),
            }
        }
    }

    /// The next event. Cancel-safe (tungstenite keeps a message received in part).
    pub async fn recv(&mut self) -> Event {
        let message = match self.ws.next().await {
            None | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                return Event::Ended("the connection ended".into())
            }
            Some(Err(WsError::Io(e))) => return Event::Ended(e.to_string()),
            Some(Err(WsError::Protocol(e)))
                if matches!(
                    e,
                    tokio_tungstenite::tungstenite::error::ProtocolError::ResetWithoutClosingHandshake
                ) =>
            {
                return Event::Ended(e.to_string())
            }
            Some(Err(e)) => return Event::Garbage(format!("broken WebSocket traffic: {e}")),
            Some(Ok(message)) => message,
        };
        match message {
            Message::Text(text) => Event::Text(text.as_str().to_string()),
            Message::Binary(_) => Event::Garbage("a binary frame on the JSON protocol".into()),
            // tungstenite answers Pings itself, with the next read or write.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Event::Heard,
            Message::Close(frame) => Event::Closed {
                code: frame.as_ref().map(|f| u16::from(f.code)),
                reason: frame
                    .map(|f| f.reason.as_str().to_string())
                    .unwrap_or_default(),
            },
        }
    }

    /// Sends a text message.
    pub async fn send(&mut self, text: String) -> Result<(), String> {
        self.ws
            .send(Message::text(text))
            .await
            .map_err(|e| format!("cannot send: {e}"))
    }

    /// Says goodbye (Close 1000), waiting a moment for the server's answer.
    pub async fn close(mut self) {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.close(Some(frame))).await;
    }
}

/// An event that ended a connection, in words.
pub fn describe(event: &Event) -> String {
    match event {
        Event::Closed {
            code: Some(code),
            reason,
        } => format!("closed with {code} {reason}"),
        Event::Closed { code: None, .. } => "closed without a code".into(),
        Event::Ended(why) => format!("connection lost: {why}"),
        Event::Garbage(why) => why.clone(),
        Event::Text(_) | Event::Heard => "open".into(),
    }
}

/// A failed handshake, sorted into "refused", "try again" and "not a server we can talk
/// to".
fn handshake_error(e: WsError) -> ConnectError {
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    match e {
        WsError::Http(response) => ConnectError::Refused {
            status: response.status().as_u16(),
            reason: error_body(
                response.status().canonical_reason(),
                response.body().as_deref().unwrap_or_default(),
            ),
        },
        // rustls reports a failed TLS handshake (a bad certificate, a server that does not
        // speak TLS) as invalid data: retrying would not change it.
        WsError::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            ConnectError::Garbage(format!("TLS: {e}"))
        }
        WsError::Io(e) => ConnectError::Unreachable(e.to_string()),
        WsError::ConnectionClosed
        | WsError::AlreadyClosed
        | WsError::Protocol(ProtocolError::HandshakeIncomplete) => {
            ConnectError::Unreachable("the connection ended during the handshake".into())
        }
        WsError::Tls(e) => ConnectError::Garbage(format!("TLS: {e}")),
        WsError::Protocol(ProtocolError::HttparseError(e)) => {
            ConnectError::Garbage(format!("the answer is not HTTP: {e}"))
        }
        other => ConnectError::Garbage(format!("handshake: {other}")),
    }
}

/// `{"error":{"code","message"}}` as `code: message`; else the status's name and the start
/// of the body.
pub fn error_body(status_name: Option<&str>, body: &[u8]) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let field = |name: &str| error.and_then(|e| e.get(name)).and_then(|v| v.as_str());
    match (field("code"), field("message")) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        _ => {
            let text = String::from_utf8_lossy(body);
            let name = status_name.unwrap_or("");
            match text.trim() {
                "" => name.to_string(),
                text => format!("{name}: {}", frames::excerpt(text)),
            }
        }
    }
}

/// An HTTP answer: status and body.
pub struct HttpAnswer {
    /// The status code.
    pub status: u16,
    /// Its standard name (`Unauthorized`).
    pub status_name: Option<&'static str>,
    /// The body, at most 1 MiB.
    pub body: Vec<u8>,
}

/// POSTs `body` (JSON) to `url` with `authorization`, on a thread of the runtime's blocking
/// pool (ureq blocks). `Err` says why no answer came.
pub async fn post_json(
    agent: &ureq::Agent,
    url: &str,
    authorization: &str,
    body: String,
) -> Result<HttpAnswer, String> {
    let (agent, url, authorization) = (agent.clone(), url.to_string(), authorization.to_string());
    let call = move || -> Result<HttpAnswer, ureq::Error> {
        let mut response = agent
            .post(&url)
            .header("Authorization", &authorization)
            .content_type("application/json")
            .send(body)?;
        let status = response.status();
        let body = response
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()?;
        Ok(HttpAnswer {
            status: status.as_u16(),
            status_name: status.canonical_reason(),
            body,
        })
    };
    match tokio::task::spawn_blocking(call).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(match e {
            // rustls reports a failed TLS handshake as invalid data.
            ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                format!("TLS: {e}")
            }
            ureq::Error::Io(e) => format!("cannot connect: {e}"),
            ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
                format!("cannot connect: {e}")
            }
            other => other.to_string(),
        }),
        Err(e) => Err(format!("the request did not finish: {e}")),
    }
}

/// The HTTP client: HTTP errors are answers, not failures; bounded in time.
pub fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(REQUEST_TIMEOUT))
        .build()
        .into()
}
