//! The flooding connection of a flood run: N `history` (or `presence`) commands, each on a
//! channel of its own that nobody uses, written as fast as the socket (and, with a window, the
//! replies) allow while the replies are read and counted by kind at the same time. It runs on a thread and runtime of
//! its own, so its busy writing does not delay the victims' schedule on the main runtime
//! (`flood` starts it with `spawn_flooder` and reads its `FloodResult`).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{oneshot, Notify};
use tokio::time::{sleep_until, timeout, timeout_at};
use tokio_tungstenite::tungstenite::Message;

use crate::cli::{FloodCommand, Protocol};
use crate::net::{Endpoint, Ws};
use crate::setup::{describe_close, setup_conn, ConnOpts};
use crate::wire::switchboard::{sb_error_code, sb_type};
use crate::Res;

/// Frames fed between two flushes (and two chances for the reader to run).
const BATCH: u64 = 64;

pub struct FloodPlan {
    pub ep: Arc<Endpoint>,
    /// Commands to send.
    pub n: u64,
    pub command: FloodCommand,
    /// Commands kept unanswered at most (0: no bound).
    pub window: u64,
    /// Channel names are `<prefix>.<i>`: distinct, and unknown to the server.
    pub prefix: String,
    /// How long after the run's start the flood starts.
    pub after: Duration,
    /// How long after the run's start the flood gives up on sending and on replies.
    pub give_up: Duration,
    pub setup_timeout: Duration,
}

#[derive(Default)]
pub struct FloodResult {
    /// Commands written to the socket.
    pub sent: u64,
    /// Replies by kind: the command's own reply type, or the error code.
    pub replies: BTreeMap<String, u64>,
    /// Commands with no reply when the flood ended.
    pub unanswered: u64,
    /// How the server ended the connection, if it did (`disconnect` frame or close).
    pub disconnected: Option<String>,
    pub write_failure: Option<String>,
    /// ns from the run's start: first command sent, last one sent, last reply (or the end).
    pub first_send_ns: u64,
    pub last_send_ns: u64,
    pub end_ns: u64,
}

pub struct Flooder {
    /// The connection is open and greeted (or why not).
    pub ready: oneshot::Receiver<Result<(), String>>,
    /// The run's start; the flood begins `after` it.
    pub go: oneshot::Sender<Instant>,
    pub result: oneshot::Receiver<FloodResult>,
}

/// Opens the flooding connection on a thread of its own; `done` is set once the flood is over
/// (every command answered, the connection ended, or `give_up` reached).
pub fn spawn_flooder(plan: FloodPlan, done: Arc<AtomicBool>) -> Res<Flooder> {
    let (ready_tx, ready) = oneshot::channel();
    let (go, go_rx) = oneshot::channel::<Instant>();
    let (result_tx, result) = oneshot::channel();
    std::thread::Builder::new()
        .name("flooder".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("flooder runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let deadline = tokio::time::Instant::now() + plan.setup_timeout;
                let conn = setup_conn(
                    &plan.ep,
                    Protocol::Switchboard,
                    None,
                    None,
                    ConnOpts::PLAIN,
                    deadline,
                )
                .await;
                let ws = match conn {
                    Ok((conn, _)) => conn.into_ws(true).await,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("flooder: {e}")));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let Ok(start) = go_rx.await else {
                    return;
                };
                sleep_until((start + plan.after).into()).await;
                let r = flood_on(ws, &plan, start).await;
                done.store(true, Relaxed);
                let _ = result_tx.send(r);
            });
            rt.shutdown_background();
        })?;
    Ok(Flooder { ready, go, result })
}

async fn flood_on(ws: Ws, plan: &FloodPlan, start: Instant) -> FloodResult {
    let ns = |t: Instant| t.saturating_duration_since(start).as_nanos() as u64;
    let give_up = tokio::time::Instant::from(start + plan.give_up);
    let (mut sink, mut stream) = ws.split();
    let sent = Cell::new(0u64);
    let written = Cell::new(false);
    let reader_done = Cell::new(false);
    let answered = Cell::new(0u64);
    let wake = Notify::new();
    let room = Notify::new();
    let cmd = plan.command.name();
    let first_send = Instant::now();

    let writer = async {
        let mut failure = None;
        for i in 0..plan.n {
            if reader_done.get() {
                break;
            }
            if plan.window > 0 && i.saturating_sub(answered.get()) >= plan.window {
                // Full window: what was fed goes out, then wait for a reply.
                match timeout_at(give_up, sink.flush()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => failure = Some(format!("flush: {e}")),
                    Err(_) => failure = Some("flush timed out".to_string()),
                }
                while failure.is_none()
                    && !reader_done.get()
                    && i.saturating_sub(answered.get()) >= plan.window
                {
                    if timeout_at(give_up, room.notified()).await.is_err() {
                        failure = Some("gave up waiting for replies".to_string());
                    }
                }
                if failure.is_some() || reader_done.get() {
                    break;
                }
            }
            let frame = format!(
                "{{\"type\":\"{cmd}\",\"id\":{i},\"channel\":\"{}.{i}\"}}",
                plan.prefix
            );
            match timeout_at(give_up, sink.feed(Message::text(frame))).await {
                Ok(Ok(())) => sent.set(i + 1),
                Ok(Err(e)) => {
                    failure = Some(format!("write: {e}"));
                    break;
                }
                Err(_) => {
                    failure = Some("write timed out".to_string());
                    break;
                }
            }
            if (i + 1) % BATCH == 0 {
                match timeout_at(give_up, sink.flush()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => failure = Some(format!("flush: {e}")),
                    Err(_) => failure = Some("flush timed out".to_string()),
                }
                if failure.is_some() {
                    break;
                }
                // The reader runs on this task too: let it take the replies that came.
                tokio::task::yield_now().await;
            }
        }
        if failure.is_none() {
            match timeout_at(give_up, sink.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failure = Some(format!("flush: {e}")),
                Err(_) => failure = Some("flush timed out".to_string()),
            }
        }
        written.set(true);
        wake.notify_one();
        (failure, Instant::now(), sink)
    };

    let reader = async {
        let mut replies = BTreeMap::<String, u64>::new();
        let mut disconnected = None;
        let mut last_reply = None;
        loop {
            if written.get() && answered.get() >= sent.get() {
                break;
            }
            let m = tokio::select! {
                m = timeout_at(give_up, stream.next()) => m,
                _ = wake.notified() => continue,
            };
            let m = match m {
                Err(_) => break,
                Ok(None) => {
                    disconnected.get_or_insert_with(|| "eof".to_string());
                    break;
                }
                Ok(Some(Err(e))) => {
                    disconnected.get_or_insert_with(|| format!("read: {e}"));
                    break;
                }
                Ok(Some(Ok(m))) => m,
            };
            match &m {
                Message::Text(t) => {
                    let text = t.as_str();
                    let ty = sb_type(text);
                    let kind = if ty == "error" {
                        sb_error_code(text)
                    } else if ty == cmd {
                        ty.to_string()
                    } else {
                        // The server's `disconnect` comes before its close frame.
                        if ty == "disconnect" {
                            disconnected = Some(text.to_string());
                        }
                        continue;
                    };
                    answered.set(answered.get() + 1);
                    room.notify_one();
                    last_reply = Some(Instant::now());
                    *replies.entry(kind).or_default() += 1;
                }
                Message::Close(_) => {
                    disconnected.get_or_insert_with(|| describe_close(&m));
                    last_reply = Some(Instant::now());
                    break;
                }
                _ => {}
            }
        }
        reader_done.set(true);
        room.notify_one();
        (replies, disconnected, last_reply)
    };

    let ((write_failure, last_send, mut sink), (replies, disconnected, last_reply)) =
        tokio::join!(writer, reader);
    let _ = timeout(Duration::from_secs(1), sink.close()).await;
    let sent = sent.get();
    FloodResult {
        sent,
        replies,
        unanswered: sent.saturating_sub(answered.get()),
        disconnected,
        write_failure,
        first_send_ns: ns(first_send),
        last_send_ns: ns(last_send),
        end_ns: ns(last_reply.unwrap_or(last_send).max(last_send)),
    }
}
