//! `switchboard --check-config`'s output: the resolved [`Settings`] as TOML that `--config`
//! reads back to the same settings. Secrets are left out unless asked for: `auth.hmac_secret`
//! and `api.keys` become comments (a placeholder kept as a value would become a real,
//! guessable secret if the output were fed back), and the password of `engine.redis_url` is
//! replaced (a wrong password fails visibly; the URL's host still shows where it points).
//! `auth.public_key_pem` is public and printed as it is.

use super::{ConfigError, Settings};

/// Stands for a password in a printed `engine.redis_url`.
const HIDDEN: &str = "REDACTED";

impl Settings {
    /// The settings as a TOML document; with `show_secrets` false, secrets are left out as
    /// described in this module's documentation.
    pub fn to_toml(&self, show_secrets: bool) -> Result<String, ConfigError> {
        let mut shown = self.clone();
        // (the line it follows: a header or a key, comment) for each secret left out.
        let mut notes: Vec<(&str, String)> = Vec::new();
        let tell = "`switchboard --check-config --show-secrets` prints";
        if !show_secrets {
            if shown.auth.hmac_secret.take().is_some() {
                notes.push((
                    "[auth]",
                    format!("# hmac_secret is set, left out: {tell} it"),
                ));
            }
            let keys = std::mem::take(&mut shown.api.keys).len();
            if keys > 0 {
                notes.push((
                    "[api]",
                    format!("# keys: {keys} set, left out: {tell} them"),
                ));
            }
            if let Some(url) = hide_password(&shown.engine.redis_url) {
                shown.engine.redis_url = url;
                notes.push((
                    "redis_url = ",
                    format!("# redis_url: its password is shown as {HIDDEN}: {tell} it"),
                ));
            }
            let mut hidden = false;
            for url in &mut shown.engine.redis_urls {
                if let Some(h) = hide_password(url) {
                    *url = h;
                    hidden = true;
                }
            }
            if hidden {
                notes.push((
                    "redis_urls = ",
                    format!("# redis_urls: passwords are shown as {HIDDEN}: {tell} them"),
                ));
            }
        }
        let body = toml::to_string(&shown)
            .map_err(|e| ConfigError(format!("the settings cannot be written as TOML: {e}")))?;
        let mut out = String::from(
            "# The settings as resolved (defaults, then the file, then the environment), \
             printed by\n# `switchboard --check-config`; `switchboard --config FILE` reads \
             them back.\n",
        );
        if !show_secrets {
            out.push_str("# Secrets are left out; `--show-secrets` prints them.\n");
        }
        for line in body.lines() {
            out.push_str(line);
            out.push('\n');
            for (_, note) in notes.iter().filter(|(after, _)| line.starts_with(after)) {
                out.push_str(note);
                out.push('\n');
            }
        }
        Ok(out)
    }
}

/// `redis://user:secret@host` → `redis://user:REDACTED@host`, and a `password=`/`pass=`
/// query parameter likewise; `None` when the URL holds no password.
fn hide_password(url: &str) -> Option<String> {
    let mut out = url.to_string();
    let mut hidden = false;
    if let Some(scheme_end) = out.find("://").map(|i| i + 3) {
        let authority_end = out[scheme_end..]
            .find(['/', '?'])
            .map_or(out.len(), |i| scheme_end + i);
        if let Some(at) = out[scheme_end..authority_end].rfind('@') {
            let userinfo = scheme_end..scheme_end + at;
            if let Some(colon) = out[userinfo.clone()].find(':') {
                out.replace_range(userinfo.start + colon + 1..userinfo.end, HIDDEN);
                hidden = true;
            }
        }
    }
    if let Some(q) = out.find('?') {
        let query: Vec<String> = out[q + 1..]
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k == "password" || k == "pass" => {
                    hidden = true;
                    format!("{k}={HIDDEN}")
                }
                _ => pair.to_string(),
            })
            .collect();
        out.replace_range(q + 1.., &query.join("&"));
    }
    hidden.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_redis_urls_are_hidden() {
        assert_eq!(hide_password("redis://127.0.0.1:6379/0"), None);
        assert_eq!(hide_password("redis://user@host/0"), None);
        assert_eq!(
            hide_password("redis://:pw@host:6379/0").as_deref(),
            Some("redis://:REDACTED@host:6379/0")
        );
        assert_eq!(
            hide_password("rediss://me:p@ss@host").as_deref(),
            Some("rediss://me:REDACTED@host")
        );
        assert_eq!(
            hide_password("redis+unix:///tmp/r.sock?db=1&pass=pw").as_deref(),
            Some("redis+unix:///tmp/r.sock?db=1&pass=REDACTED")
        );
    }
}
