//! The subscribers of a fan-out or latency run: the counters they share with the publisher
//! (`Shared`: latency histogram, deliveries, gaps, why connections ended), the per-channel
//! sequence check, and the receive loop on the raw socket.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

use crate::cli::Protocol;
use crate::histogram::Histogram;
use crate::net::Ws;
use crate::wire::nats::{NatsEvent, NatsParser};
use crate::wire::parse_stamp;
use crate::wire::raw::{client_frame, RawEvent, RawReader};
use crate::wire::switchboard::{sb_stamp, sb_type};

pub struct Shared {
    pub epoch: Instant,
    pub hist: Histogram,
    pub received: AtomicU64,
    /// The publisher waits for `received` to reach this (u64::MAX: not waiting).
    pub wake_at: AtomicU64,
    pub wake: tokio::sync::Notify,
    pub gaps: AtomicU64,
    pub dups: AtomicU64,
    pub unparsed: AtomicU64,
    pub error_frames: AtomicU64,
    pub ended: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub fn note_end(&self, why: String) {
        let mut m = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(why).or_default() += 1;
    }
}

pub struct SeqCheck {
    pub next: u64,
}

impl SeqCheck {
    pub fn deliver(&mut self, shared: &Shared, stamp: Option<(u64, u64)>) {
        match stamp {
            Some((ts, seq)) => {
                let now = shared.now_ns();
                shared.hist.record(now.saturating_sub(ts));
                let got = shared.received.fetch_add(1, Relaxed) + 1;
                if got >= shared.wake_at.load(Relaxed) {
                    shared.wake_at.store(u64::MAX, Relaxed);
                    shared.wake.notify_one();
                }
                if seq >= self.next {
                    shared.gaps.fetch_add(seq - self.next, Relaxed);
                    self.next = seq + 1;
                } else {
                    shared.dups.fetch_add(1, Relaxed);
                }
            }
            None => {
                shared.unparsed.fetch_add(1, Relaxed);
            }
        }
    }
}

/// A subscriber's receive loop. After the set-up (done with tungstenite) it reads WebSocket
/// frames straight off the socket: tungstenite's per-message cost made the load generator,
/// not the server, the limit above about 3 M deliveries/s. The set-up's last reply is the
/// last frame the server sends before the publisher starts, so tungstenite holds nothing
/// unread when the socket is taken from it (anything lost would show as a loss anyway).
pub async fn run_subscriber(
    ws: Ws,
    mut parser: NatsParser,
    proto: Protocol,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = ws.into_inner();
    let mut check = SeqCheck { next: 0 };
    let mut reader = RawReader::new();
    loop {
        let end = reader.end;
        let n = tokio::select! {
            biased;
            _ = stop.changed() => return,
            n = stream.read(&mut reader.buf[end..]) => n,
        };
        match n {
            Ok(0) => {
                shared.note_end("eof".into());
                return;
            }
            Ok(n) => reader.end += n,
            Err(e) => {
                shared.note_end(format!("error: {e}"));
                return;
            }
        }
        let mut pongs: Vec<Vec<u8>> = Vec::new();
        let mut ended: Option<String> = None;
        let r = reader.parse(|ev| match ev {
            RawEvent::Text(t) if proto == Protocol::Switchboard => {
                if let Some(stamp) = sb_stamp(t) {
                    check.deliver(&shared, Some(stamp));
                } else {
                    match sb_type(&String::from_utf8_lossy(t)) {
                        "error" => {
                            shared.error_frames.fetch_add(1, Relaxed);
                        }
                        "disconnect" => {}
                        _ => {
                            shared.unparsed.fetch_add(1, Relaxed);
                        }
                    }
                }
                true
            }
            RawEvent::Binary(b) if proto == Protocol::Nats => {
                let mut ping = false;
                let r = parser.feed(b, |ev| match ev {
                    NatsEvent::Msg(p) => check.deliver(&shared, parse_stamp(p)),
                    NatsEvent::Ping => ping = true,
                    NatsEvent::Err(_) => {
                        shared.error_frames.fetch_add(1, Relaxed);
                    }
                    _ => {}
                });
                if let Err(e) = r {
                    ended = Some(format!("protocol error: {e}"));
                    return false;
                }
                if ping {
                    pongs.push(client_frame(0x2, b"PONG\r\n"));
                }
                true
            }
            RawEvent::Ping(p) => {
                pongs.push(client_frame(0xA, p));
                true
            }
            RawEvent::Close(why) => {
                ended = Some(why);
                false
            }
            _ => true,
        });
        if let Err(e) = r {
            ended = Some(format!("protocol error: {e}"));
        }
        if let Some(why) = ended {
            shared.note_end(why);
            return;
        }
        for p in pongs {
            if stream.write_all(&p).await.is_err() {
                shared.note_end("write failed".into());
                return;
            }
        }
    }
}
