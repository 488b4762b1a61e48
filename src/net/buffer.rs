//! Per-shard I/O buffers. A connection takes one only while bytes are in flight and gives it back when it has
//! forwarded everything, so idle clients own none (PgBouncer's lazily taken packet buffer is the model).

use std::cell::RefCell;

/// Bytes of one buffer. Large enough that a select-only round trip is one read and one write per side, small
/// enough that a 32 MB row streams through in pieces.
pub const BUFFER_SIZE: usize = 64 * 1024;

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
            data: vec![0; BUFFER_SIZE].into_boxed_slice(),
            start: 0,
            scanned: 0,
            end: 0,
        }
    }

    /// Room to receive into, moving unsent bytes to the front when the tail is full.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.end == self.data.len() && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.scanned -= self.start;
            self.end -= self.start;
            self.start = 0;
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
            if end - self.start > self.data.len() {
                return false;
            }
            // Make room at the back by moving everything to the front first.
            self.data.copy_within(self.start..self.end, 0);
            self.scanned -= self.start;
            self.end -= self.start;
            self.start = 0;
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

    /// Bytes that can still be received or pushed (after moving unsent bytes to the front).
    pub fn free(&self) -> usize {
        self.data.len() - (self.end - self.start)
    }

    pub fn has_room(&self) -> bool {
        self.end < self.data.len() || self.start > 0
    }
}

/// The shard's free buffers.
#[derive(Default)]
pub struct BufferPool {
    free: RefCell<Vec<IoBuf>>,
}

/// Buffers kept for reuse; beyond this, returned buffers are freed so a burst does not pin memory forever.
const KEEP_FREE: usize = 64;

impl BufferPool {
    pub fn take(&self) -> IoBuf {
        self.free.borrow_mut().pop().unwrap_or_else(IoBuf::new)
    }

    pub fn give(&self, buf: IoBuf) {
        debug_assert!(buf.is_empty());
        let mut free = self.free.borrow_mut();
        if free.len() < KEEP_FREE {
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
        assert_eq!(b.spare().len(), BUFFER_SIZE);
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
    fn splice_compacts_or_refuses_when_full() {
        let mut b = IoBuf::new();
        b.received(BUFFER_SIZE);
        b.scanned(10);
        b.sent(10);
        // 10 bytes free at the front: growth by 10 fits, by 11 does not.
        assert!(!b.splice(1, &[0; 12]));
        assert_eq!(b.unscanned().len(), BUFFER_SIZE - 10);
        assert!(b.splice(1, &[7; 11]));
        assert_eq!(b.unscanned().len(), BUFFER_SIZE);
        assert_eq!(b.unscanned()[..11], [7; 11]);
    }

    #[test]
    fn a_full_tail_compacts() {
        let mut b = IoBuf::new();
        b.received(BUFFER_SIZE);
        b.scanned(BUFFER_SIZE - 2);
        b.sent(BUFFER_SIZE - 2);
        assert_eq!(b.spare().len(), BUFFER_SIZE - 2);
        assert_eq!(b.unscanned().len(), 2);
    }
}
