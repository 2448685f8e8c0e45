//! Building and running a node: [`Application::build`] binds the listener (port 0 picks a
//! free one, which tests use), builds the [`Node`] and the actix-web server;
//! [`Application::run_until_stopped`] serves until a [`Shutdown`] is triggered (by SIGTERM or
//! SIGINT in `main`, or by a test) and then drains: `/readyz` turns 503, new handshakes are
//! refused, every session gets `disconnect` 1001 and a Close, and the server stops within
//! `server.shutdown_timeout`.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpServer};
use tokio::sync::Notify;

use crate::config::Settings;
pub use crate::error::StartupError;
use crate::node::Node;
use crate::protocol::CloseCode;
use crate::shrink::{thread_hook_ticker, ThreadHook};

/// Triggers a graceful shutdown of one [`Application`]; cheap to clone.
#[derive(Clone, Default)]
pub struct Shutdown(Arc<Notify>);

impl Shutdown {
    /// Starts draining the node.
    pub fn trigger(&self) {
        self.0.notify_one();
    }
}

/// A built node, bound and ready to serve.
pub struct Application {
    addr: SocketAddr,
    node: web::Data<Node>,
    server: actix_web::dev::Server,
    shutdown: Shutdown,
}

fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<rustls::ServerConfig, StartupError> {
    let read = |p: &std::path::Path, what: &str| {
        std::fs::read(p).map_err(|e| {
            StartupError::Config(format!(
                "key `server.{what}`: cannot read {}: {e}",
                p.display()
            ))
        })
    };
    let cert_pem = read(cert, "tls_cert")?;
    let key_pem = read(key, "tls_key")?;
    // PEM through rustls' own pki-types (the same types `with_single_cert` takes); the
    // rustls-pemfile crate is unmaintained (RUSTSEC-2025-0134).
    use rustls::pki_types::pem::{self, PemObject};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    // pki-types prints the offending lines as byte arrays: show them as text.
    let bad_pem = |what: &str, path: &std::path::Path, e: pem::Error| {
        let why = match e {
            pem::Error::MissingSectionEnd { end_marker } => {
                let label = String::from_utf8_lossy(&end_marker);
                format!("no \"-----END {label}-----\" line")
            }
            pem::Error::IllegalSectionStart { line } => {
                format!("bad BEGIN line {:?}", String::from_utf8_lossy(&line))
            }
            e => e.to_string(),
        };
        StartupError::Config(format!(
            "key `server.{what}`: {} is not valid PEM: {why}",
            path.display()
        ))
    };
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem("tls_cert", cert, e))?;
    if certs.is_empty() {
        return Err(StartupError::Config(format!(
            "key `server.tls_cert`: no certificate found in {}",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => StartupError::Config(format!(
            "key `server.tls_key`: no private key found in {}",
            key.display()
        )),
        e => bad_pem("tls_key", key, e),
    })?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| StartupError::Config(format!("key `server.tls_cert`: {e}")))
}

impl Application {
    /// Builds the node and binds `server.bind`; must run inside an actix system.
    pub async fn build(settings: Settings) -> Result<Application, StartupError> {
        Self::build_with(settings, None).await
    }

    /// [`Application::build`], with a `hook` run on each of the node's threads now and then
    /// (the binary's allocator housekeeping, see [`ThreadHook`]).
    pub async fn build_with(
        settings: Settings,
        hook: Option<ThreadHook>,
    ) -> Result<Application, StartupError> {
        let tls = match (&settings.server.tls_cert, &settings.server.tls_key) {
            (Some(c), Some(k)) => Some(tls_config(c, k)?),
            _ => None,
        };
        let listener = TcpListener::bind(&settings.server.bind).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot bind {}: {e}", settings.server.bind),
            )
        })?;
        stalled_output_ends_connection(&listener, settings.heartbeat.timeout.0)?;
        let addr = listener.local_addr()?;
        let workers = settings.workers();
        let node = web::Data::from(Node::build(settings, hook).await?);
        spawn_sweeper(&node);
        // This thread runs the engine's tasks; the workers and the broker's own threads
        // start theirs below and in the broker.
        if let Some(hook) = hook {
            actix_web::rt::spawn(thread_hook_ticker(hook));
        }
        let data = node.clone();
        let serve_client = node.settings.server.serve_client;
        // The factory runs once on each worker thread as it starts: the first workers each
        // host one broker shard.
        let next_shard = Arc::new(AtomicUsize::new(0));
        let server = HttpServer::new(move || {
            data.broker
                .host_shard(next_shard.fetch_add(1, Ordering::Relaxed));
            if let Some(hook) = hook {
                actix_web::rt::spawn(thread_hook_ticker(hook));
            }
            App::new()
                .app_data(data.clone())
                .route("/ws", web::get().to(crate::session::ws_route))
                .configure(crate::api::configure)
                .configure(|cfg| {
                    if serve_client {
                        crate::assets::configure(cfg);
                    }
                })
        })
        .disable_signals()
        // Frames are small and latency matters: without TCP_NODELAY, Nagle's algorithm
        // holds small writes until the peer's delayed ACK (~40 ms), which capped fan-out
        // and put 40 ms in p99 (measured with scripts/bench.sh).
        .tcp_nodelay(true)
        .shutdown_timeout(1)
        .workers(workers);
        let server = match tls {
            Some(cfg) => server.listen_rustls_0_23(listener, cfg)?,
            None => server.listen(listener)?,
        }
        .run();
        let scheme = if node.settings.server.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        log::info!("listening on {addr} scheme={scheme} node={}", node.id);
        Ok(Application {
            addr,
            node,
            server,
            shutdown: Shutdown::default(),
        })
    }

    /// The address actually bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port actually bound.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The node, for tests that look inside.
    pub fn node(&self) -> web::Data<Node> {
        self.node.clone()
    }

    /// A handle that starts a graceful shutdown.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Serves until shut down, then drains.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let Application {
            node,
            server,
            shutdown,
            ..
        } = self;
        let handle = server.handle();
        let mut server = std::pin::pin!(server);
        tokio::select! {
            r = &mut server => return r,
            _ = shutdown.0.notified() => {}
        }
        // The server future must keep being polled while it stops: it is what answers
        // the stop command.
        let stop = async {
            drain(&node).await;
            handle.stop(false).await;
        };
        let (result, ()) = tokio::join!(server, stop);
        result
    }
}

/// Refuses new work, closes every session with 1001 `shutdown`, and waits for them to go
/// (at most `server.shutdown_timeout`).
async fn drain(node: &Node) {
    node.draining.store(true, Ordering::Release);
    let n = node.registry.close_all(CloseCode::Shutdown);
    log::info!("draining node={} sessions={n}", node.id);
    let deadline = Instant::now() + node.settings.server.shutdown_timeout.0;
    while !node.registry.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let left = node.registry.len();
    if left > 0 {
        log::warn!("shutdown timeout with {left} sessions still open");
    }
    // The engine's background tasks hold the node through its handler; stop them so an
    // in-process node (tests) really goes away.
    if let Some(redis) = &node.redis {
        redis.shutdown();
    }
    log::info!("stopped node={}", node.id);
}

/// Periodically forgets memory-engine channels whose history expired.
fn spawn_sweeper(node: &web::Data<Node>) {
    let Some(memory) = node.memory.clone() else {
        return;
    };
    let weak = Arc::downgrade(&memory);
    drop(memory);
    actix_web::rt::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            match weak.upgrade() {
                Some(m) => m.sweep(),
                None => break,
            }
        }
    });
}

/// Waits for SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => log::info!("SIGTERM received"),
                    _ = int.recv() => log::info!("SIGINT received"),
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Sets TCP_USER_TIMEOUT on the listener, which the connections it accepts inherit: a
/// connection whose output has not moved for `timeout` (unacknowledged, or held back by a
/// peer that keeps its receive window at zero) is aborted by the kernel.
///
/// Why: actix-web-actors runs a session as the body of the 101 response, and the HTTP layer
/// polls that body only while its write buffer has room. A client that stops reading thus
/// stops its session too: the `slow_consumer` close decided for it, and its heartbeat, never
/// run, and the connection with up to `limits.max_pending_bytes` of output would stay for as
/// long as the client kept it open. The heartbeat's own timeout is the natural bound: a
/// peer that takes nothing for that long is as dead as one that sends nothing.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn stalled_output_ends_connection(
    listener: &TcpListener,
    timeout: Duration,
) -> std::io::Result<()> {
    socket2::SockRef::from(listener).set_tcp_user_timeout(Some(timeout))
}

/// Elsewhere there is no TCP_USER_TIMEOUT: a client that stops reading keeps its connection
/// until it closes it, or the system's TCP gives up.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn stalled_output_ends_connection(_: &TcpListener, _: Duration) -> std::io::Result<()> {
    Ok(())
}
