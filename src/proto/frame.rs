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

/// The big-endian u32 at the front of `b`, when `b` has four bytes.
fn be_u32(b: &[u8]) -> Option<usize> {
    let bytes: [u8; 4] = b.get(..4)?.try_into().ok()?;
    usize::try_from(u32::from_be_bytes(bytes)).ok()
}

/// A tagged message's header at the front of `buf`: tag and length field, once all 5 bytes are there. A length
/// that does not fit a `usize` (16-bit targets) is reported as `usize::MAX`, which no limit admits.
fn header(buf: &[u8]) -> Option<(u8, usize)> {
    let (&tag, rest) = buf.split_first()?;
    rest.get(..4)?;
    Some((tag, be_u32(rest).unwrap_or(usize::MAX)))
}

/// A message read whole: tag, body, and bytes it took in the buffer.
pub type Whole<'a> = (u8, &'a [u8], usize);

/// A complete tagged message at the front of `buf`: `(tag, body, total bytes)`, or `None` until it has arrived.
/// Used where messages are small and bounded by `max_len` (login, the server's startup replies).
pub fn whole(buf: &[u8], max_len: usize) -> Result<Option<Whole<'_>>, FrameError> {
    let Some((tag, len)) = header(buf) else {
        return Ok(None);
    };
    if !(4..=max_len).contains(&len) {
        return Err(FrameError::BadLength { tag, len });
    }
    // len >= 4 (checked above): the body is the len - 4 bytes after the header, and the message takes
    // 5 + (len - 4) = len + 1 bytes, which cannot overflow: the body's bytes are in `buf`.
    let body = buf.get(5..).and_then(|after| after.get(..len - 4));
    Ok(body.map(|body| (tag, body, 5 + body.len())))
}

/// A complete startup-phase packet at the front of `buf`: `(body after the length, total bytes)`.
pub fn startup(buf: &[u8]) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some(len) = buf.get(..4).map(|b| be_u32(b).unwrap_or(usize::MAX)) else {
        return Ok(None);
    };
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
        // Invariant: pos <= buf.len(); every step below moves it by bytes that are in `buf`.
        let mut pos = 0;
        loop {
            let mut rest = buf.get(pos..).unwrap_or_default();
            if self.body_left > 0 {
                // step <= body_left, and step <= rest.len() keeps pos <= buf.len().
                let step = self.body_left.min(rest.len());
                self.body_left -= step;
                pos += step;
                if self.body_left > 0 {
                    return Ok(pos);
                }
                rest = rest.get(step..).unwrap_or_default();
            }
            let Some((tag, len)) = header(rest) else {
                return Ok(pos);
            };
            if len < 4 || len > max_len {
                return Err(FrameError::BadLength { tag, len });
            }
            let body_len = len - 4; // len >= 4, checked above
            let shown = match want(tag) {
                Want::Tag => None,
                Want::Whole(max) => Some(body_len).filter(|&n| n <= max),
                Want::Head(max) => Some(body_len.min(max)),
            };
            let body = match shown {
                None => None,
                Some(n) => match rest.get(5..).and_then(|after| after.get(..n)) {
                    Some(body) => Some(body),
                    None => return Ok(pos),
                },
            };
            if on(tag, body) == Flow::Stop {
                return Ok(pos);
            }
            // The header's 5 bytes are in `rest` (header() saw them).
            pos += 5;
            self.body_left = body_len;
        }
    }

    /// The caller forwarded a message's header and the first part of its body itself (rewritten); the scan
    /// resumes by streaming the `rest` of that body.
    pub fn resume_in_body(&mut self, rest: usize) {
        // A contract with the caller, not a check of input: it is called only after `on` stopped the scan at a
        // message start, where nothing of an earlier body is left.
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

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = crate::proto::MAX_MESSAGE_LEN;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn want() -> impl Strategy<Value = Want> {
        prop_oneof![
            Just(Want::Tag),
            (0usize..80).prop_map(Want::Whole),
            (0usize..80).prop_map(Want::Head),
        ]
    }

    /// What each tag asks for in one case: by the tag's last two bits.
    fn wants() -> impl Strategy<Value = [Want; 4]> {
        [want(), want(), want(), want()]
    }

    fn messages() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
        messages_from(0)
    }

    /// At least `least` messages of random tags and bodies.
    fn messages_from(least: usize) -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
        let body = prop_oneof![
            4 => proptest::collection::vec(any::<u8>(), 0..40),
            1 => proptest::collection::vec(any::<u8>(), 0..400),
        ];
        proptest::collection::vec((any::<u8>(), body), least..12)
    }

    /// What the scanner must show of a body of `len` bytes for `want`.
    fn shown(want: Want, len: usize) -> Option<usize> {
        match want {
            Want::Tag => None,
            Want::Whole(max) => Some(len).filter(|&n| n <= max),
            Want::Head(max) => Some(len.min(max)),
        }
    }

    /// A stream of messages with where each starts and what the scanner must report for it.
    struct Model {
        stream: Vec<u8>,
        starts: Vec<usize>,
        expected: Vec<(u8, Option<Vec<u8>>)>,
    }

    fn model(messages: &[(u8, Vec<u8>)], wants: &[Want; 4]) -> Model {
        let mut m = Model {
            stream: Vec::new(),
            starts: Vec::new(),
            expected: Vec::new(),
        };
        for (tag, body) in messages {
            m.starts.push(m.stream.len());
            m.stream.extend(msg(*tag, body));
            let shown = shown(wants[usize::from(tag % 4)], body.len());
            m.expected.push((*tag, shown.map(|n| body[..n].to_vec())));
        }
        m
    }

    /// A message seen by the scanner, and how many bytes of the stream had arrived then.
    type Report = (u8, Option<Vec<u8>>, usize);

    /// Feeds `stream` in pieces of the given sizes (cycled) as a socket would: each scan sees what is left
    /// unscanned plus the new piece. Returns the reports, the bytes scanned, the error if any, and the scanner.
    fn feed(
        stream: &[u8],
        pieces: &[usize],
        max_len: usize,
        wants: &[Want; 4],
    ) -> (Vec<Report>, usize, Option<FrameError>, Scanner) {
        let mut scanner = Scanner::default();
        let (mut reports, mut buf, mut scanned, mut arrived) = (Vec::new(), Vec::new(), 0, 0);
        let mut sizes = pieces.iter().copied().cycle();
        while arrived < stream.len() {
            let size = sizes.next().unwrap_or(1).max(1).min(stream.len() - arrived);
            buf.extend_from_slice(&stream[arrived..arrived + size]);
            arrived += size;
            let result = scanner.scan(
                &buf,
                max_len,
                |t| wants[usize::from(t % 4)],
                |t, b| {
                    reports.push((t, b.map(<[u8]>::to_vec), arrived));
                    Flow::Pass
                },
            );
            match result {
                Ok(n) => {
                    assert!(n <= buf.len(), "scanned {n} of {} bytes", buf.len());
                    scanned += n;
                    buf.drain(..n);
                }
                Err(e) => return (reports, scanned, Some(e), scanner),
            }
        }
        (reports, scanned, None, scanner)
    }

    proptest! {
        #![proptest_config(crate::fuzzing::config())]

        /// Whole messages in any chunking: the same reports as for the whole buffer at once, each only once
        /// its header and the body part it asked for had arrived; all bytes scanned, ending between messages.
        #[test]
        fn chunking_does_not_change_what_is_seen(
            messages in messages(),
            wants in wants(),
            pieces in proptest::collection::vec(1usize..64, 1..8),
        ) {
            let m = model(&messages, &wants);
            let (reports, scanned, error, scanner) = feed(&m.stream, &pieces, MAX, &wants);
            prop_assert_eq!(error, None);
            prop_assert_eq!(scanned, m.stream.len());
            prop_assert!(scanner.at_boundary());
            let seen: Vec<_> = reports.iter().map(|(t, b, _)| (*t, b.clone())).collect();
            prop_assert_eq!(&seen, &m.expected);
            for ((_, body, arrived), start) in reports.iter().zip(&m.starts) {
                let needed = start + 5 + body.as_ref().map_or(0, Vec::len);
                prop_assert!(*arrived >= needed, "reported at {} of {} bytes", arrived, needed);
            }
            let (at_once, ..) = feed(&m.stream, &[usize::MAX], MAX, &wants);
            let whole_buffer: Vec<Report> =
                reports.iter().map(|(t, b, _)| (*t, b.clone(), m.stream.len())).collect();
            prop_assert_eq!(at_once, whole_buffer);
        }

        /// A stream cut anywhere: exactly the messages whose header and asked-for body part are in are
        /// reported, and the scan stops at the first message that is not, having passed on every byte before
        /// it (streamed bodies included, since they need not be held).
        #[test]
        fn a_cut_stream_reports_only_what_has_arrived(
            messages in messages(),
            wants in wants(),
            pieces in proptest::collection::vec(1usize..64, 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let m = model(&messages, &wants);
            let cut = cut.index(m.stream.len() + 1);
            let (reports, scanned, error, scanner) = feed(&m.stream[..cut], &pieces, MAX, &wants);
            prop_assert_eq!(error, None);
            let (mut count, mut expect_scanned, mut boundary) = (0, cut, true);
            for (i, (&start, (_, body))) in m.starts.iter().zip(&messages).enumerate() {
                let head = m.expected[i].1.as_ref().map_or(0, Vec::len);
                if start + 5 + head > cut {
                    expect_scanned = start;
                    break;
                }
                count += 1;
                let end = start + 5 + body.len();
                if end > cut {
                    boundary = false;
                    break;
                }
            }
            prop_assert_eq!(reports.len(), count);
            prop_assert_eq!(scanned, expect_scanned);
            prop_assert_eq!(scanner.at_boundary(), boundary);
        }

        /// A length below 4 or above the limit is refused with the tag and length, once its header is in,
        /// after every message before it was reported.
        #[test]
        fn bad_lengths_are_refused(
            messages in messages(),
            wants in wants(),
            pieces in proptest::collection::vec(1usize..64, 1..8),
            slack in 0usize..100,
            tag in any::<u8>(),
            short in any::<bool>(),
            bad in any::<u32>(),
        ) {
            let mut m = model(&messages, &wants);
            let longest = messages.iter().map(|(_, b)| b.len()).max().unwrap_or(0);
            let max_len = longest + 4 + slack;
            let len = if short { bad % 4 } else { bad.max(max_len as u32 + 1) };
            m.stream.push(tag);
            m.stream.extend_from_slice(&len.to_be_bytes());
            let (reports, _, error, _) = feed(&m.stream, &pieces, max_len, &wants);
            prop_assert_eq!(error, Some(FrameError::BadLength { tag, len: len as usize }));
            prop_assert_eq!(reports.len(), messages.len());
            let header = &m.stream[m.stream.len() - 5..];
            prop_assert_eq!(whole(header, max_len), Err(FrameError::BadLength { tag, len: len as usize }));
        }

        /// Stopping at a message leaves it and everything after it unscanned.
        #[test]
        fn stop_returns_the_start_of_the_message(
            messages in messages_from(1),
            wants in wants(),
            stop_at in any::<prop::sample::Index>(),
        ) {
            let m = model(&messages, &wants);
            let stop_at = stop_at.index(messages.len());
            let mut count = 0;
            let n = Scanner::default().scan(&m.stream, MAX, |t| wants[usize::from(t % 4)], |_, _| {
                count += 1;
                if count > stop_at { Flow::Stop } else { Flow::Pass }
            });
            prop_assert_eq!(n, Ok(m.starts[stop_at]));
        }

        /// Any bytes, any limits, any chunking: no panic, never more scanned than given, and no body shown
        /// longer than asked.
        #[test]
        fn arbitrary_bytes_are_scanned_safely(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            wants in wants(),
            pieces in proptest::collection::vec(1usize..64, 1..8),
            max_len in prop_oneof![0usize..600, Just(MAX), Just(usize::MAX)],
        ) {
            let mut scanner = Scanner::default();
            let (mut buf, mut arrived) = (Vec::new(), 0);
            for size in pieces.iter().cycle() {
                if arrived >= bytes.len() {
                    break;
                }
                let size = (*size).min(bytes.len() - arrived);
                buf.extend_from_slice(&bytes[arrived..arrived + size]);
                arrived += size;
                let mut too_long = false;
                let result = scanner.scan(&buf, max_len, |t| wants[usize::from(t % 4)], |t, b| {
                    let limit = match wants[usize::from(t % 4)] {
                        Want::Tag => 0,
                        Want::Whole(max) | Want::Head(max) => max,
                    };
                    too_long |= b.is_some_and(|b| b.len() > limit);
                    Flow::Pass
                });
                prop_assert!(!too_long);
                match result {
                    Ok(n) => {
                        prop_assert!(n <= buf.len());
                        buf.drain(..n);
                    }
                    Err(FrameError::BadLength { len, .. }) => {
                        prop_assert!(len < 4 || len > max_len);
                        break;
                    }
                }
            }
        }

        /// `whole` finds a message only once all of it is in, whatever follows it.
        #[test]
        fn whole_waits_for_all_of_a_message(
            tag in any::<u8>(),
            body in proptest::collection::vec(any::<u8>(), 0..300),
            tail in proptest::collection::vec(any::<u8>(), 0..20),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut buf = msg(tag, &body);
            let n = buf.len();
            buf.extend_from_slice(&tail);
            prop_assert_eq!(whole(&buf, body.len() + 4), Ok(Some((tag, &body[..], n))));
            let cut = cut.index(n);
            prop_assert_eq!(whole(&buf[..cut], body.len() + 4), Ok(None));
            if !buf.is_empty() && cut >= 5 {
                prop_assert!(whole(&buf[..cut], body.len() + 3).is_err());
            }
        }

        /// `whole` on any bytes: no panic, and what it finds is a message whose length field it checked.
        #[test]
        fn whole_on_arbitrary_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            max_len in prop_oneof![0usize..64, Just(MAX), Just(usize::MAX)],
        ) {
            if let Ok(Some((tag, body, n))) = whole(&bytes, max_len) {
                prop_assert_eq!(tag, bytes[0]);
                prop_assert_eq!(n, body.len() + 5);
                prop_assert!(n <= bytes.len() && n - 1 <= max_len);
                prop_assert_eq!(body, &bytes[5..n]);
                prop_assert_eq!(u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize, n - 1);
            }
        }

        /// Startup packets: found once whole, their length bounded both ways, any bytes safe.
        #[test]
        fn startup_packets(
            body in proptest::collection::vec(any::<u8>(), 4..200),
            tail in proptest::collection::vec(any::<u8>(), 0..20),
            cut in any::<prop::sample::Index>(),
            junk in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut buf = ((body.len() + 4) as u32).to_be_bytes().to_vec();
            buf.extend_from_slice(&body);
            let n = buf.len();
            buf.extend_from_slice(&tail);
            prop_assert_eq!(startup(&buf), Ok(Some((&body[..], n))));
            prop_assert_eq!(startup(&buf[..cut.index(n)]), Ok(None));
            match startup(&junk) {
                Ok(Some((body, n))) => {
                    prop_assert!((8..=crate::proto::MAX_STARTUP_LEN).contains(&n) && n <= junk.len());
                    prop_assert_eq!(body, &junk[4..n]);
                }
                Ok(None) => {
                    let len = junk.get(..4).map(|l| u32::from_be_bytes(l.try_into().unwrap()) as usize);
                    prop_assert!(len.is_none_or(|len| len > junk.len()));
                }
                Err(FrameError::BadLength { tag, len }) => {
                    prop_assert_eq!(tag, 0);
                    prop_assert!(!(8..=crate::proto::MAX_STARTUP_LEN).contains(&len));
                }
            }
        }
    }
}
