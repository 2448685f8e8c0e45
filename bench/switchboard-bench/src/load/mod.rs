//! `fanout` and `latency`: S subscribers over C channels and one publisher, measured
//! together. This file sets the run up (subscribers first, a bounded number of handshakes at
//! a time), samples the server and this process around the publisher's run, and writes the
//! human line and the JSON record. The two sides are `subscriber` and `publisher`.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use serde_json::json;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::timeout_at;

mod publisher;
mod subscriber;

use crate::cli::{check_target, label, validate_load, with_batch, Inflate, LoadArgs, PayloadKind};
use crate::net::{resolve, Endpoint};
use crate::os::{core_times, other_load, raise_nofile, sample_server, self_cpu};
use crate::report::{fmt_ms, ms, round};
use crate::setup::{count_ready, setup_conn, ConnOpts};
use crate::Res;
use publisher::run_publisher;
use subscriber::{run_subscriber, Shared};

pub async fn load(args: LoadArgs, rate: Option<f64>) -> Res<bool> {
    validate_load(&args, rate)?;
    let ep = check_target(&args.target)?;
    let bound = Duration::from_secs_f64(
        args.target.setup_timeout + args.duration + args.drain.max(1.0) + 30.0,
    );
    match tokio::time::timeout(bound, load_inner(args, rate, ep)).await {
        Ok(r) => r,
        Err(_) => Err(format!("run did not finish within {bound:?}; aborted").into()),
    }
}

pub async fn load_inner(args: LoadArgs, rate: Option<f64>, ep: Endpoint) -> Res<bool> {
    let ep = Arc::new(ep);
    let proto = args.target.protocol;
    raise_nofile(args.subscribers as u64 + 64)?;
    let shared = Arc::new(Shared::new());
    let run_id = format!(
        "{}{}",
        std::process::id(),
        shared.epoch.elapsed().subsec_nanos() % 1000
    );
    let channels: Arc<Vec<String>> = Arc::new(
        (0..args.channels)
            .map(|c| format!("bench.{run_id}.{c}"))
            .collect(),
    );
    let sub_url = |u: &str| {
        let u = u.trim();
        if args.target.batch {
            resolve(&with_batch(u))
        } else {
            resolve(u)
        }
    };
    let sub_eps: Vec<Arc<Endpoint>> = match &args.sub_urls {
        Some(list) => list
            .split(',')
            .map(|u| sub_url(u).map(Arc::new))
            .collect::<Res<Vec<_>>>()?,
        None => vec![Arc::new(sub_url(&ep.url)?)],
    };
    let sub_opts = ConnOpts {
        compress: args.target.compress,
        batch: args.target.batch,
        big: true,
    };
    let pub_opts = ConnOpts::PLAIN;
    let shared_inflate = args.inflate == Inflate::Shared;
    if sub_eps.is_empty() {
        return Err("--sub-urls lists no URL".into());
    }
    let mut subs_per_channel = vec![0u64; args.channels];
    for i in 0..args.subscribers {
        subs_per_channel[i % args.channels] += 1;
    }

    // Subscribers: connect and subscribe, a bounded number of handshakes at a time.
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(args.target.setup_timeout);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let gate = Arc::new(Semaphore::new(args.target.connect_concurrency));
    let setup_start = Instant::now();
    let mut tasks = Vec::with_capacity(args.subscribers);
    for i in 0..args.subscribers {
        let (ep, channels, shared, gate) = (
            sub_eps[i % sub_eps.len()].clone(),
            channels.clone(),
            shared.clone(),
            gate.clone(),
        );
        let (ready_tx, stop_rx) = (ready_tx.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let ch = &channels[i % channels.len()];
            let conn = setup_conn(&ep, proto, Some(ch), None, sub_opts, deadline).await;
            drop(permit);
            match conn {
                Ok((conn, parser)) => {
                    let _ = ready_tx.send(Ok(()));
                    drop(ready_tx);
                    run_subscriber(
                        conn,
                        parser,
                        proto,
                        sub_opts,
                        shared_inflate,
                        shared,
                        stop_rx,
                    )
                    .await;
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                }
            }
        }));
    }
    drop(ready_tx);
    let (ready, failed, first_error) = count_ready(&mut ready_rx, args.subscribers).await;
    if failed > 0 || ready < args.subscribers {
        let _ = stop_tx.send(true);
        return Err(format!(
            "{failed} of {} subscribers failed to connect and subscribe; first error: {}",
            args.subscribers,
            first_error.unwrap_or_default()
        )
        .into());
    }
    let setup_s = setup_start.elapsed().as_secs_f64();

    let (publisher, _) = setup_conn(&ep, proto, None, None, pub_opts, deadline)
        .await
        .map_err(|e| format!("publisher: {e}"))?;
    let mut publisher = publisher.into_ws(true).await;

    // Measure.
    let server_before = sample_server(args.target.server_pid)?;
    let core_before = args.target.server_cpu.and_then(core_times);
    let cpu_before = self_cpu();
    let pr = run_publisher(
        &mut publisher,
        proto,
        &channels,
        &subs_per_channel,
        &args,
        rate,
        &shared,
    )
    .await;
    let expected: u64 = pr
        .per_channel
        .iter()
        .zip(&subs_per_channel)
        .map(|(p, s)| p * s)
        .sum();
    let drain_until = Instant::now() + Duration::from_secs_f64(args.drain);
    while shared.received.load(Relaxed) < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let end = Instant::now();
    let cpu_after = self_cpu();
    let server_after = sample_server(args.target.server_pid)?;
    let core_after = args.target.server_cpu.and_then(core_times);
    let _ = stop_tx.send(true);
    let _ = publisher.close(None).now_or_never();
    drop(publisher);
    let stop_wait = tokio::time::Instant::now() + Duration::from_secs(2);
    for t in tasks {
        if timeout_at(stop_wait, t).await.is_err() {
            break;
        }
    }

    // Report.
    let received = shared.received.load(Relaxed);
    let lost = expected.saturating_sub(received);
    let window_s = (pr.stop - pr.start).as_secs_f64().max(1e-9);
    let measured_s = (end - pr.start).as_secs_f64().max(1e-9);
    let delivered_per_s = pr.received_at_stop as f64 / window_s;
    let published_per_s = pr.published as f64 / window_s;
    let h = &shared.hist;
    let (p50, p99, p999) = (h.quantile(0.5), h.quantile(0.99), h.quantile(0.999));
    let max = if h.count() > 0 {
        Some(h.max.load(Relaxed))
    } else {
        None
    };
    let client_cpu = cpu_after - cpu_before;
    let server = match (server_before, server_after) {
        (Some(a), Some(b)) => Some((b.cpu_s - a.cpu_s, a.rss_kib, b.rss_kib)),
        _ => None,
    };
    let other = other_load(core_before, core_after, server.map(|s| s.0));
    let ended = shared
        .ended
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let dropped: u64 = ended.values().sum();
    let mode = if rate.is_some() { "latency" } else { "fanout" };
    let label = label(&args.target);
    let ok = pr.failure.is_none() && lost == 0 && dropped == 0 && received > 0;

    let wire_bytes = shared.wire_bytes.load(Relaxed);
    let messages = shared.messages.load(Relaxed);
    let compressed = shared.compressed_messages.load(Relaxed);
    let inflated = shared.inflated_messages.load(Relaxed);
    let message_bytes = shared.message_bytes.load(Relaxed);
    let per_delivery = |v: f64| (received > 0).then(|| v / received as f64);
    let wire_per = per_delivery(wire_bytes as f64);
    let message_per = per_delivery(message_bytes as f64);
    let cpu_us_per = per_delivery(client_cpu * 1e6);
    let mut flags = String::new();
    if args.payload != PayloadKind::Stamp {
        let _ = write!(flags, " payload={}", args.payload.name());
    }
    if args.target.compress {
        flags.push_str(" compress");
        if args.inflate == Inflate::Shared {
            flags.push_str(" inflate=shared");
        }
    }
    if args.target.batch {
        flags.push_str(" batch");
    }
    let mut human = format!(
        "[{label}] {mode} subs={} channels={} size={}B{flags}{}: {:.0} deliveries/s, latency p50 {} p99 {} p99.9 {} max {}; published {} ({:.0}/s), expected {expected}, received {received}, lost {lost}",
        args.subscribers,
        args.channels,
        args.size,
        rate.map(|r| format!(" rate={r}/s")).unwrap_or_default(),
        delivered_per_s,
        fmt_ms(p50),
        fmt_ms(p99),
        fmt_ms(p999),
        fmt_ms(max),
        pr.published,
        published_per_s,
    );
    let gaps = shared.gaps.load(Relaxed);
    let dups = shared.dups.load(Relaxed);
    if gaps + dups > 0 {
        let _ = write!(human, ", gaps {gaps}, out-of-order/dup {dups}");
    }
    if !pr.rejected.is_empty() {
        let _ = write!(human, ", publish errors {:?}", pr.rejected);
    }
    if dropped > 0 {
        let _ = write!(human, ", subscribers dropped {ended:?}");
    }
    if pr.late > 0 {
        let _ = write!(human, ", sent late {}", pr.late);
    }
    let _ = write!(
        human,
        "; bench CPU {:.2} s ({:.0}%)",
        client_cpu,
        100.0 * client_cpu / measured_s
    );
    if let (Some(w), Some(m), Some(c)) = (wire_per, message_per, cpu_us_per) {
        let _ = write!(
            human,
            "; per delivery: {w:.1} B read off the socket, {m:.1} B of messages ({compressed} of {messages} messages compressed, {inflated} inflated), bench CPU {c:.2} µs"
        );
    }
    if let Some((cpu, rb, ra)) = server {
        let _ = write!(
            human,
            "; server CPU {:.2} s ({:.0}% of a core), RSS {:.1} -> {:.1} MiB",
            cpu,
            100.0 * cpu / measured_s,
            rb as f64 / 1024.0,
            ra as f64 / 1024.0
        );
    }
    if let Some(o) = other {
        let _ = write!(human, "; other load on the server's core {o:.0}%");
    }
    if let Some(f) = &pr.failure {
        let _ = write!(human, "; FAILURE: {f}");
    }
    if pr.unanswered > 0 {
        let _ = write!(human, "; {} publications unanswered", pr.unanswered);
    }
    outln!("{human}");
    let record = json!({
        "mode": mode,
        "label": label,
        "protocol": proto.name(),
        "sub_nodes": args.sub_urls.as_deref().map_or(1, |l| l.split(',').count()),
        "url": args.target.url,
        "subscribers": args.subscribers,
        "channels": args.channels,
        "size": args.size,
        "payload": args.payload.name(),
        "compress": args.target.compress,
        "batch": args.target.batch,
        "window": args.window,
        "flow": format!("{:?}", args.flow).to_lowercase(),
        "rate": rate,
        "duration_s": round(window_s, 3),
        "measured_s": round(measured_s, 3),
        "setup_s": round(setup_s, 3),
        "sent": pr.sent,
        "published": pr.published,
        "published_per_s": round(published_per_s, 1),
        "publish_errors": pr.rejected,
        "unanswered": pr.unanswered,
        "late": pr.late,
        "expected": expected,
        "received": received,
        "lost": lost,
        "gaps": gaps,
        "dups": dups,
        "unparsed": shared.unparsed.load(Relaxed),
        "error_frames": shared.error_frames.load(Relaxed),
        "subscribers_dropped": ended,
        "delivered_per_s": round(delivered_per_s, 1),
        "latency_ms": {"p50": ms(p50), "p99": ms(p99), "p999": ms(p999), "max": ms(max), "count": h.count()},
        "client_cpu_s": round(client_cpu, 3),
        "client_cpu_pct": round(100.0 * client_cpu / measured_s, 1),
        "client_cpu_us_per_delivery": cpu_us_per.map(|v| round(v, 3)),
        "wire_bytes": wire_bytes,
        "wire_bytes_per_delivery": wire_per.map(|v| round(v, 1)),
        "messages": messages,
        "compressed_messages": compressed,
        "inflate": format!("{:?}", args.inflate).to_lowercase(),
        "inflated_messages": inflated,
        "message_bytes_per_delivery": message_per.map(|v| round(v, 1)),
        "server_pid": args.target.server_pid,
        "server_cpu_s": server.map(|s| round(s.0, 3)),
        "server_cpu_pct": server.map(|s| round(100.0 * s.0 / measured_s, 1)),
        "server_rss_kib_before": server.map(|s| s.1),
        "server_rss_kib_after": server.map(|s| s.2),
        "server_core_other_pct": other.map(|o| round(o, 1)),
        "failure": pr.failure,
        "ok": ok,
    });
    outln!("{record}");
    Ok(ok || !args.strict)
}
