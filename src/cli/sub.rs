//! `switchboard sub`: subscribes to channels and prints every publication as one JSON line
//! on stdout (the `message` frame), flushed per line; everything else goes to stderr.
//!
//! It keeps going the way the JS client does: after a close whose `disconnect` push says
//! `reconnect: true`, or any close, connection error or refused connection without such a
//! push, it reconnects with exponential backoff and full jitter ([`backoff`]), and
//! resubscribes each channel with `since` = the last position seen on it, so recovered
//! publications come first, in order, and nothing is printed twice (`Channel::print`).
//! A link that goes quiet is checked with an app-level `ping` and dropped when unanswered.
//! It stops, exit 1, on what retrying cannot fix: a terminal close code (1003, 1007, 1009,
//! 4003, 4004), an expired token (4002: the one token it has cannot be refreshed), a
//! handshake refused with a 4xx, an error reply to a subscribe (but `unavailable`, which
//! is retried), and a server that sends garbage. Ctrl-C (or SIGTERM) ends it with exit 0.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use super::conn::{describe, Conn, Event};
use super::endpoint::{channel_name, token_value, Endpoint, Position, DEFAULT_URL};
use super::frames::{self, Disconnect, Frame, Publication};
use super::{print_line, say, Failure};
use crate::protocol::CloseCode;

/// The shortest backoff cap: the first retry waits up to this long.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// The longest wait between two attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// The server's Ping interval when its `welcome` does not say (the server's default).
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
/// The least time a `ping` is given to be answered, however short the server's interval.
const MIN_PONG_WAIT: Duration = Duration::from_secs(1);

/// `switchboard sub`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
stdout: one JSON line per message, the server's `message` frame: \
{\"type\":\"message\",\"channel\",\"offset\",\"data\",\"info\"?}. stderr: where each channel \
starts (OFFSET:EPOCH, for --since), reconnections, lost recoveries and resets.

Exit codes: 0 on Ctrl-C; 1 when the server ends it for good (a terminal close code, a refused \
handshake, an error reply to a subscribe, an expired token); 2 for bad flags.

The token is never refreshed: when it expires the server closes the connection (4002 \
token_expired) and sub exits 1; mint a longer-lived one.")]
pub struct SubArgs {
    /// The server's WebSocket URL.
    #[arg(long, default_value = DEFAULT_URL)]
    pub url: Endpoint,
    /// A token (JWT), for namespaces that are not anonymous.
    #[arg(long, value_parser = token_value)]
    pub token: Option<String>,
    /// Recover from this position on the first subscribe of every channel (the offset of
    /// the last message seen and its epoch).
    #[arg(long, value_name = "OFFSET:EPOCH")]
    pub since: Option<Position>,
    /// Print nothing on stderr but problems (no "subscribed" or "reconnecting" lines).
    #[arg(long, short)]
    pub quiet: bool,
    /// The channels.
    #[arg(required = true, value_name = "CHANNEL", value_parser = channel_name)]
    pub channels: Vec<String>,
}

/// Runs `sub` until Ctrl-C (`Ok`) or a failure it cannot retry.
pub async fn run(args: SubArgs) -> Result<(), Failure> {
    let mut sub = Subscriber::new(&args);
    let interrupted = crate::startup::wait_for_signal();
    tokio::pin!(interrupted);
    let mut attempt = 0u32;
    loop {
        let end = tokio::select! {
            () = &mut interrupted => return Ok(()),
            end = sub.session(&args.url, args.token.as_deref(), &mut attempt) => end,
        };
        match end {
            End::Stop(result) => return result,
            End::Retry(why) => {
                let delay = backoff(attempt);
                attempt = attempt.saturating_add(1);
                sub.info(&format!("{why}; reconnecting in {} ms", delay.as_millis()));
                tokio::select! {
                    () = &mut interrupted => return Ok(()),
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// How one connection ended.
#[derive(Debug)]
enum End {
    /// Connect again after a backoff; why, for stderr.
    Retry(String),
    /// Stop: `Ok` when stdout went away (nobody reads any more), else why.
    Stop(Result<(), Failure>),
}

/// The wait before reconnect attempt `attempt` (0 after a connection that got its
/// `welcome`): full jitter, uniform in [0, min(max, min * 2^attempt)], so that clients
/// dropped together by a restart do not come back together.
pub fn backoff(attempt: u32) -> Duration {
    let cap = BACKOFF_MIN
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_MAX);
    let millis = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(0..=millis))
}

/// A close code after which reconnecting cannot help (the server's own table says so).
fn terminal(code: u16) -> bool {
    CloseCode::ALL
        .iter()
        .any(|c| c.code() == code && !c.reconnect())
}

/// One subscribed channel and where it is.
#[derive(Debug)]
struct Channel {
    name: String,
    /// The last position seen (from `--since`, `subscribed`, `message` or `reset`): what
    /// a resubscribe recovers from, and what is not printed again.
    at: Option<Position>,
}

impl Channel {
    /// Prints a publication unless it is at or before the last one seen in the epoch.
    fn print(&mut self, p: &Publication) -> Result<(), End> {
        if let Some(at) = &mut self.at {
            if p.offset <= at.offset {
                return Ok(());
            }
            at.offset = p.offset;
        }
        print_line(&frames::message_line(&self.name, p)).map_err(|_| End::Stop(Ok(())))
    }
}

/// The state that lives across connections.
struct Subscriber {
    channels: Vec<Channel>,
    quiet: bool,
    /// The `disconnect` push of the current connection, which says how its close is taken.
    disconnect: Option<Disconnect>,
}

impl Subscriber {
    fn new(args: &SubArgs) -> Subscriber {
        let mut channels: Vec<Channel> = Vec::new();
        for name in &args.channels {
            // Twice the same channel would be refused (`already_subscribed`).
            if !channels.iter().any(|c| &c.name == name) {
                channels.push(Channel {
                    name: name.clone(),
                    at: args.since.clone(),
                });
            }
        }
        Subscriber {
            channels,
            quiet: args.quiet,
            disconnect: None,
        }
    }

    /// An informational line (not shown with `--quiet`).
    fn info(&self, line: &str) {
        if !self.quiet {
            say("sub", line);
        }
    }

    /// One connection: connect, subscribe everything, print until it ends.
    async fn session(&mut self, url: &Endpoint, token: Option<&str>, attempt: &mut u32) -> End {
        let (mut conn, welcome) = match Conn::open(url, token).await {
            Ok(open) => open,
            Err(e) if e.retry() => return End::Retry(e.to_string()),
            Err(e) => return End::Stop(Err(Failure::failed(e.to_string()))),
        };
        *attempt = 0;
        self.disconnect = None;
        for (id, channel) in self.channels.iter().enumerate() {
            let command = frames::subscribe(id as u64, &channel.name, channel.at.as_ref());
            if let Err(e) = conn.send(command).await {
                return End::Retry(e);
            }
        }
        let heartbeat = welcome
            .heartbeat
            .unwrap_or(DEFAULT_HEARTBEAT)
            .max(Duration::from_millis(10));
        let mut last_heard = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        loop {
            // The server Pings every `heartbeat`: half as long again without a word, and
            // the link is checked; a ping not answered in time, and it is taken as dead.
            let deadline = match ping_sent {
                Some(sent) => sent + heartbeat.max(MIN_PONG_WAIT),
                None => last_heard + heartbeat * 3 / 2,
            };
            let event = tokio::select! {
                event = conn.recv() => event,
                () = tokio::time::sleep_until(deadline) => {
                    if ping_sent.is_some() {
                        return End::Retry("no answer to a ping: the link is dead".into());
                    }
                    if let Err(e) = conn.send(frames::PING.into()).await {
                        return End::Retry(e);
                    }
                    ping_sent = Some(Instant::now());
                    continue;
                }
            };
            last_heard = Instant::now();
            ping_sent = None;
            let text = match event {
                Event::Heard => continue,
                Event::Text(text) => text,
                ended => return self.ended(ended),
            };
            let parsed = match frames::parse(&text) {
                Ok(frames) => frames,
                Err(why) => {
                    conn.close().await;
                    return End::Stop(Err(Failure::failed(format!(
                        "not a switchboard server: {why}"
                    ))));
                }
            };
            for frame in parsed {
                if let Err(end) = self.handle(frame) {
                    conn.close().await;
                    return end;
                }
            }
        }
    }

    /// Acts on one frame; `Err` ends the connection.
    fn handle(&mut self, frame: Frame) -> Result<(), End> {
        match frame {
            Frame::Subscribed {
                channel,
                at,
                recovered,
                publications,
                ..
            } => {
                let quiet = self.quiet;
                let Some(ch) = self.channels.iter_mut().find(|c| c.name == channel) else {
                    return Ok(());
                };
                let count = publications.len();
                match recovered {
                    Some(true) => {
                        for p in &publications {
                            ch.print(p)?;
                        }
                    }
                    Some(false) => say(
                        "sub",
                        &format!(
                            "{channel}: could not recover from {} (the epoch changed or the \
                             gap is no longer in history); messages in between are lost, \
                             continuing at {at}",
                            ch.at.as_ref().map_or_else(String::new, ToString::to_string)
                        ),
                    ),
                    None => {}
                }
                if !quiet {
                    let recovered = match recovered {
                        Some(true) => format!(" ({count} recovered)"),
                        _ => String::new(),
                    };
                    say(
                        "sub",
                        &format!("subscribed to {channel} at {at}{recovered}"),
                    );
                }
                ch.at = Some(at);
            }
            Frame::Message {
                channel,
                publication,
            } => {
                if let Some(ch) = self.channels.iter_mut().find(|c| c.name == channel) {
                    ch.print(&publication)?;
                }
            }
            Frame::Reset { channel, epoch } => {
                if let Some(ch) = self.channels.iter_mut().find(|c| c.name == channel) {
                    say(
                        "sub",
                        &format!(
                            "{channel}: reset to epoch {epoch} (the server lost its history); \
                             offsets start again at 1"
                        ),
                    );
                    ch.at = Some(Position { offset: 0, epoch });
                }
            }
            Frame::Error { id, code, message } => {
                let subscribe = id
                    .as_ref()
                    .and_then(serde_json::Value::as_u64)
                    .and_then(|i| self.channels.get(usize::try_from(i).ok()?));
                match subscribe {
                    // The engine could not take it now (Redis away): that passes.
                    Some(ch) if code == "unavailable" => {
                        return Err(End::Retry(format!(
                            "cannot subscribe to {}: {code}: {message}",
                            ch.name
                        )))
                    }
                    Some(ch) => {
                        return Err(End::Stop(Err(Failure::failed(format!(
                            "cannot subscribe to {}: {code}: {message}",
                            ch.name
                        )))))
                    }
                    None => say("sub", &format!("the server said: {code}: {message}")),
                }
            }
            Frame::Disconnect(d) => self.disconnect = Some(d),
            Frame::Welcome { .. } | Frame::Published { .. } | Frame::Pong | Frame::Other(_) => {}
        }
        Ok(())
    }

    /// The connection ended: retry, or stop and say why.
    fn ended(&mut self, event: Event) -> End {
        if let Event::Garbage(why) = &event {
            return End::Stop(Err(Failure::failed(format!(
                "not a switchboard server: {why}"
            ))));
        }
        let push = self.disconnect.take();
        let (code, reason) = match (&push, &event) {
            (Some(d), _) => (Some(d.code), d.reason.clone()),
            (None, Event::Closed { code, reason }) => (*code, reason.clone()),
            (None, _) => (None, String::new()),
        };
        let expired = CloseCode::TokenExpired;
        if code == Some(expired.code()) {
            return End::Stop(Err(Failure::failed(format!(
                "the server closed the connection: {} {}: the token expired, and sub cannot \
                 refresh the token it was given; mint a new one and start again",
                expired.code(),
                expired.reason()
            ))));
        }
        let retry = code.is_none_or(|c| !terminal(c)) && push.as_ref().is_none_or(|d| d.reconnect);
        match code {
            Some(code) if !retry => End::Stop(Err(Failure::failed(format!(
                "the server closed the connection: {code} {reason} (terminal: not reconnecting)"
            )))),
            _ => End::Retry(describe(&event)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_full_jitter() {
        for _ in 0..200 {
            assert!(backoff(0) <= BACKOFF_MIN);
            assert!(backoff(2) <= BACKOFF_MIN * 4);
            assert!(backoff(40) <= BACKOFF_MAX);
        }
        // Full jitter: some waits of a late attempt are well under the cap.
        assert!((0..200).any(|_| backoff(10) < BACKOFF_MAX / 2));
    }

    #[test]
    fn terminal_codes_are_the_servers_no_reconnect_ones() {
        for code in [1003, 1007, 1009, 4003, 4004] {
            assert!(terminal(code), "{code}");
        }
        for code in [1000, 1001, 1006, 4000, 4001, 4002, 4999] {
            assert!(!terminal(code), "{code}");
        }
    }

    fn subscriber(since: Option<Position>) -> Subscriber {
        let args = SubArgs {
            url: DEFAULT_URL.parse().unwrap(),
            token: None,
            since,
            quiet: true,
            channels: vec!["a".into(), "a".into(), "b".into()],
        };
        Subscriber::new(&args)
    }

    #[test]
    fn closes_are_retried_unless_terminal() {
        let mut s = subscriber(None);
        assert_eq!(s.channels.len(), 2);
        let closed = |code| Event::Closed {
            code: Some(code),
            reason: "r".into(),
        };
        assert!(matches!(s.ended(closed(1001)), End::Retry(_)));
        assert!(matches!(
            s.ended(Event::Ended("reset".into())),
            End::Retry(_)
        ));
        let End::Stop(Err(f)) = s.ended(closed(4003)) else {
            panic!("4003 is terminal")
        };
        assert!(f.message.contains("4003"), "{}", f.message);
        assert!(matches!(s.ended(closed(4002)), End::Stop(Err(_))));
        // The push decides: reconnect false with a code not in the table.
        s.disconnect = Some(Disconnect {
            code: 4999,
            reason: "x".into(),
            reconnect: false,
        });
        assert!(matches!(s.ended(closed(4999)), End::Stop(Err(_))));
        assert!(matches!(
            s.ended(Event::Garbage("binary".into())),
            End::Stop(Err(_))
        ));
    }

    #[test]
    fn subscribe_errors_stop_but_unavailable_retries() {
        let mut s = subscriber(Some("3:e".parse().unwrap()));
        assert_eq!(s.channels[1].at, Some("3:e".parse().unwrap()));
        let error = |code: &str| Frame::Error {
            id: Some(serde_json::json!(1)),
            code: code.into(),
            message: "m".into(),
        };
        assert!(matches!(s.handle(error("unavailable")), Err(End::Retry(_))));
        let Err(End::Stop(Err(f))) = s.handle(error("forbidden")) else {
            panic!("forbidden is terminal")
        };
        assert_eq!(f.message, "cannot subscribe to b: forbidden: m");
        // Not a subscribe's error: said, and the connection goes on.
        let other = Frame::Error {
            id: None,
            code: "bad_request".into(),
            message: "m".into(),
        };
        assert!(s.handle(other).is_ok());
    }
}
