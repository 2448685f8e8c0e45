//! Settings: compiled-in defaults, then an optional TOML file, then `SWITCHBOARD__SECTION__KEY`
//! environment variables (which win). Everything the rest of the node reads about its own
//! configuration comes from the [`Settings`] built here; nothing else reads files or env vars.
//!
//! Unknown keys are refused (`deny_unknown_fields` everywhere) so that a typo in an operator's
//! file or environment stops the program instead of silently running with a default.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "SWITCHBOARD";

/// A list of strings: a TOML array, or (from the environment) one comma separated string.
fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::List(v) => v,
        Raw::Text(t) => t.split(',').map(|s| s.trim().to_string()).collect(),
    })
}

/// A configuration that could not be loaded: it names the key (or file) at fault.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

/// A duration written as `"250ms"`, `"10s"`, `"5m"` (or a bare number of seconds).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl fmt::Debug for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Secs(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(HumanDuration(Duration::from_secs(s))),
            Raw::Text(t) => humantime::parse_duration(t.trim())
                .map(HumanDuration)
                .map_err(|e| {
                    serde::de::Error::custom(format!(
                        "invalid duration {t:?} ({e}); write it like \"250ms\" or \"10s\""
                    ))
                }),
        }
    }
}

fn secs(s: u64) -> HumanDuration {
    HumanDuration(Duration::from_secs(s))
}

/// The whole node configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Listening socket, origins, shutdown, TLS.
    pub server: ServerSettings,
    /// WebSocket Ping cadence and the silence after which a session is dropped.
    pub heartbeat: HeartbeatSettings,
    /// Which engine holds offsets, history and presence.
    pub engine: EngineSettings,
    /// How JWTs are verified.
    pub auth: AuthSettings,
    /// The backend HTTP API.
    pub api: ApiSettings,
    /// Every per-connection and per-node limit of the contract.
    pub limits: LimitSettings,
    /// Options of the default namespace, and of any namespace not named below.
    pub channels: NamespaceOptions,
    /// Per-namespace options; a key left out inherits from `[channels]`.
    pub namespaces: HashMap<String, NamespaceOverrides>,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address to listen on; port 0 picks a free port (logged as `listening on <addr>`).
    pub bind: String,
    /// Allowed `Origin` headers for browser handshakes; `["*"]` allows any.
    #[serde(deserialize_with = "string_list")]
    pub allowed_origins: Vec<String>,
    /// How long a draining node waits for sessions to close before exiting.
    pub shutdown_timeout: HumanDuration,
    /// This node's id in `welcome` and presence; a random one when empty.
    pub node_id: String,
    /// Number of broker shards; 0 means one per HTTP worker (hosted on its thread).
    pub broker_shards: usize,
    /// Number of HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// PEM certificate chain; with `tls_key`, the node serves `wss://` and `https://`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            bind: "127.0.0.1:8080".into(),
            allowed_origins: vec!["*".into()],
            shutdown_timeout: secs(10),
            node_id: String::new(),
            broker_shards: 0,
            workers: 0,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// `[heartbeat]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeartbeatSettings {
    /// How often the server sends a WebSocket Ping.
    pub interval: HumanDuration,
    /// Silence after which a session is closed with 4000.
    pub timeout: HumanDuration,
}

impl Default for HeartbeatSettings {
    fn default() -> Self {
        HeartbeatSettings {
            interval: secs(10),
            timeout: secs(30),
        }
    }
}

/// Which engine implementation runs behind the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// In-process: one node alone.
    Memory,
    /// Redis shared by every node of a cluster.
    Redis,
}

/// `[engine]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSettings {
    /// `memory` or `redis`.
    pub kind: EngineKind,
    /// Where the Redis engine connects.
    pub redis_url: String,
    /// Prefix of every Redis key and channel this cluster uses.
    pub prefix: String,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            kind: EngineKind::Memory,
            redis_url: "redis://127.0.0.1:6379/0".into(),
            prefix: "switchboard".into(),
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Shared secret for HS256 tokens.
    pub hmac_secret: Option<String>,
    /// RSA or EC public key (PEM text, or a path to a PEM file) for RS256 / ES256 tokens.
    pub public_key_pem: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: HumanDuration,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            hmac_secret: None,
            public_key_pem: None,
            leeway: secs(0),
        }
    }
}

/// `[api]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// Keys accepted in `Authorization: apikey <key>`; empty refuses every call.
    #[serde(deserialize_with = "string_list")]
    pub keys: Vec<String>,
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    /// Largest WebSocket message (after reassembly) and largest API body, in bytes.
    pub max_message_size: usize,
    /// Subscriptions one connection may hold at once.
    pub max_subscriptions_per_connection: usize,
    /// WebSocket connections one node accepts at once; past it the handshake gets 503.
    pub max_connections: usize,
    /// Unsent output a session may accumulate before it is closed with 4001.
    pub max_pending_bytes: usize,
    /// Publishes per second one connection may make, with a burst of as many.
    pub client_publish_rate: u32,
    /// Malformed commands in a row before the connection is closed with 4004.
    pub max_errors: u32,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            max_message_size: 65536,
            max_subscriptions_per_connection: 256,
            max_connections: 100_000,
            max_pending_bytes: 1_048_576,
            client_publish_rate: 100,
            max_errors: 10,
        }
    }
}

/// Options of one namespace, fully resolved.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NamespaceOptions {
    /// Connections without a token may use it.
    pub anonymous: bool,
    /// Clients (not only the API) may publish.
    pub allow_publish: bool,
    /// Publications kept for recovery and `history`; 0 keeps none.
    pub history_size: usize,
    /// How long a publication stays in history.
    pub history_ttl: HumanDuration,
    /// `presence` is answered.
    pub presence: bool,
    /// Subscribers get `join`/`leave` pushes.
    pub join_leave: bool,
}

impl Default for NamespaceOptions {
    fn default() -> Self {
        NamespaceOptions {
            anonymous: true,
            allow_publish: true,
            history_size: 100,
            history_ttl: secs(300),
            presence: true,
            join_leave: false,
        }
    }
}

/// `[namespaces.NAME]`: each key left out takes the value under `[channels]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NamespaceOverrides {
    /// See [`NamespaceOptions::anonymous`].
    pub anonymous: Option<bool>,
    /// See [`NamespaceOptions::allow_publish`].
    pub allow_publish: Option<bool>,
    /// See [`NamespaceOptions::history_size`].
    pub history_size: Option<usize>,
    /// See [`NamespaceOptions::history_ttl`].
    pub history_ttl: Option<HumanDuration>,
    /// See [`NamespaceOptions::presence`].
    pub presence: Option<bool>,
    /// See [`NamespaceOptions::join_leave`].
    pub join_leave: Option<bool>,
}

impl NamespaceOverrides {
    fn resolve(&self, base: &NamespaceOptions) -> NamespaceOptions {
        NamespaceOptions {
            anonymous: self.anonymous.unwrap_or(base.anonymous),
            allow_publish: self.allow_publish.unwrap_or(base.allow_publish),
            history_size: self.history_size.unwrap_or(base.history_size),
            history_ttl: self.history_ttl.unwrap_or(base.history_ttl),
            presence: self.presence.unwrap_or(base.presence),
            join_leave: self.join_leave.unwrap_or(base.join_leave),
        }
    }
}

/// Namespace options resolved once at start-up, looked up per command.
#[derive(Debug, Clone)]
pub struct Namespaces {
    default: NamespaceOptions,
    named: HashMap<String, NamespaceOptions>,
}

impl Namespaces {
    /// Resolves every `[namespaces.NAME]` against `[channels]`.
    pub fn new(settings: &Settings) -> Self {
        let named = settings
            .namespaces
            .iter()
            .map(|(name, o)| (name.clone(), o.resolve(&settings.channels)))
            .collect();
        Namespaces {
            default: settings.channels.clone(),
            named,
        }
    }

    /// The options for a namespace name (`""` is the default namespace).
    pub fn get(&self, namespace: &str) -> &NamespaceOptions {
        self.named.get(namespace).unwrap_or(&self.default)
    }
}

impl Settings {
    /// Loads defaults, then `path` (or `config/default.toml` when it exists and no path is
    /// given), then the process environment.
    pub fn load(path: Option<&Path>) -> Result<Settings, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(path, vars)
    }

    /// Like [`Settings::load`] with an explicit environment, so tests need not touch the
    /// process's own.
    pub fn load_from(
        path: Option<&Path>,
        env: Vec<(String, String)>,
    ) -> Result<Settings, ConfigError> {
        let mut builder = config::Config::builder();
        let default_path = Path::new("config/default.toml");
        match path {
            Some(p) => {
                if !p.exists() {
                    return Err(ConfigError(format!(
                        "config file {} does not exist",
                        p.display()
                    )));
                }
                builder = builder.add_source(config::File::from(p));
            }
            None if default_path.exists() => {
                builder = builder.add_source(config::File::from(default_path));
            }
            None => {}
        }
        let env_map: HashMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
            .collect();
        let environment = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            // Values stay strings and are converted by the target type, so an all-digit
            // secret or API key is not turned into a number.
            .try_parsing(false)
            .source(Some(env_map));
        builder = builder.add_source(environment);
        let raw = builder.build().map_err(|e| ConfigError(e.to_string()))?;
        let mut settings: Settings = raw
            .try_deserialize()
            .map_err(|e| ConfigError(e.to_string()))?;
        // `SWITCHBOARD__API__KEYS=` means "no keys", not one empty key.
        settings.api.keys.retain(|k| !k.trim().is_empty());
        settings.validate()?;
        Ok(settings)
    }

    /// Checks relations between keys that types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |key: &str, why: &str| Err(ConfigError(format!("key `{key}`: {why}")));
        if self.server.bind.parse::<std::net::SocketAddr>().is_err() {
            return err(
                "server.bind",
                "must be an address such as \"127.0.0.1:8080\"",
            );
        }
        if self.heartbeat.interval.0.is_zero() {
            return err("heartbeat.interval", "must be more than zero");
        }
        if self.heartbeat.timeout.0 <= self.heartbeat.interval.0 {
            return err(
                "heartbeat.timeout",
                "must be longer than heartbeat.interval",
            );
        }
        if self.limits.max_message_size < 64 {
            return err("limits.max_message_size", "must be at least 64 bytes");
        }
        if self.limits.max_pending_bytes < self.limits.max_message_size {
            return err(
                "limits.max_pending_bytes",
                "must be at least limits.max_message_size",
            );
        }
        if self.limits.client_publish_rate == 0 {
            return err("limits.client_publish_rate", "must be more than zero");
        }
        if self.limits.max_connections == 0 {
            return err("limits.max_connections", "must be more than zero");
        }
        if self.engine.prefix.is_empty() || self.engine.prefix.contains(['{', '}', ' ']) {
            return err(
                "engine.prefix",
                "must be non-empty, without braces or spaces",
            );
        }
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            return err("server.tls_cert", "tls_cert and tls_key go together");
        }
        for name in self.namespaces.keys() {
            if name.is_empty()
                || !name.bytes().all(crate::channel::is_channel_byte)
                || name.contains(':')
            {
                return err(
                    &format!("namespaces.{name}"),
                    "is not a valid namespace name",
                );
            }
        }
        Ok(())
    }

    /// HTTP worker count with `0` resolved to the number of cores.
    pub fn workers(&self) -> usize {
        match self.server.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// Broker shard count with `0` resolved to one per HTTP worker (each hosted on its
    /// worker's thread).
    pub fn broker_shards(&self) -> usize {
        match self.server.broker_shards {
            0 => self.workers(),
            n => n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_contract() {
        let s = Settings::load_from(None, vec![]).expect("defaults load");
        assert_eq!(s.server.bind, "127.0.0.1:8080");
        assert_eq!(s.server.allowed_origins, vec!["*"]);
        assert_eq!(s.heartbeat.interval.0, Duration::from_secs(10));
        assert_eq!(s.heartbeat.timeout.0, Duration::from_secs(30));
        assert_eq!(s.limits.max_message_size, 65536);
        assert_eq!(s.limits.max_pending_bytes, 1_048_576);
        assert_eq!(s.channels.history_ttl.0, Duration::from_secs(300));
        assert!(s.api.keys.is_empty());
    }

    #[test]
    fn environment_overrides_with_lists_and_namespaces() {
        let s = Settings::load_from(
            None,
            env(&[
                ("SWITCHBOARD__API__KEYS", "k1,k2"),
                ("SWITCHBOARD__HEARTBEAT__INTERVAL", "250ms"),
                ("SWITCHBOARD__LIMITS__MAX_ERRORS", "3"),
                ("SWITCHBOARD__AUTH__HMAC_SECRET", "12345"),
                ("SWITCHBOARD__LIMITS__MAX_CONNECTIONS", "7"),
                ("SWITCHBOARD__CHANNELS__PRESENCE", "false"),
                ("SWITCHBOARD__NAMESPACES__CHAT__JOIN_LEAVE", "true"),
                ("OTHER__THING", "x"),
            ]),
        )
        .expect("env loads");
        assert_eq!(s.api.keys, vec!["k1", "k2"]);
        assert_eq!(s.heartbeat.interval.0, Duration::from_millis(250));
        assert_eq!(s.limits.max_errors, 3);
        assert_eq!(s.auth.hmac_secret.as_deref(), Some("12345"));
        assert_eq!(s.limits.max_connections, 7);
        assert!(!s.channels.presence);
        let one = Settings::load_from(None, env(&[("SWITCHBOARD__API__KEYS", "12345")]))
            .expect("an all-digit key");
        assert_eq!(one.api.keys, vec!["12345"]);
        let none =
            Settings::load_from(None, env(&[("SWITCHBOARD__API__KEYS", "")])).expect("empty keys");
        assert!(none.api.keys.is_empty());
        let ns = Namespaces::new(&s);
        assert!(ns.get("chat").join_leave);
        assert!(ns.get("chat").anonymous, "inherits from [channels]");
        assert!(!ns.get("other").join_leave);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Settings::load_from(None, env(&[("SWITCHBOARD__LIMITS__MAX_BANANAS", "1")]))
            .expect_err("unknown key refused");
        assert!(e.to_string().contains("max_bananas"), "{e}");
    }

    #[test]
    fn bad_duration_is_named() {
        let e = Settings::load_from(None, env(&[("SWITCHBOARD__HEARTBEAT__TIMEOUT", "soon")]))
            .expect_err("bad duration refused");
        assert!(e.to_string().contains("timeout"), "{e}");
    }
}
