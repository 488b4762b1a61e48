//! Session state that cannot move between servers, found by a cheap lexical scan of the SQL a client sends (not
//! a parser). A client that creates such state keeps its server ("pinned") until the state is gone, then returns
//! to pooling. A missed detection breaks a user and a false one only costs a pooled server, so every doubt pins.
//!
//! The bytes come from clients and may be anything: the scan lexes them as PostgreSQL does (quoted strings and
//! identifiers, nested comments, dollar quotes, strings continued on a new line), so that no quote or comment can
//! hide a statement from it. The body of a DO block is scanned as PL/pgSQL and the string literals its EXECUTE
//! runs as SQL; the bodies of functions and procedures are not, since they run later.
//!
//! This module holds what the rest of pgherd sees ([`Pins`], [`Effects`], [`message_effects`], [`scan`]) and
//! the scan's driver, which feeds the tokens of a text to its statements and scans the texts nested in string
//! literals. The parts: `lexer` cuts text into tokens and `literal` reads string literals (where one ends, and
//! its value); `statement` classifies each statement by its words, with `settings` for SET and RESET,
//! `set_config` for the calls of that function and `plpgsql` for DO blocks and the SQL their EXECUTE runs.

mod lexer;
mod literal;
mod plpgsql;
#[cfg(test)]
mod props;
mod set_config;
mod settings;
mod statement;

use std::fmt;

use lexer::{Token, Tokens};
use literal::{literal_value, Strings};
use statement::Statement;

/// Kinds of session state, as bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pins(u16);

impl Pins {
    pub const LISTEN: Pins = Pins(1);
    pub const PREPARED: Pins = Pins(1 << 1);
    pub const HOLD_CURSOR: Pins = Pins(1 << 2);
    pub const TEMP_OBJECT: Pins = Pins(1 << 3);
    pub const ADVISORY_LOCK: Pins = Pins(1 << 4);
    /// SET SESSION AUTHORIZATION and SESSION CHARACTERISTICS, settings pgherd cannot name (quoted names,
    /// set_config it cannot read) and SQL it cannot read (dynamic SQL in a DO block, a DO block in another
    /// language). Only DISCARD ALL clears it: RESET ALL leaves the session authorization (and the role, which an
    /// unnamed setting may be) as they are.
    pub const SETTING: Pins = Pins(1 << 5);
    /// LOAD, and SQL too long to scan: nothing but the end of the session undoes them.
    pub const PERMANENT: Pins = Pins(1 << 6);
    /// SET ROLE: RESET ROLE and SET ROLE NONE clear it, RESET ALL does not.
    pub const ROLE: Pins = Pins(1 << 7);
    pub const ALL: Pins = Pins(u16::MAX);

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn contains(self, other: Pins) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn insert(&mut self, other: Pins) {
        self.0 |= other.0;
    }

    /// Clears `other`, except what only the end of the session clears.
    pub fn remove(&mut self, other: Pins) {
        self.0 &= !(other.0 & !Pins::PERMANENT.0);
    }
}

impl fmt::Display for Pins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (Pins::LISTEN, "LISTEN"),
            (Pins::PREPARED, "prepared statement"),
            (Pins::HOLD_CURSOR, "WITH HOLD cursor"),
            (Pins::TEMP_OBJECT, "temporary object"),
            (Pins::ADVISORY_LOCK, "session advisory lock"),
            (
                Pins::SETTING,
                "session authorization, unnamed setting or unreadable SQL",
            ),
            (Pins::PERMANENT, "LOAD or unscannable SQL"),
            (Pins::ROLE, "role"),
        ];
        let mut first = true;
        for (pin, name) in names {
            if self.0 & pin.0 != 0 {
                f.write_str(if first { "" } else { ", " })?;
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

/// What one piece of SQL does to session state: what it may create and what it clears, and the settings it
/// may change, which pgherd carries to the client's next servers instead of pinning it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effects {
    pub creates: Pins,
    pub clears: Pins,
    /// Boxed: most SQL changes no setting.
    pub settings: Option<Box<SettingChanges>>,
    /// The SQL names a prepared statement `pgherd_...` (PREPARE, EXECUTE, DEALLOCATE, EXPLAIN EXECUTE, CREATE
    /// TABLE AS EXECUTE), as PostgreSQL folds the name, where pgherd cannot rename it (see `renames`): the SQL
    /// must fail, since pgherd's own statements have such names and no client may reach them.
    pub reserved: bool,
    /// Where the SQL itself names a prepared statement `pgherd_...`: each is renamed (see [`renamed`]) to
    /// `"name "`, which no statement of pgherd's is called, so the client's own statements of such names live
    /// in a namespace of their own, as on PostgreSQL. Empty, and unallocated, for nearly all SQL.
    pub renames: Vec<std::ops::Range<usize>>,
}

/// Settings named by SET, RESET and set_config (lower case), and whether all of them were reset (RESET ALL,
/// DISCARD ALL).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SettingChanges {
    pub names: Vec<String>,
    pub all: bool,
}

impl SettingChanges {
    pub fn merge(&mut self, other: SettingChanges) {
        for name in other.names {
            if !self.names.contains(&name) {
                self.names.push(name);
            }
        }
        self.all |= other.all;
    }
}

/// How deep DO bodies and the strings their EXECUTE runs are scanned: deeper pins.
const MAX_LEVEL: u8 = 4;
/// Distinct settings one piece of SQL may name; more pin. Each name costs a lookup at the transaction's end,
/// and it is at least the default `max_client_settings`, so a client that sets a thousand custom settings in
/// one batch still has them carried to its next servers.
const MAX_NAMES: usize = 2048;

impl Effects {
    /// A setting changed by `name` (lower case), which the pooler reads back and replays.
    fn named(&mut self, name: String) {
        let changes = self.settings.get_or_insert_default();
        if changes.names.contains(&name) {
            return;
        }
        if changes.names.len() >= MAX_NAMES {
            self.creates.insert(Pins::SETTING);
            return;
        }
        changes.names.push(name);
    }

    /// Combines the effects of the two readings of the same SQL, when pgherd cannot know which one PostgreSQL
    /// takes: all that either creates, names or reserves, and only what both clear.
    fn either(&mut self, other: Effects) {
        self.creates.insert(other.creates);
        self.clears.0 &= other.clears.0;
        self.reserved |= other.reserved;
        if self.renames != other.renames {
            // The readings disagree on where the names are: not rewritten, refused.
            self.reserved = true;
            self.renames.clear();
        }
        if let Some(changes) = other.settings {
            self.settings.get_or_insert_default().merge(*changes);
        }
    }
}

/// The body of Query or Parse message `tag` with the `pgherd_` statement names at `renames` (offsets in its
/// SQL, ascending, from [`message_effects`]) written as `"name "`; `None` when they are not where they should
/// be.
pub fn renamed(tag: u8, body: &[u8], renames: &[std::ops::Range<usize>]) -> Option<Vec<u8>> {
    let sql_at = match tag {
        b'Q' => 0,
        b'P' => body.iter().position(|&b| b == 0)? + 1,
        _ => return None,
    };
    let mut out = Vec::with_capacity(body.len() + 4 * renames.len());
    let mut at = 0;
    for range in renames {
        let (start, end) = (
            sql_at.checked_add(range.start)?,
            sql_at.checked_add(range.end)?,
        );
        out.extend_from_slice(body.get(at..start)?);
        let token = body.get(start..end)?;
        // Folded as PostgreSQL folds it: an unquoted name to lower case, a quoted one as written.
        let name: Vec<u8> = match token
            .strip_prefix(b"\"")
            .and_then(|t| t.strip_suffix(b"\""))
        {
            Some(quoted) => quoted.to_vec(),
            None => token.to_ascii_lowercase(),
        };
        out.push(b'"');
        out.extend_from_slice(&name);
        out.extend_from_slice(b" \"");
        at = end;
    }
    out.extend_from_slice(body.get(at..)?);
    Some(out)
}

/// What a client message does to session state: the SQL in a Query or Parse (protocol-level prepared
/// statements themselves move between servers, see `statements`). SQL too long to have been read whole
/// (`body` is `None`) cannot be scanned, which pins for good.
pub fn message_effects(tag: u8, body: Option<&[u8]>) -> Effects {
    let mut fields = body.map(|b| b.split(|&c| c == 0));
    let mut next = || fields.as_mut().and_then(Iterator::next);
    let sql = match tag {
        b'Q' => next(),
        b'P' => next().and_then(|_name| next()),
        _ => return Effects::default(),
    };
    let Some(sql) = sql else {
        return Effects {
            creates: Pins::PERMANENT,
            ..Effects::default()
        };
    };
    scan(sql)
}

/// Scans SQL text (one or more statements) for session state it creates or clears. One pass over the bytes, with
/// no UTF-8 check (every keyword is ASCII), allocating only for settings, DO blocks and the strings they run: it
/// runs on every Query and Parse.
pub fn scan(sql: &[u8]) -> Effects {
    let mut effects = Effects::default();
    if u32::try_from(sql.len()).is_err() {
        effects.creates = Pins::PERMANENT;
        return effects;
    }
    if !Scan::run(sql, Strings::Standard, &mut effects) {
        return effects;
    }
    // A plain string held a backslash, which escapes a quote when the client turned standard_conforming_strings
    // off: then the string may end elsewhere. pgherd cannot know the setting, so both readings count.
    let mut escaping = Effects::default();
    Scan::run(sql, Strings::Escaping, &mut escaping);
    effects.either(escaping);
    effects
}

/// What a text is: SQL statements separated by `;`, or a PL/pgSQL block, where statements also start after
/// the keywords that open a block, a branch or a loop, and EXECUTE runs dynamic SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Sql,
    PlPgSql,
}

/// One scan of SQL and of the texts nested in it.
struct Scan<'e> {
    effects: &'e mut Effects,
    strings: Strings,
    /// A plain string held a backslash: the other reading of strings may see other statements.
    backslash: bool,
}

impl Scan<'_> {
    /// Scans `sql` into `effects`; true when a plain string held a backslash.
    fn run(sql: &[u8], strings: Strings, effects: &mut Effects) -> bool {
        let mut scan = Scan {
            effects,
            strings,
            backslash: false,
        };
        scan.text(sql, Mode::Sql, 0);
        scan.backslash
    }

    fn text(&mut self, text: &[u8], mode: Mode, level: u8) {
        let mut tokens = Tokens::new(text, self.strings);
        let mut statement = Statement::new(mode, level);
        for token in tokens.by_ref() {
            statement.token(text, token, self);
        }
        statement.end(text, self);
        self.backslash |= tokens.backslash;
    }

    /// Scans the value of the string literal `literal` (at `level`) as a text of its own; one too deep or that
    /// pgherd cannot read pins.
    fn nested(&mut self, text: &[u8], literal: Token, mode: Mode, level: u8) {
        if level >= MAX_LEVEL {
            return self.pin();
        }
        match literal_value(text, literal, self.strings) {
            Some(value) => self.text(&value, mode, level + 1),
            None => self.pin(),
        }
    }

    /// SQL whose effect on settings pgherd cannot read.
    fn pin(&mut self) {
        self.effects.creates.insert(Pins::SETTING);
    }
}

/// Shorthands for the tests of every part of the scan.
#[cfg(test)]
mod testing {
    use super::{scan, Pins};

    /// What `sql` creates.
    pub fn creates(sql: &str) -> Pins {
        scan(sql.as_bytes()).creates
    }

    /// The settings `sql` names, in order.
    pub fn named(sql: &str) -> Vec<String> {
        scan(sql.as_bytes())
            .settings
            .map(|c| c.names)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::creates;
    use super::*;

    #[test]
    fn protocol_messages() {
        assert_eq!(
            message_effects(b'Q', Some(b"LISTEN x\0")).creates,
            Pins::LISTEN
        );
        assert_eq!(
            message_effects(b'P', Some(b"\0SELECT 1\0\0\0")).creates,
            Pins::default()
        );
        assert_eq!(
            message_effects(b'P', Some(b"s1\0SELECT 1\0\0\0")).creates,
            Pins::default()
        );
        assert_eq!(message_effects(b'Q', None).creates, Pins::PERMANENT);
        assert_eq!(message_effects(b'B', None), Effects::default());
        assert_eq!(
            message_effects(b'Q', Some(b"RESET *")).creates,
            Pins::SETTING
        );
    }

    #[test]
    fn only_the_session_end_clears_permanent_pins() {
        let mut pins = Pins::default();
        pins.insert(Pins::PERMANENT);
        pins.insert(Pins::LISTEN);
        pins.remove(Pins::ALL);
        assert_eq!(pins, Pins::PERMANENT);
        assert_eq!(pins.to_string(), "LOAD or unscannable SQL");
    }

    #[test]
    fn backslashes_in_plain_strings_are_read_both_ways() {
        // standard_conforming_strings on (the default): the string ends at \'.
        assert_eq!(creates("SELECT 'a\\'; LISTEN x; --'"), Pins::LISTEN);
        // Off: it does not, and the LISTEN is after the next quote.
        assert_eq!(
            creates("SELECT 'a\\'; SELECT 1; ' ; LISTEN x"),
            Pins::LISTEN
        );
        // What only one reading clears is not cleared.
        assert_eq!(
            scan(b"SELECT 'a\\'; SELECT 1; ' ; UNLISTEN *").clears,
            Pins::default()
        );
        assert_eq!(
            scan(b"SELECT 'a\\b'; UNLISTEN *").clears,
            Pins::LISTEN,
            "both readings agree"
        );
    }

    /// Bug 6: input ending anywhere, in any construct.
    #[test]
    fn truncated_input_does_not_panic() {
        let sql = "DO $a$ BEGIN EXECUTE E'SET \\'x\\''; PERFORM set_config('a.b', U&'\\0041', \
                   false); END $a$; SELECT $$x$$, \"q\"\"\", B'1', X'2', $1, 1e'x' /* /* */ */ -- c\r\n\
                   ; PREPARE pgherd_x AS SELECT 'a\\'; EXPLAIN (ANALYZE) EXECUTE \"pgherd_x\"";
        for end in 0..=sql.len() {
            let _ = scan(&sql.as_bytes()[..end]);
        }
        for sql in [
            &b"$"[..],
            b"$$",
            b"$a",
            b"$a$",
            b"$$$",
            b"'",
            b"'\\",
            b"E'\\",
            b"E'",
            b"U&",
            b"U&'",
            b"U&\"",
            b"\"",
            b"/*",
            b"/*/",
            b"*/",
            b"--",
            b"B'",
            b"\0\xff\x80;",
            b"DO '",
            b"DO $$",
            b"DO $$ EXECUTE '",
            b"SET SESSION",
            b"set_config(",
            b"set_config((((",
            b"))))",
        ] {
            let _ = scan(sql);
            let _ = message_effects(b'Q', Some(sql));
            let _ = message_effects(b'P', Some(sql));
        }
    }
}
