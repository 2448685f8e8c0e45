//! The command line: subcommands, their flags, and the bounds every run is checked against
//! before it opens a connection (`main` parses, `load` and `idle` validate through here).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::net::{resolve, Endpoint};
use crate::Res;

// Upper bounds on the flags: every run stays bounded in time, connections and traffic.
pub const MAX_DURATION_S: f64 = 600.0;
pub const MAX_CONNECTIONS: usize = 200_000;
pub const MAX_SIZE: usize = 1 << 20;
pub const MIN_SIZE: usize = 32;
pub const MAX_WINDOW: usize = 100_000;
pub const MAX_RATE: f64 = 10_000_000.0;
pub const MAX_PUBLISH: u64 = 1_000_000_000;

#[derive(Parser)]
#[command(
    name = "switchboard-bench",
    about = "Bounded load generator for Switchboard, NATS-over-WebSocket and the node-ws peer"
)]
pub struct Cli {
    /// Runtime threads for the load generator (1: a single-threaded runtime).
    #[arg(long, global = true, default_value_t = 1)]
    pub threads: usize,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// One publisher as fast as its window allows; S subscribers over C channels.
    Fanout(LoadArgs),
    /// One publisher at a fixed rate; S subscribers over C channels.
    Latency(LatencyArgs),
    /// N idle connections (optionally each subscribed); server memory per connection.
    Idle(IdleArgs),
    /// One connection floods the engine with queries while M others publish at a fixed rate;
    /// the others' publish latency, and what the flood got back.
    Flood(FloodArgs),
    /// Markdown tables from JSON lines written by earlier runs.
    Table {
        /// Files with one JSON object a line (other lines are skipped).
        files: Vec<PathBuf>,
        /// Label of the reference server for the ratio columns.
        #[arg(long, default_value = "nats")]
        reference: String,
    },
    /// The targets against the JSON lines of one run: a Markdown table.
    Targets {
        /// Files with one JSON object a line (other lines are skipped).
        files: Vec<PathBuf>,
        /// Label of the reference server the fan-out targets compare with.
        #[arg(long, default_value = "nats")]
        reference: String,
        /// Label of the server under test.
        #[arg(long, default_value = "switchboard")]
        server: String,
    },
    /// The "Compression" section's tables (bytes per delivery, fan-out and idle memory with
    /// and without permessage-deflate, issue 12's targets) from the JSON lines of one run.
    Compression {
        /// Files with one JSON object a line (other lines are skipped).
        files: Vec<PathBuf>,
        /// Label of the peer the compressed fan-out is compared with.
        #[arg(long, default_value = "nats")]
        reference: String,
        /// Label of the server under test.
        #[arg(long, default_value = "switchboard")]
        server: String,
    },
    /// One line per run that lost deliveries, dropped connections or failed.
    Problems {
        /// Files with one JSON object a line (other lines are skipped).
        files: Vec<PathBuf>,
    },
    /// Print a free TCP port on 127.0.0.1.
    FreePort,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub enum Protocol {
    /// Switchboard's JSON protocol (also spoken by the node-ws peer).
    Switchboard,
    /// The NATS text protocol over WebSocket.
    Nats,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Switchboard => "switchboard",
            Protocol::Nats => "nats",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub enum Flow {
    Reply,
    Delivery,
}

#[derive(Args, Clone)]
pub struct TargetArgs {
    /// WebSocket URL of the server; loopback only (`ws://127.0.0.1:PORT/ws`, `ws://[::1]:PORT/`).
    #[arg(long)]
    pub url: String,
    /// Wire protocol to speak.
    #[arg(long, value_enum, default_value_t = Protocol::Switchboard)]
    pub protocol: Protocol,
    /// Name of the server under test in the report (default: the protocol name).
    #[arg(long)]
    pub label: Option<String>,
    /// Server process to sample (CPU time from /proc/PID/stat, VmRSS from /proc/PID/status).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// CPU the server is pinned to: reports how much of that core other processes used during
    /// the run (from /proc/stat), to tell a noisy measurement.
    #[arg(long)]
    pub server_cpu: Option<usize>,
    /// Seconds allowed to open and subscribe every connection.
    #[arg(long, default_value_t = 60.0)]
    pub setup_timeout: f64,
    /// WebSocket handshakes in progress at once.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
    /// Offer permessage-deflate (RFC 7692, no context takeover either way) on the
    /// subscribers' and idle connections, and fail unless the server accepts it; compressed
    /// messages are inflated as they arrive. The publisher's connection stays plain.
    #[arg(long)]
    pub compress: bool,
    /// Switchboard only: subscribers and idle connections ask for batched frames
    /// (`?batch=true` on the URL) and split each text message into its lines. The
    /// publisher's connection does not ask.
    #[arg(long)]
    pub batch: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub enum Inflate {
    Each,
    Shared,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub enum PayloadKind {
    /// `t=<ns> s=<seq> xxxx…`: the stamp, then padding.
    Stamp,
    /// A JSON object of order records with pseudo-random values (compresses as real JSON
    /// does), its first field the stamp.
    Json,
}

impl PayloadKind {
    pub fn name(self) -> &'static str {
        match self {
            PayloadKind::Stamp => "stamp",
            PayloadKind::Json => "json",
        }
    }
}

#[derive(Args, Clone)]
pub struct LoadArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Subscriber connections.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Channels the subscribers are spread over (round robin); the publisher cycles over them.
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// Payload bytes per publication.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// What the payload looks like.
    #[arg(long, value_enum, default_value_t = PayloadKind::Stamp)]
    pub payload: PayloadKind,
    /// With --compress: `each` inflates every compressed message (what a client pays);
    /// `shared` inflates a message whose compressed bytes equal those of one met recently
    /// on the same thread only once, and copies it for the others (one inflate per
    /// publication where the server sends the same compressed bytes to every subscriber),
    /// so that the load generator's one core can keep up with a server's fan-out.
    #[arg(long, value_enum, default_value_t = Inflate::Each)]
    pub inflate: Inflate,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Publications sent and not yet answered (switchboard: `published` replies; NATS: PONGs).
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// What the window bounds. `reply`: publications not yet answered by the server.
    /// `delivery`: that, and also deliveries not yet received by the subscribers (at most
    /// W publications' worth), so a server that answers before it has fanned out cannot be
    /// flooded past what it delivers.
    #[arg(long, value_enum, default_value_t = Flow::Delivery)]
    pub flow: Flow,
    /// Seconds to wait after publishing for the last deliveries.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Upper bound on publications in the run.
    #[arg(long, default_value_t = 50_000_000)]
    pub max_publish: u64,
    /// Exit with status 1 when a delivery is lost, a subscriber is dropped, or nothing arrives.
    #[arg(long)]
    pub strict: bool,
    /// Comma separated URLs the subscribers connect to, round robin (nodes of one cluster);
    /// the publisher stays on `--url`. Default: `--url`.
    #[arg(long)]
    pub sub_urls: Option<String>,
}

#[derive(Args, Clone)]
pub struct LatencyArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Publications per second (deliveries per second = rate x subscribers per channel).
    #[arg(long)]
    pub rate: f64,
}

#[derive(Args, Clone)]
pub struct IdleArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Each connection subscribes to a channel of its own.
    #[arg(long)]
    pub subscribe: bool,
    /// Seconds to wait, once every connection is ready, before sampling the server.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// Connections per local source address (127.0.0.1, 127.0.0.2, ...) past which the next
    /// address is used, to stay clear of ephemeral port exhaustion.
    #[arg(long, default_value_t = 20_000)]
    pub per_source_ip: usize,
    /// Exit with status 1 when a connection fails.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub enum FloodCommand {
    History,
    Presence,
}

impl FloodCommand {
    pub fn name(self) -> &'static str {
        match self {
            FloodCommand::History => "history",
            FloodCommand::Presence => "presence",
        }
    }
}

#[derive(Args, Clone)]
pub struct FloodArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Commands the flooding connection sends, each on a channel of its own that nobody uses,
    /// without waiting for replies (0: no flood, the victims alone).
    #[arg(long, default_value_t = 50_000)]
    pub flood: u64,
    /// The command the flooding connection sends.
    #[arg(long, value_enum, default_value_t = FloodCommand::History)]
    pub command: FloodCommand,
    /// Commands the flooding connection keeps unanswered at most (0: no bound, all N are
    /// written at once). A bound below the server's queue keeps the flood going for as long
    /// as the server takes to answer N, instead of most of it being refused at once.
    #[arg(long, default_value_t = 0)]
    pub flood_window: u64,
    /// Seconds after the victims started that the flood starts.
    #[arg(long, default_value_t = 1.0)]
    pub flood_after: f64,
    /// Victim connections, each publishing on a channel of its own.
    #[arg(long, default_value_t = 4)]
    pub victims: usize,
    /// Publications per second of each victim, on a fixed schedule that does not wait for
    /// replies.
    #[arg(long, default_value_t = 50.0)]
    pub victim_rate: f64,
    /// Seconds the victims publish at least; while the flood is still going they go on, up to
    /// --max-duration.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Upper bound on the victims' publishing and on the flood, in seconds from the start.
    #[arg(long, default_value_t = 60.0)]
    pub max_duration: f64,
    /// Seconds to wait for the last replies after the victims stopped (or the flood was sent).
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// The Redis the server's engine uses (`127.0.0.1:PORT`, loopback only): its DBSIZE before
    /// the run and after it, to count the keys the run created.
    #[arg(long)]
    pub redis: Option<String>,
    /// That Redis's process, to sample its CPU time.
    #[arg(long)]
    pub redis_pid: Option<u32>,
    /// Exit with status 1 when a victim got an error or no answer, or a flood command was
    /// neither answered nor ended by a disconnect.
    #[arg(long)]
    pub strict: bool,
}

pub fn validate_flood(a: &FloodArgs) -> Res<()> {
    if a.flood > MAX_PUBLISH {
        return Err(format!("--flood must be in 0..={MAX_PUBLISH}").into());
    }
    if a.flood_window > MAX_WINDOW as u64 {
        return Err(format!("--flood-window must be in 0..={MAX_WINDOW}").into());
    }
    if a.victims == 0 || a.victims > 10_000 {
        return Err("--victims must be in 1..=10000".into());
    }
    if !(a.victim_rate > 0.0 && a.victim_rate <= 100_000.0) {
        return Err("--victim-rate must be in (0, 100000]".into());
    }
    if !(a.max_duration > 0.0 && a.max_duration <= MAX_DURATION_S) {
        return Err(format!("--max-duration must be in (0, {MAX_DURATION_S}]").into());
    }
    if !(a.duration > 0.0 && a.duration <= a.max_duration) {
        return Err("--duration must be in (0, --max-duration]".into());
    }
    if !(a.flood_after >= 0.0 && a.flood_after < a.duration) {
        return Err("--flood-after must be in [0, --duration)".into());
    }
    if !(a.drain >= 0.0 && a.drain <= 60.0) {
        return Err("--drain must be in [0, 60]".into());
    }
    if a.target.protocol != Protocol::Switchboard {
        return Err("flood speaks Switchboard's protocol only".into());
    }
    if a.target.compress || a.target.batch {
        return Err("flood takes neither --compress nor --batch".into());
    }
    Ok(())
}

pub fn check_target(t: &TargetArgs) -> Res<Endpoint> {
    if !(t.setup_timeout > 0.0 && t.setup_timeout <= MAX_DURATION_S) {
        return Err(format!("--setup-timeout must be in (0, {MAX_DURATION_S}]").into());
    }
    if t.connect_concurrency == 0 || t.connect_concurrency > 10_000 {
        return Err("--connect-concurrency must be in 1..=10000".into());
    }
    if t.batch && t.protocol != Protocol::Switchboard {
        return Err("--batch is Switchboard's (?batch=true); NATS has no such option".into());
    }
    resolve(&t.url)
}

/// `url` asking for batched frames: `?batch=true`, or `&batch=true` after a query.
pub fn with_batch(url: &str) -> String {
    if url.contains('?') {
        format!("{url}&batch=true")
    } else {
        format!("{url}?batch=true")
    }
}

pub fn validate_load(a: &LoadArgs, rate: Option<f64>) -> Res<()> {
    if a.subscribers == 0 || a.subscribers > MAX_CONNECTIONS {
        return Err(format!("--subscribers must be in 1..={MAX_CONNECTIONS}").into());
    }
    if a.channels == 0 || a.channels > a.subscribers {
        return Err("--channels must be in 1..=subscribers".into());
    }
    if a.size < MIN_SIZE || a.size > MAX_SIZE {
        return Err(format!("--size must be in {MIN_SIZE}..={MAX_SIZE}").into());
    }
    if a.payload == PayloadKind::Json && a.size < 64 {
        return Err(
            "--payload json needs --size 64 or more (the stamp alone takes about 40)".into(),
        );
    }
    if !(a.duration > 0.0 && a.duration <= MAX_DURATION_S) {
        return Err(format!("--duration must be in (0, {MAX_DURATION_S}]").into());
    }
    if !(a.drain >= 0.0 && a.drain <= 60.0) {
        return Err("--drain must be in [0, 60]".into());
    }
    if a.window == 0 || a.window > MAX_WINDOW {
        return Err(format!("--window must be in 1..={MAX_WINDOW}").into());
    }
    if a.max_publish == 0 || a.max_publish > MAX_PUBLISH {
        return Err(format!("--max-publish must be in 1..={MAX_PUBLISH}").into());
    }
    if let Some(r) = rate {
        if !(r > 0.0 && r <= MAX_RATE) {
            return Err(format!("--rate must be in (0, {MAX_RATE}]").into());
        }
    }
    Ok(())
}

pub fn label(t: &TargetArgs) -> String {
    t.label.clone().unwrap_or_else(|| t.protocol.name().into())
}
