//! One Switchboard node: its settings, engine, broker, session registry and metrics, built
//! once by `startup` and handed to every request handler and session (`web::Data<Node>`).
//! Nothing here is global, so one process can run several nodes (the cluster tests do).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;

use crate::auth::Verifier;
use crate::broker::{Broker, EnginePublication, EnginePush, EngineReset};
use crate::channel::ChannelName;
use crate::config::{EngineKind, Namespaces, Settings};
use crate::engine::memory::MemoryEngine;
use crate::engine::redis::{RedisEngine, RedisOptions};
use crate::engine::{Engine, EngineHandler};
use crate::error::StartupError;
use crate::frame::Wire;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::shrink::ThreadHook;

/// Shared state of a running node.
pub struct Node {
    /// This node's id (in `welcome` and presence).
    pub id: String,
    /// The loaded configuration.
    pub settings: Settings,
    /// Namespace options resolved against `[channels]`.
    pub namespaces: Namespaces,
    /// Token verification.
    pub verifier: Verifier,
    /// Offsets, history, presence, cross-node delivery.
    pub engine: Arc<dyn Engine>,
    /// Local fan-out.
    pub broker: Broker,
    /// Local sessions.
    pub registry: Arc<Registry>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// How frames are written: the compression threshold and the byte counters, shared
    /// by every connection's outbox.
    pub wire: Arc<Wire>,
    /// Set once shutdown begins: `/readyz` says 503 and handshakes are refused.
    pub draining: AtomicBool,
    /// The memory engine, when that is the kind in use (for its periodic sweep).
    pub memory: Option<Arc<MemoryEngine>>,
    /// The Redis engine, when that is the kind in use (`shutdown` stops its tasks).
    pub redis: Option<Arc<RedisEngine>>,
}

/// Routes what the engine hands over into the broker and the registry.
struct NodeHandler {
    broker: Broker,
    registry: Arc<Registry>,
}

impl EngineHandler for NodeHandler {
    fn on_publication(
        &self,
        channel: ChannelName,
        offset: u64,
        epoch: Arc<str>,
        frame: ByteString,
    ) {
        self.broker.publication(EnginePublication {
            channel,
            offset,
            epoch,
            frame,
        });
    }

    fn on_push(&self, channel: ChannelName, frame: ByteString) {
        self.broker.push(EnginePush { channel, frame });
    }

    fn disconnect_user(&self, user: &str) -> usize {
        self.registry.disconnect_user(user)
    }

    fn on_reset(&self, channel: ChannelName, epoch: Arc<str>) {
        self.broker.reset(EngineReset { channel, epoch });
    }
}

impl Node {
    /// Builds a node; must run inside an actix system (the broker starts arbiters, which
    /// run `hook` now and then: see [`ThreadHook`]).
    pub async fn build(
        settings: Settings,
        hook: Option<ThreadHook>,
    ) -> Result<Arc<Node>, StartupError> {
        let id = if settings.server.node_id.is_empty() {
            let u = uuid::Uuid::new_v4().simple().to_string();
            format!("node-{}", &u[..8])
        } else {
            settings.server.node_id.clone()
        };
        let verifier = Verifier::new(&settings.auth).map_err(StartupError::Config)?;
        let metrics = Metrics::new()?;
        let mut redis_engine: Option<Arc<RedisEngine>> = None;
        let (engine, memory): (Arc<dyn Engine>, Option<Arc<MemoryEngine>>) =
            match settings.engine.kind {
                EngineKind::Memory => {
                    let m = Arc::new(MemoryEngine::new(&id));
                    (m.clone(), Some(m))
                }
                EngineKind::Redis | EngineKind::RedisCluster => {
                    // Runs on the main system runtime, which outlives the node: the engine's
                    // reader and heartbeat tasks are spawned here, not on a worker's runtime.
                    // An unreachable Redis starts the node not ready; a newer schema stops it.
                    let r = RedisEngine::start(RedisOptions::from_settings(&settings, &id)).await?;
                    redis_engine = Some(r.clone());
                    (r, None)
                }
            };
        let broker = Broker::new(
            settings.broker_shards(),
            engine.clone(),
            metrics.clone(),
            hook,
        );
        let registry = Arc::new(Registry::new(settings.limits.max_connections));
        engine.set_handler(Arc::new(NodeHandler {
            broker: broker.clone(),
            registry: registry.clone(),
        }));
        let wire = Arc::new(Wire::new(
            settings.compression.min_size,
            metrics.compressions.clone(),
            metrics.ws_bytes_uncompressed.clone(),
            metrics.ws_bytes_written.clone(),
        ));
        let node = Arc::new(Node {
            id,
            wire,
            namespaces: Namespaces::new(&settings),
            settings,
            verifier,
            engine,
            broker,
            registry,
            metrics,
            draining: AtomicBool::new(false),
            memory,
            redis: redis_engine,
        });
        if let Some(r) = &node.redis {
            spawn_count_publisher(&node, r);
        }
        Ok(node)
    }

    /// True while the node accepts new work.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Ready: engine connected and migrated, and not draining.
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.engine.is_ready()
    }
}

/// How often a Redis-backed node hands its local subscriber counts to the engine, which
/// writes them to `<p>:subs:{node}` for cluster-wide `GET /api/channels`.
const COUNTS_PERIOD: Duration = Duration::from_secs(2);

/// Periodically copies the broker's local counts into the Redis engine. Holds only weak
/// references, so the task ends when the node is dropped.
fn spawn_count_publisher(node: &Arc<Node>, engine: &Arc<RedisEngine>) {
    let node = Arc::downgrade(node);
    let engine = Arc::downgrade(engine);
    actix_web::rt::spawn(async move {
        let mut tick = tokio::time::interval(COUNTS_PERIOD);
        loop {
            tick.tick().await;
            let Some(n) = node.upgrade() else { break };
            let broker = n.broker.clone();
            drop(n);
            let counts = broker.channel_counts().await;
            drop(broker);
            match engine.upgrade() {
                Some(e) => e.set_local_counts(counts),
                None => break,
            }
        }
    });
}
