//! Configuration mistakes, seen the way an operator sees them: the real binary, its exit code
//! (2 for a configuration error) and what it prints. Durations with a fraction, numbers out
//! of range from the environment, list keys given as arrays in the environment, origins that
//! no browser can send, `SWITCHBOARD_` variables that are not read, and `--check-config`'s
//! TOML, which `--config` reads back.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::app::{run_command, run_with_env as run_raw};
use common::{http, try_spawn_app, Client, WAIT};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `--check-config` refuses the configuration: exit code 2, and the message it printed.
fn refused(out: Output) -> String {
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    err
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path.to_str().expect("utf-8 path").to_string()
}

#[tokio::test]
async fn a_duration_may_have_a_fraction_but_not_a_sign() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "f.toml", "[heartbeat]\ninterval = 1.5\n");
    let app = try_spawn_app(&["--config", &file], &[]).expect("1.5 seconds is taken");
    assert_eq!(app.client().await.welcome["heartbeat_ms"], 1500);
    // The same as text, from the environment.
    let app = try_spawn_app(&[], &[("heartbeat.interval", "0.25")]).expect("starts");
    assert_eq!(app.client().await.welcome["heartbeat_ms"], 250);

    for (value, says) in [
        ("-1", "must not be negative; got -1"),
        ("nan", "expected a duration such as \"250ms\" or \"10s\", or a number of seconds; got NaN"),
        ("\"soon\"", "expected a duration such as \"250ms\" or \"10s\", or a number of seconds; got \"soon\""),
        ("true", "expected a duration such as \"250ms\" or \"10s\""),
    ] {
        let file = write(dir.path(), "bad.toml", &format!("[heartbeat]\ninterval = {value}\n"));
        let err = refused(run_raw(&["--check-config", "--config", &file], &[]));
        assert!(
            err.contains(&format!("key `heartbeat.interval` (in {file}): {says}")),
            "{value}: {err}"
        );
        assert!(!err.contains("untagged"), "{err}");
    }
    let err = refused(run_command(&["--check-config"], &[("auth.leeway", "-2s")]));
    assert!(
        err.contains("key `auth.leeway` (from SWITCHBOARD__AUTH__LEEWAY): must not be negative"),
        "{err}"
    );
}

#[test]
fn numbers_from_the_environment_are_refused_in_plain_words() {
    for key in [
        "server.workers",
        "server.broker_shards",
        "limits.max_message_size",
        "limits.max_subscriptions_per_connection",
        "limits.max_connections",
        "limits.max_pending_bytes",
        "limits.client_publish_rate",
        "limits.client_command_rate",
        "limits.max_errors",
        "channels.history_size",
        "namespaces.chat.history_size",
    ] {
        let var = switchboard::config::variable_for(key);
        let err = refused(run_command(&["--check-config"], &[(key, "-1")]));
        assert!(
            err.contains(&format!(
                "key `{key}` (from {var}): must not be negative; got -1"
            )),
            "{key}: {err}"
        );
    }
    let err = refused(run_command(
        &["--check-config"],
        &[("limits.max_errors", "5000000000")],
    ));
    assert!(
        err.contains("key `limits.max_errors` (from SWITCHBOARD__LIMITS__MAX_ERRORS): must be at most 4294967295; got 5000000000"),
        "{err}"
    );
    let err = refused(run_command(
        &["--check-config"],
        &[("limits.max_errors", "2.5")],
    ));
    assert!(err.contains("expected a whole number; got 2.5"), "{err}");
    let err = refused(run_command(
        &["--check-config"],
        &[("limits.max_errors", "many")],
    ));
    assert!(
        err.contains("expected a whole number; got \"many\""),
        "{err}"
    );
    // The file's integers go through the same reader.
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "f.toml", "[limits]\nmax_errors = -1\n");
    let err = refused(run_raw(&["--check-config", "--config", &file], &[]));
    assert!(
        err.contains(&format!(
            "key `limits.max_errors` (in {file}): must not be negative; got -1"
        )),
        "{err}"
    );
}

#[tokio::test]
async fn list_keys_take_an_array_from_the_environment() {
    let app = try_spawn_app(
        &[],
        &[(
            "server.allowed_origins",
            r#"["http://a.example", "http://b.example:8080"]"#,
        )],
    )
    .expect("starts");
    let b = Client::connect(&app.ws_url(), &[("Origin", "http://b.example:8080")]).await;
    assert_eq!(b.welcome["type"], "welcome");
    let (status, _) = http(
        app.addr,
        "GET",
        "/ws",
        &[("Origin", "http://c.example")],
        None,
    )
    .await;
    assert_eq!(status, 403);

    // An API key with a comma can only be given as an array.
    let app = try_spawn_app(&[], &[("api.keys", r#"["k,1", 'k2']"#)]).expect("starts");
    for key in ["k,1", "k2"] {
        let (status, body) = app.api("GET", "/api/channels", key, None).await;
        assert_eq!(status, 200, "{key}: {body}");
    }
    let (status, _) = app.api("GET", "/api/channels", "k", None).await;
    assert_eq!(status, 401);

    let err = refused(run_command(
        &["--check-config"],
        &[("server.allowed_origins", r#"["http://a", 3"#)],
    ));
    assert!(
        err.contains("key `server.allowed_origins` (from SWITCHBOARD__SERVER__ALLOWED_ORIGINS): expected a list of strings"),
        "{err}"
    );
}

#[test]
fn an_origin_no_browser_sends_is_refused() {
    for bad in [
        "http://a.example/",
        "a.example",
        "http://a.example/app",
        "[\"http://a\"",
    ] {
        let err = refused(run_command(
            &["--check-config"],
            &[("server.allowed_origins", &format!("*,{bad}"))],
        ));
        assert!(
            err.contains(&format!(
                "key `server.allowed_origins` (from SWITCHBOARD__SERVER__ALLOWED_ORIGINS): {bad:?} is not an origin"
            )),
            "{bad}: {err}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "f.toml",
        "[server]\nallowed_origins = [\"https://x/\"]\n",
    );
    let err = refused(run_raw(&["--check-config", "--config", &file], &[]));
    assert!(err.contains("\"https://x/\" is not an origin"), "{err}");
}

#[test]
fn unread_switchboard_variables_are_warned_about_at_start() {
    // Serving, not only checking: the warning comes before `listening on`.
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .current_dir(dir.path())
        .env_clear()
        .env("RUST_LOG", "info")
        .env("SWITCHBOARD__SERVER__BIND", "127.0.0.1:0")
        .env("SWITCHBOARD__SERVER__WORKERS", "1")
        .env("SWITCHBOARD_API_KEYS", "secret")
        // The project's own variables (scripts/cluster.sh, docker-compose.yml).
        .env("SWITCHBOARD_BIN", "/bin/true")
        .env("SWITCHBOARD_API_KEY", "dev-key")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let pipe = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let up = line.contains("listening on ");
            lines.push(line);
            if up {
                let _ = tx.send(lines.clone());
            }
        }
    });
    let lines = rx.recv_timeout(WAIT).expect("the node started");
    let _ = child.kill();
    let _ = child.wait();
    let warnings: Vec<&String> = lines.iter().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{lines:#?}");
    assert!(
        warnings[0].contains(
            "environment variable SWITCHBOARD_API_KEYS is not read: did you mean \
             SWITCHBOARD__API__KEYS (the key `api.keys`)?"
        ),
        "{lines:#?}"
    );

    let out = run_raw(
        &["--check-config"],
        &[
            ("SWITCHBOARD_LIMITS__MAX_ERRORS", "3"),
            ("switchboard__heartbeat__interval", "1s"),
            ("SWITCHBOARD_COLOUR", "blue"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(
        err.lines().filter(|l| l.contains("WARN")).count(),
        3,
        "{err}"
    );
    assert!(err.contains("SWITCHBOARD_LIMITS__MAX_ERRORS is not read: did you mean SWITCHBOARD__LIMITS__MAX_ERRORS"), "{err}");
    assert!(err.contains("switchboard__heartbeat__interval is not read: did you mean SWITCHBOARD__HEARTBEAT__INTERVAL"), "{err}");
    assert!(
        err.contains("SWITCHBOARD_COLOUR is not read: settings are SWITCHBOARD__SECTION__KEY"),
        "{err}"
    );
    // The values were not taken.
    assert!(
        stdout(&out).contains("max_errors = 10\n"),
        "{}",
        stdout(&out)
    );

    // A double-underscore variable naming no key stays an error, not a warning.
    let err = refused(run_raw(
        &["--check-config"],
        &[("SWITCHBOARD__API__KEY", "k")],
    ));
    assert!(
        err.contains("key `api.key` (from SWITCHBOARD__API__KEY) is unknown; expected `keys`"),
        "{err}"
    );
}

#[tokio::test]
async fn check_config_prints_toml_that_reads_back_with_secrets_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "in.toml",
        "[heartbeat]\ninterval = 1.5\n[namespaces.chat]\njoin_leave = true\nhistory_ttl = 90\n",
    );
    let vars = [
        ("SWITCHBOARD__SERVER__BIND", "127.0.0.1:0"),
        ("SWITCHBOARD__SERVER__WORKERS", "1"),
        ("SWITCHBOARD__API__KEYS", "key-one,key-two"),
        ("SWITCHBOARD__AUTH__HMAC_SECRET", "hmac-s3cret"),
        (
            "SWITCHBOARD__ENGINE__REDIS_URL",
            "redis://:redis-pw@127.0.0.1:1/0",
        ),
        (
            "SWITCHBOARD__SERVER__ALLOWED_ORIGINS",
            r#"["http://a", "http://b:81"]"#,
        ),
        ("SWITCHBOARD__CHANNELS__HISTORY_SIZE", "7"),
    ];
    let full = run_raw(
        &["--check-config", "--show-secrets", "--config", &file],
        &vars,
    );
    assert_eq!(full.status.code(), Some(0), "{}", stderr(&full));
    let printed = stdout(&full);
    for line in [
        "interval = \"1s 500ms\"",
        "allowed_origins = [\"http://a\", \"http://b:81\"]",
        "keys = [\"key-one\", \"key-two\"]",
        "hmac_secret = \"hmac-s3cret\"",
        "redis_url = \"redis://:redis-pw@127.0.0.1:1/0\"",
        "history_size = 7",
        "[namespaces.chat]",
        "history_ttl = \"1m 30s\"",
    ] {
        assert!(
            printed.lines().any(|l| l == line),
            "{line} not in\n{printed}"
        );
    }
    assert!(!printed.contains("Settings {"), "{printed}");

    // Read back through `--config` alone, it is the same settings.
    let back = write(dir.path(), "back.toml", &printed);
    let again = run_raw(
        &["--check-config", "--show-secrets", "--config", &back],
        &[],
    );
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(stdout(&again), printed);

    // By default secrets are left out, and the output still loads and serves.
    let hidden = run_raw(&["--check-config", "--config", &file], &vars);
    assert_eq!(hidden.status.code(), Some(0), "{}", stderr(&hidden));
    let hidden = stdout(&hidden);
    for secret in ["key-one", "key-two", "hmac-s3cret", "redis-pw"] {
        assert!(!hidden.contains(secret), "{secret} in\n{hidden}");
    }
    assert!(hidden.contains("--show-secrets"), "{hidden}");
    let redacted = write(dir.path(), "redacted.toml", &hidden);
    let app = try_spawn_app(&["--config", &redacted], &[]).expect("the redacted output serves");
    assert_eq!(app.client().await.welcome["heartbeat_ms"], 1500);
    // No key came back: the API refuses every call, rather than taking a placeholder.
    let (status, _) = app.api("GET", "/api/channels", "key-one", None).await;
    assert_eq!(status, 401);

    let err = refused(run_raw(&["--show-secrets"], &[]));
    assert!(err.contains("--check-config"), "{err}");
}
