//! The optional `idempotency_key` of a publication: the validated [`IdempotencyKey`] newtype
//! and the one reading of the field from raw JSON ([`IdempotencyKey::from_json`]), shared by
//! the WebSocket `publish` command and the HTTP API's `publish` and `broadcast`, so both
//! refuse the same values with the same words. The engines only ever see valid keys.
//!
//! Why it exists: a publish that timed out at the engine may or may not have been made (Redis
//! can run the function after the node gave up waiting). A client that retries with the same
//! key gets the first publication's offset and epoch back, and nothing is published twice.

use std::fmt;
use std::sync::Arc;

use serde_json::value::RawValue;

/// Longest idempotency key, in bytes of UTF-8.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 64;

/// A key that passed validation: a non-empty string of at most
/// [`MAX_IDEMPOTENCY_KEY_LEN`] bytes. Cheap to clone (a broadcast hands one key to every
/// channel).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(Arc<str>);

/// The `bad_request` text for a key that is not a non-empty string of at most 64 bytes.
const REFUSED: &str = "`idempotency_key` must be a non-empty string of at most 64 bytes";

impl IdempotencyKey {
    /// Validates a key: non-empty, at most [`MAX_IDEMPOTENCY_KEY_LEN`] bytes (not
    /// characters: `é` counts 2). Any characters are allowed; the engines treat the key as
    /// opaque bytes.
    pub fn parse(key: &str) -> Result<IdempotencyKey, &'static str> {
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return Err(REFUSED);
        }
        Ok(IdempotencyKey(Arc::from(key)))
    }

    /// Reads the field as a request carries it: absent or `null` is no key (as `null` is
    /// absent for every optional field of the protocol), a string is validated, anything
    /// else is refused. The error is the `bad_request` message, which never repeats what
    /// was sent.
    pub fn from_json(raw: Option<&RawValue>) -> Result<Option<IdempotencyKey>, &'static str> {
        let Some(raw) = raw else { return Ok(None) };
        if raw.get() == "null" {
            return Ok(None);
        }
        // Escapes are decoded first: the limit is on the key's own bytes, not on how the
        // JSON spelled them.
        let key: String = serde_json::from_str(raw.get()).map_err(|_| REFUSED)?;
        IdempotencyKey::parse(&key).map(Some)
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Not the key itself: keys may be chosen by clients, and debug output ends up in logs.
impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdempotencyKey({} bytes)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_string()).expect("json")
    }

    #[test]
    fn keys_are_counted_in_bytes() {
        assert!(IdempotencyKey::parse(&"a".repeat(64)).is_ok());
        assert!(IdempotencyKey::parse(&"a".repeat(65)).is_err());
        assert!(IdempotencyKey::parse("").is_err());
        // 32 two-byte characters fill the 64 bytes; one more byte is too many.
        let e = "é".repeat(32);
        assert_eq!(e.chars().count(), 32);
        assert!(IdempotencyKey::parse(&e).is_ok());
        assert!(IdempotencyKey::parse(&format!("{e}a")).is_err());
        // 16 four-byte characters are 64 bytes.
        assert!(IdempotencyKey::parse(&"😀".repeat(16)).is_ok());
        assert!(IdempotencyKey::parse(&"😀".repeat(17)).is_err());
    }

    #[test]
    fn the_field_is_a_string_or_nothing() {
        assert_eq!(IdempotencyKey::from_json(None), Ok(None));
        assert_eq!(IdempotencyKey::from_json(Some(&raw("null"))), Ok(None));
        let k = IdempotencyKey::from_json(Some(&raw(r#""order-17""#)))
            .expect("valid")
            .expect("a key");
        assert_eq!(k.as_str(), "order-17");
        for bad in ["1", "true", "[]", "{}", r#"["a"]"#, r#""""#] {
            assert_eq!(
                IdempotencyKey::from_json(Some(&raw(bad))),
                Err(REFUSED),
                "{bad}"
            );
        }
        // Escapes count as the bytes they stand for: 32 `\u00e9` escapes (192 bytes of JSON)
        // are 64 bytes of key, 33 are 66.
        let escaped = format!("\"{}\"", "\\u00e9".repeat(32));
        let k = IdempotencyKey::from_json(Some(&raw(&escaped)))
            .expect("32 é are 64 bytes")
            .expect("a key");
        assert_eq!(k.as_str(), "é".repeat(32));
        let escaped = format!("\"{}\"", "\\u00e9".repeat(33));
        assert!(IdempotencyKey::from_json(Some(&raw(&escaped))).is_err());
    }

    #[test]
    fn debug_output_does_not_show_the_key() {
        let k = IdempotencyKey::parse("secret-ish").expect("valid");
        assert_eq!(format!("{k:?}"), "IdempotencyKey(10 bytes)");
    }
}
