//! The `switchboard` binary: parses flags, loads the configuration (exit code 2 when it is
//! bad), sets up logging, and runs one node until SIGTERM or SIGINT; a node that cannot
//! start exits with its cause's code (`StartupError::exit_code`). The client commands
//! (`sub`, `pub`, `token`) are handed to `switchboard::cli` before any configuration is
//! read. It also chooses the
//! allocator, jemalloc, with its settings and the per-thread housekeeping it hands the
//! node. Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use switchboard::cli;
use switchboard::config::{self, Settings};
use switchboard::startup::{wait_for_signal, Application, StartupError};

// jemalloc instead of glibc's malloc: per-flush buffers and per-publication frames made
// malloc/free (with glibc's fastbin consolidation) about 7% of the server's time; with
// jemalloc the many-channels benchmark went from 133 k to 156 k deliveries/s and 100
// subscribers from 4.36 M to 4.63 M (medians of four runs), idle memory unchanged.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// jemalloc's own settings, compiled in (jemalloc reads this symbol, a C string, at its first
// allocation). By default it purges freed pages only when the same arena allocates again, so
// a node left idle after a burst (200,000 subscriptions closed) kept 224 MiB of the 242 MiB
// it peaked at, from 8.5 MiB before. Background threads return freed pages to the kernel
// within about `dirty_decay_ms` whatever the node does next; `muzzy_decay_ms:0` returns them
// with MADV_DONTNEED rather than MADV_FREE, which the kernel would still count in RSS until
// it needs the memory. `_RJEM_MALLOC_CONF` (same syntax) is read after this and wins key by
// key (README, "Operations").
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &[u8; 61] = b"background_thread:true,dirty_decay_ms:10000,muzzy_decay_ms:0\0";

/// Empties the calling thread's jemalloc cache into its arena; the node runs it on each of
/// its threads every few seconds (`shrink::ThreadHook`). A thread's cache is emptied only
/// as that thread allocates, so after a burst an idle node kept its workers' caches, and
/// the half-empty pages under them: 11-12 MiB against 8 MiB before the burst with this,
/// 18-19 MiB without. Without a cache (`_RJEM_MALLOC_CONF=tcache:false`) jemalloc refuses
/// the call, and there is nothing to do.
fn flush_thread_cache() {
    // SAFETY: a NUL-terminated name, and no old or new value, as `thread.tcache.flush`
    // takes none.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            c"thread.tcache.flush".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
}

/// A realtime WebSocket pub/sub server.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// What to do; `serve` when left out.
    #[command(subcommand)]
    command: Option<Cmd>,
    /// TOML configuration file (default: config/default.toml when it exists).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Load and check the configuration, print it as TOML (which `--config` reads back),
    /// and exit.
    #[arg(long)]
    check_config: bool,
    /// With `--check-config`: print secrets (`auth.hmac_secret`, `api.keys`, the password of
    /// `engine.redis_url`) instead of leaving them out.
    #[arg(long, requires = "check_config")]
    show_secrets: bool,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Run the node (the default).
    Serve,
    /// Apply the Redis schema in migrations/ to `engine.redis_url` and exit.
    Migrate,
    #[command(flatten)]
    Client(cli::Command),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A client's stderr is for its own lines: the libraries' logs only when asked for.
    let level = match cli.command {
        Some(Cmd::Client(_)) => "warn",
        _ => "info",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    if let Some(Cmd::Client(command)) = cli.command {
        return cli::run(command, cli.config.as_deref());
    }
    // A `SWITCHBOARD_API_KEYS` (one underscore) would otherwise be ignored without a word.
    let names = std::env::vars_os().filter_map(|(name, _)| name.into_string().ok());
    for warning in config::unread_variables(names) {
        log::warn!("{warning}");
    }
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchboard: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        return match settings.to_toml(cli.show_secrets) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("switchboard: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Cmd::Migrate) = cli.command {
        let runtime = actix_web::rt::System::new();
        return match runtime.block_on(switchboard::engine::redis::migrate(&settings)) {
            Ok(version) => {
                log::info!("redis schema at version {version}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                let e = StartupError::from(e);
                eprintln!("switchboard: migrate failed: {e}");
                ExitCode::from(e.exit_code())
            }
        };
    }
    let system = actix_web::rt::System::new();
    let result = system.block_on(async move {
        let app = Application::build_with(settings, Some(flush_thread_cache)).await?;
        let shutdown = app.shutdown_handle();
        actix_web::rt::spawn(async move {
            wait_for_signal().await;
            shutdown.trigger();
        });
        app.run_until_stopped().await.map_err(StartupError::from)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
