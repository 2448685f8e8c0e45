//! Settings: compiled-in defaults, then an optional TOML file, then `SWITCHBOARD__SECTION__KEY`
//! environment variables (which win). Everything the rest of the node reads about its own
//! configuration comes from the [`Settings`] built here; nothing else reads files or env vars.
//!
//! Unknown keys are refused (`deny_unknown_fields` everywhere) so that a typo in an operator's
//! file or environment stops the program instead of silently running with a default; a
//! refused value gets a message naming its key and where it came from (the variable or the
//! file). How each kind of value is read is in `values`; `SWITCHBOARD_` variables that are
//! not read are found by `env` (the binary warns about them); the TOML that
//! `--check-config` prints is written by `show`.

mod env;
mod show;
mod values;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

pub use env::{unread_variables, variable_for, KEYS, NOT_SETTINGS};
use values::{string_list, unsigned, unsigned_opt};
pub use values::{EngineKind, HumanDuration};

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "SWITCHBOARD";

/// A configuration that could not be loaded: it names the key (or file) at fault.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

fn secs(s: u64) -> HumanDuration {
    HumanDuration(Duration::from_secs(s))
}

/// The whole node configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
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
    /// permessage-deflate on `/ws`.
    pub compression: CompressionSettings,
    /// Options of the default namespace, and of any namespace not named below.
    pub channels: NamespaceOptions,
    /// Per-namespace options; a key left out inherits from `[channels]`.
    #[serde(serialize_with = "sorted")]
    pub namespaces: HashMap<String, NamespaceOverrides>,
}

/// Writes a map in key order, so that printed settings do not change from run to run.
fn sorted<S: Serializer, V: Serialize>(map: &HashMap<String, V>, s: S) -> Result<S::Ok, S::Error> {
    map.iter().collect::<BTreeMap<_, _>>().serialize(s)
}

/// `[server]`
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    #[serde(deserialize_with = "unsigned")]
    pub broker_shards: usize,
    /// Number of HTTP worker threads; 0 means one per core.
    #[serde(deserialize_with = "unsigned")]
    pub workers: usize,
    /// PEM certificate chain; with `tls_key`, the node serves `wss://` and `https://`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Serve the demo page at `/` and the JavaScript client at `/switchboard.js`.
    pub serve_client: bool,
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
            serve_client: true,
        }
    }
}

/// `[heartbeat]`
#[derive(Debug, Clone, Deserialize, Serialize)]
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

/// `[engine]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSettings {
    /// `memory`, `redis` or `redis_cluster`.
    pub kind: EngineKind,
    /// Where the Redis engine connects.
    pub redis_url: String,
    /// Seed addresses of a Redis Cluster (`redis_cluster`): any of its nodes; the rest of
    /// the topology is read from the cluster.
    #[serde(deserialize_with = "string_list")]
    pub redis_urls: Vec<String>,
    /// Prefix of every Redis key and channel this cluster uses.
    pub prefix: String,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            kind: EngineKind::Memory,
            redis_url: "redis://127.0.0.1:6379/0".into(),
            redis_urls: Vec::new(),
            prefix: "switchboard".into(),
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// Keys accepted in `Authorization: apikey <key>`; empty refuses every call.
    // Left out of printed settings when empty, which is also how they are left out as a
    // secret (an empty list is the default).
    #[serde(
        deserialize_with = "string_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub keys: Vec<String>,
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    /// Largest WebSocket message (after reassembly) and largest API body, in bytes.
    #[serde(deserialize_with = "unsigned")]
    pub max_message_size: usize,
    /// Subscriptions one connection may hold at once.
    #[serde(deserialize_with = "unsigned")]
    pub max_subscriptions_per_connection: usize,
    /// WebSocket connections one node accepts at once; past it the handshake gets 503.
    #[serde(deserialize_with = "unsigned")]
    pub max_connections: usize,
    /// Unsent output a session may accumulate before it is closed with 4001.
    #[serde(deserialize_with = "unsigned")]
    pub max_pending_bytes: usize,
    /// Publishes per second one connection may make, with a burst of as many.
    #[serde(deserialize_with = "unsigned")]
    pub client_publish_rate: u32,
    /// Subscribe, history and presence commands per second one connection may send, with a
    /// burst of as many: what reaches the engine besides publications.
    #[serde(deserialize_with = "unsigned")]
    pub client_command_rate: u32,
    /// Malformed commands in a row before the connection is closed with 4004.
    #[serde(deserialize_with = "unsigned")]
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
            client_command_rate: 300,
            max_errors: 10,
        }
    }
}

/// `[compression]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionSettings {
    /// Accept a client's permessage-deflate offer (RFC 7692); false: never negotiate it.
    pub enabled: bool,
    /// Messages whose payload is shorter than this many bytes go out uncompressed.
    #[serde(deserialize_with = "unsigned")]
    pub min_size: usize,
}

impl Default for CompressionSettings {
    fn default() -> Self {
        CompressionSettings {
            enabled: true,
            min_size: 256,
        }
    }
}

/// Options of one namespace, fully resolved.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NamespaceOptions {
    /// Connections without a token may use it.
    pub anonymous: bool,
    /// Clients (not only the API) may publish.
    pub allow_publish: bool,
    /// Publications kept for recovery and `history`; 0 keeps none.
    #[serde(deserialize_with = "unsigned")]
    pub history_size: usize,
    /// How long a publication stays in history.
    pub history_ttl: HumanDuration,
    /// How long a publication's idempotency key is remembered on its channel: a repeat
    /// within it publishes nothing and gets the first result. 0 remembers no key.
    pub idempotency_window: HumanDuration,
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
            idempotency_window: secs(300),
            presence: true,
            join_leave: false,
        }
    }
}

/// `[namespaces.NAME]`: each key left out takes the value under `[channels]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NamespaceOverrides {
    /// See [`NamespaceOptions::anonymous`].
    pub anonymous: Option<bool>,
    /// See [`NamespaceOptions::allow_publish`].
    pub allow_publish: Option<bool>,
    /// See [`NamespaceOptions::history_size`].
    #[serde(deserialize_with = "unsigned_opt")]
    pub history_size: Option<usize>,
    /// See [`NamespaceOptions::history_ttl`].
    pub history_ttl: Option<HumanDuration>,
    /// See [`NamespaceOptions::idempotency_window`].
    pub idempotency_window: Option<HumanDuration>,
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
            idempotency_window: self.idempotency_window.unwrap_or(base.idempotency_window),
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
        let mut vars = Vec::new();
        // `std::env::vars` would panic on a variable that is not UTF-8; only ours matter.
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str().filter(|n| env::is_read(n)) else {
                continue;
            };
            match value.into_string() {
                Ok(value) => vars.push((name.to_string(), value)),
                Err(_) => return Err(ConfigError(format!("{name} is not valid UTF-8"))),
            }
        }
        Self::load_from(path, vars)
    }

    /// Like [`Settings::load`] with an explicit environment, so tests need not touch the
    /// process's own.
    pub fn load_from(
        path: Option<&Path>,
        env: Vec<(String, String)>,
    ) -> Result<Settings, ConfigError> {
        let default_path = Path::new("config/default.toml");
        let file = match path {
            Some(p) if !p.exists() => {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    p.display()
                )))
            }
            Some(p) => FileLayer::Path(p),
            None if default_path.exists() => FileLayer::Path(default_path),
            None => FileLayer::None,
        };
        Self::load_layers(file, env)
    }

    /// Like [`Settings::load_from`] with the file's text given as TOML: the same layers and
    /// checks, for callers that hold the text rather than a path (the config fuzz target).
    pub fn load_from_toml(toml: &str, env: Vec<(String, String)>) -> Result<Settings, ConfigError> {
        Self::load_layers(FileLayer::Toml(toml), env)
    }

    /// The one loader behind [`Settings::load_from`] and [`Settings::load_from_toml`]:
    /// defaults, then the file layer, then the variables of `env` that are read.
    fn load_layers(
        file: FileLayer<'_>,
        env: Vec<(String, String)>,
    ) -> Result<Settings, ConfigError> {
        let mut builder = config::Config::builder();
        let file = match file {
            FileLayer::Path(p) => {
                builder = builder.add_source(config::File::from(p));
                Some(p)
            }
            FileLayer::Toml(text) => {
                builder =
                    builder.add_source(config::File::from_str(text, config::FileFormat::Toml));
                None
            }
            FileLayer::None => None,
        };
        let env_map: HashMap<String, String> =
            env.into_iter().filter(|(k, _)| env::is_read(k)).collect();
        let from = Origin {
            env: &env_map,
            file,
        };
        let environment = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            // Values stay strings and are converted by the target type, so an all-digit
            // secret or API key is not turned into a number.
            .try_parsing(false)
            .source(Some(env_map.clone()));
        builder = builder.add_source(environment);
        let raw = builder.build().map_err(|e| from.plain(e))?;
        let mut settings: Settings = raw.try_deserialize().map_err(|e| from.plain(e))?;
        // `SWITCHBOARD__API__KEYS=` means "no keys", not one empty key.
        settings.api.keys.retain(|k| !k.trim().is_empty());
        settings
            .check()
            .map_err(|(key, why)| ConfigError(format!("key `{key}`{}: {why}", from.of(&key))))?;
        Ok(settings)
    }

    /// Checks relations between keys that types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check()
            .map_err(|(key, why)| ConfigError(format!("key `{key}`: {why}")))
    }

    /// [`Settings::validate`], giving the key at fault and why apart, so that the loader
    /// can say where the value came from.
    fn check(&self) -> Result<(), (String, String)> {
        let err = |key: &str, why: &str| Err((key.to_string(), why.to_string()));
        if self.server.bind.parse::<std::net::SocketAddr>().is_err() {
            return err(
                "server.bind",
                "must be an address such as \"127.0.0.1:8080\"",
            );
        }
        if self.heartbeat.interval.0.is_zero() {
            return err("heartbeat.interval", "must be more than zero");
        }
        // jsonwebtoken computes `now - leeway` in unsigned seconds: a leeway past the Unix
        // epoch (about 56 years) would wrap (every token expired) or panic on the handshake
        // path. A day is already far more than any clock skew.
        if self.auth.leeway.0 > Duration::from_secs(86_400) {
            return err("auth.leeway", "must be at most 1 day");
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
        if self.limits.client_command_rate == 0 {
            return err("limits.client_command_rate", "must be more than zero");
        }
        if self.limits.max_connections == 0 {
            return err("limits.max_connections", "must be more than zero");
        }
        if let Some(bad) = self
            .server
            .allowed_origins
            .iter()
            .find(|o| *o != "*" && !values::is_origin(o))
        {
            return err(
                "server.allowed_origins",
                &format!(
                    "{bad:?} is not an origin: write scheme://host or scheme://host:port, \
                     without a path or a trailing slash (\"http://localhost:3000\"), or \"*\" \
                     for any"
                ),
            );
        }
        if self.engine.prefix.is_empty() || self.engine.prefix.contains(['{', '}', ' ']) {
            return err(
                "engine.prefix",
                "must be non-empty, without braces or spaces",
            );
        }
        if self.engine.kind == EngineKind::RedisCluster {
            if self.engine.redis_urls.is_empty() {
                return err(
                    "engine.redis_urls",
                    "must name at least one node of the Redis Cluster when engine.kind is \"redis_cluster\"",
                );
            }
            if let Some(bad) = self
                .engine
                .redis_urls
                .iter()
                .find(|u| !(u.starts_with("redis://") || u.starts_with("rediss://")))
            {
                return err(
                    "engine.redis_urls",
                    &format!("{bad:?} is not a redis:// or rediss:// URL"),
                );
            }
        }
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            return err("server.tls_cert", "tls_cert and tls_key go together");
        }
        // Each key costs memory for the whole window (about 140 bytes in Redis), and a
        // window has to stay a TTL Redis takes; a day is already far more than a retry needs.
        let longest = Duration::from_secs(86_400);
        if self.channels.idempotency_window.0 > longest {
            return err("channels.idempotency_window", "must be at most 1 day");
        }
        for (name, o) in &self.namespaces {
            if o.idempotency_window.is_some_and(|w| w.0 > longest) {
                return err(
                    &format!("namespaces.{name}.idempotency_window"),
                    "must be at most 1 day",
                );
            }
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

/// The file layer of the settings.
enum FileLayer<'a> {
    /// No file: defaults and the environment only.
    None,
    /// A file, read by `config` (its extension names the format).
    Path(&'a Path),
    /// TOML text.
    Toml(&'a str),
}

/// Where the values being loaded came from, to say so in an error.
struct Origin<'a> {
    /// The variables read (the environment wins over the file).
    env: &'a HashMap<String, String>,
    /// The file read, if any.
    file: Option<&'a Path>,
}

impl Origin<'_> {
    /// The layer that set `key`: its variable (one of a table's keys, for a table), or else
    /// the file.
    fn of(&self, key: &str) -> String {
        let var = variable_for(key).to_ascii_uppercase();
        let sets = |name: &&String| {
            let name = name.to_ascii_uppercase();
            name == var || name.starts_with(&format!("{var}__"))
        };
        match self.env.keys().filter(sets).min() {
            Some(name) => format!(" (from {name})"),
            None => self
                .file
                .map(|f| format!(" (in {})", f.display()))
                .unwrap_or_default(),
        }
    }

    /// `config`'s error in plain words, naming the key and where its value came from:
    /// ``key `limits.max_errors` (from SWITCHBOARD__LIMITS__MAX_ERRORS): must not be
    /// negative; got -1``. `config` says `invalid type: ..., expected ... for key `k` in
    /// the environment`, or names the table of an unknown key rather than the key.
    fn plain(&self, e: config::ConfigError) -> ConfigError {
        use config::ConfigError as E;
        let (key, what) = match e {
            E::Type {
                unexpected,
                expected,
                key,
                ..
            } => (key, format!("expected {expected}; got {unexpected}")),
            E::At { error, key, .. } => match *error {
                E::Type {
                    unexpected,
                    expected,
                    ..
                } => (key, format!("expected {expected}; got {unexpected}")),
                inner => (key, inner.to_string()),
            },
            other => (None, other.to_string()),
        };
        // `SWITCHBOARD__API=1`: serde says "expected struct ApiSettings".
        let what = match what.split_once(", expected struct ") {
            Some((got, _)) => format!(
                "is a table of keys, not a value ({})",
                got.trim_start_matches("invalid type: ")
            ),
            None => what,
        };
        // serde's "invalid type: boolean `true`, expected X" said the way ours are.
        let what = match what
            .strip_prefix("invalid type: ")
            .and_then(|rest| rest.split_once(", expected "))
        {
            Some((got, expected)) => format!("expected {expected}; got {got}"),
            None => what,
        };
        // serde's "unknown field `x`, expected one of ..." names the table, not the key.
        if let Some(rest) = what.strip_prefix("unknown field `") {
            if let Some((field, expected)) = rest.split_once('`') {
                let full = match &key {
                    Some(table) => format!("{table}.{field}"),
                    None => field.to_string(),
                };
                let expected = expected.trim_start_matches(", expected ");
                return ConfigError(format!(
                    "key `{full}`{} is unknown; expected {expected}",
                    self.of(&full)
                ));
            }
        }
        match key {
            Some(key) => ConfigError(format!("key `{key}`{}: {what}", self.of(&key))),
            None => ConfigError(what),
        }
    }
}

#[cfg(test)]
mod tests;
