//! The delivery latency histogram: log-linear buckets, 64 per power of two (about 1.6 %
//! resolution), lock-free so that every subscriber task records into one shared instance.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub const SUB_BITS: u32 = 6;
pub const SUB: u64 = 1 << SUB_BITS;
pub const BUCKETS: usize = (SUB + (64 - SUB_BITS as u64) * SUB) as usize;

pub struct Histogram {
    pub counts: Vec<AtomicU64>,
    pub max: AtomicU64,
}

impl Histogram {
    pub fn new() -> Self {
        Histogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }

    pub fn index(v: u64) -> usize {
        if v < SUB {
            return v as usize;
        }
        let e = 63 - v.leading_zeros(); // >= SUB_BITS
        let shift = e - SUB_BITS;
        let sub = (v >> shift) - SUB;
        (SUB + shift as u64 * SUB + sub) as usize
    }

    /// Middle of the bucket's range.
    pub fn value(i: usize) -> u64 {
        let i = i as u64;
        if i < SUB {
            return i;
        }
        let shift = (i - SUB) / SUB;
        let sub = (i - SUB) % SUB;
        let low = (SUB + sub) << shift;
        low + ((1u64 << shift) >> 1)
    }

    pub fn record(&self, v: u64) {
        self.counts[Self::index(v)].fetch_add(1, Relaxed);
        if v > self.max.load(Relaxed) {
            self.max.fetch_max(v, Relaxed);
        }
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c.load(Relaxed);
            if seen >= rank {
                return Some(Self::value(i).min(self.max.load(Relaxed)));
            }
        }
        Some(self.max.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_round_trips_within_two_percent() {
        for v in [0u64, 1, 63, 64, 65, 1000, 123_456, 9_999_999, u64::MAX / 3] {
            let back = Histogram::value(Histogram::index(v));
            let err = (back as f64 - v as f64).abs() / (v as f64).max(1.0);
            assert!(err < 0.02, "{v} -> {back}");
        }
        let h = Histogram::new();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5).unwrap() as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.02, "{p50}");
        assert_eq!(h.quantile(1.0), Some(1_000_000));
    }
}
