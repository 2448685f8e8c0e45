//! The client side of the `switchboard` binary: `sub` (print a channel's messages, as one
//! JSON line each, reconnecting and recovering), `pub` (publish over WebSocket or the HTTP
//! API) and `token` (mint a development token, or check one with the server's own
//! verifier). `main.rs` parses the flags into [`Command`] and calls [`run`]; nothing here is
//! used by the server, and only `token` reads the configuration ([`crate::config`], for
//! [`crate::auth::Verifier`]).
//!
//! - [`endpoint`]: the `--url` (and the HTTP API address derived from it), `--since`.
//! - [`conn`]: one WebSocket connection (tokio-tungstenite): the handshake, frames in and
//!   out, what went wrong and whether it is worth retrying; and the one HTTP call (ureq).
//! - [`frames`]: the server's frames as the client reads them, and the lines it prints.
//! - [`sub`], [`publish`], [`token`]: the three commands.
//!
//! Exit codes, for all three: 0 done (or `sub` interrupted by Ctrl-C), 1 the server refused
//! or failed, 2 bad input (flags, DATA, `--since`, configuration).

pub mod conn;
pub mod endpoint;
pub mod frames;
pub mod publish;
pub mod sub;
pub mod token;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

/// The client commands of the binary.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Subscribe to channels and print every message as one JSON line on stdout.
    Sub(sub::SubArgs),
    /// Publish JSON to a channel and print each `{offset, epoch}`.
    Pub(publish::PubArgs),
    /// Mint a development token (HS256), or check one as the server would.
    Token(token::TokenArgs),
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Command::Sub(_) => "sub",
            Command::Pub(_) => "pub",
            Command::Token(_) => "token",
        }
    }
}

/// Exit code when the server refused or failed (or could not be reached).
pub const EXIT_FAILED: u8 = 1;
/// Exit code for bad input: flags, DATA, `--since`, the configuration.
pub const EXIT_USAGE: u8 = 2;

/// Why a command stopped before it was done: the message (printed on stderr after the
/// command's name) and the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// [`EXIT_FAILED`] or [`EXIT_USAGE`].
    pub code: u8,
    /// What went wrong, in words for the person at the terminal.
    pub message: String,
}

impl Failure {
    /// The server refused, failed, or could not be reached (exit 1).
    pub fn failed(message: impl Into<String>) -> Failure {
        Failure {
            code: EXIT_FAILED,
            message: message.into(),
        }
    }

    /// Bad input (exit 2).
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }
}

/// Runs a client command to its end; `config` is `--config`, read only by `token` when it
/// needs the server's settings.
pub fn run(command: Command, config: Option<&Path>) -> ExitCode {
    let name = command.name();
    // The process-wide rustls provider, in case another crate's features ever bring a
    // second one into the build (rustls then refuses to choose).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = match command {
        Command::Token(args) => token::run(args, config),
        Command::Sub(args) => runtime().and_then(|rt| rt.block_on(sub::run(args))),
        Command::Pub(args) => runtime().and_then(|rt| rt.block_on(publish::run(args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("switchboard {name}: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// One thread is plenty for one connection (and ureq's calls go to the blocking pool).
fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::failed(format!("cannot start: {e}")))
}

/// Writes one line on stdout and flushes it, so that a pipe sees it at once. `Err` when
/// stdout is gone (the reader closed the pipe).
pub(crate) fn print_line(line: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}

/// A line for the person at the terminal, on stderr.
pub(crate) fn say(command: &str, line: &str) {
    eprintln!("switchboard {command}: {line}");
}
