//! `switchboard-bench targets`: issue 4's performance targets against one run's records.

use std::path::PathBuf;

use serde_json::Value;

use super::{case_key, fmt_lat, fmt_rate, fmt_ratio, lat, num, read_rows};
use crate::Res;

/// Issue 4's targets, each with this run's figures: fan-out and many channels at least the
/// reference's deliveries/s, at most 6 KiB per idle subscribed connection, p99 under 5 ms at
/// 20,000 deliveries/s, and no loss.
pub fn targets(files: &[PathBuf], reference: &str, server: &str) -> Res<()> {
    let rows = read_rows(files)?;
    let find = |label: &str, mode: &str, key: &str| {
        rows.iter().find(|r| {
            r.get("label").and_then(Value::as_str) == Some(label)
                && r.get("mode").and_then(Value::as_str) == Some(mode)
                && case_key(r) == key
        })
    };
    let yes_no = |met: bool, short: String| {
        if met {
            "yes".to_string()
        } else {
            format!("no, {short}")
        }
    };
    outln!("| target (issue 4) | {server} | {reference} | ratio | met? |");
    outln!("|---|---:|---:|---:|---|");
    let throughput = |what: &str, key: &str| {
        let ours = find(server, "fanout", key).and_then(|r| num(r, "delivered_per_s"));
        let theirs = find(reference, "fanout", key).and_then(|r| num(r, "delivered_per_s"));
        let met = match (ours, theirs) {
            (Some(a), Some(b)) => yes_no(a >= b, format!("{:.0}% short", 100.0 * (1.0 - a / b))),
            _ => "not measured in this run".into(),
        };
        outln!(
            "| {what} ≥ {reference}: {key} | {} | {} | {} | {met} |",
            fmt_rate(ours),
            fmt_rate(theirs),
            fmt_ratio(ours, theirs)
        );
    };
    for subs in [100, 1000] {
        for size in [64, 1024] {
            throughput("fan-out", &format!("{subs} subs, 1 channel, {size} B"));
        }
    }
    throughput("many channels", "1000 subs, 1000 channels, 64 B");
    for n in [10_000, 50_000] {
        let key = format!("{n} connections, each subscribed");
        let kib =
            |label: &str| find(label, "idle", &key).and_then(|r| num(r, "kib_per_connection"));
        let (ours, theirs) = (kib(server), kib(reference));
        let met = match ours {
            Some(k) => yes_no(k <= 6.0, format!("{:.1} KiB over", k - 6.0)),
            None => "not measured in this run".into(),
        };
        let fmt = |v: Option<f64>| v.map_or("-".into(), |k| format!("{k:.1} KiB"));
        outln!(
            "| ≤ 6 KiB per idle subscribed connection: {key} | {} | {} | {} | {met} |",
            fmt(ours),
            fmt(theirs),
            fmt_ratio(ours, theirs)
        );
    }
    let key = "100 subs, 1 channel, 64 B @ 20 k deliveries/s";
    let p99 = |label: &str| find(label, "latency", key).and_then(|r| lat(r, "p99"));
    let (ours, theirs) = (p99(server), p99(reference));
    let met = match ours {
        Some(ms) => yes_no(ms < 5.0, format!("{:.2} ms over", ms - 5.0)),
        None => "not measured in this run".into(),
    };
    outln!(
        "| p99 < 5 ms: {key} | {} ms | {} ms | {} | {met} |",
        fmt_lat(ours),
        fmt_lat(theirs),
        fmt_ratio(ours, theirs)
    );
    let mut runs = 0;
    let mut lossy = Vec::new();
    for r in rows
        .iter()
        .filter(|r| r.get("label").and_then(Value::as_str) == Some(server))
        .filter(|r| r.get("mode").and_then(Value::as_str) != Some("idle"))
    {
        runs += 1;
        let dropped: u64 = r
            .get("subscribers_dropped")
            .and_then(Value::as_object)
            .map_or(0, |d| d.values().filter_map(Value::as_u64).sum());
        if num(r, "lost").unwrap_or(0.0) > 0.0 || dropped > 0 {
            lossy.push(case_key(r));
        }
    }
    let met = if lossy.is_empty() {
        "yes".to_string()
    } else {
        format!("no: {}", lossy.join("; "))
    };
    outln!(
        "| no loss: every delivery of every confirmed publication | {} of {runs} runs lossless | | | {met} |",
        runs - lossy.len()
    );
    outln!();
    Ok(())
}
