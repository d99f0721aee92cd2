//! Timeouts as guards: a test waits on events, and a timeout only turns a hang into a failure that
//! says what it was waiting for. No test's correctness depends on one firing.

use std::future::Future;
use std::time::Duration;

/// Upper bound for any single wait in a test. Generous on purpose: a loaded CI machine running the
/// suite on two cores must never trip it, and a healthy run is far quicker.
pub const GUARD: Duration = Duration::from_secs(60);

/// Awaits `future`, panicking with "timed out: {what}" after [`GUARD`].
pub async fn guarded<T>(what: &str, future: impl Future<Output = T>) -> T {
    guarded_for(GUARD, what, future).await
}

/// As [`guarded`], with a bound of its own for a wait that is long by design (a soak test's transfer).
pub async fn guarded_for<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, future).await.unwrap_or_else(|_| panic!("timed out after {limit:?}: {what}"))
}

/// Waits until `condition` holds, checking it after every millisecond tick; panics after [`GUARD`].
/// For state that has no event to wait on (a counter another task bumps).
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    wait_until_async(what, || std::future::ready(condition())).await;
}

/// As [`wait_until`], for a condition that has to await (a handle's statistics).
pub async fn wait_until_async<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + GUARD;
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Sends `tracing` output to the test's captured output when `RUST_LOG` is set; safe to call from
/// every test (only the first call installs the subscriber).
pub fn init_tracing() {
    // quiche logs through the `log` crate.
    let _ = tracing_log::LogTracer::init();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
