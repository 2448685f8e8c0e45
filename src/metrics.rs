//! Prometheus metrics of one node, in a registry of its own (not the global one) so that
//! several nodes can run in one test process. Sessions, the broker and the API update them;
//! `/metrics` renders them as Prometheus text. Every metric is named `switchboard_*`.

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

use crate::protocol::CloseCode;

/// The node's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections.
    pub connections: IntGauge,
    /// Subscriptions held by this node's connections.
    pub subscriptions: IntGauge,
    /// Channels with at least one subscriber on this node.
    pub channels: IntGauge,
    /// Publications accepted on this node (clients and API).
    pub publications: IntCounter,
    /// Messages handed to local subscribers.
    pub deliveries: IntCounter,
    /// Connections closed by the server, by close code.
    pub disconnects: IntCounterVec,
    /// Sessions closed because they stopped reading.
    pub slow_consumers: IntCounter,
    /// Handshakes refused (by HTTP status).
    pub refused: IntCounterVec,
    /// Deflate passes: one per compressed message, whatever the number of connections it
    /// is written to (so a fan-out to compressed subscribers shows as one).
    pub compressions: IntCounter,
    /// Bytes of the messages written from the sessions' outboxes, counted as they would be
    /// uncompressed.
    pub ws_bytes_uncompressed: IntCounter,
    /// The same messages' bytes as written (compressed where negotiated).
    pub ws_bytes_written: IntCounter,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let connections = IntGauge::new("switchboard_connections", "Open WebSocket connections")?;
        let subscriptions = IntGauge::new(
            "switchboard_subscriptions",
            "Channel subscriptions held by this node's connections",
        )?;
        let channels = IntGauge::new(
            "switchboard_channels",
            "Channels with at least one subscriber on this node",
        )?;
        let publications = IntCounter::new(
            "switchboard_publications_total",
            "Publications accepted on this node",
        )?;
        let deliveries = IntCounter::new(
            "switchboard_deliveries_total",
            "Messages handed to local subscribers",
        )?;
        let disconnects = IntCounterVec::new(
            Opts::new(
                "switchboard_disconnects_total",
                "Connections closed by the server, by close code",
            ),
            &["code"],
        )?;
        let slow_consumers = IntCounter::new(
            "switchboard_slow_consumers_total",
            "Sessions closed with 4001 because their unsent output passed the limit",
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "switchboard_handshakes_refused_total",
                "WebSocket handshakes refused, by HTTP status",
            ),
            &["status"],
        )?;
        let compressions = IntCounter::new(
            "switchboard_compressions_total",
            "Messages compressed (permessage-deflate): one per message, however many connections it goes to",
        )?;
        let ws_bytes_uncompressed = IntCounter::new(
            "switchboard_ws_bytes_uncompressed_total",
            "Bytes of the WebSocket messages written to clients, counted uncompressed",
        )?;
        let ws_bytes_written = IntCounter::new(
            "switchboard_ws_bytes_written_total",
            "Bytes of the WebSocket messages written to clients, as written (compressed where negotiated)",
        )?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(subscriptions.clone()))?;
        registry.register(Box::new(channels.clone()))?;
        registry.register(Box::new(publications.clone()))?;
        registry.register(Box::new(deliveries.clone()))?;
        registry.register(Box::new(disconnects.clone()))?;
        registry.register(Box::new(slow_consumers.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(compressions.clone()))?;
        registry.register(Box::new(ws_bytes_uncompressed.clone()))?;
        registry.register(Box::new(ws_bytes_written.clone()))?;
        // Pre-create every close code so dashboards see zeros, not missing series.
        for code in CloseCode::ALL {
            disconnects.with_label_values(&[&code.code().to_string()]);
        }
        Ok(Metrics {
            registry,
            connections,
            subscriptions,
            channels,
            publications,
            deliveries,
            disconnects,
            slow_consumers,
            refused,
            compressions,
            ws_bytes_uncompressed,
            ws_bytes_written,
        })
    }

    /// Counts a server-initiated close.
    pub fn disconnected(&self, code: CloseCode) {
        self.disconnects
            .with_label_values(&[&code.code().to_string()])
            .inc();
    }

    /// Renders the Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            log::error!("metrics encoding failed: {e}");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
