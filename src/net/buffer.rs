//! Per-shard I/O buffers. A connection takes one only while bytes are in flight and gives it back when it has
//! forwarded everything, so idle clients own none (PgBouncer's lazily taken packet buffer is the model).
//! Buffers start small, so a client queued for a server holds little, and grow once when a read fills them.

use std::cell::RefCell;

/// Bytes a buffer starts with: an OLTP round trip (a query, a few rows, ReadyForQuery) fits.
pub const SMALL: usize = 2 * 1024;

/// Bytes a buffer grows to when bytes arrive faster than they leave: a large result then streams in few reads
/// and writes, and a 32 MB row still goes through in pieces. The most any buffer holds.
pub const LARGE: usize = 64 * 1024;

/// The most any buffer holds: a Query or Parse read whole to be scanned (up to `session::relay`'s 1 MiB),
/// with what a rewrite puts beside it. Only a buffer with such a message in it grows past LARGE, and it is
/// freed, not pooled, once empty.
pub const HUGE: usize = 4 << 20;

/// A buffer with three cursors, as in PgBouncer's iobuf: `[start, scanned)` is framed and ready to send,
/// `[scanned, end)` has been received but not framed yet (a partial header or a message read whole).
pub struct IoBuf {
    data: Box<[u8]>,
    start: usize,
    scanned: usize,
    end: usize,
}

impl IoBuf {
    fn new() -> IoBuf {
        IoBuf {
            data: vec![0; SMALL].into_boxed_slice(),
            start: 0,
            scanned: 0,
            end: 0,
        }
    }

    /// Moves the unsent bytes to the front, into a large buffer when this one is small.
    fn make_room(&mut self) {
        self.move_to_front(LARGE);
    }

    /// Moves the unsent bytes to the front of a buffer of at least `size` bytes.
    fn move_to_front(&mut self, size: usize) {
        let (start, end) = (self.start, self.end);
        if self.data.len() < size {
            let mut larger = vec![0; size].into_boxed_slice();
            larger[..end - start].copy_from_slice(&self.data[start..end]);
            self.data = larger;
        } else {
            self.data.copy_within(start..end, 0);
        }
        self.scanned -= start;
        self.end -= start;
        self.start = 0;
    }

    /// What the buffer may hold: LARGE, or more while it has grown for a message read whole.
    fn capacity(&self) -> usize {
        self.data.len().max(LARGE)
    }

    /// Makes room for `n` unscanned bytes (a message that must be read whole before it is forwarded), growing
    /// past LARGE if needed; false when that would be more than HUGE.
    pub fn reserve_unscanned(&mut self, n: usize) -> bool {
        let need = self.scanned - self.start + n;
        if need > HUGE {
            return false;
        }
        if self.scanned + n > self.data.len() {
            self.move_to_front(need);
        }
        true
    }

    /// Room to receive into, growing the buffer or moving unsent bytes to the front when the tail is full.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.end == self.data.len() && self.has_room() {
            self.make_room();
        }
        &mut self.data[self.end..]
    }

    pub fn received(&mut self, n: usize) {
        self.end += n;
    }

    pub fn unscanned(&self) -> &[u8] {
        &self.data[self.scanned..self.end]
    }

    pub fn scanned(&mut self, n: usize) {
        self.scanned += n;
    }

    pub fn to_send(&self) -> &[u8] {
        &self.data[self.start..self.scanned]
    }

    pub fn sent(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.scanned = 0;
            self.end = 0;
        }
    }

    /// Replaces the first `old` unscanned bytes with `new`, moving what follows; false (and nothing changed)
    /// when the buffer has no room for the difference.
    pub fn splice(&mut self, old: usize, new: &[u8]) -> bool {
        let at = self.scanned;
        let tail = at + old..self.end;
        let end = self.end - old + new.len();
        if end > self.data.len() {
            let need = end - self.start;
            if need > HUGE {
                return false;
            }
            // Afterwards the bytes start at 0 in a buffer of at least `need`: the retry fits.
            self.move_to_front(need.max(LARGE));
            return self.splice(old, new);
        }
        self.data.copy_within(tail, at + new.len());
        self.data[at..at + new.len()].copy_from_slice(new);
        self.end = end;
        true
    }

    /// Appends bytes that are framed already, ready to send; false when they do not fit.
    pub fn push(&mut self, bytes: &[u8]) -> bool {
        debug_assert!(self.unscanned().is_empty());
        let fits = self.splice(0, bytes);
        self.scanned = self.end;
        fits
    }

    /// Mutable access to the unscanned bytes, to rewrite a message in place.
    pub fn unscanned_mut(&mut self) -> &mut [u8] {
        &mut self.data[self.scanned..self.end]
    }

    /// Drops received bytes that are not framed yet (what a client sent after Terminate).
    pub fn truncate_unscanned(&mut self) {
        self.end = self.scanned;
        self.sent(0);
    }

    /// The buffer with its contents dropped, ready for reuse.
    pub fn emptied(mut self) -> IoBuf {
        self.start = 0;
        self.scanned = 0;
        self.end = 0;
        self
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Bytes that can still be received or pushed (after growing or moving unsent bytes to the front).
    pub fn free(&self) -> usize {
        // Never negative: the bytes held fit in `data`, and `capacity` is at least its length.
        self.capacity() - (self.end - self.start)
    }

    pub fn has_room(&self) -> bool {
        self.free() > 0
    }
}

/// The shard's free buffers.
#[derive(Default)]
pub struct BufferPool {
    free: RefCell<Vec<IoBuf>>,
}

/// Small buffers kept for reuse; beyond this, and grown ones, are freed so a burst does not pin memory forever.
const KEEP_FREE: usize = 64;

impl BufferPool {
    pub fn take(&self) -> IoBuf {
        self.free.borrow_mut().pop().unwrap_or_else(IoBuf::new)
    }

    pub fn give(&self, buf: IoBuf) {
        debug_assert!(buf.is_empty());
        let mut free = self.free.borrow_mut();
        if free.len() < KEEP_FREE && buf.data.len() == SMALL {
            free.push(buf);
        }
    }

    /// Returns `slot`'s buffer to the pool if it holds no bytes.
    pub fn give_if_empty(&self, slot: &mut Option<IoBuf>) {
        if slot.as_ref().is_some_and(IoBuf::is_empty) {
            self.give(slot.take().expect("checked above"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_move_and_reset() {
        let mut b = IoBuf::new();
        b.spare()[..5].copy_from_slice(b"hello");
        b.received(5);
        assert_eq!(b.unscanned(), b"hello");
        b.scanned(3);
        assert_eq!(b.to_send(), b"hel");
        b.sent(3);
        assert!(!b.is_empty());
        b.scanned(2);
        b.sent(2);
        assert!(b.is_empty());
        assert_eq!(b.spare().len(), SMALL);
    }

    #[test]
    fn a_filled_buffer_grows_once_keeping_its_bytes() {
        let mut b = IoBuf::new();
        b.spare().fill(7);
        b.received(SMALL);
        b.scanned(10);
        b.sent(4);
        assert_eq!(b.spare().len(), LARGE - (SMALL - 4));
        assert_eq!(b.to_send(), &[7; 6]);
        assert_eq!(b.unscanned().len(), SMALL - 10);
        b.received(LARGE - (SMALL - 4));
        assert!(!b.has_room());
        assert!(b.spare().is_empty());
    }

    #[test]
    fn the_pool_keeps_only_small_buffers() {
        let pool = BufferPool::default();
        let mut b = pool.take();
        b.spare();
        b.received(SMALL);
        b.spare();
        pool.give(b.emptied());
        assert_eq!(pool.free.borrow().len(), 0);
        pool.give(pool.take());
        assert_eq!(pool.free.borrow().len(), 1);
    }

    #[test]
    fn splice_replaces_unscanned_bytes_and_keeps_the_rest() {
        let mut b = IoBuf::new();
        assert!(b.push(b"sent"));
        b.spare()[..9].copy_from_slice(b"HEADrest!");
        b.received(9);
        assert!(b.splice(4, b"longer head "));
        assert_eq!(b.unscanned(), b"longer head rest!");
        assert!(b.splice(7, b""));
        assert_eq!(b.unscanned(), b"head rest!");
        assert_eq!(b.to_send(), b"sent");
    }

    #[test]
    fn splice_grows_compacts_or_refuses_when_full() {
        let mut b = IoBuf::new();
        b.received(SMALL);
        assert!(b.splice(0, &[1; 100]));
        assert_eq!(b.unscanned().len(), SMALL + 100);
        b.received(LARGE - SMALL - 100);
        b.scanned(10);
        b.sent(10);
        // 10 bytes free at the front: growth by 10 compacts, by more grows the buffer past LARGE.
        assert!(b.splice(1, &[7; 11]));
        assert_eq!(b.unscanned().len(), LARGE);
        assert_eq!(b.data.len(), LARGE);
        assert_eq!(b.unscanned()[..11], [7; 11]);
        assert!(b.splice(1, &[8; 2]));
        assert_eq!(b.unscanned().len(), LARGE + 1);
        assert_eq!(b.unscanned()[..3], [8, 8, 7]);
    }

    #[test]
    fn a_message_read_whole_grows_the_buffer_past_large_and_the_pool_drops_it() {
        let pool = BufferPool::default();
        let mut b = pool.take();
        assert!(b.push(b"ready"));
        assert!(b.reserve_unscanned(LARGE + 100));
        assert_eq!(b.to_send(), b"ready");
        assert!(b.spare().len() >= LARGE + 100);
        b.received(LARGE + 100);
        assert_eq!(b.free(), b.data.len() - (LARGE + 105));
        assert!(b.splice(LARGE + 100, &[1; 2 * LARGE]));
        assert_eq!(b.unscanned().len(), 2 * LARGE);
        assert!(!b.reserve_unscanned(HUGE));
        assert!(!b.splice(0, &vec![0; HUGE]));
        b.scanned(2 * LARGE);
        b.sent(5 + 2 * LARGE);
        pool.give(b);
        assert_eq!(pool.free.borrow().len(), 0);
    }

    #[test]
    fn a_full_tail_compacts() {
        let mut b = IoBuf::new();
        b.spare();
        b.received(SMALL);
        b.spare();
        b.received(LARGE - SMALL);
        b.scanned(LARGE - 2);
        b.sent(LARGE - 2);
        assert_eq!(b.spare().len(), LARGE - 2);
        assert_eq!(b.unscanned().len(), 2);
    }
}
