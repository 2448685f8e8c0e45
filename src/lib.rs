//! Switchboard: a realtime WebSocket pub/sub server.
//!
//! Clients connect to `/ws`, speak the `switchboard.v1.json` subprotocol, subscribe to
//! channels and publish; backends publish through `/api`. The modules follow the flow of a
//! publication, and imports go one way along it (handshake → session → broker → engine;
//! `scripts/check-shape.py` fails CI on a cycle):
//!
//! ```text
//! client ─▶ session::handshake ─▶ session (actor) ─publish─▶ engine ─┐ memory: loops back
//!                                    │ subscribe                      │ redis: FCALL, PUBLISH
//!                                    ▼                                ▼
//!                                 broker::shard ◀── EngineHandler (node) ◀── engine reader
//!                                    │ fan-out: one frame per publication
//!                                    ▼
//!                                 outbox (per session) ─▶ session::body ─▶ client
//! ```
//!
//! - [`session`]: one actor per WebSocket: [`session::handshake`] (origin, subprotocol,
//!   token, capacity), the actor (commands, limits, heartbeat, token expiry), its publish
//!   queue and rate limit, and the response body that writes the outbox out.
//! - [`outbox`]: a leaf shared by session and broker: the session's queue of ready frames,
//!   its live subscriptions, its slow-consumer account, the node's backpressure, and the
//!   [`outbox::SessionControl`] message.
//! - [`frame`]: the ready frame ([`frame::WsFrame`]), built once per message and shared,
//!   with its compressed form made at most once; and how a connection writes frames
//!   (plain, or compressed). [`deflate`]: permessage-deflate (RFC 7692): compressing and
//!   inflating one message, and the negotiation at the handshake.
//! - [`broker`]: channel membership and fan-out, sharded by channel over the workers'
//!   threads: its messages, the shard, and the join merge (no gap, no duplicate).
//! - [`engine`]: offsets, history, presence and cross-node delivery behind one trait:
//!   [`engine::memory`] for a node alone, [`engine::redis`] for a cluster sharing a Redis
//!   (keys, schema and migrations, the reader and its ordering state machine, publish and
//!   history, presence, cluster control); the schema's functions live in `migrations/`.
//! - [`protocol`]: every frame on the wire (commands, server frames) and one table of
//!   client-visible codes for WebSocket and HTTP alike, with the HTTP error body.
//! - [`api`]: the backend HTTP API and the operator endpoints; [`metrics`]: Prometheus;
//!   [`assets`]: the browser client and demo page (`client/`), compiled in and served.
//! - [`auth`]: JWT verification and channel permissions; [`channel`]: channel names.
//! - [`node`]: the shared state of one node, and the engine handler that routes what the
//!   engine hands back into the broker and the registry; [`registry`]: the node's sessions.
//! - [`config`]: layered settings; [`startup`]: building, serving and draining a node;
//!   [`error`]: why a node could not start, with its exit code.
//! - [`cli`]: the binary's client commands (`sub`, `pub`, `token`), apart from the server:
//!   a WebSocket client that reconnects and recovers like the JS client, publishing over
//!   WebSocket or the HTTP API, and token minting and checking with [`auth`]'s own
//!   verifier. Nothing in the server imports it.
//! - [`shrink`]: a leaf used by all: long-lived maps and queues give back the capacity of a
//!   burst once they are mostly empty; and the [`shrink::ThreadHook`] through which the
//!   binary (`main.rs`, which chooses and tunes the allocator) empties each thread's cache.

pub mod api;
pub mod assets;
pub mod auth;
pub mod batch;
pub mod broker;
pub mod channel;
pub mod cli;
pub mod config;
pub mod deflate;
pub mod engine;
pub mod error;
pub mod frame;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod protocol;
pub mod registry;
pub mod session;
pub mod shrink;
pub mod startup;

/// The hash map of the per-publication paths (channels and their subscribers):
/// foldhash instead of SipHash, which took about 2% of the server's time in the fan-out
/// benchmark. Seeded per map, so keys chosen by clients do not collide by design.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
