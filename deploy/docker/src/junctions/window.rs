//! Request counts per second for one release, kept for [`RETAINED_SECS`]: enough to judge any
//! canary window without an external metrics store.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use enclii_deploy_contract::model::ReleaseMetrics;

/// Longest window a canary analysis can ask for.
pub const RETAINED_SECS: u64 = 30 * 60;

/// Upper bounds of the latency buckets, in milliseconds; the last bucket is open.
const BOUNDS_MS: [u64; 14] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000];

#[derive(Clone, Debug, Default)]
struct Second {
    at: u64,
    requests: u64,
    errors: u64,
    latency: [u32; BOUNDS_MS.len() + 1],
}

/// A ring of per-second buckets.
#[derive(Debug, Default)]
pub struct Window {
    seconds: Mutex<VecDeque<Second>>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Window {
    pub fn record(&self, error: bool, latency: Duration) {
        self.record_at(now_secs(), error, latency);
    }

    fn record_at(&self, at: u64, error: bool, latency: Duration) {
        let mut seconds = self.seconds.lock().unwrap_or_else(|p| p.into_inner());
        if seconds.back().is_none_or(|s| s.at != at) {
            seconds.push_back(Second {
                at,
                ..Second::default()
            });
            while seconds.front().is_some_and(|s| s.at + RETAINED_SECS < at) {
                seconds.pop_front();
            }
        }
        let second = seconds.back_mut().expect("just pushed");
        second.requests += 1;
        second.errors += u64::from(error);
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_MS.iter().position(|&b| ms <= b).unwrap_or(BOUNDS_MS.len());
        second.latency[bucket] += 1;
    }

    /// Totals over the last `window` (whole seconds, the current one included).
    pub fn summary(&self, window: Duration) -> ReleaseMetrics {
        self.summary_at(now_secs(), window)
    }

    fn summary_at(&self, now: u64, window: Duration) -> ReleaseMetrics {
        let since = now.saturating_sub(window.as_secs().max(1));
        let seconds = self.seconds.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = ReleaseMetrics::default();
        let mut latency = [0u64; BOUNDS_MS.len() + 1];
        for s in seconds.iter().filter(|s| s.at > since) {
            total.requests += s.requests;
            total.errors += s.errors;
            for (sum, n) in latency.iter_mut().zip(s.latency) {
                *sum += u64::from(n);
            }
        }
        total.p95 = p95(&latency, total.requests);
        total
    }
}

/// The upper bound of the bucket holding the 95th percentile (the last bound for the open bucket).
fn p95(latency: &[u64], requests: u64) -> Option<Duration> {
    if requests == 0 {
        return None;
    }
    let rank = requests.saturating_mul(95).div_ceil(100);
    let mut seen = 0;
    for (i, n) in latency.iter().enumerate() {
        seen += n;
        if seen >= rank {
            let bound = BOUNDS_MS.get(i).copied().unwrap_or(BOUNDS_MS[BOUNDS_MS.len() - 1]);
            return Some(Duration::from_millis(bound));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_inside_the_window_and_reads_p95_from_the_buckets() {
        let w = Window::default();
        for _ in 0..10 {
            w.record_at(1_000, true, Duration::from_millis(3000));
        }
        for i in 0..100 {
            w.record_at(1_100, i < 2, Duration::from_millis(if i < 96 { 20 } else { 400 }));
        }
        let m = w.summary_at(1_100, Duration::from_secs(60));
        assert_eq!((m.requests, m.errors), (100, 2));
        assert_eq!(m.p95, Some(Duration::from_millis(25)));
        let m = w.summary_at(1_100, Duration::from_secs(120));
        assert_eq!((m.requests, m.errors), (110, 12));
        assert_eq!(m.p95, Some(Duration::from_millis(5_000)));
        assert_eq!(w.summary_at(5_000, Duration::from_secs(60)).requests, 0);
    }

    #[test]
    fn old_seconds_are_dropped() {
        let w = Window::default();
        w.record_at(10, false, Duration::ZERO);
        w.record_at(10 + RETAINED_SECS + 5, false, Duration::ZERO);
        assert_eq!(w.seconds.lock().unwrap().len(), 1);
    }
}
