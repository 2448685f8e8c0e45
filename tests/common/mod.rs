//! Test harness shared by every integration test file. It owns no server logic: it starts
//! real nodes ([`app`]: the `switchboard` binary, or an in-process `Application` when a test
//! needs several nodes in one process), a real `redis-server` per test ([`redis`]) or a
//! real 6-node Redis Cluster ([`redis_cluster`]), and real WebSocket and HTTP clients
//! ([`client`]). Tests observe the node the way its users do: frames, HTTP statuses,
//! `/metrics`, exit codes; and every wait here is on an event with a deadline ([`WAIT`]),
//! never a fixed sleep.
#![allow(dead_code)]

pub mod app;
pub mod client;
pub mod conformance;
pub mod engine;
pub mod raw;
pub mod redis;
pub mod redis_cluster;

use std::time::{Duration, Instant};

use serde_json::Value;

// Each test file uses its own part of the harness.
#[allow(unused_imports)]
pub use app::{spawn_app, spawn_app_in_process, try_spawn_app, App};
#[allow(unused_imports)]
pub use client::{http, Client, Event, Ws};
#[allow(unused_imports)]
pub use redis::{unique_prefix, Redis};
#[allow(unused_imports)]
pub use redis_cluster::RedisCluster;

/// How long any single wait may take before the test fails (generous for a busy machine).
pub const WAIT: Duration = Duration::from_secs(20);

/// Polls `f` every 20 ms until it returns `Some`, failing after [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls a condition that needs no I/O every 20 ms until it holds, failing after [`WAIT`].
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    eventually(what, || std::future::ready(cond().then_some(()))).await
}

/// A signed HS256 token.
pub fn token(secret: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode token")
}

/// Unix seconds now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A Python interpreter with the `websockets` package: `TEST_PYTHON`, the venv
/// that scripts/test.sh makes (.tmp/test-venv), or `python3`.
pub fn python() -> String {
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/.tmp/test-venv/bin/python");
    let candidates = [
        std::env::var("TEST_PYTHON").ok(),
        Some(venv.to_string()),
        Some("python3".to_string()),
    ];
    for p in candidates.into_iter().flatten() {
        let ok = std::process::Command::new(&p)
            .args(["-c", "import websockets.asyncio.client"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return p;
        }
    }
    panic!(
        "no Python with the `websockets` package: run scripts/test.sh once (it installs one \
         into .tmp/test-venv), or set TEST_PYTHON"
    );
}

/// Runs `script` with [`python`] and `args`; panics unless it succeeds, and returns the JSON
/// line it prints.
pub async fn run_python(script: &str, args: &[&str]) -> serde_json::Value {
    let mut child = std::process::Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python runs");
    // Its output is a line or a traceback: it fits the pipes while it runs.
    let done = eventually("the Python client to finish", || {
        std::future::ready(child.try_wait().expect("wait"))
    })
    .await;
    let out = child.wait_with_output().expect("output");
    assert_eq!(out.status, done);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON line")
}
