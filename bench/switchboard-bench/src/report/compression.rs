//! `switchboard-bench compression`: the "Compression" section's tables in
//! docs/benchmarks.md (scripts/bench-compression.sh), from one run's records: bytes on the
//! wire per delivery with and without permessage-deflate, fan-out with every subscriber
//! compressed against the same server plain and the reference compressed, memory per idle
//! connection with the extension, and issue 12's targets against them.

use std::path::PathBuf;

use serde_json::Value;

use super::{case_key_opt, fmt_lat, fmt_pct, fmt_rate, fmt_ratio, lat, num, read_rows};
use crate::Res;

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn compressed(v: &Value) -> bool {
    v.get("compress").and_then(Value::as_bool) == Some(true)
}

fn on_off(v: &Value) -> &'static str {
    if compressed(v) {
        "deflate"
    } else {
        "off"
    }
}

fn fmt_num(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// Distinct values of `key_of` over `rows`, in order of first appearance.
fn distinct(rows: &[&Value], key_of: impl Fn(&Value) -> String) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in rows {
        let k = key_of(r);
        if !out.contains(&k) {
            out.push(k);
        }
    }
    out
}

fn lost(r: &Value) -> String {
    let lost = num(r, "lost").unwrap_or(0.0);
    let dropped: u64 = r
        .get("subscribers_dropped")
        .and_then(Value::as_object)
        .map_or(0, |d| d.values().filter_map(Value::as_u64).sum());
    let mut out = format!("{lost:.0}");
    if dropped > 0 {
        out.push_str(&format!(", {dropped} subs dropped"));
    }
    if r.get("failure").is_some_and(|f| !f.is_null()) {
        out.push_str(", publisher failed");
    }
    out
}

pub fn compression(files: &[PathBuf], reference: &str, server: &str) -> Res<()> {
    let rows = read_rows(files)?;
    let json_rows = |mode: &str| -> Vec<&Value> {
        rows.iter()
            .filter(|r| s(r, "mode") == mode && s(r, "payload") == "json")
            .collect()
    };
    let pick = |set: &[&'_ Value], label: &str, key: &str, deflate: bool| -> Option<Value> {
        set.iter()
            .find(|r| {
                s(r, "label") == label && case_key_opt(r, false) == key && compressed(r) == deflate
            })
            .map(|r| (*r).clone())
    };
    let mut targets: Vec<(String, String, String)> = Vec::new();
    let verdict = |met: bool| if met { "yes" } else { "no" }.to_string();

    // Bytes on the wire per delivery.
    let bytes = json_rows("latency");
    if !bytes.is_empty() {
        outln!("### Bytes on the wire per delivery\n");
        outln!("| payload | server | message B, as the client reads it | on the wire, off | on the wire, deflate | fewer bytes | messages compressed | bench CPU µs per delivery, off → deflate | lost |");
        outln!("|---|---|---:|---:|---:|---:|---:|---:|---|");
        let keys = distinct(&bytes, |r| case_key_opt(r, false));
        let labels = distinct(&bytes, |r| s(r, "label").to_string());
        for key in &keys {
            for label in &labels {
                let (off, on) = (
                    pick(&bytes, label, key, false),
                    pick(&bytes, label, key, true),
                );
                if off.is_none() && on.is_none() {
                    continue;
                }
                let wire =
                    |r: &Option<Value>| r.as_ref().and_then(|r| num(r, "wire_bytes_per_delivery"));
                let cpu = |r: &Option<Value>| {
                    r.as_ref()
                        .and_then(|r| num(r, "client_cpu_us_per_delivery"))
                };
                let share = on.as_ref().and_then(|r| {
                    let m = num(r, "messages")?;
                    (m > 0.0).then(|| 100.0 * num(r, "compressed_messages").unwrap_or(0.0) / m)
                });
                let message = off
                    .as_ref()
                    .or(on.as_ref())
                    .and_then(|r| num(r, "message_bytes_per_delivery"));
                let ratio = match (wire(&off), wire(&on)) {
                    (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                    _ => None,
                };
                let size = off.as_ref().or(on.as_ref()).and_then(|r| num(r, "size"));
                let losses: Vec<String> = [&off, &on]
                    .iter()
                    .filter_map(|r| r.as_ref().map(lost))
                    .collect();
                outln!(
                    "| {} B JSON | {label} | {} | {} | {} | {} | {} | {} → {} | {} |",
                    size.unwrap_or(0.0),
                    fmt_num(message, 0),
                    fmt_num(wire(&off), 0),
                    fmt_num(wire(&on), 0),
                    ratio.map_or("-".into(), |r| format!("{r:.2}×")),
                    fmt_pct(share),
                    fmt_num(cpu(&off), 2),
                    fmt_num(cpu(&on), 2),
                    losses.join(" / "),
                );
                if label == server {
                    let want = match size.map(|s| s as u64) {
                        Some(1024) => Some(2.5),
                        Some(16384) => Some(4.0),
                        _ => None,
                    };
                    if let Some(want) = want {
                        targets.push((
                            format!("≥ {want}× fewer bytes per delivery: {key}"),
                            ratio.map_or("-".into(), |r| format!("{r:.2}×")),
                            ratio.map_or("not measured".into(), |r| verdict(r >= want)),
                        ));
                    }
                }
            }
        }
        outln!();
    }

    // Fan-out.
    // A case run several times (scripts/bench-compression.sh repeats the fan-out cases on a
    // machine shared with other work): the run whose server core had the least other load
    // stands for it, and the others' figures are listed beside it.
    let all_fanout = json_rows("fanout");
    let other = |v: &Value| num(v, "server_core_other_pct").unwrap_or(0.0);
    let mut fanout: Vec<&Value> = Vec::new();
    let mut all_runs: Vec<String> = Vec::new();
    for r in &all_fanout {
        let same = |x: &Value| {
            s(x, "label") == s(r, "label")
                && case_key_opt(x, false) == case_key_opt(r, false)
                && compressed(x) == compressed(r)
        };
        if fanout.iter().any(|x| same(x)) {
            continue;
        }
        let group: Vec<&Value> = all_fanout.iter().copied().filter(|x| same(x)).collect();
        let best = group
            .iter()
            .copied()
            .min_by(|a, b| other(a).total_cmp(&other(b)))
            .unwrap_or(r);
        fanout.push(best);
        all_runs.push(
            group
                .iter()
                .map(|g| {
                    format!(
                        "{} ({})",
                        fmt_rate(num(g, "delivered_per_s")),
                        fmt_pct(num(g, "server_core_other_pct"))
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    if !fanout.is_empty() {
        outln!("### Fan-out with every subscriber compressed\n");
        outln!("| case | server | compression | deliveries/s | × same server, off | × {reference}, deflate | p50 ms | p99 ms | B per delivery on the wire | server CPU | bench CPU | bench CPU µs per delivery | other load | lost | every run: deliveries/s (other load) |");
        outln!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|");
        let keys = distinct(&fanout, |r| case_key_opt(r, false));
        for key in &keys {
            let rate = |label: &str, deflate: bool| {
                pick(&fanout, label, key, deflate).and_then(|r| num(&r, "delivered_per_s"))
            };
            let ref_on = rate(reference, true);
            for (r, runs) in fanout
                .iter()
                .zip(&all_runs)
                .filter(|(r, _)| case_key_opt(r, false) == *key)
            {
                let label = s(r, "label");
                let d = num(r, "delivered_per_s");
                let plain = rate(label, false);
                outln!(
                    "| {key} | {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {runs} |",
                    on_off(r),
                    fmt_rate(d),
                    if compressed(r) {
                        fmt_ratio(d, plain)
                    } else {
                        "-".into()
                    },
                    if compressed(r) {
                        fmt_ratio(d, ref_on)
                    } else {
                        "-".into()
                    },
                    fmt_lat(lat(r, "p50")),
                    fmt_lat(lat(r, "p99")),
                    fmt_num(num(r, "wire_bytes_per_delivery"), 0),
                    fmt_pct(num(r, "server_cpu_pct")),
                    fmt_pct(num(r, "client_cpu_pct")),
                    fmt_num(num(r, "client_cpu_us_per_delivery"), 2),
                    fmt_pct(num(r, "server_core_other_pct")),
                    lost(r),
                );
            }
            let (ours_on, ours_off) = (rate(server, true), rate(server, false));
            if let (Some(a), Some(b)) = (ours_on, ours_off) {
                targets.push((
                    format!("compressed ≥ 70% of uncompressed: {key}"),
                    format!("{:.0}%", 100.0 * a / b),
                    verdict(a >= 0.7 * b),
                ));
            }
            if let Some(a) = ours_on {
                targets.push((
                    format!("compressed ahead of {reference} compressed: {key}"),
                    fmt_ratio(Some(a), ref_on),
                    ref_on.map_or("not measured".into(), |b| verdict(a > b)),
                ));
            }
        }
        outln!();
    }

    // Idle memory.
    let idle: Vec<&Value> = rows.iter().filter(|r| s(r, "mode") == "idle").collect();
    if !idle.is_empty() {
        outln!("### Memory per idle connection\n");
        outln!("| case | server | compression | KiB per connection | server RSS before → after | failed |");
        outln!("|---|---|---|---:|---:|---:|");
        for r in &idle {
            let k = num(r, "kib_per_connection");
            let mib = |key: &str| fmt_num(num(r, key).map(|v| v / 1024.0), 1);
            outln!(
                "| {} | {} | {} | {} | {} → {} MiB | {} |",
                case_key_opt(r, false),
                s(r, "label"),
                on_off(r),
                fmt_num(k, 1),
                mib("server_rss_kib_before"),
                mib("server_rss_kib_after"),
                num(r, "failed").unwrap_or(0.0),
            );
            if s(r, "label") == server && compressed(r) {
                targets.push((
                    format!(
                        "≤ 6 KiB per idle connection with the extension: {}",
                        case_key_opt(r, false)
                    ),
                    fmt_num(k, 1) + " KiB",
                    k.map_or("not measured".into(), |k| verdict(k <= 6.0)),
                ));
            }
        }
        outln!();
    }

    if !targets.is_empty() {
        outln!("### Against issue 12's targets\n");
        outln!("| target (issue 12) | {server} | met? |");
        outln!("|---|---:|---|");
        for (what, figure, met) in targets {
            outln!("| {what} | {figure} | {met} |");
        }
        outln!();
    }
    Ok(())
}
