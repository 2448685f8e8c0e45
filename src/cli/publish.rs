//! `switchboard pub`: publishes DATA (JSON), or each JSON line of stdin with `-`, to one
//! channel, and prints each publication's `{"offset","epoch"}` on stdout, one line each, in
//! input order.
//!
//! Over WebSocket by default ([`Conn`], with `--token` when the namespace needs one): each
//! line is a `publish` command with an id, up to [`WINDOW`] in flight, replies matched by
//! id. With `--api-key` it POSTs `/api/publish` at the address derived from `--url`
//! instead, one at a time. DATA that is not JSON is refused before connecting (exit 2); a
//! line of stdin that is not JSON stops the run there (exit 2). A refusal (`forbidden`,
//! `rate_limited`, HTTP 401, ...) stops it too (exit 1): no further line is sent, and the
//! replies to those already sent are still printed.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, BufReader, Lines, Stdin};

use super::conn::{describe, error_body, http_agent, post_json, Conn, Event};
use super::endpoint::{channel_name, token_value, Endpoint, Position, DEFAULT_URL};
use super::frames::{self, excerpt, Frame};
use super::{print_line, say, Failure};

/// Publications sent and not yet answered, at most: enough to keep a link busy, few
/// enough that a refusal stops the run soon after the line that caused it.
pub const WINDOW: usize = 16;

/// `switchboard pub`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
stdout: {\"offset\":N,\"epoch\":\"...\"} per publication, one line each, in input order.

With `-`, blank lines are skipped; pub stops at the first line that is not JSON (exit 2) or \
that the server refuses (exit 1): no later line is sent, and those already sent (up to 16) are \
still answered and printed.

Exit codes: 0 all published; 1 refused or failed (the server's code and message on stderr); \
2 bad input (DATA or a line that is not JSON, bad flags).")]
pub struct PubArgs {
    /// The server's WebSocket URL (the HTTP API's address is derived from it).
    #[arg(long, default_value = DEFAULT_URL)]
    pub url: Endpoint,
    /// A token (JWT), for namespaces that are not anonymous.
    #[arg(long, conflicts_with = "api_key", value_parser = token_value)]
    pub token: Option<String>,
    /// Publish through the HTTP API (`POST /api/publish`) with this key.
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// The channel.
    #[arg(value_name = "CHANNEL", value_parser = channel_name)]
    pub channel: String,
    /// The JSON to publish (a string needs its quotes: '"hi"'), or `-` for JSON lines on
    /// stdin.
    #[arg(value_name = "DATA")]
    pub data: String,
}

/// Runs `pub` to the end of its input, or to the first failure.
pub async fn run(args: PubArgs) -> Result<(), Failure> {
    let mut input = Input::new(&args.data)?;
    match &args.api_key {
        Some(key) => over_http(&args, key, &mut input).await,
        None => over_websocket(&args, &mut input).await,
    }
}

/// Where the publications come from.
enum Input {
    /// DATA, until taken.
    One(Option<Box<RawValue>>),
    /// stdin, and the number of the last line read.
    Lines(Lines<BufReader<Stdin>>, usize),
}

impl Input {
    /// DATA, checked now; or stdin, read as it comes.
    fn new(data: &str) -> Result<Input, Failure> {
        if data == "-" {
            return Ok(Input::Lines(BufReader::new(tokio::io::stdin()).lines(), 0));
        }
        serde_json::from_str(data)
            .map(|d| Input::One(Some(d)))
            .map_err(|e| {
                Failure::usage(format!(
                    "DATA is not JSON ({e}): {}; a string needs its quotes, as in '\"hello\"'",
                    excerpt(data)
                ))
            })
    }

    /// The next publication, with its line number (0 for DATA). Cancel-safe.
    async fn next(&mut self) -> Result<Option<(usize, Box<RawValue>)>, Failure> {
        let (lines, number) = match self {
            Input::One(data) => return Ok(data.take().map(|d| (0, d))),
            Input::Lines(lines, number) => (lines, number),
        };
        loop {
            let line = lines.next_line().await.map_err(|e| {
                let message = format!("cannot read stdin after line {number}: {e}");
                if e.kind() == std::io::ErrorKind::InvalidData {
                    Failure::usage(message)
                } else {
                    Failure::failed(message)
                }
            })?;
            let Some(line) = line else {
                return Ok(None);
            };
            *number += 1;
            if line.trim().is_empty() {
                continue;
            }
            return match serde_json::from_str(&line) {
                Ok(data) => Ok(Some((*number, data))),
                Err(e) => Err(Failure::usage(format!(
                    "line {number} of stdin is not JSON ({e}): {}",
                    excerpt(&line)
                ))),
            };
        }
    }
}

/// "line N: " for a line of stdin, nothing for DATA.
fn label(line: usize) -> String {
    match line {
        0 => String::new(),
        n => format!("line {n}: "),
    }
}

/// A publication sent and its answer, once it came.
struct Pending {
    id: u64,
    line: usize,
    answer: Option<Result<Position, String>>,
}

/// Publishes over one WebSocket connection, [`WINDOW`] at a time.
async fn over_websocket(args: &PubArgs, input: &mut Input) -> Result<(), Failure> {
    let (mut conn, _) = Conn::open(&args.url, args.token.as_deref())
        .await
        .map_err(|e| Failure::failed(e.to_string()))?;
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let (mut next_id, mut reading) = (0u64, true);
    // What stopped the run: refusals, and a line that is not JSON (which comes after
    // every line sent); the first in input order is the one reported.
    let mut failures: Vec<(usize, Failure)> = Vec::new();
    loop {
        // Answers go out in input order, as soon as every earlier one has.
        while pending.front().is_some_and(|p| p.answer.is_some()) {
            let Some(Pending { line, answer, .. }) = pending.pop_front() else {
                break;
            };
            match answer {
                Some(Ok(at)) => {
                    let line = frames::published_line(&at);
                    if print_line(&line).is_err() {
                        // Nobody reads stdout any more.
                        return Ok(());
                    }
                }
                Some(Err(why)) => {
                    reading = false;
                    failures.push((line, Failure::failed(format!("{}{why}", label(line)))));
                }
                None => {}
            }
        }
        if !reading && pending.is_empty() {
            break;
        }
        let room = reading && pending.len() < WINDOW;
        tokio::select! {
            item = input.next(), if room => match item {
                Ok(Some((line, data))) => {
                    let command = frames::publish(next_id, &args.channel, &data);
                    conn.send(command).await.map_err(Failure::failed)?;
                    pending.push_back(Pending { id: next_id, line, answer: None });
                    next_id += 1;
                }
                Ok(None) => reading = false,
                Err(f) => {
                    reading = false;
                    failures.push((usize::MAX, f));
                }
            },
            event = conn.recv(), if !pending.is_empty() => {
                let text = match event {
                    Event::Heard => continue,
                    Event::Text(text) => text,
                    ended => {
                        return Err(Failure::failed(format!(
                            "{} ({} publications unanswered)",
                            describe(&ended),
                            pending.len()
                        )))
                    }
                };
                let parsed = frames::parse(&text)
                    .map_err(|why| Failure::failed(format!("not a switchboard server: {why}")))?;
                for frame in parsed {
                    let (id, answer) = match frame {
                        Frame::Published { id, at } => (id, Ok(at)),
                        Frame::Error { id, code, message } => (id, Err(format!("{code}: {message}"))),
                        _ => continue,
                    };
                    let id = id.as_ref().and_then(serde_json::Value::as_u64);
                    match pending.iter_mut().find(|p| Some(p.id) == id) {
                        Some(p) => p.answer = Some(answer),
                        None => if let Err(why) = answer {
                            say("pub", &format!("the server said: {why}"));
                        },
                    }
                }
            },
            else => break,
        }
    }
    conn.close().await;
    let more = failures.len().saturating_sub(1);
    match failures.into_iter().min_by_key(|(line, _)| *line) {
        None => Ok(()),
        Some((_, mut f)) => {
            if more > 0 {
                f.message += &format!(" (and {more} more after it)");
            }
            Err(f)
        }
    }
}

/// `POST /api/publish`'s body.
#[derive(Serialize)]
struct HttpPublish<'a> {
    channel: &'a str,
    data: &'a RawValue,
}

/// `POST /api/publish`'s answer.
#[derive(Deserialize)]
struct HttpPublished {
    offset: u64,
    epoch: String,
}

/// Publishes through the HTTP API, one request at a time.
async fn over_http(args: &PubArgs, key: &str, input: &mut Input) -> Result<(), Failure> {
    let agent = http_agent();
    let url = args.url.api_url("/api/publish");
    let authorization = format!("apikey {key}");
    while let Some((line, data)) = input.next().await? {
        let at = label(line);
        let body = HttpPublish {
            channel: &args.channel,
            data: &data,
        };
        let body = serde_json::to_string(&body).unwrap_or_default();
        let answer = post_json(&agent, &url, &authorization, body)
            .await
            .map_err(|why| Failure::failed(format!("{at}{url}: {why}")))?;
        let bytes = answer.body;
        if !(200..300).contains(&answer.status) {
            return Err(Failure::failed(format!(
                "{at}HTTP {} {}",
                answer.status,
                error_body(answer.status_name, &bytes)
            )));
        }
        let published: HttpPublished = serde_json::from_slice(&bytes).map_err(|e| {
            Failure::failed(format!(
                "{at}{url} answered {} ({e}): not a switchboard server",
                excerpt(&String::from_utf8_lossy(&bytes))
            ))
        })?;
        let position = Position {
            offset: published.offset,
            epoch: published.epoch,
        };
        if print_line(&frames::published_line(&position)).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_checked_before_anything_connects() {
        let Err(f) = Input::new("hello") else {
            panic!("a bare word is not JSON")
        };
        assert_eq!(f.code, super::super::EXIT_USAGE);
        assert!(f.message.contains("DATA is not JSON"), "{}", f.message);
        assert!(Input::new("{\"a\":1} x").is_err());
        assert!(matches!(Input::new(" \"hi\" "), Ok(Input::One(Some(_)))));
    }
}
