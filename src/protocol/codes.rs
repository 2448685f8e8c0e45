//! The client-visible codes, as one table each: error codes (in `error` frames and in HTTP
//! error bodies, with the HTTP status each answers with) and close codes (in `disconnect`
//! pushes and Close frames). Internal causes are logged where they happen, never sent;
//! what a client sees is one of these.

use std::fmt;

use actix_web::http::StatusCode;
use serde::Serialize;

/// The client-visible error codes: section 2, "Errors", for WebSocket commands, and the
/// codes of HTTP error bodies (section 5), which add `unauthorized`, `not_found` and
/// `too_large`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Not JSON, not an object, unknown `type`, missing or mistyped field.
    BadRequest,
    /// Channel name empty, too long or with a forbidden character.
    InvalidChannel,
    /// The token or namespace does not allow it.
    Forbidden,
    /// `unsubscribe` of a channel the client is not in.
    NotSubscribed,
    /// `subscribe` twice to one channel.
    AlreadySubscribed,
    /// Too many subscriptions.
    LimitExceeded,
    /// Publishing faster than the rate limit.
    RateLimited,
    /// History or presence on a namespace without it.
    NotAvailable,
    /// The engine cannot take the command now.
    Unavailable,
    /// HTTP only: no valid API key, or a token that does not verify.
    Unauthorized,
    /// HTTP only: no such API call.
    NotFound,
    /// HTTP only: a body over `limits.max_message_size`.
    TooLarge,
}

impl ErrorCode {
    /// The code as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidChannel => "invalid_channel",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::AlreadySubscribed => "already_subscribed",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NotAvailable => "not_available",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TooLarge => "too_large",
        }
    }

    /// The HTTP status an error of this code answers with (the WebSocket-only codes have
    /// one too, so the table is total).
    pub fn http_status(self) -> StatusCode {
        match self {
            ErrorCode::BadRequest | ErrorCode::InvalidChannel => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound | ErrorCode::NotAvailable | ErrorCode::NotSubscribed => {
                StatusCode::NOT_FOUND
            }
            ErrorCode::AlreadySubscribed => StatusCode::CONFLICT,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::LimitExceeded | ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Only malformed commands count toward `limits.max_errors`.
    pub fn counts_as_malformed(self) -> bool {
        matches!(self, ErrorCode::BadRequest | ErrorCode::InvalidChannel)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Why the server closes a connection (section 2, "Close codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1001: the node is draining.
    Shutdown,
    /// 1003: a binary frame.
    UnsupportedData,
    /// 1007: a text frame that is not UTF-8.
    InvalidPayload,
    /// 1009: a message over `limits.max_message_size`.
    MessageTooBig,
    /// 4000: nothing heard within `heartbeat.timeout`.
    HeartbeatTimeout,
    /// 4001: unsent output passed `limits.max_pending_bytes`.
    SlowConsumer,
    /// 4002: the token expired without a `refresh`.
    TokenExpired,
    /// 4003: an operator disconnected the user.
    Disconnected,
    /// 4004: too many malformed commands in a row.
    TooManyErrors,
}

impl CloseCode {
    /// Every close code, for metrics.
    pub const ALL: [CloseCode; 9] = [
        CloseCode::Shutdown,
        CloseCode::UnsupportedData,
        CloseCode::InvalidPayload,
        CloseCode::MessageTooBig,
        CloseCode::HeartbeatTimeout,
        CloseCode::SlowConsumer,
        CloseCode::TokenExpired,
        CloseCode::Disconnected,
        CloseCode::TooManyErrors,
    ];

    /// The numeric WebSocket close code.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Shutdown => 1001,
            CloseCode::UnsupportedData => 1003,
            CloseCode::InvalidPayload => 1007,
            CloseCode::MessageTooBig => 1009,
            CloseCode::HeartbeatTimeout => 4000,
            CloseCode::SlowConsumer => 4001,
            CloseCode::TokenExpired => 4002,
            CloseCode::Disconnected => 4003,
            CloseCode::TooManyErrors => 4004,
        }
    }

    /// The reason text, in the `disconnect` push and the Close frame.
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Shutdown => "shutdown",
            CloseCode::UnsupportedData => "unsupported_data",
            CloseCode::InvalidPayload => "invalid_payload",
            CloseCode::MessageTooBig => "message_too_big",
            CloseCode::HeartbeatTimeout => "heartbeat_timeout",
            CloseCode::SlowConsumer => "slow_consumer",
            CloseCode::TokenExpired => "token_expired",
            CloseCode::Disconnected => "disconnected",
            CloseCode::TooManyErrors => "too_many_errors",
        }
    }

    /// Whether the client should reconnect.
    pub fn reconnect(self) -> bool {
        matches!(
            self,
            CloseCode::Shutdown
                | CloseCode::HeartbeatTimeout
                | CloseCode::SlowConsumer
                | CloseCode::TokenExpired
        )
    }
}
