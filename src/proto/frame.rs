//! Framing. Regular messages are a 1-byte tag and a 4-byte big-endian length that counts itself; startup-phase
//! packets have no tag. The relay never needs a whole message: [`Scanner`] walks headers and lets bodies stream
//! past, and reads whole only the few small messages the pooler must look inside.

use std::fmt;

/// The peer sent bytes that cannot be a PostgreSQL message stream.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// A length field below its own 4 bytes or above the limit.
    BadLength { tag: u8, len: usize },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::BadLength { tag: 0, len } => {
                write!(f, "invalid startup packet length {len}")
            }
            FrameError::BadLength { tag, len } => {
                write!(
                    f,
                    "invalid length {len} for message type \"{}\"",
                    tag.escape_ascii()
                )
            }
        }
    }
}

fn be_u32(b: &[u8]) -> usize {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
}

/// A message read whole: tag, body, and bytes it took in the buffer.
pub type Whole<'a> = (u8, &'a [u8], usize);

/// A complete tagged message at the front of `buf`: `(tag, body, total bytes)`, or `None` until it has arrived.
/// Used where messages are small and bounded by `max_len` (login, the server's startup replies).
pub fn whole(buf: &[u8], max_len: usize) -> Result<Option<Whole<'_>>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let (tag, len) = (buf[0], be_u32(&buf[1..5]));
    if !(4..=max_len).contains(&len) {
        return Err(FrameError::BadLength { tag, len });
    }
    Ok(buf.get(5..1 + len).map(|body| (tag, body, 1 + len)))
}

/// A complete startup-phase packet at the front of `buf`: `(body after the length, total bytes)`.
pub fn startup(buf: &[u8]) -> Result<Option<(&[u8], usize)>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = be_u32(buf);
    if !(8..=super::MAX_STARTUP_LEN).contains(&len) {
        return Err(FrameError::BadLength { tag: 0, len });
    }
    Ok(buf.get(4..len).map(|body| (body, len)))
}

/// How much of a message's body [`Scanner::scan`] waits for before showing the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The tag alone; the body streams.
    Tag,
    /// The whole body when it is at most this long; a longer one streams and is shown as `None`.
    Whole(usize),
    /// The first bytes of the body, up to this many (all of a shorter body): where its names are.
    Head(usize),
}

/// What the caller wants done with a message the scanner found.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    /// Forward it and go on.
    Pass,
    /// Leave it (and everything after it) unscanned; the caller handles it.
    Stop,
}

/// Walks a byte stream message by message, remembering how much of a message body is still to come, so a
/// 32 MB DataRow passes in buffer-sized pieces.
#[derive(Debug, Default)]
pub struct Scanner {
    body_left: usize,
}

impl Scanner {
    /// True when the scanner is between messages: nothing half-forwarded.
    pub fn at_boundary(&self) -> bool {
        self.body_left == 0
    }

    /// Scans `buf`, which starts where the previous call stopped. `on` sees each message start with its tag and
    /// the part of the body `want(tag)` asks for (the scan pauses until that part is in `buf`), or `None` when
    /// it asked for none or for a whole body that is too long. Returns how many bytes of `buf` are scanned and
    /// may be forwarded.
    pub fn scan(
        &mut self,
        buf: &[u8],
        max_len: usize,
        want: impl Fn(u8) -> Want,
        mut on: impl FnMut(u8, Option<&[u8]>) -> Flow,
    ) -> Result<usize, FrameError> {
        let mut pos = 0;
        loop {
            if self.body_left > 0 {
                let step = self.body_left.min(buf.len() - pos);
                self.body_left -= step;
                pos += step;
                if self.body_left > 0 {
                    return Ok(pos);
                }
            }
            let rest = &buf[pos..];
            if rest.len() < 5 {
                return Ok(pos);
            }
            let (tag, len) = (rest[0], be_u32(&rest[1..5]));
            if len < 4 || len > max_len {
                return Err(FrameError::BadLength { tag, len });
            }
            let shown = match want(tag) {
                Want::Tag => None,
                Want::Whole(max) => Some(len - 4).filter(|&n| n <= max),
                Want::Head(max) => Some((len - 4).min(max)),
            };
            let body = match shown {
                None => None,
                Some(n) => match rest.get(5..5 + n) {
                    Some(body) => Some(body),
                    None => return Ok(pos),
                },
            };
            if on(tag, body) == Flow::Stop {
                return Ok(pos);
            }
            pos += 5;
            self.body_left = len - 4;
        }
    }

    /// The caller forwarded a message's header and the first part of its body itself (rewritten); the scan
    /// resumes by streaming the `rest` of that body.
    pub fn resume_in_body(&mut self, rest: usize) {
        debug_assert!(self.at_boundary());
        self.body_left = rest;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// Feeds `stream` in pieces of `chunk` bytes the way a socket would and records what the scanner saw.
    /// Each message start the scanner reported: tag, and the body when read whole.
    type Seen = Vec<(u8, Option<Vec<u8>>)>;

    fn scan_in_chunks(stream: &[u8], chunk: usize) -> (Seen, usize) {
        let mut scanner = Scanner::default();
        let (mut seen, mut buf, mut forwarded) = (Vec::new(), Vec::new(), 0);
        for piece in stream.chunks(chunk) {
            buf.extend_from_slice(piece);
            let n = scanner
                .scan(
                    &buf,
                    MAX,
                    |t| {
                        if t == b'Z' {
                            Want::Whole(64)
                        } else {
                            Want::Tag
                        }
                    },
                    |t, b| {
                        seen.push((t, b.map(<[u8]>::to_vec)));
                        Flow::Pass
                    },
                )
                .unwrap();
            forwarded += n;
            buf.drain(..n);
        }
        assert!(scanner.at_boundary());
        (seen, forwarded + buf.len())
    }

    const MAX: usize = crate::proto::MAX_MESSAGE_LEN;

    #[test]
    fn fragmented_input_gives_the_same_messages_at_any_chunk_size() {
        let mut stream = msg(b'T', b"row description");
        stream.extend(msg(b'D', &[7u8; 1000]));
        stream.extend(msg(b'C', b"SELECT 1\0"));
        stream.extend(msg(b'Z', b"I"));
        let expected = vec![
            (b'T', None),
            (b'D', None),
            (b'C', None),
            (b'Z', Some(b"I".to_vec())),
        ];
        for chunk in [1, 2, 3, 4, 5, 6, 7, 100, 4096] {
            let (seen, total) = scan_in_chunks(&stream, chunk);
            assert_eq!(seen, expected, "chunk size {chunk}");
            assert_eq!(total, stream.len());
        }
    }

    #[test]
    fn large_bodies_stream_without_being_held() {
        let big = vec![0u8; 1 << 20];
        let stream = msg(b'D', &big);
        let mut scanner = Scanner::default();
        // Only the first 5 + 100 bytes are present: all of them can be forwarded already.
        let n = scanner
            .scan(&stream[..105], MAX, |_| Want::Tag, |_, _| Flow::Pass)
            .unwrap();
        assert_eq!(n, 105);
        assert!(!scanner.at_boundary());
        let n = scanner
            .scan(&stream[105..], MAX, |_| Want::Tag, |_, _| Flow::Pass)
            .unwrap();
        assert_eq!(n, stream.len() - 105);
        assert!(scanner.at_boundary());
    }

    #[test]
    fn oversized_and_undersized_lengths_are_rejected() {
        let mut scanner = Scanner::default();
        let mut bad = vec![b'Q'];
        bad.extend_from_slice(&3u32.to_be_bytes());
        assert_eq!(
            scanner.scan(&bad, MAX, |_| Want::Tag, |_, _| Flow::Pass),
            Err(FrameError::BadLength { tag: b'Q', len: 3 })
        );
        let mut huge = vec![b'Q'];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(scanner
            .scan(&huge, MAX, |_| Want::Tag, |_, _| Flow::Pass)
            .is_err());
        // A message too long to read whole streams instead, without its body.
        let long_status = msg(b'Z', &[b'I'; 100]);
        let mut bodies = Vec::new();
        let n = Scanner::default()
            .scan(
                &long_status,
                MAX,
                |_| Want::Whole(64),
                |_, body| {
                    bodies.push(body.is_some());
                    Flow::Pass
                },
            )
            .unwrap();
        assert_eq!((n, bodies), (long_status.len(), vec![false]));
    }

    #[test]
    fn stop_leaves_the_message_unscanned() {
        let mut stream = msg(b'Q', b"select 1\0");
        let terminate_at = stream.len();
        stream.extend(msg(b'X', b""));
        let mut scanner = Scanner::default();
        let n = scanner
            .scan(
                &stream,
                MAX,
                |_| Want::Tag,
                |t, _| if t == b'X' { Flow::Stop } else { Flow::Pass },
            )
            .unwrap();
        assert_eq!(n, terminate_at);
    }

    #[test]
    fn a_head_is_shown_once_it_has_arrived() {
        let stream = msg(b'B', &[b'x'; 100]);
        let mut heads = Vec::new();
        let mut scanner = Scanner::default();
        let mut on = |_, body: Option<&[u8]>| {
            heads.push(body.map(<[u8]>::len));
            Flow::Pass
        };
        assert_eq!(
            scanner.scan(&stream[..20], MAX, |_| Want::Head(30), &mut on),
            Ok(0)
        );
        assert_eq!(
            scanner.scan(&stream, MAX, |_| Want::Head(30), &mut on),
            Ok(stream.len())
        );
        let short = msg(b'B', b"ab");
        assert_eq!(
            Scanner::default().scan(&short, MAX, |_| Want::Head(30), &mut on),
            Ok(short.len())
        );
        assert_eq!(heads, vec![Some(30), Some(2)]);
    }

    #[test]
    fn truncated_messages_wait_for_more() {
        assert_eq!(whole(&msg(b'R', b"\0\0\0\0")[..6], 100), Ok(None));
        assert_eq!(whole(b"R\0\0", 100), Ok(None));
        let full = msg(b'R', b"\0\0\0\0");
        assert_eq!(whole(&full, 100), Ok(Some((b'R', &b"\0\0\0\0"[..], 9))));
        assert!(whole(&msg(b'p', &[0; 200]), 100).is_err());
    }

    #[test]
    fn startup_packets_are_bounded() {
        let mut packet = 16u32.to_be_bytes().to_vec();
        packet.extend_from_slice(&crate::proto::PROTOCOL_3_0.to_be_bytes());
        packet.extend_from_slice(b"user\0\0\0\0");
        assert_eq!(startup(&packet[..10]), Ok(None));
        assert_eq!(startup(&packet), Ok(Some((&packet[4..16], 16))));
        assert!(startup(&20_000u32.to_be_bytes()).is_err());
        assert!(startup(&4u32.to_be_bytes()).is_err());
        assert!(startup(b"GET / HTTP/1.1\r\n").is_err());
    }
}
