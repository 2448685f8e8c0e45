//! The HTTP side of a node that is not WebSocket: the backend API under `/api` (API keys
//! compared in constant time, bodies capped at `limits.max_message_size`), and the
//! operator endpoints `/healthz`, `/readyz` and `/metrics`. Handlers talk to the engine and
//! the broker through the shared [`Node`]; errors are `{"error":{"code","message"}}`.
//! Request bodies are read by `body` (JSON objects only, field by field).

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use subtle::ConstantTimeEq;

use crate::channel::ChannelName;
use crate::config::NamespaceOptions;
use crate::engine::{EngineError, Publish};
use crate::node::Node;
use crate::protocol::{ApiError, ErrorCode, Publication, StreamPosition};
use body::Fields;

mod body;

type ApiResult = Result<HttpResponse, ApiError>;

/// Registers `/api/*`, `/healthz`, `/readyz` and `/metrics`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .service(
            web::scope("/api")
                .route("/publish", web::post().to(publish))
                .route("/broadcast", web::post().to(broadcast))
                .route("/channels", web::get().to(channels))
                .route("/presence/{channel}", web::get().to(presence))
                .route("/history/{channel}", web::get().to(history))
                .route("/disconnect", web::post().to(disconnect))
                .default_service(web::to(no_such_call)),
        );
}

/// Any other `/api/*` request (an unknown path, or a known one with the wrong method): 401
/// without a valid key, like every call, so the API cannot be mapped without one; else 404.
async fn no_such_call(req: HttpRequest, node: web::Data<Node>) -> HttpResponse {
    match authorize(&req, &node) {
        Err(e) => e.error_response(),
        Ok(()) => ApiError::new(ErrorCode::NotFound, "no such API call").error_response(),
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn readyz(node: web::Data<Node>) -> HttpResponse {
    if node.is_ready() {
        HttpResponse::Ok().json(json!({"status": "ready"}))
    } else if node.is_draining() {
        ApiError::new(ErrorCode::Unavailable, "the node is draining").error_response()
    } else {
        ApiError::new(
            ErrorCode::Unavailable,
            "the engine is not connected or not migrated",
        )
        .error_response()
    }
}

async fn metrics(node: web::Data<Node>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(node.metrics.render())
}

/// Checks `Authorization: apikey <key>` against `api.keys`, in constant time per key.
fn authorize(req: &HttpRequest, node: &Node) -> Result<(), ApiError> {
    let keys = &node.settings.api.keys;
    if keys.is_empty() {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "the HTTP API is disabled: api.keys is empty",
        ));
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("apikey"))
        .map(|(_, key)| key.trim().as_bytes())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "missing `Authorization: apikey <key>`",
            )
        })?;
    // Every key is compared, so the time taken does not say which one (if any) matched.
    let matched = keys
        .iter()
        .fold(0u8, |acc, k| acc | k.as_bytes().ct_eq(given).unwrap_u8());
    if matched == 1 {
        Ok(())
    } else {
        Err(ApiError::new(ErrorCode::Unauthorized, "unknown API key"))
    }
}

/// Reads a body of at most `limits.max_message_size` bytes (413 past it).
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    node: &Node,
) -> Result<Bytes, ApiError> {
    let max = node.settings.limits.max_message_size;
    let too_big = || {
        ApiError::new(
            ErrorCode::TooLarge,
            "body is larger than limits.max_message_size",
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_big());
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("reading body: {e}")))?;
        if body.len() + chunk.len() > max {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn channel(name: &str) -> Result<ChannelName, ApiError> {
    ChannelName::parse(name).map_err(|e| ApiError::new(ErrorCode::InvalidChannel, e.to_string()))
}

fn unavailable(e: EngineError) -> ApiError {
    log::warn!("api engine error: {e}");
    ApiError::new(
        ErrorCode::Unavailable,
        "the engine cannot take this call now",
    )
}

/// A publish the engine failed: when it timed out, Redis may still have made it, which the
/// node cannot tell; a retry with the same `idempotency_key` publishes at most once.
fn publish_unavailable(e: EngineError) -> ApiError {
    log::warn!("api engine error on publish: {e}");
    ApiError::new(
        ErrorCode::Unavailable,
        "the engine cannot take this call now; if it timed out, the publication may have been \
         made: retry with the same idempotency_key to publish at most once",
    )
}

fn namespace(node: &Node, channel: &ChannelName) -> NamespaceOptions {
    node.namespaces.get(channel.namespace()).clone()
}

async fn publish(req: HttpRequest, payload: web::Payload, node: web::Data<Node>) -> ApiResult {
    authorize(&req, &node)?;
    let body = read_body(&req, payload, &node).await?;
    let fields = Fields::parse(&body, &["channel", "data", "idempotency_key"])?;
    let ch = channel(&fields.string("channel")?)?;
    let data = fields.data()?;
    let idempotency_key = fields.idempotency_key()?;
    let ns = namespace(&node, &ch);
    let p = Publish {
        idempotency_key,
        ..Publish::new(Arc::from(data))
    };
    let r = node
        .engine
        .publish(&ch, p, &ns)
        .await
        .map_err(publish_unavailable)?;
    // A repeated key published nothing: the answer is the first one's, and it is not counted.
    if !r.duplicate {
        node.metrics.publications.inc();
    }
    Ok(HttpResponse::Ok().json(json!({"offset": r.offset, "epoch": &*r.epoch})))
}

async fn broadcast(req: HttpRequest, payload: web::Payload, node: web::Data<Node>) -> ApiResult {
    authorize(&req, &node)?;
    let body = read_body(&req, payload, &node).await?;
    let fields = Fields::parse(&body, &["channels", "data", "idempotency_key"])?;
    let names = fields.strings("channels")?;
    if names.is_empty() {
        return Err(ApiError::new(ErrorCode::BadRequest, "`channels` is empty"));
    }
    // Validate every name first, so a bad one publishes nothing.
    let chans = names
        .iter()
        .map(|c| channel(c))
        .collect::<Result<Vec<_>, _>>()?;
    let data: Arc<RawValue> = Arc::from(fields.data()?);
    // One key for the call, remembered per channel: a retried broadcast publishes only to
    // the channels the first attempt did not reach, and answers the others' first results.
    let idempotency_key = fields.idempotency_key()?;
    let mut results = Vec::with_capacity(chans.len());
    for ch in chans {
        let ns = namespace(&node, &ch);
        let done = results.len();
        let p = Publish {
            idempotency_key: idempotency_key.clone(),
            ..Publish::new(data.clone())
        };
        let r = node.engine.publish(&ch, p, &ns).await.map_err(|e| {
            log::warn!("broadcast failed at channel={ch}: {e}");
            ApiError::new(
                ErrorCode::Unavailable,
                format!(
                    "the engine failed at channel {ch}: the first {done} channels were \
                     published, the rest were not (if it timed out, {ch} may have been too); \
                     retry with the same idempotency_key to publish to each at most once"
                ),
            )
        })?;
        if !r.duplicate {
            node.metrics.publications.inc();
        }
        results.push(json!({"channel": ch.as_str(), "offset": r.offset, "epoch": &*r.epoch}));
    }
    Ok(HttpResponse::Ok().json(json!({ "results": results })))
}

async fn channels(req: HttpRequest, node: web::Data<Node>) -> ApiResult {
    authorize(&req, &node)?;
    let local = node.broker.channel_counts().await;
    let all = node.engine.channels(local).await.map_err(unavailable)?;
    let list: Vec<_> = all
        .into_iter()
        .map(|(channel, subscribers)| json!({"channel": channel, "subscribers": subscribers}))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "channels": list })))
}

async fn presence(req: HttpRequest, path: web::Path<String>, node: web::Data<Node>) -> ApiResult {
    authorize(&req, &node)?;
    let ch = channel(&path)?;
    if !namespace(&node, &ch).presence {
        return Err(ApiError::new(
            ErrorCode::NotAvailable,
            "presence is off in this namespace",
        ));
    }
    let list = node.engine.presence(&ch).await.map_err(unavailable)?;
    Ok(HttpResponse::Ok().json(json!({ "clients": list })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    since_offset: Option<u64>,
    epoch: Option<String>,
    limit: Option<usize>,
}

async fn history(req: HttpRequest, path: web::Path<String>, node: web::Data<Node>) -> ApiResult {
    authorize(&req, &node)?;
    let ch = channel(&path)?;
    let q = web::Query::<HistoryQuery>::from_query(req.query_string())
        .map_err(|_| {
            ApiError::new(
                ErrorCode::BadRequest,
                "invalid query: since_offset and limit are whole numbers, epoch is text, and \
                 nothing else is taken",
            )
        })?
        .into_inner();
    let ns = namespace(&node, &ch);
    if ns.history_size == 0 {
        return Err(ApiError::new(
            ErrorCode::NotAvailable,
            "history is off in this namespace",
        ));
    }
    let since = match (q.since_offset, q.epoch) {
        (Some(offset), Some(epoch)) => Some(StreamPosition { offset, epoch }),
        (None, None) => None,
        _ => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "since_offset and epoch go together",
            ));
        }
    };
    let limit = q.limit.unwrap_or(ns.history_size).min(ns.history_size);
    let h = node
        .engine
        .history(&ch, since.as_ref(), limit, &ns)
        .await
        .map_err(unavailable)?;
    // Serialized straight from the stored publications: `data` is written as it was
    // published, never parsed again (a value turned into `serde_json::Value` would meet
    // serde's nesting limit on the way out).
    Ok(HttpResponse::Ok().json(HistoryAnswer {
        epoch: &h.epoch,
        offset: h.offset,
        publications: &h.publications,
    }))
}

/// The answer of `GET /api/history/{channel}` (fields in the order `json!` wrote them).
#[derive(serde::Serialize)]
struct HistoryAnswer<'a> {
    epoch: &'a str,
    offset: u64,
    publications: &'a [Publication],
}

async fn disconnect(req: HttpRequest, payload: web::Payload, node: web::Data<Node>) -> ApiResult {
    authorize(&req, &node)?;
    let body = read_body(&req, payload, &node).await?;
    let user = Fields::parse(&body, &["user"])?.string("user")?;
    if user.is_empty() {
        return Err(ApiError::new(ErrorCode::BadRequest, "`user` is empty"));
    }
    let n = node
        .engine
        .disconnect_user(&user)
        .await
        .map_err(unavailable)?;
    Ok(HttpResponse::Ok().json(json!({ "disconnected": n })))
}
