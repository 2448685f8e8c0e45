//! `flood`: can one connection saturate the engine for everyone? M victim connections publish
//! at a fixed rate on channels of their own and time each publish; once they are going, one
//! flooding connection pipelines N queries on distinct unknown channels. This file sets the
//! run up, counts the keys the run left in the engine's Redis (DBSIZE before and after), and
//! writes the human line and the JSON record. The two sides are `victim` and `flooder`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod flooder;
mod victim;

use crate::cli::{check_target, label, validate_flood, FloodArgs, Protocol};
use crate::histogram::Histogram;
use crate::net::Endpoint;
use crate::os::{core_times, other_load, proc_sample, raise_nofile, sample_server, self_cpu};
use crate::report::{fmt_ms, ms, round};
use crate::setup::{setup_conn, ConnOpts};
use crate::Res;
use flooder::{spawn_flooder, FloodPlan, FloodResult};
use victim::{run_victim, Schedule, VictimResult};

pub async fn flood(args: FloodArgs) -> Res<bool> {
    validate_flood(&args)?;
    let ep = check_target(&args.target)?;
    let redis = args.redis.as_deref().map(redis_addr).transpose()?;
    let bound = Duration::from_secs_f64(
        args.target.setup_timeout + args.max_duration + 2.0 * args.drain + 30.0,
    );
    match tokio::time::timeout(bound, flood_inner(args, ep, redis)).await {
        Ok(r) => r,
        Err(_) => Err(format!("run did not finish within {bound:?}; aborted").into()),
    }
}

fn redis_addr(s: &str) -> Res<SocketAddr> {
    let a: SocketAddr = s
        .parse()
        .map_err(|_| format!("--redis {s:?}: give IP:PORT, such as 127.0.0.1:6390"))?;
    if !a.ip().is_loopback() {
        return Err(format!("refusing non-loopback Redis {a}").into());
    }
    Ok(a)
}

/// Asks one command of the Redis and returns the number at the head of its reply: the
/// integer of DBSIZE, or the element count of KEYS (the names themselves are not read).
async fn redis_count(addr: SocketAddr, cmd: &[&str]) -> Res<u64> {
    let ask = async {
        let mut req = format!("*{}\r\n", cmd.len());
        for a in cmd {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(req.as_bytes()).await?;
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n") && head.len() < 64 {
            let mut byte = [0u8; 1];
            if s.read(&mut byte).await? == 0 {
                break;
            }
            head.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&head);
        text.trim_end()
            .strip_prefix([':', '*'])
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{} answered {text:?}", cmd[0]).into())
    };
    match tokio::time::timeout(Duration::from_secs(5), ask).await {
        Ok(r) => r.map_err(|e: crate::BoxError| format!("redis {addr}: {e}").into()),
        Err(_) => Err(format!("redis {addr}: {} timed out", cmd[0]).into()),
    }
}

async fn flood_inner(args: FloodArgs, ep: Endpoint, redis: Option<SocketAddr>) -> Res<bool> {
    let ep = Arc::new(ep);
    raise_nofile(args.victims as u64 + 64)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tag = format!("{}.{}", std::process::id(), nanos % 100_000);
    let flood_prefix = format!("flood.{tag}.q");
    let flood_done = Arc::new(AtomicBool::new(args.flood == 0));
    let setup_timeout = Duration::from_secs_f64(args.target.setup_timeout);
    let flooder = if args.flood > 0 {
        Some(spawn_flooder(
            FloodPlan {
                ep: ep.clone(),
                n: args.flood,
                command: args.command,
                window: args.flood_window,
                prefix: flood_prefix.clone(),
                after: Duration::from_secs_f64(args.flood_after),
                give_up: Duration::from_secs_f64(args.max_duration + args.drain),
                setup_timeout,
            },
            flood_done.clone(),
        )?)
    } else {
        None
    };
    let deadline = tokio::time::Instant::now() + setup_timeout;
    let mut victims = Vec::with_capacity(args.victims);
    for k in 0..args.victims {
        let (ws, _) = setup_conn(
            &ep,
            Protocol::Switchboard,
            None,
            None,
            ConnOpts::PLAIN,
            deadline,
        )
        .await
        .map_err(|e| format!("victim {k}: {e}"))?;
        victims.push(ws.into_ws(true).await);
    }
    let (go, mut result_rx) = match flooder {
        Some(f) => {
            f.ready
                .await
                .map_err(|_| "the flooder thread ended")?
                .map_err(|e| e.to_string())?;
            (Some(f.go), Some(f.result))
        }
        None => (None, None),
    };

    let keys_before = match redis {
        Some(a) => Some(redis_count(a, &["DBSIZE"]).await?),
        None => None,
    };
    let server_before = sample_server(args.target.server_pid)?;
    let redis_before = args.redis_pid.and_then(proc_sample);
    let core_before = args.target.server_cpu.and_then(core_times);
    let cpu_before = self_cpu();
    let start = Instant::now() + Duration::from_millis(50);
    if let Some(go) = go {
        let _ = go.send(start);
    }
    let mut tasks = Vec::with_capacity(args.victims);
    for (k, ws) in victims.into_iter().enumerate() {
        // Victims spread over the period, not all at the same instant.
        let s = Schedule {
            start,
            offset: Duration::from_secs_f64(k as f64 / (args.victim_rate * args.victims as f64)),
            rate: args.victim_rate,
            min_stop: start + Duration::from_secs_f64(args.duration),
            max_stop: start + Duration::from_secs_f64(args.max_duration),
            drain: Duration::from_secs_f64(args.drain),
        };
        let channel = format!("flood.{tag}.v{k}");
        tasks.push(tokio::spawn(run_victim(ws, channel, s, flood_done.clone())));
    }
    let fr = match result_rx.take() {
        Some(rx) => Some(rx.await.map_err(|_| "the flooder thread ended early")?),
        None => None,
    };
    let mut vr = Vec::with_capacity(tasks.len());
    for t in tasks {
        vr.push(t.await.map_err(|e| format!("victim task: {e}"))?);
    }
    let end = Instant::now();
    let cpu_after = self_cpu();
    let server_after = sample_server(args.target.server_pid)?;
    let redis_after = args.redis_pid.and_then(proc_sample);
    let core_after = args.target.server_cpu.and_then(core_times);
    let keys_after = match redis {
        Some(a) => Some(redis_count(a, &["DBSIZE"]).await?),
        None => None,
    };
    // Of those, the keys named after the flood's channels (the victims' channels have some).
    let flood_keys = match redis {
        Some(a) if args.flood > 0 => {
            Some(redis_count(a, &["KEYS", &format!("*{flood_prefix}.*")]).await?)
        }
        _ => None,
    };

    let measured_s = (end - start).as_secs_f64().max(1e-9);
    let server = match (server_before, server_after) {
        (Some(a), Some(b)) => Some((b.cpu_s - a.cpu_s, a.rss_kib, b.rss_kib)),
        _ => None,
    };
    let redis_cpu = match (redis_before, redis_after) {
        (Some(a), Some(b)) => Some(b.cpu_s - a.cpu_s),
        _ => None,
    };
    // Redis shares the server's core in scripts/bench-flood.sh: its time is not "other".
    let other = other_load(
        core_before,
        core_after,
        server.map(|s| s.0 + redis_cpu.unwrap_or(0.0)),
    );
    let keys = match (keys_before, keys_after) {
        (Some(a), Some(b)) => Some(b as i64 - a as i64),
        _ => None,
    };
    let record = Record {
        args: &args,
        fr: fr.as_ref(),
        vr: &vr,
        measured_s,
        client_cpu: cpu_after - cpu_before,
        server,
        redis_cpu,
        other,
        keys: (keys_before, keys_after, keys),
        flood_keys,
    };
    let (human, json, ok) = record.render();
    outln!("{human}");
    outln!("{json}");
    Ok(ok || !args.strict)
}

struct Record<'a> {
    args: &'a FloodArgs,
    fr: Option<&'a FloodResult>,
    vr: &'a [VictimResult],
    measured_s: f64,
    client_cpu: f64,
    /// Server CPU seconds, RSS before and after (KiB).
    server: Option<(f64, u64, u64)>,
    redis_cpu: Option<f64>,
    other: Option<f64>,
    /// Redis keys before, after, and the difference.
    keys: (Option<u64>, Option<u64>, Option<i64>),
    /// Redis keys named after the flood's channels, after the run.
    flood_keys: Option<u64>,
}

fn lat_json(h: &Histogram) -> Value {
    let max = (h.count() > 0).then(|| h.max.load(std::sync::atomic::Ordering::Relaxed));
    json!({
        "p50": ms(h.quantile(0.5)),
        "p99": ms(h.quantile(0.99)),
        "p999": ms(h.quantile(0.999)),
        "max": ms(max),
        "count": h.count(),
    })
}

impl Record<'_> {
    fn render(&self) -> (String, Value, bool) {
        let a = self.args;
        let all = Histogram::new();
        let during = Histogram::new();
        // The flood's span: from its first command to its last reply.
        let span = self.fr.map(|f| (f.first_send_ns, f.end_ns));
        let mut errors = BTreeMap::<String, u64>::new();
        let (mut sent, mut unanswered, mut late, mut last_send_ns) = (0, 0, 0, 0);
        let mut failures = Vec::new();
        for v in self.vr {
            for &(at, rtt) in &v.samples {
                all.record(rtt);
                if span.is_some_and(|(s, e)| at >= s && at <= e) {
                    during.record(rtt);
                }
            }
            for (k, n) in &v.errors {
                *errors.entry(k.clone()).or_default() += n;
            }
            sent += v.sent;
            unanswered += v.unanswered;
            late += v.late;
            last_send_ns = last_send_ns.max(v.last_send_ns);
            failures.extend(v.failure.clone());
        }
        let victim_bad = errors.values().sum::<u64>() + unanswered + failures.len() as u64;
        let flood_ok = self
            .fr
            .is_none_or(|f| f.unanswered == 0 || f.disconnected.is_some());
        let ok = victim_bad == 0 && flood_ok && all.count() > 0;
        let label = label(&a.target);
        let q = |h: &Histogram, p: f64| fmt_ms(h.quantile(p));
        let hmax = |h: &Histogram| {
            (h.count() > 0).then(|| h.max.load(std::sync::atomic::Ordering::Relaxed))
        };
        let mut human = format!(
            "[{label}] flood victims={}x{}/s flood={} {} window={}: victims' publish round trip p50 {} p99 {} max {} over {} publications",
            a.victims,
            a.victim_rate,
            a.flood,
            a.command.name(),
            a.flood_window,
            q(&all, 0.5),
            q(&all, 0.99),
            fmt_ms(hmax(&all)),
            all.count(),
        );
        if during.count() > 0 {
            let _ = write!(
                human,
                " (during the flood: p50 {} p99 {} max {} over {})",
                q(&during, 0.5),
                q(&during, 0.99),
                fmt_ms(hmax(&during)),
                during.count()
            );
        }
        if victim_bad > 0 {
            let _ = write!(
                human,
                "; victim errors {errors:?}, unanswered {unanswered}, failures {failures:?}"
            );
        }
        if late > 0 {
            let _ = write!(human, "; victim sends late {late}");
        }
        if let Some(f) = self.fr {
            let _ = write!(
                human,
                "; flood: sent {} in {:.2} s, over in {:.2} s, replies {:?}",
                f.sent,
                (f.last_send_ns - f.first_send_ns) as f64 / 1e9,
                (f.end_ns - f.first_send_ns) as f64 / 1e9,
                f.replies
            );
            if f.unanswered > 0 {
                let _ = write!(human, ", unanswered {}", f.unanswered);
            }
            if let Some(d) = &f.disconnected {
                let _ = write!(human, ", disconnected: {d}");
            }
            if let Some(w) = &f.write_failure {
                let _ = write!(human, ", {w}");
            }
        }
        if let (Some(b), Some(k)) = (self.keys.1, self.keys.2) {
            let _ = write!(human, "; Redis keys {k:+} (now {b})");
            if let Some(f) = self.flood_keys {
                let _ = write!(human, ", {f} of the flood's channels");
            }
        }
        if let Some((cpu, _, _)) = self.server {
            let _ = write!(
                human,
                "; server CPU {cpu:.2} s ({:.0}% of a core)",
                100.0 * cpu / self.measured_s
            );
        }
        if let Some(r) = self.redis_cpu {
            let _ = write!(human, ", Redis CPU {r:.2} s");
        }
        if let Some(o) = self.other {
            let _ = write!(human, "; other load on the server's core {o:.0}%");
        }
        let _ = write!(human, "; bench CPU {:.2} s", self.client_cpu);
        let flood = self.fr.map(|f| {
            let s = |ns: u64| round((ns - f.first_send_ns) as f64 / 1e9, 3);
            json!({
                "sent": f.sent,
                "replies": f.replies,
                "unanswered": f.unanswered,
                "disconnected": f.disconnected,
                "write_failure": f.write_failure,
                "start_s": round(f.first_send_ns as f64 / 1e9, 3),
                "send_s": s(f.last_send_ns),
                "duration_s": s(f.end_ns),
            })
        });
        let record = json!({
            "mode": "flood",
            "label": label,
            "protocol": "switchboard",
            "url": a.target.url,
            "victims": a.victims,
            "victim_rate": a.victim_rate,
            "flood": a.flood,
            "command": a.command.name(),
            "flood_window": a.flood_window,
            "victim_publish_s": round(last_send_ns as f64 / 1e9, 3),
            "measured_s": round(self.measured_s, 3),
            "victim_sent": sent,
            "victim_published": all.count(),
            "victim_errors": errors,
            "victim_unanswered": unanswered,
            "victim_late": late,
            "victim_failures": failures,
            "latency_ms": lat_json(&all),
            "latency_during_flood_ms": if self.fr.is_some() { lat_json(&during) } else { Value::Null },
            "flood_result": flood,
            "flood_unanswered": self.fr.map(|f| f.unanswered),
            "redis_keys_before": self.keys.0,
            "redis_keys_after": self.keys.1,
            "redis_keys_created": self.keys.2,
            "redis_flood_keys": self.flood_keys,
            "server_pid": a.target.server_pid,
            "server_cpu_s": self.server.map(|s| round(s.0, 3)),
            "server_cpu_pct": self.server.map(|s| round(100.0 * s.0 / self.measured_s, 1)),
            "server_rss_kib_before": self.server.map(|s| s.1),
            "server_rss_kib_after": self.server.map(|s| s.2),
            "redis_cpu_s": self.redis_cpu.map(|r| round(r, 3)),
            "server_core_other_pct": self.other.map(|o| round(o, 1)),
            "client_cpu_s": round(self.client_cpu, 3),
            "client_cpu_pct": round(100.0 * self.client_cpu / self.measured_s, 1),
            "ok": ok,
        });
        (human, record, ok)
    }
}
