//! A victim of a flood run: one connection publishing on a channel of its own at a fixed
//! rate and timing each `publish` to its `published`. The schedule does not wait for replies,
//! so a server held up by someone else's flood shows as latency here, not as fewer
//! publications. `flood` runs M of them on the main runtime, beside the flooder's thread.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::time::sleep_until;
use tokio_tungstenite::tungstenite::Message;

use crate::net::Ws;
use crate::setup::describe_close;
use crate::wire::switchboard::{sb_error_code, sb_id, sb_type};

/// When a victim publishes: every `1 / rate` seconds from `start + offset`, until `min_stop`
/// and then until the flood is over (`flood_done`), never past `max_stop`; then up to `drain`
/// for the replies still due.
pub struct Schedule {
    pub start: Instant,
    pub offset: Duration,
    pub rate: f64,
    pub min_stop: Instant,
    pub max_stop: Instant,
    pub drain: Duration,
}

#[derive(Default)]
pub struct VictimResult {
    /// (send time in ns from the run's start, round trip in ns) of every confirmed publish.
    pub samples: Vec<(u64, u64)>,
    pub sent: u64,
    /// Error replies by code.
    pub errors: BTreeMap<String, u64>,
    /// Publications with neither `published` nor an error by the end of the drain.
    pub unanswered: u64,
    /// Sends more than 5 ms behind the schedule (the load generator, not the server, was late).
    pub late: u64,
    /// Why the connection ended early, if it did.
    pub failure: Option<String>,
    /// When the last publication was sent, in ns from the run's start.
    pub last_send_ns: u64,
}

pub async fn run_victim(
    mut ws: Ws,
    channel: String,
    s: Schedule,
    flood_done: Arc<AtomicBool>,
) -> VictimResult {
    let mut r = VictimResult::default();
    // Replies come back in the order of the commands; ids are still matched, not assumed.
    let mut pending: VecDeque<(u64, Instant)> = VecDeque::new();
    let mut sending = true;
    let mut give_up = s.max_stop + s.drain;
    let ns = |t: Instant| t.saturating_duration_since(s.start).as_nanos() as u64;
    loop {
        let now = Instant::now();
        let due = s.start + s.offset + Duration::from_secs_f64(r.sent as f64 / s.rate);
        if sending && due >= s.min_stop && (flood_done.load(Relaxed) || due >= s.max_stop) {
            sending = false;
            give_up = now + s.drain;
        }
        if !sending && pending.is_empty() {
            break;
        }
        if !sending && now >= give_up {
            r.unanswered = pending.len() as u64;
            break;
        }
        if sending && now >= due {
            if now > due + Duration::from_millis(5) {
                r.late += 1;
            }
            let id = r.sent;
            let frame = format!(
                "{{\"type\":\"publish\",\"id\":{id},\"channel\":\"{channel}\",\"data\":{id}}}"
            );
            let at = Instant::now();
            if let Err(e) = ws.send(Message::text(frame)).await {
                r.failure = Some(format!("victim write: {e}"));
                r.unanswered = pending.len() as u64 + 1;
                break;
            }
            pending.push_back((id, at));
            r.sent += 1;
            r.last_send_ns = ns(at);
            continue;
        }
        let wake = if sending { due } else { give_up };
        let m = tokio::select! {
            m = ws.next() => m,
            _ = sleep_until(wake.into()) => continue,
        };
        let now = Instant::now();
        let m = match m {
            None => Err("eof".to_string()),
            Some(Err(e)) => Err(format!("read: {e}")),
            Some(Ok(m @ Message::Close(_))) => Err(describe_close(&m)),
            Some(Ok(m)) => Ok(m),
        };
        let text = match m {
            Ok(Message::Text(t)) => t,
            Ok(_) => continue,
            Err(e) => {
                r.failure = Some(format!("victim: {e}"));
                r.unanswered = pending.len() as u64;
                break;
            }
        };
        let text = text.as_str();
        let ty = sb_type(text);
        if ty == "disconnect" {
            r.failure = Some(format!("victim: {text}"));
            r.unanswered = pending.len() as u64;
            break;
        }
        let (Some(id), true) = (sb_id(text), ty == "published" || ty == "error") else {
            continue;
        };
        let Some(pos) = pending.iter().position(|(i, _)| *i == id) else {
            continue;
        };
        let (_, at) = pending.remove(pos).unwrap_or((id, now));
        if ty == "published" {
            r.samples.push((ns(at), (now - at).as_nanos() as u64));
        } else {
            *r.errors.entry(sb_error_code(text)).or_default() += 1;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    r
}
