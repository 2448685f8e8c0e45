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
//! - `flood`: M victim connections publish at a fixed rate on channels of their own while one
//!   connection pipelines N `history` (or `presence`) commands on distinct unknown channels;
//!   reports the victims' publish round trip, what the flood got back (by kind), and with
//!   `--redis` the keys the run left in the engine's Redis.
//! - `table`, `targets`, `compression`, `problems`: turn the JSON lines of earlier runs into
//!   Markdown.
//!
//! `--compress` offers permessage-deflate (RFC 7692) on the subscribers' and idle
//! connections and inflates what comes compressed; `--payload json` publishes realistic JSON
//! records; `--batch` asks Switchboard for several frames per message (`?batch=true`).
//! - `free-port`: prints a free TCP port on 127.0.0.1.
//!
//! Every run is bounded in time and in count, and only loopback targets (127.0.0.0/8, ::1)
//! are accepted. Each run prints one human line and one JSON line on stdout.
//!
//! Layout: `cli` (flags and their bounds) → `load` (fan-out and latency: `subscriber`,
//! `publisher`), `flood` (`victim`, `flooder`) and `idle` → `setup` (open and subscribe one
//! connection) → `net` (loopback targets, the WebSocket handshake) and `wire` (payload stamps,
//! the Switchboard and NATS protocols, the raw frame reader). `histogram` and `os` (/proc,
//! rlimits, CPU time) measure; `report` writes the JSON record's units and turns records into
//! tables.
//! `scripts/bench.sh` runs the matrix; `scripts/bench-flood.sh` the flood cases.

// The fan-out run's JSON record (`load`) has more fields than `json!`'s default depth allows.
#![recursion_limit = "256"]

use std::process::ExitCode;

use clap::Parser;

/// `println!` that ignores a closed stdout (`switchboard-bench ... | head -1`).
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

mod cli;
mod flood;
mod histogram;
mod idle;
mod load;
mod net;
mod os;
mod report;
mod setup;
mod wire;

use cli::{Cli, Cmd};
use flood::flood;
use idle::idle;
use load::load;
use report::{compression, problems, table, targets};

/// One boxed error for the whole tool: every failure ends the run with its message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Res<T> = Result<T, BoxError>;

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
    if let Cmd::Compression {
        files,
        reference,
        server,
    } = &cli.cmd
    {
        return match compression(files, reference, server) {
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
            Cmd::Flood(a) => flood(a).await,
            Cmd::Table { .. }
            | Cmd::Targets { .. }
            | Cmd::Compression { .. }
            | Cmd::Problems { .. }
            | Cmd::FreePort => {
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
