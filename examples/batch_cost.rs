//! What a batch (`?batch=true`) costs the node and weighs on the wire, for a compressed
//! connection, three ways: every frame its own message (no batch), the batch as the node
//! writes it (the publications' shared compressed forms chained in one message,
//! src/batch.rs), and the batch deflated again for each connection (what a server with
//! per-connection compression would do). The node's own code makes the first two; the
//! third joins the same payloads and deflates them with the same function.
//!
//! Run with `cargo run --release --example batch_cost` (docs/benchmarks.md has its table).
//! Each case fans `k` publications of realistic JSON (`deflate::sample`) out to `n`
//! connections, fresh frames each round so the compress-once pass is counted, and reports
//! node CPU time and bytes written per delivery.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use prometheus::IntCounter;
use switchboard::batch::Batcher;
use switchboard::deflate::offer::Agreed;
use switchboard::deflate::{compress, sample};
use switchboard::frame::{Encoding, Wire, WsFrame};

/// Connections each publication goes to.
const SUBSCRIBERS: usize = 100;
/// Each case runs at least this long.
const RUN: Duration = Duration::from_millis(700);

fn encoding(batch: bool) -> Encoding {
    let counter = || IntCounter::new("unregistered", "-").expect("a valid name");
    let wire = Arc::new(Wire::new(256, counter(), counter(), counter()));
    let agreed = Agreed {
        server_max_window_bits: 15,
    };
    Encoding::new(wire, Some(agreed)).batched(batch)
}

/// `k` distinct `message` frames whose `data` is about `size` bytes, in a channel's order.
fn frames(k: usize, size: usize, round: usize) -> Vec<WsFrame> {
    (0..k)
        .map(|i| WsFrame::text(&sample::publication(size, (round * k + i) as u64)))
        .collect()
}

/// How one connection's batch is written.
#[derive(Clone, Copy)]
enum Way {
    Separate,
    Chained,
    PerConnection,
}

/// Writes `frames` for one connection the `way` given; returns the bytes written.
fn write(way: Way, frames: &[WsFrame], plain: &Encoding, batched: &Encoding) -> usize {
    let mut out = BytesMut::new();
    match way {
        Way::Separate | Way::Chained => {
            let enc = if matches!(way, Way::Chained) {
                batched
            } else {
                plain
            };
            let mut b = Batcher::new(enc);
            for f in frames {
                b.push(&mut out, f);
            }
            b.finish(&mut out);
        }
        Way::PerConnection => {
            let joined: Vec<u8> = frames
                .iter()
                .map(|f| f.payload())
                .collect::<Vec<_>>()
                .join(&b'\n');
            let body = compress(&joined).unwrap_or(joined);
            out.extend_from_slice(&body);
            // Plus the frame header the node would put before it.
            let header = match body.len() {
                0..=125 => 2,
                126..=65535 => 4,
                _ => 10,
            };
            return out.len() + header;
        }
    }
    out.len()
}

/// Node CPU per delivery (ns) and bytes per delivery.
fn measure(way: Way, k: usize, size: usize) -> (f64, f64) {
    let (plain, batched) = (encoding(false), encoding(true));
    let (mut rounds, mut bytes, mut spent) = (0usize, 0usize, Duration::ZERO);
    while spent < RUN {
        let fresh = frames(k, size, rounds);
        let start = Instant::now();
        for _ in 0..SUBSCRIBERS {
            bytes += write(way, &fresh, &plain, &batched);
        }
        spent += start.elapsed();
        rounds += 1;
    }
    let deliveries = (rounds * k * SUBSCRIBERS) as f64;
    (
        spent.as_nanos() as f64 / deliveries,
        bytes as f64 / deliveries,
    )
}

fn main() {
    println!(
        "{SUBSCRIBERS} compressed subscribers; node CPU (ns) and bytes written per delivery\n"
    );
    println!(
        "| publication | batch of | no batch | chained batch (default) | deflated per connection |"
    );
    println!("|---|---|---|---|---|");
    for size in [64usize, 1024, 16 * 1024] {
        for k in [1usize, 4, 16] {
            let cells: Vec<String> = [Way::Separate, Way::Chained, Way::PerConnection]
                .into_iter()
                .map(|way| {
                    let (ns, b) = measure(way, k, size);
                    format!("{ns:.0} ns, {b:.0} B")
                })
                .collect();
            println!("| {size} B | {k} | {} |", cells.join(" | "));
        }
    }
}
