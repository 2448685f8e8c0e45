//! The `/ws` handshake: checks origin (403), subprotocol (400), token (401), the upgrade
//! request itself (400, or 426 for a version other than 13) and capacity (503), in that
//! order, answering refusals with the HTTP error body;
//! then upgrades the connection and starts a [`Session`] whose response body is a
//! `SessionBody`, and which reads the client through it.
//!
//! The RFC 6455 part ([`upgrade`]: the upgrade checks and the connection's codec) and the
//! start of the connection ([`start`]: the actor, its response body and how it closes) are
//! public, so that the conformance echo server (examples/echo.rs, docs/conformance.md) is
//! the same code as `/ws` where Autobahn|Testsuite looks.
//!
//! [`upgrade`] also answers a permessage-deflate offer (`crate::deflate::offer`, unless
//! `compression.enabled` is false) in the 101 response, and the connection's codec then
//! inflates the client's compressed messages; the agreement goes to the outbox's
//! [`Encoding`], which compresses what is written.

use std::sync::Arc;

use actix::{Actor, StreamHandler};
use actix_http::ws::{Codec, ProtocolError};
use actix_web::http::{header, StatusCode, Version};
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder, ResponseError};
use actix_web_actors::ws;
use base64::Engine as _;
use serde::Deserialize;

use super::body::{ClientSide, ClientStream, SessionBody};
use super::Session;
use crate::auth::{AuthError, Identity};
use crate::config::Settings;
use crate::deflate::{self, offer::Agreed};
use crate::frame::Encoding;
use crate::node::Node;
use crate::outbox::Outbox;
use crate::protocol::{ApiError, ErrorCode, SUBPROTOCOL};

/// What `/ws` reads from its query string.
#[derive(Deserialize)]
struct WsQuery {
    token: Option<String>,
    /// `?batch=true`: several frames per message, `\n` separated (`crate::batch`).
    #[serde(default, deserialize_with = "flag")]
    batch: bool,
}

/// `true` or `false`, nothing else: a typo must not silently turn batching off.
fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match String::deserialize(d)?.as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(serde::de::Error::custom(format!(
            "batch must be true or false, not {other:?}"
        ))),
    }
}

/// `GET /ws`: checks origin (403), subprotocol (400), token (401), the upgrade request
/// (400/426) and capacity (503), in that order, then upgrades and starts a [`Session`].
pub async fn ws_route(
    req: HttpRequest,
    stream: web::Payload,
    node: web::Data<Node>,
) -> HttpResponse {
    let counted = |response: HttpResponse| {
        node.metrics
            .refused
            .with_label_values(&[response.status().as_str()])
            .inc();
        response
    };
    let refuse =
        |code: ErrorCode, message: &str| counted(ApiError::new(code, message).error_response());
    let allowed = &node.settings.server.allowed_origins;
    if !allowed.iter().any(|o| o == "*") {
        if let Some(origin) = req.headers().get(header::ORIGIN) {
            let ok = origin
                .to_str()
                .map(|o| allowed.iter().any(|a| a.eq_ignore_ascii_case(o)))
                .unwrap_or(false);
            if !ok {
                return refuse(ErrorCode::Forbidden, "origin not allowed");
            }
        }
    }
    let mut offered = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .peekable();
    if offered.peek().is_some() && !offered.any(|p| p == SUBPROTOCOL) {
        return refuse(
            ErrorCode::BadRequest,
            "unsupported subprotocol: offer switchboard.v1.json",
        );
    }
    let query = match web::Query::<WsQuery>::from_query(req.query_string()) {
        Ok(query) => query.into_inner(),
        Err(e) => {
            return refuse(
                ErrorCode::BadRequest,
                &format!("malformed query string: {e}"),
            )
        }
    };
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| rest.trim().to_string())
        });
    let token = query
        .token
        .filter(|t| !t.is_empty())
        .or(bearer.filter(|t| !t.is_empty()));
    let identity = match token {
        None => Identity::default(),
        Some(t) => match node.verifier.verify(&t) {
            Ok(claims) => Identity {
                claims: Some(claims),
            },
            Err(AuthError::Algorithm) => {
                return refuse(ErrorCode::Unauthorized, "token algorithm is not accepted")
            }
            Err(e) => return refuse(ErrorCode::Unauthorized, &e.to_string()),
        },
    };
    // The upgrade itself, before capacity so that no malformed request holds a place.
    let upgraded = match upgrade(&req, &node.settings) {
        Ok(upgraded) => upgraded,
        Err(refused) => return counted(refused.response()),
    };
    // Capacity, the last check: a draining node takes no new connection.
    if node.is_draining() {
        return refuse(ErrorCode::Unavailable, "the node is shutting down");
    }
    let Some(slot) = node.registry.try_reserve() else {
        return refuse(ErrorCode::Unavailable, "limits.max_connections reached");
    };
    let encoding =
        Encoding::new(node.wire.clone(), upgraded.agreed().cloned()).batched(query.batch);
    let session = Session::new(node.clone(), identity, slot, encoding);
    let outbox = session.outbox.clone();
    start(upgraded, stream, session, outbox)
}

/// A WebSocket upgrade accepted by [`upgrade`]: the 101 response, still without its body,
/// and the codec the connection reads and writes with.
pub struct Upgrade {
    response: HttpResponseBuilder,
    codec: Codec,
    /// The permessage-deflate agreement answered in `response`, if any.
    agreed: Option<Agreed>,
}

impl Upgrade {
    /// The permessage-deflate agreement, from which the caller builds its outbox's
    /// [`Encoding`].
    pub fn agreed(&self) -> Option<&Agreed> {
        self.agreed.as_ref()
    }
}

/// The RFC 6455 part of the handshake, shared by `/ws` and the conformance echo server:
/// refuses a request that is not a version 13 WebSocket upgrade as RFC 6455 section 4.2.1
/// has it (400, or 426 naming version 13: see [`UpgradeRefusal::response`]), answers a
/// `switchboard.v1.json` offer, and makes the connection's codec, which refuses a message
/// past `limits.max_message_size` at its frame header. It also negotiates permessage-deflate
/// (unless `compression.enabled` is false), so `/ws` and examples/echo.rs agree to it the
/// same way and Autobahn's cases 12 and 13 test what browsers get.
pub fn upgrade(req: &HttpRequest, settings: &Settings) -> Result<Upgrade, UpgradeRefusal> {
    let mut response = ws::handshake_with_protocols(req, &[SUBPROTOCOL]).map_err(|e| match e {
        ws::HandshakeError::UnsupportedVersion => UpgradeRefusal::Version,
        other => UpgradeRefusal::NotUpgrade(other),
    })?;
    check_upgrade(req)?;
    // permessage-deflate, when offered and enabled: answered in the 101 response.
    let agreed = settings
        .compression
        .enabled
        .then(|| {
            let offers = req.headers().get_all(header::SEC_WEBSOCKET_EXTENSIONS);
            deflate::offer::negotiate(offers.filter_map(|v| v.to_str().ok()))
        })
        .flatten()
        .and_then(|agreed| {
            let answer = header::HeaderValue::from_str(&agreed.response()).ok()?;
            response.insert_header((header::SEC_WEBSOCKET_EXTENSIONS, answer));
            Some(agreed)
        });
    let mut codec = Codec::new().max_size(settings.limits.max_message_size);
    if agreed.is_some() {
        // RSV1 is now allowed on the first frame of a message: the codec inflates such a
        // message whole, to at most `limits.max_message_size` bytes.
        codec = codec.inflate_with(deflate::inflate);
    }
    Ok(Upgrade {
        response,
        codec,
        agreed,
    })
}

/// Starts `actor` on an upgraded connection: it reads the client's frames through the
/// upgrade's codec, and one `SessionBody` writes out its own frames (control frames, its
/// Close) and what it queues in `outbox`, and holds the connection open for the client's
/// Close once the actor has stopped (RFC 6455 section 7.1.1). An actor closes by
/// closing `outbox`, then its context, as the session does.
pub fn start<A>(
    upgrade: Upgrade,
    stream: web::Payload,
    actor: A,
    outbox: Arc<Outbox>,
) -> HttpResponse
where
    A: Actor<Context = ws::WebsocketContext<A>> + StreamHandler<Result<ws::Message, ProtocolError>>,
{
    let Upgrade {
        mut response,
        codec,
        ..
    } = upgrade;
    // The actor reads the client through the body's `ClientStream`, so that the body knows
    // whether the client's Close has come when the actor stops.
    let client = ClientSide::new(stream);
    let actor = ws::WebsocketContext::with_codec(actor, ClientStream(client.clone()), codec);
    response.streaming(SessionBody::new(actor, outbox, client))
}

/// Why an upgrade request is refused.
#[derive(Debug, PartialEq)]
pub enum UpgradeRefusal {
    /// Not a WebSocket upgrade at all (actix-web-actors' verdict): HTTP 400.
    NotUpgrade(ws::HandshakeError),
    /// A `Sec-WebSocket-Version` other than 13: HTTP 426, naming the version we speak.
    Version,
    /// Not what RFC 6455 section 4.1 requires of a client: HTTP 400.
    Malformed(&'static str),
}

impl UpgradeRefusal {
    /// The HTTP answer, with the error body (not counted in the metrics: the caller does).
    pub fn response(&self) -> HttpResponse {
        match self {
            UpgradeRefusal::Version => {
                let mut refused = ApiError::new(
                    ErrorCode::BadRequest,
                    "unsupported Sec-WebSocket-Version: this server speaks version 13",
                )
                .error_response();
                *refused.status_mut() = StatusCode::UPGRADE_REQUIRED;
                refused.headers_mut().insert(
                    header::SEC_WEBSOCKET_VERSION,
                    header::HeaderValue::from_static("13"),
                );
                refused
            }
            UpgradeRefusal::Malformed(why) => {
                ApiError::new(ErrorCode::BadRequest, *why).error_response()
            }
            UpgradeRefusal::NotUpgrade(e) => {
                let why = format!("not a WebSocket upgrade: {e}");
                ApiError::new(ErrorCode::BadRequest, &why).error_response()
            }
        }
    }
}

/// The opening handshake, once actix-web-actors took it as an upgrade, as strictly as
/// RFC 6455 section 4.2.1 reads where actix-web-actors is lax: it also takes versions 7
/// and 8 (drafts whose framing differs), any `Sec-WebSocket-Key`, and HTTP/1.0 (which has
/// no `Upgrade`).
fn check_upgrade(req: &HttpRequest) -> Result<(), UpgradeRefusal> {
    if req.version() != Version::HTTP_11 {
        return Err(UpgradeRefusal::Malformed(
            "a WebSocket handshake must be an HTTP/1.1 request",
        ));
    }
    let headers = req.headers();
    let versions: Vec<_> = headers.get_all(header::SEC_WEBSOCKET_VERSION).collect();
    if versions.len() != 1 || versions[0].as_bytes() != b"13" {
        return Err(UpgradeRefusal::Version);
    }
    let keys: Vec<_> = headers.get_all(header::SEC_WEBSOCKET_KEY).collect();
    let nonce = match keys.as_slice() {
        [key] => base64::engine::general_purpose::STANDARD.decode(key.as_bytes()),
        _ => {
            return Err(UpgradeRefusal::Malformed(
                "exactly one Sec-WebSocket-Key is required",
            ))
        }
    };
    match nonce {
        Ok(bytes) if bytes.len() == 16 => Ok(()),
        _ => Err(UpgradeRefusal::Malformed(
            "Sec-WebSocket-Key must be 16 bytes in base64",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn upgrade(version: &str, key: &str) -> TestRequest {
        TestRequest::get()
            .insert_header((header::SEC_WEBSOCKET_VERSION, version))
            .insert_header((header::SEC_WEBSOCKET_KEY, key))
    }

    #[test]
    fn only_version_13_with_a_16_byte_key_over_http_1_1_passes() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let check = |r: TestRequest| check_upgrade(&r.to_http_request());
        assert_eq!(check(upgrade("13", key)), Ok(()));
        for version in ["8", "7", "14", "13, 8", ""] {
            assert_eq!(
                check(upgrade(version, key)),
                Err(UpgradeRefusal::Version),
                "{version}"
            );
        }
        // 15 and 17 bytes, a 3-byte key, not base64, 16 bytes without padding.
        for bad in [
            "dGhlIHNhbXBsZSBub25j",
            "dGhlIHNhbXBsZSBub25jZXM=",
            "YWJj",
            "!!!!!!!!!!!!!!!!!!!!!!==",
            "dGhlIHNhbXBsZSBub25jZQ",
        ] {
            assert!(
                matches!(check(upgrade("13", bad)), Err(UpgradeRefusal::Malformed(_))),
                "{bad}"
            );
        }
        let old = upgrade("13", key).version(Version::HTTP_10);
        assert!(matches!(check(old), Err(UpgradeRefusal::Malformed(_))));
    }
}
