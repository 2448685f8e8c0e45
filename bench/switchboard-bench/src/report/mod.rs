//! Results: the units of the JSON record each run writes (`load`, `idle`, `flood`), and
//! reading those records back (`read_rows`, the formatting and case names the Markdown of
//! `tables`, `flood` and `targets` share).

use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::{json, Value};

use crate::Res;

mod compression;
mod flood;
mod tables;
mod targets;

pub use compression::compression;
pub use tables::{problems, table};
pub use targets::targets;

pub fn ms(ns: Option<u64>) -> Value {
    match ns {
        Some(v) => json!((v as f64 / 1e6 * 1000.0).round() / 1000.0),
        None => Value::Null,
    }
}

pub fn fmt_ms(ns: Option<u64>) -> String {
    match ns {
        Some(v) => format!("{:.3} ms", v as f64 / 1e6),
        None => "-".into(),
    }
}

pub fn round(v: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (v * p).round() / p
}

pub fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

pub fn lat(v: &Value, q: &str) -> Option<f64> {
    v.get("latency_ms")
        .and_then(|l| l.get(q))
        .and_then(Value::as_f64)
}

pub fn fmt_rate(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 1e6 => format!("{:.2} M", v / 1e6),
        Some(v) if v >= 1e4 => format!("{:.0} k", v / 1e3),
        Some(v) if v >= 1e3 => format!("{:.1} k", v / 1e3),
        Some(v) => format!("{v:.0}"),
        None => "-".into(),
    }
}

pub fn fmt_lat(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
        None => "-".into(),
    }
}

pub fn fmt_ratio(v: Option<f64>, r: Option<f64>) -> String {
    match (v, r) {
        (Some(v), Some(r)) if r > 0.0 => format!("{:.2}×", v / r),
        _ => "-".into(),
    }
}

pub fn fmt_pct(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0}%")).unwrap_or_else(|| "-".into())
}

pub fn case_key(v: &Value) -> String {
    case_key_opt(v, true)
}

/// `, deflate` and `, batch` for runs with `--compress` and `--batch` (left out of the
/// key with `with_compress` false, to pair runs that differ only in compression).
fn options(v: &Value, with_compress: bool) -> String {
    let on = |k: &str| v.get(k).and_then(Value::as_bool) == Some(true);
    let mut s = String::new();
    if with_compress && on("compress") {
        s.push_str(", deflate");
    }
    if on("batch") {
        s.push_str(", batch");
    }
    s
}

pub fn case_key_opt(v: &Value, with_compress: bool) -> String {
    let mode = v.get("mode").and_then(Value::as_str).unwrap_or("");
    let g = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    match mode {
        "idle" => format!(
            "{} connections{}{}",
            g("connections"),
            if v.get("subscribe").and_then(Value::as_bool) == Some(true) {
                ", each subscribed"
            } else {
                ""
            },
            options(v, with_compress)
        ),
        "flood" => {
            let victims = format!(
                "{} victims × {}/s",
                g("victims"),
                fmt_rate(num(v, "victim_rate"))
            );
            match g("flood") {
                0 => format!("no flood, {victims}"),
                n => {
                    let cmd = v.get("command").and_then(Value::as_str).unwrap_or("?");
                    match g("flood_window") {
                        0 => format!("{n} {cmd} at once, {victims}"),
                        w => format!("{n} {cmd}, {w} in flight, {victims}"),
                    }
                }
            }
        }
        _ => {
            let chans = if g("channels") == 1 {
                "1 channel".to_string()
            } else {
                format!("{} channels", g("channels"))
            };
            let mut s = format!("{} subs, {chans}, {} B", g("subscribers"), g("size"));
            if v.get("payload").and_then(Value::as_str) == Some("json") {
                s.push_str(" JSON");
            }
            s.push_str(&options(v, with_compress));
            if v.get("flow").and_then(Value::as_str) == Some("reply") {
                s.push_str(", reply-paced");
            }

            if let Some(r) = num(v, "rate") {
                let per_channel = g("subscribers") as f64 / g("channels").max(1) as f64;
                let _ = write!(s, " @ {} deliveries/s", fmt_rate(Some(r * per_channel)));
            }
            s
        }
    }
}

pub fn read_rows(files: &[PathBuf]) -> Res<Vec<Value>> {
    let mut rows: Vec<Value> = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('{') {
                if let Ok(v) = serde_json::from_str::<Value>(line) {
                    rows.push(v);
                }
            }
        }
    }
    Ok(rows)
}
