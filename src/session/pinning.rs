//! Session state that cannot move between servers, found by a cheap lexical scan of the SQL a client sends (not
//! a parser). A client that creates such state keeps its server ("pinned") until the state is gone, then returns
//! to pooling. A missed detection breaks a user and a false one only costs a pooled server, so every doubt pins.

use std::fmt;

/// Kinds of session state, as bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pins(u16);

impl Pins {
    pub const LISTEN: Pins = Pins(1);
    pub const PREPARED: Pins = Pins(1 << 1);
    pub const HOLD_CURSOR: Pins = Pins(1 << 2);
    pub const TEMP_OBJECT: Pins = Pins(1 << 3);
    pub const ADVISORY_LOCK: Pins = Pins(1 << 4);
    /// SET ROLE, SET SESSION AUTHORIZATION and settings pgherd cannot name (set_config, quoted names).
    pub const SETTING: Pins = Pins(1 << 5);
    /// LOAD, and SQL too long to scan: nothing but the end of the session undoes them.
    pub const PERMANENT: Pins = Pins(1 << 6);
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
            (Pins::SETTING, "role or unnamed setting"),
            (Pins::PERMANENT, "LOAD or unscannable SQL"),
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
}

/// Settings named by SET and RESET (lower case), and whether all of them were reset (RESET ALL, DISCARD ALL).
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

impl Effects {
    fn changes(&mut self) -> &mut SettingChanges {
        self.settings.get_or_insert_default()
    }
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
/// no UTF-8 check (every keyword is ASCII), allocating only for SET and RESET: it runs on every Query and Parse.
pub fn scan(sql: &[u8]) -> Effects {
    let mut effects = Effects::default();
    let mut statement = Statement::default();
    for token in Tokens::new(sql) {
        match token {
            Token::Semicolon => std::mem::take(&mut statement).finish(sql, &mut effects),
            Token::Word { text, called } => statement.word(text, called, &mut effects),
        }
    }
    statement.finish(sql, &mut effects);
    effects
}

/// What the scan remembers of the statement it is in: its first words, the last few, and a few phrases.
#[derive(Default)]
struct Statement<'a> {
    first: [&'a [u8]; 3],
    recent: [&'a [u8]; 3],
    words: usize,
    with_hold: bool,
    on_commit_drop: bool,
    in_pg_temp: bool,
}

impl<'a> Statement<'a> {
    fn word(&mut self, text: &'a [u8], called: bool, effects: &mut Effects) {
        if let Some(slot) = self.first.get_mut(self.words) {
            *slot = text;
        }
        self.words += 1;
        self.recent = [self.recent[1], self.recent[2], text];
        let is = |w: &[u8], k: &str| w.eq_ignore_ascii_case(k.as_bytes());
        self.with_hold |= is(self.recent[1], "WITH") && is(text, "HOLD");
        self.on_commit_drop |=
            is(self.recent[0], "ON") && is(self.recent[1], "COMMIT") && is(text, "DROP");
        self.in_pg_temp |= text.len() >= 7 && is(&text[..7], "pg_temp");
        if called {
            if [
                "pg_advisory_lock",
                "pg_advisory_lock_shared",
                "pg_try_advisory_lock",
                "pg_try_advisory_lock_shared",
            ]
            .iter()
            .any(|f| is(text, f))
            {
                effects.creates.insert(Pins::ADVISORY_LOCK);
            } else if is(text, "pg_advisory_unlock_all") {
                effects.clears.insert(Pins::ADVISORY_LOCK);
            } else if is(text, "set_config") {
                // set_config(name, value, false) is a SET; telling `false` from `true` needs a parser.
                effects.creates.insert(Pins::SETTING);
            }
        }
    }

    /// Classifies the statement by its first words once it has ended; `sql` is the text they are slices of.
    fn finish(self, sql: &[u8], effects: &mut Effects) {
        let is = |i: usize, keyword: &str| self.first[i].eq_ignore_ascii_case(keyword.as_bytes());
        let temp_at = if is(1, "GLOBAL") || is(1, "LOCAL") {
            2
        } else {
            1
        };
        let temporary = is(temp_at, "TEMP") || is(temp_at, "TEMPORARY") || self.in_pg_temp;
        if is(0, "LISTEN") {
            effects.creates.insert(Pins::LISTEN);
        } else if is(0, "UNLISTEN") && is(1, "*") {
            effects.clears.insert(Pins::LISTEN);
        } else if is(0, "PREPARE") && !is(1, "TRANSACTION") {
            effects.creates.insert(Pins::PREPARED);
        } else if is(0, "DEALLOCATE") && (is(1, "ALL") || (is(1, "PREPARE") && is(2, "ALL"))) {
            effects.clears.insert(Pins::PREPARED);
        } else if is(0, "DECLARE") && self.with_hold {
            effects.creates.insert(Pins::HOLD_CURSOR);
        } else if is(0, "CLOSE") && is(1, "ALL") {
            effects.clears.insert(Pins::HOLD_CURSOR);
        } else if is(0, "CREATE") && temporary && !self.on_commit_drop {
            effects.creates.insert(Pins::TEMP_OBJECT);
        } else if is(0, "SET") || is(0, "RESET") {
            self.setting(sql, effects);
        } else if is(0, "LOAD") {
            effects.creates.insert(Pins::PERMANENT);
        } else if is(0, "DISCARD") && is(1, "ALL") {
            effects.clears.insert(Pins::ALL);
            effects.changes().all = true;
        } else if is(0, "DISCARD") && (is(1, "TEMP") || is(1, "TEMPORARY")) {
            effects.clears.insert(Pins::TEMP_OBJECT);
        }
    }
}

impl Statement<'_> {
    /// SET and RESET: which setting, in the forms a client session uses.
    fn setting(&self, sql: &[u8], effects: &mut Effects) {
        let is = |i: usize, keyword: &str| self.first[i].eq_ignore_ascii_case(keyword.as_bytes());
        let reset = is(0, "RESET");
        let at = if !reset && is(1, "SESSION") { 2 } else { 1 };
        let name = if is(at, "LOCAL") || is(at, "TRANSACTION") || is(at, "CONSTRAINTS") {
            // Undone at the end of the transaction by PostgreSQL itself.
            return;
        } else if reset && is(1, "ALL") {
            effects.clears.insert(Pins::SETTING);
            effects.changes().all = true;
            return;
        } else if is(at, "ROLE") || is(at, "AUTHORIZATION") || is(at, "CHARACTERISTICS") {
            // Privileges and transaction defaults: kept on the client's own server, not replayed.
            if reset {
                effects.clears.insert(Pins::SETTING);
            } else {
                effects.creates.insert(Pins::SETTING);
            }
            return;
        } else if is(at, "TIME") && is(at + 1, "ZONE") {
            "timezone".to_owned()
        } else if is(at, "NAMES") {
            "client_encoding".to_owned()
        } else if is(at, "SCHEMA") {
            "search_path".to_owned()
        } else if is(at, "XML") && is(at + 1, "OPTION") {
            "xmloption".to_owned()
        } else {
            match dotted_name(sql, self.first[at]) {
                // ASCII by construction: letters, digits, `_`, `$` and `.`.
                Some(name) => String::from_utf8_lossy(name).to_ascii_lowercase(),
                None => {
                    effects.creates.insert(Pins::SETTING);
                    return;
                }
            }
        };
        effects.changes().names.push(name);
    }
}

/// The setting name that starts at `word` (a slice of `sql`): the word and any `.part` after it. `None` when the
/// name is quoted or missing, which the word scan cannot see.
fn dotted_name<'a>(sql: &'a [u8], word: &'a [u8]) -> Option<&'a [u8]> {
    if word.is_empty() {
        return None;
    }
    let start = word.as_ptr() as usize - sql.as_ptr() as usize;
    if matches!(sql[..start].trim_ascii_end().last(), Some(b'"' | b'.')) {
        return None;
    }
    let len = sql[start..]
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'$' | b'.')))
        .unwrap_or(sql.len() - start);
    let name = &sql[start..start + len];
    let quoted_part = sql[start + len..].starts_with(b"\"");
    (!quoted_part && !name.ends_with(b".")).then_some(name)
}

enum Token<'a> {
    /// A word outside quotes and comments (`*` counts as one); `called` when a `(` follows it.
    Word { text: &'a [u8], called: bool },
    /// A statement separator.
    Semicolon,
}

/// Words and semicolons of SQL text, skipping quoted literals and identifiers, comments and dollar quotes.
struct Tokens<'a> {
    sql: &'a [u8],
    pos: usize,
}

impl<'a> Tokens<'a> {
    fn new(sql: &'a [u8]) -> Self {
        Tokens { sql, pos: 0 }
    }

    fn skip_until(&mut self, end: &[u8]) {
        match self.sql[self.pos..]
            .windows(end.len())
            .position(|w| w == end)
        {
            Some(at) => self.pos += at + end.len(),
            None => self.pos = self.sql.len(),
        }
    }

    /// Skips a quoted literal or identifier; a doubled quote inside it is part of it.
    fn skip_quoted(&mut self, quote: u8) {
        self.pos += 1;
        while self.pos < self.sql.len() {
            if self.sql[self.pos] == quote {
                if self.sql.get(self.pos + 1) == Some(&quote) {
                    self.pos += 2;
                    continue;
                }
                self.pos += 1;
                return;
            }
            // Backslash escapes in E'' strings: skipping the next byte too is right for them and harmless
            // elsewhere, since it can only make a literal end later.
            self.pos += if self.sql[self.pos] == b'\\' && quote == b'\'' {
                2
            } else {
                1
            };
        }
    }

    /// At a `$`: the length of a dollar-quote tag `$tag$` that opens a literal ending at the same tag.
    fn dollar_tag(&self) -> Option<usize> {
        let rest = &self.sql[self.pos + 1..];
        let len = rest
            .iter()
            .position(|&b| !(b.is_ascii_alphanumeric() || b == b'_'))?;
        (rest[len] == b'$' && !rest.first().is_some_and(u8::is_ascii_digit)).then_some(len + 2)
    }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        while self.pos < self.sql.len() {
            let b = self.sql[self.pos];
            match b {
                b';' => {
                    self.pos += 1;
                    return Some(Token::Semicolon);
                }
                b'-' if self.sql.get(self.pos + 1) == Some(&b'-') => self.skip_until(b"\n"),
                b'/' if self.sql.get(self.pos + 1) == Some(&b'*') => {
                    self.pos += 2;
                    self.skip_until(b"*/");
                }
                b'\'' | b'"' => self.skip_quoted(b),
                b'$' => match self.dollar_tag() {
                    Some(len) => {
                        let tag = &self.sql[self.pos..self.pos + len];
                        self.pos += len;
                        self.skip_until(tag);
                    }
                    None => self.pos += 1,
                },
                b'*' => {
                    self.pos += 1;
                    return Some(Token::Word {
                        text: b"*",
                        called: false,
                    });
                }
                b if b.is_ascii_alphabetic() || b == b'_' => {
                    let start = self.pos;
                    while self.pos < self.sql.len()
                        && (self.sql[self.pos].is_ascii_alphanumeric()
                            || matches!(self.sql[self.pos], b'_' | b'$'))
                    {
                        self.pos += 1;
                    }
                    let text = &self.sql[start..self.pos];
                    let called = self.sql[self.pos..]
                        .iter()
                        .find(|b| !b.is_ascii_whitespace())
                        == Some(&b'(');
                    return Some(Token::Word { text, called });
                }
                _ => self.pos += 1,
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creates(sql: &str) -> Pins {
        scan(sql.as_bytes()).creates
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
            ("SET ROLE admin", Pins::SETTING),
            ("SET SESSION AUTHORIZATION bob", Pins::SETTING),
            ("SET \"quoted\".name = 1", Pins::SETTING),
            ("SELECT set_config('a.b', 'c', false)", Pins::SETTING),
            ("LOAD 'auto_explain'", Pins::PERMANENT),
        ];
        for (sql, pin) in cases {
            assert_eq!(creates(sql), pin, "{sql}");
        }
    }

    #[test]
    fn settings_are_named_for_replay() {
        let changed = |sql: &str| scan(sql.as_bytes()).settings.map(|c| (c.names, c.all));
        let names = |n: &[&str]| Some((n.iter().map(|s| s.to_string()).collect(), false));
        assert_eq!(
            changed("SET search_path = app, public"),
            names(&["search_path"])
        );
        assert_eq!(
            changed("set Session TimeZone to 'UTC'"),
            names(&["timezone"])
        );
        assert_eq!(changed("SET TIME ZONE 'UTC'"), names(&["timezone"]));
        assert_eq!(changed("SET NAMES 'LATIN1'"), names(&["client_encoding"]));
        assert_eq!(
            changed("SET myapp.tenant_id = '7'"),
            names(&["myapp.tenant_id"])
        );
        assert_eq!(
            changed("SET a.b = 1; SELECT 1; RESET DateStyle"),
            names(&["a.b", "datestyle"])
        );
        assert_eq!(changed("RESET ALL").map(|c| c.1), Some(true));
        assert_eq!(changed("DISCARD ALL").map(|c| c.1), Some(true));
        for sql in [
            "SET LOCAL statement_timeout = 5",
            "SET TRANSACTION READ ONLY",
            "SET CONSTRAINTS ALL DEFERRED",
            "UPDATE t SET a = 1",
            "SET ROLE admin",
        ] {
            assert_eq!(changed(sql), None, "{sql}");
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
        assert_eq!(scan(b"RESET ALL").clears, Pins::SETTING);
    }

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
    fn quotes_and_comments_do_not_hide_or_invent_statements() {
        assert_eq!(creates("SELECT 'it''s; LISTEN x'"), Pins::default());
        assert_eq!(creates("SELECT E'\\'; LISTEN x'"), Pins::default());
        assert_eq!(creates("SELECT 'a'; LISTEN x"), Pins::LISTEN);
        assert_eq!(creates("/* unterminated LISTEN"), Pins::default());
        assert_eq!(creates("SELECT 1 -- ; LISTEN x"), Pins::default());
        assert_eq!(creates("SELECT $1; LISTEN x"), Pins::LISTEN);
    }
}
