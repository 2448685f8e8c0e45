//! Starting a node for a test, one way for every test file: [`spawn_app`] runs the real
//! `switchboard` binary on port 0 (what most tests want: signals, exit codes, memory),
//! [`spawn_app_in_process`] builds an `Application` inside the test (several nodes in one
//! process, which is what "nothing global" promises). Both take the same overrides, written as
//! configuration keys (`("limits.max_errors", "3")`) and given to the node the way an
//! operator would, as `SWITCHBOARD__LIMITS__MAX_ERRORS`, so both go through the real
//! configuration loader. Both give back an [`App`] with the same clients.
//!
//! The binary's address is learnt from its `listening on <addr>` log line, which the
//! protocol document promises; no other log line is waited on. The log is kept only to
//! explain a failure (and for the start-up errors a refused configuration prints).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::client::{http, Client};
use super::WAIT;

/// What every test node gets unless a test overrides it: port 0, and few threads (the
/// tests run side by side on a small machine).
const BASE: &[(&str, &str)] = &[
    ("server.bind", "127.0.0.1:0"),
    ("server.workers", "2"),
    ("server.broker_shards", "2"),
];

/// `limits.max_errors` → `SWITCHBOARD__LIMITS__MAX_ERRORS`.
fn env_name(key: &str) -> String {
    format!("SWITCHBOARD__{}", key.replace('.', "__").to_uppercase())
}

/// The environment a node gets: [`BASE`], then `overrides`.
fn environment(overrides: &[(&str, &str)]) -> Vec<(String, String)> {
    BASE.iter()
        .chain(overrides)
        .map(|(k, v)| (env_name(k), v.to_string()))
        .collect()
}

/// A node under test; stopped on drop (the process is killed, an in-process node shut down).
pub struct App {
    /// The address it bound.
    pub addr: SocketAddr,
    run: Run,
}

enum Run {
    Process {
        child: Child,
        log: Arc<Mutex<Vec<String>>>,
        _dir: tempfile::TempDir,
    },
    InProcess(switchboard::startup::Shutdown),
}

/// A node that did not come up: its exit code (`None`: still running at the deadline) and
/// its log.
pub type StartFailure = (Option<i32>, String);

/// Starts the binary with `overrides` (configuration keys); panics if it does not come up.
pub fn spawn_app(overrides: &[(&str, &str)]) -> App {
    try_spawn_app(&[], overrides).unwrap_or_else(|(code, log)| {
        panic!("switchboard did not start (exit {code:?}) with {overrides:?}:\n{log}")
    })
}

/// Starts the binary with command-line `args` and `overrides`; `Err` when it exits or
/// does not report its address within [`WAIT`].
pub fn try_spawn_app(args: &[&str], overrides: &[(&str, &str)]) -> Result<App, StartFailure> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    cmd.args(args)
        // An empty working directory: no config/default.toml but the one a test passes.
        .current_dir(dir.path())
        .env_clear()
        .env("RUST_LOG", "info,actix_server=warn")
        .envs(environment(overrides))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn switchboard");
    let stderr = child.stderr.take().expect("stderr");
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let reader: JoinHandle<()> = {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let addr = line
                    .split("listening on ")
                    .nth(1)
                    .map(|rest| rest.split_whitespace().next().unwrap_or("").to_string());
                log.lock().unwrap().push(line);
                if let Some(addr) = addr {
                    let _ = tx.send(addr);
                }
            }
        })
    };
    let text = |log: &Arc<Mutex<Vec<String>>>| log.lock().unwrap().join("\n");
    let deadline = Instant::now() + WAIT;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(addr) => {
                let addr = addr.parse().expect("bound address");
                return Ok(App {
                    addr,
                    run: Run::Process {
                        child,
                        log,
                        _dir: dir,
                    },
                });
            }
            // The reader ended: stderr is closed, so the process is exiting.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().expect("wait for switchboard");
                let _ = reader.join();
                return Err((status.code(), text(&log)));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = reader.join();
            return Err((None, text(&log)));
        }
    }
}

/// Builds and runs a node inside this test process (the test must run in an actix system:
/// `#[actix_web::test]`), through the same configuration loader as the binary.
pub async fn spawn_app_in_process(overrides: &[(&str, &str)]) -> App {
    let settings = switchboard::config::Settings::load_from(None, environment(overrides))
        .unwrap_or_else(|e| panic!("overrides {overrides:?}: {e}"));
    let app = switchboard::startup::Application::build(settings)
        .await
        .unwrap_or_else(|e| panic!("in-process node did not build: {e}"));
    let (addr, shutdown) = (app.addr(), app.shutdown_handle());
    actix_web::rt::spawn(app.run_until_stopped());
    App {
        addr,
        run: Run::InProcess(shutdown),
    }
}

impl App {
    /// The WebSocket endpoint.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    fn child(&mut self) -> &mut Child {
        match &mut self.run {
            Run::Process { child, .. } => child,
            Run::InProcess(_) => panic!("an in-process node has no process of its own"),
        }
    }

    /// The process id of the node.
    pub fn pid(&self) -> u32 {
        match &self.run {
            Run::Process { child, .. } => child.id(),
            Run::InProcess(_) => panic!("an in-process node has no process of its own"),
        }
    }

    /// The node's log so far: for failure messages and for what start-up prints, not for
    /// waiting on events.
    pub fn log(&self) -> String {
        match &self.run {
            Run::Process { log, .. } => log.lock().unwrap().join("\n"),
            Run::InProcess(_) => String::new(),
        }
    }

    /// Resident memory of the node's process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Sends a signal to the node's process.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit; returns its exit code.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child().try_wait() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "node did not exit within {within:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts a graceful shutdown of an in-process node (a process gets a signal instead).
    pub fn shutdown(&self) {
        match &self.run {
            Run::InProcess(shutdown) => shutdown.trigger(),
            Run::Process { .. } => panic!("signal a process node instead"),
        }
    }

    /// A plain HTTP/1.1 request; returns status and body.
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> (u16, String) {
        http(self.addr, method, path, headers, body).await
    }

    /// An API call with the key `key`.
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let auth = format!("apikey {key}");
        let body = body.map(|b| b.to_string());
        let (status, text) = self
            .http(method, path, &[("Authorization", &auth)], body.as_deref())
            .await;
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// `GET /readyz`'s status.
    pub async fn readyz(&self) -> u16 {
        self.http("GET", "/readyz", &[], None).await.0
    }

    /// Waits until `/readyz` answers `status`.
    pub async fn wait_ready(&self, status: u16) {
        super::eventually(&format!("/readyz {status} on {}", self.addr), || async {
            (self.readyz().await == status).then_some(())
        })
        .await
    }

    /// Every series of `/metrics` (`name` or `name{labels}`) with its value.
    pub async fn metrics(&self) -> HashMap<String, f64> {
        let (status, body) = self.http("GET", "/metrics", &[], None).await;
        assert_eq!(status, 200, "{body}");
        body.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_string(), value.parse().ok()?))
            })
            .collect()
    }

    /// One series of `/metrics`, e.g. `switchboard_disconnects_total{code="4000"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        let all = self.metrics().await;
        match all.get(series) {
            Some(v) => *v,
            None => panic!("no series {series} in /metrics: {all:?}"),
        }
    }

    /// Waits until the series `series` of `/metrics` has the value `value`.
    pub async fn wait_metric(&self, series: &str, value: f64) {
        super::eventually(&format!("{series} = {value}"), || async {
            (self.metric(series).await == value).then_some(())
        })
        .await
    }

    /// Connects a WebSocket client offering the subprotocol, and reads `welcome`.
    pub async fn client(&self) -> Client {
        Client::connect(
            &self.ws_url(),
            &[("Sec-WebSocket-Protocol", "switchboard.v1.json")],
        )
        .await
    }

    /// Connects with a token in the query string.
    pub async fn client_with_token(&self, token: &str) -> Client {
        Client::connect(&format!("{}?token={token}", self.ws_url()), &[]).await
    }
}

impl Drop for App {
    fn drop(&mut self) {
        match &mut self.run {
            Run::Process { child, .. } => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Run::InProcess(shutdown) => shutdown.trigger(),
        }
    }
}

/// Runs the binary once to completion (a subcommand such as `migrate`) with `overrides`.
pub fn run_command(args: &[&str], overrides: &[(&str, &str)]) -> std::process::Output {
    let vars = environment(overrides);
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).collect();
    run_with_env(args, &vars)
}

/// Runs the binary once to completion, in an empty directory, with exactly `vars` as its
/// environment (names as an operator types them) besides `RUST_LOG=info`.
pub fn run_with_env(args: &[&str], vars: &[(&str, &str)]) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(args)
        .current_dir(dir.path())
        .env_clear()
        .env("RUST_LOG", "info")
        .envs(vars.iter().copied())
        .output()
        .expect("run switchboard")
}
