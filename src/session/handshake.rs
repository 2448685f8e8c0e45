//! The `/ws` handshake: checks origin (403), subprotocol (400), token (401) and capacity
//! (503), in the order the contract gives, answering refusals with the HTTP error body;
//! then upgrades the connection and starts a [`Session`] whose response body is a
//! `SessionBody`, and which reads the client through it.

use actix_web::{http::header, web, HttpRequest, HttpResponse, ResponseError};
use actix_web_actors::ws;
use serde::Deserialize;

use super::body::{ClientSide, ClientStream, SessionBody};
use super::Session;
use crate::auth::{AuthError, Identity};
use crate::node::Node;
use crate::protocol::{ApiError, ErrorCode, SUBPROTOCOL};

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// `GET /ws`: checks origin (403), subprotocol (400), token (401) and capacity (503), in
/// that order, then upgrades and starts a [`Session`].
pub async fn ws_route(
    req: HttpRequest,
    stream: web::Payload,
    node: web::Data<Node>,
) -> HttpResponse {
    let refuse = |code: ErrorCode, message: &str| {
        let e = ApiError::new(code, message);
        node.metrics
            .refused
            .with_label_values(&[e.status_code().as_str()])
            .inc();
        e.error_response()
    };
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
    let Ok(query) = web::Query::<TokenQuery>::from_query(req.query_string()) else {
        return refuse(ErrorCode::BadRequest, "malformed query string");
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
        .into_inner()
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
    // Capacity, the last check: a draining node takes no new connection.
    if node.is_draining() {
        return refuse(ErrorCode::Unavailable, "the node is shutting down");
    }
    let Some(slot) = node.registry.try_reserve() else {
        return refuse(ErrorCode::Unavailable, "limits.max_connections reached");
    };
    let max = node.settings.limits.max_message_size;
    let mut response = match ws::handshake_with_protocols(&req, &[SUBPROTOCOL]) {
        Ok(r) => r,
        Err(e) => {
            return ApiError::new(
                ErrorCode::BadRequest,
                format!("not a WebSocket upgrade: {e}"),
            )
            .error_response()
        }
    };
    let session = Session::new(node.clone(), identity, slot);
    let outbox = session.outbox.clone();
    let codec = actix_http::ws::Codec::new().max_size(max);
    // The actor reads the client through the body's `ClientStream`, so that the body knows
    // whether the client's Close has come when the actor stops.
    let client = ClientSide::new(stream);
    let actor = ws::WebsocketContext::with_codec(session, ClientStream(client.clone()), codec);
    response.streaming(SessionBody::new(actor, outbox, client))
}
