//! The flood runs' table in docs/benchmarks.md (`switchboard-bench table` calls it): one row
//! per run, with the victims' publish round trip over the whole run and during the flood,
//! what the flood got back by kind, and the Redis keys the run left.

use std::fmt::Write as _;

use serde_json::Value;

use super::{case_key, fmt_lat, fmt_pct, num};

fn lat_in(v: &Value, key: &str, q: &str) -> Option<f64> {
    v.get(key).and_then(|l| l.get(q)).and_then(Value::as_f64)
}

fn count(v: Option<&Value>) -> String {
    v.and_then(Value::as_u64)
        .map(|n| n.to_string())
        .unwrap_or_else(|| "0".into())
}

pub fn flood_table(rows: &[Value]) {
    let rows: Vec<&Value> = rows
        .iter()
        .filter(|r| r.get("mode").and_then(Value::as_str) == Some("flood"))
        .collect();
    if rows.is_empty() {
        return;
    }
    outln!("### Victims' publish round trip while one connection floods\n");
    outln!("| case | server | victims' publications | p50 ms | p99 ms | max ms | during the flood: p99 / max ms | victim errors | flood answered | rate_limited | unavailable | other | flood over in | Redis keys created (of the flood's channels) | server CPU | other load |");
    outln!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let label = r.get("label").and_then(Value::as_str).unwrap_or("?");
        let mut errors = String::new();
        if let Some(e) = r.get("victim_errors").and_then(Value::as_object) {
            for (k, n) in e {
                let _ = write!(
                    errors,
                    "{}{k} {n}",
                    if errors.is_empty() { "" } else { ", " }
                );
            }
        }
        let unanswered = num(r, "victim_unanswered").unwrap_or(0.0);
        if unanswered > 0.0 {
            let _ = write!(
                errors,
                "{}unanswered {unanswered:.0}",
                if errors.is_empty() { "" } else { ", " }
            );
        }
        let failed = r
            .get("victim_failures")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        if failed > 0 {
            let _ = write!(
                errors,
                "{}{failed} failed",
                if errors.is_empty() { "" } else { ", " }
            );
        }
        if errors.is_empty() {
            errors.push('0');
        }
        let during = match (
            lat_in(r, "latency_during_flood_ms", "p99"),
            lat_in(r, "latency_during_flood_ms", "max"),
        ) {
            (None, None) => "-".to_string(),
            (p, m) => format!("{} / {}", fmt_lat(p), fmt_lat(m)),
        };
        let fr = r.get("flood_result").filter(|f| !f.is_null());
        let (answered, limited, unavailable, other, over) = match fr {
            None => ("-".into(), "-".into(), "-".into(), "-".into(), "-".into()),
            Some(f) => {
                let cmd = r.get("command").and_then(Value::as_str).unwrap_or("");
                let replies = f.get("replies").and_then(Value::as_object);
                let by = |k: &str| count(replies.and_then(|m| m.get(k)));
                let mut other = String::new();
                for (k, n) in replies.into_iter().flatten() {
                    if k != cmd && k != "rate_limited" && k != "unavailable" {
                        let _ =
                            write!(other, "{}{k} {n}", if other.is_empty() { "" } else { ", " });
                    }
                }
                let unanswered = f.get("unanswered").and_then(Value::as_u64).unwrap_or(0);
                if unanswered > 0 {
                    let _ = write!(
                        other,
                        "{}unanswered {unanswered}",
                        if other.is_empty() { "" } else { ", " }
                    );
                }
                if f.get("disconnected").is_some_and(|d| !d.is_null()) {
                    let _ = write!(
                        other,
                        "{}disconnected",
                        if other.is_empty() { "" } else { ", " }
                    );
                }
                if other.is_empty() {
                    other.push('0');
                }
                let over = f
                    .get("duration_s")
                    .and_then(Value::as_f64)
                    .map(|s| format!("{s:.2} s"))
                    .unwrap_or_else(|| "-".into());
                (by(cmd), by("rate_limited"), by("unavailable"), other, over)
            }
        };
        let keys = match (
            r.get("redis_keys_created").and_then(Value::as_i64),
            r.get("redis_flood_keys").and_then(Value::as_u64),
        ) {
            (Some(k), Some(f)) => format!("{k} ({f})"),
            (Some(k), None) => k.to_string(),
            _ => "-".into(),
        };
        outln!(
            "| {} | {label} | {} | {} | {} | {} | {during} | {errors} | {answered} | {limited} | {unavailable} | {other} | {over} | {keys} | {} | {} |",
            case_key(r),
            count(r.get("victim_published")),
            fmt_lat(lat_in(r, "latency_ms", "p50")),
            fmt_lat(lat_in(r, "latency_ms", "p99")),
            fmt_lat(lat_in(r, "latency_ms", "max")),
            fmt_pct(num(r, "server_cpu_pct")),
            fmt_pct(num(r, "server_core_other_pct")),
        );
    }
    outln!();
}
