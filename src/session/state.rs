//! What a client has in flight on its server, from message tags alone: whether the server can go back to the
//! pool. Pure; the relay feeds it every client message start and every ReadyForQuery.

/// What the relay does with a client message.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientMessage {
    Forward,
    /// Terminate: the client is leaving; not forwarded.
    Terminate,
    /// Not a message a client may send after login.
    Invalid,
}

#[derive(Debug)]
pub struct Tracker {
    /// ReadyForQuery messages the server still owes: one per Query, Sync and FunctionCall.
    pending: u32,
    /// Extended-protocol messages sent since the last Sync; the server may hold state for them.
    unsynced: bool,
    /// Transaction status of the last ReadyForQuery: 'I' idle, 'T' in a transaction, 'E' failed transaction.
    status: u8,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            pending: 0,
            unsynced: false,
            status: b'I',
        }
    }
}

impl Tracker {
    pub fn client(&mut self, tag: u8) -> ClientMessage {
        match tag {
            b'Q' | b'F' => self.pending += 1,
            b'S' => {
                self.pending += 1;
                self.unsynced = false;
            }
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => self.unsynced = true,
            b'd' | b'c' | b'f' => {}
            b'X' => return ClientMessage::Terminate,
            _ => return ClientMessage::Invalid,
        }
        ClientMessage::Forward
    }

    pub fn ready(&mut self, status: u8) {
        self.pending = self.pending.saturating_sub(1);
        self.status = status;
    }

    /// Nothing in flight and no transaction open: the server may serve someone else.
    pub fn idle(&self) -> bool {
        self.pending == 0 && !self.unsynced && self.status == b'I'
    }

    /// The server is executing or answering something of ours.
    pub fn running(&self) -> bool {
        self.pending > 0
    }

    /// At a protocol boundary (nothing owed, nothing unsynced) but possibly inside a transaction.
    pub fn settled(&self) -> bool {
        self.pending == 0 && !self.unsynced
    }

    /// The status to report when the client waits for nothing: `None` while something is in flight or in a
    /// failed transaction (where only the server knows what to answer).
    pub fn ready_status(&self) -> Option<u8> {
        (self.settled() && self.status != b'E').then_some(self.status)
    }

    pub fn in_transaction(&self) -> bool {
        self.status != b'I'
    }

    /// A fresh server knows nothing of this client's protocol state.
    pub fn reset(&mut self) {
        *self = Tracker::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_simple_query_ends_at_ready_for_query() {
        let mut t = Tracker::default();
        assert_eq!(t.client(b'Q'), ClientMessage::Forward);
        assert!(!t.idle());
        t.ready(b'I');
        assert!(t.idle());
    }

    #[test]
    fn a_transaction_keeps_the_server_until_it_ends() {
        let mut t = Tracker::default();
        t.client(b'Q');
        t.ready(b'T');
        assert!(!t.idle());
        assert!(t.settled() && t.in_transaction());
        t.client(b'Q');
        t.ready(b'I');
        assert!(t.idle());
    }

    #[test]
    fn pipelined_batches_end_at_the_last_sync() {
        let mut t = Tracker::default();
        for tag in *b"PBDES" {
            t.client(tag);
        }
        for tag in *b"BES" {
            t.client(tag);
        }
        t.ready(b'I');
        assert!(!t.idle(), "one Sync still owed");
        t.ready(b'I');
        assert!(t.idle());
    }

    #[test]
    fn flush_without_sync_keeps_the_server() {
        let mut t = Tracker::default();
        for tag in *b"PDH" {
            t.client(tag);
        }
        assert!(!t.idle());
        t.client(b'S');
        t.ready(b'I');
        assert!(t.idle());
    }

    #[test]
    fn copy_data_does_not_count() {
        let mut t = Tracker::default();
        t.client(b'Q');
        for tag in *b"dddc" {
            assert_eq!(t.client(tag), ClientMessage::Forward);
        }
        t.ready(b'I');
        assert!(t.idle());
    }

    #[test]
    fn unknown_and_terminate() {
        let mut t = Tracker::default();
        assert_eq!(t.client(b'X'), ClientMessage::Terminate);
        assert_eq!(t.client(b'p'), ClientMessage::Invalid);
        assert_eq!(t.client(0), ClientMessage::Invalid);
    }
}
