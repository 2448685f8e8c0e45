//! The subscribers of a fan-out or latency run: the counters they share with the publisher
//! (`Shared`: latency histogram, deliveries, gaps, bytes, why connections ended), the
//! per-channel sequence check, and the receive loop on the raw socket (which inflates
//! compressed messages and splits batched ones).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

use crate::cli::Protocol;
use crate::histogram::Histogram;
use crate::setup::{Conn, ConnOpts};
use crate::wire::find_stamp;
use crate::wire::nats::{NatsEvent, NatsParser};
use crate::wire::raw::{client_frame, RawEvent};
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
    /// Bytes the subscribers read off their sockets (frame headers and all, compressed as
    /// they came).
    pub wire_bytes: AtomicU64,
    /// WebSocket data messages the subscribers received, how many were compressed, and
    /// their bytes once inflated.
    pub messages: AtomicU64,
    pub compressed_messages: AtomicU64,
    /// Compressed messages actually inflated (fewer than compressed with `--inflate shared`).
    pub inflated_messages: AtomicU64,
    pub message_bytes: AtomicU64,
    pub ended: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    pub fn new() -> Self {
        Shared {
            epoch: Instant::now(),
            hist: Histogram::new(),
            received: AtomicU64::new(0),
            wake_at: AtomicU64::new(u64::MAX),
            wake: tokio::sync::Notify::new(),
            gaps: AtomicU64::new(0),
            dups: AtomicU64::new(0),
            unparsed: AtomicU64::new(0),
            error_frames: AtomicU64::new(0),
            wire_bytes: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            compressed_messages: AtomicU64::new(0),
            inflated_messages: AtomicU64::new(0),
            message_bytes: AtomicU64::new(0),
            ended: Mutex::new(BTreeMap::new()),
        }
    }

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

/// One Switchboard text message: a frame, or with `batch` several, one a line (the server
/// never puts a raw newline inside a frame of a batching connection).
fn sb_text(t: &[u8], batch: bool, check: &mut SeqCheck, shared: &Shared) {
    if batch {
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', t).chain([t.len()]) {
            if end > start {
                sb_frame(&t[start..end], check, shared);
            }
            start = end + 1;
        }
    } else {
        sb_frame(t, check, shared);
    }
}

/// One Switchboard frame (a whole text message, or one line of a batched one).
fn sb_frame(frame: &[u8], check: &mut SeqCheck, shared: &Shared) {
    if let Some(stamp) = sb_stamp(frame) {
        check.deliver(shared, Some(stamp));
    } else {
        match sb_type(&String::from_utf8_lossy(frame)) {
            "error" => {
                shared.error_frames.fetch_add(1, Relaxed);
            }
            "disconnect" => {}
            _ => {
                shared.unparsed.fetch_add(1, Relaxed);
            }
        }
    }
}

/// A subscriber's receive loop. After the set-up it reads WebSocket frames straight off the
/// socket: tungstenite's per-message cost made the load generator, not the server, the
/// limit above about 3 M deliveries/s.
pub async fn run_subscriber(
    conn: Conn,
    mut parser: NatsParser,
    proto: Protocol,
    opts: ConnOpts,
    shared_inflate: bool,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut stream, mut reader) = conn.into_raw(opts.compress);
    reader.shared_inflate = shared_inflate;
    let mut check = SeqCheck { next: 0 };
    // Bytes a raw set-up read past its last reply are part of the measurement.
    let mut fresh = reader.end - reader.start;
    loop {
        if fresh == 0 {
            let n = tokio::select! {
                biased;
                _ = stop.changed() => return,
                n = stream.read(reader.spare()) => n,
            };
            match n {
                Ok(0) => {
                    shared.note_end("eof".into());
                    return;
                }
                Ok(n) => {
                    reader.end += n;
                    fresh = n;
                }
                Err(e) => {
                    shared.note_end(format!("error: {e}"));
                    return;
                }
            }
        }
        shared.wire_bytes.fetch_add(fresh as u64, Relaxed);
        fresh = 0;
        let mut pongs: Vec<Vec<u8>> = Vec::new();
        let mut ended: Option<String> = None;
        let r = reader.parse(|ev| match ev {
            RawEvent::Text(t) if proto == Protocol::Switchboard => {
                sb_text(t, opts.batch, &mut check, &shared);
                true
            }
            RawEvent::Binary(b) if proto == Protocol::Nats => {
                let mut ping = false;
                let r = parser.feed(b, |ev| match ev {
                    NatsEvent::Msg(p) => check.deliver(&shared, find_stamp(p)),
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
        let counts = reader.take_counts();
        shared.messages.fetch_add(counts.messages, Relaxed);
        shared
            .compressed_messages
            .fetch_add(counts.compressed, Relaxed);
        shared.inflated_messages.fetch_add(counts.inflated, Relaxed);
        shared.message_bytes.fetch_add(counts.bytes, Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u64) -> String {
        format!(
            r#"{{"type":"message","channel":"c","offset":{},"data":{{"stamp":"t=1 s={seq}","orders":[]}}}}"#,
            seq + 1
        )
    }

    /// A batched message splits back into its frames, in order, with no gap; the same text
    /// read without `batch` is one frame (its first stamp), so the split is what counts them.
    #[test]
    fn batched_messages_split_into_frames_in_order() {
        let shared = Shared::new();
        let mut check = SeqCheck { next: 0 };
        let batch = [message(0), message(1), message(2)].join("\n");
        sb_text(batch.as_bytes(), true, &mut check, &shared);
        sb_text(message(3).as_bytes(), true, &mut check, &shared);
        let two = format!("{}\n{}\n", message(4), r#"{"type":"error","code":"x"}"#);
        sb_text(two.as_bytes(), true, &mut check, &shared);
        assert_eq!(shared.received.load(Relaxed), 5);
        assert_eq!(shared.gaps.load(Relaxed), 0);
        assert_eq!(shared.dups.load(Relaxed), 0);
        assert_eq!(shared.error_frames.load(Relaxed), 1);
        assert_eq!(check.next, 5);

        let plain = Shared::new();
        let mut check = SeqCheck { next: 0 };
        sb_text(batch.as_bytes(), false, &mut check, &plain);
        assert_eq!(plain.received.load(Relaxed), 1);
    }
}
