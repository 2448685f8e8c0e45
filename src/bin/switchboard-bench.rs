//! `switchboard-bench`: a bounded load generator for Switchboard and for the peers it is
//! compared with (a NATS server's WebSocket listener, a small Node.js `ws` server).
//!
//! Subcommands:
//!
//! - `fanout`: S subscriber connections spread over C channels, one publisher publishing as
//!   fast as a window of W unanswered publications allows; reports deliveries per second,
//!   delivery latency, losses and CPU time.
//! - `latency`: the same, with the publisher at a fixed rate.
//! - `idle`: N connections that each subscribe to a channel of their own and then stay idle;
//!   reports the server's resident memory per connection.
//! - `table`: turns the JSON lines of earlier runs into Markdown tables.
//! - `free-port`: prints a free TCP port on 127.0.0.1.
//!
//! Every run is bounded in time and in count, and only loopback targets (127.0.0.0/8, ::1)
//! are accepted. Each run prints one human line and one JSON line on stdout.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::{sleep_until, timeout_at};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

/// `println!` that ignores a closed stdout (`switchboard-bench ... | head -1`).
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}
type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

const SUBPROTOCOL: &str = "switchboard.v1.json";
const MAX_DURATION_S: f64 = 600.0;
const MAX_CONNECTIONS: usize = 200_000;
const MAX_SIZE: usize = 1 << 20;
const MIN_SIZE: usize = 32;
const MAX_WINDOW: usize = 100_000;
const MAX_RATE: f64 = 10_000_000.0;
const MAX_PUBLISH: u64 = 1_000_000_000;

#[derive(Parser)]
#[command(
    name = "switchboard-bench",
    about = "Bounded load generator for Switchboard, NATS-over-WebSocket and the node-ws peer"
)]
struct Cli {
    /// Runtime threads for the load generator (1: a single-threaded runtime).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One publisher as fast as its window allows; S subscribers over C channels.
    Fanout(LoadArgs),
    /// One publisher at a fixed rate; S subscribers over C channels.
    Latency(LatencyArgs),
    /// N idle connections (optionally each subscribed); server memory per connection.
    Idle(IdleArgs),
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
    /// One line per run that lost deliveries, dropped connections or failed.
    Problems {
        /// Files with one JSON object a line (other lines are skipped).
        files: Vec<PathBuf>,
    },
    /// Print a free TCP port on 127.0.0.1.
    FreePort,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Protocol {
    /// Switchboard's JSON protocol (also spoken by the node-ws peer).
    Switchboard,
    /// The NATS text protocol over WebSocket.
    Nats,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Switchboard => "switchboard",
            Protocol::Nats => "nats",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Flow {
    Reply,
    Delivery,
}

#[derive(Args, Clone)]
struct TargetArgs {
    /// WebSocket URL of the server; loopback only (`ws://127.0.0.1:PORT/ws`, `ws://[::1]:PORT/`).
    #[arg(long)]
    url: String,
    /// Wire protocol to speak.
    #[arg(long, value_enum, default_value_t = Protocol::Switchboard)]
    protocol: Protocol,
    /// Name of the server under test in the report (default: the protocol name).
    #[arg(long)]
    label: Option<String>,
    /// Server process to sample (CPU time from /proc/PID/stat, VmRSS from /proc/PID/status).
    #[arg(long)]
    server_pid: Option<u32>,
    /// CPU the server is pinned to: reports how much of that core other processes used during
    /// the run (from /proc/stat), to tell a noisy measurement.
    #[arg(long)]
    server_cpu: Option<usize>,
    /// Seconds allowed to open and subscribe every connection.
    #[arg(long, default_value_t = 60.0)]
    setup_timeout: f64,
    /// WebSocket handshakes in progress at once.
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
}

#[derive(Args, Clone)]
struct LoadArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Subscriber connections.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Channels the subscribers are spread over (round robin); the publisher cycles over them.
    #[arg(long, default_value_t = 1)]
    channels: usize,
    /// Payload bytes per publication.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Publications sent and not yet answered (switchboard: `published` replies; NATS: PONGs).
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// What the window bounds. `reply`: publications not yet answered by the server.
    /// `delivery`: that, and also deliveries not yet received by the subscribers (at most
    /// W publications' worth), so a server that answers before it has fanned out cannot be
    /// flooded past what it delivers.
    #[arg(long, value_enum, default_value_t = Flow::Delivery)]
    flow: Flow,
    /// Seconds to wait after publishing for the last deliveries.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    /// Upper bound on publications in the run.
    #[arg(long, default_value_t = 50_000_000)]
    max_publish: u64,
    /// Exit with status 1 when a delivery is lost, a subscriber is dropped, or nothing arrives.
    #[arg(long)]
    strict: bool,
    /// Comma separated URLs the subscribers connect to, round robin (nodes of one cluster);
    /// the publisher stays on `--url`. Default: `--url`.
    #[arg(long)]
    sub_urls: Option<String>,
}

#[derive(Args, Clone)]
struct LatencyArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Publications per second (deliveries per second = rate x subscribers per channel).
    #[arg(long)]
    rate: f64,
}

#[derive(Args, Clone)]
struct IdleArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Each connection subscribes to a channel of its own.
    #[arg(long)]
    subscribe: bool,
    /// Seconds to wait, once every connection is ready, before sampling the server.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// Connections per local source address (127.0.0.1, 127.0.0.2, ...) past which the next
    /// address is used, to stay clear of ephemeral port exhaustion.
    #[arg(long, default_value_t = 20_000)]
    per_source_ip: usize,
    /// Exit with status 1 when a connection fails.
    #[arg(long)]
    strict: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Table { files, reference } = &cli.cmd {
        return match table(files, reference) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchboard-bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Cmd::Targets {
        files,
        reference,
        server,
    } = &cli.cmd
    {
        return match targets(files, reference, server) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchboard-bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Cmd::Problems { files } = &cli.cmd {
        return match problems(files) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchboard-bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Cmd::FreePort = &cli.cmd {
        return match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
            Ok(a) => {
                outln!("{}", a.port());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("switchboard-bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let mut builder = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(cli.threads.min(64));
        b
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchboard-bench: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.cmd {
            Cmd::Fanout(a) => load(a, None).await,
            Cmd::Latency(a) => load(a.load, Some(a.rate)).await,
            Cmd::Idle(a) => idle(a).await,
            Cmd::Table { .. } | Cmd::Targets { .. } | Cmd::Problems { .. } | Cmd::FreePort => {
                unreachable!()
            }
        }
    });
    // Connections still open are dropped with the runtime; do not wait for their tasks.
    rt.shutdown_background();
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("switchboard-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------
// Target, connections, process sampling
// ---------------------------------------------------------------------------------------

struct Endpoint {
    url: String,
    addr: SocketAddr,
}

/// Parses a `ws://` URL and refuses anything that is not a loopback address. Host names other
/// than `localhost` are refused without being looked up.
fn resolve(url: &str) -> Res<Endpoint> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or("only ws:// URLs to a loopback address are accepted")?;
    let hostport = rest.split(['/', '?']).next().unwrap_or("");
    let addrs: Vec<SocketAddr> = if let Ok(a) = hostport.parse::<SocketAddr>() {
        vec![a]
    } else {
        let (host, port) = hostport
            .rsplit_once(':')
            .ok_or("the URL must give a port (ws://127.0.0.1:PORT/...)")?;
        if !host.eq_ignore_ascii_case("localhost") {
            return Err(format!(
                "refusing target {hostport:?}: only 127.0.0.0/8, ::1 or localhost are allowed"
            )
            .into());
        }
        let port: u16 = port.parse().map_err(|_| "bad port in URL")?;
        ("localhost", port).to_socket_addrs()?.collect()
    };
    if addrs.is_empty() {
        return Err("the URL resolves to no address".into());
    }
    if let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        return Err(format!("refusing non-loopback target {a}").into());
    }
    Ok(Endpoint {
        url: url.to_string(),
        addr: addrs[0],
    })
}

fn ws_config(big: bool) -> WebSocketConfig {
    if big {
        WebSocketConfig::default()
            .read_buffer_size(64 * 1024)
            .write_buffer_size(64 * 1024)
    } else {
        // Idle connections: small eager buffers keep the load generator's own memory low.
        WebSocketConfig::default()
            .read_buffer_size(2048)
            .write_buffer_size(0)
    }
}

async fn open(ep: &Endpoint, proto: Protocol, source: Option<IpAddr>, big: bool) -> Res<Ws> {
    let sock = if ep.addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        sock.bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    let stream = sock.connect(ep.addr).await?;
    stream.set_nodelay(true)?;
    let mut req = ep.url.as_str().into_client_request()?;
    if proto == Protocol::Switchboard {
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(req, stream, Some(ws_config(big))).await?;
    Ok(ws)
}

/// Raises the soft file limit to the hard one, and the hard one too when `needed` is above it
/// and the process may. Errors when the result is still below `needed`.
fn raise_nofile(needed: u64) -> Res<()> {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err("getrlimit(RLIMIT_NOFILE) failed".into());
        }
        if lim.rlim_max < needed as libc::rlim_t {
            let want = libc::rlimit {
                rlim_cur: needed as libc::rlim_t,
                rlim_max: needed as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim = want;
            }
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim = want;
            }
        }
        if lim.rlim_cur < needed as libc::rlim_t {
            return Err(format!(
                "need {needed} file descriptors but RLIMIT_NOFILE is {} (hard {}); raise it (ulimit -Hn / -n) and retry",
                lim.rlim_cur, lim.rlim_max
            )
            .into());
        }
    }
    Ok(())
}

/// CPU seconds (user + system) used by this process so far.
fn self_cpu() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct passed by pointer.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut ru) != 0 {
            return 0.0;
        }
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }
}

#[derive(Clone, Copy)]
struct ProcSample {
    cpu_s: f64,
    rss_kib: u64,
}

/// CPU seconds (utime + stime) and VmRSS of another process.
fn proc_sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: fields start after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // fields[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no memory effects.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let tck = if tck > 0 { tck as f64 } else { 100.0 };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    Some(ProcSample {
        cpu_s: (utime + stime) as f64 / tck,
        rss_kib,
    })
}

/// Busy and total seconds of one CPU so far, from /proc/stat.
fn core_times(cpu: usize) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    // SAFETY: sysconf has no memory effects.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let tck = if tck > 0 { tck as f64 } else { 100.0 };
    Some(((total - idle) as f64 / tck, total as f64 / tck))
}

/// Share of the server's core (percent of the interval) used by anything but the server.
fn other_load(
    before: Option<(f64, f64)>,
    after: Option<(f64, f64)>,
    server_cpu_s: Option<f64>,
) -> Option<f64> {
    let ((b0, t0), (b1, t1)) = (before?, after?);
    let span = t1 - t0;
    if span <= 0.0 {
        return None;
    }
    Some((100.0 * (b1 - b0 - server_cpu_s?) / span).max(0.0))
}

fn sample_server(pid: Option<u32>) -> Res<Option<ProcSample>> {
    match pid {
        None => Ok(None),
        Some(p) => proc_sample(p).map(Some).ok_or_else(|| {
            format!("cannot read /proc/{p}/stat and status (is the server running?)").into()
        }),
    }
}

fn check_target(t: &TargetArgs) -> Res<Endpoint> {
    if !(t.setup_timeout > 0.0 && t.setup_timeout <= MAX_DURATION_S) {
        return Err(format!("--setup-timeout must be in (0, {MAX_DURATION_S}]").into());
    }
    if t.connect_concurrency == 0 || t.connect_concurrency > 10_000 {
        return Err("--connect-concurrency must be in 1..=10000".into());
    }
    resolve(&t.url)
}

// ---------------------------------------------------------------------------------------
// Latency histogram: log-linear buckets, 64 per power of two (about 1.6 % resolution)
// ---------------------------------------------------------------------------------------

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = (SUB + (64 - SUB_BITS as u64) * SUB) as usize;

struct Histogram {
    counts: Vec<AtomicU64>,
    max: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }

    fn index(v: u64) -> usize {
        if v < SUB {
            return v as usize;
        }
        let e = 63 - v.leading_zeros(); // >= SUB_BITS
        let shift = e - SUB_BITS;
        let sub = (v >> shift) - SUB;
        (SUB + shift as u64 * SUB + sub) as usize
    }

    /// Middle of the bucket's range.
    fn value(i: usize) -> u64 {
        let i = i as u64;
        if i < SUB {
            return i;
        }
        let shift = (i - SUB) / SUB;
        let sub = (i - SUB) % SUB;
        let low = (SUB + sub) << shift;
        low + ((1u64 << shift) >> 1)
    }

    fn record(&self, v: u64) {
        self.counts[Self::index(v)].fetch_add(1, Relaxed);
        if v > self.max.load(Relaxed) {
            self.max.fetch_max(v, Relaxed);
        }
    }

    fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c.load(Relaxed);
            if seen >= rank {
                return Some(Self::value(i).min(self.max.load(Relaxed)));
            }
        }
        Some(self.max.load(Relaxed))
    }
}

// ---------------------------------------------------------------------------------------
// Payloads and the NATS protocol
// ---------------------------------------------------------------------------------------

/// `t=<ns since the bench epoch> s=<per-channel sequence> xxxx…`, exactly `size` bytes.
fn write_payload(out: &mut String, ts: u64, seq: u64, size: usize) {
    let start = out.len();
    let _ = write!(out, "t={ts} s={seq} ");
    let used = out.len() - start;
    for _ in used..size {
        out.push('x');
    }
}

fn parse_digits(s: &[u8]) -> Option<(u64, &[u8])> {
    let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return None;
    }
    let mut v = 0u64;
    for b in &s[..n] {
        v = v * 10 + (b - b'0') as u64;
    }
    Some((v, &s[n..]))
}

/// Reads `t=<ts> s=<seq>` at the start of `s`.
fn parse_stamp(s: &[u8]) -> Option<(u64, u64)> {
    let (ts, rest) = parse_digits(s.strip_prefix(b"t=")?)?;
    let (seq, _) = parse_digits(rest.strip_prefix(b" s=")?)?;
    Some((ts, seq))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (first, rest) = needle.split_first()?;
    let mut from = 0;
    while let Some(p) = hay[from..].iter().position(|b| b == first) {
        let at = from + p;
        if hay[at + 1..].starts_with(rest) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// The stamp inside a Switchboard `message` frame (`"data":"t=… s=… xx"`).
fn sb_stamp(b: &[u8]) -> Option<(u64, u64)> {
    let i = find(b, b"\"t=")?;
    parse_stamp(&b[i + 1..])
}

fn sb_type(text: &str) -> &str {
    let b = text.as_bytes();
    match find(b, b"\"type\":\"") {
        Some(i) => {
            let rest = &text[i + 8..];
            &rest[..rest.find('"').unwrap_or(0)]
        }
        None => "",
    }
}

/// A numeric `"id":N` in a reply.
fn sb_id(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let i = find(b, b"\"id\":")?;
    parse_digits(&b[i + 5..]).map(|(v, _)| v)
}

fn sb_error_code(text: &str) -> String {
    let b = text.as_bytes();
    match find(b, b"\"code\":\"") {
        Some(i) => {
            let rest = &text[i + 8..];
            rest[..rest.find('"').unwrap_or(0)].to_string()
        }
        None => "unknown".into(),
    }
}

enum NatsEvent<'a> {
    Msg(&'a [u8]),
    Ping,
    Pong,
    Info,
    Err(String),
    Other,
}

/// Incremental parser for the server side of the NATS text protocol (frames may split or
/// join protocol messages anywhere).
#[derive(Default)]
struct NatsParser {
    buf: Vec<u8>,
}

impl NatsParser {
    fn feed(&mut self, data: &[u8], mut f: impl FnMut(NatsEvent<'_>)) -> Res<()> {
        self.buf.extend_from_slice(data);
        let mut pos = 0;
        loop {
            let rest = &self.buf[pos..];
            let Some(eol) = find(rest, b"\r\n") else {
                break;
            };
            let line = &rest[..eol];
            if line.starts_with(b"MSG ") {
                let n: usize = std::str::from_utf8(line)
                    .ok()
                    .and_then(|l| l.rsplit(' ').next())
                    .and_then(|n| n.parse().ok())
                    .ok_or("bad MSG line")?;
                let need = eol + 2 + n + 2;
                if rest.len() < need {
                    break;
                }
                f(NatsEvent::Msg(&rest[eol + 2..eol + 2 + n]));
                pos += need;
                continue;
            }
            let ev = if line == b"PING" {
                NatsEvent::Ping
            } else if line == b"PONG" {
                NatsEvent::Pong
            } else if line.starts_with(b"INFO") {
                NatsEvent::Info
            } else if line.starts_with(b"-ERR") {
                NatsEvent::Err(String::from_utf8_lossy(line).into_owned())
            } else {
                NatsEvent::Other
            };
            f(ev);
            pos += eol + 2;
        }
        self.buf.drain(..pos);
        Ok(())
    }
}

const NATS_CONNECT: &str =
    "CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"switchboard-bench\"}\r\n";

fn nats_frame(s: &str) -> Message {
    Message::binary(s.as_bytes().to_vec())
}

// ---------------------------------------------------------------------------------------
// Connection set-up
// ---------------------------------------------------------------------------------------

fn describe_close(m: &Message) -> String {
    match m {
        Message::Close(Some(cf)) => format!("close {} {}", u16::from(cf.code), cf.reason),
        Message::Close(None) => "close".into(),
        _ => "unexpected".into(),
    }
}

/// Reads Switchboard frames until one of type `want`; an `error` frame or a close fails.
async fn sb_expect(ws: &mut Ws, want: &str, deadline: tokio::time::Instant) -> Res<()> {
    loop {
        let m = timeout_at(deadline, ws.next())
            .await
            .map_err(|_| format!("timed out waiting for {want}"))?
            .ok_or("connection closed")??;
        match &m {
            Message::Text(t) => {
                let ty = sb_type(t.as_str());
                if ty == want {
                    return Ok(());
                }
                if ty == "error" || ty == "disconnect" {
                    return Err(format!("waiting for {want}: {}", t.as_str()).into());
                }
            }
            Message::Close(_) => return Err(describe_close(&m).into()),
            _ => {}
        }
    }
}

/// Reads NATS frames until a PONG (the answer to the PING sent after CONNECT/SUB).
async fn nats_expect_pong(
    ws: &mut Ws,
    parser: &mut NatsParser,
    deadline: tokio::time::Instant,
) -> Res<()> {
    loop {
        let m = timeout_at(deadline, ws.next())
            .await
            .map_err(|_| "timed out waiting for PONG")?
            .ok_or("connection closed")??;
        let data = match m {
            Message::Binary(b) => b.to_vec(),
            Message::Text(t) => t.as_str().as_bytes().to_vec(),
            Message::Close(_) => return Err(describe_close(&m).into()),
            _ => continue,
        };
        let mut pong = false;
        let mut ping = false;
        let mut err = None;
        parser.feed(&data, |ev| match ev {
            NatsEvent::Pong => pong = true,
            NatsEvent::Ping => ping = true,
            NatsEvent::Err(e) => err = Some(e),
            _ => {}
        })?;
        if let Some(e) = err {
            return Err(e.into());
        }
        if ping {
            ws.send(nats_frame("PONG\r\n")).await?;
        }
        if pong {
            return Ok(());
        }
    }
}

/// Opens a connection and, with `channel`, subscribes it; returns once the server confirmed.
async fn setup_conn(
    ep: &Endpoint,
    proto: Protocol,
    channel: Option<&str>,
    source: Option<IpAddr>,
    big: bool,
    deadline: tokio::time::Instant,
) -> Res<(Ws, NatsParser)> {
    let mut ws = timeout_at(deadline, open(ep, proto, source, big))
        .await
        .map_err(|_| "timed out connecting")??;
    let mut parser = NatsParser::default();
    match proto {
        Protocol::Switchboard => {
            sb_expect(&mut ws, "welcome", deadline).await?;
            if let Some(ch) = channel {
                let cmd = format!("{{\"type\":\"subscribe\",\"id\":1,\"channel\":\"{ch}\"}}");
                ws.send(Message::text(cmd)).await?;
                sb_expect(&mut ws, "subscribed", deadline).await?;
            }
        }
        Protocol::Nats => {
            let mut hello = String::from(NATS_CONNECT);
            if let Some(ch) = channel {
                let _ = write!(hello, "SUB {ch} 1\r\n");
            }
            hello.push_str("PING\r\n");
            ws.send(nats_frame(&hello)).await?;
            nats_expect_pong(&mut ws, &mut parser, deadline).await?;
        }
    }
    Ok((ws, parser))
}

// ---------------------------------------------------------------------------------------
// Fan-out and fixed-rate runs
// ---------------------------------------------------------------------------------------

struct Shared {
    epoch: Instant,
    hist: Histogram,
    received: AtomicU64,
    /// The publisher waits for `received` to reach this (u64::MAX: not waiting).
    wake_at: AtomicU64,
    wake: tokio::sync::Notify,
    gaps: AtomicU64,
    dups: AtomicU64,
    unparsed: AtomicU64,
    error_frames: AtomicU64,
    ended: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn note_end(&self, why: String) {
        let mut m = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(why).or_default() += 1;
    }
}

struct SeqCheck {
    next: u64,
}

impl SeqCheck {
    fn deliver(&mut self, shared: &Shared, stamp: Option<(u64, u64)>) {
        match stamp {
            Some((ts, seq)) => {
                let now = shared.now_ns();
                shared.hist.record(now.saturating_sub(ts));
                let got = shared.received.fetch_add(1, Relaxed) + 1;
                if got >= shared.wake_at.load(Relaxed) {
                    shared.wake_at.store(u64::MAX, Relaxed);
                    shared.wake.notify_one();
                }
                if seq >= self.next {
                    shared.gaps.fetch_add(seq - self.next, Relaxed);
                    self.next = seq + 1;
                } else {
                    shared.dups.fetch_add(1, Relaxed);
                }
            }
            None => {
                shared.unparsed.fetch_add(1, Relaxed);
            }
        }
    }
}

/// Where a subscriber's raw reader stands: bytes read but not yet parsed, and a fragmented
/// message being put together.
struct RawReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    fragments: Vec<u8>,
    fragment_op: u8,
}

/// One complete WebSocket message, or what ends the connection.
enum RawEvent<'a> {
    Text(&'a [u8]),
    Binary(&'a [u8]),
    Ping(&'a [u8]),
    Close(String),
}

impl RawReader {
    fn new() -> Self {
        RawReader {
            buf: vec![0; 256 * 1024],
            start: 0,
            end: 0,
            fragments: Vec::new(),
            fragment_op: 0,
        }
    }

    /// Parses every complete frame buffered; `f` returns false to stop early (then the
    /// rest stays buffered). Errors on what a server must not send (a masked frame).
    fn parse(&mut self, mut f: impl FnMut(RawEvent<'_>) -> bool) -> Res<()> {
        loop {
            let b = &self.buf[self.start..self.end];
            if b.len() < 2 {
                break;
            }
            let (fin, op) = (b[0] & 0x80 != 0, b[0] & 0x0f);
            if b[1] & 0x80 != 0 {
                return Err("the server sent a masked frame".into());
            }
            let (len, head) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 if b.len() >= 10 => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&b[2..10]);
                    (u64::from_be_bytes(n) as usize, 10)
                }
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if len > MAX_SIZE * 4 {
                return Err(format!("frame of {len} bytes").into());
            }
            if b.len() < head + len {
                let need = head + len;
                if need > self.buf.len() {
                    self.buf.resize(need, 0);
                }
                break;
            }
            let payload = &b[head..head + len];
            self.start += head + len;
            let go_on = match (op, fin) {
                (0x1, true) => f(RawEvent::Text(payload)),
                (0x2, true) => f(RawEvent::Binary(payload)),
                (0x1 | 0x2, false) => {
                    self.fragment_op = op;
                    self.fragments.clear();
                    self.fragments.extend_from_slice(payload);
                    true
                }
                (0x0, _) => {
                    self.fragments.extend_from_slice(payload);
                    if fin {
                        let whole = std::mem::take(&mut self.fragments);
                        let go_on = if self.fragment_op == 0x1 {
                            f(RawEvent::Text(&whole))
                        } else {
                            f(RawEvent::Binary(&whole))
                        };
                        self.fragments = whole;
                        go_on
                    } else {
                        true
                    }
                }
                (0x8, _) => {
                    let why = if payload.len() >= 2 {
                        let code = u16::from_be_bytes([payload[0], payload[1]]);
                        format!("close {code} {}", String::from_utf8_lossy(&payload[2..]))
                    } else {
                        "close".to_string()
                    };
                    f(RawEvent::Close(why));
                    false
                }
                (0x9, _) => f(RawEvent::Ping(payload)),
                _ => true,
            };
            if !go_on {
                return Ok(());
            }
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && self.buf.len() - self.end < 16 * 1024 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        Ok(())
    }
}

/// A masked client frame (RFC 6455 5.3; the key need not be secret towards our own server).
fn client_frame(op: u8, payload: &[u8]) -> Vec<u8> {
    const KEY: [u8; 4] = [0x5b, 0x1f, 0x93, 0x2e];
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | op);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&KEY);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
    out
}

/// A subscriber's receive loop. After the set-up (done with tungstenite) it reads WebSocket
/// frames straight off the socket: tungstenite's per-message cost made the load generator,
/// not the server, the limit above about 3 M deliveries/s. The set-up's last reply is the
/// last frame the server sends before the publisher starts, so tungstenite holds nothing
/// unread when the socket is taken from it (anything lost would show as a loss anyway).
async fn run_subscriber(
    ws: Ws,
    mut parser: NatsParser,
    proto: Protocol,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = ws.into_inner();
    let mut check = SeqCheck { next: 0 };
    let mut reader = RawReader::new();
    loop {
        let end = reader.end;
        let n = tokio::select! {
            biased;
            _ = stop.changed() => return,
            n = stream.read(&mut reader.buf[end..]) => n,
        };
        match n {
            Ok(0) => {
                shared.note_end("eof".into());
                return;
            }
            Ok(n) => reader.end += n,
            Err(e) => {
                shared.note_end(format!("error: {e}"));
                return;
            }
        }
        let mut pongs: Vec<Vec<u8>> = Vec::new();
        let mut ended: Option<String> = None;
        let r = reader.parse(|ev| match ev {
            RawEvent::Text(t) if proto == Protocol::Switchboard => {
                if let Some(stamp) = sb_stamp(t) {
                    check.deliver(&shared, Some(stamp));
                } else {
                    match sb_type(&String::from_utf8_lossy(t)) {
                        "error" => {
                            shared.error_frames.fetch_add(1, Relaxed);
                        }
                        "disconnect" => {}
                        _ => {
                            shared.unparsed.fetch_add(1, Relaxed);
                        }
                    }
                }
                true
            }
            RawEvent::Binary(b) if proto == Protocol::Nats => {
                let mut ping = false;
                let r = parser.feed(b, |ev| match ev {
                    NatsEvent::Msg(p) => check.deliver(&shared, parse_stamp(p)),
                    NatsEvent::Ping => ping = true,
                    NatsEvent::Err(_) => {
                        shared.error_frames.fetch_add(1, Relaxed);
                    }
                    _ => {}
                });
                if let Err(e) = r {
                    ended = Some(format!("protocol error: {e}"));
                    return false;
                }
                if ping {
                    pongs.push(client_frame(0x2, b"PONG\r\n"));
                }
                true
            }
            RawEvent::Ping(p) => {
                pongs.push(client_frame(0xA, p));
                true
            }
            RawEvent::Close(why) => {
                ended = Some(why);
                false
            }
            _ => true,
        });
        if let Err(e) = r {
            ended = Some(format!("protocol error: {e}"));
        }
        if let Some(why) = ended {
            shared.note_end(why);
            return;
        }
        for p in pongs {
            if stream.write_all(&p).await.is_err() {
                shared.note_end("write failed".into());
                return;
            }
        }
    }
}

/// Waits until `n` connections reported their set-up (or every sender is gone): how many
/// are ready, how many failed, and the first failure.
async fn count_ready(
    rx: &mut mpsc::UnboundedReceiver<Result<(), String>>,
    n: usize,
) -> (usize, usize, Option<String>) {
    let (mut ready, mut failed, mut first_error) = (0, 0, None);
    while ready + failed < n {
        match rx.recv().await {
            Some(Ok(())) => ready += 1,
            Some(Err(e)) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            None => break,
        }
    }
    (ready, failed, first_error)
}

struct PubResult {
    sent: u64,
    published: u64,
    per_channel: Vec<u64>,
    rejected: BTreeMap<String, u64>,
    late: u64,
    start: Instant,
    stop: Instant,
    received_at_stop: u64,
    unanswered: u64,
    failure: Option<String>,
}

/// The publisher: a window of unanswered publications, at full speed or at `rate` per second.
async fn run_publisher(
    ws: &mut Ws,
    proto: Protocol,
    channels: &[String],
    subs: &[u64],
    args: &LoadArgs,
    rate: Option<f64>,
    shared: &Shared,
) -> PubResult {
    let c = channels.len() as u64;
    let mut r = PubResult {
        sent: 0,
        published: 0,
        per_channel: vec![0; channels.len()],
        rejected: BTreeMap::new(),
        late: 0,
        start: Instant::now(),
        stop: Instant::now(),
        received_at_stop: 0,
        unanswered: 0,
        failure: None,
    };
    let start = Instant::now();
    let start_ns = shared.now_ns();
    let stop_at = start + Duration::from_secs_f64(args.duration);
    let give_up = stop_at + Duration::from_secs_f64(args.drain.max(1.0));
    let window = args.window as u64;
    // With --flow delivery: deliveries sent for and not yet received, at most this many.
    let per_pub = subs.iter().sum::<u64>().div_ceil(c);
    let delivery_limit = match args.flow {
        Flow::Delivery => window * per_pub,
        Flow::Reply => u64::MAX,
    };
    let mut owed = 0u64; // deliveries due for every publication sent
    let mut seq = vec![0u64; channels.len()];
    let mut pings: VecDeque<u64> = VecDeque::new();
    let mut last_ping = 0u64;
    let mut acked = 0u64;
    let mut parser = NatsParser::default();
    let mut sending = true;
    let mut frame = String::with_capacity(args.size + 128);
    r.start = start;
    loop {
        let mut delivery_blocked = false;
        let now = Instant::now();
        if sending && (now >= stop_at || r.sent >= args.max_publish) {
            sending = false;
            r.stop = now;
            r.received_at_stop = shared.received.load(Relaxed);
        }
        let inflight = r.sent - acked;
        if !sending && inflight == 0 {
            break;
        }
        if !sending && now >= give_up {
            r.unanswered = inflight;
            break;
        }
        // Send what the window and the schedule allow.
        if sending && inflight < window {
            let mut room = (window - inflight).min(args.max_publish - r.sent);
            if let Some(rate) = rate {
                let due = ((now - start).as_secs_f64() * rate) as u64 + 1;
                room = room.min(due.saturating_sub(r.sent));
            }
            if room > 0 && owed.saturating_sub(shared.received.load(Relaxed)) >= delivery_limit {
                delivery_blocked = true;
                room = 0;
            }
            if room > 0 {
                let now_ns = shared.now_ns();
                let mut res = Ok(());
                for _ in 0..room {
                    let n = r.sent;
                    let ch = (n % c) as usize;
                    if owed.saturating_sub(shared.received.load(Relaxed)) >= delivery_limit {
                        break;
                    }
                    owed += subs[ch];
                    if let Some(rate) = rate {
                        // Sends more than 5 ms behind the schedule: the publisher could not
                        // keep up (window full or load generator busy).
                        if now_ns > start_ns + (n as f64 / rate * 1e9) as u64 + 5_000_000 {
                            r.late += 1;
                        }
                    }
                    let ts = shared.now_ns();
                    frame.clear();
                    let msg = match proto {
                        Protocol::Switchboard => {
                            let _ = write!(
                                frame,
                                "{{\"type\":\"publish\",\"id\":{n},\"channel\":\"{}\",\"data\":\"",
                                channels[ch]
                            );
                            write_payload(&mut frame, ts, seq[ch], args.size);
                            frame.push_str("\"}");
                            Message::text(frame.clone())
                        }
                        Protocol::Nats => {
                            let _ = write!(frame, "PUB {} {}\r\n", channels[ch], args.size);
                            write_payload(&mut frame, ts, seq[ch], args.size);
                            frame.push_str("\r\n");
                            nats_frame(&frame)
                        }
                    };
                    seq[ch] += 1;
                    r.sent += 1;
                    res = ws.feed(msg).await;
                    if res.is_err() {
                        break;
                    }
                    if proto == Protocol::Nats && r.sent - last_ping >= (window / 4).max(1) {
                        last_ping = r.sent;
                        pings.push_back(r.sent);
                        res = ws.feed(nats_frame("PING\r\n")).await;
                        if res.is_err() {
                            break;
                        }
                    }
                }
                if res.is_ok() && proto == Protocol::Nats && r.sent > last_ping {
                    last_ping = r.sent;
                    pings.push_back(r.sent);
                    res = ws.feed(nats_frame("PING\r\n")).await;
                }
                if res.is_ok() {
                    res = ws.flush().await;
                }
                if let Err(e) = res {
                    r.failure = Some(format!("publisher write: {e}"));
                    break;
                }
                continue;
            }
        }
        // Wait for a reply, the next scheduled send, or the end.
        let inflight = r.sent - acked;
        let wake = if !sending {
            give_up
        } else if inflight >= window {
            stop_at
        } else if let Some(rate) = rate {
            (start + Duration::from_secs_f64(r.sent as f64 / rate)).min(stop_at)
        } else {
            stop_at
        };
        if delivery_blocked {
            // Woken by a subscriber once an eighth of the delivery budget has come back.
            let target = owed - delivery_limit + (delivery_limit / 8).max(1);
            shared.wake_at.store(target, Relaxed);
            if shared.received.load(Relaxed) >= target {
                shared.wake_at.store(u64::MAX, Relaxed);
                tokio::task::yield_now().await;
                continue;
            }
        }
        let first = tokio::select! {
            m = ws.next() => Some(m),
            _ = sleep_until(wake.into()) => None,
            _ = shared.wake.notified(), if delivery_blocked => None,
        };
        shared.wake_at.store(u64::MAX, Relaxed);
        let Some(first) = first else {
            continue;
        };
        let mut next = Some(first);
        while let Some(m) = next.take() {
            let m = match m {
                None => {
                    r.failure = Some("publisher connection closed".into());
                    break;
                }
                Some(Err(e)) => {
                    r.failure = Some(format!("publisher read: {e}"));
                    break;
                }
                Some(Ok(m)) => m,
            };
            match (&m, proto) {
                (Message::Text(t), Protocol::Switchboard) => {
                    let text = t.as_str();
                    match sb_type(text) {
                        "published" => {
                            acked += 1;
                            r.published += 1;
                            if let Some(id) = sb_id(text) {
                                r.per_channel[(id % c) as usize] += 1;
                            }
                        }
                        "error" => {
                            if sb_id(text).is_some() {
                                acked += 1;
                            }
                            *r.rejected.entry(sb_error_code(text)).or_default() += 1;
                        }
                        _ => {}
                    }
                }
                (Message::Binary(b), Protocol::Nats) => {
                    let mut pongs = 0;
                    let mut ping = false;
                    let mut err = None;
                    let res = parser.feed(b, |ev| match ev {
                        NatsEvent::Pong => pongs += 1,
                        NatsEvent::Ping => ping = true,
                        NatsEvent::Err(e) => err = Some(e),
                        _ => {}
                    });
                    if let Err(e) = res {
                        r.failure = Some(format!("publisher: {e}"));
                        break;
                    }
                    if let Some(e) = err {
                        *r.rejected.entry(e).or_default() += 1;
                    }
                    for _ in 0..pongs {
                        if let Some(mark) = pings.pop_front() {
                            acked = mark;
                        }
                    }
                    if ping && ws.send(nats_frame("PONG\r\n")).await.is_err() {
                        r.failure = Some("publisher write failed".into());
                        break;
                    }
                }
                (Message::Close(_), _) => {
                    r.failure = Some(format!("publisher: {}", describe_close(&m)));
                    break;
                }
                _ => {}
            }
            // Take whatever else is already there without waiting.
            next = ws.next().now_or_never();
        }
        if r.failure.is_some() {
            break;
        }
    }
    if sending {
        r.stop = Instant::now();
        r.received_at_stop = shared.received.load(Relaxed);
    }
    if proto == Protocol::Nats {
        r.published = acked;
        for (i, slot) in r.per_channel.iter_mut().enumerate() {
            *slot = acked / c + u64::from((i as u64) < acked % c);
        }
    }
    r
}

fn validate_load(a: &LoadArgs, rate: Option<f64>) -> Res<()> {
    if a.subscribers == 0 || a.subscribers > MAX_CONNECTIONS {
        return Err(format!("--subscribers must be in 1..={MAX_CONNECTIONS}").into());
    }
    if a.channels == 0 || a.channels > a.subscribers {
        return Err("--channels must be in 1..=subscribers".into());
    }
    if a.size < MIN_SIZE || a.size > MAX_SIZE {
        return Err(format!("--size must be in {MIN_SIZE}..={MAX_SIZE}").into());
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

fn label(t: &TargetArgs) -> String {
    t.label.clone().unwrap_or_else(|| t.protocol.name().into())
}

fn ms(ns: Option<u64>) -> Value {
    match ns {
        Some(v) => json!((v as f64 / 1e6 * 1000.0).round() / 1000.0),
        None => Value::Null,
    }
}

fn fmt_ms(ns: Option<u64>) -> String {
    match ns {
        Some(v) => format!("{:.3} ms", v as f64 / 1e6),
        None => "-".into(),
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (v * p).round() / p
}

async fn load(args: LoadArgs, rate: Option<f64>) -> Res<bool> {
    validate_load(&args, rate)?;
    let ep = check_target(&args.target)?;
    let bound = Duration::from_secs_f64(
        args.target.setup_timeout + args.duration + args.drain.max(1.0) + 30.0,
    );
    match tokio::time::timeout(bound, load_inner(args, rate, ep)).await {
        Ok(r) => r,
        Err(_) => Err(format!("run did not finish within {bound:?}; aborted").into()),
    }
}

async fn load_inner(args: LoadArgs, rate: Option<f64>, ep: Endpoint) -> Res<bool> {
    let ep = Arc::new(ep);
    let proto = args.target.protocol;
    raise_nofile(args.subscribers as u64 + 64)?;
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        hist: Histogram::new(),
        received: AtomicU64::new(0),
        wake_at: AtomicU64::new(u64::MAX),
        wake: tokio::sync::Notify::new(),
        gaps: AtomicU64::new(0),
        dups: AtomicU64::new(0),
        unparsed: AtomicU64::new(0),
        error_frames: AtomicU64::new(0),
        ended: Mutex::new(BTreeMap::new()),
    });
    let run_id = format!(
        "{}{}",
        std::process::id(),
        shared.epoch.elapsed().subsec_nanos() % 1000
    );
    let channels: Arc<Vec<String>> = Arc::new(
        (0..args.channels)
            .map(|c| format!("bench.{run_id}.{c}"))
            .collect(),
    );
    let sub_eps: Vec<Arc<Endpoint>> = match &args.sub_urls {
        Some(list) => list
            .split(',')
            .map(|u| resolve(u.trim()).map(Arc::new))
            .collect::<Res<Vec<_>>>()?,
        None => vec![ep.clone()],
    };
    if sub_eps.is_empty() {
        return Err("--sub-urls lists no URL".into());
    }
    let mut subs_per_channel = vec![0u64; args.channels];
    for i in 0..args.subscribers {
        subs_per_channel[i % args.channels] += 1;
    }

    // Subscribers: connect and subscribe, a bounded number of handshakes at a time.
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(args.target.setup_timeout);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let gate = Arc::new(Semaphore::new(args.target.connect_concurrency));
    let setup_start = Instant::now();
    let mut tasks = Vec::with_capacity(args.subscribers);
    for i in 0..args.subscribers {
        let (ep, channels, shared, gate) = (
            sub_eps[i % sub_eps.len()].clone(),
            channels.clone(),
            shared.clone(),
            gate.clone(),
        );
        let (ready_tx, stop_rx) = (ready_tx.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let ch = &channels[i % channels.len()];
            let conn = setup_conn(&ep, proto, Some(ch), None, true, deadline).await;
            drop(permit);
            match conn {
                Ok((ws, parser)) => {
                    let _ = ready_tx.send(Ok(()));
                    drop(ready_tx);
                    run_subscriber(ws, parser, proto, shared, stop_rx).await;
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                }
            }
        }));
    }
    drop(ready_tx);
    let (ready, failed, first_error) = count_ready(&mut ready_rx, args.subscribers).await;
    if failed > 0 || ready < args.subscribers {
        let _ = stop_tx.send(true);
        return Err(format!(
            "{failed} of {} subscribers failed to connect and subscribe; first error: {}",
            args.subscribers,
            first_error.unwrap_or_default()
        )
        .into());
    }
    let setup_s = setup_start.elapsed().as_secs_f64();

    let (mut publisher, _) = setup_conn(&ep, proto, None, None, true, deadline)
        .await
        .map_err(|e| format!("publisher: {e}"))?;

    // Measure.
    let server_before = sample_server(args.target.server_pid)?;
    let core_before = args.target.server_cpu.and_then(core_times);
    let cpu_before = self_cpu();
    let pr = run_publisher(
        &mut publisher,
        proto,
        &channels,
        &subs_per_channel,
        &args,
        rate,
        &shared,
    )
    .await;
    let expected: u64 = pr
        .per_channel
        .iter()
        .zip(&subs_per_channel)
        .map(|(p, s)| p * s)
        .sum();
    let drain_until = Instant::now() + Duration::from_secs_f64(args.drain);
    while shared.received.load(Relaxed) < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let end = Instant::now();
    let cpu_after = self_cpu();
    let server_after = sample_server(args.target.server_pid)?;
    let core_after = args.target.server_cpu.and_then(core_times);
    let _ = stop_tx.send(true);
    let _ = publisher.close(None).now_or_never();
    drop(publisher);
    let stop_wait = tokio::time::Instant::now() + Duration::from_secs(2);
    for t in tasks {
        if timeout_at(stop_wait, t).await.is_err() {
            break;
        }
    }

    // Report.
    let received = shared.received.load(Relaxed);
    let lost = expected.saturating_sub(received);
    let window_s = (pr.stop - pr.start).as_secs_f64().max(1e-9);
    let measured_s = (end - pr.start).as_secs_f64().max(1e-9);
    let delivered_per_s = pr.received_at_stop as f64 / window_s;
    let published_per_s = pr.published as f64 / window_s;
    let h = &shared.hist;
    let (p50, p99, p999) = (h.quantile(0.5), h.quantile(0.99), h.quantile(0.999));
    let max = if h.count() > 0 {
        Some(h.max.load(Relaxed))
    } else {
        None
    };
    let client_cpu = cpu_after - cpu_before;
    let server = match (server_before, server_after) {
        (Some(a), Some(b)) => Some((b.cpu_s - a.cpu_s, a.rss_kib, b.rss_kib)),
        _ => None,
    };
    let other = other_load(core_before, core_after, server.map(|s| s.0));
    let ended = shared
        .ended
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let dropped: u64 = ended.values().sum();
    let mode = if rate.is_some() { "latency" } else { "fanout" };
    let label = label(&args.target);
    let ok = pr.failure.is_none() && lost == 0 && dropped == 0 && received > 0;

    let mut human = format!(
        "[{label}] {mode} subs={} channels={} size={}B{}: {:.0} deliveries/s, latency p50 {} p99 {} p99.9 {} max {}; published {} ({:.0}/s), expected {expected}, received {received}, lost {lost}",
        args.subscribers,
        args.channels,
        args.size,
        rate.map(|r| format!(" rate={r}/s")).unwrap_or_default(),
        delivered_per_s,
        fmt_ms(p50),
        fmt_ms(p99),
        fmt_ms(p999),
        fmt_ms(max),
        pr.published,
        published_per_s,
    );
    let gaps = shared.gaps.load(Relaxed);
    let dups = shared.dups.load(Relaxed);
    if gaps + dups > 0 {
        let _ = write!(human, ", gaps {gaps}, out-of-order/dup {dups}");
    }
    if !pr.rejected.is_empty() {
        let _ = write!(human, ", publish errors {:?}", pr.rejected);
    }
    if dropped > 0 {
        let _ = write!(human, ", subscribers dropped {ended:?}");
    }
    if pr.late > 0 {
        let _ = write!(human, ", sent late {}", pr.late);
    }
    let _ = write!(
        human,
        "; bench CPU {:.2} s ({:.0}%)",
        client_cpu,
        100.0 * client_cpu / measured_s
    );
    if let Some((cpu, rb, ra)) = server {
        let _ = write!(
            human,
            "; server CPU {:.2} s ({:.0}% of a core), RSS {:.1} -> {:.1} MiB",
            cpu,
            100.0 * cpu / measured_s,
            rb as f64 / 1024.0,
            ra as f64 / 1024.0
        );
    }
    if let Some(o) = other {
        let _ = write!(human, "; other load on the server's core {o:.0}%");
    }
    if let Some(f) = &pr.failure {
        let _ = write!(human, "; FAILURE: {f}");
    }
    if pr.unanswered > 0 {
        let _ = write!(human, "; {} publications unanswered", pr.unanswered);
    }
    outln!("{human}");
    let record = json!({
        "mode": mode,
        "label": label,
        "protocol": proto.name(),
        "sub_nodes": args.sub_urls.as_deref().map_or(1, |l| l.split(',').count()),
        "url": args.target.url,
        "subscribers": args.subscribers,
        "channels": args.channels,
        "size": args.size,
        "window": args.window,
        "flow": format!("{:?}", args.flow).to_lowercase(),
        "rate": rate,
        "duration_s": round(window_s, 3),
        "measured_s": round(measured_s, 3),
        "setup_s": round(setup_s, 3),
        "sent": pr.sent,
        "published": pr.published,
        "published_per_s": round(published_per_s, 1),
        "publish_errors": pr.rejected,
        "unanswered": pr.unanswered,
        "late": pr.late,
        "expected": expected,
        "received": received,
        "lost": lost,
        "gaps": gaps,
        "dups": dups,
        "unparsed": shared.unparsed.load(Relaxed),
        "error_frames": shared.error_frames.load(Relaxed),
        "subscribers_dropped": ended,
        "delivered_per_s": round(delivered_per_s, 1),
        "latency_ms": {"p50": ms(p50), "p99": ms(p99), "p999": ms(p999), "max": ms(max), "count": h.count()},
        "client_cpu_s": round(client_cpu, 3),
        "client_cpu_pct": round(100.0 * client_cpu / measured_s, 1),
        "server_pid": args.target.server_pid,
        "server_cpu_s": server.map(|s| round(s.0, 3)),
        "server_cpu_pct": server.map(|s| round(100.0 * s.0 / measured_s, 1)),
        "server_rss_kib_before": server.map(|s| s.1),
        "server_rss_kib_after": server.map(|s| s.2),
        "server_core_other_pct": other.map(|o| round(o, 1)),
        "failure": pr.failure,
        "ok": ok,
    });
    outln!("{record}");
    Ok(ok || !args.strict)
}

// ---------------------------------------------------------------------------------------
// Idle connections
// ---------------------------------------------------------------------------------------

async fn hold(mut ws: Ws, mut parser: NatsParser, mut stop: watch::Receiver<bool>) -> String {
    loop {
        let m = tokio::select! {
            biased;
            _ = stop.changed() => return String::new(),
            m = ws.next() => m,
        };
        match m {
            None => return "eof".into(),
            Some(Err(e)) => return format!("error: {e}"),
            Some(Ok(Message::Binary(b))) => {
                let mut ping = false;
                if parser
                    .feed(&b, |ev| {
                        if let NatsEvent::Ping = ev {
                            ping = true
                        }
                    })
                    .is_err()
                {
                    return "protocol error".into();
                }
                if ping && ws.send(nats_frame("PONG\r\n")).await.is_err() {
                    return "write failed".into();
                }
            }
            Some(Ok(m @ Message::Close(_))) => return describe_close(&m),
            Some(Ok(_)) => {}
        }
    }
}

async fn idle(args: IdleArgs) -> Res<bool> {
    let ep = check_target(&args.target)?;
    if args.connections == 0 || args.connections > MAX_CONNECTIONS {
        return Err(format!("--connections must be in 1..={MAX_CONNECTIONS}").into());
    }
    if !(args.settle >= 0.0 && args.settle <= 60.0) {
        return Err("--settle must be in [0, 60]".into());
    }
    if args.per_source_ip == 0 || args.per_source_ip > 28_000 {
        return Err("--per-source-ip must be in 1..=28000".into());
    }
    let bound = Duration::from_secs_f64(args.target.setup_timeout + args.settle + 30.0);
    match tokio::time::timeout(bound, idle_inner(args, ep)).await {
        Ok(r) => r,
        Err(_) => Err(format!("run did not finish within {bound:?}; aborted").into()),
    }
}

async fn idle_inner(args: IdleArgs, ep: Endpoint) -> Res<bool> {
    let n = args.connections;
    let proto = args.target.protocol;
    raise_nofile(n as u64 + 64)?;
    // Spread over several source addresses when one would run out of ephemeral ports.
    let spread = n > args.per_source_ip;
    if spread && !ep.addr.is_ipv4() {
        return Err(format!(
            "{n} connections need several source addresses, which only an IPv4 (127.x) target allows"
        )
        .into());
    }
    if spread && n.div_ceil(args.per_source_ip) > 250 {
        return Err("too many connections for the 127.0.0.x source addresses".into());
    }
    let ep = Arc::new(ep);
    let server_before = sample_server(args.target.server_pid)?;
    let cpu_before = self_cpu();
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(args.target.setup_timeout);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let (end_tx, mut end_rx) = mpsc::unbounded_channel::<String>();
    let gate = Arc::new(Semaphore::new(args.target.connect_concurrency));
    let tag = std::process::id();
    for i in 0..n {
        let (ep, gate, stop_rx) = (ep.clone(), gate.clone(), stop_rx.clone());
        let (ready_tx, end_tx) = (ready_tx.clone(), end_tx.clone());
        let source = spread
            .then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i / args.per_source_ip) as u8)));
        let channel = args.subscribe.then(|| format!("idle.{tag}.{i}"));
        tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let conn = setup_conn(&ep, proto, channel.as_deref(), source, false, deadline).await;
            drop(permit);
            match conn {
                Ok((ws, parser)) => {
                    let _ = ready_tx.send(Ok(()));
                    drop(ready_tx);
                    let why = hold(ws, parser, stop_rx).await;
                    if !why.is_empty() {
                        let _ = end_tx.send(why);
                    }
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                }
            }
        });
    }
    drop(ready_tx);
    drop(end_tx);
    let (ready, failed, first_error) = count_ready(&mut ready_rx, n).await;
    let connect_s = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let server_after = sample_server(args.target.server_pid)?;
    let cpu_after = self_cpu();
    let mut dropped = BTreeMap::<String, u64>::new();
    while let Ok(why) = end_rx.try_recv() {
        *dropped.entry(why).or_default() += 1;
    }
    let _ = stop_tx.send(true);

    let label = label(&args.target);
    let held = ready as u64 - dropped.values().sum::<u64>();
    let per_conn = match (server_before, server_after) {
        (Some(a), Some(b)) if held > 0 => Some((b.rss_kib as f64 - a.rss_kib as f64) / held as f64),
        _ => None,
    };
    let client_cpu = cpu_after - cpu_before;
    let ok = failed == 0 && dropped.is_empty();
    let mut human = format!(
        "[{label}] idle connections={n} subscribe={}: {held} held, {failed} failed, connected in {connect_s:.2} s",
        args.subscribe
    );
    if let (Some(a), Some(b), Some(k)) = (server_before, server_after, per_conn) {
        let _ = write!(
            human,
            "; server RSS {:.1} -> {:.1} MiB = {k:.1} KiB per connection, server CPU {:.2} s",
            a.rss_kib as f64 / 1024.0,
            b.rss_kib as f64 / 1024.0,
            b.cpu_s - a.cpu_s
        );
    }
    let _ = write!(human, "; bench CPU {client_cpu:.2} s");
    if let Some(e) = &first_error {
        let _ = write!(human, "; first error: {e}");
    }
    if !dropped.is_empty() {
        let _ = write!(human, "; dropped while idle: {dropped:?}");
    }
    outln!("{human}");
    let record = json!({
        "mode": "idle",
        "label": label,
        "protocol": proto.name(),
        "url": args.target.url,
        "connections": n,
        "subscribe": args.subscribe,
        "held": held,
        "failed": failed,
        "first_error": first_error,
        "dropped": dropped,
        "source_ips": if spread { n.div_ceil(args.per_source_ip) } else { 1 },
        "connect_s": round(connect_s, 3),
        "settle_s": args.settle,
        "server_pid": args.target.server_pid,
        "server_rss_kib_before": server_before.map(|s| s.rss_kib),
        "server_rss_kib_after": server_after.map(|s| s.rss_kib),
        "kib_per_connection": per_conn.map(|k| round(k, 2)),
        "server_cpu_s": match (server_before, server_after) {
            (Some(a), Some(b)) => Some(round(b.cpu_s - a.cpu_s, 3)),
            _ => None,
        },
        "client_cpu_s": round(client_cpu, 3),
        "ok": ok,
    });
    outln!("{record}");
    // Give the connection tasks a moment to close their sockets.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(ok || !args.strict)
}

// ---------------------------------------------------------------------------------------
// Markdown tables
// ---------------------------------------------------------------------------------------

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn lat(v: &Value, q: &str) -> Option<f64> {
    v.get("latency_ms")
        .and_then(|l| l.get(q))
        .and_then(Value::as_f64)
}

fn fmt_rate(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 1e6 => format!("{:.2} M", v / 1e6),
        Some(v) if v >= 1e4 => format!("{:.0} k", v / 1e3),
        Some(v) if v >= 1e3 => format!("{:.1} k", v / 1e3),
        Some(v) => format!("{v:.0}"),
        None => "-".into(),
    }
}

fn fmt_lat(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
        None => "-".into(),
    }
}

fn fmt_ratio(v: Option<f64>, r: Option<f64>) -> String {
    match (v, r) {
        (Some(v), Some(r)) if r > 0.0 => format!("{:.2}×", v / r),
        _ => "-".into(),
    }
}

fn fmt_pct(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0}%")).unwrap_or_else(|| "-".into())
}

fn case_key(v: &Value) -> String {
    let mode = v.get("mode").and_then(Value::as_str).unwrap_or("");
    let g = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    match mode {
        "idle" => format!(
            "{} connections{}",
            g("connections"),
            if v.get("subscribe").and_then(Value::as_bool) == Some(true) {
                ", each subscribed"
            } else {
                ""
            }
        ),
        _ => {
            let chans = if g("channels") == 1 {
                "1 channel".to_string()
            } else {
                format!("{} channels", g("channels"))
            };
            let mut s = format!("{} subs, {chans}, {} B", g("subscribers"), g("size"));
            if v.get("flow").and_then(Value::as_str) == Some("reply") {
                s.push_str(", reply-paced");
            }

            if let Some(r) = num(v, "rate") {
                let per_channel = g("subscribers") as f64 / g("channels").max(1) as f64;
                let _ = write!(s, " @ {} deliveries/s", fmt_rate(Some(r * per_channel)));
            }
            s
        }
    }
}

fn read_rows(files: &[PathBuf]) -> Res<Vec<Value>> {
    let mut rows: Vec<Value> = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('{') {
                if let Ok(v) = serde_json::from_str::<Value>(line) {
                    rows.push(v);
                }
            }
        }
    }
    Ok(rows)
}

fn problems(files: &[PathBuf]) -> Res<()> {
    for r in read_rows(files)? {
        if r.get("ok").and_then(Value::as_bool) != Some(false) {
            continue;
        }
        let label = r.get("label").and_then(Value::as_str).unwrap_or("?");
        let mut line = format!(
            "{label}: {} {}",
            r["mode"].as_str().unwrap_or(""),
            case_key(&r)
        );
        let keys: &[&str] = if r["mode"] == "idle" {
            &["held", "failed", "first_error", "dropped"]
        } else {
            &[
                "expected",
                "received",
                "lost",
                "gaps",
                "dups",
                "subscribers_dropped",
                "publish_errors",
                "unanswered",
                "failure",
            ]
        };
        for k in keys {
            match r.get(*k) {
                None | Some(Value::Null) => {}
                Some(Value::Number(n)) if n.as_u64() == Some(0) => {}
                Some(Value::Object(o)) if o.is_empty() => {}
                Some(v) => {
                    let _ = write!(line, ", {k} {v}");
                }
            }
        }
        outln!("{line}");
    }
    Ok(())
}

fn table(files: &[PathBuf], reference: &str) -> Res<()> {
    let rows = read_rows(files)?;
    let label_of = |v: &Value| {
        v.get("label")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string()
    };
    let mode_of = |v: &Value| {
        v.get("mode")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    // Cases in order of first appearance; within a case, rows in the order they came.
    let mut cases: Vec<(String, String)> = Vec::new();
    for r in &rows {
        let k = (mode_of(r), case_key(r));
        if !cases.contains(&k) {
            cases.push(k);
        }
    }
    let find_ref = |mode: &str, key: &str| {
        rows.iter()
            .find(|r| mode_of(r) == mode && case_key(r) == key && label_of(r) == reference)
    };
    for (title, mode) in [
        (
            "Fan-out throughput (publisher as fast as its window allows)",
            "fanout",
        ),
        ("Latency at a fixed publish rate", "latency"),
    ] {
        if !cases.iter().any(|(m, _)| m == mode) {
            continue;
        }
        outln!("### {title}\n");
        outln!("| case | server | deliveries/s | × {reference} | p50 ms | p99 ms | p99.9 ms | p99 × {reference} | published | lost | server CPU | bench CPU | other load |");
        outln!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (_, key) in cases.iter().filter(|(m, _)| m == mode) {
            let reference_row = find_ref(mode, key);
            for r in rows
                .iter()
                .filter(|r| mode_of(r) == mode && &case_key(r) == key)
            {
                let rate = num(r, "delivered_per_s");
                let lost = num(r, "lost").unwrap_or(0.0);
                let expected = num(r, "expected").unwrap_or(0.0);
                let mut lost_s = format!("{lost:.0}");
                if lost > 0.0 && expected > 0.0 {
                    let _ = write!(lost_s, " ({:.2}%)", 100.0 * lost / expected);
                }
                if let Some(d) = r.get("subscribers_dropped").and_then(Value::as_object) {
                    let n: u64 = d.values().filter_map(Value::as_u64).sum();
                    if n > 0 {
                        let _ = write!(lost_s, ", {n} subs dropped");
                    }
                }
                if r.get("failure").is_some_and(|f| !f.is_null()) {
                    lost_s.push_str(", publisher failed");
                }
                outln!(
                    "| {key} | {} | {} | {} | {} | {} | {} | {} | {} | {lost_s} | {} | {} | {} |",
                    label_of(r),
                    fmt_rate(rate),
                    fmt_ratio(rate, reference_row.and_then(|x| num(x, "delivered_per_s"))),
                    fmt_lat(lat(r, "p50")),
                    fmt_lat(lat(r, "p99")),
                    fmt_lat(lat(r, "p999")),
                    fmt_ratio(lat(r, "p99"), reference_row.and_then(|x| lat(x, "p99"))),
                    num(r, "published")
                        .map(|p| format!("{p:.0}"))
                        .unwrap_or_default(),
                    fmt_pct(num(r, "server_cpu_pct")),
                    fmt_pct(num(r, "client_cpu_pct")),
                    fmt_pct(num(r, "server_core_other_pct")),
                );
            }
        }
        outln!();
    }
    if cases.iter().any(|(m, _)| m == "idle") {
        outln!("### Idle connections: server memory\n");
        outln!("| case | server | KiB per connection | × {reference} | server RSS before → after | connect time | failed |");
        outln!("|---|---|---:|---:|---:|---:|---:|");
        for (_, key) in cases.iter().filter(|(m, _)| m == "idle") {
            let reference_row = find_ref("idle", key);
            for r in rows
                .iter()
                .filter(|r| mode_of(r) == "idle" && &case_key(r) == key)
            {
                let k = num(r, "kib_per_connection");
                let mib = |key: &str| {
                    num(r, key)
                        .map(|v| format!("{:.1}", v / 1024.0))
                        .unwrap_or_else(|| "-".into())
                };
                outln!(
                    "| {key} | {} | {} | {} | {} → {} MiB | {} s | {} |",
                    label_of(r),
                    k.map(|k| format!("{k:.1}")).unwrap_or_else(|| "-".into()),
                    fmt_ratio(k, reference_row.and_then(|x| num(x, "kib_per_connection"))),
                    mib("server_rss_kib_before"),
                    mib("server_rss_kib_after"),
                    num(r, "connect_s")
                        .map(|s| format!("{s:.1}"))
                        .unwrap_or_else(|| "-".into()),
                    num(r, "failed").unwrap_or(0.0),
                );
            }
        }
        outln!();
    }
    Ok(())
}

/// Issue 4's targets, each with this run's figures: fan-out and many channels at least the
/// reference's deliveries/s, at most 6 KiB per idle subscribed connection, p99 under 5 ms at
/// 20,000 deliveries/s, and no loss.
fn targets(files: &[PathBuf], reference: &str, server: &str) -> Res<()> {
    let rows = read_rows(files)?;
    let find = |label: &str, mode: &str, key: &str| {
        rows.iter().find(|r| {
            r.get("label").and_then(Value::as_str) == Some(label)
                && r.get("mode").and_then(Value::as_str) == Some(mode)
                && case_key(r) == key
        })
    };
    let yes_no = |met: bool, short: String| {
        if met {
            "yes".to_string()
        } else {
            format!("no, {short}")
        }
    };
    outln!("| target (issue 4) | {server} | {reference} | ratio | met? |");
    outln!("|---|---:|---:|---:|---|");
    let throughput = |what: &str, key: &str| {
        let ours = find(server, "fanout", key).and_then(|r| num(r, "delivered_per_s"));
        let theirs = find(reference, "fanout", key).and_then(|r| num(r, "delivered_per_s"));
        let met = match (ours, theirs) {
            (Some(a), Some(b)) => yes_no(a >= b, format!("{:.0}% short", 100.0 * (1.0 - a / b))),
            _ => "not measured in this run".into(),
        };
        outln!(
            "| {what} ≥ {reference}: {key} | {} | {} | {} | {met} |",
            fmt_rate(ours),
            fmt_rate(theirs),
            fmt_ratio(ours, theirs)
        );
    };
    for subs in [100, 1000] {
        for size in [64, 1024] {
            throughput("fan-out", &format!("{subs} subs, 1 channel, {size} B"));
        }
    }
    throughput("many channels", "1000 subs, 1000 channels, 64 B");
    for n in [10_000, 50_000] {
        let key = format!("{n} connections, each subscribed");
        let kib =
            |label: &str| find(label, "idle", &key).and_then(|r| num(r, "kib_per_connection"));
        let (ours, theirs) = (kib(server), kib(reference));
        let met = match ours {
            Some(k) => yes_no(k <= 6.0, format!("{:.1} KiB over", k - 6.0)),
            None => "not measured in this run".into(),
        };
        let fmt = |v: Option<f64>| v.map_or("-".into(), |k| format!("{k:.1} KiB"));
        outln!(
            "| ≤ 6 KiB per idle subscribed connection: {key} | {} | {} | {} | {met} |",
            fmt(ours),
            fmt(theirs),
            fmt_ratio(ours, theirs)
        );
    }
    let key = "100 subs, 1 channel, 64 B @ 20 k deliveries/s";
    let p99 = |label: &str| find(label, "latency", key).and_then(|r| lat(r, "p99"));
    let (ours, theirs) = (p99(server), p99(reference));
    let met = match ours {
        Some(ms) => yes_no(ms < 5.0, format!("{:.2} ms over", ms - 5.0)),
        None => "not measured in this run".into(),
    };
    outln!(
        "| p99 < 5 ms: {key} | {} ms | {} ms | {} | {met} |",
        fmt_lat(ours),
        fmt_lat(theirs),
        fmt_ratio(ours, theirs)
    );
    let mut runs = 0;
    let mut lossy = Vec::new();
    for r in rows
        .iter()
        .filter(|r| r.get("label").and_then(Value::as_str) == Some(server))
        .filter(|r| r.get("mode").and_then(Value::as_str) != Some("idle"))
    {
        runs += 1;
        let dropped: u64 = r
            .get("subscribers_dropped")
            .and_then(Value::as_object)
            .map_or(0, |d| d.values().filter_map(Value::as_u64).sum());
        if num(r, "lost").unwrap_or(0.0) > 0.0 || dropped > 0 {
            lossy.push(case_key(r));
        }
    }
    let met = if lossy.is_empty() {
        "yes".to_string()
    } else {
        format!("no: {}", lossy.join("; "))
    };
    outln!(
        "| no loss: every delivery of every confirmed publication | {} of {runs} runs lossless | | | {met} |",
        runs - lossy.len()
    );
    outln!();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_round_trips_within_two_percent() {
        for v in [0u64, 1, 63, 64, 65, 1000, 123_456, 9_999_999, u64::MAX / 3] {
            let back = Histogram::value(Histogram::index(v));
            let err = (back as f64 - v as f64).abs() / (v as f64).max(1.0);
            assert!(err < 0.02, "{v} -> {back}");
        }
        let h = Histogram::new();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5).unwrap() as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.02, "{p50}");
        assert_eq!(h.quantile(1.0), Some(1_000_000));
    }

    #[test]
    fn payload_has_exact_size_and_parses() {
        let mut s = String::new();
        write_payload(&mut s, 123_456_789, 42, 64);
        assert_eq!(s.len(), 64);
        assert_eq!(parse_stamp(s.as_bytes()), Some((123_456_789, 42)));
        let frame =
            format!("{{\"type\":\"message\",\"channel\":\"a\",\"offset\":3,\"data\":\"{s}\"}}");
        assert_eq!(sb_stamp(frame.as_bytes()), Some((123_456_789, 42)));
        assert_eq!(sb_type(&frame), "message");
    }

    /// Server frames as actix sends them: unmasked, 7-bit and 16-bit lengths, a ping, a
    /// fragmented message and a close, fed in small pieces.
    #[test]
    fn raw_reader_parses_split_frames() {
        fn server_frame(first: u8, payload: &[u8]) -> Vec<u8> {
            let mut out = vec![first];
            if payload.len() < 126 {
                out.push(payload.len() as u8);
            } else {
                out.push(126);
                out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            }
            out.extend_from_slice(payload);
            out
        }
        let big = vec![b'x'; 300];
        let mut wire = Vec::new();
        wire.extend(server_frame(0x81, b"hello"));
        wire.extend(server_frame(0x82, &big));
        wire.extend(server_frame(0x89, b"p"));
        wire.extend(server_frame(0x01, b"ab"));
        wire.extend(server_frame(0x80, b"cd"));
        wire.extend(server_frame(0x88, b"\x0f\xa1bye"));
        wire.extend(server_frame(0x81, b"after close"));
        let mut r = RawReader::new();
        let mut seen = Vec::new();
        for chunk in wire.chunks(7) {
            r.buf[r.end..r.end + chunk.len()].copy_from_slice(chunk);
            r.end += chunk.len();
            r.parse(|ev| {
                let (label, go_on) = match ev {
                    RawEvent::Text(t) => (format!("text {}", String::from_utf8_lossy(t)), true),
                    RawEvent::Binary(b) => (format!("binary {}", b.len()), true),
                    RawEvent::Ping(p) => (format!("ping {}", String::from_utf8_lossy(p)), true),
                    RawEvent::Close(why) => (why, false),
                };
                seen.push(label);
                go_on
            })
            .unwrap();
            if seen.last().is_some_and(|l| l.starts_with("close")) {
                break;
            }
        }
        assert_eq!(
            seen,
            [
                "text hello",
                "binary 300",
                "ping p",
                "text abcd",
                "close 4001 bye"
            ]
        );
        let masked = client_frame(0x1, b"hi");
        assert_eq!(masked[1], 0x80 | 2);
        assert_eq!(masked[6] ^ masked[2], b'h');
    }

    #[test]
    fn nats_parser_handles_split_frames() {
        let mut p = NatsParser::default();
        let mut msgs = Vec::new();
        let mut pings = 0;
        let stream = b"INFO {}\r\nMSG a.b 1 5\r\nhello\r\nPING\r\nMSG a 1 2\r\nhi\r\n";
        for chunk in stream.chunks(3) {
            p.feed(chunk, |ev| match ev {
                NatsEvent::Msg(m) => msgs.push(m.to_vec()),
                NatsEvent::Ping => pings += 1,
                _ => {}
            })
            .unwrap();
        }
        assert_eq!(msgs, vec![b"hello".to_vec(), b"hi".to_vec()]);
        assert_eq!(pings, 1);
    }

    #[test]
    fn only_loopback_targets() {
        assert!(resolve("ws://127.0.0.1:9/ws").is_ok());
        assert!(resolve("ws://127.3.2.1:9/ws").is_ok());
        assert!(resolve("ws://[::1]:9/").is_ok());
        assert!(resolve("ws://10.0.0.1:9/ws").is_err());
        assert!(resolve("ws://example.com:80/ws").is_err());
        assert!(resolve("wss://127.0.0.1:9/ws").is_err());
        assert!(resolve("ws://127.0.0.1/ws").is_err());
    }
}
