//! The HTTP API's request bodies: a JSON object (never an array or a scalar, which serde
//! would fill a struct from by position) whose fields are taken one by one, so that an
//! error names the field and what it must be, in our words, and never echoes what was sent.
//! `data` stays the raw JSON it came as: it is checked, not parsed into values.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::protocol::{check_data, compact_data, ApiError, ErrorCode, IdempotencyKey};

/// The fields of a JSON object body, unparsed.
pub(super) struct Fields<'a>(HashMap<String, &'a RawValue>);

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, message)
}

impl<'a> Fields<'a> {
    /// Reads `body` as a JSON object whose fields are all among `allowed`.
    pub(super) fn parse(body: &'a [u8], allowed: &[&str]) -> Result<Fields<'a>, ApiError> {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err(bad(format!(
                "the body must be a JSON object with the fields {}",
                allowed.join(", ")
            )));
        }
        let map: HashMap<String, &RawValue> = serde_json::from_slice(body).map_err(|e| {
            // Only the position: serde's own text may quote what was sent.
            bad(format!(
                "the body is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        if map.keys().any(|k| !allowed.contains(&k.as_str())) {
            return Err(bad(format!(
                "the body has a field it does not take; its fields are {}",
                allowed.join(", ")
            )));
        }
        Ok(Fields(map))
    }

    fn required(&self, name: &str) -> Result<&'a RawValue, ApiError> {
        self.0
            .get(name)
            .copied()
            .ok_or_else(|| bad(format!("missing field `{name}`")))
    }

    /// A field that must hold a JSON string.
    pub(super) fn string(&self, name: &str) -> Result<String, ApiError> {
        serde_json::from_str(self.required(name)?.get())
            .map_err(|_| bad(format!("`{name}` must be a string")))
    }

    /// A field that must hold an array of strings.
    pub(super) fn strings(&self, name: &str) -> Result<Vec<String>, ApiError> {
        Vec::<String>::deserialize(self.required(name)?)
            .map_err(|_| bad(format!("`{name}` must be an array of strings")))
    }

    /// `idempotency_key`: absent, `null`, or a valid [`IdempotencyKey`].
    pub(super) fn idempotency_key(&self) -> Result<Option<IdempotencyKey>, ApiError> {
        IdempotencyKey::from_json(self.0.get("idempotency_key").copied()).map_err(bad)
    }

    /// `data`: any JSON value, `null` included, that passes [`check_data`] (nested at most
    /// [`MAX_DATA_DEPTH`](crate::protocol::MAX_DATA_DEPTH) levels, nothing JSON readers refuse).
    pub(super) fn data(&self) -> Result<Box<RawValue>, ApiError> {
        let raw = self.required("data")?;
        check_data(raw.get()).map_err(bad)?;
        Ok(compact_data(raw))
    }
}
