//! One WebSocket connection from `sub` or `pub` to a node, over awc: the handshake (with
//! the subprotocol and the token as `Authorization: Bearer`), the `welcome` frame, text
//! frames in (fragments joined, Pings answered) and out. It says what went wrong in terms
//! a caller can act on: [`ConnectError::retry`] tells a refused or failed handshake worth
//! retrying (no connection, 5xx) from one that is not (4xx, a server that does not speak
//! HTTP or WebSocket); [`Event`] tells a close with its code from a connection that just
//! ended and from a server that sent garbage. It knows nothing of channels.
//!
//! awc drops the body of a refused handshake (it returns only the status), and the server
//! puts the reason there (`{"error":{"code","message"}}`), so a client middleware
//! (`KeepRefusal`) keeps what of it arrived with the response head.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use actix_codec::Framed;
use actix_http::error::ParseError;
use actix_http::ws::{Item, ProtocolError};
use actix_service::Service;
use awc::error::{ConnectError as AwcConnectError, SendRequestError, WsClientError};
use awc::http::{StatusCode, Version};
use awc::ws::{self, Frame, Message};
use awc::{BoxedSocket, ConnectRequest, ConnectResponse};
use bytes::Bytes;
use futures_util::future::LocalBoxFuture;
use futures_util::{SinkExt, StreamExt};

use super::endpoint::Endpoint;
use super::frames::{self, Frame as ServerFrame};
use crate::protocol::SUBPROTOCOL;

/// The largest message taken from the server: a `subscribed` reply carries up to a
/// namespace's whole history, each publication up to `limits.max_message_size`.
const MAX_MESSAGE: usize = 64 << 20;
/// How long a TCP (and TLS) connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the handshake, or an HTTP request, may take; and then the `welcome` frame.
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
    framed: Framed<BoxedSocket, ws::Codec>,
    /// The text message being received in fragments.
    fragments: Option<Vec<u8>>,
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
        let refusal = Rc::new(RefCell::new(None));
        // HTTP/1.1 only: a WebSocket needs it (over TLS, ALPN says so).
        let connector = awc::Connector::new()
            .max_http_version(Version::HTTP_11)
            .timeout(CONNECT_TIMEOUT);
        let client = awc::Client::builder()
            .connector(connector)
            .timeout(REQUEST_TIMEOUT)
            .wrap(KeepRefusal(refusal.clone()))
            .finish();
        let mut request = client
            .ws(endpoint.ws_url())
            .protocols([SUBPROTOCOL])
            .max_frame_size(MAX_MESSAGE);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let framed = match request.connect().await {
            Ok((_, framed)) => framed,
            Err(WsClientError::InvalidResponseStatus(status)) => {
                let body = refusal.borrow_mut().take().unwrap_or_default();
                return Err(refused(status, &body));
            }
            Err(WsClientError::SendRequest(e)) => return Err(send_error(e)),
            Err(e) => return Err(ConnectError::Garbage(format!("handshake: {e}"))),
        };
        let mut conn = Conn {
            framed,
            fragments: None,
        };
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

    /// The next event. Cancel-safe: a message received in fragments is kept across calls.
    pub async fn recv(&mut self) -> Event {
        loop {
            let frame = match self.framed.next().await {
                None => return Event::Ended("the connection ended".into()),
                Some(Err(ProtocolError::Io(e))) => return Event::Ended(e.to_string()),
                Some(Err(e)) => return Event::Garbage(format!("broken WebSocket frame: {e}")),
                Some(Ok(frame)) => frame,
            };
            let last = match frame {
                Frame::Text(bytes) => bytes,
                Frame::Binary(_) | Frame::Continuation(Item::FirstBinary(_)) => {
                    return Event::Garbage("a binary frame on the JSON protocol".into())
                }
                Frame::Continuation(Item::FirstText(bytes)) => {
                    self.fragments = Some(bytes.to_vec());
                    continue;
                }
                Frame::Continuation(Item::Continue(bytes)) => {
                    if let Some(event) = self.append(&bytes) {
                        return event;
                    }
                    continue;
                }
                Frame::Continuation(Item::Last(bytes)) => {
                    if let Some(event) = self.append(&bytes) {
                        return event;
                    }
                    Bytes::from(self.fragments.take().unwrap_or_default())
                }
                Frame::Ping(payload) => {
                    // A failed send shows as the connection ending on the next read.
                    let _ = self.framed.send(Message::Pong(payload)).await;
                    return Event::Heard;
                }
                Frame::Pong(_) => return Event::Heard,
                Frame::Close(reason) => {
                    let _ = self.framed.send(Message::Close(reason.clone())).await;
                    return Event::Closed {
                        code: reason.as_ref().map(|r| u16::from(r.code)),
                        reason: reason.and_then(|r| r.description).unwrap_or_default(),
                    };
                }
            };
            return match String::from_utf8(last.to_vec()) {
                Ok(text) => Event::Text(text),
                Err(_) => Event::Garbage("a text frame that is not UTF-8".into()),
            };
        }
    }

    /// Adds a fragment to the message being received; an event when that is wrong.
    fn append(&mut self, bytes: &[u8]) -> Option<Event> {
        let Some(message) = self.fragments.as_mut() else {
            return Some(Event::Garbage("a continuation frame out of place".into()));
        };
        if message.len() + bytes.len() > MAX_MESSAGE {
            return Some(Event::Garbage(format!(
                "a message over {MAX_MESSAGE} bytes"
            )));
        }
        message.extend_from_slice(bytes);
        None
    }

    /// Sends a text message.
    pub async fn send(&mut self, text: String) -> Result<(), String> {
        self.framed
            .send(Message::Text(text.into()))
            .await
            .map_err(|e| format!("cannot send: {e}"))
    }

    /// Says goodbye (Close 1000), without waiting for the answer.
    pub async fn close(mut self) {
        let reason = ws::CloseReason::from(ws::CloseCode::Normal);
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            self.framed.send(Message::Close(Some(reason))),
        )
        .await;
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

/// The HTTP client: HTTP/1.1 only, bounded connect and request times (as
/// [`Conn::open`]'s, which adds a middleware).
pub fn http_client() -> awc::Client {
    let connector = awc::Connector::new()
        .max_http_version(Version::HTTP_11)
        .timeout(CONNECT_TIMEOUT);
    awc::Client::builder()
        .connector(connector)
        .timeout(REQUEST_TIMEOUT)
        .finish()
}

/// A refused handshake, with the server's reason from its error body when there is one.
fn refused(status: StatusCode, body: &[u8]) -> ConnectError {
    ConnectError::Refused {
        status: status.as_u16(),
        reason: error_body(status, body),
    }
}

/// `{"error":{"code","message"}}` as `code: message`; else the status's name and the start
/// of the body.
pub fn error_body(status: StatusCode, body: &[u8]) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let field = |name: &str| error.and_then(|e| e.get(name)).and_then(|v| v.as_str());
    match (field("code"), field("message")) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        _ => {
            let text = String::from_utf8_lossy(body);
            let name = status.canonical_reason().unwrap_or("");
            match text.trim() {
                "" => name.to_string(),
                text => format!("{name}: {}", frames::excerpt(text)),
            }
        }
    }
}

/// A failed request, sorted into "try again" and "not a server we can talk to".
pub fn send_error(e: SendRequestError) -> ConnectError {
    match e {
        // rustls reports a failed TLS handshake (a bad certificate, a server that does not
        // speak TLS) as invalid data: retrying would not change it.
        SendRequestError::Connect(AwcConnectError::Io(io))
            if io.kind() == std::io::ErrorKind::InvalidData =>
        {
            ConnectError::Garbage(format!("TLS: {io}"))
        }
        SendRequestError::Connect(e) => ConnectError::Unreachable(e.to_string()),
        SendRequestError::Send(io) => ConnectError::Unreachable(io.to_string()),
        SendRequestError::Timeout => {
            ConnectError::Unreachable(format!("no answer within {REQUEST_TIMEOUT:?}"))
        }
        SendRequestError::Response(e) => match e {
            ParseError::Io(_) | ParseError::Incomplete | ParseError::Timeout => {
                ConnectError::Unreachable(format!("the connection ended: {e}"))
            }
            other => ConnectError::Garbage(format!("the answer is not HTTP: {other}")),
        },
        other => ConnectError::Garbage(other.to_string()),
    }
}

/// awc middleware that keeps the start of a refused WebSocket handshake's body: what the
/// server sent along with the response head (its error body is small and written with the
/// head, so it is there).
struct KeepRefusal(Rc<RefCell<Option<Vec<u8>>>>);

impl<S> awc::middleware::Transform<S, ConnectRequest> for KeepRefusal
where
    S: Service<ConnectRequest, Response = ConnectResponse, Error = SendRequestError> + 'static,
{
    type Transform = KeepRefusalService<S>;

    fn new_transform(self, service: S) -> Self::Transform {
        KeepRefusalService {
            service: Rc::new(service),
            body: self.0,
        }
    }
}

/// The service [`KeepRefusal`] wraps around the connector.
struct KeepRefusalService<S> {
    service: Rc<S>,
    body: Rc<RefCell<Option<Vec<u8>>>>,
}

impl<S> Service<ConnectRequest> for KeepRefusalService<S>
where
    S: Service<ConnectRequest, Response = ConnectResponse, Error = SendRequestError> + 'static,
{
    type Response = ConnectResponse;
    type Error = SendRequestError;
    type Future = LocalBoxFuture<'static, Result<ConnectResponse, SendRequestError>>;

    actix_service::forward_ready!(service);

    fn call(&self, request: ConnectRequest) -> Self::Future {
        let (service, body) = (self.service.clone(), self.body.clone());
        Box::pin(async move {
            match service.call(request).await? {
                ConnectResponse::Tunnel(head, framed)
                    if head.status != StatusCode::SWITCHING_PROTOCOLS =>
                {
                    let parts = framed.into_parts();
                    *body.borrow_mut() = Some(parts.read_buf.to_vec());
                    Ok(ConnectResponse::Tunnel(head, Framed::from_parts(parts)))
                }
                response => Ok(response),
            }
        })
    }
}
