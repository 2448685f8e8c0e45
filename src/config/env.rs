//! Environment variables that look meant for Switchboard but that the loader does not read:
//! `SWITCHBOARD_API_KEYS` (one underscore) or a lowercase `switchboard__api__keys` would
//! otherwise be ignored without a word. [`unread_variables`] names each one, with the
//! variable the operator probably meant; `main` logs them as warnings before loading.
//! A `SWITCHBOARD__...` variable naming an unknown key is not a warning: the loader refuses
//! it (exit 2), like an unknown key in the file.

use super::ENV_PREFIX;

/// Every key of the settings but the per-namespace ones (`namespaces.NAME.KEY`, with the
/// keys of `CHANNEL_KEYS`). A unit test checks it against [`super::Settings`].
pub const KEYS: &[&str] = &[
    "server.bind",
    "server.allowed_origins",
    "server.shutdown_timeout",
    "server.node_id",
    "server.broker_shards",
    "server.workers",
    "server.tls_cert",
    "server.tls_key",
    "server.serve_client",
    "heartbeat.interval",
    "heartbeat.timeout",
    "engine.kind",
    "engine.redis_url",
    "engine.redis_urls",
    "engine.prefix",
    "auth.hmac_secret",
    "auth.public_key_pem",
    "auth.leeway",
    "api.keys",
    "limits.max_message_size",
    "limits.max_subscriptions_per_connection",
    "limits.max_connections",
    "limits.max_pending_bytes",
    "limits.client_publish_rate",
    "limits.client_command_rate",
    "limits.max_errors",
    "compression.enabled",
    "compression.min_size",
    "channels.anonymous",
    "channels.allow_publish",
    "channels.history_size",
    "channels.history_ttl",
    "channels.idempotency_window",
    "channels.presence",
    "channels.join_leave",
];

/// The keys of `[channels]`, which `[namespaces.NAME]` takes too.
const CHANNEL_KEYS: &[&str] = &[
    "anonymous",
    "allow_publish",
    "history_size",
    "history_ttl",
    "idempotency_window",
    "presence",
    "join_leave",
];

/// `SWITCHBOARD_` variables that are not settings and are never warned about: the project's
/// own scripts and compose file set them for themselves, not for the binary.
/// `SWITCHBOARD_BIN`: the binary `scripts/cluster.sh` runs; `SWITCHBOARD_API_KEY`:
/// `docker-compose.yml`'s API key, which it hands to the nodes as `SWITCHBOARD__API__KEYS`;
/// `SWITCHBOARD_LB_BIND`: where `docker-compose.yml` publishes the load balancer;
/// `SWITCHBOARD_LB_CLUSTER_BIND`: the same for its profile `redis-cluster`'s load balancer.
pub const NOT_SETTINGS: &[&str] = &[
    "SWITCHBOARD_BIN",
    "SWITCHBOARD_API_KEY",
    "SWITCHBOARD_LB_BIND",
    "SWITCHBOARD_LB_CLUSTER_BIND",
];

/// The variable that sets `key` (`api.keys` → `SWITCHBOARD__API__KEYS`).
pub fn variable_for(key: &str) -> String {
    format!("{ENV_PREFIX}__{}", key.replace('.', "__").to_uppercase())
}

/// Whether the loader reads `name` (it takes the prefix with two underscores, in capitals).
pub(super) fn is_read(name: &str) -> bool {
    name.strip_prefix(ENV_PREFIX)
        .is_some_and(|rest| rest.starts_with("__"))
}

/// One warning for each variable of `names` that starts with `SWITCHBOARD_` in any case,
/// is not read, and is not one of [`NOT_SETTINGS`].
pub fn unread_variables<I, S>(names: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out: Vec<String> = names
        .into_iter()
        .filter_map(|name| {
            let name = name.as_ref();
            let upper = name.to_ascii_uppercase();
            let ours = upper
                .strip_prefix(ENV_PREFIX)
                .is_some_and(|rest| rest.starts_with('_'));
            if !ours || is_read(name) || NOT_SETTINGS.contains(&name) {
                return None;
            }
            Some(match meant(&upper) {
                Some((key, var)) => format!(
                    "environment variable {name} is not read: did you mean {var} \
                     (the key `{key}`)? Settings take two underscores after SWITCHBOARD \
                     and between the parts of the key"
                ),
                None => format!(
                    "environment variable {name} is not read: settings are \
                     SWITCHBOARD__SECTION__KEY, with two underscores \
                     (e.g. SWITCHBOARD__API__KEYS; config/default.toml lists every key)"
                ),
            })
        })
        .collect();
    out.sort();
    out
}

/// The key (and its variable) that an unread `SWITCHBOARD_...` name (in capitals) most
/// likely meant, comparing with runs of underscores made one.
fn meant(upper: &str) -> Option<(String, String)> {
    let flat = |s: &str| {
        s.to_ascii_lowercase()
            .split(['_', '.'])
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join("_")
    };
    let rest = flat(upper.strip_prefix(ENV_PREFIX)?);
    if let Some(key) = KEYS.iter().find(|k| flat(k) == rest) {
        return Some((key.to_string(), variable_for(key)));
    }
    // `NAMESPACES_CHAT_JOIN_LEAVE`: the name is what lies between section and key.
    let named = rest.strip_prefix("namespaces_")?;
    CHANNEL_KEYS.iter().find_map(|k| {
        let name = named.strip_suffix(&format!("_{k}"))?;
        let key = format!("namespaces.{name}.{k}");
        Some((key.clone(), variable_for(&key)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unread_variables_are_named_with_what_was_meant() {
        let w = unread_variables([
            "SWITCHBOARD_API_KEYS",
            "SWITCHBOARD__API__KEYS",
            "SWITCHBOARD_BIN",
            "SWITCHBOARD_API_KEY",
            "switchboard__limits__max_errors",
            "SWITCHBOARD_NAMESPACES_CHAT_JOIN_LEAVE",
            "SWITCHBOARD_COLOUR",
            "SWITCHBOARDS",
            "PATH",
        ]);
        assert_eq!(w.len(), 4, "{w:#?}");
        assert!(w.iter().any(|l| l.contains(
            "SWITCHBOARD_API_KEYS is not read: did you mean \
             SWITCHBOARD__API__KEYS (the key `api.keys`)"
        )));
        assert!(w.iter().any(|l| l
            .contains("switchboard__limits__max_errors is not read: did you mean SWITCHBOARD__LIMITS__MAX_ERRORS")));
        assert!(w
            .iter()
            .any(|l| l.contains("did you mean SWITCHBOARD__NAMESPACES__CHAT__JOIN_LEAVE")));
        assert!(w
            .iter()
            .any(|l| l.contains("SWITCHBOARD_COLOUR is not read: settings are")));
    }
}
