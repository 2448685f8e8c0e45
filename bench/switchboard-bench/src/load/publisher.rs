//! The publisher of a fan-out or latency run: keeps a window of unanswered publications
//! (and, with `--flow delivery`, of undelivered ones) full, at full speed or on a fixed
//! schedule, and counts what the server confirmed. `load` runs it against `Shared`.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::time::sleep_until;
use tokio_tungstenite::tungstenite::Message;

use super::subscriber::Shared;
use crate::cli::{Flow, LoadArgs, Protocol};
use crate::net::Ws;
use crate::setup::describe_close;
use crate::wire::nats::{nats_frame, NatsEvent, NatsParser};
use crate::wire::switchboard::{sb_error_code, sb_id, sb_type};
use crate::wire::Payload;

pub struct PubResult {
    pub sent: u64,
    pub published: u64,
    pub per_channel: Vec<u64>,
    pub rejected: BTreeMap<String, u64>,
    pub late: u64,
    pub start: Instant,
    pub stop: Instant,
    pub received_at_stop: u64,
    pub unanswered: u64,
    pub failure: Option<String>,
}

/// The publisher: a window of unanswered publications, at full speed or at `rate` per second.
pub async fn run_publisher(
    ws: &mut Ws,
    proto: Protocol,
    channels: &[String],
    subs: &[u64],
    args: &LoadArgs,
    rate: Option<f64>,
    shared: &Shared,
) -> PubResult {
    let c = channels.len() as u64;
    let mut r = PubResult {
        sent: 0,
        published: 0,
        per_channel: vec![0; channels.len()],
        rejected: BTreeMap::new(),
        late: 0,
        start: Instant::now(),
        stop: Instant::now(),
        received_at_stop: 0,
        unanswered: 0,
        failure: None,
    };
    let start = Instant::now();
    let start_ns = shared.now_ns();
    let stop_at = start + Duration::from_secs_f64(args.duration);
    let give_up = stop_at + Duration::from_secs_f64(args.drain.max(1.0));
    let window = args.window as u64;
    // With --flow delivery: deliveries sent for and not yet received, at most this many.
    let per_pub = subs.iter().sum::<u64>().div_ceil(c);
    let delivery_limit = match args.flow {
        Flow::Delivery => window * per_pub,
        Flow::Reply => u64::MAX,
    };
    let mut owed = 0u64; // deliveries due for every publication sent
    let mut seq = vec![0u64; channels.len()];
    let mut pings: VecDeque<u64> = VecDeque::new();
    let mut last_ping = 0u64;
    let mut acked = 0u64;
    let mut parser = NatsParser::default();
    let mut sending = true;
    let payload = Payload::new(args.payload, args.size);
    let mut body = String::with_capacity(args.size + 64);
    let mut frame = String::with_capacity(args.size + 192);
    r.start = start;
    loop {
        let mut delivery_blocked = false;
        let now = Instant::now();
        if sending && (now >= stop_at || r.sent >= args.max_publish) {
            sending = false;
            r.stop = now;
            r.received_at_stop = shared.received.load(Relaxed);
        }
        let inflight = r.sent - acked;
        if !sending && inflight == 0 {
            break;
        }
        if !sending && now >= give_up {
            r.unanswered = inflight;
            break;
        }
        // Send what the window and the schedule allow.
        if sending && inflight < window {
            let mut room = (window - inflight).min(args.max_publish - r.sent);
            if let Some(rate) = rate {
                let due = ((now - start).as_secs_f64() * rate) as u64 + 1;
                room = room.min(due.saturating_sub(r.sent));
            }
            if room > 0 && owed.saturating_sub(shared.received.load(Relaxed)) >= delivery_limit {
                delivery_blocked = true;
                room = 0;
            }
            if room > 0 {
                let now_ns = shared.now_ns();
                let mut res = Ok(());
                for _ in 0..room {
                    let n = r.sent;
                    let ch = (n % c) as usize;
                    if owed.saturating_sub(shared.received.load(Relaxed)) >= delivery_limit {
                        break;
                    }
                    owed += subs[ch];
                    if let Some(rate) = rate {
                        // Sends more than 5 ms behind the schedule: the publisher could not
                        // keep up (window full or load generator busy).
                        if now_ns > start_ns + (n as f64 / rate * 1e9) as u64 + 5_000_000 {
                            r.late += 1;
                        }
                    }
                    let ts = shared.now_ns();
                    frame.clear();
                    body.clear();
                    payload.write(&mut body, ts, seq[ch]);
                    let msg = match proto {
                        Protocol::Switchboard => {
                            let _ = write!(
                                frame,
                                "{{\"type\":\"publish\",\"id\":{n},\"channel\":\"{}\",\"data\":",
                                channels[ch]
                            );
                            // The stamp form is a JSON string; a JSON payload is a value.
                            if payload.is_json() {
                                frame.push_str(&body);
                            } else {
                                frame.push('"');
                                frame.push_str(&body);
                                frame.push('"');
                            }
                            frame.push('}');
                            Message::text(frame.clone())
                        }
                        Protocol::Nats => {
                            let _ = write!(frame, "PUB {} {}\r\n", channels[ch], body.len());
                            frame.push_str(&body);
                            frame.push_str("\r\n");
                            nats_frame(&frame)
                        }
                    };
                    seq[ch] += 1;
                    r.sent += 1;
                    res = ws.feed(msg).await;
                    if res.is_err() {
                        break;
                    }
                    if proto == Protocol::Nats && r.sent - last_ping >= (window / 4).max(1) {
                        last_ping = r.sent;
                        pings.push_back(r.sent);
                        res = ws.feed(nats_frame("PING\r\n")).await;
                        if res.is_err() {
                            break;
                        }
                    }
                }
                if res.is_ok() && proto == Protocol::Nats && r.sent > last_ping {
                    last_ping = r.sent;
                    pings.push_back(r.sent);
                    res = ws.feed(nats_frame("PING\r\n")).await;
                }
                if res.is_ok() {
                    res = ws.flush().await;
                }
                if let Err(e) = res {
                    r.failure = Some(format!("publisher write: {e}"));
                    break;
                }
                continue;
            }
        }
        // Wait for a reply, the next scheduled send, or the end.
        let inflight = r.sent - acked;
        let wake = if !sending {
            give_up
        } else if inflight >= window {
            stop_at
        } else if let Some(rate) = rate {
            (start + Duration::from_secs_f64(r.sent as f64 / rate)).min(stop_at)
        } else {
            stop_at
        };
        if delivery_blocked {
            // Woken by a subscriber once an eighth of the delivery budget has come back.
            let target = owed - delivery_limit + (delivery_limit / 8).max(1);
            shared.wake_at.store(target, Relaxed);
            if shared.received.load(Relaxed) >= target {
                shared.wake_at.store(u64::MAX, Relaxed);
                tokio::task::yield_now().await;
                continue;
            }
        }
        let first = tokio::select! {
            m = ws.next() => Some(m),
            _ = sleep_until(wake.into()) => None,
            _ = shared.wake.notified(), if delivery_blocked => None,
        };
        shared.wake_at.store(u64::MAX, Relaxed);
        let Some(first) = first else {
            continue;
        };
        let mut next = Some(first);
        while let Some(m) = next.take() {
            let m = match m {
                None => {
                    r.failure = Some("publisher connection closed".into());
                    break;
                }
                Some(Err(e)) => {
                    r.failure = Some(format!("publisher read: {e}"));
                    break;
                }
                Some(Ok(m)) => m,
            };
            match (&m, proto) {
                (Message::Text(t), Protocol::Switchboard) => {
                    let text = t.as_str();
                    match sb_type(text) {
                        "published" => {
                            acked += 1;
                            r.published += 1;
                            if let Some(id) = sb_id(text) {
                                r.per_channel[(id % c) as usize] += 1;
                            }
                        }
                        "error" => {
                            if sb_id(text).is_some() {
                                acked += 1;
                            }
                            *r.rejected.entry(sb_error_code(text)).or_default() += 1;
                        }
                        _ => {}
                    }
                }
                (Message::Binary(b), Protocol::Nats) => {
                    let mut pongs = 0;
                    let mut ping = false;
                    let mut err = None;
                    let res = parser.feed(b, |ev| match ev {
                        NatsEvent::Pong => pongs += 1,
                        NatsEvent::Ping => ping = true,
                        NatsEvent::Err(e) => err = Some(e),
                        _ => {}
                    });
                    if let Err(e) = res {
                        r.failure = Some(format!("publisher: {e}"));
                        break;
                    }
                    if let Some(e) = err {
                        *r.rejected.entry(e).or_default() += 1;
                    }
                    for _ in 0..pongs {
                        if let Some(mark) = pings.pop_front() {
                            acked = mark;
                        }
                    }
                    if ping && ws.send(nats_frame("PONG\r\n")).await.is_err() {
                        r.failure = Some("publisher write failed".into());
                        break;
                    }
                }
                (Message::Close(_), _) => {
                    r.failure = Some(format!("publisher: {}", describe_close(&m)));
                    break;
                }
                _ => {}
            }
            // Take whatever else is already there without waiting.
            next = ws.next().now_or_never();
        }
        if r.failure.is_some() {
            break;
        }
    }
    if sending {
        r.stop = Instant::now();
        r.received_at_stop = shared.received.load(Relaxed);
    }
    if proto == Protocol::Nats {
        r.published = acked;
        for (i, slot) in r.per_channel.iter_mut().enumerate() {
            *slot = acked / c + u64::from((i as u64) < acked % c);
        }
    }
    r
}
