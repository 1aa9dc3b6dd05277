//! The canary verdict: a pure function of what the release served and the spec's thresholds.

use std::time::Duration;

use crate::model::ReleaseMetrics;

#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Within the thresholds; the detail says what was seen.
    Pass(String),
    /// Over a threshold; the detail says which, by how much, over what.
    Fail(String),
}

/// Judges one canary step: the 5xx rate must not exceed `max_error_rate` and, when set, the P95
/// latency must not exceed `max_p95`. A step that saw no request passes (there is nothing to
/// hold against it) and says so.
pub fn judge(metrics: &ReleaseMetrics, window: Duration, max_error_rate: f64, max_p95: Option<Duration>) -> Verdict {
    let secs = window.as_secs();
    if metrics.requests == 0 {
        return Verdict::Pass(format!("no requests in {secs} s; nothing to judge"));
    }
    let rate = metrics.error_rate();
    let seen = format!(
        "{} of {} requests failed ({:.1}%) over {secs} s",
        metrics.errors,
        metrics.requests,
        rate * 100.0
    );
    if rate > max_error_rate {
        return Verdict::Fail(format!(
            "5xx rate {:.1}% exceeds the allowed {:.1}%: {seen}",
            rate * 100.0,
            max_error_rate * 100.0
        ));
    }
    let p95 = metrics.p95.unwrap_or_default();
    if let Some(limit) = max_p95
        && p95 > limit
    {
        return Verdict::Fail(format!(
            "P95 latency {} ms exceeds the allowed {} ms ({seen})",
            p95.as_millis(),
            limit.as_millis()
        ));
    }
    Verdict::Pass(format!("{seen}; P95 {} ms", p95.as_millis()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(requests: u64, errors: u64, p95_ms: u64) -> ReleaseMetrics {
        ReleaseMetrics {
            requests,
            errors,
            p95: Some(Duration::from_millis(p95_ms)),
        }
    }

    #[test]
    fn error_rate_above_the_threshold_fails() {
        let w = Duration::from_secs(120);
        assert!(matches!(judge(&m(100, 2, 10), w, 0.02, None), Verdict::Pass(_)));
        let Verdict::Fail(why) = judge(&m(100, 3, 10), w, 0.02, None) else {
            panic!()
        };
        assert_eq!(
            why,
            "5xx rate 3.0% exceeds the allowed 2.0%: 3 of 100 requests failed (3.0%) over 120 s"
        );
    }

    #[test]
    fn latency_is_judged_only_when_asked() {
        let w = Duration::from_secs(60);
        assert!(matches!(judge(&m(10, 0, 900), w, 0.02, None), Verdict::Pass(_)));
        let Verdict::Fail(why) = judge(&m(10, 0, 900), w, 0.02, Some(Duration::from_millis(500))) else {
            panic!()
        };
        assert!(
            why.starts_with("P95 latency 900 ms exceeds the allowed 500 ms"),
            "{why}"
        );
    }

    #[test]
    fn no_traffic_passes_and_says_so() {
        let Verdict::Pass(why) = judge(&ReleaseMetrics::default(), Duration::from_secs(60), 0.02, None) else {
            panic!()
        };
        assert!(why.contains("no requests"));
    }
}
