//! The documentation, checked against the real binary: README.md's "A first session by hand"
//! (the browser snippet, run as written under Node, the websocat lines, the `curl` publish)
//! must print what README.md shows, and statements of README.md and docs/protocol.md that no
//! other test file covers are tested here, each next to the sentence it checks.
//!
//! The README's examples are found by the HTML comments that precede them, so rewording the
//! prose around them does not break this file; changing an example without its shown output
//! does. Shown output is compared as text, key order included, with only the random values
//! (`client`, `node`, `epoch`) replaced: each distinct value by a placeholder, so that "the
//! same id in two lines" is still checked.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;

use common::{http, spawn_app, WAIT};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

/// The address every README example uses; the checks rewrite it to the test node's.
const README_ADDR: &str = "127.0.0.1:8080";

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md")
}

/// The body of the first fenced code block after the line `marker` in `doc`.
fn block_after(doc: &str, marker: &str) -> String {
    let at = doc
        .find(marker)
        .unwrap_or_else(|| panic!("README.md has no line {marker:?}"));
    let rest = &doc[at..];
    let open = rest.find("\n```").expect("a fenced block after the marker") + 1;
    let body = &rest[open..];
    let body = &body[body.find('\n').expect("fence line") + 1..];
    let close = body.find("\n```").expect("the block's closing fence");
    body[..close].to_string()
}

/// Replaces the values of `"client"`, `"node"` and `"epoch"` by placeholders, numbered by
/// first appearance across `lines` (so equal values stay equal and different ones differ).
fn normalize(lines: &[String]) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    lines
        .iter()
        .map(|line| {
            let mut out = line.clone();
            for key in ["client", "node", "epoch"] {
                let pat = format!("\"{key}\":\"");
                let mut from = 0;
                while let Some(i) = out[from..].find(&pat) {
                    let start = from + i + pat.len();
                    let end = start + out[start..].find('"').expect("closing quote");
                    let value = out[start..end].to_string();
                    let n = match seen.iter().position(|v| *v == value) {
                        Some(n) => n,
                        None => {
                            seen.push(value);
                            seen.len() - 1
                        }
                    };
                    let holder = format!("<{key} {n}>");
                    out.replace_range(start..end, &holder);
                    from = start + holder.len();
                }
            }
            out
        })
        .collect()
}

fn is_message(line: &str) -> bool {
    line.starts_with(r#"{"type":"message""#)
}

/// Puts the `message` lines after the others, keeping each group's order: the order in
/// which the README's text says lines are promised (replies in command order; a live
/// message anywhere after its `subscribed`).
fn promised_order(lines: &[String]) -> Vec<String> {
    let (messages, others): (Vec<_>, Vec<_>) = lines.iter().cloned().partition(|l| is_message(l));
    others.into_iter().chain(messages).collect()
}

/// Compares what a session printed with what README.md shows: the same lines, up to the
/// random values and to where the `message` lines fall, which must be after `subscribed`.
fn assert_matches_shown(what: &str, got: &[String], shown: &[String]) {
    assert_eq!(
        normalize(&promised_order(got)),
        normalize(&promised_order(shown)),
        "{what}: README.md shows\n{}\nbut the server printed\n{}",
        shown.join("\n"),
        got.join("\n")
    );
    let subscribed = got
        .iter()
        .position(|l| l.starts_with(r#"{"type":"subscribed""#));
    let first_message = got.iter().position(|l| is_message(l));
    if let (Some(s), Some(m)) = (subscribed, first_message) {
        assert!(
            m > s,
            "{what}: a message before subscribed:\n{}",
            got.join("\n")
        );
    }
}

fn lines_of(block: &str) -> Vec<String> {
    block
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// A `node` that runs a script with a global `WebSocket` (Node 22 has it; Node 20 needs
/// `--experimental-websocket`), or `None` when there is no `node` at all.
fn node_command() -> Option<Command> {
    let probe = |flag: Option<&str>| {
        let mut c = Command::new("node");
        c.args(flag).args([
            "-e",
            "process.exit(typeof WebSocket === 'function' ? 0 : 3)",
        ]);
        c.stdout(Stdio::null()).stderr(Stdio::null()).status()
    };
    match probe(None) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("running node: {e}"),
        Ok(s) if s.success() => return Some(Command::new("node")),
        Ok(_) => {}
    }
    let flag = "--experimental-websocket";
    match probe(Some(flag)) {
        Ok(s) if s.success() => {
            let mut c = Command::new("node");
            c.arg(flag);
            Some(c)
        }
        _ => panic!(
            "node has no WebSocket, with or without {flag}: the README check needs \
             Node.js 20.10 or newer (`node --version`)"
        ),
    }
}

/// A running script whose stdout lines arrive on a channel; killed on drop.
struct Script {
    child: Child,
    lines: Receiver<String>,
}

impl Script {
    fn start(mut node: Command, path: &std::path::Path) -> Script {
        let mut child = node
            .arg(path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn node");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Script { child, lines }
    }

    /// The next `n` lines the script prints, each within [`WAIT`].
    fn take(&mut self, n: usize, so_far: &mut Vec<String>) {
        let deadline = Instant::now() + WAIT;
        while so_far.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => so_far.push(line),
                Err(RecvTimeoutError::Timeout) => {
                    panic!("the snippet printed only\n{}", so_far.join("\n"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().expect("wait for node");
                    panic!(
                        "node exited ({status}) after printing\n{}",
                        so_far.join("\n")
                    )
                }
            }
        }
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `-H '…'`, `-d '…'` and URL of a one-line `curl` command as README.md writes it.
fn parse_curl(line: &str) -> (Vec<(String, String)>, String, String) {
    let mut headers = Vec::new();
    let mut body = String::new();
    let mut url = String::new();
    let mut rest = line.strip_prefix("curl ").expect("a curl line").trim();
    while !rest.is_empty() {
        if let Some(r) = rest
            .strip_prefix("-H '")
            .or_else(|| rest.strip_prefix("-d '"))
        {
            let end = r.find('\'').expect("closing quote");
            let value = r[..end].to_string();
            if rest.starts_with("-H") {
                let (k, v) = value.split_once(": ").expect("a header");
                headers.push((k.to_string(), v.to_string()));
            } else {
                body = value;
            }
            rest = r[end + 1..].trim_start();
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            url = rest[..end].to_string();
            rest = rest[end..].trim_start();
        }
    }
    (headers, body, url)
}

/// README.md, "A first session by hand" and "Publishing from a backend": the browser
/// snippet pasted whole prints what the README shows; then, on a node with an API key, the
/// `curl` publish answers what the README shows and the snippet prints the line it shows.
#[tokio::test]
async fn readme_browser_snippet_and_curl_print_what_the_readme_shows() {
    let doc = readme();
    let snippet = block_after(&doc, "<!-- tests/docs.rs runs this snippet");
    let shown = lines_of(&block_after(&doc, "<!-- output of the snippet above -->"));
    let curl = block_after(&doc, "<!-- tests/docs.rs runs this call after the snippet");
    let shown_message = lines_of(&block_after(
        &doc,
        "<!-- the line the snippet prints for that call -->",
    ));
    let Some(node) = node_command() else {
        eprintln!(
            "\n!!!!!!!! SKIPPED: README.md's browser snippet is NOT checked: no `node` on PATH \
             (install Node.js 20.10 or newer) !!!!!!!!\n"
        );
        return;
    };

    // The README's own key, as its "Publishing from a backend" starts the server.
    let app = spawn_app(&[("api.keys", "secret")]);
    assert_eq!(
        snippet.matches(README_ADDR).count(),
        1,
        "the snippet names the server once:\n{snippet}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("snippet.js");
    let script = snippet.replace(README_ADDR, &app.addr.to_string());
    std::fs::write(&path, script).expect("write snippet");
    let mut run = Script::start(node, &path);
    let mut got = Vec::new();
    run.take(shown.len(), &mut got);
    assert_matches_shown("the browser snippet", &got, &shown);

    let mut lines = curl.lines();
    let (headers, body, url) = parse_curl(lines.next().expect("the curl line"));
    let shown_answer = lines
        .next()
        .and_then(|l| l.strip_prefix("# "))
        .expect("the answer, as a `# ` comment under the curl line")
        .to_string();
    let path = url
        .strip_prefix(&format!("http://{README_ADDR}"))
        .expect("a URL of the README's server");
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (status, answer) = http(app.addr, "POST", path, &headers, Some(&body)).await;
    assert_eq!(status, 200, "{answer}");
    // README.md shows the answer of a server started again (a new epoch), so the answer is
    // compared alone; its epoch must be the one the snippet's lines carry.
    assert_eq!(
        normalize(std::slice::from_ref(&answer)),
        normalize(&[shown_answer]),
        "the curl publish"
    );
    let epoch = |line: &str| {
        serde_json::from_str::<serde_json::Value>(line).expect("JSON")["epoch"].clone()
    };
    let subscribed = got
        .iter()
        .find(|l| l.starts_with(r#"{"type":"subscribed""#))
        .expect("a subscribed line");
    assert_eq!(
        epoch(&answer),
        epoch(subscribed),
        "the curl publish's epoch: {answer}"
    );

    let mut more = Vec::new();
    run.take(shown_message.len(), &mut more);
    assert_eq!(
        more, shown_message,
        "the line the snippet prints for the curl publish"
    );
}

/// README.md's websocat session: the lines typed after the command, sent as text frames on
/// a connection that offers the subprotocol, get what the README shows.
/// Sends `lines` as text frames, then reads `n` text frames back (Pings aside), within WAIT.
async fn exchange<S>(
    ws: &mut S,
    lines: impl IntoIterator<Item = impl AsRef<str>>,
    n: usize,
) -> Vec<String>
where
    S: futures_util::Sink<Message>
        + futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
    <S as futures_util::Sink<Message>>::Error: std::fmt::Debug,
{
    for line in lines {
        ws.send(Message::text(line.as_ref())).await.expect("send");
    }
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.len() < n {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => got.push(t.to_string()),
            Ok(Some(Ok(_))) => {}
            other => panic!("after\n{}\nthe connection gave {other:?}", got.join("\n")),
        }
    }
    got
}

#[tokio::test]
async fn readme_websocat_session_prints_what_the_readme_shows() {
    let doc = readme();
    let session = block_after(&doc, "<!-- tests/docs.rs sends these lines");
    let shown = lines_of(&block_after(
        &doc,
        "<!-- output of the websocat session above -->",
    ));
    let mut lines = session.lines();
    let command = lines.next().expect("the websocat command");
    let url = command
        .split_whitespace()
        .last()
        .expect("the URL, last on the line");
    assert!(
        command.contains("--protocol switchboard.v1.json"),
        "{command}"
    );

    let app = spawn_app(&[]);
    let mut req = url
        .replace(README_ADDR, &app.addr.to_string())
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("switchboard.v1.json"),
    );
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("connect timeout")
        .expect("connect");
    let got = exchange(&mut ws, lines, shown.len()).await;
    assert_matches_shown("the websocat session", &got, &shown);
}

/// `switchboard --check-config --show-secrets` run in an empty directory with `args`: the
/// settings as resolved, as TOML.
fn resolved_settings(args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["--check-config", "--show-secrets"])
        .args(args)
        .current_dir(dir.path())
        .env_clear()
        .output()
        .expect("run switchboard --check-config");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// The backticked parts of one Markdown table cell.
fn backticked(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// `(key, default)` for each row of `doc`'s tables whose first cell names settings
/// (`server.bind`, `` `heartbeat.interval` / `heartbeat.timeout` ``, `channels.*`), with
/// `None` where the default is "unset".
fn documented_defaults(doc: &str) -> Vec<(String, Option<String>)> {
    const SECTIONS: &[&str] = &[
        "server",
        "heartbeat",
        "engine",
        "auth",
        "api",
        "limits",
        "compression",
        "channels",
    ];
    let mut rows = Vec::new();
    for line in doc.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split(" | ").collect();
        let keys = backticked(cells[0]);
        let values = backticked(cells.get(1).copied().unwrap_or(""));
        let is_setting = |k: &String| {
            k.split_once('.')
                .is_some_and(|(section, _)| SECTIONS.contains(&section))
        };
        if keys.is_empty() || !keys.iter().all(is_setting) {
            continue;
        }
        for (i, key) in keys.iter().enumerate() {
            if let Some(section) = key.strip_suffix(".*") {
                for pair in &values {
                    let (k, v) = pair.split_once(" = ").expect("`key = value`");
                    rows.push((format!("{section}.{k}"), Some(v.to_string())));
                }
            } else {
                rows.push((key.clone(), values.get(i).cloned()));
            }
        }
    }
    rows
}

/// README.md ("every key with its default"), docs/protocol.md (section 6) and
/// config/default.toml ("every key, set to its compiled-in default") against the defaults the
/// binary really has.
#[test]
fn documented_defaults_are_the_compiled_in_ones() {
    let root = env!("CARGO_MANIFEST_DIR");
    let compiled = resolved_settings(&[]);
    let file = format!("{root}/config/default.toml");
    assert_eq!(
        resolved_settings(&["--config", &file]),
        compiled,
        "config/default.toml changes a default"
    );
    let settings: toml::Table = toml::from_str(&compiled).expect("TOML");
    let lookup = |key: &str| {
        let (section, name) = key.split_once('.').expect("section.key");
        settings.get(section).and_then(|t| t.get(name)).cloned()
    };
    for name in ["README.md", "docs/protocol.md"] {
        let doc = std::fs::read_to_string(format!("{root}/{name}")).expect("doc");
        let rows = documented_defaults(&doc);
        assert!(rows.len() >= 20, "{name}: found only {rows:?}");
        for (key, shown) in &rows {
            let actual = lookup(key);
            match shown {
                // "unset"; an empty list is not printed either.
                None => assert_eq!(actual, None, "{name}: {key} is set by default"),
                Some(shown) if shown == "[]" && actual.is_none() => {}
                Some(shown) => {
                    let parsed: toml::Table = toml::from_str(&format!("v = {shown}"))
                        .unwrap_or_else(|e| panic!("{name}: {key} = {shown}: {e}"));
                    assert_eq!(
                        Some(&parsed["v"]),
                        actual.as_ref(),
                        "{name}: the default of {key}"
                    );
                }
            }
        }
        if name == "README.md" {
            // Its table lists every key.
            for (section, table) in &settings {
                for key in table.as_table().expect("a section").keys() {
                    let full = format!("{section}.{key}");
                    assert!(
                        rows.iter().any(|(k, _)| *k == full),
                        "README.md's configuration table lacks {full}"
                    );
                }
            }
        }
    }
    // config/default.toml names every key, commented out where the default is "unset".
    let text = std::fs::read_to_string(&file).expect("config/default.toml");
    for (section, table) in &settings {
        // `[namespaces]` is empty by default; the file shows one, commented out.
        if table.as_table().is_some_and(|t| t.is_empty()) {
            continue;
        }
        let body = text
            .split(&format!("\n[{section}]\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("config/default.toml has no [{section}]"));
        let body = body.split("\n[").next().unwrap_or(body);
        for key in table.as_table().expect("a section").keys() {
            assert!(
                body.lines().any(|l| l.starts_with(&format!("{key} = "))),
                "config/default.toml lacks {section}.{key}"
            );
        }
    }
    for key in [
        "server.tls_cert",
        "server.tls_key",
        "auth.hmac_secret",
        "auth.public_key_pem",
    ] {
        let (section, name) = key.split_once('.').expect("key");
        let body = text
            .split(&format!("\n[{section}]\n"))
            .nth(1)
            .expect("section");
        assert!(
            body.lines().any(|l| l.starts_with(&format!("# {name} = "))),
            "config/default.toml lacks the commented-out {key}"
        );
    }
}

/// README.md's metrics table: each metric is on `/metrics` with the type the table gives
/// (the labelled ones once something was counted: here a refused handshake).
#[tokio::test]
async fn every_metric_in_the_readme_is_exported_with_its_type() {
    let app = spawn_app(&[]);
    let mut req = app.ws_url().into_client_request().expect("request");
    req.headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static("other"));
    assert!(tokio_tungstenite::connect_async(req).await.is_err());
    let (status, text) = http(app.addr, "GET", "/metrics", &[], None).await;
    assert_eq!(status, 200);
    let doc = readme();
    let rows: Vec<(String, String)> = doc
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("| `switchboard_"))
        .map(|l| {
            let cells: Vec<&str> = l.split(" | ").collect();
            let name = backticked(cells[0])[0].clone();
            let name = name.split('{').next().expect("name").to_string();
            (name, cells[1].trim().to_string())
        })
        .collect();
    assert_eq!(rows.len(), 11, "README.md's metrics table: {rows:?}");
    for (name, kind) in rows {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "/metrics has no {kind} {name}:\n{text}"
        );
    }
    // And the table names every metric there is.
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split_whitespace().nth(2).expect("name");
        assert!(doc.contains(&format!("`{name}")), "README.md lacks {name}");
    }
}

/// docs/protocol.md, section 7: the worked example up to "The network drops", its `>`
/// frames sent at once, gets its `<` frames (the `message` anywhere after `subscribed`).
#[tokio::test]
async fn the_protocol_worked_example_prints_what_it_shows() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md"))
        .expect("docs/protocol.md");
    let example = block_after(&doc, "## 7. A worked example");
    let first = example
        .split("# The network drops")
        .next()
        .expect("the first part");
    let sent: Vec<&str> = first.lines().filter_map(|l| l.strip_prefix("> ")).collect();
    let shown: Vec<String> = first
        .lines()
        .filter_map(|l| l.strip_prefix("< "))
        .map(str::to_string)
        .collect();
    assert!(sent.len() >= 4 && shown.len() >= 6, "{first}");

    let app = spawn_app(&[]);
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(app.ws_url()))
        .await
        .expect("connect timeout")
        .expect("connect");
    let got = exchange(&mut ws, sent, shown.len()).await;
    assert_matches_shown("docs/protocol.md's worked example", &got, &shown);
}
