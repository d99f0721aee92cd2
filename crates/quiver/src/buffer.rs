//! Reusable datagram buffers, so the hot path allocates nothing per datagram.
//!
//! Two sizes serve every use: [`LARGE_BUFFER_BYTES`] holds a whole GSO send batch or a GRO receive
//! batch, [`SMALL_BUFFER_BYTES`] one datagram. Routers take receive buffers and connection tasks give
//! them back once quiche has read them; connection tasks borrow a large buffer for each flush. Memory
//! therefore follows the datagrams in flight, not the number of connections, and a pool never keeps
//! more than its retention limit.

use std::sync::Mutex;

/// One GSO send batch or one GRO receive batch: a UDP payload can never exceed 65,535 bytes, and
/// Linux coalesces at most 64 KiB per receive.
pub(crate) const LARGE_BUFFER_BYTES: usize = 64 * 1024;

/// One datagram we accept: large enough for [`MAX_RECV_UDP_PAYLOAD_BYTES`](crate::config::MAX_RECV_UDP_PAYLOAD_BYTES)
/// rounded up to an allocation size class.
pub(crate) const SMALL_BUFFER_BYTES: usize = 2048;

/// Large buffers kept for reuse: one per GRO slot of every router plus those in flight to connections
/// and in use by flushing connections. Beyond it, returned buffers are freed (at most 16 MiB retained).
const LARGE_RETAINED: usize = 256;

/// Small buffers kept for reuse: a few full connection queues' worth (at most 8 MiB retained).
const SMALL_RETAINED: usize = 4096;

/// A free list of equal-size buffers shared by an endpoint's routers and connection tasks.
#[derive(Debug)]
pub(crate) struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    buffer_bytes: usize,
    retained: usize,
}

impl BufferPool {
    pub(crate) fn new(buffer_bytes: usize, retained: usize) -> Self {
        Self { free: Mutex::new(Vec::new()), buffer_bytes, retained }
    }

    /// A pool of [`LARGE_BUFFER_BYTES`] buffers.
    pub(crate) fn large() -> Self {
        Self::new(LARGE_BUFFER_BYTES, LARGE_RETAINED)
    }

    /// A pool of [`SMALL_BUFFER_BYTES`] buffers.
    pub(crate) fn small() -> Self {
        Self::new(SMALL_BUFFER_BYTES, SMALL_RETAINED)
    }

    /// A buffer of the pool's size (its contents are whatever the last user left).
    pub(crate) fn take(&self) -> Vec<u8> {
        let reused = self.free.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop();
        reused.unwrap_or_else(|| vec![0u8; self.buffer_bytes])
    }

    /// Returns a buffer taken from this pool. Buffers of another size are freed, as are buffers beyond
    /// the retention limit.
    pub(crate) fn give_back(&self, buffer: Vec<u8>) {
        if buffer.len() != self.buffer_bytes {
            return;
        }
        let mut free = self.free.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if free.len() < self.retained {
            free.push(buffer);
        }
    }

    #[cfg(test)]
    pub(crate) fn retained_now(&self) -> usize {
        self.free.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_reuses_bounds_and_refuses_foreign_sizes() {
        let pool = BufferPool::new(100, 3);
        let buffer = pool.take();
        assert_eq!(buffer.len(), 100);
        let address = buffer.as_ptr();
        pool.give_back(buffer);
        let again = pool.take();
        assert_eq!(again.as_ptr(), address, "a returned buffer is handed out again");
        for _ in 0..10 {
            pool.give_back(vec![0; 100]);
        }
        assert_eq!(pool.retained_now(), 3);
        pool.give_back(vec![0; 99]);
        assert_eq!(pool.retained_now(), 3, "a buffer of another size is not kept");
    }
}
