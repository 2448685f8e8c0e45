//! The Redis engine: offsets, epochs, history, presence and cross-node delivery kept in one
//! Redis shared by every node of a cluster. It talks to Redis only (a connection manager for
//! commands, one dedicated pub/sub connection per node) and to the node only through the
//! [`EngineHandler`] it is given; the broker, sessions and API see it as an `Arc<dyn Engine>`.
//!
//! Publishing is one server-side function (`migrations/0001_functions.lua`, a Redis 7
//! FUNCTION library applied under a lock by [`migrate`] or on start): it assigns the offset,
//! appends to the history stream, trims and expires it, and PUBLISHes a compact payload
//! `p<offset>:<epoch>:{"data":..,"info":..}` on `<p>:ch:{channel}`. Each node builds the
//! client `message` frame once on receipt with [`message_frame`], so a publication is still
//! serialized once per node, and the frame format stays in `protocol` instead of being
//! copied into Lua. Pushes (join/leave) go on the same Redis channel as `u<frame>`.
//!
//! One long-lived reader task per node (spawned by [`RedisEngine::start`], so it must run on
//! a runtime that lives as long as the node: the main actix system runtime, not a worker's)
//! owns the pub/sub connection. It delivers each channel's publications in offset order with
//! no gap within an epoch: it remembers the last offset delivered per channel, and when a
//! message jumps ahead (a lost message, a reconnect) it reads the missing range from history
//! first. When Redis goes away it marks the engine not ready, reconnects with exponential
//! backoff and jitter, re-applies migrations if Redis came back empty, resubscribes every
//! channel the node holds and fills the gaps from history. A second task refreshes this
//! node's presence entries and its liveness/subscriber counts in `<p>:nodes`.
//!
//! Key layout (prefix `p`): see ARCHITECTURE.md and the header of the migration file.
//! Lifetimes: history lives `history_ttl` after the last publication; the meta hash (offset
//! and epoch) lives [`META_GRACE`] longer, so a client that comes back just after its history
//! expired still sees the same epoch and a latest offset, and gets `recovered: false` only
//! when something was really lost; after that the channel starts a new epoch, as the memory
//! engine does when it forgets an idle channel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytestring::ByteString;
use futures_util::StreamExt;
use parking_lot::Mutex;
use rand::Rng;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream,
};
use redis::{Msg, RedisError, Value};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, watch};

use super::{
    recover_after, Engine, EngineError, EngineHandler, HistoryResult, PresenceEntry, PublishResult,
};
use crate::channel::ChannelName;
use crate::config::{NamespaceOptions, Settings};
use crate::protocol::{message_frame, ClientInfo, Publication, StreamPosition};

/// The migrations this build knows, in order: (schema version, function library source).
/// Each library is named `switchboard_v<N>` and its functions `switchboard_v<N>_*`, because
/// Redis function names are global and two versions must be loadable side by side.
pub const MIGRATIONS: &[(u32, &str)] = &[(1, include_str!("../../migrations/0001_functions.lua"))];

/// The highest schema version this build knows (the last of [`MIGRATIONS`]).
pub const SCHEMA_VERSION: u32 = 1;

/// How much longer than its history a channel's meta hash (offset, epoch) lives.
pub const META_GRACE: Duration = Duration::from_secs(60);

const FN_PUBLISH: &str = "switchboard_v1_publish";
const FN_HISTORY: &str = "switchboard_v1_history";
const FN_RANGE: &str = "switchboard_v1_range";
const FN_PRESENCE_ADD: &str = "switchboard_v1_presence_add";
const FN_PRESENCE_LIST: &str = "switchboard_v1_presence_list";
const FN_NODE_BEAT: &str = "switchboard_v1_node_beat";
const FN_LIVE_NODES: &str = "switchboard_v1_live_nodes";

/// How long the migration lock is held at most, should its holder die mid-way.
const LOCK_TTL_MS: u64 = 10_000;

/// Publications held for a channel whose subscription baseline is not known yet; past it
/// they are dropped (and the gap filler finds them in history).
const MAX_PENDING: usize = 10_000;

/// Channels per SUBSCRIBE command when resubscribing after a reconnect.
const SUBSCRIBE_CHUNK: usize = 256;

/// Connection and timing options of the Redis engine.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://host:port/db`.
    pub url: String,
    /// Prefix of every key and channel.
    pub prefix: String,
    /// This node's id (in presence and `<p>:nodes`).
    pub node_id: String,
    /// Longest wait for any one command before answering `unavailable`.
    pub command_timeout: Duration,
    /// How long [`RedisEngine::start`] waits for Redis before starting not ready.
    pub start_timeout: Duration,
    /// Longest pause between two reconnection attempts (the backoff cap).
    pub max_backoff: Duration,
    /// How often the pub/sub connection is pinged and the schema checked.
    pub health_period: Duration,
    /// How often this node's presence entries are refreshed; they expire after three.
    pub presence_period: Duration,
    /// How often this node records itself and its counts in `<p>:nodes`; it counts as
    /// gone after five.
    pub node_period: Duration,
    /// How long `disconnect_user` waits for the other nodes' answers.
    pub disconnect_wait: Duration,
    /// How long a node waits for another node's migration lock.
    pub lock_wait: Duration,
}

impl RedisOptions {
    /// Options from `[engine]` with the default timings.
    pub fn from_settings(settings: &Settings, node_id: &str) -> Self {
        RedisOptions {
            url: settings.engine.redis_url.clone(),
            prefix: settings.engine.prefix.clone(),
            node_id: node_id.to_string(),
            command_timeout: Duration::from_millis(1500),
            start_timeout: Duration::from_secs(2),
            max_backoff: Duration::from_secs(2),
            health_period: Duration::from_secs(1),
            presence_period: Duration::from_secs(5),
            node_period: Duration::from_secs(2),
            disconnect_wait: Duration::from_secs(1),
            lock_wait: Duration::from_secs(15),
        }
    }
}

/// Why migrations could not be applied.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MigrateError {
    /// Redis holds a schema written by a newer Switchboard.
    #[error("redis schema version {found} is newer than version {known}, the highest this build knows; upgrade this node")]
    TooNew {
        /// The version found in `<p>:schema`.
        found: u32,
        /// [`SCHEMA_VERSION`].
        known: u32,
    },
    /// Redis could not be reached or refused a command.
    #[error("cannot migrate redis: {0}")]
    Redis(String),
}

/// Key and channel names of one prefix.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
    ch_prefix: String,
    control: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_string(),
            ch_prefix: format!("{prefix}:ch:{{"),
            control: format!("{prefix}:control"),
        }
    }
    fn meta(&self, ch: &str) -> String {
        format!("{}:meta:{{{ch}}}", self.prefix)
    }
    fn history(&self, ch: &str) -> String {
        format!("{}:history:{{{ch}}}", self.prefix)
    }
    fn pubsub(&self, ch: &str) -> String {
        format!("{}{ch}}}", self.ch_prefix)
    }
    fn presence(&self, ch: &str) -> String {
        format!("{}:presence:{{{ch}}}", self.prefix)
    }
    fn presence_exp(&self, ch: &str) -> String {
        format!("{}:presence:{{{ch}}}:exp", self.prefix)
    }
    fn schema(&self) -> String {
        format!("{}:schema", self.prefix)
    }
    fn lock(&self) -> String {
        format!("{}:migrate:lock", self.prefix)
    }
    fn migration_log(&self) -> String {
        format!("{}:migrations", self.prefix)
    }
    fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
    fn subs(&self, node: &str) -> String {
        format!("{}:subs:{{{node}}}", self.prefix)
    }
    fn disc(&self, req: &str) -> String {
        format!("{}:disc:{{{req}}}", self.prefix)
    }
    /// The channel name inside a `<p>:ch:{name}` pub/sub channel.
    fn channel_of<'a>(&self, pubsub: &'a str) -> Option<&'a str> {
        pubsub.strip_prefix(&self.ch_prefix)?.strip_suffix('}')
    }
}

/// A publication as stored in history and sent over pub/sub (without offset and epoch,
/// which travel in front of it).
#[derive(Serialize)]
struct StoredRef<'a> {
    data: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<&'a ClientInfo>,
}

#[derive(Deserialize)]
struct Stored {
    data: Box<RawValue>,
    #[serde(default)]
    info: Option<ClientInfo>,
}

/// A channel's presence entries held by this node: (client, info JSON).
type PresencePairs = Vec<(String, String)>;

/// A presence entry's value in `<p>:presence:{ch}`.
#[derive(Serialize, Deserialize)]
struct PresenceInfo {
    user: String,
    node: String,
}

/// A node-to-node command on `<p>:control`.
#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Control {
    /// Disconnect the user's sessions and answer in `<p>:disc:{req}`.
    Disconnect { user: String, req: String },
}

/// Where a channel's stream stands for this node.
#[derive(Debug, Clone)]
struct Position {
    /// `None` when the channel had no meta hash when the node subscribed.
    epoch: Option<Arc<str>>,
    offset: u64,
}

/// A publication received over pub/sub, not yet delivered.
struct Incoming {
    offset: u64,
    epoch: Arc<str>,
    payload: String,
}

/// A channel the node is subscribed to.
struct Track {
    name: ChannelName,
    /// Tells one subscription from an earlier one of the same channel.
    generation: u64,
    /// The last position delivered; `None` until `subscribe_node` has read the baseline.
    last: Option<Position>,
    /// Publications received before the baseline was known.
    pending: Vec<Incoming>,
}

/// The channel's track if it is still the subscription a background read (gap fill,
/// catch-up, new epoch) started for: a read that raced an unsubscribe and resubscribe must
/// not touch the newer subscription.
fn same_subscription<'a>(
    tracks: &'a mut HashMap<Arc<str>, Track>,
    channel: &str,
    generation: u64,
) -> Option<&'a mut Track> {
    tracks
        .get_mut(channel)
        .filter(|t| t.generation == generation)
}

/// Sent to the reader task by `subscribe_node`.
enum Event {
    Baseline {
        channel: Arc<str>,
        generation: u64,
        position: Position,
    },
}

/// A command that failed: Redis's own error, or no answer in time.
enum CmdError {
    Redis(RedisError),
    Timeout,
}

impl CmdError {
    fn into_engine(self) -> EngineError {
        match self {
            CmdError::Redis(e) => EngineError::Unavailable(format!("redis: {e}")),
            CmdError::Timeout => EngineError::Unavailable("redis did not answer in time".into()),
        }
    }

    fn function_missing(&self) -> bool {
        matches!(self, CmdError::Redis(e) if e.to_string().contains("Function not found"))
    }
}

/// State shared by the engine handle and its background tasks.
struct Inner {
    opts: RedisOptions,
    keys: Keys,
    client: redis::Client,
    conn: ConnectionManager,
    handler: OnceLock<Arc<dyn EngineHandler>>,
    /// Connected, migrated, subscribed: what `/readyz` reports.
    ready: AtomicBool,
    /// The pub/sub connection's command half, while connected.
    sink: Mutex<Option<PubSubSink>>,
    /// Channels this node is subscribed to, by name.
    tracks: Mutex<HashMap<Arc<str>, Track>>,
    generation: AtomicU64,
    events: mpsc::UnboundedSender<Event>,
    /// This node's presence entries (channel -> client -> info JSON), refreshed periodically.
    presence: Mutex<HashMap<Arc<str>, HashMap<String, String>>>,
    /// The last local subscriber counts handed in, written with each node beat.
    local_counts: Mutex<Vec<(String, usize)>>,
}

/// The Redis engine; cheap to share behind an `Arc`. Dropping it stops its tasks.
pub struct RedisEngine {
    inner: Arc<Inner>,
    shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for RedisEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEngine")
            .field("prefix", &self.inner.keys.prefix)
            .field("node", &self.inner.opts.node_id)
            .field("ready", &self.is_ready())
            .finish()
    }
}

/// A fresh random epoch, offered to Redis for a channel whose meta hash does not exist.
fn new_epoch() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..12].to_string()
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn fcall(name: &str, keys: &[&str]) -> redis::Cmd {
    let mut c = redis::cmd("FCALL");
    c.arg(name).arg(keys.len());
    for k in keys {
        c.arg(*k);
    }
    c
}

fn value_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.trim().parse().ok(),
        Value::SimpleString(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn value_string(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        Value::Int(i) => Some(i.to_string()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

fn value_array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) | Value::Set(items) => items,
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

/// A channel's latest offset, its epoch (empty when unknown) and `(offset, payload)` entries.
type StreamReply = (u64, String, Vec<(u64, String)>);

/// Parses `{offset, epoch, id, payload, ...}` as returned by the history and range
/// functions into the position and `(offset, payload)` entries.
fn parse_stream_reply(v: Value) -> Option<StreamReply> {
    let mut items = value_array(v).into_iter();
    let offset = value_u64(&items.next()?)?;
    let epoch = value_string(items.next()?)?;
    let mut entries = Vec::new();
    while let (Some(id), Some(payload)) = (items.next(), items.next()) {
        let id = value_string(id)?;
        let offset = id.split('-').next()?.parse().ok()?;
        entries.push((offset, value_string(payload)?));
    }
    Some((offset, epoch, entries))
}

fn parse_publication(offset: u64, payload: &str) -> Option<Publication> {
    let stored: Stored = serde_json::from_str(payload).ok()?;
    Some(Publication {
        offset,
        data: Arc::from(stored.data),
        info: stored.info,
    })
}

/// Runs one command against a connection, bounded by `limit`.
async fn query<C: ConnectionLike + Send>(
    cmd: &redis::Cmd,
    con: &mut C,
    limit: Duration,
) -> Result<Value, CmdError> {
    match tokio::time::timeout(limit, cmd.query_async::<Value>(con)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(CmdError::Redis(e)),
        Err(_) => Err(CmdError::Timeout),
    }
}

fn migrate_err(e: CmdError) -> MigrateError {
    match e {
        CmdError::Redis(e) => MigrateError::Redis(e.to_string()),
        CmdError::Timeout => MigrateError::Redis("redis did not answer in time".into()),
    }
}

/// The schema version recorded and the names of the Switchboard libraries loaded.
async fn schema_state<C: ConnectionLike + Send>(
    con: &mut C,
    keys: &Keys,
    limit: Duration,
) -> Result<(u32, Vec<String>), MigrateError> {
    let raw = query(redis::cmd("GET").arg(keys.schema()), con, limit)
        .await
        .map_err(migrate_err)?;
    let schema = match value_string(raw) {
        None => 0,
        Some(s) => s.trim().parse::<u32>().map_err(|_| {
            MigrateError::Redis(format!(
                "key {} holds {s:?}, not a version number",
                keys.schema()
            ))
        })?,
    };
    let list = query(
        redis::cmd("FUNCTION")
            .arg("LIST")
            .arg("LIBRARYNAME")
            .arg("switchboard_v*"),
        con,
        limit,
    )
    .await
    .map_err(migrate_err)?;
    Ok((schema, library_names(list)))
}

/// Library names in a FUNCTION LIST reply (RESP2 arrays or RESP3 maps).
fn library_names(list: Value) -> Vec<String> {
    let mut names = Vec::new();
    for lib in value_array(list) {
        let mut fields = value_array(lib).into_iter();
        while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
            if value_string(k).as_deref() == Some("library_name") {
                if let Some(name) = value_string(v) {
                    names.push(name);
                }
            }
        }
    }
    names
}

fn library_name(version: u32) -> String {
    format!("switchboard_v{version}")
}

fn up_to_date(schema: u32, libs: &[String]) -> bool {
    schema >= SCHEMA_VERSION
        && MIGRATIONS
            .iter()
            .all(|(v, _)| libs.iter().any(|l| *l == library_name(*v)))
}

/// Brings Redis to [`SCHEMA_VERSION`]: refuses a newer schema, returns at once when every
/// library is loaded and the schema recorded, and otherwise applies what is missing under
/// `<p>:migrate:lock`, so nodes starting together apply each migration once. A library that
/// is missing although the schema says it was applied (Redis came back empty, or FUNCTION
/// FLUSH) is loaded again.
async fn apply_migrations<C: ConnectionLike + Send>(
    con: &mut C,
    keys: &Keys,
    node: &str,
    limit: Duration,
    lock_wait: Duration,
) -> Result<u32, MigrateError> {
    let deadline = Instant::now() + lock_wait;
    let token = format!("{node}:{}", uuid::Uuid::new_v4().simple());
    loop {
        let (schema, libs) = schema_state(con, keys, limit).await?;
        if schema > SCHEMA_VERSION {
            return Err(MigrateError::TooNew {
                found: schema,
                known: SCHEMA_VERSION,
            });
        }
        if up_to_date(schema, &libs) {
            return Ok(SCHEMA_VERSION);
        }
        let got = query(
            redis::cmd("SET")
                .arg(keys.lock())
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(LOCK_TTL_MS),
            con,
            limit,
        )
        .await
        .map_err(migrate_err)?;
        if got != Value::Nil {
            let result = migrate_locked(con, keys, node, limit).await;
            // Release only our own lock: compare and delete in one step.
            let release = redis::cmd("EVAL")
                .arg("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0")
                .arg(1)
                .arg(keys.lock())
                .arg(&token)
                .clone();
            if query(&release, con, limit).await.is_err() {
                log::warn!("could not release the migration lock; it expires in {LOCK_TTL_MS} ms");
            }
            return result;
        }
        if Instant::now() >= deadline {
            return Err(MigrateError::Redis(format!(
                "another node holds {} for too long",
                keys.lock()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn migrate_locked<C: ConnectionLike + Send>(
    con: &mut C,
    keys: &Keys,
    node: &str,
    limit: Duration,
) -> Result<u32, MigrateError> {
    // Read again: another node may have finished between our check and our lock.
    let (schema, libs) = schema_state(con, keys, limit).await?;
    if schema > SCHEMA_VERSION {
        return Err(MigrateError::TooNew {
            found: schema,
            known: SCHEMA_VERSION,
        });
    }
    for (version, source) in MIGRATIONS {
        let name = library_name(*version);
        if *version <= schema && libs.contains(&name) {
            continue;
        }
        query(
            redis::cmd("FUNCTION")
                .arg("LOAD")
                .arg("REPLACE")
                .arg(*source),
            con,
            limit,
        )
        .await
        .map_err(migrate_err)?;
        let entry = format!("{version} {name} node={node}");
        query(
            redis::cmd("RPUSH").arg(keys.migration_log()).arg(entry),
            con,
            limit,
        )
        .await
        .map_err(migrate_err)?;
        log::info!("redis migration applied version={version} library={name} node={node}");
    }
    if schema < SCHEMA_VERSION {
        query(
            redis::cmd("SET").arg(keys.schema()).arg(SCHEMA_VERSION),
            con,
            limit,
        )
        .await
        .map_err(migrate_err)?;
    }
    Ok(SCHEMA_VERSION)
}

/// Applies the migrations in `migrations/` to the Redis of `settings` (for
/// `switchboard migrate`); returns the schema version Redis is at afterwards.
pub async fn migrate(settings: &Settings) -> Result<u32, String> {
    let opts = RedisOptions::from_settings(settings, "migrate-cli");
    let client = redis::Client::open(opts.url.as_str())
        .map_err(|e| format!("key `engine.redis_url`: {e}"))?;
    let mut con = tokio::time::timeout(
        opts.start_timeout,
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| format!("cannot reach redis at {}: timed out", opts.url))?
    .map_err(|e| format!("cannot reach redis at {}: {e}", opts.url))?;
    apply_migrations(
        &mut con,
        &Keys::new(&opts.prefix),
        &opts.node_id,
        opts.command_timeout,
        opts.lock_wait,
    )
    .await
    .map_err(|e| e.to_string())
}

impl RedisEngine {
    /// Connects, migrates and starts the reader and heartbeat tasks on the current tokio
    /// runtime, which must outlive the engine (call it from `Node::build`, on the main
    /// system runtime). Redis being unreachable is not an error: the engine starts not
    /// ready and keeps retrying. A schema newer than [`SCHEMA_VERSION`] is.
    pub async fn start(opts: RedisOptions) -> Result<Arc<RedisEngine>, String> {
        let client = redis::Client::open(opts.url.as_str())
            .map_err(|e| format!("key `engine.redis_url`: {e}"))?;
        // Few, short retries inside the manager: a command must fail within
        // `command_timeout`, and the reader task is what waits for Redis to come back.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(opts.command_timeout))
            .set_response_timeout(Some(opts.command_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| format!("redis connection manager: {e}"))?;
        let keys = Keys::new(&opts.prefix);

        // Refuse a newer schema before anything else; an unreachable Redis only logs.
        let mut probe = conn.clone();
        let first = tokio::time::timeout(
            opts.start_timeout + opts.lock_wait,
            apply_migrations(
                &mut probe,
                &keys,
                &opts.node_id,
                opts.start_timeout,
                opts.lock_wait,
            ),
        )
        .await;
        let reachable = matches!(first, Ok(Ok(_)));
        match first {
            Ok(Ok(v)) => log::info!("redis schema ready version={v} node={}", opts.node_id),
            Ok(Err(e @ MigrateError::TooNew { .. })) => return Err(e.to_string()),
            Ok(Err(e)) => log::warn!(
                "redis not available at start, starting not ready node={}: {e}",
                opts.node_id
            ),
            Err(_) => log::warn!(
                "redis not available at start (timed out), starting not ready node={}",
                opts.node_id
            ),
        }

        let (events, events_rx) = mpsc::unbounded_channel();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            keys,
            client,
            conn,
            handler: OnceLock::new(),
            ready: AtomicBool::new(false),
            sink: Mutex::new(None),
            tracks: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(1),
            events,
            presence: Mutex::new(HashMap::new()),
            local_counts: Mutex::new(Vec::new()),
            opts,
        });
        tokio::spawn(reader_task(inner.clone(), events_rx, shutdown_rx.clone()));
        tokio::spawn(beat_task(inner.clone(), shutdown_rx));
        let engine = Arc::new(RedisEngine { inner, shutdown });
        // Give a reachable Redis a moment so a node usually starts ready.
        let until = Instant::now() + engine.inner.opts.start_timeout;
        if reachable {
            while !engine.is_ready() && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(engine)
    }

    /// Stops the background tasks (also done on drop); the engine stays not ready.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        self.inner.ready.store(false, Ordering::Release);
    }

    /// Records this node's local subscriber counts, written to `<p>:subs:{node}` with the
    /// next node beat; the node calls it periodically with `Broker::channel_counts`.
    pub fn set_local_counts(&self, counts: Vec<(String, usize)>) {
        *self.inner.local_counts.lock() = counts;
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.opts.node_id
    }

    fn check_ready(&self) -> Result<(), EngineError> {
        if self.is_ready() {
            Ok(())
        } else {
            Err(EngineError::Unavailable("redis is not connected".into()))
        }
    }

    /// Runs a function call; when Redis lost the library (it came back empty), applies
    /// the migrations again and retries once (nothing ran, so the retry is safe).
    async fn fcall(&self, cmd: &redis::Cmd) -> Result<Value, EngineError> {
        self.check_ready()?;
        match self.inner.query(cmd).await {
            Ok(v) => Ok(v),
            Err(e) if e.function_missing() => {
                log::warn!("redis lost the switchboard functions; applying migrations again");
                self.inner
                    .repair()
                    .await
                    .map_err(|e| EngineError::Unavailable(e.to_string()))?;
                self.inner.query(cmd).await.map_err(CmdError::into_engine)
            }
            Err(e) => Err(e.into_engine()),
        }
    }

    async fn command(&self, cmd: &redis::Cmd) -> Result<Value, EngineError> {
        self.check_ready()?;
        self.inner.query(cmd).await.map_err(CmdError::into_engine)
    }

    fn forget_track(&self, channel: &str, generation: u64) {
        let mut tracks = self.inner.tracks.lock();
        if tracks
            .get(channel)
            .is_some_and(|t| t.generation == generation)
        {
            tracks.remove(channel);
        }
    }
}

impl Inner {
    async fn query(&self, cmd: &redis::Cmd) -> Result<Value, CmdError> {
        let mut con = self.conn.clone();
        query(cmd, &mut con, self.opts.command_timeout).await
    }

    async fn repair(&self) -> Result<u32, MigrateError> {
        let mut con = self.conn.clone();
        apply_migrations(
            &mut con,
            &self.keys,
            &self.opts.node_id,
            self.opts.command_timeout,
            self.opts.lock_wait,
        )
        .await
    }

    fn handler(&self) -> Option<&Arc<dyn EngineHandler>> {
        self.handler.get()
    }

    /// Reads offsets `from..=to` of a channel's history (without creating anything).
    async fn range(&self, channel: &str, from: u64, to: u64) -> Result<StreamReply, String> {
        let (meta, history) = (self.keys.meta(channel), self.keys.history(channel));
        let cmd = fcall(FN_RANGE, &[&meta, &history])
            .arg(from)
            .arg(to)
            .clone();
        let v = self.query(&cmd).await.map_err(|e| match e {
            CmdError::Redis(e) => e.to_string(),
            CmdError::Timeout => "timed out".into(),
        })?;
        parse_stream_reply(v).ok_or_else(|| "unexpected reply to range".to_string())
    }

    /// Hands one publication to the handler.
    fn emit(&self, name: &ChannelName, offset: u64, epoch: &Arc<str>, payload: &str) {
        let Some(handler) = self.handler() else {
            return;
        };
        match parse_publication(offset, payload) {
            Some(publication) => {
                let frame = message_frame(name.as_str(), &publication);
                handler.on_publication(name.clone(), offset, epoch.clone(), frame);
            }
            None => log::warn!("undecodable publication channel={name} offset={offset}"),
        }
    }

    /// Delivers a received publication in order: drops duplicates, holds it while the
    /// subscription's baseline is unknown, and fills a gap from history first.
    async fn deliver(&self, channel: &str, inc: Incoming) {
        let (generation, from) = {
            let mut tracks = self.tracks.lock();
            let Some(track) = tracks.get_mut(channel) else {
                return;
            };
            let Some(last) = &track.last else {
                if track.pending.len() < MAX_PENDING {
                    track.pending.push(inc);
                } else {
                    log::warn!("dropping publication held before baseline channel={channel}");
                }
                return;
            };
            let same_epoch = last.epoch.as_deref() == Some(&*inc.epoch);
            if same_epoch && inc.offset <= last.offset {
                return;
            }
            // A new epoch starts at 1: what came before this message in it is missing too.
            let from = if same_epoch {
                last.offset.saturating_add(1)
            } else {
                1
            };
            if inc.offset == from {
                self.emit(&track.name, inc.offset, &inc.epoch, &inc.payload);
                track.last = Some(Position {
                    epoch: Some(inc.epoch),
                    offset: inc.offset,
                });
                return;
            }
            (track.generation, from)
        };
        let to = inc.offset.saturating_sub(1);
        let fill = self.range(channel, from, to).await;
        let mut tracks = self.tracks.lock();
        let Some(track) = same_subscription(&mut tracks, channel, generation) else {
            return;
        };
        let mut next = from;
        match fill {
            Ok((_, epoch, entries)) if *epoch == *inc.epoch => {
                for (offset, payload) in &entries {
                    if *offset >= next && *offset <= to {
                        self.emit(&track.name, *offset, &inc.epoch, payload);
                        next = offset.saturating_add(1);
                    }
                }
            }
            Ok((_, epoch, _)) => log::warn!(
                "gap not filled, the channel moved to another epoch channel={channel} epoch={epoch}"
            ),
            Err(e) => log::warn!("gap fill failed channel={channel}: {e}"),
        }
        if next <= to {
            log::warn!(
                "publications lost from history channel={channel} epoch={} missing={next}..={to}",
                inc.epoch
            );
        }
        self.emit(&track.name, inc.offset, &inc.epoch, &inc.payload);
        track.last = Some(Position {
            epoch: Some(inc.epoch),
            offset: inc.offset,
        });
    }

    /// After a reconnect: delivers what a channel missed while the node was away.
    async fn catch_up(&self, channel: &str, generation: u64, last: Position) {
        let mut from = last.offset.saturating_add(1);
        let mut read = self.range(channel, from, u64::MAX >> 12).await;
        if let Ok((offset, epoch, _)) = &read {
            if !epoch.is_empty() && last.epoch.as_deref() != Some(epoch.as_str()) && *offset > 0 {
                // A new epoch: its stream starts at 1.
                from = 1;
                read = self.range(channel, from, u64::MAX >> 12).await;
            }
        }
        let (offset, epoch, entries) = match read {
            Ok(r) => r,
            Err(e) => {
                log::warn!("catch-up failed channel={channel}: {e}");
                return;
            }
        };
        if epoch.is_empty() {
            // Nothing in Redis any more (it restarted empty): open the new epoch now, so
            // live subscribers are told to resync at once rather than at the next publication.
            self.open_new_epoch(channel, generation, last).await;
            return;
        }
        let epoch: Arc<str> = Arc::from(epoch);
        let mut tracks = self.tracks.lock();
        let Some(track) = same_subscription(&mut tracks, channel, generation) else {
            return;
        };
        let current = track.last.clone().unwrap_or(last);
        let mut next = if current.epoch.as_deref() == Some(&*epoch) {
            current.offset.saturating_add(1)
        } else {
            1
        };
        if next > offset {
            return;
        }
        if entries.first().is_none_or(|(o, _)| *o > next) {
            log::warn!(
                "publications lost from history channel={channel} epoch={epoch} from={next}"
            );
        }
        for (o, payload) in &entries {
            if *o >= next {
                self.emit(&track.name, *o, &epoch, payload);
                next = o + 1;
            }
        }
        track.last = Some(Position {
            epoch: Some(epoch),
            offset: offset.max(next.saturating_sub(1)),
        });
    }

    /// Creates the channel's meta hash (a new epoch) after Redis lost it, and tells the node
    /// (`reset`) when that epoch differs from the one its subscribers were in.
    async fn open_new_epoch(&self, channel: &str, generation: u64, last: Position) {
        let (meta, history) = (self.keys.meta(channel), self.keys.history(channel));
        // The meta lives META_GRACE; the node's periodic refresh keeps it while subscribed,
        // and the first publication sets the namespace's own TTL.
        let cmd = fcall(FN_HISTORY, &[&meta, &history])
            .arg(new_epoch())
            .arg(ms(META_GRACE))
            .arg(0)
            .arg(0)
            .clone();
        let reply = match self.query(&cmd).await {
            Ok(v) => parse_stream_reply(v),
            Err(_) => {
                log::warn!("could not open a new epoch channel={channel}");
                return;
            }
        };
        let Some((offset, epoch, _)) = reply else {
            return;
        };
        if offset > 0 {
            // Another node published in the new epoch meanwhile: its publications come over
            // pub/sub (or from history, as a gap) and the change of epoch shows with them.
            return;
        }
        let epoch: Arc<str> = Arc::from(epoch);
        let name = {
            let mut tracks = self.tracks.lock();
            let Some(track) = same_subscription(&mut tracks, channel, generation) else {
                return;
            };
            let current = track.last.clone().unwrap_or(last);
            if current.epoch.as_deref() == Some(&*epoch) {
                return;
            }
            track.last = Some(Position {
                epoch: Some(epoch.clone()),
                offset: 0,
            });
            track.name.clone()
        };
        if let Some(handler) = self.handler() {
            handler.on_reset(name, epoch);
        }
    }

    /// Handles one pub/sub message.
    async fn on_message(self: &Arc<Self>, msg: Msg) {
        let name = msg.get_channel_name();
        if name == self.keys.control {
            self.on_control(msg.get_payload_bytes());
            return;
        }
        let Some(channel) = self.keys.channel_of(name) else {
            return;
        };
        let Ok(payload) = std::str::from_utf8(msg.get_payload_bytes()) else {
            return;
        };
        match payload.as_bytes().first() {
            Some(b'p') => {
                let mut parts = payload[1..].splitn(3, ':');
                let (Some(offset), Some(epoch), Some(body)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    log::warn!("malformed publication on channel={channel}");
                    return;
                };
                // Offsets start at 1; anything else is not ours.
                let Some(offset) = offset.parse::<u64>().ok().filter(|o| *o > 0) else {
                    log::warn!("malformed publication offset on channel={channel}");
                    return;
                };
                let inc = Incoming {
                    offset,
                    epoch: Arc::from(epoch),
                    payload: body.to_string(),
                };
                self.deliver(channel, inc).await;
            }
            Some(b'u') => {
                let name = self.tracks.lock().get(channel).map(|t| t.name.clone());
                if let (Some(name), Some(h)) = (name, self.handler()) {
                    h.on_push(name, ByteString::from(&payload[1..]));
                }
            }
            _ => log::warn!("unknown message on channel={channel}"),
        }
    }

    /// A command from another node (or this one) on `<p>:control`.
    fn on_control(self: &Arc<Self>, payload: &[u8]) {
        let Ok(control) = serde_json::from_slice::<Control>(payload) else {
            log::warn!("unknown control message");
            return;
        };
        match control {
            Control::Disconnect { user, req } => {
                let n = self.handler().map_or(0, |h| h.disconnect_user(&user));
                // Answer off the reader task, so publications keep flowing meanwhile.
                let inner = self.clone();
                tokio::spawn(async move {
                    let key = inner.keys.disc(&req);
                    let mut pipe = redis::pipe();
                    pipe.atomic()
                        .cmd("HSET")
                        .arg(&key)
                        .arg(&inner.opts.node_id)
                        .arg(n)
                        .ignore()
                        .cmd("PEXPIRE")
                        .arg(&key)
                        .arg(10_000)
                        .ignore();
                    let mut con = inner.conn.clone();
                    let done = tokio::time::timeout(
                        inner.opts.command_timeout,
                        pipe.query_async::<Value>(&mut con),
                    )
                    .await;
                    if !matches!(done, Ok(Ok(_))) {
                        log::warn!("could not answer a disconnect request req={req}");
                    }
                });
            }
        }
    }

    async fn on_event(&self, event: Event) {
        match event {
            Event::Baseline {
                channel,
                generation,
                position,
            } => {
                let pending = {
                    let mut tracks = self.tracks.lock();
                    let Some(track) = tracks.get_mut(&channel) else {
                        return;
                    };
                    if track.generation != generation || track.last.is_some() {
                        return;
                    }
                    track.last = Some(position);
                    std::mem::take(&mut track.pending)
                };
                for inc in pending {
                    self.deliver(&channel, inc).await;
                }
            }
        }
    }

    /// Writes this node's liveness and local counts.
    async fn beat(&self) -> Result<(), CmdError> {
        let counts = self.local_counts.lock().clone();
        let (nodes, subs) = (self.keys.nodes(), self.keys.subs(&self.opts.node_id));
        let mut cmd = fcall(FN_NODE_BEAT, &[&nodes, &subs]);
        cmd.arg(&self.opts.node_id)
            .arg(ms(self.opts.node_period * 5));
        for (channel, count) in &counts {
            cmd.arg(channel).arg(*count);
        }
        self.query(&cmd).await.map(|_| ())
    }

    /// Keeps the meta hash (offset, epoch) of every channel this node is subscribed to
    /// alive for at least [`META_GRACE`] more, so a channel with live subscribers does not
    /// start a new epoch (and `reset` them) only because nobody published for a while; the
    /// memory engine likewise never forgets a channel it holds. `GT` never shortens a
    /// longer TTL, and a missing hash stays missing.
    async fn keep_meta(&self) -> Result<(), CmdError> {
        let channels: Vec<Arc<str>> = self.tracks.lock().keys().cloned().collect();
        for chunk in channels.chunks(500) {
            let mut pipe = redis::pipe();
            for channel in chunk {
                pipe.cmd("PEXPIRE")
                    .arg(self.keys.meta(channel))
                    .arg(ms(META_GRACE))
                    .arg("GT")
                    .ignore();
            }
            self.run_pipe(&pipe).await?;
        }
        Ok(())
    }

    /// Runs a pipeline under the command timeout.
    async fn run_pipe(&self, pipe: &redis::Pipeline) -> Result<(), CmdError> {
        let mut con = self.conn.clone();
        match tokio::time::timeout(
            self.opts.command_timeout,
            pipe.query_async::<Value>(&mut con),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(CmdError::Redis(e)),
            Err(_) => Err(CmdError::Timeout),
        }
    }

    /// Re-adds every presence entry of this node with a fresh expiry.
    async fn refresh_presence(&self) -> Result<(), CmdError> {
        let snapshot: Vec<(Arc<str>, PresencePairs)> = self
            .presence
            .lock()
            .iter()
            .map(|(ch, set)| {
                (
                    ch.clone(),
                    set.iter().map(|(c, i)| (c.clone(), i.clone())).collect(),
                )
            })
            .collect();
        let ttl = ms(self.opts.presence_period * 3);
        for chunk in snapshot.chunks(100) {
            let mut pipe = redis::pipe();
            for (channel, entries) in chunk {
                let (h, z) = (self.keys.presence(channel), self.keys.presence_exp(channel));
                let mut cmd = fcall(FN_PRESENCE_ADD, &[&h, &z]);
                cmd.arg(ttl);
                for (client, info) in entries {
                    cmd.arg(client).arg(info);
                }
                pipe.add_command(cmd).ignore();
            }
            self.run_pipe(&pipe).await?;
        }
        Ok(())
    }
}

/// Why a connected session of the reader ended.
enum SessionEnd {
    Shutdown,
    Lost(String),
}

/// The reader: owns the pub/sub connection, reconnects with backoff and jitter.
async fn reader_task(
    inner: Arc<Inner>,
    mut events: mpsc::UnboundedReceiver<Event>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut attempt: u32 = 0;
    loop {
        match reader_session(&inner, &mut events, &mut shutdown).await {
            Ok(SessionEnd::Shutdown) => break,
            Ok(SessionEnd::Lost(why)) => {
                log::warn!("redis connection lost node={}: {why}", inner.opts.node_id);
                attempt = 0;
            }
            Err(why) => {
                if attempt == 0 || attempt.is_multiple_of(20) {
                    log::warn!("redis not available node={}: {why}", inner.opts.node_id);
                }
            }
        }
        inner.ready.store(false, Ordering::Release);
        *inner.sink.lock() = None;
        // Exponential backoff from 50 ms, capped, with jitter so that nodes do not
        // reconnect in lockstep after an outage.
        let cap = ms(inner.opts.max_backoff).max(1);
        let base = 50u64.saturating_mul(1u64 << attempt.min(16)).min(cap);
        let delay = rand::rng().random_range(base / 2..=base);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(delay)) => {}
            _ = shutdown.changed() => break,
        }
        if *shutdown.borrow() {
            break;
        }
    }
    inner.ready.store(false, Ordering::Release);
    *inner.sink.lock() = None;
}

/// One connected life of the reader: connect, subscribe, migrate, resubscribe, catch up,
/// then read until the connection is lost or the engine shuts down.
async fn reader_session(
    inner: &Arc<Inner>,
    events: &mut mpsc::UnboundedReceiver<Event>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<SessionEnd, String> {
    let limit = inner.opts.command_timeout;
    let pubsub = tokio::time::timeout(limit, inner.client.get_async_pubsub())
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sink, mut stream): (PubSubSink, PubSubStream) = pubsub.split();
    tokio::time::timeout(limit, sink.subscribe(&inner.keys.control))
        .await
        .map_err(|_| "subscribe timed out".to_string())?
        .map_err(|e| format!("subscribe: {e}"))?;
    // The command connection may still hold a dead socket from before an outage: its first
    // command fails and reconnects, so one failure here is retried at once.
    let migrated = match inner.repair().await {
        Err(MigrateError::Redis(_)) => inner.repair().await,
        other => other,
    };
    match migrated {
        Ok(_) => {}
        Err(e @ MigrateError::TooNew { .. }) => {
            log::error!("{e}; node={} stays not ready", inner.opts.node_id);
            return Err(e.to_string());
        }
        Err(e) => return Err(e.to_string()),
    }
    *inner.sink.lock() = Some(sink.clone());

    // Resubscribe every channel held, then deliver what was missed meanwhile.
    let held: Vec<(Arc<str>, u64, Option<Position>)> = inner
        .tracks
        .lock()
        .iter()
        .map(|(k, t)| (k.clone(), t.generation, t.last.clone()))
        .collect();
    for chunk in held.chunks(SUBSCRIBE_CHUNK) {
        let names: Vec<String> = chunk.iter().map(|(c, _, _)| inner.keys.pubsub(c)).collect();
        tokio::time::timeout(limit, sink.subscribe(&names))
            .await
            .map_err(|_| "resubscribe timed out".to_string())?
            .map_err(|e| format!("resubscribe: {e}"))?;
    }
    for (channel, generation, last) in held {
        if let Some(last) = last {
            inner.catch_up(&channel, generation, last).await;
        }
    }
    inner.ready.store(true, Ordering::Release);
    log::info!("redis engine ready node={}", inner.opts.node_id);

    let mut health = tokio::time::interval(inner.opts.health_period);
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    health.tick().await;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => return Ok(SessionEnd::Shutdown),
            // Events first: a baseline sent before a message arrived is applied before it.
            event = events.recv() => match event {
                Some(event) => inner.on_event(event).await,
                None => return Ok(SessionEnd::Shutdown),
            },
            msg = stream.next() => match msg {
                Some(msg) => inner.on_message(msg).await,
                None => return Ok(SessionEnd::Lost("pub/sub connection closed".into())),
            },
            _ = health.tick() => {
                match tokio::time::timeout(limit, sink.ping::<Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Ok(SessionEnd::Lost(format!("ping: {e}"))),
                    Err(_) => return Ok(SessionEnd::Lost("ping timed out".into())),
                }
                // A Redis flushed under us keeps the connection but loses the schema.
                let exists = inner.query(redis::cmd("EXISTS").arg(inner.keys.schema())).await;
                if matches!(exists, Ok(Value::Int(0))) {
                    log::warn!("redis lost the schema key; applying migrations again");
                    if let Err(e) = inner.repair().await {
                        return Ok(SessionEnd::Lost(e.to_string()));
                    }
                }
            }
        }
    }
}

/// Refreshes presence and the node beat while ready.
async fn beat_task(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    let mut presence = tokio::time::interval(inner.opts.presence_period);
    let mut node = tokio::time::interval(inner.opts.node_period);
    presence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    node.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = presence.tick() => {
                if inner.ready.load(Ordering::Acquire) {
                    if let Err(CmdError::Redis(e)) = inner.refresh_presence().await {
                        log::warn!("presence refresh failed node={}: {e}", inner.opts.node_id);
                    }
                    if let Err(CmdError::Redis(e)) = inner.keep_meta().await {
                        log::warn!("channel keep-alive failed node={}: {e}", inner.opts.node_id);
                    }
                }
            }
            _ = node.tick() => {
                if inner.ready.load(Ordering::Acquire) {
                    if let Err(CmdError::Redis(e)) = inner.beat().await {
                        log::warn!("node beat failed node={}: {e}", inner.opts.node_id);
                    }
                }
            }
        }
    }
}

#[async_trait]
impl Engine for RedisEngine {
    fn set_handler(&self, handler: Arc<dyn EngineHandler>) {
        let _ = self.inner.handler.set(handler);
    }

    fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    async fn publish(
        &self,
        channel: &ChannelName,
        data: Arc<RawValue>,
        info: Option<ClientInfo>,
        ns: &NamespaceOptions,
    ) -> Result<PublishResult, EngineError> {
        let payload = serde_json::to_string(&StoredRef {
            data: &data,
            info: info.as_ref(),
        })
        .map_err(|e| EngineError::Unavailable(format!("cannot encode publication: {e}")))?;
        let keys = &self.inner.keys;
        let (meta, history) = (keys.meta(channel.as_str()), keys.history(channel.as_str()));
        let history_ttl = ns.history_ttl.0;
        let cmd = fcall(FN_PUBLISH, &[&meta, &history])
            .arg(new_epoch())
            .arg(payload)
            .arg(ns.history_size)
            .arg(ms(history_ttl))
            .arg(ms(history_ttl + META_GRACE))
            .arg(keys.pubsub(channel.as_str()))
            .clone();
        let reply = value_array(self.fcall(&cmd).await?);
        let mut items = reply.into_iter();
        match (
            items.next().as_ref().and_then(value_u64),
            items.next().and_then(value_string),
        ) {
            (Some(offset), Some(epoch)) => Ok(PublishResult {
                offset,
                epoch: Arc::from(epoch),
            }),
            _ => Err(EngineError::Unavailable(
                "unexpected reply to publish".into(),
            )),
        }
    }

    async fn push(&self, channel: &ChannelName, frame: ByteString) -> Result<(), EngineError> {
        let mut payload = String::with_capacity(frame.len() + 1);
        payload.push('u');
        payload.push_str(&frame);
        let cmd = redis::cmd("PUBLISH")
            .arg(self.inner.keys.pubsub(channel.as_str()))
            .arg(payload)
            .clone();
        self.command(&cmd).await.map(|_| ())
    }

    async fn subscribe_node(&self, channel: &ChannelName) -> Result<(), EngineError> {
        self.check_ready()?;
        let key: Arc<str> = channel.shared();
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed);
        {
            let mut tracks = self.inner.tracks.lock();
            if tracks.contains_key(&key) {
                return Ok(());
            }
            tracks.insert(
                key.clone(),
                Track {
                    name: channel.clone(),
                    generation,
                    last: None,
                    pending: Vec::new(),
                },
            );
        }
        let sink = self.inner.sink.lock().clone();
        let Some(mut sink) = sink else {
            self.forget_track(&key, generation);
            return Err(EngineError::Unavailable("redis is not connected".into()));
        };
        let pubsub = self.inner.keys.pubsub(channel.as_str());
        let subscribed =
            tokio::time::timeout(self.inner.opts.command_timeout, sink.subscribe(&pubsub)).await;
        if !matches!(subscribed, Ok(Ok(()))) {
            self.forget_track(&key, generation);
            return Err(EngineError::Unavailable("redis subscribe failed".into()));
        }
        // The baseline is read after SUBSCRIBE is confirmed: every publication after it
        // reaches this node, and the broker reads its own position later still.
        let cmd = redis::cmd("HMGET")
            .arg(self.inner.keys.meta(channel.as_str()))
            .arg("offset")
            .arg("epoch")
            .clone();
        let meta = match self.command(&cmd).await {
            Ok(v) => value_array(v),
            Err(e) => {
                self.forget_track(&key, generation);
                let _ = tokio::time::timeout(
                    self.inner.opts.command_timeout,
                    sink.unsubscribe(&pubsub),
                )
                .await;
                return Err(e);
            }
        };
        let mut meta = meta.into_iter();
        let offset = meta.next().as_ref().and_then(value_u64).unwrap_or(0);
        let epoch = meta.next().and_then(value_string).map(Arc::from);
        let position = Position {
            epoch,
            offset: if offset > 0 { offset } else { 0 },
        };
        let _ = self.inner.events.send(Event::Baseline {
            channel: key,
            generation,
            position,
        });
        Ok(())
    }

    async fn unsubscribe_node(&self, channel: &ChannelName) -> Result<(), EngineError> {
        self.inner.tracks.lock().remove(channel.as_str());
        // Without a connection there is nothing to undo: a reconnect only resubscribes
        // the channels still tracked.
        let sink = self.inner.sink.lock().clone();
        if let Some(mut sink) = sink {
            let pubsub = self.inner.keys.pubsub(channel.as_str());
            match tokio::time::timeout(self.inner.opts.command_timeout, sink.unsubscribe(&pubsub))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log::debug!("unsubscribe failed channel={channel}: {e}"),
                Err(_) => log::debug!("unsubscribe timed out channel={channel}"),
            }
        }
        Ok(())
    }

    async fn history(
        &self,
        channel: &ChannelName,
        since: Option<&StreamPosition>,
        limit: usize,
        ns: &NamespaceOptions,
    ) -> Result<HistoryResult, EngineError> {
        let keys = &self.inner.keys;
        let (meta, history) = (keys.meta(channel.as_str()), keys.history(channel.as_str()));
        // With `since`, one more than asked is not needed but at least one is: the entry
        // right after `since` tells whether the gap is still held.
        let (from, count) = match since {
            Some(pos) => (pos.offset.saturating_add(1), limit.max(1)),
            None => (0, limit),
        };
        let cmd = fcall(FN_HISTORY, &[&meta, &history])
            .arg(new_epoch())
            .arg(ms(ns.history_ttl.0 + META_GRACE))
            .arg(from)
            .arg(count)
            .clone();
        let (latest, epoch, entries) = parse_stream_reply(self.fcall(&cmd).await?)
            .ok_or_else(|| EngineError::Unavailable("unexpected reply to history".into()))?;
        let epoch: Arc<str> = Arc::from(epoch);
        let mut publications: Vec<Publication> = entries
            .iter()
            .filter_map(|(o, p)| parse_publication(*o, p))
            .collect();
        if since.is_none() {
            // XREVRANGE gave the newest first.
            publications.reverse();
        }
        let recovered = match since {
            Some(pos) => {
                let (kept, recovered) = recover_after(pos, latest, &epoch, publications, limit);
                publications = kept;
                recovered
            }
            None => false,
        };
        Ok(HistoryResult {
            offset: latest,
            epoch,
            publications,
            recovered,
        })
    }

    async fn presence_add(
        &self,
        channel: &ChannelName,
        info: &ClientInfo,
        _ns: &NamespaceOptions,
    ) -> Result<(), EngineError> {
        let value = serde_json::to_string(&PresenceInfo {
            user: info.user.to_string(),
            node: self.inner.opts.node_id.clone(),
        })
        .map_err(|e| EngineError::Unavailable(format!("cannot encode presence: {e}")))?;
        // Remembered first, so the periodic refresh re-adds it even if this write fails.
        self.inner
            .presence
            .lock()
            .entry(channel.shared())
            .or_default()
            .insert(info.client.to_string(), value.clone());
        let keys = &self.inner.keys;
        let (h, z) = (
            keys.presence(channel.as_str()),
            keys.presence_exp(channel.as_str()),
        );
        let cmd = fcall(FN_PRESENCE_ADD, &[&h, &z])
            .arg(ms(self.inner.opts.presence_period * 3))
            .arg(&*info.client)
            .arg(value)
            .clone();
        self.fcall(&cmd).await.map(|_| ())
    }

    async fn presence_remove(
        &self,
        channel: &ChannelName,
        client: &str,
    ) -> Result<(), EngineError> {
        {
            let mut presence = self.inner.presence.lock();
            if let Some(set) = presence.get_mut(channel.as_str()) {
                set.remove(client);
                if set.is_empty() {
                    presence.remove(channel.as_str());
                }
            }
        }
        let keys = &self.inner.keys;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HDEL")
            .arg(keys.presence(channel.as_str()))
            .arg(client)
            .ignore()
            .cmd("ZREM")
            .arg(keys.presence_exp(channel.as_str()))
            .arg(client)
            .ignore();
        self.check_ready()?;
        let mut con = self.inner.conn.clone();
        match tokio::time::timeout(
            self.inner.opts.command_timeout,
            pipe.query_async::<Value>(&mut con),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(CmdError::Redis(e).into_engine()),
            Err(_) => Err(CmdError::Timeout.into_engine()),
        }
    }

    async fn presence(&self, channel: &ChannelName) -> Result<Vec<PresenceEntry>, EngineError> {
        let keys = &self.inner.keys;
        let (h, z) = (
            keys.presence(channel.as_str()),
            keys.presence_exp(channel.as_str()),
        );
        let cmd = fcall(FN_PRESENCE_LIST, &[&h, &z]).clone();
        let mut items = value_array(self.fcall(&cmd).await?).into_iter();
        let mut list = Vec::new();
        while let (Some(client), Some(info)) = (items.next(), items.next()) {
            let (Some(client), Some(info)) = (value_string(client), value_string(info)) else {
                continue;
            };
            let Ok(info) = serde_json::from_str::<PresenceInfo>(&info) else {
                continue;
            };
            list.push(PresenceEntry {
                client,
                user: info.user,
                node: info.node,
            });
        }
        list.sort_by(|a, b| a.client.cmp(&b.client));
        Ok(list)
    }

    async fn channels(
        &self,
        local: Vec<(String, usize)>,
    ) -> Result<Vec<(String, usize)>, EngineError> {
        self.check_ready()?;
        self.set_local_counts(local);
        self.inner.beat().await.map_err(CmdError::into_engine)?;
        let stale = ms(self.inner.opts.node_period * 5);
        let cmd = fcall(FN_LIVE_NODES, &[&self.inner.keys.nodes()])
            .arg(stale)
            .clone();
        let nodes: Vec<String> = value_array(self.fcall(&cmd).await?)
            .into_iter()
            .filter_map(value_string)
            .collect();
        let mut pipe = redis::pipe();
        for node in &nodes {
            pipe.cmd("HGETALL").arg(self.inner.keys.subs(node));
        }
        let mut con = self.inner.conn.clone();
        let replies = match tokio::time::timeout(
            self.inner.opts.command_timeout,
            pipe.query_async::<Vec<Value>>(&mut con),
        )
        .await
        {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(CmdError::Redis(e).into_engine()),
            Err(_) => return Err(CmdError::Timeout.into_engine()),
        };
        let mut totals: HashMap<String, usize> = HashMap::new();
        for reply in replies {
            let mut items = value_array(reply).into_iter();
            while let (Some(ch), Some(n)) = (items.next(), items.next()) {
                if let (Some(ch), Some(n)) = (value_string(ch), value_u64(&n)) {
                    *totals.entry(ch).or_default() += usize::try_from(n).unwrap_or(usize::MAX);
                }
            }
        }
        let mut all: Vec<(String, usize)> = totals.into_iter().filter(|(_, n)| *n > 0).collect();
        all.sort();
        Ok(all)
    }

    async fn disconnect_user(&self, user: &str) -> Result<usize, EngineError> {
        let req = uuid::Uuid::new_v4().simple().to_string();
        let message = serde_json::to_string(&Control::Disconnect {
            user: user.to_string(),
            req: req.clone(),
        })
        .map_err(|e| EngineError::Unavailable(format!("cannot encode control: {e}")))?;
        let cmd = redis::cmd("PUBLISH")
            .arg(&self.inner.keys.control)
            .arg(message)
            .clone();
        // PUBLISH answers how many nodes (this one included) received the request.
        let receivers = value_u64(&self.command(&cmd).await?).unwrap_or(0);
        let key = self.inner.keys.disc(&req);
        let deadline = Instant::now() + self.inner.opts.disconnect_wait;
        loop {
            let replies = value_array(self.command(redis::cmd("HVALS").arg(&key)).await?);
            let answered = replies.len() as u64;
            if answered >= receivers || Instant::now() >= deadline {
                if answered < receivers {
                    log::warn!("disconnect_user: {answered} of {receivers} nodes answered in time");
                }
                let total: u64 = replies.iter().filter_map(value_u64).sum();
                return Ok(usize::try_from(total).unwrap_or(usize::MAX));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_use_hash_tags_and_parse_back() {
        let k = Keys::new("sb");
        assert_eq!(k.meta("chat:lobby"), "sb:meta:{chat:lobby}");
        assert_eq!(k.history("a"), "sb:history:{a}");
        assert_eq!(k.pubsub("a/b"), "sb:ch:{a/b}");
        assert_eq!(k.channel_of("sb:ch:{a/b}"), Some("a/b"));
        assert_eq!(k.channel_of("sb:control"), None);
        assert_eq!(k.presence_exp("x"), "sb:presence:{x}:exp");
    }

    #[test]
    fn stream_reply_parses() {
        let v = Value::Array(vec![
            Value::Int(7),
            Value::BulkString(b"e1".to_vec()),
            Value::BulkString(b"6-0".to_vec()),
            Value::BulkString(br#"{"data":1}"#.to_vec()),
            Value::BulkString(b"7-0".to_vec()),
            Value::BulkString(br#"{"data":2,"info":{"client":"c","user":"u"}}"#.to_vec()),
        ]);
        let (offset, epoch, entries) = parse_stream_reply(v).expect("parses");
        assert_eq!((offset, epoch.as_str()), (7, "e1"));
        assert_eq!(entries.len(), 2);
        let p = parse_publication(entries[1].0, &entries[1].1).expect("publication");
        assert_eq!(p.offset, 7);
        assert_eq!(p.info.as_ref().map(|i| &*i.user), Some("u"));
    }

    #[test]
    fn library_names_are_read_from_function_list() {
        let s = |t: &str| Value::BulkString(t.as_bytes().to_vec());
        let list = Value::Array(vec![Value::Array(vec![
            s("library_name"),
            s("switchboard_v1"),
            s("engine"),
            s("LUA"),
            s("functions"),
            Value::Array(vec![]),
        ])]);
        assert_eq!(
            library_names(list.clone()),
            vec!["switchboard_v1".to_string()]
        );
        assert!(up_to_date(1, &library_names(list)));
        assert!(!up_to_date(1, &[]), "a flushed library is re-applied");
        assert!(!up_to_date(0, &["switchboard_v1".to_string()]));
    }

    #[test]
    fn migrations_are_numbered_and_named() {
        for (i, (v, src)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*v as usize, i + 1);
            assert!(src.starts_with(&format!("#!lua name={}\n", library_name(*v))));
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.0), Some(SCHEMA_VERSION));
    }
}
