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
//! - Close forgets the client's name only. DISCARD ALL and DEALLOCATE ALL forget all its names: at once in a
//!   Query; for a Parse of one, at each Execute after a Bind of that statement.
//! - A client over its limits (`Context::max_statements`, `max_statement_bytes`) keeps its new statements
//!   under its own names on its server, which it then keeps (`Action::Untracked`).
//! - SQL that names a `pgherd_` statement (PREPARE, EXECUTE, DEALLOCATE) where the relay could not rename it
//!   into the client's own namespace (inside a DO body or an EXECUTE string) is replaced by SQL that fails.
//!
//! Replies to Parse and Close are told apart by order: the server answers messages in order and skips the
//! rest of a batch after an error, so each expected reply carries its batch (Syncs and Queries sent before
//! it) and an error in batch N voids the expectations still queued for it, undoing what they assumed, last
//! first, and leaving alone what later batches did since. A statement whose Parse went out in an earlier
//! batch still unanswered is prepared again rather than counted on (the unnamed statement too). When a Bind
//! or Describe that counted on the server holding a statement meets an error in its batch, the server's copy
//! is no longer trusted: another session may have run `DEALLOCATE` on it in dynamic SQL. What pgherd is
//! unsure of stays in the LRU, so that eviction still closes it.
//!
//! Where PostgreSQL would answer the client otherwise (all found by the `props` tests, which leave them out):
//! - A client that parses or closes a named statement, or closes the unnamed one, and uses that name again in
//!   a later batch sent before the answer gets what it would if the first batch ran as sent: PostgreSQL
//!   differs when that batch failed first. (Exact would mean holding the client's messages back.)
//! - After a Parse of the unnamed statement that failed or was skipped, pgherd cannot tell which (PostgreSQL
//!   has no unnamed statement then, or the previous one): a Bind of it prepares the new text again.
//! - An Execute is taken to run the statement of the last Bind (its portal name is not read) and to run it
//!   (not skipped after an error).
//! - A Parse too long to read may have any name: it goes to the server as sent, and reaches it even when
//!   it reuses one of the client's names, which PostgreSQL refuses.
//! - Dynamic SQL that prepares a `pgherd_` name with other text is not seen.
//!
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
/// (`Action::Untracked`). The relay reads Parse and Query bodies whole up to this size, to scan them too.
pub const MAX_TRACKED_PARSE: usize = 1 << 20;

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
/// or Describe of a statement the server lacks gets the Closes of the statement the LRU evicts and of an
/// orphan (`Held::orphans`), a Close and a Parse of the statement (query and types up to
/// `MAX_TRACKED_PARSE`), and a server name in place of the client's. Every other rewrite (a client's Parse,
/// SQL replaced because it names a `pgherd_` statement, the unnamed statement prepared again, a Close) adds
/// less.
pub const MAX_REWRITE_GROWTH: usize = 3 * CLOSE_LEN + PARSE_HEAD + MAX_TRACKED_PARSE + NAME_LEN;

// The rewrites of a client's Parse are far smaller than the bound; this keeps it so if the SQL grows.
const _: () = assert!(3 * CLOSE_LEN + PARSE_HEAD + RESERVED_SQL.len() + 1 < MAX_REWRITE_GROWTH);

/// Trusted uses (see `ServerStatements::trusted`) remembered for the batches in flight.
const MAX_TRUSTED: usize = 32;
/// Statements remembered to close outside the LRU (see `Held::orphans`).
const MAX_ORPHANS: usize = 8;

/// A prepared statement as servers know it.
#[derive(Debug)]
pub struct Statement {
    id: StatementId,
    /// The Parse body after the name: query text, NUL, parameter types.
    parse: Box<[u8]>,
    /// DISCARD ALL or DEALLOCATE ALL: each run of it drops all statements again.
    drops_all: bool,
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
    /// The statement of Parse body `parse` (after the name) under `settings`; `drops_all` is what the SQL
    /// scanner says of its query (the same for the same query).
    pub fn statement(&self, settings: Fingerprint, parse: &[u8], drops_all: bool) -> Rc<Statement> {
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
                drops_all,
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
    /// Statements the server may hold that are not in the LRU (an eviction it skipped, when the LRU had
    /// filled up again meanwhile): each hidden Parse closes one. At most `MAX_ORPHANS`.
    orphans: Vec<StatementId>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    last_use: u64,
    /// The last Parse of it sent (its clock), and its batch: what makes it `Pending`, and whose answer or
    /// undoing decides what it becomes.
    op: u64,
    batch: u32,
    state: State,
    /// An earlier batch's eviction of it was skipped after this Parse went out: if the Parse fails too, the
    /// server may still hold it.
    kept: bool,
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
        self.clock = self.clock.wrapping_add(1);
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

    /// Records a Parse of `id` sent in `batch`: the Parse's number, whether an entry was there already, and the
    /// least recently used statement to close when there are more than `cap`.
    fn add(&mut self, id: StatementId, batch: u32, cap: usize) -> (u64, bool, Option<StatementId>) {
        self.clock = self.clock.wrapping_add(1);
        self.cap = cap.max(1);
        let op = self.clock;
        let entry = Entry {
            last_use: op,
            op,
            batch,
            state: State::Pending,
            kept: false,
        };
        let orphaned = self.orphans.len();
        self.orphans.retain(|o| *o != id);
        let was_held = self.entries.insert(id, entry).is_some() || orphaned != self.orphans.len();
        if self.entries.len() <= self.cap {
            return (op, was_held, None);
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
        (op, was_held, oldest)
    }

    /// The server answered Parse `op` of `id`.
    fn confirm(&mut self, id: StatementId, op: u64) {
        if let Some(e) = self.entries.get_mut(&id) {
            if e.state == State::Pending && e.op == op {
                e.state = State::Sure;
            } else if e.state == State::Pending {
                // A later Parse of it is out: if that one fails, the server may still have this one.
                e.kept = true;
            }
        }
    }

    /// Parse `op` of `id` failed or was skipped: the server has it only if it had it before (then the Close
    /// before the Parse may have run or not). What a later Parse of it made is left alone.
    fn unprepare(&mut self, id: StatementId, op: u64, was_held: bool) {
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        if e.op != op || e.state == State::Sure {
            return;
        }
        if was_held || e.kept {
            e.state = State::Unsure;
        } else {
            self.entries.remove(&id);
        }
    }

    /// An eviction's Close was skipped: the server may still hold `id`. Back in the LRU if there is room, else
    /// to be closed with a later Parse.
    fn unevict(&mut self, id: StatementId) {
        if let Some(e) = self.entries.get_mut(&id) {
            // Parsed again since: that Parse decides, knowing the server may have it anyway.
            e.kept = true;
            return;
        }
        if self.orphans.contains(&id) {
            return;
        }
        if self.entries.len() < self.cap.max(1) {
            let entry = Entry {
                last_use: 0,
                op: 0,
                batch: 0,
                state: State::Unsure,
                kept: false,
            };
            self.entries.insert(id, entry);
        } else if self.orphans.len() < MAX_ORPHANS {
            self.orphans.push(id);
        }
    }

    /// A statement to close along with a Parse: one the server may hold that is not in the LRU.
    fn orphan(&mut self) -> Option<StatementId> {
        self.orphans.pop()
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
        self.held.orphans.clear();
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
        op: u64,
        was_held: bool,
        name: Option<Box<[u8]>>,
    },
    /// The Close of a statement the LRU evicted, or of an orphan: the server may still hold it.
    Evict(StatementId),
    /// A Parse of the unnamed statement, or a Close pgherd added: the server's unnamed statement is not known
    /// to be the client's.
    Unnamed,
    /// The client's Close of its unnamed statement (`Some` when it had one): a Close does nothing when it
    /// fails, so the client still has it, which the server may not have.
    UnnamedClose(Option<Rc<Statement>>),
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
    /// DISCARD ALL or DEALLOCATE ALL. A Query of it runs at once; a Parse of it is run by the Execute after
    /// each Bind of that statement (drivers send them through the extended protocol too).
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
    /// The last Bind was of DISCARD ALL or DEALLOCATE ALL: the next Execute runs it.
    bound_drops_all: bool,
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
    /// `sql`: what the SQL scanner found in a Parse's query. Every message goes through here: an Execute
    /// after a Bind of DISCARD ALL or DEALLOCATE ALL is taken to run it.
    pub fn client(
        &mut self,
        tag: u8,
        len: usize,
        body: Option<&[u8]>,
        sql: SqlFlags,
        cx: &Context,
        server: Option<&mut ServerStatements>,
    ) -> Action {
        if !b"PBDCSFE".contains(&tag) {
            return Action::Pass;
        }
        let Some(server) = server else {
            return Action::NeedServer;
        };
        // A body longer than the message says is not the message's: read as not shown.
        let body = body.filter(|b| b.len() <= len.saturating_sub(4));
        let reserved = sql.reserved && tag == b'P';
        match (tag, body) {
            (b'E', _) => {
                // Of the portal the last Bind made, most likely: the unnamed one, in drivers.
                if std::mem::take(&mut self.bound_drops_all) {
                    self.drop_all(server);
                }
                Action::Pass
            }
            (b'P', Some(body)) if body.len() + 4 == len => {
                let drops_all = sql.drops_all && !reserved;
                self.parse(len, body, reserved, drops_all, cx, server)
            }
            (b'P', _) => self.untracked_parse(None, None, server),
            (b'B', _) => {
                let names = body
                    .and_then(cstr)
                    .and_then(|(portal, rest)| Some((portal, cstr(rest)?.0)));
                match names {
                    Some((portal, name)) => {
                        let cut = portal.len() + 1 + name.len() + 1;
                        self.use_statement(Some(name), true, cx, server, |out, server_name| {
                            let parts = [portal, b"\0", server_name, b"\0"];
                            head(out, b'B', len, cut, &parts).then_some(5 + cut)
                        })
                    }
                    None => self.use_statement(None, true, cx, server, |_, _| None),
                }
            }
            (b'D', Some([b'S', rest @ ..])) => match cstr(rest) {
                Some((name, _)) => {
                    self.use_statement(Some(name), false, cx, server, |out, server_name| {
                        let parts = [b"S", server_name, b"\0"];
                        head(out, b'D', len, 2 + name.len(), &parts).then_some(5 + 2 + name.len())
                    })
                }
                None => self.use_statement(None, false, cx, server, |_, _| None),
            },
            (b'D', None) => self.use_statement(None, false, cx, server, |_, _| None),
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
                // The transaction's portals are gone.
                self.bound_drops_all = false;
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
                // As any Query, it drops the unnamed statement; the server's is now not the client's.
                self.unnamed = None;
                self.unnamed_here = false;
                self.bound_drops_all = false;
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
        // Earlier batches' undoing leaves the unnamed statement alone now.
        self.unnamed_batch = server.batches_sent;
        self.bound_drops_all = false;
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
        drops_all: bool,
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
        let mut bytes = Vec::new();
        if !name.is_empty()
            && self
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
        if name.len().saturating_add(1).saturating_add(parse.len()) > MAX_TRACKED_PARSE {
            let rewrite = changed.then(as_sent).flatten();
            return self.untracked_parse(Some(name), rewrite, server);
        }
        if name.is_empty() {
            self.unnamed = Some(cx.registry.statement(cx.settings, &parse, drops_all));
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
        let named = self.named.get_or_insert_default();
        let new_cost = name.len().saturating_add(1).saturating_add(parse.len());
        if self.untracked
            || named.count >= cx.max_statements
            || named.bytes.saturating_add(new_cost) > cx.max_statement_bytes
        {
            let rewrite = changed.then(as_sent).flatten();
            return self.untracked_parse(Some(name), rewrite, server);
        }
        let statement = cx.registry.statement(cx.settings, &parse, drops_all);
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
                    self.unnamed = None;
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

    /// A Bind (`bind`) or Describe of statement `name` (`None`: not readable in the head): prepared on the
    /// server first when it lacks it, then renamed by `rename`, which writes the message's new head and returns
    /// how many bytes of the old one it replaces.
    fn use_statement(
        &mut self,
        name: Option<&[u8]>,
        bind: bool,
        cx: &Context,
        server: &mut ServerStatements,
        rename: impl FnOnce(&mut Vec<u8>, &[u8]) -> Option<usize>,
    ) -> Action {
        let name = match name {
            // Unreadable names may be the unnamed statement's: it must be the client's.
            None | Some([]) if !self.unnamed_ok(server) => return self.sync_unnamed(server),
            None => {
                self.bound_drops_all &= !bind;
                return Action::Pass;
            }
            Some([]) => {
                if bind {
                    self.bound_drops_all = self.unnamed.as_ref().is_some_and(|u| u.drops_all);
                }
                return Action::Pass;
            }
            Some(name) => name,
        };
        let Some(statement) = self.named.as_ref().and_then(|n| n.names.get(name)).cloned() else {
            // Not one of the client's tracked statements (an untracked one, an SQL PREPARE of a pinned
            // client, or a mistake the server will report).
            self.bound_drops_all &= !bind;
            return Action::Pass;
        };
        if bind {
            self.bound_drops_all = statement.drops_all;
        }
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
            let closed = self.unnamed.take();
            self.unnamed_here = true;
            self.unnamed_batch = server.batches_sent;
            server.expect(Reply::Pass, Undo::UnnamedClose(closed));
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
    /// `statement` under its server name, and the Closes of whatever that pushes out of the server's LRU and
    /// of an orphan.
    fn send_parse(
        &mut self,
        statement: &Statement,
        server: &mut ServerStatements,
        cap: usize,
        out: &mut Vec<u8>,
        reply: Reply,
        client_name: Option<Box<[u8]>>,
    ) {
        let (op, was_held, evicted) = server.held.add(statement.id, server.batches_sent, cap);
        for evicted in evicted.into_iter().chain(server.held.orphan()) {
            encode::parts(out, b'C', &[b"S", &server_name(evicted), b"\0"]);
            server.expect(Reply::Hide, Undo::Evict(evicted));
        }
        let name = statement.name();
        encode::parts(out, b'C', &[b"S", &name, b"\0"]);
        server.expect(Reply::Hide, Undo::Nothing);
        encode::parts(out, b'P', &[&name, b"\0", &statement.parse]);
        let undo = Undo::Parse {
            id: statement.id,
            op,
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
            Undo::Parse { id, op, .. } => server.held.confirm(id, op),
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
            Undo::Parse {
                id,
                op,
                was_held,
                name,
            } => {
                server.held.unprepare(id, op, was_held);
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
            Undo::UnnamedClose(closed) => {
                if self.unnamed_batch == e.batch {
                    self.unnamed = closed;
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
        // Tight but for the Close of an orphan, which this case has none of.
        assert!(growth + CLOSE_LEN + 8 > MAX_REWRITE_GROWTH, "{growth}");
    }

    #[test]
    fn deallocate_all_in_a_parse_drops_statements_when_executed() {
        let mut w = World::new(1, 10);
        let mut c = Statements::default();
        w.send(&mut c, 0, b'P', &parse("s", "SELECT 1"));
        w.flags = SqlFlags {
            drops_all: true,
            reserved: false,
        };
        w.send(&mut c, 0, b'P', &parse("", "DEALLOCATE ALL"));
        w.flags = SqlFlags::default();
        // Not before it runs: a Bind of s between still has it.
        assert_eq!(c.count(), 1);
        w.send(&mut c, 0, b'B', &bind(""));
        assert_eq!(
            server_name_of(&w.send(&mut c, 0, b'B', &bind("s")), b'B')[..7],
            *b"pgherd_"
        );
        w.send(&mut c, 0, b'B', &bind(""));
        w.send(&mut c, 0, b'E', b"\0\0\0\0\0");
        assert_eq!(c.count(), 0);
        // Run again (the unnamed statement kept), it drops what was prepared since.
        w.send(&mut c, 0, b'P', &parse("t", "SELECT 2"));
        w.send(&mut c, 0, b'B', &bind(""));
        w.send(&mut c, 0, b'E', b"\0\0\0\0\0");
        assert_eq!(c.count(), 0);
    }

    #[test]
    fn an_answered_deallocate_drops_the_unnamed_statement_too() {
        let mut w = World::new(1, 10);
        let mut c = Statements::default();
        w.send(&mut c, 0, b'P', &parse("s", "SELECT 1"));
        w.send(&mut c, 0, b'P', &parse("", "SELECT 2"));
        w.send(&mut c, 0, b'S', b"");
        answer_all(&mut c, &mut w.servers[0]);
        let sql = &b"DEALLOCATE s\0"[..];
        let no = SqlFlags::default();
        let answer = c.query(
            4 + sql.len(),
            Some(sql),
            no,
            Some(b'I'),
            Some(&mut w.servers[0]),
        );
        assert!(matches!(answer, Action::Answer(_)));
        // As after any Query, the client has no unnamed statement: the server's is closed before a Bind.
        assert_eq!(
            w.send(&mut c, 0, b'B', &bind(""))[0],
            (b'C', b"S\0".to_vec())
        );
    }

    #[test]
    fn a_skipped_close_of_the_unnamed_statement_leaves_it() {
        let mut w = World::new(1, 10);
        let mut c = Statements::default();
        w.send(&mut c, 0, b'P', &parse("", "SELECT 1"));
        w.send(&mut c, 0, b'S', b"");
        answer_all(&mut c, &mut w.servers[0]);
        w.send(&mut c, 0, b'C', b"S\0");
        w.send(&mut c, 0, b'S', b"");
        // An error before it: the Close was skipped, the client still has its statement.
        c.error(&mut w.servers[0]);
        c.ready(&mut w.servers[0]);
        c.left_server();
        assert_eq!(
            w.send(&mut c, 0, b'B', &bind(""))[0],
            (b'P', parse("", "SELECT 1"))
        );
    }

    #[test]
    fn each_parse_of_a_statement_is_answered_for_itself() {
        // With room for one, a batch parses a, then b (evicting a), then binds a (preparing it again and
        // evicting b); an error after the first Parse of a was answered leaves a on the server, which pgherd
        // must still know of, so that the LRU closes it one day.
        let mut w = World::new(1, 1);
        let mut c = Statements::default();
        w.send(&mut c, 0, b'P', &parse("a", "SELECT 1"));
        w.send(&mut c, 0, b'P', &parse("b", "SELECT 2"));
        assert_eq!(tags(&w.send(&mut c, 0, b'B', &bind("a"))), b"CCPB");
        w.send(&mut c, 0, b'S', b"");
        let s0 = &mut w.servers[0];
        assert_eq!([c.reply(s0), c.reply(s0)], [Reply::Hide, Reply::Pass]);
        c.error(s0);
        c.ready(s0);
        let a = c.named.as_ref().unwrap().names[&b"a"[..]].id;
        let e = s0.held.entries[&a];
        assert_eq!((s0.len(), e.state), (1, State::Unsure));
    }

    #[test]
    fn a_skipped_eviction_with_no_room_left_is_closed_later() {
        let mut w = World::new(1, 1);
        let mut c = Statements::default();
        w.send(&mut c, 0, b'P', &parse("a", "SELECT 1"));
        w.send(&mut c, 0, b'S', b"");
        answer_all(&mut c, &mut w.servers[0]);
        // b evicts a, but an error before skips it all; the next batch's Parse of c fills the LRU first.
        w.send(&mut c, 0, b'P', &parse("b", "SELECT 2"));
        w.send(&mut c, 0, b'S', b"");
        w.send(&mut c, 0, b'P', &parse("c", "SELECT 3"));
        w.send(&mut c, 0, b'S', b"");
        let s0 = &mut w.servers[0];
        c.error(s0);
        c.ready(s0);
        while !s0.expected.is_empty() {
            c.reply(s0);
        }
        c.ready(s0);
        assert_eq!(s0.held.orphans.len(), 1);
        // The next Parse closes it, hidden.
        let sent = w.send(&mut c, 0, b'P', &parse("d", "SELECT 4"));
        assert_eq!(tags(&sent), b"CCCP");
        assert!(w.servers[0].held.orphans.is_empty());
    }

    #[test]
    fn settings_are_part_of_a_statement() {
        let registry = Registry::default();
        let a = registry.statement(1, b"SELECT * FROM t\0\0\0", false);
        let b = registry.statement(2, b"SELECT * FROM t\0\0\0", false);
        let c = registry.statement(1, b"SELECT * FROM t\0\0\0", false);
        assert_ne!(a.id, b.id);
        assert!(Rc::ptr_eq(&a, &c));
    }
}

/// Clients and servers simulated together: pgherd's rewrites run on a model of PostgreSQL's protocol, and what
/// each client sees is compared with what a PostgreSQL session of its own would have sent it.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    /// Queries clients prepare and run; the model fails "BAD" when parsed.
    const TEXTS: [&str; 4] = ["SELECT 1", "SELECT 2", "SELECT $1", "BAD"];
    /// SQL the scanner flags `reserved` (as `TEXTS[4]` in a Parse).
    const RESERVED_TEXT: &str = "EXECUTE pgherd_0";
    const NAMES: [&str; 4] = ["", "a", "b", "pgherd_q"];
    /// Clients 0 and 1 have the same settings, so they share statements.
    const SETTINGS: [Fingerprint; 3] = [1, 1, 2];

    /// A reply, as far as the comparison goes: its tag, the SQLSTATE of an error, and the statement (query
    /// and types) a BindComplete or ParameterDescription was for.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Out {
        Ok(u8, Option<Vec<u8>>),
        Err(&'static str),
    }

    /// Message fields read as PostgreSQL reads them: anything short or left over is a protocol violation.
    struct Fields<'a>(&'a [u8]);

    impl Fields<'_> {
        fn cstr(&mut self) -> Result<Vec<u8>, &'static str> {
            let (s, rest) = cstr(self.0).ok_or("08P01")?;
            self.0 = rest;
            Ok(s.to_vec())
        }

        fn take(&mut self, n: usize) -> Result<&[u8], &'static str> {
            if self.0.len() < n {
                return Err("08P01");
            }
            let (taken, rest) = self.0.split_at(n);
            self.0 = rest;
            Ok(taken)
        }

        fn int16(&mut self) -> Result<i16, &'static str> {
            let b = self.take(2)?;
            Ok(i16::from_be_bytes([b[0], b[1]]))
        }

        fn int32(&mut self) -> Result<i32, &'static str> {
            let b = self.take(4)?;
            Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        }

        fn count(&mut self) -> Result<usize, &'static str> {
            usize::try_from(self.int16()?).map_err(|_| "08P01")
        }

        fn end(&self) -> Result<(), &'static str> {
            if self.0.is_empty() {
                Ok(())
            } else {
                Err("08P01")
            }
        }
    }

    /// The protocol behaviour of one PostgreSQL session that matters here.
    #[derive(Debug, Default)]
    struct Pg {
        /// Prepared statements: name -> query, NUL, parameter types.
        named: HashMap<Vec<u8>, Vec<u8>>,
        unnamed: Option<Vec<u8>>,
        /// Portals: their statement, and whether it ran a utility statement, which runs once only.
        portals: HashMap<Vec<u8>, (Vec<u8>, bool)>,
        /// After an error in the extended protocol: everything up to Sync is skipped.
        skipping: bool,
    }

    impl Pg {
        /// The replies to one message; `fail` makes it fail as a missing statement would.
        fn handle(&mut self, tag: u8, body: &[u8], fail: bool) -> Vec<Out> {
            match tag {
                b'S' => {
                    self.skipping = false;
                    self.portals.clear();
                    return vec![Out::Ok(b'Z', None)];
                }
                b'Q' => {
                    // A Query while skipping would be skipped too: the clients here never send one then.
                    self.unnamed = None;
                    self.portals.clear();
                    let mut f = Fields(body);
                    let out = match f.cstr().and_then(|sql| f.end().map(|()| sql)) {
                        Ok(sql) => match self.run(&sql) {
                            Ok(()) => Out::Ok(b'C', None),
                            Err(code) => Out::Err(code),
                        },
                        Err(code) => Out::Err(code),
                    };
                    return vec![out, Out::Ok(b'Z', None)];
                }
                _ if self.skipping => return vec![],
                _ => {}
            }
            let result = if fail {
                Err("26000")
            } else {
                match tag {
                    b'P' => self.parse(body),
                    b'B' => self.bind(body),
                    b'D' => self.describe(body),
                    b'C' => self.close(body),
                    b'E' => self.execute(body),
                    b'H' => return vec![],
                    _ => Err("08P01"),
                }
            };
            match result {
                Ok(out) => vec![out],
                Err(code) => {
                    self.skipping = true;
                    vec![Out::Err(code)]
                }
            }
        }

        fn run(&mut self, sql: &[u8]) -> Result<(), &'static str> {
            if sql.starts_with(b"BAD") {
                return Err("42601");
            }
            if sql.starts_with(b"DO $pgherd$") {
                return Err("42939");
            }
            if sql == b"DEALLOCATE ALL" || sql == b"DISCARD ALL" {
                self.named.clear();
            } else if let Some(name) = sql.strip_prefix(b"DEALLOCATE ") {
                self.named.remove(name).ok_or("26000")?;
            }
            Ok(())
        }

        fn statement(&self, name: &[u8]) -> Option<Vec<u8>> {
            if name.is_empty() {
                self.unnamed.clone()
            } else {
                self.named.get(name).cloned()
            }
        }

        fn parse(&mut self, body: &[u8]) -> Result<Out, &'static str> {
            let mut f = Fields(body);
            let name = f.cstr()?;
            let stored = f.0.to_vec();
            let sql = f.cstr()?;
            for _ in 0..f.count()? {
                f.int32()?;
            }
            f.end()?;
            if name.is_empty() {
                self.unnamed = None;
            }
            if sql.starts_with(b"BAD") {
                return Err("42601");
            }
            if name.is_empty() {
                self.unnamed = Some(stored);
                return Ok(Out::Ok(b'1', None));
            }
            match self.named.entry(name) {
                std::collections::hash_map::Entry::Occupied(_) => Err("42P05"),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(stored);
                    Ok(Out::Ok(b'1', None))
                }
            }
        }

        fn bind(&mut self, body: &[u8]) -> Result<Out, &'static str> {
            let mut f = Fields(body);
            let portal = f.cstr()?;
            let name = f.cstr()?;
            for _ in 0..f.count()? {
                f.int16()?;
            }
            for _ in 0..f.count()? {
                let len = f.int32()?;
                if len > 0 {
                    f.take(len as usize)?;
                }
            }
            for _ in 0..f.count()? {
                f.int16()?;
            }
            f.end()?;
            let statement = self.statement(&name).ok_or("26000")?;
            if !portal.is_empty() && self.portals.contains_key(&portal) {
                return Err("42P03");
            }
            self.portals.insert(portal, (statement.clone(), false));
            Ok(Out::Ok(b'2', Some(statement)))
        }

        fn describe(&mut self, body: &[u8]) -> Result<Out, &'static str> {
            let mut f = Fields(body);
            let kind = f.take(1)?[0];
            let name = f.cstr()?;
            f.end()?;
            match kind {
                b'S' => Ok(Out::Ok(b't', Some(self.statement(&name).ok_or("26000")?))),
                b'P' if self.portals.contains_key(&name) => Ok(Out::Ok(b'n', None)),
                b'P' => Err("34000"),
                _ => Err("08P01"),
            }
        }

        fn close(&mut self, body: &[u8]) -> Result<Out, &'static str> {
            let mut f = Fields(body);
            let kind = f.take(1)?[0];
            let name = f.cstr()?;
            f.end()?;
            match kind {
                b'S' if name.is_empty() => self.unnamed = None,
                b'S' => drop(self.named.remove(&name)),
                b'P' => drop(self.portals.remove(&name)),
                _ => return Err("08P01"),
            }
            Ok(Out::Ok(b'3', None))
        }

        fn execute(&mut self, body: &[u8]) -> Result<Out, &'static str> {
            let mut f = Fields(body);
            let portal = f.cstr()?;
            f.int32()?;
            f.end()?;
            let (statement, done) = self.portals.get_mut(&portal).ok_or("34000")?;
            if *done {
                return Err("55000");
            }
            let sql = cstr(statement)
                .map_or(&statement[..], |(sql, _)| sql)
                .to_vec();
            *done = !sql.starts_with(b"SELECT");
            self.run(&sql)?;
            Ok(Out::Ok(b'C', None))
        }
    }

    /// What a client sends in an extended-protocol batch.
    #[derive(Debug, Clone)]
    enum Msg {
        /// `text` 4 is `RESERVED_TEXT`.
        Parse {
            name: usize,
            text: usize,
            types: bool,
        },
        Bind {
            name: usize,
            portal: bool,
        },
        Describe(usize),
        DescribePortal,
        Close(usize),
        ClosePortal,
        Execute,
        Flush,
        /// Arbitrary bytes as the body of a Parse, Bind, Describe or Close.
        Raw(u8, Vec<u8>),
        /// A Parse longer than pgherd tracks, shown to it whole or not at all.
        Long {
            name: usize,
            shown: bool,
        },
    }

    #[derive(Debug, Clone)]
    enum Batch {
        /// Messages then Sync; first DEALLOCATE ALL or DISCARD ALL as Parse, Bind and Execute when asked.
        Extended(Option<bool>, Vec<Msg>),
        Query(Query),
    }

    #[derive(Debug, Clone)]
    enum Query {
        Text(usize),
        DeallocateAll,
        DiscardAll,
        Deallocate(usize),
        Reserved,
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// A client's transaction on a server of its choice (unless it is pinned): its batches, and after
        /// which messages the replies so far reach pgherd.
        Tx {
            client: usize,
            server: usize,
            batches: Vec<Batch>,
            delivers: Vec<bool>,
        },
        /// Another session's dynamic SQL deallocates one of pgherd's statements on a server.
        Adversary { server: usize, pick: usize },
    }

    fn msg() -> impl Strategy<Value = Msg> {
        let name = 0..NAMES.len();
        let raw_body = prop::collection::vec(
            prop_oneof![Just(0u8), Just(b'S'), Just(b'P'), Just(b'a'), any::<u8>()],
            0..24,
        );
        prop_oneof![
            6 => (name.clone(), 0..5usize, any::<bool>())
                .prop_map(|(name, text, types)| Msg::Parse { name, text, types }),
            6 => (name.clone(), prop::bool::weighted(0.1))
                .prop_map(|(name, portal)| Msg::Bind { name, portal }),
            2 => name.clone().prop_map(Msg::Describe),
            1 => Just(Msg::DescribePortal),
            3 => name.clone().prop_map(Msg::Close),
            1 => Just(Msg::ClosePortal),
            4 => Just(Msg::Execute),
            1 => Just(Msg::Flush),
            2 => (prop::sample::select(&b"PBDC"[..]), raw_body).prop_map(|(t, b)| Msg::Raw(t, b)),
            1 => (name, prop::bool::weighted(0.3)).prop_map(|(name, shown)| Msg::Long { name, shown }),
        ]
    }

    fn batch() -> impl Strategy<Value = Batch> {
        let query = prop_oneof![
            4 => (0..TEXTS.len()).prop_map(Query::Text),
            1 => Just(Query::DeallocateAll),
            1 => Just(Query::DiscardAll),
            2 => (0..NAMES.len()).prop_map(Query::Deallocate),
            1 => Just(Query::Reserved),
        ];
        let drop_all = prop_oneof![8 => Just(None), 1 => any::<bool>().prop_map(Some)];
        prop_oneof![
            5 => (drop_all, prop::collection::vec(msg(), 0..7))
                .prop_map(|(d, msgs)| Batch::Extended(d, msgs)),
            1 => query.prop_map(Batch::Query),
        ]
    }

    /// Few names and good SQL, for statements used again and again while the adversary deletes them.
    fn focused_batch() -> impl Strategy<Value = Batch> {
        let msg = prop_oneof![
            1 => (0..2usize).prop_map(|text| Msg::Parse { name: 1, text, types: false }),
            4 => Just(Msg::Bind { name: 1, portal: false }),
            1 => Just(Msg::Describe(1)),
            2 => Just(Msg::Execute),
        ];
        prop::collection::vec(msg, 1..5).prop_map(|msgs| Batch::Extended(None, msgs))
    }

    fn step(batch: impl Strategy<Value = Batch>) -> impl Strategy<Value = Step> {
        let tx = (
            0..3usize,
            0..3usize,
            prop::collection::vec(batch, 1..4),
            prop::collection::vec(prop::bool::weighted(0.3), 1..8),
        )
            .prop_map(|(client, server, batches, delivers)| Step::Tx {
                client,
                server,
                batches,
                delivers,
            });
        prop_oneof![
            4 => tx,
            1 => (0..3usize, any::<usize>()).prop_map(|(server, pick)| Step::Adversary { server, pick }),
        ]
    }

    fn encode_parse(name: &[u8], sql: &[u8], types: bool) -> Vec<u8> {
        let types: &[u8] = if types { &[0, 1, 0, 0, 0, 23] } else { &[0, 0] };
        [name, b"\0", sql, b"\0", types].concat()
    }

    fn is_hashed(name: &[u8]) -> bool {
        name.len() == NAME_LEN && name.starts_with(NAME_PREFIX) && name != SCRATCH
    }

    /// The messages of a rewrite, every length field checked.
    fn split(mut bytes: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, TestCaseError> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            prop_assert!(bytes.len() >= 5, "a message cut short");
            let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
            prop_assert!(len >= 4 && len < bytes.len(), "length field {len} wrong");
            out.push((bytes[0], bytes[5..1 + len].to_vec()));
            bytes = &bytes[1 + len..];
        }
        Ok(out)
    }

    /// Which statement name a Bind or Describe (`uses`) or a Parse or Close reads, as pgherd reads it; `None`
    /// inside when the name is unreadable.
    fn concern(tag: u8, body: &[u8], shown: bool) -> Option<Option<Vec<u8>>> {
        let named = |b: &[u8]| cstr(b).map(|(n, _)| n.to_vec());
        match (tag, body) {
            (b'P', _) if !shown => Some(None),
            (b'P', _) => named(body).map(Some),
            (b'B', _) => Some(cstr(body).and_then(|(_, rest)| named(rest))),
            (b'D' | b'C', [b'S', rest @ ..]) => {
                Some(named(rest)).filter(|n| tag == b'D' || n.is_some())
            }
            _ => None,
        }
    }

    struct Client {
        st: Statements,
        /// The client's own PostgreSQL session, with the reserved SQL replaced as pgherd promises.
        reference: Pg,
        /// The server it keeps, for untracked statements.
        pinned: Option<usize>,
        /// Its unnamed statement's last Parse or Close failed or was skipped: pgherd cannot know which, and
        /// the two leave different unnamed statements, so the client does not use it until the next one.
        unnamed_unknown: bool,
    }

    struct Server {
        pg: Pg,
        st: ServerStatements,
        /// Statements the adversary deleted, and the flight in which a Bind or Describe met the loss.
        deleted: HashMap<Vec<u8>, Option<u32>>,
    }

    struct Sim {
        registry: Registry,
        clients: Vec<Client>,
        servers: Vec<Server>,
        cap: usize,
        max_statements: usize,
        max_statement_bytes: usize,
        /// Replies not yet seen by pgherd, of the current flight (messages sent since replies last came).
        flight: u32,
        replies: Vec<Out>,
        seen: Vec<Out>,
        expected: Vec<Out>,
        /// Statement names parsed or closed in earlier batches not answered yet, and in the open one, and
        /// whether some Parse there was unreadable.
        earlier: HashSet<Vec<u8>>,
        current: HashSet<Vec<u8>>,
        earlier_unknown: bool,
        current_unknown: bool,
    }

    impl Sim {
        fn new(cap: usize, max_statements: usize, max_statement_bytes: usize) -> Sim {
            Sim {
                registry: Registry::default(),
                clients: (0..3)
                    .map(|_| Client {
                        st: Statements::default(),
                        reference: Pg::default(),
                        pinned: None,
                        unnamed_unknown: false,
                    })
                    .collect(),
                servers: (0..3)
                    .map(|_| Server {
                        pg: Pg::default(),
                        st: ServerStatements::default(),
                        deleted: HashMap::new(),
                    })
                    .collect(),
                cap,
                max_statements,
                max_statement_bytes,
                flight: 0,
                replies: Vec::new(),
                seen: Vec::new(),
                expected: Vec::new(),
                earlier: HashSet::new(),
                current: HashSet::new(),
                earlier_unknown: false,
                current_unknown: false,
            }
        }

        fn run(&mut self, steps: &[Step]) -> Result<(), TestCaseError> {
            for step in steps {
                match step {
                    Step::Adversary { server, pick } => {
                        let server = &mut self.servers[*server];
                        let mut hashed: Vec<Vec<u8>> = server
                            .pg
                            .named
                            .keys()
                            .filter(|n| is_hashed(n))
                            .cloned()
                            .collect();
                        hashed.sort();
                        if !hashed.is_empty() {
                            let name = hashed.swap_remove(pick % hashed.len());
                            server.pg.named.remove(&name);
                            server.deleted.insert(name, None);
                        }
                    }
                    Step::Tx {
                        client,
                        server,
                        batches,
                        delivers,
                    } => self.transaction(*client, *server, batches, delivers)?,
                }
            }
            Ok(())
        }

        fn transaction(
            &mut self,
            c: usize,
            pick: usize,
            batches: &[Batch],
            delivers: &[bool],
        ) -> Result<(), TestCaseError> {
            // A pinned client keeps its server; the others lease one nobody keeps.
            let s = match self.clients[c].pinned {
                Some(s) => s,
                None => {
                    let free: Vec<usize> = (0..3)
                        .filter(|s| self.clients.iter().all(|cl| cl.pinned != Some(*s)))
                        .collect();
                    match free.get(pick % free.len().max(1)) {
                        Some(&s) => s,
                        None => return Ok(()),
                    }
                }
            };
            let mut sent = 0;
            let mut deliver_now = |sim: &mut Sim| -> Result<(), TestCaseError> {
                sent += 1;
                if delivers[sent % delivers.len()] {
                    sim.deliver(c, s)?;
                }
                Ok(())
            };
            for batch in batches {
                match batch {
                    Batch::Query(query) => {
                        let flags = |drops_all, reserved| SqlFlags {
                            drops_all,
                            reserved,
                        };
                        let (sql, sent_flags, run) = match query {
                            Query::Text(t) => (TEXTS[*t].to_string(), flags(false, false), None),
                            Query::DeallocateAll => {
                                ("DEALLOCATE ALL".into(), flags(true, false), None)
                            }
                            Query::DiscardAll => ("DISCARD ALL".into(), flags(true, false), None),
                            Query::Deallocate(n) => {
                                // Answered by pgherd only when the client waits for nothing: so it waits.
                                self.deliver(c, s)?;
                                (
                                    format!("DEALLOCATE {}", NAMES[*n]),
                                    flags(false, false),
                                    None,
                                )
                            }
                            Query::Reserved => (
                                RESERVED_TEXT.into(),
                                flags(false, true),
                                Some(RESERVED_SQL.to_vec()),
                            ),
                        };
                        let body = [sql.as_bytes(), b"\0"].concat();
                        let reference = [&run.unwrap_or(sql.into_bytes())[..], b"\0"].concat();
                        self.send(c, s, b'Q', &body, sent_flags, &reference, true)?;
                        self.end_batch();
                        deliver_now(self)?;
                    }
                    Batch::Extended(drop_all, msgs) => {
                        if let Some(discard) = drop_all {
                            let sql: &[u8] = if *discard {
                                b"DISCARD ALL"
                            } else {
                                b"DEALLOCATE ALL"
                            };
                            let parse = encode_parse(b"", sql, false);
                            let flags = SqlFlags {
                                drops_all: true,
                                reserved: false,
                            };
                            self.send(c, s, b'P', &parse, flags, &parse, true)?;
                            let bind = b"\0\0\0\0\0\0\0\0".to_vec();
                            self.send(c, s, b'B', &bind, SqlFlags::default(), &bind, true)?;
                            let execute = b"\0\0\0\0\0".to_vec();
                            self.send(c, s, b'E', &execute, SqlFlags::default(), &execute, true)?;
                        }
                        for m in msgs {
                            self.message(c, s, m)?;
                            deliver_now(self)?;
                        }
                        self.send(c, s, b'S', b"", SqlFlags::default(), b"", true)?;
                        self.end_batch();
                        deliver_now(self)?;
                    }
                }
            }
            self.deliver(c, s)?;
            self.check_server(s)?;
            // The relay keeps the server for a client with untracked statements, until they are dropped.
            if !self.clients[c].st.untracked {
                self.clients[c].pinned = None;
            }
            if self.clients[c].pinned.is_none() {
                self.clients[c].st.left_server();
                self.servers[s].st.released();
            }
            Ok(())
        }

        fn message(&mut self, c: usize, s: usize, m: &Msg) -> Result<(), TestCaseError> {
            let no = SqlFlags::default();
            let name = |n: &usize| NAMES[*n].as_bytes();
            let (tag, body, flags, reference, shown) = match m {
                Msg::Parse {
                    name: n,
                    text,
                    types,
                } => {
                    let (sql, flags, run) = match TEXTS.get(*text) {
                        Some(t) => (t.as_bytes(), no, t.as_bytes()),
                        None => (
                            RESERVED_TEXT.as_bytes(),
                            SqlFlags {
                                drops_all: false,
                                reserved: true,
                            },
                            RESERVED_SQL,
                        ),
                    };
                    let body = encode_parse(name(n), sql, *types);
                    (b'P', body, flags, encode_parse(name(n), run, *types), true)
                }
                Msg::Bind { name: n, portal } => {
                    let portal: &[u8] = if *portal { b"p" } else { b"" };
                    let body = [portal, b"\0", name(n), b"\0", &[0; 6]].concat();
                    (b'B', body.clone(), no, body, true)
                }
                Msg::Describe(n) => {
                    let body = [b"S", name(n), b"\0"].concat();
                    (b'D', body.clone(), no, body, true)
                }
                Msg::DescribePortal => (b'D', b"P\0".to_vec(), no, b"P\0".to_vec(), true),
                Msg::Close(n) => {
                    let body = [b"S", name(n), b"\0"].concat();
                    (b'C', body.clone(), no, body, true)
                }
                Msg::ClosePortal => (b'C', b"P\0".to_vec(), no, b"P\0".to_vec(), true),
                Msg::Execute => (b'E', vec![0; 5], no, vec![0; 5], true),
                Msg::Flush => (b'H', vec![], no, vec![], true),
                Msg::Raw(tag, body) => (*tag, body.clone(), no, body.clone(), true),
                Msg::Long { name: n, shown } => {
                    let sql = format!("SELECT '{}'", "x".repeat(MAX_TRACKED_PARSE));
                    let body = encode_parse(name(n), sql.as_bytes(), false);
                    (b'P', body.clone(), no, body, *shown)
                }
            };
            // What pgherd cannot get right without waiting (see the module's doc), the client does not do.
            // An Execute is taken to run DISCARD ALL or DEALLOCATE ALL when the last Bind was of one: the
            // client does not make that wrong (by a portal closed, or an error before, in the meantime).
            if tag == b'E' {
                let client = &self.clients[c];
                let runs =
                    !client.reference.skipping
                        && client.reference.portals.get(&b""[..]).is_some_and(
                            |(statement, done)| {
                                !done
                                    && (statement.starts_with(b"DEALLOCATE ALL\0")
                                        || statement.starts_with(b"DISCARD ALL\0"))
                            },
                        );
                if client.st.bound_drops_all != runs {
                    return Ok(());
                }
            }
            if let Some(target) = concern(tag, &body, shown) {
                let uses = matches!(tag, b'B' | b'D');
                let unnamed = target.as_deref().is_none_or(<[u8]>::is_empty);
                // A Parse of the unnamed statement depends on nothing earlier; one whose name is not known
                // may be of any name.
                if tag != b'P' || target.as_deref().is_none_or(|t| !t.is_empty()) {
                    let pending = match &target {
                        Some(t) => self.earlier.contains(t) || self.earlier_unknown,
                        None => !self.earlier.is_empty() || self.earlier_unknown,
                    };
                    if pending {
                        return Ok(());
                    }
                }
                if uses && unnamed && self.clients[c].unnamed_unknown {
                    return Ok(());
                }
                // A Parse pgherd cannot read of a name it tracks: forwarded, so it is both.
                if !shown {
                    let tracked = self.clients[c].st.named.as_ref();
                    if tracked.is_some_and(|n| {
                        n.names.contains_key(name(match m {
                            Msg::Long { name, .. } => name,
                            _ => &0,
                        }))
                    }) {
                        return Ok(());
                    }
                }
                match target {
                    Some(t) if !uses => drop(self.current.insert(t)),
                    None if !uses => self.current_unknown = true,
                    _ => {}
                }
            }
            self.send(c, s, tag, &body, flags, &reference, shown)
        }

        fn end_batch(&mut self) {
            self.earlier.extend(self.current.drain());
            self.earlier_unknown |= std::mem::take(&mut self.current_unknown);
        }

        /// One client message through pgherd to the model server, and through the client's own session.
        #[allow(clippy::too_many_arguments)]
        fn send(
            &mut self,
            c: usize,
            s: usize,
            tag: u8,
            body: &[u8],
            flags: SqlFlags,
            reference: &[u8],
            shown: bool,
        ) -> Result<(), TestCaseError> {
            let mut whole = Vec::new();
            encode::parts(&mut whole, tag, &[body]);
            let len = body.len() + 4;
            let shown = match tag {
                b'P' | b'Q' => Some(body).filter(|b| shown && b.len() <= MAX_TRACKED_PARSE + 64),
                _ => Some(&body[..body.len().min(2 * MAX_NAMES)]),
            };
            let ready = self.replies.is_empty().then_some(b'I');
            let mut out = Vec::new();
            let mut looks = 0;
            let answered = loop {
                looks += 1;
                prop_assert!(looks <= 3, "a message looked at again and again");
                let Sim {
                    registry,
                    clients,
                    servers,
                    ..
                } = self;
                let cx = Context {
                    registry,
                    settings: SETTINGS[c],
                    cap: self.cap,
                    max_statements: self.max_statements,
                    max_statement_bytes: self.max_statement_bytes,
                };
                let (client, server) = (&mut clients[c], Some(&mut servers[s].st));
                let action = match tag {
                    b'Q' => client.st.query(len, shown, flags, ready, server),
                    _ => client.st.client(tag, len, shown, flags, &cx, server),
                };
                let shown_len = shown.map_or(0, <[u8]>::len);
                match action {
                    Action::Pass => out.extend_from_slice(&whole),
                    Action::NeedServer => prop_assert!(false, "a server was given"),
                    Action::Rewrite { head: 0, bytes } => {
                        out.extend_from_slice(&bytes);
                        continue;
                    }
                    Action::Rewrite { head, bytes } => {
                        prop_assert!(
                            head <= 5 + shown_len,
                            "the rewrite replaces bytes not shown"
                        );
                        out.extend_from_slice(&bytes);
                        out.extend_from_slice(&whole[head..]);
                    }
                    Action::Untracked(rewrite) => {
                        prop_assert_eq!(tag, b'P');
                        client.pinned = Some(s);
                        match rewrite {
                            Some(bytes) => {
                                prop_assert!(shown.is_some(), "rewrote what it did not read");
                                out.extend_from_slice(&bytes);
                            }
                            None => out.extend_from_slice(&whole),
                        }
                    }
                    Action::Answer(bytes) => break Some(bytes),
                }
                break None;
            };
            let growth = out.len().saturating_sub(whole.len());
            prop_assert!(growth <= MAX_REWRITE_GROWTH, "a rewrite grew by {growth}");
            let mut fail = false;
            if let Some(bytes) = answered {
                for (t, _) in split(&bytes)? {
                    self.seen.push(Out::Ok(t, None));
                }
            }
            for (t, b) in split(&out)? {
                let server = &mut self.servers[s];
                let outs = server.pg.handle(t, &b, false);
                let target = match (t, &b[..]) {
                    (b'B', _) => cstr(&b).and_then(|(_, rest)| cstr(rest)).map(|(n, _)| n),
                    (b'D' | b'P', _) if t == b'P' => cstr(&b).map(|(n, _)| n),
                    (b'D', [b'S', rest @ ..]) => cstr(rest).map(|(n, _)| n),
                    _ => None,
                };
                if let Some(name) = target.filter(|n| is_hashed(n)) {
                    if t == b'P' && outs == [Out::Ok(b'1', None)] {
                        server.deleted.remove(name);
                    }
                    if t != b'P' && outs == [Out::Err("26000")] {
                        // Only the adversary's doing, and met in one flight at most.
                        match server.deleted.get_mut(name) {
                            Some(met) if met.is_none_or(|f| f == self.flight) => {
                                *met = Some(self.flight);
                                fail = true;
                            }
                            _ => prop_assert!(false, "pgherd used a statement the server lacks"),
                        }
                    }
                }
                self.replies.extend(outs);
            }
            let client = &mut self.clients[c];
            let outs = client.reference.handle(tag, reference, fail);
            let unnamed = match (tag, reference) {
                // pgherd cannot tell which name a Parse it could not read had.
                (b'P', _) if shown.is_none() => true,
                (b'P', _) if !matches!(concern(tag, body, true), Some(Some(n)) if !n.is_empty()) => {
                    true
                }
                _ => false,
            };
            if unnamed {
                let ok = matches!(outs.first(), Some(Out::Ok(..)));
                client.unnamed_unknown = !ok || shown.is_none() || body.len() > MAX_TRACKED_PARSE;
            } else if tag == b'Q' {
                client.unnamed_unknown = false;
            }
            self.expected.extend(outs);
            Ok(())
        }

        /// The replies so far reach pgherd, which hides what it must; the client must see what its own session
        /// would have sent it.
        fn deliver(&mut self, c: usize, s: usize) -> Result<(), TestCaseError> {
            let (client, server) = (&mut self.clients[c].st, &mut self.servers[s].st);
            for out in self.replies.drain(..) {
                let shown = match &out {
                    Out::Ok(b'1' | b'3', _) => client.reply(server) == Reply::Pass,
                    Out::Err(_) => {
                        client.error(server);
                        true
                    }
                    Out::Ok(b'Z', _) => {
                        client.ready(server);
                        true
                    }
                    Out::Ok(..) => true,
                };
                if shown {
                    self.seen.push(out);
                }
            }
            prop_assert_eq!(&self.seen, &self.expected);
            self.seen.clear();
            self.expected.clear();
            // Finished batches are settled; the open one's fate is not known before its Sync is answered.
            self.earlier.clear();
            self.earlier_unknown = false;
            self.flight += 1;
            // The client's limits hold, and what counts against them is its names.
            if let Some(named) = &self.clients[c].st.named {
                let bytes: usize = named.names.iter().map(|(n, st)| cost(n, st)).sum();
                prop_assert!(named.count <= self.max_statements);
                prop_assert!(named.bytes <= self.max_statement_bytes);
                if self.servers[s].st.expected.is_empty() {
                    prop_assert_eq!((named.count, named.bytes), (named.names.len(), bytes));
                }
            }
            Ok(())
        }

        /// Between transactions: the LRU is within its cap, everything it is sure of is on the server (but
        /// for losses nobody ran into yet), and everything of pgherd's on the server is in it.
        fn check_server(&self, s: usize) -> Result<(), TestCaseError> {
            let server = &self.servers[s];
            prop_assert!(server.st.expected.is_empty());
            let held = &server.st.held.entries;
            prop_assert!(held.len() <= self.cap.max(1));
            for (id, entry) in held {
                prop_assert!(entry.state != State::Pending, "a Parse never answered");
                let name = server_name(*id).to_vec();
                if entry.state == State::Sure && !server.pg.named.contains_key(&name) {
                    prop_assert_eq!(
                        server.deleted.get(&name),
                        Some(&None),
                        "sure of a lost statement"
                    );
                }
            }
            let orphans = &server.st.held.orphans;
            for name in server.pg.named.keys().filter(|n| is_hashed(n)) {
                let known = held
                    .keys()
                    .chain(orphans)
                    .any(|id| server_name(*id)[..] == name[..]);
                prop_assert!(
                    known,
                    "a statement of pgherd's on the server it does not know of"
                );
            }
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(crate::fuzzing::config())]

        /// Clients on shared servers see what PostgreSQL would send them, use only their own statements, stay
        /// within their limits, and survive an adversary deleting pgherd's statements between transactions.
        #[test]
        fn clients_see_what_postgresql_would_send(
            cap in 1..5usize,
            max_statements in prop_oneof![3 => Just(usize::MAX), 1 => 0..4usize],
            max_statement_bytes in prop_oneof![3 => Just(usize::MAX), 1 => 8..64usize],
            steps in prop::collection::vec(step(batch()), 1..30),
        ) {
            let mut sim = Sim::new(cap, max_statements, max_statement_bytes);
            sim.run(&steps)?;
        }

        /// A statement another session deallocated fails one Bind or Describe at most (all those already
        /// on the way with it), then is prepared again.
        #[test]
        fn a_lost_statement_fails_once(
            cap in 1..3usize,
            steps in prop::collection::vec(step(focused_batch()), 1..30),
        ) {
            let mut sim = Sim::new(cap, usize::MAX, usize::MAX);
            sim.run(&steps)?;
        }

        /// Any bytes as the body of any client message, any length field: no panic, and rewrites stay
        /// well-formed and within the bound.
        #[test]
        fn arbitrary_messages_never_panic(
            messages in prop::collection::vec(
                (
                    prop::sample::select(&b"PBDCSFQHE"[..]),
                    prop::collection::vec(any::<u8>(), 0..64),
                    0..80usize,
                    any::<bool>(),
                    any::<bool>(),
                    any::<bool>(),
                ),
                1..40,
            ),
            replies in prop::collection::vec(prop::sample::select(&b"13EZ"[..]), 0..40),
        ) {
            let registry = Registry::default();
            let cx = Context {
                registry: &registry,
                settings: 0,
                cap: 2,
                max_statements: 3,
                max_statement_bytes: 100,
            };
            let mut c = Statements::default();
            let mut server = ServerStatements::default();
            let mut replies = replies.into_iter();
            for (tag, body, len, drops_all, reserved, answer) in messages {
                let flags = SqlFlags { drops_all, reserved };
                for len in [body.len() + 4, len] {
                    let action = if tag == b'Q' {
                        c.query(len, Some(&body), flags, Some(b'I'), Some(&mut server))
                    } else {
                        c.client(tag, len, Some(&body), flags, &cx, Some(&mut server))
                    };
                    let rewrite = match action {
                        Action::Rewrite { head, bytes } => Some((head, bytes)),
                        Action::Untracked(Some(bytes)) => Some((len + 1, bytes)),
                        _ => None,
                    };
                    if let Some((head, bytes)) = rewrite {
                        split(&bytes)?;
                        prop_assert!(head <= len + 1);
                        prop_assert!(bytes.len().saturating_sub(head) <= MAX_REWRITE_GROWTH);
                    }
                }
                if answer {
                    match replies.next() {
                        Some(b'E') => c.error(&mut server),
                        Some(b'Z') => c.ready(&mut server),
                        Some(_) => drop(c.reply(&mut server)),
                        None => {}
                    }
                }
            }
            prop_assert!(server.held.entries.len() <= 2);
        }
    }
}
