//! Switchboard: a realtime WebSocket pub/sub server.
//!
//! Clients connect to `/ws`, speak the `switchboard.v1.json` subprotocol, subscribe to
//! channels and publish; backends publish through `/api`. The layout follows the flow of a
//! publication:
//!
//! - [`session`]: one actor per WebSocket (handshake, frames, limits, heartbeat);
//! - [`broker`]: channel membership and fan-out, sharded by channel over threads;
//! - [`engine`]: offsets, history, presence and cross-node delivery, behind one trait:
//!   [`engine::memory`] for a node alone, [`engine::redis`] for a cluster sharing a Redis
//!   (its schema and server-side functions live in `migrations/`);
//! - [`protocol`]: every frame on the wire, and the error and close code tables;
//! - [`api`]: the backend HTTP API and the operator endpoints; [`metrics`]: Prometheus;
//! - [`auth`]: JWT verification and channel permissions; [`channel`]: channel names;
//! - [`config`]: layered settings; [`node`]: the shared state of one node; [`registry`]:
//!   the node's sessions; [`startup`]: building, serving and draining a node.

pub mod api;
pub mod auth;
pub mod broker;
pub mod channel;
pub mod config;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod protocol;
pub mod registry;
pub mod session;
pub mod startup;

/// The hash map of the per-publication paths (channels and their subscribers):
/// foldhash instead of SipHash, which took about 2% of the server's time in the fan-out
/// benchmark. Seeded per map, so keys chosen by clients do not collide by design.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
