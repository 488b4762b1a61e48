//! Prepared statements under transaction pooling. A statement a client prepared lives on one server, and the
//! client's next transaction may run on another, so pgherd keeps each client's statements itself and makes
//! sure the server it has at the moment holds the ones it uses.
//!
//! Every distinct statement (text, parameter types, and the client's settings, since search_path decides
//! what its names mean) gets one server-side name, `pgherd_<128-bit hash>`: two clients that call different
//! statements `S_1` never meet, and clients preparing the same statement share it on each server. Each server
//! remembers which it holds (a bounded LRU; evicted ones are closed). Then:
//! - Parse of a named statement becomes a Close and a Parse of the server name: the server plans it anew, as
//!   PostgreSQL would for the client (a type dropped and created again since is seen), and the CloseComplete is
//!   hidden. Parse of a name the client has already is sent under a scratch name that exists, so the server
//!   refuses it as PostgreSQL would.
//! - Bind and Describe of a statement the server lacks are preceded by a hidden Close and Parse that prepare
//!   it; their replies are dropped. The unnamed statement is re-prepared the same way when it was parsed in an
//!   earlier transaction, since PostgreSQL keeps it until the next Parse or Query (or closed, when the client
//!   has none: the server's may be another client's).
//! - Close forgets the client's name only; DISCARD ALL and DEALLOCATE ALL forget all its names.
//! - A client over its limits (`Context::max_statements`, `max_statement_bytes`) keeps its new statements
//!   under its own names on its server, which it then keeps (`Action::Untracked`).
//! - SQL that names a `pgherd_` statement (PREPARE, EXECUTE, DEALLOCATE) is replaced by SQL that fails.
//!
//! Replies to Parse and Close are told apart by order: the server answers messages in order and skips the
//! rest of a batch after an error, so each expected reply carries its batch (Syncs and Queries sent before
//! it) and an error in batch N voids the expectations still queued for it, undoing what they assumed, last
//! first. What a message assumed of an earlier batch still unanswered is not relied on where that is cheap
//! to avoid (a statement prepared there is prepared again, the unnamed statement too), but a client that sends
//! a named statement's Parse or Close and then, in a later batch before the answer, uses that same name gets
//! what the server had when the first batch went as planned: PostgreSQL would differ only when that batch
//! failed. When a Bind or Describe of a statement the server was believed to hold meets an error, the
//! server's copy is no longer trusted (another session may have run `DEALLOCATE` on it in dynamic SQL).
//! Pure code over message bodies: the relay does the I/O.

use std::borrow::Cow;
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
/// pgherd's own scratch name, outside the hashed ones: closed where a CloseComplete is due, and prepared
/// where a Parse must fail because its name exists. What it holds is never used.
const SCRATCH: &[u8] = b"pgherd_scratch";

/// Longest statement or portal name pgherd reads from a client (PostgreSQL itself has no limit; drivers use a
/// few dozen bytes). A Bind, Describe or Close whose names are longer goes to the server under the client's
/// name, which the server refuses unless it is one of the client's untracked statements.
pub const MAX_NAMES: usize = 1024;

/// Longest Parse body (name, query, parameter types) pgherd tracks: a longer one is forwarded as it is
/// (`Action::Untracked`). The relay reads Parse bodies whole up to this size.
pub const MAX_TRACKED_PARSE: usize = 48 * 1024;

/// What SQL naming a `pgherd_` statement becomes: it fails on the server, with SQLSTATE 42939
/// (reserved_name), when run. A utility statement, so a Parse of it succeeds and its Execute fails.
const RESERVED_SQL: &[u8] = b"DO $pgherd$BEGIN RAISE EXCEPTION USING ERRCODE = '42939', MESSAGE = \
    'prepared statement names beginning with \"pgherd_\" are reserved by the pooler'; END$pgherd$";

/// A Close of a server name, whole.
const CLOSE_LEN: usize = 1 + 4 + 1 + NAME_LEN + 1;
/// A Parse of a server name, up to its query.
const PARSE_HEAD: usize = 1 + 4 + NAME_LEN + 1;

/// Most bytes a rewrite adds to the message it replaces or precedes, when the caller read Parse and Query
/// bodies whole up to `MAX_TRACKED_PARSE` and Bind, Describe and Close heads up to `2 * MAX_NAMES`: a Bind
/// or Describe of a statement the server lacks gets the Close of the statement the LRU evicts, a Close and a
/// Parse of the statement (query and types up to `MAX_TRACKED_PARSE`), and a server name in place of the
/// client's. Every other rewrite (a client's Parse, SQL replaced because it names a `pgherd_` statement, the
/// unnamed statement prepared again, a Close) adds less.
pub const MAX_REWRITE_GROWTH: usize = 2 * CLOSE_LEN + PARSE_HEAD + MAX_TRACKED_PARSE + NAME_LEN;

// The rewrites of a client's Parse are far smaller than the bound; this keeps it so if the SQL grows.
const _: () = assert!(2 * CLOSE_LEN + PARSE_HEAD + RESERVED_SQL.len() + 1 < MAX_REWRITE_GROWTH);

/// Trusted uses (see `ServerStatements::trusted`) remembered for the batches in flight.
const MAX_TRUSTED: usize = 32;

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
        // In bounds: i < 32 and NAME_LEN is the prefix and 32; a nibble is below 16.
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
    /// Statements that Binds and Describes of the batches in flight used without preparing them first in the
    /// same batch, with their batch: an error in that batch may be the server lacking one, so they are no
    /// longer trusted then. At most `MAX_TRUSTED`; beyond, `overflow` says which batches lost some.
    trusted: Vec<(u32, StatementId)>,
    /// The first and last batches in flight whose trusted uses did not all fit: an error in one of them
    /// trusts nothing the server holds any more.
    overflow: Option<(u32, u32)>,
    /// Syncs, Queries and FunctionCalls sent, and ReadyForQuery received: the batch a message belongs to.
    batches_sent: u32,
    batches_done: u32,
}

/// The statements a server holds: what moves with it to another shard.
#[derive(Debug, Default)]
pub struct Held {
    entries: HashMap<StatementId, Entry>,
    clock: u64,
    /// The last `cap` seen, for putting back an eviction the server skipped.
    cap: usize,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    last_use: u64,
    /// The batch of the Parse that made it `Pending`.
    batch: u32,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The server holds it.
    Sure,
    /// Its Parse went out in `Entry::batch`, unanswered yet: usable in that batch only (an error before it
    /// skips the rest of the batch too).
    Pending,
    /// The server may or may not hold it: prepared again before use, closed like the others when evicted.
    Unsure,
}

impl Held {
    /// Whether the server holds `id` for a message of `batch` (counting it as a use), and whether that rests
    /// on what earlier batches did rather than on a Parse in this one.
    fn touch(&mut self, id: StatementId, batch: u32) -> Option<bool> {
        self.clock += 1;
        let entry = self.entries.get_mut(&id)?;
        let usable = match entry.state {
            State::Sure => Some(true),
            State::Pending if entry.batch == batch => Some(false),
            State::Pending | State::Unsure => None,
        };
        if usable.is_some() {
            entry.last_use = self.clock;
        }
        usable
    }

    /// Records a Parse of `id` sent in `batch`: whether an entry was there already, and the least recently
    /// used statement to close when there are more than `cap`.
    fn add(&mut self, id: StatementId, batch: u32, cap: usize) -> (bool, Option<StatementId>) {
        self.clock += 1;
        self.cap = cap.max(1);
        let entry = Entry {
            last_use: self.clock,
            batch,
            state: State::Pending,
        };
        let was_held = self.entries.insert(id, entry).is_some();
        if self.entries.len() <= self.cap {
            return (was_held, None);
        }
        let oldest = self
            .entries
            .iter()
            .filter(|(&other, _)| other != id)
            .min_by_key(|(_, e)| e.last_use)
            .map(|(&other, _)| other);
        if let Some(oldest) = oldest {
            self.entries.remove(&oldest);
        }
        (was_held, oldest)
    }

    /// The server answered the Parse of `id` sent in `batch`.
    fn confirm(&mut self, id: StatementId, batch: u32) {
        if let Some(e) = self.entries.get_mut(&id) {
            if e.state == State::Pending && e.batch == batch {
                e.state = State::Sure;
            }
        }
    }

    /// The Parse of `id` sent in `batch` failed or was skipped: the server has it only if it had it before
    /// (then the Close before the Parse may have run or not). Later batches' Parses of it are left alone.
    fn unprepare(&mut self, id: StatementId, batch: u32, was_held: bool) {
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        if e.batch != batch || e.state == State::Sure {
            return;
        }
        if was_held {
            e.state = State::Unsure;
        } else {
            self.entries.remove(&id);
        }
    }

    /// An eviction's Close was skipped: the server may still hold `id`; remembered if there is room.
    fn unevict(&mut self, id: StatementId) {
        if self.entries.len() < self.cap.max(1) {
            self.entries.entry(id).or_insert(Entry {
                last_use: 0,
                batch: 0,
                state: State::Unsure,
            });
        }
    }

    fn doubt(&mut self, id: StatementId) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.state = State::Unsure;
        }
    }

    fn doubt_all(&mut self) {
        for e in self.entries.values_mut() {
            e.state = State::Unsure;
        }
    }
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

    /// Whether `batch` went out before the current one and is not answered yet.
    fn earlier_in_flight(&self, batch: u32) -> bool {
        let age = batch.wrapping_sub(self.batches_done);
        batch != self.batches_sent && age <= self.batches_sent.wrapping_sub(self.batches_done)
    }

    /// A Bind or Describe of the current batch uses `id` on the strength of earlier batches.
    fn trust(&mut self, id: StatementId) {
        let batch = self.batches_sent;
        if self.trusted.contains(&(batch, id)) {
            return;
        }
        if self.trusted.len() < MAX_TRUSTED {
            self.trusted.push((batch, id));
        } else {
            let first = self.overflow.map_or(batch, |(first, _)| first);
            self.overflow = Some((first, batch));
        }
    }

    /// The server goes back to the pool: nothing is owed any more.
    pub fn released(&mut self) {
        // Normally empty: the relay releases a server that answered everything.
        for e in self.expected.drain(..) {
            match e.undo {
                Undo::Parse { id, .. } => self.held.doubt(id),
                Undo::Evict(id) => self.held.unevict(id),
                _ => {}
            }
        }
        self.trusted.clear();
        self.overflow = None;
        self.batches_done = self.batches_sent;
    }

    /// The server dropped its statements (DISCARD ALL, DEALLOCATE ALL), or pgherd no longer knows.
    pub fn clear(&mut self) {
        self.held.entries.clear();
    }
}

/// What the relay does with a server's ParseComplete or CloseComplete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Pass,
    /// The reply to a message pgherd added: the client must not see it.
    Hide,
}

/// What an expected reply assumed, to undo when the server skips or fails the message.
#[derive(Debug)]
enum Undo {
    Nothing,
    /// A Parse of `id`, hidden or the client's (then `name` is the client's new name, which then never
    /// existed). `was_held`: the server's LRU had `id` before.
    Parse {
        id: StatementId,
        was_held: bool,
        name: Option<Box<[u8]>>,
    },
    /// The Close of a statement the LRU evicted: the server may still hold it.
    Evict(StatementId),
    /// A Parse or Close of the unnamed statement: the server's unnamed statement is not known to be the
    /// client's.
    Unnamed,
    /// A Close of the client's `name`: the client still has it.
    Close {
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
    /// A Parse pgherd does not track (the client is over its limits, or the message is too long to read):
    /// forward it as it is, or `Some(bytes)` in place of the whole message (header included). The client's
    /// statements now live on this server under its own names: keep the client on it until DEALLOCATE ALL or
    /// DISCARD ALL.
    Untracked(Option<Vec<u8>>),
}

/// What the SQL scanner found in a Query's or Parse's SQL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SqlFlags {
    /// DISCARD ALL or DEALLOCATE ALL, taken to run (drivers send them through the extended protocol too).
    pub drops_all: bool,
    /// PREPARE, EXECUTE or DEALLOCATE naming a `pgherd_` statement: the SQL is replaced by SQL that fails
    /// (and so does nothing else, DISCARD ALL included).
    pub reserved: bool,
}

/// The parts of the world a rewrite consults.
pub struct Context<'a> {
    pub registry: &'a Registry,
    pub settings: Fingerprint,
    /// Most statements kept per server (`max_prepared_statements`).
    pub cap: usize,
    /// Most named statements pgherd keeps for one client; beyond, they stay on its server (untracked).
    pub max_statements: usize,
    /// Most bytes of Parse bodies (name, query, types) of one client's named statements pgherd keeps.
    pub max_statement_bytes: usize,
}

/// One client's statements.
#[derive(Debug, Default)]
pub struct Statements {
    /// Boxed and made on first use so a client without any costs one pointer.
    named: Option<Box<Named>>,
    unnamed: Option<Rc<Statement>>,
    /// The batch (on the server leased now) of the message that made `unnamed_here` true.
    unnamed_batch: u32,
    /// The leased server's unnamed statement is the client's `unnamed` (none, when that is `None`).
    unnamed_here: bool,
    /// The client went over its limits: its new named statements stay on its server under its names.
    untracked: bool,
}

#[derive(Debug, Default)]
struct Named {
    /// By the client's name.
    names: HashMap<Box<[u8]>, Rc<Statement>>,
    /// What counts against the client's limits: its names, and those it is closing until the server
    /// answers (a skipped Close gives the name back), and their Parse bodies' bytes.
    count: usize,
    bytes: usize,
}

/// A name's Parse body bytes, as counted against `Context::max_statement_bytes`.
fn cost(name: &[u8], statement: &Statement) -> usize {
    name.len()
        .saturating_add(1)
        .saturating_add(statement.parse.len())
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
    Some((b.get(..end)?, b.get(end + 1..)?))
}

/// A message's new header and first fields, for a rewrite that keeps the rest of its body: `old_len` is the
/// length field it had, `cut` the bytes of body replaced by `parts`. False (and nothing written) when the
/// lengths do not add up.
fn head(out: &mut Vec<u8>, tag: u8, old_len: usize, cut: usize, parts: &[&[u8]]) -> bool {
    let new: usize = parts.iter().map(|p| p.len()).sum();
    let Some(len) = old_len
        .checked_sub(4)
        .and_then(|body| body.checked_sub(cut))
        .and_then(|kept| kept.checked_add(4 + new))
        .and_then(|len| u32::try_from(len).ok())
    else {
        return false;
    };
    out.push(tag);
    out.extend_from_slice(&len.to_be_bytes());
    for part in parts {
        out.extend_from_slice(part);
    }
    true
}

/// A whole message made of `parts`, or `None` when it would be too long for a length field.
fn whole(tag: u8, parts: &[&[u8]]) -> Option<Vec<u8>> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    u32::try_from(len.checked_add(4)?).ok()?;
    let mut out = Vec::with_capacity(len + 5);
    encode::parts(&mut out, tag, parts);
    Some(out)
}

/// `parse` (query, NUL, parameter types) with the query replaced by `RESERVED_SQL`; `None` when malformed.
fn reserved_parse(parse: &[u8]) -> Option<Vec<u8>> {
    let (_, types) = cstr(parse)?;
    Some([RESERVED_SQL, b"\0", types].concat())
}

impl Statements {
    /// The client's message `tag`, with `len` its length field and `body` its first bytes (the whole body for
    /// Parse when short enough to scan, else `None`; the head of Bind, Describe and Close), to go to `server`.
    /// `sql`: what the SQL scanner found in a Parse's query.
    pub fn client(
        &mut self,
        tag: u8,
        len: usize,
        body: Option<&[u8]>,
        sql: SqlFlags,
        cx: &Context,
        server: Option<&mut ServerStatements>,
    ) -> Action {
        if !b"PBDCSF".contains(&tag) {
            return Action::Pass;
        }
        let Some(server) = server else {
            return Action::NeedServer;
        };
        // A body longer than the message says is not the message's: read as not shown.
        let body = body.filter(|b| b.len() <= len.saturating_sub(4));
        let reserved = sql.reserved && tag == b'P';
        if sql.drops_all && !reserved {
            self.drop_all(server);
        }
        match (tag, body) {
            (b'P', Some(body)) if body.len() + 4 == len => {
                self.parse(len, body, reserved, cx, server)
            }
            (b'P', _) => self.untracked_parse(None, None, server),
            (b'B', _) => {
                let names = body
                    .and_then(cstr)
                    .and_then(|(portal, rest)| Some((portal, cstr(rest)?.0)));
                match names {
                    Some((portal, name)) => {
                        let cut = portal.len() + 1 + name.len() + 1;
                        self.use_statement(Some(name), cx, server, |out, server_name| {
                            let parts = [portal, b"\0", server_name, b"\0"];
                            head(out, b'B', len, cut, &parts).then_some(5 + cut)
                        })
                    }
                    None => self.use_statement(None, cx, server, |_, _| None),
                }
            }
            (b'D', Some([b'S', rest @ ..])) => match cstr(rest) {
                Some((name, _)) => {
                    self.use_statement(Some(name), cx, server, |out, server_name| {
                        let parts = [b"S", server_name, b"\0"];
                        head(out, b'D', len, 2 + name.len(), &parts).then_some(5 + 2 + name.len())
                    })
                }
                None => self.use_statement(None, cx, server, |_, _| None),
            },
            (b'D', None) => self.use_statement(None, cx, server, |_, _| None),
            (b'C', Some([b'S', rest @ ..])) => match cstr(rest) {
                Some((name, _)) => self.close(len, name, server),
                None => {
                    server.expect(Reply::Pass, Undo::Nothing);
                    Action::Pass
                }
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

    /// A Query with `len` its length field and `sql` its whole body (when read whole): it drops the unnamed
    /// statement, and DISCARD ALL or DEALLOCATE ALL (`flags.drops_all`) drop every statement of the session.
    /// `DEALLOCATE name` of one of the client's protocol-level statements is answered here when the client
    /// waits for nothing else (`ready` is then the transaction status to report): the server never had that
    /// name. SQL naming a `pgherd_` statement (`flags.reserved`) is replaced by SQL that fails.
    pub fn query(
        &mut self,
        len: usize,
        sql: Option<&[u8]>,
        flags: SqlFlags,
        ready: Option<u8>,
        server: Option<&mut ServerStatements>,
    ) -> Action {
        let sql = sql.filter(|s| s.len().checked_add(4) == Some(len));
        let reserved = flags.reserved && sql.is_some();
        let target = sql
            .filter(|_| !reserved)
            .zip(ready)
            .and_then(|(sql, status)| Some((deallocated(sql)?, status)));
        if let Some((name, status)) = target {
            if self.remove_name(&name).is_some() {
                let mut bytes = Vec::new();
                encode::parts(&mut bytes, b'C', &[b"DEALLOCATE\0"]);
                encode::ready_for_query(&mut bytes, status);
                return Action::Answer(bytes);
            }
        }
        let Some(server) = server else {
            return Action::NeedServer;
        };
        if flags.drops_all && !reserved {
            self.drop_all(server);
        }
        self.unnamed = None;
        self.unnamed_here = false;
        server.batch_sent();
        match reserved
            .then(|| whole(b'Q', &[RESERVED_SQL, b"\0"]))
            .flatten()
        {
            Some(bytes) => Action::Rewrite {
                head: 1 + len,
                bytes,
            },
            None => Action::Pass,
        }
    }

    /// DISCARD ALL or DEALLOCATE ALL: the client has no named statement left, and the server may have none.
    fn drop_all(&mut self, server: &mut ServerStatements) {
        // If the SQL fails, the server keeps them: doubted, not forgotten, so the LRU still closes them.
        server.held.doubt_all();
        self.named = None;
        self.untracked = false;
        // What earlier batches would give back if skipped was dropped too.
        for e in &mut server.expected {
            match &mut e.undo {
                Undo::Parse { name, .. } => *name = None,
                Undo::Close { name } => *name = None,
                _ => {}
            }
        }
    }

    fn parse(
        &mut self,
        len: usize,
        body: &[u8],
        reserved: bool,
        cx: &Context,
        server: &mut ServerStatements,
    ) -> Action {
        let Some((name, sent)) = cstr(body) else {
            server.expect(Reply::Pass, Undo::Nothing);
            return Action::Pass;
        };
        let parse = match reserved.then(|| reserved_parse(sent)).flatten() {
            Some(replaced) => Cow::Owned(replaced),
            None => Cow::Borrowed(sent),
        };
        let changed = matches!(parse, Cow::Owned(_));
        let as_sent = || whole(b'P', &[name, b"\0", &parse]);
        if name.len().saturating_add(1).saturating_add(parse.len()) > MAX_TRACKED_PARSE {
            let rewrite = changed.then(as_sent).flatten();
            return self.untracked_parse(Some(name), rewrite, server);
        }
        if name.is_empty() {
            self.unnamed = Some(cx.registry.statement(cx.settings, &parse));
            self.unnamed_here = true;
            self.unnamed_batch = server.batches_sent;
            server.expect(Reply::Pass, Undo::Unnamed);
            return match changed.then(as_sent).flatten() {
                Some(bytes) => Action::Rewrite {
                    head: 1 + len,
                    bytes,
                },
                None => Action::Pass,
            };
        }
        let mut bytes = Vec::new();
        if self
            .named
            .as_ref()
            .is_some_and(|n| n.names.contains_key(name))
        {
            // PostgreSQL refuses a second statement of the same name (after checking the SQL): the scratch
            // name is made to exist, and this Parse sent under it.
            encode::parts(&mut bytes, b'C', &[b"S", SCRATCH, b"\0"]);
            server.expect(Reply::Hide, Undo::Nothing);
            encode::parts(&mut bytes, b'P', &[SCRATCH, b"\0\0\0\0"]);
            server.expect(Reply::Hide, Undo::Nothing);
            encode::parts(&mut bytes, b'P', &[SCRATCH, b"\0", &parse]);
            server.expect(Reply::Pass, Undo::Nothing);
            return Action::Rewrite {
                head: 1 + len,
                bytes,
            };
        }
        let named = self.named.get_or_insert_default();
        let new_cost = name.len().saturating_add(1).saturating_add(parse.len());
        if self.untracked
            || named.count >= cx.max_statements
            || named.bytes.saturating_add(new_cost) > cx.max_statement_bytes
        {
            let rewrite = changed.then(as_sent).flatten();
            return self.untracked_parse(Some(name), rewrite, server);
        }
        let statement = cx.registry.statement(cx.settings, &parse);
        named.count += 1;
        named.bytes = named.bytes.saturating_add(cost(name, &statement));
        named.names.insert(name.into(), statement.clone());
        let client_name = Some(Box::<[u8]>::from(name));
        self.send_parse(
            &statement,
            server,
            cx.cap,
            &mut bytes,
            Reply::Pass,
            client_name,
        );
        Action::Rewrite {
            head: 1 + len,
            bytes,
        }
    }

    /// A Parse pgherd leaves to the server: named `name` when known (`None`: too long to have been read).
    fn untracked_parse(
        &mut self,
        name: Option<&[u8]>,
        rewrite: Option<Vec<u8>>,
        server: &mut ServerStatements,
    ) -> Action {
        match name {
            Some([]) => {
                // The server's unnamed statement is now the client's, which pgherd cannot prepare elsewhere.
                self.unnamed = None;
                self.unnamed_here = true;
                self.unnamed_batch = server.batches_sent;
                server.expect(Reply::Pass, Undo::Unnamed);
                return Action::Untracked(rewrite);
            }
            Some(name) => {
                if name.starts_with(NAME_PREFIX) {
                    // It may replace a statement of pgherd's: none is trusted any more.
                    server.held.doubt_all();
                }
            }
            None => {
                if !self.unnamed_ok(server) {
                    // It may or may not be unnamed: first make sure the server's is not another client's.
                    return self.sync_unnamed(server);
                }
                self.unnamed = None;
                server.held.doubt_all();
            }
        }
        self.untracked = true;
        server.expect(Reply::Pass, Undo::Nothing);
        Action::Untracked(rewrite)
    }

    /// Whether the server's unnamed statement is the client's for a message of the current batch.
    fn unnamed_ok(&self, server: &ServerStatements) -> bool {
        self.unnamed_here && !server.earlier_in_flight(self.unnamed_batch)
    }

    /// Hidden messages that make the server's unnamed statement the client's, before the message, which is
    /// looked at again.
    fn sync_unnamed(&mut self, server: &mut ServerStatements) -> Action {
        let mut bytes = Vec::new();
        match &self.unnamed {
            Some(unnamed) => encode::parts(&mut bytes, b'P', &[b"\0", &unnamed.parse]),
            None => encode::parts(&mut bytes, b'C', &[b"S\0"]),
        }
        self.unnamed_here = true;
        self.unnamed_batch = server.batches_sent;
        server.expect(Reply::Hide, Undo::Unnamed);
        Action::Rewrite { head: 0, bytes }
    }

    /// A Bind or Describe of statement `name` (`None`: not readable in the head): prepared on the server
    /// first when it lacks it, then renamed by `rename`, which writes the message's new head and returns how
    /// many bytes of the old one it replaces.
    fn use_statement(
        &mut self,
        name: Option<&[u8]>,
        cx: &Context,
        server: &mut ServerStatements,
        rename: impl FnOnce(&mut Vec<u8>, &[u8]) -> Option<usize>,
    ) -> Action {
        let name = match name {
            // Unreadable names may be the unnamed statement's: it must be the client's.
            None | Some([]) if !self.unnamed_ok(server) => return self.sync_unnamed(server),
            None | Some([]) => return Action::Pass,
            Some(name) => name,
        };
        let Some(statement) = self.named.as_ref().and_then(|n| n.names.get(name)).cloned() else {
            // Not one of the client's tracked statements (an untracked one, an SQL PREPARE of a pinned
            // client, or a mistake the server will report).
            return Action::Pass;
        };
        let mut bytes = Vec::new();
        match server.held.touch(statement.id, server.batches_sent) {
            Some(true) => server.trust(statement.id),
            Some(false) => {}
            None => self.send_parse(&statement, server, cx.cap, &mut bytes, Reply::Hide, None),
        }
        match rename(&mut bytes, &statement.name()) {
            Some(head) => Action::Rewrite { head, bytes },
            // A length field that cannot be right: the server refuses the message, after any hidden Parse.
            None if bytes.is_empty() => Action::Pass,
            None => Action::Rewrite { head: 0, bytes },
        }
    }

    fn close(&mut self, len: usize, name: &[u8], server: &mut ServerStatements) -> Action {
        if name.is_empty() {
            self.unnamed = None;
            self.unnamed_here = true;
            self.unnamed_batch = server.batches_sent;
            server.expect(Reply::Pass, Undo::Unnamed);
            return Action::Pass;
        }
        let statement = self.named.as_mut().and_then(|n| n.names.remove(name));
        let Some(statement) = statement else {
            if name.starts_with(NAME_PREFIX) {
                server.held.doubt_all();
            }
            server.expect(Reply::Pass, Undo::Nothing);
            return Action::Pass;
        };
        // The server keeps the statement for others; closing the scratch name still answers CloseComplete.
        let mut bytes = Vec::new();
        let parts = [b"S", SCRATCH, b"\0"];
        if !head(&mut bytes, b'C', len, 2 + name.len(), &parts) {
            // Cannot be: `name` came from the body the length counts. Put back, and let the server answer.
            self.put_back(name.into(), statement);
            server.expect(Reply::Pass, Undo::Nothing);
            return Action::Pass;
        }
        // Its limits' share stays taken until the server answers (`reply`).
        server.expect(
            Reply::Pass,
            Undo::Close {
                name: Some((name.into(), statement)),
            },
        );
        Action::Rewrite {
            head: 5 + 2 + name.len(),
            bytes,
        }
    }

    /// The client's `name` removed, with its share of the limits.
    fn remove_name(&mut self, name: &[u8]) -> Option<Rc<Statement>> {
        let named = self.named.as_mut()?;
        let statement = named.names.remove(name)?;
        named.count = named.count.saturating_sub(1);
        named.bytes = named.bytes.saturating_sub(cost(name, &statement));
        Some(statement)
    }

    /// A name being closed given back (its Close was skipped; its share of the limits was kept meanwhile),
    /// or, when the client took the name again since, its share released.
    fn put_back(&mut self, name: Box<[u8]>, statement: Rc<Statement>) {
        let named = self.named.get_or_insert_default();
        if named.names.contains_key(&name) {
            named.count = named.count.saturating_sub(1);
            named.bytes = named.bytes.saturating_sub(cost(&name, &statement));
            return;
        }
        named.names.insert(name, statement);
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
        let (was_held, evicted) = server.held.add(statement.id, server.batches_sent, cap);
        if let Some(evicted) = evicted {
            encode::parts(out, b'C', &[b"S", &server_name(evicted), b"\0"]);
            server.expect(Reply::Hide, Undo::Evict(evicted));
        }
        let name = statement.name();
        encode::parts(out, b'C', &[b"S", &name, b"\0"]);
        server.expect(Reply::Hide, Undo::Nothing);
        encode::parts(out, b'P', &[&name, b"\0", &statement.parse]);
        let undo = Undo::Parse {
            id: statement.id,
            was_held,
            name: client_name,
        };
        server.expect(reply, undo);
    }

    /// The server sent ParseComplete or CloseComplete: what to do with it.
    pub fn reply(&mut self, server: &mut ServerStatements) -> Reply {
        let Some(e) = server.expected.pop_front() else {
            return Reply::Pass;
        };
        match e.undo {
            Undo::Parse { id, .. } => server.held.confirm(id, e.batch),
            Undo::Close {
                name: Some((name, statement)),
            } => {
                // Closed for good: its share of the limits is free.
                if let Some(named) = self.named.as_mut() {
                    named.count = named.count.saturating_sub(1);
                    named.bytes = named.bytes.saturating_sub(cost(&name, &statement));
                }
            }
            _ => {}
        }
        e.reply
    }

    /// The server sent an ErrorResponse: the messages of the current batch still expected will be skipped,
    /// and what its Binds and Describes took the server to hold may be gone.
    pub fn error(&mut self, server: &mut ServerStatements) {
        let batch = server.batches_done;
        self.void(server);
        if server.overflow.is_some_and(|(first, _)| first == batch) {
            server.held.doubt_all();
        }
        let trusted = server.trusted.iter().take_while(|(b, _)| *b == batch);
        for &(_, id) in trusted {
            server.held.doubt(id);
        }
        self.drop_trusted(server);
    }

    /// The server sent ReadyForQuery: a batch is over.
    pub fn ready(&mut self, server: &mut ServerStatements) {
        // Anything still expected from the finished batch was never answered (it was skipped).
        self.void(server);
        self.drop_trusted(server);
        let batch = server.batches_done;
        server.overflow = match server.overflow {
            Some((first, last)) if first == batch && last == batch => None,
            Some((first, last)) if first == batch => Some((first.wrapping_add(1), last)),
            other => other,
        };
        // A ReadyForQuery nothing asked for (a broken server) must not run ahead of the batches sent.
        if server.batches_done != server.batches_sent {
            server.batches_done = server.batches_done.wrapping_add(1);
        }
    }

    fn drop_trusted(&mut self, server: &mut ServerStatements) {
        let batch = server.batches_done;
        let n = server
            .trusted
            .iter()
            .take_while(|(b, _)| *b == batch)
            .count();
        server.trusted.drain(..n);
    }

    /// Undoes, last first, what the expected replies of the current batch assumed.
    fn void(&mut self, server: &mut ServerStatements) {
        let batch = server.batches_done;
        let n = server
            .expected
            .iter()
            .take_while(|e| e.batch == batch)
            .count();
        if n == 0 {
            return;
        }
        let rest = server.expected.split_off(n);
        let voided = std::mem::replace(&mut server.expected, rest);
        for e in voided.into_iter().rev() {
            self.undo(e, server);
        }
    }

    fn undo(&mut self, e: Expected, server: &mut ServerStatements) {
        match e.undo {
            Undo::Nothing => {}
            Undo::Parse { id, was_held, name } => {
                server.held.unprepare(id, e.batch, was_held);
                if let Some(name) = name {
                    self.remove_name(&name);
                }
            }
            Undo::Evict(id) => server.held.unevict(id),
            Undo::Unnamed => {
                if self.unnamed_batch == e.batch {
                    self.unnamed_here = false;
                }
            }
            Undo::Close { name } => {
                if let Some((name, statement)) = name {
                    self.put_back(name, statement);
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
            self.named.as_ref().map_or(0, |n| n.names.len())
        }
    }

    impl ServerStatements {
        fn len(&self) -> usize {
            self.held.entries.len()
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
        max_statements: usize,
        max_statement_bytes: usize,
        flags: SqlFlags,
    }

    impl World {
        fn new(servers: usize, cap: usize) -> World {
            World {
                registry: Registry::default(),
                servers: (0..servers).map(|_| ServerStatements::default()).collect(),
                cap,
                max_statements: usize::MAX,
                max_statement_bytes: usize::MAX,
                flags: SqlFlags::default(),
            }
        }

        fn action(&mut self, client: &mut Statements, on: usize, tag: u8, body: &[u8]) -> Action {
            let cx = Context {
                registry: &self.registry,
                settings: 7,
                cap: self.cap,
                max_statements: self.max_statements,
                max_statement_bytes: self.max_statement_bytes,
            };
            let server = Some(&mut self.servers[on]);
            client.client(tag, body.len() + 4, Some(body), self.flags, &cx, server)
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
            match self.action(client, on, tag, body) {
                Action::Pass | Action::Untracked(None) => messages(&whole),
                Action::Untracked(Some(bytes)) => messages(&bytes),
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
    fn a_parse_always_prepares_anew() {
        let mut w = World::new(1, 10);
        let (mut a, mut b) = (Statements::default(), Statements::default());
        let first = w.send(&mut a, 0, b'P', &parse("x", "SELECT 1"));
        // a's Close and Parse are answered first.
        a.reply(&mut w.servers[0]);
        a.reply(&mut w.servers[0]);
        // The server holds the statement: it is closed and prepared again all the same (a type it names may
        // have been dropped and created again), and the client sees the ParseComplete only.
        let sent = w.send(&mut b, 0, b'P', &parse("y", "SELECT 1"));
        assert_eq!(sent, first);
        let name = server_name_of(&sent, b'P');
        assert_eq!(sent[0], (b'C', body(&[b"S", &name, b"\0"])));
        let s0 = &mut w.servers[0];
        assert_eq!([b.reply(s0), b.reply(s0)], [Reply::Hide, Reply::Pass]);
        // The same for a client preparing it again under a name it closed.
        w.send(&mut a, 0, b'C', b"Sx\0");
        a.reply(&mut w.servers[0]);
        assert_eq!(w.send(&mut a, 0, b'P', &parse("x", "SELECT 1")), first);
    }

    #[test]
    fn close_forgets_the_name_for_this_client_only() {
        let mut w = World::new(1, 10);
        let (mut a, mut b) = (Statements::default(), Statements::default());
        w.send(&mut a, 0, b'P', &parse("s", "SELECT 1"));
        w.send(&mut b, 0, b'P', &parse("s", "SELECT 1"));
        let sent = w.send(&mut a, 0, b'C', b"Ss\0");
        assert_eq!(sent, vec![(b'C', body(&[b"S", SCRATCH, b"\0"]))]);
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
        let no = SqlFlags::default();
        assert_eq!(c.query(4, None, no, None, None), Action::NeedServer);
        assert_eq!(
            c.query(4, None, no, None, Some(&mut w.servers[1])),
            Action::Pass
        );
        c.left_server();
        // Server 0's unnamed statement is still the old one: closed, so that the Bind fails as it would on
        // PostgreSQL instead of running it.
        let sent = w.send(&mut c, 0, b'B', &bind(""));
        assert_eq!(sent[0], (b'C', b"S\0".to_vec()));
        assert_eq!(sent[1].0, b'B');
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
        let text = &b"DEALLOCATE _pg3_0\0"[..];
        let (sql, len, no) = (Some(text), 4 + text.len(), SqlFlags::default());
        let answer = a.query(len, sql, no, Some(b'I'), Some(&mut w.servers[0]));
        let mut expected = Vec::new();
        encode::parts(&mut expected, b'C', &[b"DEALLOCATE\0"]);
        encode::ready_for_query(&mut expected, b'I');
        assert_eq!(answer, Action::Answer(expected));
        assert_eq!((a.count(), b.count()), (0, 1));
        // Now unknown to the client: the server answers, as PostgreSQL would, that it does not exist.
        assert_eq!(
            a.query(len, sql, no, Some(b'I'), Some(&mut w.servers[0])),
            Action::Pass
        );
    }

    fn tags(sent: &[(u8, Vec<u8>)]) -> Vec<u8> {
        sent.iter().map(|(t, _)| *t).collect()
    }

    /// Answers everything owed as a server that ran it all would, and ends the batch.
    fn answer_all(c: &mut Statements, server: &mut ServerStatements) -> Vec<Reply> {
        let mut replies = Vec::new();
        while !server.expected.is_empty() {
            replies.push(c.reply(server));
        }
        c.ready(server);
        replies
    }

    #[test]
    fn an_error_after_a_trusted_bind_forgets_the_statement() {
        let mut w = World::new(2, 10);
        let mut c = Statements::default();
        w.send(&mut c, 0, b'P', &parse("s", "SELECT 1"));
        w.send(&mut c, 0, b'S', b"");
        answer_all(&mut c, &mut w.servers[0]);
        // Another session deallocated it in dynamic SQL: the Bind, which trusted the server, fails ...
        assert_eq!(tags(&w.send(&mut c, 0, b'B', &bind("s"))), b"B");
        w.send(&mut c, 0, b'S', b"");
        c.error(&mut w.servers[0]);
        c.ready(&mut w.servers[0]);
        // ... and the next one prepares it again.
        assert_eq!(tags(&w.send(&mut c, 0, b'B', &bind("s"))), b"CPB");
        w.send(&mut c, 0, b'S', b"");
        answer_all(&mut c, &mut w.servers[0]);
        // A batch whose Bind came after a Parse in that batch trusted nothing: an error there (say in the
        // Execute) does not make the statement prepared again.
        c.left_server();
        assert_eq!(tags(&w.send(&mut c, 1, b'B', &bind("s"))), b"CPB");
        w.send(&mut c, 1, b'S', b"");
        let s1 = &mut w.servers[1];
        assert_eq!([c.reply(s1), c.reply(s1)], [Reply::Hide, Reply::Hide]);
        c.error(s1);
        c.ready(s1);
        assert_eq!(tags(&w.send(&mut c, 1, b'B', &bind("s"))), b"B");
    }

    #[test]
    fn an_error_in_a_batch_of_too_many_trusted_binds_trusts_nothing() {
        let mut w = World::new(1, 100);
        let mut c = Statements::default();
        let n = MAX_TRUSTED + 1;
        for i in 0..n {
            w.send(
                &mut c,
                0,
                b'P',
                &parse(&format!("s{i}"), &format!("SELECT {i}")),
            );
        }
        w.send(&mut c, 0, b'S', b"");
        answer_all(&mut c, &mut w.servers[0]);
        for i in 0..n {
            assert_eq!(
                tags(&w.send(&mut c, 0, b'B', &bind(&format!("s{i}")))),
                b"B"
            );
        }
        w.send(&mut c, 0, b'S', b"");
        c.error(&mut w.servers[0]);
        c.ready(&mut w.servers[0]);
        for i in 0..n {
            assert_eq!(
                tags(&w.send(&mut c, 0, b'B', &bind(&format!("s{i}")))),
                b"CPB"
            );
        }
        // Kept in the LRU all along, so still closed when evicted.
        assert_eq!(w.servers[0].len(), n);
    }

    #[test]
    fn a_statement_prepared_in_an_earlier_batch_still_unanswered_is_prepared_again() {
        let mut w = World::new(1, 10);
        let mut c = Statements::default();
        w.send(&mut c, 0, b'P', &parse("s", "SELECT 1"));
        assert_eq!(tags(&w.send(&mut c, 0, b'B', &bind("s"))), b"B");
        w.send(&mut c, 0, b'S', b"");
        // The first batch may yet fail before its Parse: the second cannot count on it.
        assert_eq!(tags(&w.send(&mut c, 0, b'B', &bind("s"))), b"CPB");
        w.send(&mut c, 0, b'S', b"");
        let s0 = &mut w.servers[0];
        c.error(s0);
        c.ready(s0);
        assert_eq!([c.reply(s0), c.reply(s0)], [Reply::Hide, Reply::Hide]);
        c.ready(s0);
        // The client's Parse failed, so its name is gone; the statement the second batch prepared stays.
        assert_eq!((c.count(), s0.len()), (0, 1));
    }

    #[test]
    fn the_unnamed_statement_is_never_another_clients() {
        let mut w = World::new(1, 10);
        let (mut a, mut b) = (Statements::default(), Statements::default());
        w.send(&mut a, 0, b'P', &parse("", "SELECT 1"));
        w.send(&mut a, 0, b'S', b"");
        answer_all(&mut a, &mut w.servers[0]);
        a.left_server();
        w.servers[0].released();
        // b never parsed one: the server's is closed before b's Bind.
        let sent = w.send(&mut b, 0, b'B', &bind(""));
        assert_eq!(sent[0], (b'C', b"S\0".to_vec()));
        assert_eq!(b.reply(&mut w.servers[0]), Reply::Hide);
        // A Bind whose names are too long to read may be of the unnamed statement too.
        let mut long = vec![b'p'; 3 * MAX_NAMES];
        long.push(0);
        let sent = w.send(&mut a, 0, b'B', &long);
        assert_eq!(sent[0], (b'P', parse("", "SELECT 1")));
        assert_eq!(sent[1], (b'B', long));
    }

    #[test]
    fn a_parse_of_a_name_the_client_has_fails_on_the_server() {
        let mut w = World::new(1, 10);
        let mut c = Statements::default();
        w.send(&mut c, 0, b'P', &parse("s", "SELECT 1"));
        let sent = w.send(&mut c, 0, b'P', &parse("s", "SELECT 2"));
        // The scratch name is made to exist, then the Parse goes under it.
        let expected = vec![
            (b'C', body(&[b"S", SCRATCH, b"\0"])),
            (b'P', body(&[SCRATCH, b"\0\0\0\0"])),
            (b'P', body(&[SCRATCH, b"\0SELECT 2\0\0\0"])),
        ];
        assert_eq!(sent, expected);
        let s0 = &mut w.servers[0];
        let replies: Vec<Reply> = (0..5).map(|_| c.reply(s0)).collect();
        assert_eq!(replies[2..], [Reply::Hide, Reply::Hide, Reply::Pass]);
    }

    #[test]
    fn a_client_over_its_limits_keeps_new_statements_on_its_server() {
        let mut w = World::new(1, 10);
        w.max_statements = 2;
        let mut c = Statements::default();
        w.send(&mut c, 0, b'P', &parse("a", "SELECT 1"));
        w.send(&mut c, 0, b'P', &parse("b", "SELECT 2"));
        let third = parse("c", "SELECT 3");
        assert_eq!(w.action(&mut c, 0, b'P', &third), Action::Untracked(None));
        // Its Bind, Describe and Close go as sent; those of tracked names are still renamed.
        for (tag, msg) in [
            (b'B', bind("c")),
            (b'D', b"Sc\0".to_vec()),
            (b'C', b"Sc\0".to_vec()),
        ] {
            assert_eq!(w.action(&mut c, 0, tag, &msg), Action::Pass);
        }
        assert_eq!(
            server_name_of(&w.send(&mut c, 0, b'B', &bind("a")), b'B')[..7],
            *b"pgherd_"
        );
        // Closing a tracked name frees its share once the server confirms; new names stay untracked
        // anyway, so that a name never is both.
        w.send(&mut c, 0, b'S', b"");
        answer_all(&mut c, &mut w.servers[0]);
        w.send(&mut c, 0, b'C', b"Sa\0");
        assert_eq!(c.named.as_ref().unwrap().count, 2);
        answer_all(&mut c, &mut w.servers[0]);
        assert_eq!(c.named.as_ref().unwrap().count, 1);
        assert_eq!(
            w.action(&mut c, 0, b'P', &parse("d", "SELECT 4")),
            Action::Untracked(None)
        );
        // DEALLOCATE ALL drops them all, on the server too: tracking starts over.
        let dealloc = b"DEALLOCATE ALL\0";
        let flags = SqlFlags {
            drops_all: true,
            reserved: false,
        };
        c.query(
            4 + dealloc.len(),
            Some(dealloc),
            flags,
            None,
            Some(&mut w.servers[0]),
        );
        assert_eq!(c.count(), 0);
        assert!(matches!(
            w.action(&mut c, 0, b'P', &parse("d", "SELECT 4")),
            Action::Rewrite { .. }
        ));
        // The byte limit counts the Parse bodies.
        let mut w = World::new(1, 10);
        let mut c = Statements::default();
        let first = parse("a", "SELECT 1");
        w.max_statement_bytes = 2 * first.len() - 1;
        assert!(matches!(
            w.action(&mut c, 0, b'P', &first),
            Action::Rewrite { .. }
        ));
        assert_eq!(c.named.as_ref().unwrap().bytes, first.len());
        assert_eq!(
            w.action(&mut c, 0, b'P', &parse("b", "SELECT 2")),
            Action::Untracked(None)
        );
    }

    #[test]
    fn a_parse_too_long_to_track_is_forwarded_untracked() {
        let mut w = World::new(1, 10);
        let mut c = Statements::default();
        let long = parse("s", &"x".repeat(MAX_TRACKED_PARSE));
        assert_eq!(w.action(&mut c, 0, b'P', &long), Action::Untracked(None));
        // Not read at all: the name is unknown, so the server's unnamed statement is made the client's
        // first (it may be an unnamed Parse).
        let cx = Context {
            registry: &w.registry,
            settings: 7,
            cap: 10,
            max_statements: usize::MAX,
            max_statement_bytes: usize::MAX,
        };
        let mut d = Statements::default();
        let s0 = &mut w.servers[0];
        let no = SqlFlags::default();
        let first = d.client(b'P', 100_000, None, no, &cx, Some(&mut *s0));
        assert_eq!(
            first,
            Action::Rewrite {
                head: 0,
                bytes: [b'C', 0, 0, 0, 6, b'S', 0].to_vec()
            }
        );
        assert_eq!(
            d.client(b'P', 100_000, None, no, &cx, Some(&mut *s0)),
            Action::Untracked(None)
        );
        assert_eq!(w.send(&mut d, 0, b'B', &bind("")).len(), 1);
    }

    #[test]
    fn sql_naming_a_pgherd_statement_fails_on_the_server() {
        let mut w = World::new(1, 10);
        let mut c = Statements::default();
        let reserved = SqlFlags {
            drops_all: true,
            reserved: true,
        };
        let sql = b"DEALLOCATE ALL; EXECUTE pgherd_0\0";
        let Action::Rewrite { head, bytes } = c.query(
            4 + sql.len(),
            Some(sql),
            reserved,
            None,
            Some(&mut w.servers[0]),
        ) else {
            panic!("rewritten")
        };
        assert_eq!(head, 5 + sql.len());
        assert_eq!(messages(&bytes), vec![(b'Q', body(&[RESERVED_SQL, b"\0"]))]);
        // It did not run, so it dropped nothing.
        assert!(std::str::from_utf8(RESERVED_SQL).unwrap().contains(
            "ERRCODE = '42939', MESSAGE = 'prepared statement names beginning with \"pgherd_\" are reserved by the pooler'"
        ));
        // A Parse keeps its name's handling and its parameter types.
        w.flags = SqlFlags {
            drops_all: false,
            reserved: true,
        };
        let prepare = body(&[b"s\0PREPARE pgherd_0 AS SELECT 1\0", &[0, 1, 0, 0, 0, 23]]);
        let sent = w.send(&mut c, 0, b'P', &prepare);
        assert_eq!(tags(&sent), b"CP");
        let name = server_name_of(&sent, b'P');
        assert_eq!(
            sent[1].1,
            body(&[&name, b"\0", RESERVED_SQL, b"\0", &[0, 1, 0, 0, 0, 23]])
        );
        let unnamed = body(&[b"\0EXECUTE pgherd_0\0", &[0, 0]]);
        assert_eq!(
            w.send(&mut c, 0, b'P', &unnamed),
            vec![(b'P', body(&[b"\0", RESERVED_SQL, b"\0", &[0, 0]]))]
        );
        w.max_statements = 1;
        let untracked = body(&[b"t\0DEALLOCATE pgherd_0\0", &[0, 0]]);
        assert_eq!(
            w.action(&mut c, 0, b'P', &untracked),
            Action::Untracked(whole(b'P', &[b"t\0", RESERVED_SQL, b"\0", &[0, 0]]))
        );
        assert_eq!(c.count(), 1);
    }

    #[test]
    fn the_largest_rewrite_is_within_the_bound() {
        let mut w = World::new(2, 1);
        let mut c = Statements::default();
        // The longest trackable statement, with a one-byte name, and another that fills the LRU.
        let sql = "x".repeat(MAX_TRACKED_PARSE - 2 - 3);
        let long = parse("s", &sql);
        assert_eq!(long.len(), MAX_TRACKED_PARSE);
        w.send(&mut c, 0, b'P', &long);
        w.send(&mut c, 0, b'P', &parse("t", "SELECT 1"));
        c.left_server();
        w.send(&mut c, 1, b'P', &parse("u", "SELECT 1"));
        // On server 1, a Bind of s closes t, and closes and prepares s.
        let b = bind("s");
        let Action::Rewrite { head, mut bytes } = w.action(&mut c, 1, b'B', &b) else {
            panic!("rewritten")
        };
        let growth = bytes.len() - head;
        bytes.extend_from_slice(&b[head - 5..]);
        assert_eq!(tags(&messages(&bytes)), b"CCPB");
        assert!(growth <= MAX_REWRITE_GROWTH, "{growth}");
        assert!(
            growth + 8 > MAX_REWRITE_GROWTH,
            "{growth}: the bound is tight"
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
