//! `switchboard token`: mints an HS256 token for development (claims `sub`, `exp`,
//! `channels`, `publish`), or, with `--check`, says whether the server would accept a
//! token and why not. The check builds the server's own [`Verifier`] from the same
//! configuration as the server (`--config`, `SWITCHBOARD__*` variables), so its verdict is
//! the handshake's; minting reads the configuration only for a secret not given as
//! `--secret`.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use super::{print_line, Failure};
use crate::auth::{AuthError, Claims, Verifier};
use crate::channel::is_channel_byte;
use crate::config::{self, Settings};

/// `switchboard token`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Mint: prints the token on stdout. The secret is --secret, else the configuration's \
auth.hmac_secret (--config, SWITCHBOARD__AUTH__HMAC_SECRET).

Check: reads the configuration as the server does and prints `ok: sub=..., expires ..., \
channels ..., publish ...` (exit 0), or why the server would refuse the token (exit 1).

Exit codes: 0 minted, or accepted; 1 refused; 2 bad flags, a bad pattern, no secret, or a \
configuration that does not load.")]
pub struct TokenArgs {
    /// Check TOKEN against the server's configuration instead of minting one.
    #[arg(long, value_name = "TOKEN", conflicts_with_all = ["secret", "sub", "channels", "publish"])]
    pub check: Option<String>,
    /// The HS256 secret (default: the configuration's `auth.hmac_secret`).
    #[arg(long)]
    pub secret: Option<String>,
    /// The user id (the `sub` claim).
    #[arg(long, value_name = "USER", required_unless_present = "check")]
    pub sub: Option<String>,
    /// Channels the user may subscribe to (and read presence and history of): names or
    /// prefixes ending in `*`, comma separated (`chat:*,news`).
    #[arg(long, value_name = "PATTERNS", value_delimiter = ',', value_parser = pattern)]
    pub channels: Vec<String>,
    /// Channels the user may publish to, as `--channels`.
    #[arg(long, value_name = "PATTERNS", value_delimiter = ',', value_parser = pattern)]
    pub publish: Vec<String>,
    /// How long the token is valid: `exp` = now + TTL (`30m`, `1h`, `7d`).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
}

/// A claim pattern as the server reads it: a channel name, or a prefix of one ending in
/// `*` (`*` alone grants every channel).
fn pattern(p: &str) -> Result<String, String> {
    let name = p.strip_suffix('*').unwrap_or(p);
    if (name.is_empty() && p.is_empty()) || !name.bytes().all(is_channel_byte) {
        return Err(format!(
            "{p:?} is not a channel pattern: a name of A-Z a-z 0-9 _ - : . @ = /, or such \
             a prefix ending in *"
        ));
    }
    Ok(p.to_string())
}

/// Runs `token`.
pub fn run(args: TokenArgs, config: Option<&Path>) -> Result<(), Failure> {
    match &args.check {
        Some(token) => check(token, config),
        None => mint(&args, config),
    }
}

/// The configuration, as the server loads it.
fn settings(config: Option<&Path>) -> Result<Settings, Failure> {
    let names = std::env::vars_os().filter_map(|(name, _)| name.into_string().ok());
    for warning in config::unread_variables(names) {
        log::warn!("{warning}");
    }
    Settings::load(config).map_err(|e| Failure::usage(e.to_string()))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The claims of a minted token.
#[derive(Serialize)]
struct Minted<'a> {
    sub: &'a str,
    exp: u64,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    channels: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    publish: &'a [String],
}

fn mint(args: &TokenArgs, config: Option<&Path>) -> Result<(), Failure> {
    let secret = match &args.secret {
        Some(secret) => secret.clone(),
        None => settings(config)?.auth.hmac_secret.unwrap_or_default(),
    };
    if secret.is_empty() {
        return Err(Failure::usage(
            "no secret: give --secret, or set auth.hmac_secret in the configuration",
        ));
    }
    let claims = Minted {
        sub: args.sub.as_deref().unwrap_or_default(),
        exp: now().saturating_add(args.ttl.as_secs()),
        channels: &args.channels,
        publish: &args.publish,
    };
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| Failure::failed(format!("cannot sign: {e}")))?;
    print_line(&token).map_err(|e| Failure::failed(format!("cannot write: {e}")))
}

fn check(token: &str, config: Option<&Path>) -> Result<(), Failure> {
    let settings = settings(config)?;
    let auth = &settings.auth;
    let verifier = Verifier::new(auth).map_err(Failure::usage)?;
    let configured = |key: &Option<String>| key.as_deref().is_some_and(|k| !k.is_empty());
    if !configured(&auth.hmac_secret) && !configured(&auth.public_key_pem) {
        return Err(Failure::failed(
            "refused: no key is configured (auth.hmac_secret or auth.public_key_pem), so the \
             server accepts no token: it answers 401 \"token algorithm is not accepted\"",
        ));
    }
    match verifier.verify(token) {
        Ok(claims) => print_line(&accepted(&claims))
            .map_err(|e| Failure::failed(format!("cannot write: {e}"))),
        Err(AuthError::Algorithm) => {
            let alg = jsonwebtoken::decode_header(token)
                .map_or_else(|_| "?".to_string(), |h| format!("{:?}", h.alg));
            Err(Failure::failed(format!(
                "refused: token algorithm is not accepted (the token says {alg}; the \
                 configuration has {})",
                match (
                    configured(&auth.hmac_secret),
                    configured(&auth.public_key_pem)
                ) {
                    (true, true) => "an HS256 secret and a public key",
                    (true, false) => "an HS256 secret only",
                    _ => "a public key only",
                }
            )))
        }
        Err(e) => Err(Failure::failed(format!("refused: {e}{}", hint(token, &e)))),
    }
}

/// `ok: sub=…, expires …, channels …, publish …`.
fn accepted(claims: &Claims) -> String {
    let expires = match claims.exp {
        None => "never".to_string(),
        Some(exp) => {
            let at = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(exp));
            let left = Duration::from_secs(exp.saturating_sub(now()));
            format!("{at} (in {})", humantime::format_duration(left))
        }
    };
    let list = |patterns: &[String]| match patterns {
        [] => "(none)".to_string(),
        p => p.join(","),
    };
    format!(
        "ok: sub={}, expires {expires}, channels {}, publish {}",
        claims.sub,
        list(&claims.channels),
        list(&claims.publish)
    )
}

/// The server's reason in plainer words, where it is terse.
fn hint(token: &str, e: &AuthError) -> String {
    let AuthError::Invalid(why) = e else {
        return String::new();
    };
    match why.as_str() {
        "ExpiredSignature" => match unverified_exp(token) {
            Some(exp) => format!(
                " (expired at {})",
                humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(exp))
            ),
            None => " (expired)".into(),
        },
        "InvalidSignature" => " (bad signature: signed with another secret or key)".into(),
        "ImmatureSignature" => " (not valid yet: its nbf is in the future)".into(),
        "InvalidToken" => " (not a JWT: three base64url parts separated by dots)".into(),
        _ => String::new(),
    }
}

/// The `exp` claim, read without checking the signature: only to say when a token that
/// is refused anyway expired.
fn unverified_exp(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()?
        .get("exp")?
        .as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_names_or_prefixes() {
        for ok in ["chat:lobby", "chat:*", "*", "a/b@c=d"] {
            assert_eq!(pattern(ok).as_deref(), Ok(ok));
        }
        for bad in ["", "chat lobby", "chat:*:x", "**"] {
            assert!(pattern(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_ok_line_names_every_claim() {
        let claims = Claims {
            sub: "alice".into(),
            exp: None,
            channels: vec!["chat:*".into(), "news".into()],
            publish: vec![],
        };
        assert_eq!(
            accepted(&claims),
            "ok: sub=alice, expires never, channels chat:*,news, publish (none)"
        );
    }
}
