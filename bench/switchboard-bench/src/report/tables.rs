//! `switchboard-bench table` and `problems`: the Markdown tables of docs/benchmarks.md, one
//! row per run with ratios against a reference server (the flood runs' table is `flood`'s),
//! and one line per run that failed.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::Value;

use super::flood::flood_table;
use super::{case_key, fmt_lat, fmt_pct, fmt_rate, fmt_ratio, lat, num, read_rows};
use crate::Res;

pub fn problems(files: &[PathBuf]) -> Res<()> {
    for r in read_rows(files)? {
        if r.get("ok").and_then(Value::as_bool) != Some(false) {
            continue;
        }
        let label = r.get("label").and_then(Value::as_str).unwrap_or("?");
        let mut line = format!(
            "{label}: {} {}",
            r["mode"].as_str().unwrap_or(""),
            case_key(&r)
        );
        let keys: &[&str] = if r["mode"] == "idle" {
            &["held", "failed", "first_error", "dropped"]
        } else if r["mode"] == "flood" {
            &[
                "victim_errors",
                "victim_unanswered",
                "victim_failures",
                "flood_unanswered",
            ]
        } else {
            &[
                "expected",
                "received",
                "lost",
                "gaps",
                "dups",
                "subscribers_dropped",
                "publish_errors",
                "unanswered",
                "failure",
            ]
        };
        for k in keys {
            match r.get(*k) {
                None | Some(Value::Null) => {}
                Some(Value::Number(n)) if n.as_u64() == Some(0) => {}
                Some(Value::Object(o)) if o.is_empty() => {}
                Some(Value::Array(a)) if a.is_empty() => {}
                Some(v) => {
                    let _ = write!(line, ", {k} {v}");
                }
            }
        }
        outln!("{line}");
    }
    Ok(())
}

pub fn table(files: &[PathBuf], reference: &str) -> Res<()> {
    let rows = read_rows(files)?;
    let label_of = |v: &Value| {
        v.get("label")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string()
    };
    let mode_of = |v: &Value| {
        v.get("mode")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    // Cases in order of first appearance; within a case, rows in the order they came.
    let mut cases: Vec<(String, String)> = Vec::new();
    for r in &rows {
        let k = (mode_of(r), case_key(r));
        if !cases.contains(&k) {
            cases.push(k);
        }
    }
    let find_ref = |mode: &str, key: &str| {
        rows.iter()
            .find(|r| mode_of(r) == mode && case_key(r) == key && label_of(r) == reference)
    };
    for (title, mode) in [
        (
            "Fan-out throughput (publisher as fast as its window allows)",
            "fanout",
        ),
        ("Latency at a fixed publish rate", "latency"),
    ] {
        if !cases.iter().any(|(m, _)| m == mode) {
            continue;
        }
        outln!("### {title}\n");
        outln!("| case | server | deliveries/s | × {reference} | p50 ms | p99 ms | p99.9 ms | p99 × {reference} | published | lost | server CPU | bench CPU | other load |");
        outln!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (_, key) in cases.iter().filter(|(m, _)| m == mode) {
            let reference_row = find_ref(mode, key);
            for r in rows
                .iter()
                .filter(|r| mode_of(r) == mode && &case_key(r) == key)
            {
                let rate = num(r, "delivered_per_s");
                let lost = num(r, "lost").unwrap_or(0.0);
                let expected = num(r, "expected").unwrap_or(0.0);
                let mut lost_s = format!("{lost:.0}");
                if lost > 0.0 && expected > 0.0 {
                    let _ = write!(lost_s, " ({:.2}%)", 100.0 * lost / expected);
                }
                if let Some(d) = r.get("subscribers_dropped").and_then(Value::as_object) {
                    let n: u64 = d.values().filter_map(Value::as_u64).sum();
                    if n > 0 {
                        let _ = write!(lost_s, ", {n} subs dropped");
                    }
                }
                if r.get("failure").is_some_and(|f| !f.is_null()) {
                    lost_s.push_str(", publisher failed");
                }
                outln!(
                    "| {key} | {} | {} | {} | {} | {} | {} | {} | {} | {lost_s} | {} | {} | {} |",
                    label_of(r),
                    fmt_rate(rate),
                    fmt_ratio(rate, reference_row.and_then(|x| num(x, "delivered_per_s"))),
                    fmt_lat(lat(r, "p50")),
                    fmt_lat(lat(r, "p99")),
                    fmt_lat(lat(r, "p999")),
                    fmt_ratio(lat(r, "p99"), reference_row.and_then(|x| lat(x, "p99"))),
                    num(r, "published")
                        .map(|p| format!("{p:.0}"))
                        .unwrap_or_default(),
                    fmt_pct(num(r, "server_cpu_pct")),
                    fmt_pct(num(r, "client_cpu_pct")),
                    fmt_pct(num(r, "server_core_other_pct")),
                );
            }
        }
        outln!();
    }
    flood_table(&rows);
    if cases.iter().any(|(m, _)| m == "idle") {
        outln!("### Idle connections: server memory\n");
        outln!("| case | server | KiB per connection | × {reference} | server RSS before → after | connect time | failed |");
        outln!("|---|---|---:|---:|---:|---:|---:|");
        for (_, key) in cases.iter().filter(|(m, _)| m == "idle") {
            let reference_row = find_ref("idle", key);
            for r in rows
                .iter()
                .filter(|r| mode_of(r) == "idle" && &case_key(r) == key)
            {
                let k = num(r, "kib_per_connection");
                let mib = |key: &str| {
                    num(r, key)
                        .map(|v| format!("{:.1}", v / 1024.0))
                        .unwrap_or_else(|| "-".into())
                };
                outln!(
                    "| {key} | {} | {} | {} | {} → {} MiB | {} s | {} |",
                    label_of(r),
                    k.map(|k| format!("{k:.1}")).unwrap_or_else(|| "-".into()),
                    fmt_ratio(k, reference_row.and_then(|x| num(x, "kib_per_connection"))),
                    mib("server_rss_kib_before"),
                    mib("server_rss_kib_after"),
                    num(r, "connect_s")
                        .map(|s| format!("{s:.1}"))
                        .unwrap_or_else(|| "-".into()),
                    num(r, "failed").unwrap_or(0.0),
                );
            }
        }
        outln!();
    }
    Ok(())
}
