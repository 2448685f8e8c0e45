//! `idle`: N connections (each optionally subscribed to a channel of its own) held open and
//! idle, to measure the server's resident memory per connection. Spreads the connections
//! over several 127.0.0.x source addresses when one would run out of ephemeral ports. With
//! `--compress` every connection has negotiated permessage-deflate (the set-up fails
//! otherwise), to see what the extension costs a connection that does nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use crate::cli::{check_target, label, with_batch, IdleArgs, MAX_CONNECTIONS};
use crate::net::{resolve, Endpoint, Ws};
use crate::os::{raise_nofile, sample_server, self_cpu};
use crate::report::round;
use crate::setup::{count_ready, describe_close, setup_conn, ConnOpts};
use crate::wire::nats::{nats_frame, NatsEvent, NatsParser};
use crate::Res;

pub async fn hold(mut ws: Ws, mut parser: NatsParser, mut stop: watch::Receiver<bool>) -> String {
    loop {
        let m = tokio::select! {
            biased;
            _ = stop.changed() => return String::new(),
            m = ws.next() => m,
        };
        match m {
            None => return "eof".into(),
            Some(Err(e)) => return format!("error: {e}"),
            Some(Ok(Message::Binary(b))) => {
                let mut ping = false;
                if parser
                    .feed(&b, |ev| {
                        if let NatsEvent::Ping = ev {
                            ping = true
                        }
                    })
                    .is_err()
                {
                    return "protocol error".into();
                }
                if ping && ws.send(nats_frame("PONG\r\n")).await.is_err() {
                    return "write failed".into();
                }
            }
            Some(Ok(m @ Message::Close(_))) => return describe_close(&m),
            Some(Ok(_)) => {}
        }
    }
}

pub async fn idle(args: IdleArgs) -> Res<bool> {
    let mut ep = check_target(&args.target)?;
    if args.target.batch {
        ep = resolve(&with_batch(&ep.url))?;
    }
    if args.connections == 0 || args.connections > MAX_CONNECTIONS {
        return Err(format!("--connections must be in 1..={MAX_CONNECTIONS}").into());
    }
    if !(args.settle >= 0.0 && args.settle <= 60.0) {
        return Err("--settle must be in [0, 60]".into());
    }
    if args.per_source_ip == 0 || args.per_source_ip > 28_000 {
        return Err("--per-source-ip must be in 1..=28000".into());
    }
    let bound = Duration::from_secs_f64(args.target.setup_timeout + args.settle + 30.0);
    match tokio::time::timeout(bound, idle_inner(args, ep)).await {
        Ok(r) => r,
        Err(_) => Err(format!("run did not finish within {bound:?}; aborted").into()),
    }
}

pub async fn idle_inner(args: IdleArgs, ep: Endpoint) -> Res<bool> {
    let n = args.connections;
    let proto = args.target.protocol;
    raise_nofile(n as u64 + 64)?;
    // Spread over several source addresses when one would run out of ephemeral ports.
    let spread = n > args.per_source_ip;
    if spread && !ep.addr.is_ipv4() {
        return Err(format!(
            "{n} connections need several source addresses, which only an IPv4 (127.x) target allows"
        )
        .into());
    }
    if spread && n.div_ceil(args.per_source_ip) > 250 {
        return Err("too many connections for the 127.0.0.x source addresses".into());
    }
    let ep = Arc::new(ep);
    let server_before = sample_server(args.target.server_pid)?;
    let cpu_before = self_cpu();
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(args.target.setup_timeout);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let (end_tx, mut end_rx) = mpsc::unbounded_channel::<String>();
    let gate = Arc::new(Semaphore::new(args.target.connect_concurrency));
    let tag = std::process::id();
    let opts = ConnOpts {
        compress: args.target.compress,
        batch: args.target.batch,
        big: false,
    };
    for i in 0..n {
        let (ep, gate, stop_rx) = (ep.clone(), gate.clone(), stop_rx.clone());
        let (ready_tx, end_tx) = (ready_tx.clone(), end_tx.clone());
        let source = spread
            .then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i / args.per_source_ip) as u8)));
        let channel = args.subscribe.then(|| format!("idle.{tag}.{i}"));
        tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let conn = setup_conn(&ep, proto, channel.as_deref(), source, opts, deadline).await;
            drop(permit);
            match conn {
                Ok((conn, parser)) => {
                    let _ = ready_tx.send(Ok(()));
                    drop(ready_tx);
                    let ws = conn.into_ws(false).await;
                    let why = hold(ws, parser, stop_rx).await;
                    if !why.is_empty() {
                        let _ = end_tx.send(why);
                    }
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                }
            }
        });
    }
    drop(ready_tx);
    drop(end_tx);
    let (ready, failed, first_error) = count_ready(&mut ready_rx, n).await;
    let connect_s = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let server_after = sample_server(args.target.server_pid)?;
    let cpu_after = self_cpu();
    let mut dropped = BTreeMap::<String, u64>::new();
    while let Ok(why) = end_rx.try_recv() {
        *dropped.entry(why).or_default() += 1;
    }
    let _ = stop_tx.send(true);

    let label = label(&args.target);
    let held = ready as u64 - dropped.values().sum::<u64>();
    let per_conn = match (server_before, server_after) {
        (Some(a), Some(b)) if held > 0 => Some((b.rss_kib as f64 - a.rss_kib as f64) / held as f64),
        _ => None,
    };
    let client_cpu = cpu_after - cpu_before;
    let ok = failed == 0 && dropped.is_empty();
    let mut human = format!(
        "[{label}] idle connections={n} subscribe={}{}{}: {held} held, {failed} failed, connected in {connect_s:.2} s",
        args.subscribe,
        if args.target.compress { " compress" } else { "" },
        if args.target.batch { " batch" } else { "" },
    );
    if let (Some(a), Some(b), Some(k)) = (server_before, server_after, per_conn) {
        let _ = write!(
            human,
            "; server RSS {:.1} -> {:.1} MiB = {k:.1} KiB per connection, server CPU {:.2} s",
            a.rss_kib as f64 / 1024.0,
            b.rss_kib as f64 / 1024.0,
            b.cpu_s - a.cpu_s
        );
    }
    let _ = write!(human, "; bench CPU {client_cpu:.2} s");
    if let Some(e) = &first_error {
        let _ = write!(human, "; first error: {e}");
    }
    if !dropped.is_empty() {
        let _ = write!(human, "; dropped while idle: {dropped:?}");
    }
    outln!("{human}");
    let record = json!({
        "mode": "idle",
        "label": label,
        "protocol": proto.name(),
        "url": args.target.url,
        "connections": n,
        "subscribe": args.subscribe,
        "compress": args.target.compress,
        "batch": args.target.batch,
        "held": held,
        "failed": failed,
        "first_error": first_error,
        "dropped": dropped,
        "source_ips": if spread { n.div_ceil(args.per_source_ip) } else { 1 },
        "connect_s": round(connect_s, 3),
        "settle_s": args.settle,
        "server_pid": args.target.server_pid,
        "server_rss_kib_before": server_before.map(|s| s.rss_kib),
        "server_rss_kib_after": server_after.map(|s| s.rss_kib),
        "kib_per_connection": per_conn.map(|k| round(k, 2)),
        "server_cpu_s": match (server_before, server_after) {
            (Some(a), Some(b)) => Some(round(b.cpu_s - a.cpu_s, 3)),
            _ => None,
        },
        "client_cpu_s": round(client_cpu, 3),
        "ok": ok,
    });
    outln!("{record}");
    // Give the connection tasks a moment to close their sockets.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(ok || !args.strict)
}
