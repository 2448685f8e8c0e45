//! The client commands of the real `switchboard` binary (`sub`, `pub`, `token`), run as
//! child processes against real nodes (the binary too, on port 0; two of them on a real
//! `redis-server` for the restart), their stdout checked line by line and their exit codes
//! and stderr as a person would see them. Every wait is on a line or an exit, with a
//! deadline ([`WAIT`]).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{spawn_app, token, unique_prefix, App, Redis, WAIT};
use serde_json::{json, Value};

const KEY: &str = "cli-key";
const SECRET: &str = "cli-secret";

/// A node with an API key, a secret, and a namespace `priv` that needs a token.
fn node() -> App {
    spawn_app(&[
        ("api.keys", KEY),
        ("auth.hmac_secret", SECRET),
        ("namespaces.priv.anonymous", "false"),
        ("limits.client_publish_rate", "100000"),
    ])
}

/// The client command's environment: nothing but `vars`, in an empty directory (so no
/// config/default.toml).
fn command(args: &[&str], vars: &[(&str, &str)]) -> (Command, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    cmd.args(args)
        .current_dir(dir.path())
        .env_clear()
        .envs(vars.iter().copied());
    (cmd, dir)
}

/// Runs a client command to its end, with `stdin`; returns exit code, stdout, stderr.
fn run(args: &[&str], vars: &[(&str, &str)], stdin: Option<&str>) -> (i32, String, String) {
    let (mut cmd, _dir) = command(args, vars);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn switchboard");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(input);
    let deadline = Instant::now() + WAIT;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("switchboard {args:?} did not exit within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A client command left running (`sub`): its stdout and stderr as lines that arrive.
struct Running {
    child: Child,
    out: Receiver<String>,
    err: Receiver<String>,
    err_log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let (mut cmd, dir) = command(args, &[]);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn switchboard");
        let lines = |stream: Box<dyn std::io::Read + Send>,
                     log: Option<Arc<Mutex<Vec<String>>>>| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Some(log) = &log {
                        log.lock().unwrap().push(line.clone());
                    }
                    let _ = tx.send(line);
                }
            });
            rx
        };
        let err_log = Arc::new(Mutex::new(Vec::new()));
        let out = lines(Box::new(child.stdout.take().expect("stdout")), None);
        let err = lines(
            Box::new(child.stderr.take().expect("stderr")),
            Some(err_log.clone()),
        );
        Running {
            child,
            out,
            err,
            err_log,
            _dir: dir,
        }
    }

    fn stderr(&self) -> String {
        self.err_log.lock().unwrap().join("\n")
    }

    /// The next line on stdout.
    fn line(&self) -> String {
        match self.out.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(e) => panic!("no line on stdout ({e:?}); stderr:\n{}", self.stderr()),
        }
    }

    /// The next `n` lines on stdout, parsed.
    fn messages(&self, n: usize) -> Vec<Value> {
        (0..n)
            .map(|_| {
                let line = self.line();
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
            })
            .collect()
    }

    /// Waits for a line on stderr containing `needle`, and returns it.
    fn stderr_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.err.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    panic!("no {needle:?} on stderr:\n{}", self.stderr())
                }
            }
        }
    }

    /// Waits for the process to exit; its code.
    fn exit(&mut self) -> i32 {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "did not exit; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Ctrl-C.
    fn interrupt(&self) {
        let ok = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Checks a `sub` line: the `message` frame, fields in the server's order.
fn assert_message(line: &Value, channel: &str, offset: u64, data: &Value) {
    assert_eq!(line["type"], "message", "{line}");
    assert_eq!(line["channel"], channel, "{line}");
    assert_eq!(line["offset"], offset, "{line}");
    assert_eq!(&line["data"], data, "{line}");
}

/// `pub`'s output: one `{"offset","epoch"}` per line.
fn published(stdout: &str) -> Vec<(u64, String)> {
    stdout
        .lines()
        .map(|l| {
            assert!(l.starts_with("{\"offset\":"), "{l}");
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["offset"].as_u64().unwrap(),
                v["epoch"].as_str().unwrap().into(),
            )
        })
        .collect()
}

#[tokio::test]
async fn pub_then_sub_line_by_line_and_since_recovers() {
    let app = node();
    let url = app.ws_url();
    let sub = Running::start(&["sub", "--url", &url, "chat", "chat"]);
    sub.stderr_line("subscribed to chat at 0:");

    // DATA, over WebSocket and the HTTP API; then JSON lines on stdin.
    let (code, out, err) = run(&["pub", "--url", &url, "chat", r#"{"n":1}"#], &[], None);
    assert_eq!(code, 0, "{err}");
    let first = published(&out);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].0, 1);
    let epoch = first[0].1.clone();
    let (code, out, err) = run(
        &["pub", "--url", &url, "--api-key", KEY, "chat", "2.50"],
        &[],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(published(&out), vec![(2, epoch.clone())]);
    let lines = "\"three\"\n\n[4]\n  null  \n";
    let (code, out, err) = run(&["pub", "--url", &url, "chat", "-"], &[], Some(lines));
    assert_eq!(code, 0, "{err}");
    let offsets: Vec<u64> = published(&out).into_iter().map(|(o, _)| o).collect();
    assert_eq!(offsets, vec![3, 4, 5]);

    let expected = [
        json!({"n":1}),
        json!(2.50),
        json!("three"),
        json!([4]),
        Value::Null,
    ];
    let raw: Vec<String> = (0..5).map(|_| sub.line()).collect();
    assert!(
        raw[0].starts_with(
            r#"{"type":"message","channel":"chat","offset":1,"data":{"n":1},"info":{"client":"#
        ),
        "{}",
        raw[0]
    );
    // Printed as published: 2.50, not 2.5.
    assert!(raw[1].ends_with(r#""offset":2,"data":2.50}"#), "{}", raw[1]);
    for (i, (line, data)) in raw.iter().zip(&expected).enumerate() {
        let line: Value = serde_json::from_str(line).unwrap();
        assert_message(&line, "chat", i as u64 + 1, data);
    }

    // A second subscriber from offset 2 gets 3, 4, 5 recovered, then a live one.
    let since = format!("2:{epoch}");
    let late = Running::start(&["sub", "--url", &url, "--since", &since, "chat"]);
    late.stderr_line("subscribed to chat at 5:");
    for (i, line) in late.messages(3).iter().enumerate() {
        assert_message(line, "chat", i as u64 + 3, &expected[i + 2]);
    }
    let (code, _, err) = run(&["pub", "--url", &url, "chat", "6"], &[], None);
    assert_eq!(code, 0, "{err}");
    assert_message(&late.messages(1)[0], "chat", 6, &json!(6));
    assert_message(&sub.messages(1)[0], "chat", 6, &json!(6));

    // An epoch that is not the channel's: said on stderr, and live messages go on.
    let stale = Running::start(&["sub", "--url", &url, "--since", "1:nope", "chat"]);
    stale.stderr_line("chat: could not recover from 1:nope");
    stale.stderr_line("subscribed to chat at 6:");

    // Ctrl-C: exit 0.
    for mut s in [sub, late, stale] {
        s.interrupt();
        assert_eq!(s.exit(), 0, "{}", s.stderr());
    }
}

#[tokio::test]
async fn pub_refusals_and_bad_input() {
    let app = spawn_app(&[("api.keys", KEY), ("namespaces.ro.allow_publish", "false")]);
    let url = app.ws_url();
    // The server refuses: its code on stderr, exit 1.
    let (code, out, err) = run(&["pub", "--url", &url, "ro:x", "1"], &[], None);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(err.contains("forbidden"), "{err}");
    let (code, _, err) = run(
        &["pub", "--url", &url, "--api-key", "wrong", "chat", "1"],
        &[],
        None,
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("HTTP 401 unauthorized"), "{err}");
    // stdin stops at the first refusal, after printing what came before it.
    let (code, out, err) = run(
        &["pub", "--url", &url, "chat", "-"],
        &[],
        Some("1\n2\nnot json\n4\n"),
    );
    assert_eq!(code, 2, "{err}");
    assert_eq!(published(&out).len(), 2, "{out}");
    assert!(err.contains("line 3 of stdin is not JSON"), "{err}");

    // Bad input is refused before connecting: nothing listens on this URL.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("ws://{}/ws", l.local_addr().unwrap())
    };
    let (code, _, err) = run(&["pub", "--url", &dead, "chat", "hello"], &[], None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("DATA is not JSON"), "{err}");
    let (code, _, err) = run(&["sub", "--url", &dead, "--since", "5", "chat"], &[], None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("OFFSET:EPOCH"), "{err}");
    let (code, _, err) = run(&["sub", "--url", "http://h/ws", "chat"], &[], None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("ws://"), "{err}");
    let (code, _, err) = run(&["pub", "--url", &dead, "bad channel", "1"], &[], None);
    assert_eq!(code, 2, "{err}");
    // A server that is not there: pub does not retry.
    let (code, _, err) = run(&["pub", "--url", &dead, "chat", "1"], &[], None);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot connect"), "{err}");
}

#[tokio::test]
async fn token_round_trip_and_terminal_close() {
    let app = node();
    let url = app.ws_url();
    let (code, minted, err) = run(
        &[
            "token",
            "--secret",
            SECRET,
            "--sub",
            "alice",
            "--channels",
            "priv:*,news",
            "--ttl",
            "10m",
        ],
        &[],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let minted = minted.trim().to_string();

    // `--check` with the server's configuration.
    let secret = [("SWITCHBOARD__AUTH__HMAC_SECRET", SECRET)];
    let (code, out, err) = run(&["token", "--check", &minted], &secret, None);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("ok: sub=alice, expires ")
            && out.contains("channels priv:*,news, publish (none)"),
        "{out}"
    );
    let expired = token(SECRET, json!({"sub":"alice","exp": common::now() - 60}));
    let (code, _, err) = run(&["token", "--check", &expired], &secret, None);
    assert_eq!(code, 1);
    assert!(err.contains("ExpiredSignature"), "{err}");
    let wrong = [("SWITCHBOARD__AUTH__HMAC_SECRET", "another")];
    let (code, _, err) = run(&["token", "--check", &minted], &wrong, None);
    assert_eq!(code, 1);
    assert!(err.contains("InvalidSignature"), "{err}");
    let (code, _, err) = run(&["token", "--check", &minted], &[], None);
    assert_eq!(code, 1);
    assert!(err.contains("no key is configured"), "{err}");
    // Minting with the configuration's secret; and a bad pattern.
    let (code, from_config, err) = run(&["token", "--sub", "bob"], &secret, None);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = run(&["token", "--check", from_config.trim()], &secret, None);
    assert_eq!(code, 0);
    assert!(out.contains("sub=bob"), "{out}");
    let (code, _, err) = run(
        &["token", "--secret", "s", "--sub", "x", "--channels", "a b"],
        &[],
        None,
    );
    assert_eq!(code, 2, "{err}");

    // The server accepts the minted token: sub on a namespace that needs one.
    let (code, _, err) = run(&["sub", "--url", &url, "priv:room"], &[], None);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot subscribe to priv:room: forbidden"),
        "{err}"
    );
    let (code, _, err) = run(
        &["sub", "--url", &url, "--token", &expired, "priv:room"],
        &[],
        None,
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("HTTP 401 unauthorized: invalid token: ExpiredSignature"),
        "{err}"
    );
    let mut sub = Running::start(&["sub", "--url", &url, "--token", &minted, "priv:room"]);
    sub.stderr_line("subscribed to priv:room at 0:");
    let (status, _) = app
        .api(
            "POST",
            "/api/publish",
            KEY,
            Some(json!({"channel":"priv:room","data":"hi"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_message(&sub.messages(1)[0], "priv:room", 1, &json!("hi"));

    // A token that expires under a connection: 4002, and sub cannot refresh it.
    let (code, short, err) = run(
        &[
            "token",
            "--secret",
            SECRET,
            "--sub",
            "carol",
            "--channels",
            "priv:*",
            "--ttl",
            "2s",
        ],
        &[],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let mut expiring =
        Running::start(&["sub", "--url", &url, "--token", short.trim(), "priv:room"]);
    expiring.stderr_line("subscribed to priv:room at 1:");
    assert_eq!(expiring.exit(), 1);
    let err = expiring.stderr();
    assert!(
        err.contains("4002 token_expired") && err.contains("cannot refresh"),
        "{err}"
    );

    // An operator disconnects alice: 4003, terminal.
    let (status, body) = app
        .api(
            "POST",
            "/api/disconnect",
            KEY,
            Some(json!({"user":"alice"})),
        )
        .await;
    assert_eq!((status, &body), (200, &json!({"disconnected": 1})));
    assert_eq!(sub.exit(), 1);
    let err = sub.stderr();
    assert!(err.contains("4003 disconnected"), "{err}");
}

#[tokio::test]
async fn sub_survives_a_node_restart_without_a_gap_or_a_duplicate() {
    let mut redis = Redis::start();
    let prefix = unique_prefix();
    let start = |name: &str, bind: &str| {
        spawn_app(&[
            ("engine.kind", "redis"),
            ("engine.redis_url", &redis.url()),
            ("engine.prefix", &prefix),
            ("server.node_id", name),
            ("server.bind", bind),
            ("api.keys", KEY),
            ("channels.history_size", "1000"),
        ])
    };
    let mut a = start("a", "127.0.0.1:0");
    let b = start("b", "127.0.0.1:0");
    a.wait_ready(200).await;
    b.wait_ready(200).await;
    let publish = |n: u64| {
        let b = &b;
        async move {
            let body = json!({"channel": "feed", "data": {"n": n}});
            let (status, answer) = b.api("POST", "/api/publish", KEY, Some(body)).await;
            assert_eq!(
                (status, answer["offset"].as_u64()),
                (200, Some(n)),
                "{answer}"
            );
        }
    };
    let url = a.ws_url();
    let sub = Running::start(&["sub", "--url", &url, "feed"]);
    sub.stderr_line("subscribed to feed at 0:");
    let mut seen = Vec::new();
    for n in 1..=10 {
        publish(n).await;
    }
    seen.extend(sub.messages(10));

    // SIGKILL node A: sub loses its connection and retries while A is away.
    let addr = a.addr;
    a.signal("KILL");
    a.wait_exit(WAIT).await;
    sub.stderr_line("reconnecting in");
    for n in 11..=20 {
        publish(n).await;
    }
    let a = start("a", &addr.to_string());
    a.wait_ready(200).await;
    sub.stderr_line("(10 recovered)");
    for n in 21..=30 {
        publish(n).await;
    }
    seen.extend(sub.messages(20));
    for (i, line) in seen.iter().enumerate() {
        let n = i as u64 + 1;
        assert_message(line, "feed", n, &json!({"n": n}));
    }
    // Nothing more: one more publication is the next line.
    publish(31).await;
    assert_message(&sub.messages(1)[0], "feed", 31, &json!({"n": 31}));

    // Redis comes back empty: a reset on stderr, and offset 1 of the new epoch is printed
    // (not taken for an old one).
    redis.restart();
    a.wait_ready(200).await;
    b.wait_ready(200).await;
    sub.stderr_line("feed: reset to epoch");
    let body = json!({"channel": "feed", "data": "new"});
    let (status, answer) = b.api("POST", "/api/publish", KEY, Some(body)).await;
    assert_eq!(
        (status, answer["offset"].as_u64()),
        (200, Some(1)),
        "{answer}"
    );
    assert_message(&sub.messages(1)[0], "feed", 1, &json!("new"));
}

#[tokio::test]
async fn sub_drops_a_dead_link_and_comes_back() {
    let app = spawn_app(&[("heartbeat.interval", "100ms"), ("api.keys", KEY)]);
    let url = app.ws_url();
    let sub = Running::start(&["sub", "--url", &url, "chat"]);
    sub.stderr_line("subscribed to chat at 0:");
    // The node stops answering, its connections open: no Ping, no pong.
    app.signal("STOP");
    sub.stderr_line("no answer to a ping: the link is dead; reconnecting in");
    app.signal("CONT");
    sub.stderr_line("subscribed to chat at 0:");
    let (status, _) = app
        .api(
            "POST",
            "/api/publish",
            KEY,
            Some(json!({"channel":"chat","data":1})),
        )
        .await;
    assert_eq!(status, 200);
    assert_message(&sub.messages(1)[0], "chat", 1, &json!(1));
}

#[tokio::test]
async fn sub_retries_a_full_node_until_it_has_room() {
    let app = spawn_app(&[("limits.max_connections", "1")]);
    let other = app.client().await;
    let url = app.ws_url();
    let sub = Running::start(&["sub", "--url", &url, "chat"]);
    let refused = sub.stderr_line("reconnecting in");
    assert!(
        refused.contains("HTTP 503 unavailable: limits.max_connections reached"),
        "{refused}"
    );
    drop(other);
    sub.stderr_line("subscribed to chat at 0:");
}

/// A listener that answers every connection with `answer`, after reading the request.
fn garbage_server(answer: &'static [u8]) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut stream, &mut buf);
            let _ = stream.write_all(answer);
        }
    });
    url
}

#[tokio::test]
async fn a_server_that_answers_garbage_is_an_error_not_a_panic() {
    let not_http = garbage_server(b"SSH-2.0-OpenSSH_9.6\r\n\r\n");
    for args in [
        vec!["sub", "--url", &not_http, "chat"],
        vec!["pub", "--url", &not_http, "chat", "1"],
    ] {
        let (code, _, err) = run(&args, &[], None);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains("not a switchboard server"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }

    // A WebSocket server whose first frame is not JSON, on a thread of its own (the test
    // waits on the child with blocking calls).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        use futures_util::{SinkExt, StreamExt};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((stream, _)) = listener.accept().await {
                use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
                // The callback's type is tungstenite's.
                #[allow(clippy::result_large_err)]
                let speak_v1 = |_: &Request, mut response: Response| {
                    let v1 = "switchboard.v1.json".parse().unwrap();
                    response.headers_mut().insert("Sec-WebSocket-Protocol", v1);
                    Ok(response)
                };
                if let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, speak_v1).await {
                    let text = tokio_tungstenite::tungstenite::Message::text("<html>");
                    let _ = ws.send(text).await;
                    let _ = ws.next().await;
                }
            }
        });
    });
    let mut sub = Running::start(&["sub", "--url", &url, "chat"]);
    assert_eq!(sub.exit(), 1);
    let err = sub.stderr();
    assert!(
        err.contains("not a switchboard server") && err.contains("<html>"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
