//! Fuzz target: the token verifier, `switchboard::auth::Verifier::verify` (src/auth.rs),
//! which reads the JWT of every handshake (`?token=`) and `refresh` command, built as the
//! server builds it from `[auth]`: with an HMAC secret (HS256, with leeway), with an EC
//! public key (ES256) and with an RSA public key (RS256). The keys are the test fixtures of
//! tests/fixtures.
//!
//! Input: the first byte picks the mode, the rest is its material.
//! - 0: the rest is a token, as a client would send it, verified by all three verifiers;
//! - 1 (HS256) or 2 (ES256): the rest is `HEADER NUL CLAIMS` (or only `CLAIMS`, under a
//!   plain header), base64url-encoded and signed here with the right key, so that the
//!   verifier gets past the signature to the header, the claims and their times; the same
//!   token is also verified by the verifiers of the other keys.
//!
//! Invariants, past "no panic":
//! - a verifier accepts only tokens whose header names its algorithm (never `none`, never
//!   the other key's algorithm), and none accepts a token signed with a key it does not hold;
//! - an accepted token was not expired (`exp`) nor not yet valid (`nbf`), leeway included;
//! - the claims handed on are those of the token (`sub`).

#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use switchboard::auth::{Claims, Verifier};
use switchboard::config::{AuthSettings, HumanDuration};

const SECRET: &str = "fuzz-secret";
const LEEWAY: u64 = 60;
const EC_PUBLIC: &str = include_str!("../../tests/fixtures/es256_public.pem");
const EC_PRIVATE: &str = include_str!("../../tests/fixtures/es256_private.pem");
const RSA_PUBLIC: &str = include_str!("../../tests/fixtures/rs256_public.pem");

/// The three verifiers, with the algorithm each holds a key for.
static VERIFIERS: LazyLock<[(Algorithm, Verifier); 3]> = LazyLock::new(|| {
    let build = |hmac_secret: Option<&str>, pem: Option<&str>, leeway: u64| {
        Verifier::new(&AuthSettings {
            hmac_secret: hmac_secret.map(String::from),
            public_key_pem: pem.map(String::from),
            leeway: HumanDuration(Duration::from_secs(leeway)),
        })
        .unwrap_or_else(|e| panic!("the fixture keys load: {e}"))
    };
    [
        (Algorithm::HS256, build(Some(SECRET), None, LEEWAY)),
        (Algorithm::ES256, build(None, Some(EC_PUBLIC), 0)),
        (Algorithm::RS256, build(None, Some(RSA_PUBLIC), 0)),
    ]
});

static HS_KEY: LazyLock<EncodingKey> =
    LazyLock::new(|| EncodingKey::from_secret(SECRET.as_bytes()));
static EC_KEY: LazyLock<EncodingKey> = LazyLock::new(|| {
    EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes())
        .unwrap_or_else(|e| panic!("the fixture EC key loads: {e}"))
});

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let token = String::from_utf8_lossy(rest);
            for (alg, verifier) in VERIFIERS.iter() {
                if let Ok(claims) = verifier.verify(&token) {
                    accepted(&token, *alg, &claims, None);
                }
            }
        }
        signed => {
            let (alg, key) = match signed {
                1 => (Algorithm::HS256, &*HS_KEY),
                _ => (Algorithm::ES256, &*EC_KEY),
            };
            let plain = format!(r#"{{"alg":"{alg:?}","typ":"JWT"}}"#);
            let (header, claims) = match rest.iter().position(|&b| b == 0) {
                Some(at) => (&rest[..at], &rest[at + 1..]),
                None => (plain.as_bytes(), rest),
            };
            let message = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(claims)
            );
            let Ok(signature) = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg) else {
                return;
            };
            let token = format!("{message}.{signature}");
            let before = jsonwebtoken::get_current_timestamp();
            for (held, verifier) in VERIFIERS.iter() {
                let result = verifier.verify(&token);
                if *held != alg {
                    assert!(result.is_err(), "{held:?} accepted a token signed {alg:?}");
                } else if let Ok(got) = result {
                    accepted(&token, alg, &got, Some((claims, before)));
                }
            }
        }
    }
});

/// Checks a token that `alg`'s verifier accepted; `signed` has the claims JSON it was made
/// from and the time just before it was verified.
fn accepted(token: &str, alg: Algorithm, claims: &Claims, signed: Option<(&[u8], u64)>) {
    let header = jsonwebtoken::decode_header(token)
        .unwrap_or_else(|e| panic!("an accepted token's header does not decode: {e}"));
    assert_eq!(header.alg, alg, "a verifier accepted another algorithm");
    let Some((json, before)) = signed else {
        return;
    };
    let after = jsonwebtoken::get_current_timestamp();
    let leeway = if alg == Algorithm::HS256 { LEEWAY } else { 0 };
    // serde_json skips the strings of fields nobody reads without checking their UTF-8, so
    // accepted claims may not be JSON to a strict reader: they are read with the bad bytes
    // replaced (what the verifier read of them is the same).
    let Ok(value) = serde_json::from_str::<serde_json::Value>(&String::from_utf8_lossy(json))
    else {
        return;
    };
    // As numbers of any kind: a NumericDate may have a fraction (RFC 7519, section 2).
    let time = |name: &str| value.get(name).and_then(|v| v.as_f64());
    if let Some(exp) = time("exp") {
        assert!(
            exp + leeway as f64 >= before as f64,
            "accepted a token expired at {exp} (now {before})"
        );
    }
    if let Some(nbf) = time("nbf") {
        assert!(
            nbf <= (after + leeway) as f64,
            "accepted a token not valid before {nbf} (now {after})"
        );
    }
    if let Some(sub) = value.get("sub").and_then(|v| v.as_str()) {
        assert_eq!(claims.sub, sub, "the claims handed on are not the token's");
    }
}
