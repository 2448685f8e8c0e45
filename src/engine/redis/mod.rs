//! The Redis engine: offsets, epochs, history, presence and cross-node delivery kept in one
//! Redis, or one Redis Cluster, shared by every node of a cluster. It talks to Redis only (a
//! command connection, `conn.rs`; one dedicated pub/sub connection per node on one Redis,
//! one link per primary on a cluster, `shards.rs`) and to the node only through the
//! [`EngineHandler`] it is given; the broker, sessions and API see it as an `Arc<dyn Engine>`.
//! On a cluster every key of a channel carries the channel as its hash tag, so its function
//! calls run on the primary that owns it and end with a sharded `SPUBLISH`; what is not per
//! channel lives in the slot of `{<p>}` (`keys.rs`).
//!
//! Publishing is one server-side function (`migrations/0004_lean_publish.lua`, a
//! Redis 7 FUNCTION library applied under a lock by [`migrate`] or on start): it answers a
//! repeated idempotency key with the first result, or assigns the offset,
//! appends to the history stream (trimmed approximately every 32 offsets, its TTLs set
//! when the node asks: `refresh.rs`), and PUBLISHes a compact payload
//! `p<offset>:<epoch>:{"data":..,"info":..}` on `<p>:ch:{channel}`. Each node builds the
//! client `message` frame once on receipt with [`message_frame`](crate::protocol::message_frame),
//! so a publication is still serialized once per node, and the frame format stays in
//! `protocol` instead of being copied into Lua. Pushes (join/leave) go on the same Redis
//! channel as `u<frame>`.
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
//! Key layout (prefix `p`): see `keys.rs` and the header of the migration file.
//! Lifetimes: history lives at least `history_ttl` after the last publication (and at most
//! an eighth more, up to 30 s: `refresh.rs`); the meta hash (offset and epoch) lives
//! [`META_GRACE`] longer, so a client that comes back just after its history
//! expired still sees the same epoch and a latest offset, and gets `recovered: false` only
//! when something was really lost; after that the channel starts a new epoch, as the memory
//! engine does when it forgets an idle channel.
//!
//! Files: this one holds the options, the start-up and the [`Engine`] implementation, which
//! hands each call to the file of its concern: `stream` (publish, push, history, range
//! reads), `lane` (the publisher task sending publications in call order, batched),
//! `refresh` (when a publication refreshes its channel's TTLs), `reader` (the pub/sub
//! connection and its task), `shards` (a cluster's sharded subscriptions: links, topology,
//! failover), `conn` (one Redis or a cluster behind one command connection), `ordering` (the per-channel
//! order and gap-filling state machine, without I/O), `presence`, `cluster` (node-to-node
//! control, liveness and counts, the beat task), `schema` (migrations and the functions called), `keys` (key names)
//! and `resp` (commands, their errors and reply parsing).

mod cluster;
mod conn;
mod keys;
mod lane;
mod ordering;
mod presence;
mod reader;
mod refresh;
mod resp;
mod schema;
mod shards;
mod stream;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytestring::ByteString;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use redis::Value;
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    Engine, EngineError, EngineHandler, HistoryResult, PresenceEntry, Publish, PublishTicket,
};
use crate::channel::ChannelName;
use crate::config::{EngineKind, NamespaceOptions, Settings};
use crate::protocol::{ClientInfo, StreamPosition};
use conn::Conn;
use keys::Keys;
use ordering::Tracks;
use presence::LocalPresence;
use reader::Event;
use resp::{query, query_pipe, CmdError};
use schema::apply_migrations;

pub use schema::{migrate, MigrateError, MIGRATIONS, SCHEMA_VERSION};
pub use stream::META_GRACE;

/// Connection and timing options of the Redis engine.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://host:port/db` (one Redis).
    pub url: String,
    /// Seed nodes of a Redis Cluster; empty for one Redis (`url`).
    pub cluster_urls: Vec<String>,
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
            cluster_urls: match settings.engine.kind {
                EngineKind::RedisCluster => settings.engine.redis_urls.clone(),
                EngineKind::Memory | EngineKind::Redis => Vec::new(),
            },
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

    /// Whether these options name a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        !self.cluster_urls.is_empty()
    }

    /// Where the engine connects, for messages: the URL, or the cluster's seeds.
    fn shown_url(&self) -> String {
        if self.is_cluster() {
            self.cluster_urls.join(",")
        } else {
            self.url.clone()
        }
    }

    /// The key layout of these options (one Redis, or a cluster's).
    fn keys(&self) -> Keys {
        if self.is_cluster() {
            Keys::cluster(&self.prefix)
        } else {
            Keys::new(&self.prefix)
        }
    }
}

/// The command connection of `opts`. `eager` connects now (an unreachable Redis is then
/// [`RedisStartError::Unreachable`]); otherwise the first command connects.
async fn connect(opts: &RedisOptions, eager: bool) -> Result<Conn, RedisStartError> {
    let unreachable = |e: redis::RedisError| RedisStartError::Unreachable {
        url: opts.shown_url(),
        reason: e.to_string(),
    };
    if opts.is_cluster() {
        // Few, short retries: a command must fail within `command_timeout`; redirections
        // (MOVED, ASK) and a cluster electing a new primary are what they are for. A retry
        // after a dropped connection may run a publication twice: see `stream.rs`.
        let client = redis::cluster::ClusterClientBuilder::new(opts.cluster_urls.clone())
            .retries(3)
            .min_retry_wait(10)
            .max_retry_wait(200)
            .connection_timeout(opts.command_timeout)
            .response_timeout(opts.command_timeout)
            .build()
            .map_err(|e| RedisStartError::BadUrl(e.to_string()))?;
        let config = redis::cluster::ClusterConfig::new()
            .set_connection_timeout(opts.command_timeout)
            .set_response_timeout(opts.command_timeout);
        return if eager {
            client
                .get_async_connection_with_config(config)
                .await
                .map(Conn::Cluster)
                .map_err(unreachable)
        } else {
            Ok(Conn::Cluster(
                client.get_pending_async_connection_with_config(config),
            ))
        };
    }
    let client = redis::Client::open(opts.url.as_str())
        .map_err(|e| RedisStartError::BadUrl(e.to_string()))?;
    // Few, short retries inside the manager: a command must fail within
    // `command_timeout`, and the reader task is what waits for Redis to come back.
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(opts.command_timeout))
        .set_response_timeout(Some(opts.command_timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500));
    if eager {
        ConnectionManager::new_with_config(client, config)
            .await
            .map(Conn::Single)
            .map_err(unreachable)
    } else {
        ConnectionManager::new_lazy_with_config(client, config)
            .map(Conn::Single)
            .map_err(|e| RedisStartError::Client(e.to_string()))
    }
}

/// What differs between one Redis and a cluster beyond the command connection: how the
/// node receives publications.
enum Mode {
    /// One pub/sub connection to the one Redis (`reader.rs`).
    Single { client: redis::Client },
    /// A link per primary carrying sharded subscriptions (`shards.rs`).
    Cluster(shards::Shards),
}

/// Why [`RedisEngine::start`] or [`migrate`] gave up. The variants are what a caller
/// branches on (an exit code each): the operator's configuration, an unreachable Redis, or
/// the schema in Redis.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisStartError {
    /// `engine.redis_url` is not a Redis URL this build can use.
    #[error("key `engine.redis_url`: {0}")]
    BadUrl(String),
    /// The Redis client refused this build's own connection settings (a bug, not the
    /// operator's doing).
    #[error("redis connection manager: {0}")]
    Client(String),
    /// Redis could not be reached. Only [`migrate`] gives up on this; the engine starts
    /// not ready instead and keeps trying.
    #[error("cannot reach redis at {url}: {reason}")]
    Unreachable {
        /// `engine.redis_url`.
        url: String,
        /// What the connection attempt said.
        reason: String,
    },
    /// The migrations were refused or failed; see [`MigrateError`]. [`RedisEngine::start`]
    /// gives up only on [`MigrateError::TooNew`].
    #[error(transparent)]
    Migrate(#[from] MigrateError),
}

/// State shared by the engine handle and its background tasks.
struct Inner {
    opts: RedisOptions,
    keys: Keys,
    mode: Mode,
    conn: Conn,
    handler: OnceLock<Arc<dyn EngineHandler>>,
    /// Connected, migrated, subscribed: what `/readyz` reports.
    ready: AtomicBool,
    /// Connected and migrated: whether commands are sent at all. On one Redis it goes with
    /// `ready`; on a cluster a shard that is down makes the node not ready while the
    /// channels of the other shards keep working.
    usable: AtomicBool,
    /// The pub/sub connection's command half, while connected.
    sink: Mutex<Option<PubSubSink>>,
    /// Channels this node is subscribed to and where each one's stream stands.
    tracks: Tracks,
    /// To the reader task: baselines read by `subscribe_node`.
    events: mpsc::UnboundedSender<Event>,
    /// To the publisher lane, which sends publications in call order (`lane.rs`).
    lane: mpsc::UnboundedSender<lane::Job>,
    /// When this node last had each channel's TTLs refreshed by a publication.
    refreshes: refresh::Refreshes,
    /// This node's presence entries, refreshed periodically.
    presence: Mutex<LocalPresence>,
    /// The last local subscriber counts handed in, written with each node beat.
    local_counts: Mutex<Vec<(String, usize)>>,
}

impl Inner {
    fn handler(&self) -> Option<&Arc<dyn EngineHandler>> {
        self.handler.get()
    }

    /// Sets both readiness flags (one Redis: connected means usable and ready).
    fn set_ready(&self, ready: bool) {
        self.usable.store(ready, Ordering::Release);
        self.ready.store(ready, Ordering::Release);
    }

    /// The command that publishes on a channel's pub/sub name: sharded on a cluster, so a
    /// message travels only within the shard that owns the channel.
    fn publish_verb(&self) -> &'static str {
        if self.conn.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    fn check_ready(&self) -> Result<(), EngineError> {
        if self.usable.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(EngineError::Unavailable("redis is not connected".into()))
        }
    }

    /// Runs one command, ready or not (the reader and beat tasks).
    async fn query(&self, cmd: &redis::Cmd) -> Result<Value, CmdError> {
        let mut con = self.conn.clone();
        query(cmd, &mut con, self.opts.command_timeout).await
    }

    /// Runs a pipeline under the command timeout, ready or not.
    async fn run_pipe(&self, pipe: &redis::Pipeline) -> Result<(), CmdError> {
        let mut con = self.conn.clone();
        query_pipe::<Value, _>(pipe, &mut con, self.opts.command_timeout)
            .await
            .map(|_| ())
    }

    /// Runs commands of many channels (see [`conn::send_many`]); the first failure, if any.
    async fn run_all(&self, cmds: &[(u16, redis::Cmd)]) -> Result<(), CmdError> {
        let answers = conn::send_many(&self.conn, cmds, self.opts.command_timeout).await;
        answers
            .into_iter()
            .find_map(Result::err)
            .map_or(Ok(()), Err)
    }

    /// Runs one command for a caller of the engine: refused at once while not ready.
    async fn command(&self, cmd: &redis::Cmd) -> Result<Value, EngineError> {
        self.check_ready()?;
        self.query(cmd).await.map_err(CmdError::into_engine)
    }

    /// Runs a function call; when Redis lost the library (it came back empty), applies
    /// the migrations again and retries once (nothing ran, so the retry is safe).
    async fn fcall(&self, cmd: &redis::Cmd) -> Result<Value, EngineError> {
        self.check_ready()?;
        match self.query(cmd).await {
            Ok(v) => Ok(v),
            Err(e) if e.function_missing() => {
                log::warn!("redis lost the switchboard functions; applying migrations again");
                self.repair()
                    .await
                    .map_err(|e| EngineError::Unavailable(e.to_string()))?;
                self.query(cmd).await.map_err(CmdError::into_engine)
            }
            Err(e) => Err(e.into_engine()),
        }
    }

    /// Applies the migrations again (Redis came back empty or lost the library).
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

impl RedisEngine {
    /// Connects, migrates and starts the reader and heartbeat tasks on the current tokio
    /// runtime, which must outlive the engine (call it from `Node::build`, on the main
    /// system runtime). Redis being unreachable is not an error: the engine starts not
    /// ready and keeps retrying. A schema newer than [`SCHEMA_VERSION`] is
    /// ([`RedisStartError::Migrate`] with [`MigrateError::TooNew`]), and so is a URL that
    /// is not one ([`RedisStartError::BadUrl`]).
    pub async fn start(opts: RedisOptions) -> Result<Arc<RedisEngine>, RedisStartError> {
        let conn = connect(&opts, false).await?;
        let mode = if let Some(seed) = opts.cluster_urls.first() {
            Mode::Cluster(shards::Shards::new(seed.clone()))
        } else {
            Mode::Single {
                client: redis::Client::open(opts.url.as_str())
                    .map_err(|e| RedisStartError::BadUrl(e.to_string()))?,
            }
        };
        let keys = opts.keys();

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
            Ok(Err(e @ MigrateError::TooNew { .. })) => return Err(e.into()),
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
        let (lane, lane_rx) = mpsc::unbounded_channel();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let cluster = matches!(mode, Mode::Cluster(_));
        let inner = Arc::new(Inner {
            keys,
            mode,
            conn,
            handler: OnceLock::new(),
            ready: AtomicBool::new(false),
            usable: AtomicBool::new(false),
            sink: Mutex::new(None),
            tracks: Tracks::new(),
            events,
            lane,
            refreshes: refresh::Refreshes::new(),
            presence: Mutex::new(LocalPresence::new()),
            local_counts: Mutex::new(Vec::new()),
            opts,
        });
        if cluster {
            shards::start(&inner, events_rx, &shutdown_rx);
        } else {
            tokio::spawn(reader::reader_task(
                inner.clone(),
                events_rx,
                shutdown_rx.clone(),
            ));
        }
        tokio::spawn(lane::lane_task(inner.clone(), lane_rx, shutdown_rx.clone()));
        tokio::spawn(cluster::beat_task(inner.clone(), shutdown_rx));
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
        self.inner.set_ready(false);
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
}

#[async_trait]
impl Engine for RedisEngine {
    fn set_handler(&self, handler: Arc<dyn EngineHandler>) {
        let _ = self.inner.handler.set(handler);
    }

    fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    fn publish(
        &self,
        channel: &ChannelName,
        publication: Publish,
        ns: &NamespaceOptions,
    ) -> PublishTicket {
        // Queued on the lane now, so the call order is the order Redis runs them in.
        let queued = self.inner.check_ready().and_then(|()| {
            let publication = stream::outgoing(&self.inner, channel, publication, ns)?;
            let refresh = publication.refresh();
            let (reply, answer) = oneshot::channel();
            self.inner
                .lane
                .send(lane::Job {
                    slot: conn::slot_of(channel.as_str()),
                    publication,
                    reply,
                })
                .map_err(|_| EngineError::Unavailable("the redis engine stopped".into()))?;
            Ok((answer, refresh))
        });
        let inner = self.inner.clone();
        let channel = channel.clone();
        Box::pin(async move {
            let (answer, refresh) = queued?;
            let result = answer
                .await
                .map_err(|_| EngineError::Unavailable("the redis engine stopped".into()))
                .and_then(|r| r);
            let refreshed = matches!(&result, Ok(r) if !r.duplicate);
            if refresh && !refreshed {
                // The refresh this publication carried may not have run: the next one asks.
                inner.refreshes.forget(channel.as_str());
            }
            result
        })
    }

    async fn push(&self, channel: &ChannelName, frame: ByteString) -> Result<(), EngineError> {
        stream::push(&self.inner, channel, frame).await
    }

    async fn subscribe_node(&self, channel: &ChannelName) -> Result<(), EngineError> {
        match &self.inner.mode {
            Mode::Single { .. } => reader::subscribe(&self.inner, channel).await,
            Mode::Cluster(_) => shards::subscribe(&self.inner, channel).await,
        }
    }

    async fn unsubscribe_node(&self, channel: &ChannelName) -> Result<(), EngineError> {
        match &self.inner.mode {
            Mode::Single { .. } => reader::unsubscribe(&self.inner, channel).await,
            Mode::Cluster(_) => shards::unsubscribe(&self.inner, channel).await,
        }
    }

    async fn history(
        &self,
        channel: &ChannelName,
        since: Option<&StreamPosition>,
        limit: usize,
        ns: &NamespaceOptions,
    ) -> Result<HistoryResult, EngineError> {
        stream::history(&self.inner, channel, since, limit, ns, false).await
    }

    async fn join_history(
        &self,
        channel: &ChannelName,
        since: Option<&StreamPosition>,
        limit: usize,
        ns: &NamespaceOptions,
    ) -> Result<HistoryResult, EngineError> {
        stream::history(&self.inner, channel, since, limit, ns, true).await
    }

    async fn presence_add(
        &self,
        channel: &ChannelName,
        info: &ClientInfo,
        _ns: &NamespaceOptions,
    ) -> Result<(), EngineError> {
        presence::add(&self.inner, channel, info).await
    }

    async fn presence_remove(
        &self,
        channel: &ChannelName,
        client: &str,
    ) -> Result<(), EngineError> {
        presence::remove(&self.inner, channel, client).await
    }

    async fn presence(&self, channel: &ChannelName) -> Result<Vec<PresenceEntry>, EngineError> {
        presence::list(&self.inner, channel).await
    }

    async fn channels(
        &self,
        local: Vec<(String, usize)>,
    ) -> Result<Vec<(String, usize)>, EngineError> {
        self.inner.check_ready()?;
        self.set_local_counts(local);
        cluster::channels(&self.inner).await
    }

    async fn disconnect_user(&self, user: &str) -> Result<usize, EngineError> {
        cluster::disconnect_user(&self.inner, user).await
    }
}
