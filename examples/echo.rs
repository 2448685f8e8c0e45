//! The conformance echo server: Autobahn|Testsuite's fuzzingclient (`scripts/autobahn.sh`,
//! docs/conformance.md) connects to its `/ws` and expects every text and binary message
//! back. It is an example rather than a hidden `switchboard echo` subcommand so that the
//! binary that ships has no endpoint that echoes whatever it is sent; `cargo build
//! --example echo` builds it, and clippy `--all-targets` keeps it compiling.
//!
//! Where the suite looks, it is `/ws`, through the library's own pieces:
//! - the handshake: `session::handshake::upgrade`, the same RFC 6455 checks (400, 426) and
//!   the same codec (the vendored actix-http, which refuses a message past
//!   `limits.max_message_size` at its frame header);
//! - the client's messages: `session::incoming::Incoming`, which reassembles fragments,
//!   checks UTF-8 and says which failure closes with which code (1002, 1007, 1009), as it
//!   does for the session actor;
//! - the way out and the close: echoes are queued in an `Outbox` as `WsFrame`s, like the
//!   session's replies, and `session::handshake::start` runs the same response body, which
//!   writes the Close after what is queued and holds the connection until the client's
//!   Close. Pings are answered from the actor, as the session does.
//!
//! Left out is the application: the origin, token and capacity checks, the JSON protocol
//! (binary messages are echoed, where `/ws` closes with 1003), the `disconnect` push before
//! a close, and the heartbeat's pings.
//!
//! Settings are read as the server reads them (`--config`, else `config/default.toml`, then
//! `SWITCHBOARD__...` variables): scripts/autobahn.sh raises
//! `SWITCHBOARD__LIMITS__MAX_MESSAGE_SIZE` for cases 9.*, which send up to 16 MiB.
//!
//! Usage: `echo [PORT] [--config PATH]`: listens on 127.0.0.1:PORT (0, the default, picks a
//! free port) and prints `listening on ADDR` once it accepts connections.
//!
//! `handshake::upgrade` negotiates permessage-deflate as for `/ws`, and each connection's
//! outbox writes with the [`Encoding`] of what it agreed, exactly as `ws_route` builds the
//! session's: cases 12.* and 13.* test the compressed path of `/ws`.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use actix::prelude::*;
use actix_http::ws::{CloseReason, ProtocolError};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use actix_web_actors::ws;
use clap::Parser;
use prometheus::IntCounter;
use switchboard::config::Settings;
use switchboard::frame::{Encoding, Wire};
use switchboard::outbox::{Offer, Outbox, WsFrame};
use switchboard::protocol::CloseCode;
use switchboard::session::handshake;
use switchboard::session::incoming::{Incoming, Received, Refusal};

/// A WebSocket echo server on the code of Switchboard's `/ws`, for conformance suites.
#[derive(Parser)]
struct Args {
    /// The port on 127.0.0.1; 0 picks a free one.
    #[arg(default_value_t = 0)]
    port: u16,
    /// TOML configuration file, as for the server.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

/// One connection: echoes each whole message back.
struct Echo {
    outbox: Arc<Outbox>,
    incoming: Incoming,
    closed: bool,
}

impl Echo {
    /// Queues an echo behind the ones before it, as the session queues its replies.
    fn send(&mut self, ctx: &mut ws::WebsocketContext<Self>, frame: WsFrame) {
        if let Offer::Slow { first: true } = self.outbox.offer_session(frame) {
            self.close(ctx, Some(reason(CloseCode::SlowConsumer)));
        }
    }

    /// The session's `close_raw`: what is queued, then the Close frame, and nothing after.
    fn close(&mut self, ctx: &mut ws::WebsocketContext<Self>, reason: Option<CloseReason>) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.outbox.close();
        ctx.close(reason);
        ctx.stop();
    }
}

/// The Close the session sends with `code` (after its `disconnect` push, left out here).
fn reason(code: CloseCode) -> CloseReason {
    CloseReason {
        code: code.code().into(),
        description: Some(code.reason().to_string()),
    }
}

impl Actor for Echo {
    type Context = ws::WebsocketContext<Self>;
}

impl StreamHandler<Result<ws::Message, ProtocolError>> for Echo {
    fn handle(&mut self, msg: Result<ws::Message, ProtocolError>, ctx: &mut Self::Context) {
        if self.closed {
            return;
        }
        match self.incoming.take(msg) {
            Received::Text(text) => self.send(ctx, WsFrame::text(&text)),
            Received::Binary(data) => self.send(ctx, WsFrame::binary(&data)),
            Received::Ping(p) => ctx.pong(&p),
            Received::Nothing => {}
            Received::Close(client) => self.close(ctx, client),
            Received::Refused(Refusal::Close(code)) => self.close(ctx, Some(reason(code))),
            Received::Refused(Refusal::Protocol(why)) => {
                log::info!("protocol error: {why}");
                self.close(ctx, Some(ws::CloseCode::Protocol.into()));
            }
        }
    }
}

/// `GET /ws`: the RFC 6455 handshake of `/ws`, then an [`Echo`].
async fn echo(
    req: HttpRequest,
    stream: web::Payload,
    settings: web::Data<Settings>,
    wire: web::Data<Arc<Wire>>,
) -> HttpResponse {
    let upgraded = match handshake::upgrade(&req, &settings) {
        Ok(upgraded) => upgraded,
        Err(refused) => return refused.response(),
    };
    let encoding = Encoding::new(wire.get_ref().clone(), upgraded.agreed().cloned());
    let outbox = Arc::new(Outbox::new(
        settings.limits.max_pending_bytes,
        Arc::default(),
        encoding,
    ));
    let actor = Echo {
        outbox: outbox.clone(),
        incoming: Incoming::new(true),
        closed: false,
    };
    handshake::start(upgraded, stream, actor, outbox)
}

async fn serve(settings: Settings, port: u16) -> std::io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    let addr = listener.local_addr()?;
    // The same threshold as a node's; the counters are nobody's (no /metrics here).
    let counter = || IntCounter::new("echo_unregistered", "-");
    let wire = Arc::new(Wire::new(
        settings.compression.min_size,
        counter().map_err(std::io::Error::other)?,
        counter().map_err(std::io::Error::other)?,
        counter().map_err(std::io::Error::other)?,
    ));
    let wire = web::Data::new(wire);
    let settings = web::Data::new(settings);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(settings.clone())
            .app_data(wire.clone())
            .route("/ws", web::get().to(echo))
    })
    // As the server: small frames must not wait for the peer's delayed ACK.
    .tcp_nodelay(true)
    .shutdown_timeout(1)
    .workers(1)
    .listen(listener)?
    .run();
    println!("listening on {addr}");
    std::io::stdout().flush()?;
    server.await
}

fn main() -> ExitCode {
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let settings = match Settings::load(args.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("echo: {e}");
            return ExitCode::from(2);
        }
    };
    match actix_web::rt::System::new().block_on(serve(settings, args.port)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo: {e}");
            ExitCode::FAILURE
        }
    }
}
