//! One statement, read token by token. The scan keeps the statement's first words, for the forms known by how
//! they start (LISTEN, PREPARE, SET, DISCARD ALL, ...), its last two, and the few phrases that count wherever they
//! stand (WITH HOLD, ON COMMIT DROP, INTO TEMP, a name in pg_temp, AS EXECUTE, the functions that take advisory
//! locks or change settings); once the statement ends, it is classified by them. Nothing else is kept, since this
//! runs for every token of every Query and Parse. EXPLAIN's statement is classified as if it stood alone.

use super::lexer::{Kind, Token};
use super::plpgsql::{self, Dynamic};
use super::set_config::Calls;
use super::settings;
use super::{Mode, Pins, Scan};

/// How pgherd's own prepared statements are named: a client's SQL must not reach them.
const RESERVED_PREFIX: &[u8] = b"pgherd_";

/// How many of a statement's first tokens are kept: enough for every form classified by its start.
const HEAD: usize = 8;

/// The first tokens of a statement (of EXPLAIN's statement when it is one), and how many it has.
#[derive(Default)]
pub(super) struct Head {
    tokens: [Token; HEAD],
    /// Tokens in the statement (after EXPLAIN and its options), kept or not.
    len: usize,
}

impl Head {
    /// The `i`th token of the statement, or an empty one.
    pub(super) fn get(&self, i: usize) -> Token {
        if i < self.len {
            self.tokens.get(i).copied().unwrap_or_default()
        } else {
            Token::default()
        }
    }

    /// The `i`th token is the unquoted keyword `keyword`, in any case.
    pub(super) fn is(&self, text: &[u8], i: usize, keyword: &str) -> bool {
        self.get(i).is(text, keyword)
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every token of the statement is kept.
    pub(super) fn whole(&self) -> bool {
        self.len <= HEAD
    }

    fn push(&mut self, token: Token) {
        if let Some(slot) = self.tokens.get_mut(self.len) {
            *slot = token;
        }
        self.len += 1;
    }
}

/// What the scan remembers of the statement it is in: its first tokens, the last few, and a few phrases.
pub(super) struct Statement {
    mode: Mode,
    /// 0 for the client's SQL, 1 for the body of a DO block in it, and so on. Clears count only at 0: a DO
    /// block may not run the statements in it.
    level: u8,
    head: Head,
    /// The last two tokens.
    before_last: Token,
    last: Token,
    /// Parentheses open.
    depth: usize,
    /// Reading EXPLAIN's options; `explained` once its statement has started.
    explain: bool,
    explained: bool,
    with_hold: bool,
    on_commit_drop: bool,
    pg_temp: bool,
    into_temp: bool,
    /// After AS EXECUTE: the next token is a prepared statement's name.
    as_execute: bool,
    unlock_all: bool,
    /// PL/pgSQL's EXECUTE, waiting for its string.
    dynamic: Dynamic,
    /// set_config calls being read.
    calls: Calls,
}

impl Statement {
    pub(super) fn new(mode: Mode, level: u8) -> Self {
        Statement {
            mode,
            level,
            head: Head::default(),
            before_last: Token::default(),
            last: Token::default(),
            depth: 0,
            explain: false,
            explained: false,
            with_hold: false,
            on_commit_drop: false,
            pg_temp: false,
            into_temp: false,
            as_execute: false,
            unlock_all: false,
            dynamic: Dynamic::Idle,
            calls: Calls::default(),
        }
    }

    pub(super) fn token(&mut self, text: &[u8], token: Token, scan: &mut Scan) {
        let is = |keyword: &str| token.is(text, keyword);
        if token.kind == Kind::Semicolon
            || (self.mode == Mode::PlPgSql
                && self.depth == 0
                && plpgsql::starts_statement(text, token))
        {
            return self.end(text, scan);
        }
        if self.explain {
            match token.kind {
                Kind::Open => self.depth += 1,
                Kind::Close => self.depth = self.depth.saturating_sub(1),
                _ if self.depth > 0 || is("ANALYZE") || is("ANALYSE") || is("VERBOSE") => {}
                _ => {
                    // EXPLAIN's statement starts: it is classified as if alone.
                    self.explain = false;
                    self.explained = true;
                    self.head = Head::default();
                }
            }
            if self.explain {
                return;
            }
        }
        self.dynamic.token(text, token, self.level, scan);
        self.calls.token(text, token, self.depth, scan);
        let last = self.last;
        let after_as_execute = std::mem::take(&mut self.as_execute);
        match token.kind {
            Kind::Open => {
                self.depth += 1;
                self.called(text, last, scan);
            }
            Kind::Close => self.depth = self.depth.saturating_sub(1),
            Kind::Word => self.phrase(text, token, scan),
            Kind::Quoted if token.ident_starts_with(text, b"pg_temp") => {
                self.in_pg_temp(text, last)
            }
            Kind::UnicodeQuoted if token.text(text).contains(&b'\\') => {
                // A name spelled with escapes, maybe a function's: pgherd does not read them.
                scan.pin();
            }
            _ => {}
        }
        if after_as_execute {
            reserve(text, token, self.level, scan.effects);
        }
        self.head.push(token);
        self.before_last = last;
        self.last = token;
    }

    /// The phrases that end with the word `token`, tested only for the word that may end them: this runs for
    /// every word of every statement.
    fn phrase(&mut self, text: &[u8], token: Token, scan: &mut Scan) {
        let [before_last, last] = [self.before_last, self.last];
        let is = |keyword: &str| token.is(text, keyword);
        match token.text(text).first().map(u8::to_ascii_uppercase) {
            Some(b'H') => self.with_hold |= is("HOLD") && last.is(text, "WITH"),
            Some(b'D') => {
                self.on_commit_drop |=
                    is("DROP") && last.is(text, "COMMIT") && before_last.is(text, "ON")
            }
            Some(b'T') if is("TEMP") || is("TEMPORARY") => {
                self.into_temp |= last.is(text, "INTO")
                    || ((last.is(text, "GLOBAL") || last.is(text, "LOCAL"))
                        && before_last.is(text, "INTO"));
            }
            Some(b'P') if token.ident_starts_with(text, b"pg_temp") => self.in_pg_temp(text, last),
            Some(b'E') if is("EXECUTE") => {
                // The name after AS EXECUTE (CREATE TABLE AS EXECUTE) is a prepared statement's.
                self.as_execute = last.is(text, "AS");
                let first = self.head.is_empty() && !self.explained;
                if self.mode == Mode::PlPgSql && plpgsql::runs_sql(text, first, last) {
                    self.dynamic = Dynamic::Literal;
                }
            }
            Some(b'E') if self.head.is_empty() && !self.explained && is("EXPLAIN") => {
                self.explain = true
            }
            Some(b'U') if is("UESCAPE") && last.kind == Kind::UnicodeQuoted => scan.pin(),
            _ => {}
        }
    }

    /// A name in pg_temp, the session's schema of temporary objects (or one of their own, pg_temp_N), after
    /// `last`: what is created there is temporary, and so is what SELECT puts INTO it.
    fn in_pg_temp(&mut self, text: &[u8], last: Token) {
        self.pg_temp = true;
        self.into_temp |= last.is(text, "INTO");
    }

    /// A `(` after `function`: the calls that matter wherever they are.
    fn called(&mut self, text: &[u8], function: Token, scan: &mut Scan) {
        let Some((name, _)) = function.ident(text) else {
            return;
        };
        if !matches!(name.first(), Some(b'p' | b'P' | b's' | b'S')) {
            return;
        }
        let is = |name: &str| function.names(text, name);
        if [
            "pg_advisory_lock",
            "pg_advisory_lock_shared",
            "pg_try_advisory_lock",
            "pg_try_advisory_lock_shared",
        ]
        .iter()
        .any(|f| is(f))
        {
            scan.effects.creates.insert(Pins::ADVISORY_LOCK);
        } else if is("pg_advisory_unlock_all") {
            self.unlock_all = true;
        } else if is("set_config") {
            self.calls.open(self.depth, scan);
        }
    }

    /// Classifies the statement by its first tokens once it has ended, and starts the next.
    pub(super) fn end(&mut self, text: &[u8], scan: &mut Scan) {
        self.dynamic.end(text, self.level, scan);
        self.calls.end(scan);
        if !self.head.is_empty() {
            self.classify(text, scan);
        }
        *self = Statement::new(self.mode, self.level);
    }

    fn classify(&self, text: &[u8], scan: &mut Scan) {
        let head = &self.head;
        let is = |i: usize, keyword: &str| head.is(text, i, keyword);
        if is(0, "DO") {
            return plpgsql::do_block(text, head, self.level, scan);
        }
        let top = self.level == 0;
        let effects = &mut *scan.effects;
        let mut clears = Pins::default();
        // CREATE [OR REPLACE] [GLOBAL | LOCAL] TEMP, SELECT ... INTO TEMP, and anything created in pg_temp.
        let mut temp_at = if is(1, "OR") && is(2, "REPLACE") {
            3
        } else {
            1
        };
        if is(temp_at, "GLOBAL") || is(temp_at, "LOCAL") {
            temp_at += 1;
        }
        let created_temp =
            is(0, "CREATE") && (is(temp_at, "TEMP") || is(temp_at, "TEMPORARY") || self.pg_temp);
        let selected_into_temp = self.into_temp && !is(0, "INSERT") && !is(0, "MERGE");
        if (created_temp || selected_into_temp) && !self.on_commit_drop {
            effects.creates.insert(Pins::TEMP_OBJECT);
        }
        if is(0, "LISTEN") {
            effects.creates.insert(Pins::LISTEN);
        } else if is(0, "UNLISTEN") && head.get(1).is_char(text, b'*') {
            clears.insert(Pins::LISTEN);
        } else if is(0, "PREPARE") {
            if !(is(1, "TRANSACTION") && matches!(head.get(2).kind, Kind::Str(_))) {
                effects.creates.insert(Pins::PREPARED);
                reserve(text, head.get(1), self.level, effects);
            }
        } else if is(0, "EXECUTE") && (self.mode == Mode::Sql || self.explained) {
            reserve(text, head.get(1), self.level, effects);
        } else if is(0, "DEALLOCATE") {
            let name = head.get(if is(1, "PREPARE") { 2 } else { 1 });
            if name.is(text, "ALL") {
                clears.insert(Pins::PREPARED);
            } else {
                reserve(text, name, self.level, effects);
            }
        } else if is(0, "DECLARE") && self.with_hold {
            effects.creates.insert(Pins::HOLD_CURSOR);
        } else if is(0, "CLOSE") && is(1, "ALL") {
            clears.insert(Pins::HOLD_CURSOR);
        } else if is(0, "SET") || is(0, "RESET") {
            settings::set_or_reset(text, head, top, effects, &mut clears);
        } else if is(0, "LOAD") {
            effects.creates.insert(Pins::PERMANENT);
        } else if is(0, "DISCARD") && is(1, "ALL") {
            clears.insert(Pins::ALL);
            if top {
                effects.settings.get_or_insert_default().all = true;
            }
        } else if is(0, "DISCARD") && (is(1, "TEMP") || is(1, "TEMPORARY")) {
            clears.insert(Pins::TEMP_OBJECT);
        } else if self.unlock_all && self.only_unlock_all(text) {
            clears.insert(Pins::ADVISORY_LOCK);
        }
        if top {
            effects.clears.insert(clears);
        }
    }

    /// `SELECT [pg_catalog.]pg_advisory_unlock_all()`, alone: it surely runs.
    fn only_unlock_all(&self, text: &[u8]) -> bool {
        let head = &self.head;
        let qualified = head.get(1).names(text, "pg_catalog") && head.get(2).kind == Kind::Dot;
        let at = if qualified { 3 } else { 1 };
        head.get(0).is(text, "SELECT")
            && head.get(at).names(text, "pg_advisory_unlock_all")
            && head.get(at + 1).kind == Kind::Open
            && head.get(at + 2).kind == Kind::Close
            && head.len() == at + 3
    }
}

/// A prepared statement's name that may be pgherd's: `pgherd_...` as PostgreSQL folds it, unless it ends in a
/// space, as the names clients' own `pgherd_` statements are renamed to do (pgherd's never do). A name with
/// Unicode escapes counts too, since pgherd does not decode them.
fn reserved_name(text: &[u8], token: Token) -> bool {
    let renamed = matches!(token.ident(text), Some((name, true)) if name.ends_with(b" "));
    token.kind == Kind::UnicodeQuoted
        || (token.ident_starts_with(text, RESERVED_PREFIX) && !renamed)
}

/// A statement names `token` as a prepared statement: a `pgherd_` name in the SQL itself is renamed into the
/// client's own namespace (`Effects::renames`); one pgherd cannot rewrite (in a DO body or an EXECUTE string,
/// or spelled with Unicode escapes) makes the SQL fail instead (`Effects::reserved`).
fn reserve(text: &[u8], token: Token, level: u8, effects: &mut super::Effects) {
    if !reserved_name(text, token) {
        return;
    }
    match token.kind {
        Kind::Word | Kind::Quoted if level == 0 => effects.renames.push(token.span()),
        _ => effects.reserved = true,
    }
}

#[cfg(test)]
mod tests {
    use crate::session::pinning::testing::creates;
    use crate::session::pinning::{scan, Pins};

    /// Refused, or renamed into the client's own namespace.
    fn reserved(sql: &str) -> bool {
        let effects = scan(sql.as_bytes());
        effects.reserved || !effects.renames.is_empty()
    }

    #[test]
    fn plain_statements_create_nothing() {
        for sql in [
            "SELECT 1",
            "select * from t where x = 'LISTEN'",
            "BEGIN; UPDATE t SET a = 1; COMMIT",
            "SET LOCAL statement_timeout = 5",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "PREPARE TRANSACTION 'x'",
            "CREATE TEMP TABLE t (a int) ON COMMIT DROP",
            "SELECT pg_advisory_xact_lock(1)",
            "-- LISTEN x\nSELECT 1",
            "/* PREPARE p AS SELECT 1 */ SELECT 2",
            "SELECT $$ LISTEN x; $$",
            "SELECT $tag$ ; LISTEN x $tag$",
            "INSERT INTO \"LISTEN\" VALUES (1)",
            "",
        ] {
            assert_eq!(creates(sql), Pins::default(), "{sql}");
        }
    }

    #[test]
    fn session_state_is_found() {
        let cases = [
            ("LISTEN channel", Pins::LISTEN),
            ("listen channel", Pins::LISTEN),
            ("SELECT 1; LISTEN x", Pins::LISTEN),
            ("PREPARE p (int) AS SELECT $1", Pins::PREPARED),
            ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", Pins::HOLD_CURSOR),
            ("CREATE TEMP TABLE t (a int)", Pins::TEMP_OBJECT),
            ("create local temporary table t (a int)", Pins::TEMP_OBJECT),
            ("CREATE TABLE pg_temp.t (a int)", Pins::TEMP_OBJECT),
            ("SELECT pg_advisory_lock(42)", Pins::ADVISORY_LOCK),
            ("SELECT pg_try_advisory_lock (1, 2)", Pins::ADVISORY_LOCK),
            ("SET ROLE admin", Pins::ROLE),
            ("SET SESSION AUTHORIZATION bob", Pins::SETTING),
            ("SET \"quoted\".name = 1", Pins::SETTING),
            ("SELECT set_config(name, 'c', false) FROM t", Pins::SETTING),
            ("LOAD 'auto_explain'", Pins::PERMANENT),
        ];
        for (sql, pin) in cases {
            assert_eq!(creates(sql), pin, "{sql}");
        }
    }

    #[test]
    fn clearing_statements() {
        assert_eq!(scan(b"DISCARD ALL").clears, Pins::ALL);
        assert_eq!(scan(b"UNLISTEN *").clears, Pins::LISTEN);
        assert_eq!(scan(b"UNLISTEN ch").clears, Pins::default());
        assert_eq!(scan(b"DEALLOCATE ALL").clears, Pins::PREPARED);
        assert_eq!(scan(b"CLOSE ALL").clears, Pins::HOLD_CURSOR);
        assert_eq!(scan(b"DISCARD TEMP").clears, Pins::TEMP_OBJECT);
        assert_eq!(
            scan(b"SELECT pg_advisory_unlock_all()").clears,
            Pins::ADVISORY_LOCK
        );
        assert_eq!(scan(b"RESET ROLE").clears, Pins::ROLE);
        assert_eq!(scan(b"SET ROLE NONE").clears, Pins::ROLE);
        assert_eq!(scan(b"RESET role").clears, Pins::ROLE);
        // RESET ALL leaves the role and the session authorization (which unnamed settings may be).
        assert_eq!(scan(b"RESET ALL").clears, Pins::default());
        assert_eq!(scan(b"RESET SESSION AUTHORIZATION").clears, Pins::default());
    }

    #[test]
    fn function_calls_are_found_however_written() {
        for sql in [
            "SELECT pg_advisory_lock/**/(1)",
            "SELECT pg_advisory_lock\x0b(1)",
            "SELECT pg_advisory_lock -- c\n (1)",
            "SELECT \"pg_advisory_lock\"(1)",
            "SELECT pg_catalog.\"pg_advisory_lock\"(1)",
            "SELECT PG_ADVISORY_LOCK(1)",
        ] {
            assert_eq!(creates(sql), Pins::ADVISORY_LOCK, "{sql}");
        }
        // Quoted names keep their case: this is another function.
        assert_eq!(creates("SELECT \"PG_ADVISORY_LOCK\"(1)"), Pins::default());
        // Names spelled with Unicode escapes are not read.
        assert_eq!(
            creates("SELECT U&\"\\0070g_advisory_lock\"(1)"),
            Pins::SETTING
        );
        assert_eq!(
            creates("SELECT U&\"!0070g_advisory_lock\" UESCAPE '!' (1)"),
            Pins::SETTING
        );
    }

    #[test]
    fn temporary_objects_in_other_forms() {
        for sql in [
            "CREATE OR REPLACE TEMP VIEW v AS SELECT 1",
            "CREATE OR REPLACE TEMPORARY VIEW v AS SELECT 1",
            "SELECT * INTO TEMP t FROM x",
            "SELECT * INTO TEMPORARY TABLE t FROM x",
            "SELECT * INTO LOCAL TEMP t FROM x",
            "SELECT 1 INTO pg_temp.t",
            "SELECT 1 INTO \"pg_temp\".t",
            "CREATE TABLE \"pg_temp\".t (a int)",
            "EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1",
        ] {
            assert_eq!(creates(sql), Pins::TEMP_OBJECT, "{sql}");
        }
        assert_eq!(creates("INSERT INTO temp VALUES (1)"), Pins::default());
    }

    #[test]
    fn advisory_unlock_clears_only_when_it_surely_runs() {
        for sql in [
            "SELECT pg_advisory_unlock_all()",
            "select PG_CATALOG.pg_advisory_unlock_all ( ) ;",
        ] {
            assert_eq!(scan(sql.as_bytes()).clears, Pins::ADVISORY_LOCK, "{sql}");
        }
        for sql in [
            "SELECT pg_advisory_unlock_all() WHERE false",
            "SELECT CASE WHEN false THEN pg_advisory_unlock_all() END",
            "DO $$ BEGIN PERFORM pg_advisory_unlock_all(); END $$",
        ] {
            assert_eq!(scan(sql.as_bytes()).clears, Pins::default(), "{sql}");
        }
    }

    /// Bug 5: pgherd's own prepared statements are out of the client's reach.
    #[test]
    fn reserved_names() {
        for sql in [
            "PREPARE pgherd_0123456789abcdef0123456789abcdef AS SELECT 1",
            "PREPARE PGHERD_x (int) AS SELECT $1",
            "EXECUTE pgherd_x",
            "execute Pgherd_x(1, 2)",
            "EXECUTE \"pgherd_x\"",
            "EXECUTE/**/pgherd_x",
            "DEALLOCATE pgherd_x",
            "DEALLOCATE PREPARE pgherd_x",
            "EXPLAIN EXECUTE pgherd_x",
            "EXPLAIN ANALYZE VERBOSE EXECUTE pgherd_x",
            "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE pgherd_x",
            "CREATE TABLE t AS EXECUTE pgherd_x",
            "CREATE TEMP TABLE IF NOT EXISTS t AS EXECUTE pgherd_x (1)",
            "SELECT 1; EXECUTE pgherd_x",
            "EXECUTE U&\"\\0070gherd_x\"",
            "DO $$ BEGIN PREPARE pgherd_x AS SELECT 1; END $$",
            "DO $$ BEGIN EXECUTE 'EXECUTE pgherd_x'; END $$",
            "DO $$ BEGIN EXECUTE 'DEALLOCATE pgherd_x'; END $$",
            "DO $$ BEGIN EXPLAIN EXECUTE pgherd_x; END $$",
        ] {
            assert!(reserved(sql), "{sql}");
        }
        for sql in [
            "PREPARE p AS SELECT 1",
            "EXECUTE pgherd",
            "EXECUTE \"PGHERD_x\"",
            "EXECUTE \"pgherd\"\"_x\"",
            "SELECT 'EXECUTE pgherd_x'",
            "SELECT pgherd_x FROM t",
            "PREPARE TRANSACTION 'pgherd_x'",
            "DEALLOCATE ALL",
            // In PL/pgSQL, EXECUTE runs the SQL in a variable.
            "DO $$ BEGIN EXECUTE pgherd_x; END $$",
        ] {
            assert!(!reserved(sql), "{sql}");
        }
        // Names in the SQL itself are renamed; where pgherd cannot rewrite them, the SQL is refused.
        assert_eq!(
            scan(b"DEALLOCATE PGHERD_X; EXECUTE \"pgherd_y\"").renames,
            [11..19, 29..39]
        );
        assert!(!scan(b"DEALLOCATE pgherd_x").reserved);
        assert!(scan(b"DO $$ BEGIN EXECUTE 'DEALLOCATE pgherd_x'; END $$").reserved);
        assert!(scan(b"EXECUTE U&\"\\0070gherd_x\"").reserved);
        assert!(
            !reserved("DEALLOCATE \"pgherd_x \""),
            "a renamed name is the client's"
        );
        let renamed = crate::session::pinning::renamed(
            b'Q',
            b"DEALLOCATE PGHERD_X; EXECUTE \"pgherd_\"\"y\"\0",
            &scan(b"DEALLOCATE PGHERD_X; EXECUTE \"pgherd_\"\"y\"").renames,
        );
        assert_eq!(
            renamed.as_deref(),
            Some(&b"DEALLOCATE \"pgherd_x \"; EXECUTE \"pgherd_\"\"y \"\0"[..])
        );
        assert_eq!(creates("PREPARE pgherd_x AS SELECT 1"), Pins::PREPARED);
        assert_eq!(
            creates("CREATE TEMP TABLE t AS EXECUTE pgherd_x"),
            Pins::TEMP_OBJECT
        );
    }
}
