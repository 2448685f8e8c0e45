//! Engines driven directly, without a node: Redis engine options with short periods, the
//! small constructors engine tests write publications and namespaces with, and a
//! [`Recorder`] standing in for the node behind [`EngineHandler`]. Used by the engine
//! conformance suite (`tests/redis_engine.rs`) and the idempotency tests.

use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;
use parking_lot::Mutex;
use serde_json::value::RawValue;
use serde_json::Value as Json;

use super::{wait_until, Redis};
use switchboard::channel::ChannelName;
use switchboard::config::{HumanDuration, NamespaceOptions, Settings};
use switchboard::engine::redis::{RedisEngine, RedisOptions};
use switchboard::engine::{Engine, EngineHandler, Publish};
use switchboard::protocol::{ClientInfo, IdempotencyKey};

/// Redis engine options for `redis` and `prefix`, with periods short enough that expiry and
/// reconnection happen within a test.
pub fn options(redis: &Redis, prefix: &str, node: &str) -> RedisOptions {
    let mut settings = Settings::default();
    settings.engine.redis_url = redis.url();
    short_periods(settings, prefix, node, Duration::from_millis(700))
}

/// [`options`] for a Redis Cluster whose nodes are `urls` (`engine.kind = "redis_cluster"`);
/// a little more time per command, as the cluster redirects and elects.
pub fn cluster_options(urls: Vec<String>, prefix: &str, node: &str) -> RedisOptions {
    let mut settings = Settings::default();
    settings.engine.kind = switchboard::config::EngineKind::RedisCluster;
    settings.engine.redis_urls = urls;
    short_periods(settings, prefix, node, Duration::from_millis(1000))
}

fn short_periods(
    mut settings: Settings,
    prefix: &str,
    node: &str,
    command_timeout: Duration,
) -> RedisOptions {
    settings.engine.prefix = prefix.to_string();
    let mut o = RedisOptions::from_settings(&settings, node);
    o.command_timeout = command_timeout;
    o.start_timeout = Duration::from_secs(2).max(command_timeout * 5);
    o.max_backoff = Duration::from_millis(200);
    o.health_period = Duration::from_millis(100);
    o.presence_period = Duration::from_millis(100);
    o.node_period = Duration::from_millis(100);
    o.disconnect_wait = Duration::from_secs(1);
    o
}

/// A Redis Cluster engine with [`cluster_options`], once it is ready.
pub async fn cluster_engine(urls: Vec<String>, prefix: &str, node: &str) -> Arc<RedisEngine> {
    let e = RedisEngine::start(cluster_options(urls, prefix, node))
        .await
        .expect("cluster engine starts");
    wait_until("cluster engine ready", || e.is_ready()).await;
    e
}

/// A Redis engine on `redis` with [`options`], once it is ready.
pub async fn redis_engine(redis: &Redis, prefix: &str, node: &str) -> Arc<RedisEngine> {
    let e = RedisEngine::start(options(redis, prefix, node))
        .await
        .expect("engine starts");
    wait_until("engine ready", || e.is_ready()).await;
    e
}

/// A channel name the test knows to be valid.
pub fn ch(name: &str) -> ChannelName {
    ChannelName::parse(name).expect("valid channel")
}

/// A publication of `v`, with no `info` and no idempotency key.
pub fn data(v: Json) -> Publish {
    Publish::new(Arc::from(
        RawValue::from_string(v.to_string()).expect("raw json"),
    ))
}

/// A namespace keeping `history_size` publications for a minute.
pub fn ns(history_size: usize) -> NamespaceOptions {
    NamespaceOptions {
        history_size,
        history_ttl: HumanDuration(Duration::from_secs(60)),
        ..NamespaceOptions::default()
    }
}

/// Who published: a client id and a user.
pub fn info(client: &str, user: &str) -> ClientInfo {
    ClientInfo {
        client: client.into(),
        user: user.into(),
    }
}

/// A publication the handler received.
#[derive(Debug, Clone)]
pub struct Got {
    pub channel: String,
    pub offset: u64,
    pub epoch: String,
    pub frame: Json,
}

/// Records what the engine hands to the node.
#[derive(Default)]
pub struct Recorder {
    pub publications: Mutex<Vec<Got>>,
    pub pushes: Mutex<Vec<(String, String)>>,
    pub disconnects: Mutex<Vec<String>>,
    pub resets: Mutex<Vec<(String, String)>>,
    /// What `disconnect_user` answers (sessions "closed" on this node).
    pub sessions: usize,
}

impl Recorder {
    pub fn with_sessions(sessions: usize) -> Arc<Recorder> {
        Arc::new(Recorder {
            sessions,
            ..Recorder::default()
        })
    }

    pub fn of(&self, channel: &str) -> Vec<Got> {
        self.publications
            .lock()
            .iter()
            .filter(|g| g.channel == channel)
            .cloned()
            .collect()
    }
}

impl EngineHandler for Recorder {
    fn on_publication(
        &self,
        channel: ChannelName,
        offset: u64,
        epoch: Arc<str>,
        frame: ByteString,
    ) {
        let frame = serde_json::from_str(&frame).expect("frame is JSON");
        self.publications.lock().push(Got {
            channel: channel.to_string(),
            offset,
            epoch: epoch.to_string(),
            frame,
        });
    }

    fn on_push(&self, channel: ChannelName, frame: ByteString) {
        self.pushes
            .lock()
            .push((channel.to_string(), frame.to_string()));
    }

    fn disconnect_user(&self, user: &str) -> usize {
        self.disconnects.lock().push(user.to_string());
        self.sessions
    }

    fn on_reset(&self, channel: ChannelName, epoch: Arc<str>) {
        self.resets
            .lock()
            .push((channel.to_string(), epoch.to_string()));
    }
}

/// A publication of `v` with the idempotency key `key`.
pub fn keyed(v: Json, key: &str) -> Publish {
    Publish {
        idempotency_key: Some(IdempotencyKey::parse(key).expect("a valid key")),
        ..data(v)
    }
}
