//! The HTTP error answer (section 5 of the contract): `{"error":{"code","message"}}` with the
//! status that [`ErrorCode::http_status`] gives the code. Used by the API handlers and by the
//! `/ws` handshake's refusals alike, so every HTTP error a client meets has one shape.

use std::fmt;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use super::ErrorCode;

/// An HTTP request refused or failed, with a client-visible code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
}

impl ApiError {
    /// An error with this code and message (said to the client as it is: no internal
    /// causes in it).
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// The client-visible code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code.http_status()
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code())
            .json(json!({"error": {"code": self.code.as_str(), "message": self.message}}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn http_errors_carry_the_table_status_and_the_contract_body() {
        for (code, status) in [
            (ErrorCode::BadRequest, 400),
            (ErrorCode::InvalidChannel, 400),
            (ErrorCode::Unauthorized, 401),
            (ErrorCode::Forbidden, 403),
            (ErrorCode::NotFound, 404),
            (ErrorCode::NotAvailable, 404),
            (ErrorCode::TooLarge, 413),
            (ErrorCode::Unavailable, 503),
        ] {
            let e = ApiError::new(code, "why");
            let r = e.error_response();
            assert_eq!(r.status().as_u16(), status, "{code}");
            assert_eq!(e.status_code().as_u16(), status, "{code}");
            let body = actix_web::body::to_bytes(r.into_body())
                .await
                .expect("body");
            let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
            assert_eq!(
                body,
                json!({"error": {"code": code.as_str(), "message": "why"}})
            );
        }
    }
}
