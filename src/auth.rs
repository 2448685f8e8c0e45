//! Token verification and permissions: turns a JWT from the handshake or a `refresh` into
//! [`Claims`], and answers "may this connection subscribe to / publish on this channel".
//! The HTTP handshake (startup) and the session call it; it knows nothing of actors.
//!
//! Only the algorithms the configuration names are accepted: HS256 with `auth.hmac_secret`,
//! RS256 or ES256 with `auth.public_key_pem`. A token whose header names anything else,
//! including `none`, is refused before its signature is looked at.

use std::collections::HashSet;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::channel::{any_pattern_matches, ChannelName};
use crate::config::{AuthSettings, NamespaceOptions};

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No key is configured for the token's algorithm (or it names `none`).
    #[error("token algorithm is not accepted")]
    Algorithm,
    /// Malformed, badly signed or expired.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// What a verified token says about its holder.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Claims {
    /// The user id.
    #[serde(default)]
    pub sub: String,
    /// Expiry, in unix seconds.
    #[serde(default)]
    pub exp: Option<u64>,
    /// Patterns of channels the user may subscribe to (and read presence and history of).
    #[serde(default)]
    pub channels: Vec<String>,
    /// Patterns of channels the user may publish to.
    #[serde(default)]
    pub publish: Vec<String>,
}

/// Verifies tokens with the configured keys.
pub struct Verifier {
    keys: Vec<(Algorithm, DecodingKey)>,
    leeway: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algs: Vec<_> = self.keys.iter().map(|(a, _)| a).collect();
        f.debug_struct("Verifier")
            .field("algorithms", &algs)
            .finish()
    }
}

impl Verifier {
    /// Builds the verifier; a public key that does not parse is a start-up error naming
    /// `auth.public_key_pem`.
    pub fn new(settings: &AuthSettings) -> Result<Verifier, String> {
        let mut keys = Vec::new();
        if let Some(secret) = settings.hmac_secret.as_deref().filter(|s| !s.is_empty()) {
            keys.push((
                Algorithm::HS256,
                DecodingKey::from_secret(secret.as_bytes()),
            ));
        }
        if let Some(pem) = settings.public_key_pem.as_deref().filter(|s| !s.is_empty()) {
            let text = if pem.trim_start().starts_with("-----BEGIN") {
                pem.to_string()
            } else {
                std::fs::read_to_string(pem).map_err(|e| {
                    format!("key `auth.public_key_pem`: cannot read file {pem:?}: {e}")
                })?
            };
            if let Ok(k) = DecodingKey::from_rsa_pem(text.as_bytes()) {
                keys.push((Algorithm::RS256, k));
            } else if let Ok(k) = DecodingKey::from_ec_pem(text.as_bytes()) {
                keys.push((Algorithm::ES256, k));
            } else {
                return Err(
                    "key `auth.public_key_pem`: not an RSA or P-256 EC public key in PEM".into(),
                );
            }
        }
        Ok(Verifier {
            keys,
            leeway: settings.leeway.0.as_secs(),
        })
    }

    /// Verifies signature, algorithm, `exp` and `nbf` (with the configured leeway).
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let (alg, key) = self
            .keys
            .iter()
            .find(|(a, _)| *a == header.alg)
            .ok_or(AuthError::Algorithm)?;
        let mut validation = Validation::new(*alg);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.required_spec_claims = HashSet::new();
        jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map(|d| d.claims)
            .map_err(|e| AuthError::Invalid(e.to_string()))
    }
}

/// The verified identity of a connection; `None` claims mean anonymous.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// Claims of the current token, if any.
    pub claims: Option<Claims>,
}

impl Identity {
    /// The user id, empty when anonymous.
    pub fn user(&self) -> &str {
        self.claims.as_ref().map_or("", |c| c.sub.as_str())
    }

    /// May subscribe to (and read presence and history of) `channel`.
    pub fn can_subscribe(&self, channel: &ChannelName, ns: &NamespaceOptions) -> bool {
        match &self.claims {
            Some(c) => ns.anonymous || any_pattern_matches(&c.channels, channel.as_str()),
            None => ns.anonymous,
        }
    }

    /// May publish on `channel`: the namespace allows client publishing, and either the
    /// token grants it or the namespace is anonymous and the connection may subscribe.
    pub fn can_publish(&self, channel: &ChannelName, ns: &NamespaceOptions) -> bool {
        if !ns.allow_publish {
            return false;
        }
        match &self.claims {
            Some(c) => ns.anonymous || any_pattern_matches(&c.publish, channel.as_str()),
            None => ns.anonymous,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;
    use std::time::Duration;

    fn settings(secret: &str) -> AuthSettings {
        AuthSettings {
            hmac_secret: Some(secret.into()),
            public_key_pem: None,
            leeway: HumanDuration(Duration::from_secs(0)),
        }
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    #[test]
    fn hs256_round_trip_and_wrong_secret() {
        let v = Verifier::new(&settings("s3cret")).unwrap();
        let claims =
            json!({"sub":"alice","exp":now()+60,"channels":["chat:*"],"publish":["chat:lobby"]});
        let t = encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        let c = v.verify(&t).unwrap();
        assert_eq!(c.sub, "alice");
        assert_eq!(c.channels, vec!["chat:*"]);
        let bad = encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(b"other"),
        )
        .unwrap();
        assert!(v.verify(&bad).is_err());
    }

    #[test]
    fn expired_and_alg_none_are_refused() {
        let v = Verifier::new(&settings("s")).unwrap();
        let t = encode(
            &Header::default(),
            &json!({"sub":"a","exp":now()-10}),
            &EncodingKey::from_secret(b"s"),
        )
        .unwrap();
        assert!(v.verify(&t).is_err());
        // {"alg":"none","typ":"JWT"} . {"sub":"a"} . (empty signature)
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIn0.";
        assert!(v.verify(none).is_err());
        let hs384 = encode(
            &Header::new(Algorithm::HS384),
            &json!({"sub":"a"}),
            &EncodingKey::from_secret(b"s"),
        )
        .unwrap();
        assert!(matches!(v.verify(&hs384), Err(AuthError::Algorithm)));
    }

    #[test]
    fn permissions_follow_claims_and_namespace() {
        let ns_open = NamespaceOptions::default();
        let ns_closed = NamespaceOptions {
            anonymous: false,
            ..NamespaceOptions::default()
        };
        let ch = ChannelName::parse("chat:lobby").unwrap();
        let anon = Identity::default();
        assert!(anon.can_subscribe(&ch, &ns_open));
        assert!(!anon.can_subscribe(&ch, &ns_closed));
        let user = Identity {
            claims: Some(Claims {
                sub: "u".into(),
                exp: None,
                channels: vec!["chat:*".into()],
                publish: vec![],
            }),
        };
        assert!(user.can_subscribe(&ch, &ns_closed));
        assert!(!user.can_publish(&ch, &ns_closed));
        let no_pub = NamespaceOptions {
            allow_publish: false,
            ..NamespaceOptions::default()
        };
        assert!(!anon.can_publish(&ch, &no_pub));
    }
}
