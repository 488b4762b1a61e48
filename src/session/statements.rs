//! Prepared statements under transaction pooling. A statement a client prepared lives on one server, and the
//! client's next transaction may run on another, so pgherd keeps each client's statements itself and makes
//! sure the server it has at the moment holds the ones it uses.
//!
//! Every distinct statement (text, parameter types, and the client's settings, since search_path decides
//! what its names mean) gets one server-side name, `pgherd_<128-bit hash>`: two clients that call different
//! statements `S_1` never meet, and clients preparing the same statement share it on each server. Each server
//! remembers which it holds (a bounded LRU; evicted ones are closed). Then:
//! - Parse of a named statement is forwarded under the server name, or, when the server has it already,
//!   replaced by a Close of a name that never exists, whose CloseComplete becomes the ParseComplete.
//! - Bind and Describe of a statement the server lacks are preceded by a hidden Close and Parse that prepare
//!   it; their replies are dropped. The unnamed statement is re-prepared the same way when it was parsed in an
//!   earlier transaction, since PostgreSQL keeps it until the next Parse or Query.
//! - Close forgets the client's name only; DISCARD ALL and DEALLOCATE ALL forget all its names.
//!
//! Replies to Parse and Close are told apart by order: the server answers messages in order and skips the
//! rest of a batch after an error, so each expected reply carries its batch (Syncs and Queries sent before
//! it) and an error in batch N voids the expectations still queued for it, undoing what they assumed.
//! Pure code over message bodies: the relay does the I/O.

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hasher};
use std::rc::Rc;

use super::intern::Interner;
use super::params::Fingerprint;
use crate::proto::encode;

/// A statement's identity on servers: a 128-bit hash, so that distinct statements never share a name.
pub type StatementId = u128;

const NAME_PREFIX: &[u8] = b"pgherd_";
const NAME_LEN: usize = NAME_PREFIX.len() + 32;
/// Closed to get a CloseComplete where a ParseComplete is due: a name that no statement ever has.
const NO_STATEMENT: &[u8] = b"pgherd_none";

/// Longest statement or portal name pgherd reads from a client (PostgreSQL itself has no limit; drivers use a
/// few dozen bytes). A Bind, Describe or Close whose names are longer is refused.
pub const MAX_NAMES: usize = 1024;

/// A prepared statement as servers know it.
#[derive(Debug)]
pub struct Statement {
    id: StatementId,
    /// The Parse body after the name: query text, NUL, parameter types.
    parse: Box<[u8]>,
}

impl Statement {
    fn name(&self) -> [u8; NAME_LEN] {
        server_name(self.id)
    }
}

fn server_name(id: StatementId) -> [u8; NAME_LEN] {
    let mut name = [0u8; NAME_LEN];
    name[..NAME_PREFIX.len()].copy_from_slice(NAME_PREFIX);
    for (i, nibble) in (0..32)
        .rev()
        .map(|i| (id >> (4 * i)) as u8 & 0xf)
        .enumerate()
    {
        name[NAME_PREFIX.len() + i] = b"0123456789abcdef"[nibble as usize];
    }
    name
}

/// The shard's statements, shared by the clients that prepared them.
pub type Registry = Interner<StatementId, Statement>;

impl Registry {
    pub fn statement(&self, settings: Fingerprint, parse: &[u8]) -> Rc<Statement> {
        let half = |seed: u8| {
            let mut h = DefaultHasher::new();
            h.write_u8(seed);
            h.write_u64(settings);
            h.write(parse);
            h.finish() as u128
        };
        let id = (half(1) << 64) | half(2);
        self.intern(
            id,
            parse,
            |s, p| *s.parse == **p,
            |p| Statement {
                id,
                parse: p.into(),
            },
        )
    }
}

/// The statements one server holds, with their last use for eviction, and the replies to Parse and Close it
/// owes the client using it.
#[derive(Debug, Default)]
pub struct ServerStatements {
    held: Held,
    expected: VecDeque<Expected>,
    /// Syncs, Queries and FunctionCalls sent, and ReadyForQuery received: the batch a message belongs to.
    batches_sent: u32,
    batches_done: u32,
}

/// The statements a server holds: what moves with it to another shard.
#[derive(Debug, Default)]
pub struct Held {
    last_use: HashMap<StatementId, u64>,
    clock: u64,
}

impl From<Held> for ServerStatements {
    fn from(held: Held) -> Self {
        ServerStatements {
            held,
            ..Default::default()
        }
    }
}

impl ServerStatements {
    /// What moves with an idle server (which owes no replies) to another shard.
    pub fn into_held(self) -> Held {
        debug_assert!(self.expected.is_empty());
        self.held
    }

    fn expect(&mut self, reply: Reply, undo: Undo) {
        let batch = self.batches_sent;
        self.expected.push_back(Expected { batch, reply, undo });
    }

    fn batch_sent(&mut self) {
        self.batches_sent = self.batches_sent.wrapping_add(1);
    }

    /// The server goes back to the pool: nothing is owed any more.
    pub fn released(&mut self) {
        self.expected.clear();
        self.batches_done = self.batches_sent;
    }

    /// Whether the server holds `id`, counting this as a use.
    fn touch(&mut self, id: StatementId) -> bool {
        self.held.clock += 1;
        match self.held.last_use.get_mut(&id) {
            Some(used) => {
                *used = self.held.clock;
                true
            }
            None => false,
        }
    }

    /// Records `id` as held; returns the least recently used statement to close when there are more than `cap`.
    fn add(&mut self, id: StatementId, cap: usize) -> Option<StatementId> {
        self.held.clock += 1;
        self.held.last_use.insert(id, self.held.clock);
        if self.held.last_use.len() <= cap {
            return None;
        }
        let (&oldest, _) = self.held.last_use.iter().min_by_key(|(_, &used)| used)?;
        self.held.last_use.remove(&oldest);
        Some(oldest)
    }

    /// The server dropped its statements (DISCARD ALL, DEALLOCATE ALL), or pgherd no longer knows.
    pub fn clear(&mut self) {
        self.held.last_use.clear();
    }
}

/// What the relay does with a server's ParseComplete or CloseComplete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Pass,
    /// The reply to a message pgherd added: the client must not see it.
    Hide,
    /// A CloseComplete standing in for the ParseComplete of a Parse pgherd did not need to send.
    AsParseComplete,
}

/// What an expected reply assumed, to undo when the server skips or fails the message.
#[derive(Debug)]
enum Undo {
    Nothing,
    /// A Parse: the server does not hold `id`; the client's `name` (its own Parse) was not created.
    Parse {
        id: Option<StatementId>,
        name: Option<Box<[u8]>>,
    },
    /// A Parse of the unnamed statement: the server's unnamed statement is not the client's.
    Unnamed,
    /// A Close: the server still holds `evicted`; the client still has `name`.
    Close {
        evicted: Option<StatementId>,
        name: Option<(Box<[u8]>, Rc<Statement>)>,
    },
}

#[derive(Debug)]
struct Expected {
    batch: u32,
    reply: Reply,
    undo: Undo,
}

/// What the relay does with a client message.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Forward it as it is.
    Pass,
    /// Lease a server first: the rewrite depends on what it holds.
    NeedServer,
    /// Put `bytes` in place of the message's first `head` bytes (header included; 0 when `bytes` only go
    /// before it, and the message is looked at again afterwards).
    Rewrite { head: usize, bytes: Vec<u8> },
    /// Answer the message with `bytes` instead of forwarding it.
    Answer(Vec<u8>),
}

/// The parts of the world a rewrite consults.
pub struct Context<'a> {
    pub registry: &'a Registry,
    pub settings: Fingerprint,
    /// Most statements kept per server (`max_prepared_statements`).
    pub cap: usize,
}

type Names = HashMap<Box<[u8]>, Rc<Statement>>;

/// One client's statements.
#[derive(Debug, Default)]
pub struct Statements {
    /// By the client's name; boxed and made on first use so a client without any costs one pointer.
    named: Option<Box<Names>>,
    unnamed: Option<Rc<Statement>>,
    /// The server leased now holds `unnamed` as its unnamed statement.
    unnamed_here: bool,
}

/// The statement name of SQL that is exactly `DEALLOCATE [PREPARE] name`, as PostgreSQL reads the name (folded
/// to lower case unless double-quoted).
fn deallocated(sql: &[u8]) -> Option<Vec<u8>> {
    let sql = std::str::from_utf8(sql).ok()?;
    let sql = sql
        .trim_end_matches(['\0', ';', ' ', '\t', '\r', '\n'])
        .trim_start();
    let mut words = sql.split_ascii_whitespace();
    if !words.next()?.eq_ignore_ascii_case("DEALLOCATE") {
        return None;
    }
    let mut name = words.next()?;
    if name.eq_ignore_ascii_case("PREPARE") {
        name = words.next()?;
    }
    if words.next().is_some() || name.eq_ignore_ascii_case("ALL") || name.contains(';') {
        return None;
    }
    match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
        Some(quoted) if !quoted.replace("\"\"", "").contains('"') => {
            Some(quoted.replace("\"\"", "\"").into_bytes())
        }
        Some(_) => None,
        None if name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$') =>
        {
            Some(name.to_ascii_lowercase().into_bytes())
        }
        None => None,
    }
}

/// The first NUL-terminated string of `b` and what follows it.
fn cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = b.iter().position(|&c| c == 0)?;
    Some((&b[..end], &b[end + 1..]))
}

/// A message's new header and first fields, for a rewrite that keeps the rest of its body: `old_len` is the
/// length field it had, `cut` the bytes of body replaced by `parts`.
fn head(out: &mut Vec<u8>, tag: u8, old_len: usize, cut: usize, parts: &[&[u8]]) {
    let new: usize = parts.iter().map(|p| p.len()).sum();
    out.push(tag);
    out.extend_from_slice(&((old_len - cut + new) as u32).to_be_bytes());
    for part in parts {
        out.extend_from_slice(part);
    }
}

impl Statements {
    /// The client's message `tag`, with `len` its length field and `body` its first bytes (the whole body for
    /// Parse and Query when short enough to scan, else `None`), to go to `server`. `drops_all`: a Parse of
    /// DISCARD ALL or DEALLOCATE ALL, taken to run (drivers send them through the extended protocol too).
    pub fn client(
        &mut self,
        tag: u8,
        len: usize,
        body: Option<&[u8]>,
        drops_all: bool,
        cx: &Context,
        server: Option<&mut ServerStatements>,
    ) -> Action {
        if !b"PBDCSF".contains(&tag) {
            return Action::Pass;
        }
        let Some(server) = server else {
            return Action::NeedServer;
        };
        if drops_all {
            server.clear();
            self.named = None;
        }
        match (tag, body) {
            (b'P', Some(body)) => self.parse(len, body, cx, server),
            // Too long to read whole: forwarded untouched (the client is pinned for it).
            (b'P', None) => {
                server.expect(Reply::Pass, Undo::Nothing);
                Action::Pass
            }
            (b'B', Some(body)) => {
                match cstr(body).and_then(|(portal, rest)| Some((portal, cstr(rest)?.0))) {
                    Some((portal, name)) => {
                        let cut = portal.len() + 1 + name.len() + 1;
                        self.use_statement(name, cx, server, |out, server_name| {
                            head(out, b'B', len, cut, &[portal, b"\0", server_name, b"\0"]);
                            5 + cut
                        })
                    }
                    None => Action::Pass,
                }
            }
            (b'D', Some([b'S', rest @ ..])) => match cstr(rest) {
                Some((name, _)) => self.use_statement(name, cx, server, |out, server_name| {
                    head(out, b'D', len, 2 + name.len(), &[b"S", server_name, b"\0"]);
                    5 + 2 + name.len()
                }),
                None => Action::Pass,
            },
            (b'C', Some([b'S', rest @ ..])) => match cstr(rest) {
                Some((name, _)) => self.close(len, name, server),
                None => Action::Pass,
            },
            (b'C', _) => {
                server.expect(Reply::Pass, Undo::Nothing);
                Action::Pass
            }
            (b'S' | b'F', _) => {
                server.batch_sent();
                Action::Pass
            }
            _ => Action::Pass,
        }
    }

    /// A Query with text `sql` (when read whole): it drops the unnamed statement, and DISCARD ALL or
    /// DEALLOCATE ALL (`drops_all`) drop every statement of the session. `DEALLOCATE name` of one of the
    /// client's protocol-level statements is answered here when the client waits for nothing else (`ready`
    /// is then the transaction status to report): the server never had that name.
    pub fn query(
        &mut self,
        sql: Option<&[u8]>,
        drops_all: bool,
        ready: Option<u8>,
        server: Option<&mut ServerStatements>,
    ) -> Action {
        let target = sql
            .zip(ready)
            .and_then(|(sql, status)| Some((deallocated(sql)?, status)));
        if let Some((name, status)) = target {
            if self
                .named
                .as_mut()
                .and_then(|m| m.remove(&name[..]))
                .is_some()
            {
                let mut bytes = Vec::new();
                encode::parts(&mut bytes, b'C', &[b"DEALLOCATE\0"]);
                encode::ready_for_query(&mut bytes, status);
                return Action::Answer(bytes);
            }
        }
        let Some(server) = server else {
            return Action::NeedServer;
        };
        if drops_all {
            server.clear();
            self.named = None;
        }
        self.unnamed = None;
        self.unnamed_here = false;
        server.batch_sent();
        Action::Pass
    }

    fn parse(
        &mut self,
        len: usize,
        body: &[u8],
        cx: &Context,
        server: &mut ServerStatements,
    ) -> Action {
        let Some((name, parse)) = cstr(body) else {
            server.expect(Reply::Pass, Undo::Nothing);
            return Action::Pass;
        };
        let statement = cx.registry.statement(cx.settings, parse);
        if name.is_empty() {
            self.unnamed = Some(statement);
            self.unnamed_here = true;
            server.expect(Reply::Pass, Undo::Unnamed);
            return Action::Pass;
        }
        let mut bytes = Vec::new();
        if let Some(existing) = self.named.as_ref().and_then(|m| m.get(name)).cloned() {
            // PostgreSQL refuses a second statement of the same name: have the server say so.
            self.prepare(&existing, server, cx.cap, &mut bytes);
            encode::parts(&mut bytes, b'P', &[&existing.name(), b"\0", parse]);
            server.expect(Reply::Pass, Undo::Nothing);
            return Action::Rewrite {
                head: 1 + len,
                bytes,
            };
        }
        let named = self.named.get_or_insert_default();
        named.insert(name.into(), statement.clone());
        let forget = Some(Box::<[u8]>::from(name));
        if server.touch(statement.id) {
            encode::parts(&mut bytes, b'C', &[b"S", NO_STATEMENT, b"\0"]);
            server.expect(
                Reply::AsParseComplete,
                Undo::Parse {
                    id: None,
                    name: forget,
                },
            );
        } else {
            self.send_parse(&statement, server, cx.cap, &mut bytes, Reply::Pass, forget);
        }
        Action::Rewrite {
            head: 1 + len,
            bytes,
        }
    }

    /// A Bind or Describe of statement `name`: prepared on the server first when it lacks it, then renamed by
    /// `rename`, which writes the message's new head and returns how many bytes of the old one it replaces.
    fn use_statement(
        &mut self,
        name: &[u8],
        cx: &Context,
        server: &mut ServerStatements,
        rename: impl FnOnce(&mut Vec<u8>, &[u8]) -> usize,
    ) -> Action {
        let mut bytes = Vec::new();
        if name.is_empty() {
            return match &self.unnamed {
                Some(unnamed) if !self.unnamed_here => {
                    encode::parts(&mut bytes, b'P', &[b"\0", &unnamed.parse]);
                    self.unnamed_here = true;
                    server.expect(Reply::Hide, Undo::Unnamed);
                    Action::Rewrite { head: 0, bytes }
                }
                _ => Action::Pass,
            };
        }
        let Some(statement) = self.named.as_ref().and_then(|m| m.get(name)).cloned() else {
            // Not one of the client's protocol-level statements (an SQL PREPARE of a pinned client, or a
            // mistake the server will report).
            return Action::Pass;
        };
        self.prepare(&statement, server, cx.cap, &mut bytes);
        let head = rename(&mut bytes, &statement.name());
        Action::Rewrite { head, bytes }
    }

    fn close(&mut self, len: usize, name: &[u8], server: &mut ServerStatements) -> Action {
        if name.is_empty() {
            self.unnamed = None;
            self.unnamed_here = false;
            server.expect(Reply::Pass, Undo::Nothing);
            return Action::Pass;
        }
        let Some(statement) = self.named.as_mut().and_then(|m| m.remove(name)) else {
            server.expect(Reply::Pass, Undo::Nothing);
            return Action::Pass;
        };
        // The server keeps the statement for others; closing a name nobody has still answers CloseComplete.
        let mut bytes = Vec::new();
        head(
            &mut bytes,
            b'C',
            len,
            2 + name.len(),
            &[b"S", NO_STATEMENT, b"\0"],
        );
        server.expect(
            Reply::Pass,
            Undo::Close {
                evicted: None,
                name: Some((name.into(), statement)),
            },
        );
        Action::Rewrite {
            head: 5 + 2 + name.len(),
            bytes,
        }
    }

    /// Hidden messages that give the server `statement` if it lacks it.
    fn prepare(
        &mut self,
        statement: &Statement,
        server: &mut ServerStatements,
        cap: usize,
        out: &mut Vec<u8>,
    ) {
        if !server.touch(statement.id) {
            self.send_parse(statement, server, cap, out, Reply::Hide, None);
        }
    }

    /// Close (in case the server has it after all: a Close of a missing statement is no error) and Parse of
    /// `statement` under its server name, and the Close of whatever that pushes out of the server's LRU.
    fn send_parse(
        &mut self,
        statement: &Statement,
        server: &mut ServerStatements,
        cap: usize,
        out: &mut Vec<u8>,
        reply: Reply,
        client_name: Option<Box<[u8]>>,
    ) {
        if let Some(evicted) = server.add(statement.id, cap) {
            encode::parts(out, b'C', &[b"S", &server_name(evicted), b"\0"]);
            let evicted = Some(evicted);
            server.expect(
                Reply::Hide,
                Undo::Close {
                    evicted,
                    name: None,
                },
            );
        }
        let name = statement.name();
        encode::parts(out, b'C', &[b"S", &name, b"\0"]);
        server.expect(Reply::Hide, Undo::Nothing);
        encode::parts(out, b'P', &[&name, b"\0", &statement.parse]);
        let undo = Undo::Parse {
            id: Some(statement.id),
            name: client_name,
        };
        server.expect(reply, undo);
    }

    /// The server sent ParseComplete or CloseComplete: what to do with it.
    pub fn reply(&mut self, server: &mut ServerStatements) -> Reply {
        server.expected.pop_front().map_or(Reply::Pass, |e| e.reply)
    }

    /// The server sent an ErrorResponse: the messages of the current batch still expected will be skipped.
    pub fn error(&mut self, server: &mut ServerStatements) {
        while let Some(expected) = server
            .expected
            .pop_front_if(|e| e.batch == server.batches_done)
        {
            self.undo(expected.undo, server);
        }
    }

    /// The server sent ReadyForQuery: a batch is over.
    pub fn ready(&mut self, server: &mut ServerStatements) {
        // Anything still expected from the finished batch was never answered (it was skipped).
        self.error(server);
        server.batches_done = server.batches_done.wrapping_add(1);
    }

    fn undo(&mut self, undo: Undo, server: &mut ServerStatements) {
        match undo {
            Undo::Nothing => {}
            Undo::Parse { id, name } => {
                if let Some(id) = id {
                    server.held.last_use.remove(&id);
                }
                if let (Some(name), Some(named)) = (name, self.named.as_mut()) {
                    named.remove(&name);
                }
            }
            Undo::Unnamed => self.unnamed_here = false,
            Undo::Close { evicted, name } => {
                if let Some(id) = evicted {
                    server.held.clock += 1;
                    server.held.last_use.insert(id, server.held.clock);
                }
                if let Some((name, statement)) = name {
                    self.named.get_or_insert_default().insert(name, statement);
                }
            }
        }
    }

    /// The client's server went back to the pool or was lost: the next one holds none of its unnamed statement.
    pub fn left_server(&mut self) {
        self.unnamed_here = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Statements {
        fn count(&self) -> usize {
            self.named.as_ref().map_or(0, |m| m.len())
        }
    }

    impl ServerStatements {
        fn len(&self) -> usize {
            self.held.last_use.len()
        }
    }

    /// The messages in `bytes`, as (tag, body).
    fn messages(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
            out.push((bytes[0], bytes[5..1 + len].to_vec()));
            bytes = &bytes[1 + len..];
        }
        out
    }

    fn body(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    struct World {
        registry: Registry,
        servers: Vec<ServerStatements>,
        cap: usize,
    }

    impl World {
        fn new(servers: usize, cap: usize) -> World {
            World {
                registry: Registry::default(),
                servers: (0..servers).map(|_| ServerStatements::default()).collect(),
                cap,
            }
        }

        /// Sends one client message through `client` as if on server `on`; returns what goes to the server.
        fn send(
            &mut self,
            client: &mut Statements,
            on: usize,
            tag: u8,
            body: &[u8],
        ) -> Vec<(u8, Vec<u8>)> {
            let mut whole = Vec::new();
            encode::parts(&mut whole, tag, &[body]);
            let cx = Context {
                registry: &self.registry,
                settings: 7,
                cap: self.cap,
            };
            let server = Some(&mut self.servers[on]);
            match client.client(tag, body.len() + 4, Some(body), false, &cx, server) {
                Action::Pass => messages(&whole),
                Action::NeedServer | Action::Answer(_) => panic!("not for these messages"),
                Action::Rewrite { head: 0, bytes } => {
                    let mut out = messages(&bytes);
                    out.extend(self.send(client, on, tag, body));
                    out
                }
                Action::Rewrite { head, mut bytes } => {
                    bytes.extend_from_slice(&whole[head..]);
                    messages(&bytes)
                }
            }
        }
    }

    fn parse(name: &str, sql: &str) -> Vec<u8> {
        body(&[name.as_bytes(), b"\0", sql.as_bytes(), b"\0", &[0, 0]])
    }

    fn bind(name: &str) -> Vec<u8> {
        body(&[b"\0", name.as_bytes(), b"\0", &[0, 0, 0, 0, 0, 0]])
    }

    fn server_name_of(sent: &[(u8, Vec<u8>)], tag: u8) -> Vec<u8> {
        let (_, body) = sent.iter().find(|(t, _)| *t == tag).expect("message sent");
        let body = if tag == b'B' { &body[1..] } else { &body[..] };
        cstr(body).unwrap().0.to_vec()
    }

    #[test]
    fn same_name_different_sql_never_collides() {
        let mut w = World::new(1, 10);
        let (mut a, mut b) = (Statements::default(), Statements::default());
        let sent_a = w.send(&mut a, 0, b'P', &parse("S_1", "SELECT 1"));
        let sent_b = w.send(&mut b, 0, b'P', &parse("S_1", "SELECT 2"));
        let (na, nb) = (server_name_of(&sent_a, b'P'), server_name_of(&sent_b, b'P'));
        assert!(na.starts_with(b"pgherd_") && nb.starts_with(b"pgherd_"));
        assert_ne!(na, nb);
        assert_eq!(
            server_name_of(&w.send(&mut a, 0, b'B', &bind("S_1")), b'B'),
            na
        );
        assert_eq!(
            server_name_of(&w.send(&mut b, 0, b'B', &bind("S_1")), b'B'),
            nb
        );
    }

    #[test]
    fn a_statement_follows_the_client_to_another_server_once() {
        let mut w = World::new(2, 10);
        let mut c = Statements::default();
        w.send(&mut c, 0, b'P', &parse("s", "SELECT $1"));
        c.left_server();
        // On server 1 the Bind is preceded by a hidden Close and Parse; the next Bind there is renamed only.
        let sent = w.send(&mut c, 1, b'B', &bind("s"));
        let tags: Vec<u8> = sent.iter().map(|(t, _)| *t).collect();
        assert_eq!(tags, b"CPB");
        let s1 = &mut w.servers[1];
        assert_eq!([c.reply(s1), c.reply(s1)], [Reply::Hide, Reply::Hide]);
        let tags: Vec<u8> = w
            .send(&mut c, 1, b'B', &bind("s"))
            .iter()
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(tags, b"B");
    }

    #[test]
    fn a_parse_the_server_already_has_is_answered_by_a_close() {
        let mut w = World::new(1, 10);
        let (mut a, mut b) = (Statements::default(), Statements::default());
        w.send(&mut a, 0, b'P', &parse("x", "SELECT 1"));
        // a's Close and Parse are answered first.
        a.reply(&mut w.servers[0]);
        a.reply(&mut w.servers[0]);
        let sent = w.send(&mut b, 0, b'P', &parse("y", "SELECT 1"));
        assert_eq!(sent, vec![(b'C', body(&[b"S", NO_STATEMENT, b"\0"]))]);
        assert_eq!(b.reply(&mut w.servers[0]), Reply::AsParseComplete);
    }

    #[test]
    fn close_forgets_the_name_for_this_client_only() {
        let mut w = World::new(1, 10);
        let (mut a, mut b) = (Statements::default(), Statements::default());
        w.send(&mut a, 0, b'P', &parse("s", "SELECT 1"));
        w.send(&mut b, 0, b'P', &parse("s", "SELECT 1"));
        let sent = w.send(&mut a, 0, b'C', b"Ss\0");
        assert_eq!(sent, vec![(b'C', body(&[b"S", NO_STATEMENT, b"\0"]))]);
        assert_eq!(a.count(), 0);
        // a's Bind now goes to the server under the client's own name, which the server will refuse.
        assert_eq!(
            w.send(&mut a, 0, b'B', &bind("s")),
            messages(&{
                let mut m = Vec::new();
                encode::parts(&mut m, b'B', &[&bind("s")]);
                m
            })
        );
        assert_eq!(
            server_name_of(&w.send(&mut b, 0, b'B', &bind("s")), b'B')[..7],
            *b"pgherd_"
        );
    }

    #[test]
    fn the_lru_closes_the_least_recently_used() {
        let mut w = World::new(1, 2);
        let mut c = Statements::default();
        let first = server_name_of(&w.send(&mut c, 0, b'P', &parse("a", "SELECT 1")), b'P');
        w.send(&mut c, 0, b'P', &parse("b", "SELECT 2"));
        let sent = w.send(&mut c, 0, b'P', &parse("c", "SELECT 3"));
        assert_eq!(sent[0], (b'C', body(&[b"S", &first, b"\0"])));
        assert_eq!(w.servers[0].len(), 2);
    }

    #[test]
    fn an_error_undoes_what_the_rest_of_the_batch_assumed() {
        let mut w = World::new(1, 10);
        let mut c = Statements::default();
        // Parse fails on the server: the client's name and the server's statement both never existed.
        w.send(&mut c, 0, b'P', &parse("bad", "SELEC 1"));
        w.send(&mut c, 0, b'S', b"");
        c.reply(&mut w.servers[0]); // the hidden Close's CloseComplete
        c.error(&mut w.servers[0]);
        c.ready(&mut w.servers[0]);
        assert_eq!(c.count(), 0);
        assert_eq!(w.servers[0].len(), 0);
        // In the next batch, an error before the Parse skips it too.
        w.send(&mut c, 0, b'P', &parse("good", "SELECT 1"));
        w.send(&mut c, 0, b'S', b"");
        c.error(&mut w.servers[0]);
        c.ready(&mut w.servers[0]);
        assert_eq!((c.count(), w.servers[0].len()), (0, 0));
        // A successful one stays.
        w.send(&mut c, 0, b'P', &parse("good", "SELECT 1"));
        w.send(&mut c, 0, b'S', b"");
        let s0 = &mut w.servers[0];
        assert_eq!([c.reply(s0), c.reply(s0)], [Reply::Hide, Reply::Pass]);
        c.ready(&mut w.servers[0]);
        assert_eq!((c.count(), w.servers[0].len()), (1, 1));
    }

    #[test]
    fn the_unnamed_statement_is_reprepared_on_a_new_server() {
        let mut w = World::new(2, 10);
        let mut c = Statements::default();
        w.send(&mut c, 0, b'P', &parse("", "SELECT 1"));
        assert_eq!(w.send(&mut c, 0, b'B', &bind("")).len(), 1);
        c.left_server();
        let sent = w.send(&mut c, 1, b'B', &bind(""));
        assert_eq!(sent[0], (b'P', parse("", "SELECT 1")));
        assert_eq!(sent[1].0, b'B');
        // A Query drops it, as PostgreSQL does.
        assert_eq!(c.query(None, false, None, None), Action::NeedServer);
        assert_eq!(
            c.query(None, false, None, Some(&mut w.servers[1])),
            Action::Pass
        );
        c.left_server();
        assert_eq!(w.send(&mut c, 0, b'B', &bind("")).len(), 1);
    }

    #[test]
    fn deallocate_of_a_protocol_statement_is_answered_for_the_client_only() {
        assert_eq!(
            deallocated(b"DEALLOCATE _pg3_0\0"),
            Some(b"_pg3_0".to_vec())
        );
        assert_eq!(
            deallocated(b"deallocate prepare S_1;\0"),
            Some(b"s_1".to_vec())
        );
        assert_eq!(deallocated(b"DEALLOCATE \"S_1\"\0"), Some(b"S_1".to_vec()));
        for sql in [
            "DEALLOCATE ALL",
            "DEALLOCATE a; SELECT 1",
            "SELECT 1",
            "DEALLOCATE \"a\"b\"",
        ] {
            assert_eq!(deallocated(sql.as_bytes()), None, "{sql}");
        }
        let mut w = World::new(1, 10);
        let (mut a, mut b) = (Statements::default(), Statements::default());
        w.send(&mut a, 0, b'P', &parse("_pg3_0", "SELECT 1"));
        w.send(&mut b, 0, b'P', &parse("_pg3_0", "SELECT 1"));
        let sql = Some(&b"DEALLOCATE _pg3_0\0"[..]);
        let answer = a.query(sql, false, Some(b'I'), Some(&mut w.servers[0]));
        let mut expected = Vec::new();
        encode::parts(&mut expected, b'C', &[b"DEALLOCATE\0"]);
        encode::ready_for_query(&mut expected, b'I');
        assert_eq!(answer, Action::Answer(expected));
        assert_eq!((a.count(), b.count()), (0, 1));
        // Now unknown to the client: the server answers, as PostgreSQL would, that it does not exist.
        assert_eq!(
            a.query(sql, false, Some(b'I'), Some(&mut w.servers[0])),
            Action::Pass
        );
    }

    #[test]
    fn settings_are_part_of_a_statement() {
        let registry = Registry::default();
        let a = registry.statement(1, b"SELECT * FROM t\0\0\0");
        let b = registry.statement(2, b"SELECT * FROM t\0\0\0");
        let c = registry.statement(1, b"SELECT * FROM t\0\0\0");
        assert_ne!(a.id, b.id);
        assert!(Rc::ptr_eq(&a, &c));
    }
}
