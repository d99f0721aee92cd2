//! Resolving tunnel targets' names, with a bound on lookups in flight.
//!
//! The system resolver (`getaddrinfo`) blocks a thread of Tokio's blocking pool for as long as it runs,
//! and a timeout around it only stops the waiting: the thread stays busy until the lookup returns. So
//! the slot that limits lookups is held *inside* the blocking task and freed when `getaddrinfo`
//! returns, not when the caller gives up. A request that finds every slot taken is refused at once
//! (and counted), so a resolver that never answers costs at most [`MAX_LOOKUPS_IN_FLIGHT`] threads.
//! Each client's shares of those slots (per connection, per address) are held the same way, so a
//! client whose lookups hang holds at most its share.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

/// Lookups in flight at once, proxy-wide. Each holds a thread of Tokio's blocking pool (512 by
/// default) until `getaddrinfo` returns, however long the resolver takes: 64 leaves most of the pool
/// to the rest of the process even when every lookup hangs on a dead resolver, and is far more than a
/// healthy resolver needs (a lookup takes milliseconds, so 64 slots serve thousands per second).
pub(crate) const MAX_LOOKUPS_IN_FLIGHT: usize = 64;

/// A blocking lookup of `name`:`port`.
pub(crate) type LookupFn = Arc<dyn Fn(&str, u16) -> io::Result<Vec<SocketAddr>> + Send + Sync>;

/// Why a name did not resolve.
#[derive(Debug)]
pub(crate) enum LookupError {
    /// Every lookup slot is taken (lookups hang): refused without trying.
    Busy,
    /// No answer within the timeout; the lookup goes on in the background and keeps its slot.
    TimedOut,
    /// The resolver answered with an error.
    Failed(io::Error),
}

/// Resolves names on the blocking pool, at most so many at once.
pub(crate) struct Resolver {
    slots: Arc<Semaphore>,
    lookup: LookupFn,
}

impl Resolver {
    /// The system resolver, [`MAX_LOOKUPS_IN_FLIGHT`] lookups at once.
    pub(crate) fn system() -> Self {
        Self::with_lookup(
            MAX_LOOKUPS_IN_FLIGHT,
            Arc::new(|name, port| (name, port).to_socket_addrs().map(Iterator::collect)),
        )
    }

    /// `lookup`, at most `max_in_flight` at once.
    pub(crate) fn with_lookup(max_in_flight: usize, lookup: LookupFn) -> Self {
        Self { slots: Arc::new(Semaphore::new(max_in_flight)), lookup }
    }

    /// The addresses of `name`:`port`. `shares` (the client's shares of the lookup slots) are held
    /// with the proxy-wide slot until the lookup returns.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped call leaves its lookup to finish in the background, holding its slot.
    pub(crate) async fn resolve<Shares: Send + 'static>(
        &self,
        name: &str,
        port: u16,
        timeout: Duration,
        shares: Shares,
    ) -> Result<Vec<SocketAddr>, LookupError> {
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| LookupError::Busy)?;
        let (lookup, name) = (self.lookup.clone(), name.to_owned());
        let task = tokio::task::spawn_blocking(move || {
            // Freed when the lookup returns, not when the caller stops waiting.
            let _held = (slot, shares);
            lookup(&name, port)
        });
        match tokio::time::timeout(timeout, task).await {
            Err(_) => Err(LookupError::TimedOut),
            Ok(Err(panicked)) => Err(LookupError::Failed(io::Error::other(panicked.to_string()))),
            Ok(Ok(result)) => result.map_err(LookupError::Failed),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Condvar, Mutex};

    use super::*;

    /// A lookup that blocks its thread until the gate opens, like getaddrinfo on a silent resolver.
    #[derive(Default)]
    struct Gate {
        open: Mutex<bool>,
        opened: Condvar,
    }

    impl Gate {
        fn wait(&self) {
            let mut open = self.open.lock().unwrap();
            while !*open {
                open = self.opened.wait(open).unwrap();
            }
        }

        fn open(&self) {
            *self.open.lock().unwrap() = true;
            self.opened.notify_all();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_lookup_keeps_its_slot_until_it_returns() {
        let gate = Arc::new(Gate::default());
        let resolver = Resolver::with_lookup(2, {
            let gate = gate.clone();
            Arc::new(move |_, port| {
                gate.wait();
                Ok(vec![SocketAddr::from(([192, 0, 2, 1], port))])
            })
        });
        let timeout = Duration::from_millis(20);
        for _ in 0..2 {
            assert!(matches!(resolver.resolve("hung.test", 53, timeout, ()).await, Err(LookupError::TimedOut)));
        }
        // Both timed-out lookups still occupy a blocking thread each, so their slots stay taken.
        assert!(matches!(resolver.resolve("hung.test", 53, timeout, ()).await, Err(LookupError::Busy)));
        gate.open();
        // Once they return, their slots come back.
        let guard = Duration::from_secs(30);
        drop(tokio::time::timeout(guard, resolver.slots.acquire_many(2)).await.expect("slots freed").unwrap());
        let addresses = resolver.resolve("hung.test", 53, guard, ()).await.unwrap();
        assert_eq!(addresses, [SocketAddr::from(([192, 0, 2, 1], 53))]);
    }

    #[tokio::test]
    async fn resolver_errors_are_reported() {
        let resolver = Resolver::with_lookup(1, Arc::new(|_, _| Err(io::Error::other("no such name"))));
        let outcome = resolver.resolve("nx.test", 53, Duration::from_secs(30), ()).await;
        assert!(matches!(outcome, Err(LookupError::Failed(err)) if err.to_string() == "no such name"));
    }
}
