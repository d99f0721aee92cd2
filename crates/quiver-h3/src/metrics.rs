//! HTTP/3 server metrics through the [`metrics`] facade: requests by status and their duration.
//!
//! The handles are resolved once per process, when the first request is answered (and once per status
//! code the first time it is answered), so a request costs two atomic updates and no registry lookup.
//! Install the recorder before serving; without one, every update is a no-op. The table of every
//! metric is in `docs/metrics.md`.

use std::sync::OnceLock;
use std::time::Duration;

use http::StatusCode;
use metrics::{Counter, Histogram, Unit, counter, describe_counter, describe_histogram, histogram};

/// Counter, label `status` (the numeric code): requests answered.
pub const REQUESTS: &str = "quiver_http_requests_total";
/// Histogram: from a request's head arriving to its response's last frame being handed to the
/// connection (not its delivery), in seconds.
pub const REQUEST_DURATION: &str = "quiver_http_request_duration_seconds";

/// Bucket bounds for [`REQUEST_DURATION`], in seconds: an in-memory answer takes microseconds, a large
/// download seconds or minutes.
pub const REQUEST_DURATION_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0];

/// Registers the description and unit of every metric above with the installed recorder.
pub fn describe() {
    describe_counter!(REQUESTS, Unit::Count, "HTTP/3 requests answered, by status code");
    describe_histogram!(REQUEST_DURATION, Unit::Seconds, "From request head to the last response frame queued");
}

/// Status codes `http` can represent (100 to 999), one lazily registered counter each.
const STATUS_CODES: usize = 900;

/// The process's request metrics, shared by every server and connection (one table for all: a
/// server is built per connection in some applications, and each would otherwise carry its own).
pub(crate) struct RequestMetrics {
    duration: Histogram,
    by_status: Box<[OnceLock<Counter>]>,
}

impl RequestMetrics {
    pub(crate) fn global() -> &'static Self {
        static METRICS: OnceLock<RequestMetrics> = OnceLock::new();
        METRICS.get_or_init(|| Self {
            duration: histogram!(REQUEST_DURATION),
            by_status: (0..STATUS_CODES).map(|_| OnceLock::new()).collect(),
        })
    }

    /// One request answered with `status` after `elapsed`.
    pub(crate) fn record(&self, status: StatusCode, elapsed: Duration) {
        let code = status.as_u16();
        if let Some(slot) = self.by_status.get(usize::from(code).wrapping_sub(100)) {
            slot.get_or_init(|| counter!(REQUESTS, "status" => code.to_string())).increment(1);
        }
        self.duration.record(elapsed.as_secs_f64());
    }
}

impl std::fmt::Debug for RequestMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestMetrics").finish_non_exhaustive()
    }
}
