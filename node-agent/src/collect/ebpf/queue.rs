//! The bounded queue between a ring buffer's drain thread and its collector (sans-IO).
//!
//! The drain thread empties the kernel ring buffer as records arrive and pushes them here;
//! the collector takes them once per tick. The queue is bounded in items and in bytes:
//! when either bound is reached a new item is dropped and counted, so the drain thread never
//! blocks (and the kernel side never waits) on a slow or stalled consumer.

use std::collections::VecDeque;

/// How much a [`BoundedQueue`] may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Most items.
    pub max_items: usize,
    /// Most bytes (the sum of the sizes given to [`BoundedQueue::push`]).
    pub max_bytes: usize,
}

/// A FIFO that drops (and counts) what does not fit.
#[derive(Debug)]
pub struct BoundedQueue<T> {
    items: VecDeque<(T, usize)>,
    bytes: usize,
    bounds: Bounds,
    dropped: u64,
}

/// Above this many slots an emptied queue gives memory back (a burst should not keep its
/// peak allocation for the agent's lifetime).
const KEEP_CAPACITY: usize = 4096;

impl<T> BoundedQueue<T> {
    /// An empty queue with these bounds.
    pub fn new(bounds: Bounds) -> Self {
        BoundedQueue {
            items: VecDeque::new(),
            bytes: 0,
            bounds,
            dropped: 0,
        }
    }

    /// Appends `item` of `bytes` bytes; `false` (and one more drop counted) when it would
    /// exceed a bound.
    pub fn push(&mut self, item: T, bytes: usize) -> bool {
        let fits = self.items.len() < self.bounds.max_items
            && self
                .bytes
                .checked_add(bytes)
                .is_some_and(|b| b <= self.bounds.max_bytes);
        if !fits {
            self.dropped += 1;
            return false;
        }
        self.items.push_back((item, bytes));
        self.bytes += bytes;
        true
    }

    /// Moves up to `n` of the oldest items into `out`, oldest first.
    pub fn pop_into(&mut self, n: usize, out: &mut Vec<T>) {
        let n = n.min(self.items.len());
        out.reserve(n);
        for (item, bytes) in self.items.drain(..n) {
            self.bytes -= bytes;
            out.push(item);
        }
        if self.items.capacity() > KEEP_CAPACITY && self.items.len() < self.items.capacity() / 4 {
            self.items
                .shrink_to(KEEP_CAPACITY.max(self.items.len() * 2));
        }
    }

    /// Items held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Items dropped since the queue was made (cumulative).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(max_items: usize, max_bytes: usize) -> BoundedQueue<u32> {
        BoundedQueue::new(Bounds {
            max_items,
            max_bytes,
        })
    }

    #[test]
    fn keeps_order_and_hands_over_at_most_n() {
        let mut q = queue(10, 1000);
        for i in 0..5 {
            assert!(q.push(i, 10));
        }
        let mut out = Vec::new();
        q.pop_into(3, &mut out);
        assert_eq!(out, [0, 1, 2]);
        assert_eq!((q.len(), q.bytes()), (2, 20));
        q.pop_into(100, &mut out);
        assert_eq!(out, [0, 1, 2, 3, 4]);
        assert!(q.is_empty());
        assert_eq!((q.bytes(), q.dropped()), (0, 0));
    }

    #[test]
    fn item_bound_drops_and_counts_the_newest() {
        let mut q = queue(3, usize::MAX);
        for i in 0..5 {
            q.push(i, 1);
        }
        assert_eq!((q.len(), q.dropped()), (3, 2));
        let mut out = Vec::new();
        q.pop_into(10, &mut out);
        assert_eq!(out, [0, 1, 2], "the oldest are kept, the newest dropped");
        // Room again after the hand-over; the drop count stays cumulative.
        assert!(q.push(9, 1));
        assert_eq!(q.dropped(), 2);
    }

    #[test]
    fn byte_bound_drops_what_does_not_fit() {
        let mut q = queue(100, 100);
        assert!(q.push(1, 60));
        assert!(!q.push(2, 50), "60 + 50 > 100");
        assert!(q.push(3, 40), "60 + 40 = 100 fits exactly");
        assert!(!q.push(4, 1));
        assert!(!q.push(5, usize::MAX), "no overflow on a huge size");
        assert_eq!((q.len(), q.bytes(), q.dropped()), (2, 100, 3));
        let mut out = Vec::new();
        q.pop_into(1, &mut out);
        assert_eq!(q.bytes(), 40);
        assert!(q.push(6, 60));
    }

    #[test]
    fn gives_memory_back_after_a_burst() {
        let mut q = queue(1 << 20, usize::MAX);
        for i in 0..100_000 {
            q.push(i, 1);
        }
        let mut out = Vec::new();
        q.pop_into(100_000, &mut out);
        assert!(
            q.items.capacity() <= 2 * KEEP_CAPACITY,
            "{}",
            q.items.capacity()
        );
        assert_eq!(out.len(), 100_000);
    }
}
