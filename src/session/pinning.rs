//! Session state that cannot move between servers, found by a cheap lexical scan of the SQL a client sends (not
//! a parser). A client that creates such state keeps its server ("pinned") until the state is gone, then returns
//! to pooling. A missed detection breaks a user and a false one only costs a pooled server, so every doubt pins.
//!
//! The bytes come from clients and may be anything: the scan lexes them as PostgreSQL does (quoted strings and
//! identifiers, nested comments, dollar quotes, strings continued on a new line), so that no quote or comment can
//! hide a statement from it. The body of a DO block is scanned as PL/pgSQL and the string literals its EXECUTE
//! runs as SQL; the bodies of functions and procedures are not, since they run later.

use std::borrow::Cow;
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
    /// TABLE AS EXECUTE), as PostgreSQL folds the name: those are pgherd's own, which no client may reach.
    pub reserved: bool,
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

/// How pgherd's own prepared statements are named: a client's SQL must not reach them.
const RESERVED_PREFIX: &[u8] = b"pgherd_";
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
        if let Some(changes) = other.settings {
            self.settings.get_or_insert_default().merge(*changes);
        }
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

/// How plain '...' strings are read: standard_conforming_strings on (backslash is a character) or off (it
/// escapes, as in E'...').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strings {
    Standard,
    Escaping,
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

/// How many of a statement's first tokens are kept: enough for every form classified by its start.
const HEAD: usize = 8;

/// What the scan remembers of the statement it is in: its first tokens, the last few, and a few phrases.
struct Statement {
    mode: Mode,
    /// 0 for the client's SQL, 1 for the body of a DO block in it, and so on. Clears count only at 0: a DO
    /// block may not run the statements in it.
    level: u8,
    /// The first tokens, of EXPLAIN's statement when it is one.
    head: [Token; HEAD],
    /// Tokens in the statement (after EXPLAIN and its options).
    len: usize,
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
    /// set_config calls being read, the innermost last.
    calls: [Call; MAX_CALLS],
    open_calls: usize,
}

/// set_config calls nested in each other that the scan follows; deeper ones pin.
const MAX_CALLS: usize = 4;

#[derive(Debug, Clone, Copy)]
enum Dynamic {
    Idle,
    /// After EXECUTE: its string literal.
    Literal,
    /// After the literal: the end of the statement, INTO or USING (anything else builds the SQL).
    End(Token),
}

/// A set_config call (name, value, is_local) whose arguments are being read.
#[derive(Debug, Clone, Copy, Default)]
struct Call {
    /// Parentheses open outside the call.
    depth: usize,
    /// Index of the argument being read, and its tokens so far.
    arg: usize,
    len: usize,
    /// The name and is_local arguments, when each is a single token.
    name: Option<Token>,
    local: Option<Token>,
}

impl Call {
    fn take(&mut self, token: Token) {
        self.len += 1;
        let slot = match self.arg {
            0 => &mut self.name,
            2 => &mut self.local,
            _ => return,
        };
        *slot = (self.len == 1).then_some(token);
    }
}

impl Statement {
    fn new(mode: Mode, level: u8) -> Self {
        Statement {
            mode,
            level,
            head: [Token::default(); HEAD],
            len: 0,
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
            calls: [Call::default(); MAX_CALLS],
            open_calls: 0,
        }
    }

    /// The `i`th token of the statement, or an empty one.
    fn head(&self, i: usize) -> Token {
        if i < self.len {
            self.head.get(i).copied().unwrap_or_default()
        } else {
            Token::default()
        }
    }

    fn token(&mut self, text: &[u8], token: Token, scan: &mut Scan) {
        let is = |keyword: &str| token.is(text, keyword);
        if token.kind == Kind::Semicolon
            || (self.mode == Mode::PlPgSql
                && self.depth == 0
                && ["BEGIN", "THEN", "ELSE", "LOOP", "EXCEPTION", "DECLARE"]
                    .iter()
                    .any(|k| is(k)))
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
                    self.len = 0;
                }
            }
            if self.explain {
                return;
            }
        }
        match self.dynamic {
            Dynamic::Idle => {}
            Dynamic::Literal if matches!(token.kind, Kind::Str(_)) => {
                self.dynamic = Dynamic::End(token)
            }
            Dynamic::End(literal) if is("INTO") || is("USING") => {
                self.dynamic = Dynamic::Idle;
                scan.nested(text, literal, Mode::Sql, self.level);
            }
            Dynamic::Literal | Dynamic::End(_) => {
                // EXECUTE of a variable or an expression: SQL pgherd cannot read.
                self.dynamic = Dynamic::Idle;
                scan.pin();
            }
        }
        self.call_token(text, token, scan);
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
                self.pg_temp = true;
                self.into_temp |= last.is(text, "INTO");
            }
            Kind::UnicodeQuoted if token.text(text).contains(&b'\\') => {
                // A name spelled with escapes, maybe a function's: pgherd does not read them.
                scan.pin();
            }
            _ => {}
        }
        if after_as_execute && token.reserved_name(text) {
            scan.effects.reserved = true;
        }
        if let Some(slot) = self.head.get_mut(self.len) {
            *slot = token;
        }
        self.len += 1;
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
            Some(b'P') if token.ident_starts_with(text, b"pg_temp") => {
                self.pg_temp = true;
                self.into_temp |= last.is(text, "INTO");
            }
            Some(b'E') if is("EXECUTE") => {
                // The name after AS EXECUTE (CREATE TABLE AS EXECUTE) is a prepared statement's.
                self.as_execute = last.is(text, "AS");
                if self.mode == Mode::PlPgSql
                    && ((self.len == 0 && !self.explained)
                        || last.is(text, "IN")
                        || last.is(text, "FOR")
                        || last.is(text, "QUERY"))
                {
                    // PL/pgSQL's EXECUTE (a statement, FOR ... IN EXECUTE, OPEN ... FOR EXECUTE, RETURN QUERY
                    // EXECUTE).
                    self.dynamic = Dynamic::Literal;
                }
            }
            Some(b'E') if self.len == 0 && !self.explained && is("EXPLAIN") => self.explain = true,
            Some(b'U') if is("UESCAPE") && last.kind == Kind::UnicodeQuoted => scan.pin(),
            _ => {}
        }
    }

    /// A `(` after `function`: the calls that matter wherever they are.
    fn called(&mut self, text: &[u8], function: Token, scan: &mut Scan) {
        let Some((name, quoted)) = function.ident(text) else {
            return;
        };
        if !matches!(name.first(), Some(b'p' | b'P' | b's' | b'S')) {
            return;
        }
        let is = |function: &str| match quoted {
            false => name.eq_ignore_ascii_case(function.as_bytes()),
            true => name == function.as_bytes(),
        };
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
            match self.calls.get_mut(self.open_calls) {
                Some(call) => {
                    *call = Call {
                        depth: self.depth.saturating_sub(1),
                        ..Call::default()
                    };
                    self.open_calls += 1;
                }
                None => scan.pin(),
            }
        }
    }

    /// A token inside the innermost set_config call being read.
    fn call_token(&mut self, text: &[u8], token: Token, scan: &mut Scan) {
        let Some(i) = self.open_calls.checked_sub(1) else {
            return;
        };
        let depth = self.depth;
        let Some(call) = self.calls.get_mut(i) else {
            return;
        };
        if depth != call.depth + 1 {
            return call.take(token);
        }
        match token.kind {
            Kind::Comma => {
                call.arg += 1;
                call.len = 0;
            }
            Kind::Close => {
                let call = *call;
                self.open_calls = i;
                set_config(text, call, scan);
            }
            _ => call.take(token),
        }
    }

    /// Classifies the statement by its first tokens once it has ended, and starts the next.
    fn end(&mut self, text: &[u8], scan: &mut Scan) {
        match self.dynamic {
            Dynamic::Idle => {}
            Dynamic::Literal => scan.pin(),
            Dynamic::End(literal) => scan.nested(text, literal, Mode::Sql, self.level),
        }
        if self.open_calls > 0 {
            // A call cut short by the statement's end: unreadable.
            scan.pin();
        }
        if self.len > 0 {
            self.classify(text, scan);
        }
        *self = Statement::new(self.mode, self.level);
    }

    fn classify(&self, text: &[u8], scan: &mut Scan) {
        let is = |i: usize, keyword: &str| self.head(i).is(text, keyword);
        if is(0, "DO") {
            return self.do_block(text, scan);
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
        } else if is(0, "UNLISTEN") && self.head(1).is_char(text, b'*') {
            clears.insert(Pins::LISTEN);
        } else if is(0, "PREPARE") {
            if !(is(1, "TRANSACTION") && matches!(self.head(2).kind, Kind::Str(_))) {
                effects.creates.insert(Pins::PREPARED);
                effects.reserved |= self.head(1).reserved_name(text);
            }
        } else if is(0, "EXECUTE") && (self.mode == Mode::Sql || self.explained) {
            effects.reserved |= self.head(1).reserved_name(text);
        } else if is(0, "DEALLOCATE") {
            let name = self.head(if is(1, "PREPARE") { 2 } else { 1 });
            if name.is(text, "ALL") {
                clears.insert(Pins::PREPARED);
            } else {
                effects.reserved |= name.reserved_name(text);
            }
        } else if is(0, "DECLARE") && self.with_hold {
            effects.creates.insert(Pins::HOLD_CURSOR);
        } else if is(0, "CLOSE") && is(1, "ALL") {
            clears.insert(Pins::HOLD_CURSOR);
        } else if is(0, "SET") || is(0, "RESET") {
            self.setting(text, effects, &mut clears);
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
        let qualified = self.head(1).names(text, "pg_catalog") && self.head(2).kind == Kind::Dot;
        let at = if qualified { 3 } else { 1 };
        self.head(0).is(text, "SELECT")
            && self.head(at).names(text, "pg_advisory_unlock_all")
            && self.head(at + 1).kind == Kind::Open
            && self.head(at + 2).kind == Kind::Close
            && self.len == at + 3
    }

    /// SET and RESET: which setting, in the forms a client session uses.
    fn setting(&self, text: &[u8], effects: &mut Effects, clears: &mut Pins) {
        let is = |i: usize, keyword: &str| self.head(i).is(text, keyword);
        let reset = is(0, "RESET");
        let at = if !reset && is(1, "SESSION") { 2 } else { 1 };
        let name = if is(at, "LOCAL") || is(at, "TRANSACTION") || is(at, "CONSTRAINTS") {
            // Undone at the end of the transaction by PostgreSQL itself.
            return;
        } else if reset && is(1, "ALL") {
            // Settings return to the client's startup values; the role and the session authorization stay.
            if self.level == 0 {
                effects.settings.get_or_insert_default().all = true;
            }
            return;
        } else if is(at, "ROLE") {
            let none = is(at + 1, "NONE") && self.len == at + 2;
            return role(reset || none, effects, clears);
        } else if is(at, "AUTHORIZATION")
            || (is(at, "SESSION") && is(at + 1, "AUTHORIZATION"))
            || is(at, "CHARACTERISTICS")
        {
            return authorization(reset, effects);
        } else if is(at, "TIME") && is(at + 1, "ZONE") {
            "timezone".to_owned()
        } else if is(at, "NAMES") {
            "client_encoding".to_owned()
        } else if is(at, "SCHEMA") {
            "search_path".to_owned()
        } else if is(at, "XML") && is(at + 1, "OPTION") {
            "xmloption".to_owned()
        } else {
            match self.setting_name(text, at, reset) {
                Some(name) => name,
                None => return effects.creates.insert(Pins::SETTING),
            }
        };
        setting(name, reset, effects, clears);
    }

    /// The setting name at token `at`: words joined by dots, lower case, then the end of the statement (RESET)
    /// or `TO`, `=` or `FROM` (SET). `None` when pgherd cannot read it: quoted, unusual or too long.
    fn setting_name(&self, text: &[u8], mut at: usize, reset: bool) -> Option<String> {
        let mut name = String::new();
        loop {
            let part = self.head(at);
            if part.kind != Kind::Word || !part.text(text).is_ascii() {
                return None;
            }
            name.extend(
                part.text(text)
                    .iter()
                    .map(|b| b.to_ascii_lowercase() as char),
            );
            at += 1;
            if self.head(at).kind != Kind::Dot {
                break;
            }
            name.push('.');
            at += 1;
        }
        let next = self.head(at);
        let ends = if reset {
            self.len == at
        } else {
            next.is(text, "TO") || next.is_char(text, b'=') || next.is(text, "FROM")
        };
        ends.then_some(name)
    }

    /// `DO [LANGUAGE name] body`: a PL/pgSQL body is scanned, anything else pins.
    fn do_block(&self, text: &[u8], scan: &mut Scan) {
        let mut body = None;
        let mut plpgsql = true;
        let mut readable = self.len <= HEAD;
        let mut i = 1;
        while readable && i < self.len {
            let token = self.head(i);
            if token.is(text, "LANGUAGE") {
                let language = self.head(i + 1);
                plpgsql &= match language.kind {
                    Kind::Word => language.text(text).eq_ignore_ascii_case(b"plpgsql"),
                    Kind::Quoted => language.text(text) == b"\"plpgsql\"",
                    Kind::Str(_) => literal_value(text, language, scan.strings)
                        .is_some_and(|name| *name == *b"plpgsql"),
                    _ => false,
                };
                i += 2;
            } else if matches!(token.kind, Kind::Str(_)) && body.is_none() {
                body = Some(token);
                i += 1;
            } else {
                readable = false;
            }
        }
        match body {
            Some(body) if readable && plpgsql => scan.nested(text, body, Mode::PlPgSql, self.level),
            _ => scan.pin(),
        }
    }
}

/// SET ROLE (kept on the client's own server, not replayed), or its reset.
fn role(reset: bool, effects: &mut Effects, clears: &mut Pins) {
    if reset {
        clears.insert(Pins::ROLE);
    } else {
        effects.creates.insert(Pins::ROLE);
    }
}

/// SET SESSION AUTHORIZATION or SESSION CHARACTERISTICS: kept on the client's own server. Resetting the session
/// authorization does not unpin: it may leave a role set after it, and an unnamed setting may be either.
fn authorization(reset: bool, effects: &mut Effects) {
    if !reset {
        effects.creates.insert(Pins::SETTING);
    }
}

/// A setting changed by name (lower case): replayed, except the privileges (`role` and `session_authorization`
/// are settings too), which RESET ALL does not reset.
fn setting(name: String, reset: bool, effects: &mut Effects, clears: &mut Pins) {
    match name.as_str() {
        "role" => role(reset, effects, clears),
        "session_authorization" => authorization(reset, effects),
        _ => effects.named(name),
    }
}

/// A set_config(name, value, is_local) call read to its end. With is_local a literal true it is transaction-local
/// like SET LOCAL; with a literal false and a literal name it is a SET; anything else pgherd cannot read pins.
fn set_config(text: &[u8], call: Call, scan: &mut Scan) {
    let strings = scan.strings;
    let literal = |token: Option<Token>| {
        token
            .filter(|t| matches!(t.kind, Kind::Str(_)))
            .and_then(|t| literal_value(text, t, strings))
    };
    let local = match call.local {
        Some(t) if t.is(text, "TRUE") => Some(true),
        Some(t) if t.is(text, "FALSE") => Some(false),
        token => literal(token).and_then(|value| parse_bool(&value)),
    };
    let name = || {
        literal(call.name).filter(|name| {
            !name.is_empty()
                && name.split(|&b| b == b'.').all(|part| !part.is_empty())
                && name
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'$' | b'.'))
        })
    };
    match (call.arg, local) {
        (2, Some(true)) => {}
        (2, Some(false)) => match name() {
            Some(name) => {
                let name = name
                    .iter()
                    .map(|b| b.to_ascii_lowercase() as char)
                    .collect();
                // Clears are the statement's; a set_config that resets nothing clears nothing.
                setting(name, false, scan.effects, &mut Pins::default());
            }
            None => scan.pin(),
        },
        _ => scan.pin(),
    }
}

/// PostgreSQL's boolean input, spaces around it ignored: a case-insensitive prefix of `true`, `yes`, `false` or
/// `no`, `on`, `of` or `off`, `1` or `0`.
fn parse_bool(value: &[u8]) -> Option<bool> {
    let value = value.trim_ascii();
    let prefix_of = |word: &[u8], shortest: usize| {
        (shortest..=word.len()).contains(&value.len())
            && word
                .get(..value.len())
                .is_some_and(|w| w.eq_ignore_ascii_case(value))
    };
    if prefix_of(b"true", 1) || prefix_of(b"yes", 1) || prefix_of(b"on", 2) || value == b"1" {
        Some(true)
    } else if prefix_of(b"false", 1) || prefix_of(b"no", 1) || prefix_of(b"off", 2) || value == b"0"
    {
        Some(false)
    } else {
        None
    }
}

/// The value of the string literal `token` in `text`, or `None` when pgherd cannot read it: unterminated, a bit
/// string, or with escapes that compute a character (octal, hexadecimal, Unicode).
fn literal_value(text: &[u8], token: Token, strings: Strings) -> Option<Cow<'_, [u8]>> {
    let span = token.text(text);
    let (open, style) = match token.kind {
        Kind::Str(Lit::Dollar) => return dollar_body(span).map(Cow::Borrowed),
        Kind::Str(Lit::Plain) => (1, strings.plain()),
        Kind::Str(Lit::Escape) => (2, Style::Escapes),
        Kind::Str(Lit::Unicode) => (3, Style::Doubling),
        _ => return None,
    };
    let inside = span.get(open..span.len().checked_sub(1)?)?;
    if span.last() != Some(&b'\'') {
        return None;
    }
    if token.kind == Kind::Str(Lit::Unicode) && inside.contains(&b'\\') {
        return None;
    }
    if !inside.iter().any(|&b| b == b'\'' || b == b'\\') {
        return Some(Cow::Borrowed(inside));
    }
    let mut value = Vec::new();
    let read = lex_quoted(span, open, style, Some(&mut value));
    (read.closed && !read.computed).then_some(Cow::Owned(value))
}

/// The body of a dollar-quoted literal `$tag$body$tag$`, `None` when unterminated.
fn dollar_body(span: &[u8]) -> Option<&[u8]> {
    let tag = 2 + span.get(1..)?.iter().position(|&b| b == b'$')?;
    let delimiter = span.get(..tag)?;
    if span.len() < 2 * tag || !span.ends_with(delimiter) {
        return None;
    }
    span.get(tag..span.len() - tag)
}

/// A token of SQL text: its kind and where it is, as byte offsets in the text (which nothing else points into).
/// Small, since the scan copies tokens around: [`scan`] takes no text of 4 GiB or more.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Token {
    kind: Kind,
    start: u32,
    end: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Kind {
    /// No token: past the ones kept.
    #[default]
    None,
    /// A keyword or an identifier, unquoted.
    Word,
    /// "identifier", with its quotes.
    Quoted,
    /// U&"identifier", with its prefix and quotes.
    UnicodeQuoted,
    /// A string literal, with its prefix and quotes.
    Str(Lit),
    Open,
    Close,
    Comma,
    Dot,
    Semicolon,
    /// Operators (one character each), numbers, parameters, anything else.
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lit {
    /// '...'
    Plain,
    /// E'...'
    Escape,
    /// U&'...'
    Unicode,
    /// B'...' and X'...'
    Bits,
    /// $tag$...$tag$
    Dollar,
}

impl Token {
    fn text(self, text: &[u8]) -> &[u8] {
        text.get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }

    /// The unquoted keyword `keyword`, in any case.
    fn is(self, text: &[u8], keyword: &str) -> bool {
        self.kind == Kind::Word && self.text(text).eq_ignore_ascii_case(keyword.as_bytes())
    }

    fn is_char(self, text: &[u8], c: u8) -> bool {
        self.kind == Kind::Other && self.text(text) == [c]
    }

    /// The name of the identifier, quoted or not: its text without quotes, and whether it was quoted.
    fn ident(self, text: &[u8]) -> Option<(&[u8], bool)> {
        let inside = |open: usize| {
            let span = self.text(text);
            span.get(open..span.len().checked_sub(1)?)
                .filter(|_| span.len() > open && span.last() == Some(&b'"'))
        };
        match self.kind {
            Kind::Word => Some((self.text(text), false)),
            Kind::Quoted => inside(1).map(|name| (name, true)),
            Kind::UnicodeQuoted => inside(3).map(|name| (name, true)),
            _ => None,
        }
    }

    /// The identifier `name` (lower case): unquoted in any case, or quoted exactly.
    fn names(self, text: &[u8], name: &str) -> bool {
        match self.ident(text) {
            Some((ident, false)) => ident.eq_ignore_ascii_case(name.as_bytes()),
            Some((ident, true)) => ident == name.as_bytes(),
            None => false,
        }
    }

    /// An identifier whose name, folded as PostgreSQL folds it, starts with `prefix` (lower case, no quote).
    fn ident_starts_with(self, text: &[u8], prefix: &[u8]) -> bool {
        match self.ident(text) {
            Some((ident, false)) => ident
                .get(..prefix.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(prefix)),
            // A quoted name keeps its case, and `""` in it is one `"`, which `prefix` has none of.
            Some((ident, true)) => ident.starts_with(prefix),
            None => false,
        }
    }

    /// A prepared statement's name that is pgherd's: `pgherd_...` as PostgreSQL folds it. A name with Unicode
    /// escapes counts too, since pgherd does not decode them.
    fn reserved_name(self, text: &[u8]) -> bool {
        self.kind == Kind::UnicodeQuoted || self.ident_starts_with(text, RESERVED_PREFIX)
    }
}

/// How the characters of a quoted string are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    /// `''` is a quote, a backslash a character ('...' under standard_conforming_strings, U&'...').
    Doubling,
    /// `''` is a quote, and a backslash escapes the next character (E'...').
    Escapes,
    /// A quote ends it (B'...', X'...').
    Bare,
}

impl Strings {
    fn plain(self) -> Style {
        match self {
            Strings::Standard => Style::Doubling,
            Strings::Escaping => Style::Escapes,
        }
    }
}

/// A quoted string read by [`lex_quoted`].
struct Quoted {
    /// Just after its closing quote (or the end of the text).
    end: usize,
    closed: bool,
    backslash: bool,
    /// An escape computes a character (octal, hexadecimal, Unicode), which `value` does not hold.
    computed: bool,
}

/// Reads the quoted string whose characters start at `pos` (after the opening quote) as PostgreSQL's lexer does,
/// with the strings that continue it after a newline, into `value` when given.
fn lex_quoted(
    text: &[u8],
    mut pos: usize,
    style: Style,
    mut value: Option<&mut Vec<u8>>,
) -> Quoted {
    let mut quoted = Quoted {
        end: text.len(),
        closed: false,
        backslash: false,
        computed: false,
    };
    let skipping = value.is_none();
    let mut push = |b: u8| {
        if let Some(value) = value.as_deref_mut() {
            value.push(b);
        }
    };
    while let Some(&b) = text.get(pos) {
        if skipping && b != b'\'' && b != b'\\' {
            // Only skipping: on to the next quote or backslash.
            let rest = text.get(pos..).unwrap_or_default();
            pos += rest
                .iter()
                .position(|&b| b == b'\'' || b == b'\\')
                .unwrap_or(rest.len());
            continue;
        }
        pos += 1;
        match b {
            b'\'' if style != Style::Bare && text.get(pos) == Some(&b'\'') => {
                push(b'\'');
                pos += 1;
            }
            b'\'' => match continuation(text, pos) {
                Some(quote) => pos = quote + 1,
                None => {
                    quoted.end = pos;
                    quoted.closed = true;
                    return quoted;
                }
            },
            b'\\' => {
                quoted.backslash = true;
                if style != Style::Escapes {
                    push(b);
                    continue;
                }
                let Some(&c) = text.get(pos) else {
                    break;
                };
                pos += 1;
                push(match c {
                    b'b' => 8,
                    b'f' => 12,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'0'..=b'7' | b'x' | b'u' | b'U' => {
                        quoted.computed = true;
                        c
                    }
                    c => c,
                });
            }
            b => push(b),
        }
    }
    quoted
}

/// Where the string that ended just before `pos` continues: the quote after whitespace that holds a newline (and
/// maybe `--` comments), as the SQL standard has it.
fn continuation(text: &[u8], mut pos: usize) -> Option<usize> {
    let mut newline = false;
    loop {
        match *text.get(pos)? {
            b' ' | b'\t' | 0x0b | 0x0c => pos += 1,
            b'\n' | b'\r' => {
                newline = true;
                pos += 1;
            }
            b'-' if text.get(pos + 1) == Some(&b'-') => pos = line_end(text, pos),
            b'\'' if newline => return Some(pos),
            _ => return None,
        }
    }
}

/// The end of the `--` comment at `pos`: its newline, or the end of the text.
fn line_end(text: &[u8], pos: usize) -> usize {
    let rest = text.get(pos..).unwrap_or_default();
    pos + rest
        .iter()
        .position(|&b| b == b'\n' || b == b'\r')
        .unwrap_or(rest.len())
}

/// Just after the `/* */` comment at `pos`, which nests.
fn comment_end(text: &[u8], mut pos: usize) -> usize {
    let mut depth = 0usize;
    while let Some(&b) = text.get(pos) {
        let next = text.get(pos + 1).copied();
        if b == b'/' && next == Some(b'*') {
            depth += 1;
            pos += 2;
        } else if b == b'*' && next == Some(b'/') {
            depth -= 1;
            pos += 2;
            if depth == 0 {
                return pos;
            }
        } else {
            pos += 1;
        }
    }
    text.len()
}

/// Just after the quoted identifier whose characters start at `pos`.
fn ident_end(text: &[u8], mut pos: usize) -> usize {
    while let Some(&b) = text.get(pos) {
        pos += 1;
        if b == b'"' {
            if text.get(pos) != Some(&b'"') {
                return pos;
            }
            pos += 1;
        }
    }
    text.len()
}

/// Character classes, as bits: a table lookup per byte where words are lexed.
const IDENT_START: u8 = 1;
const TAG_CHAR: u8 = 2;
const IDENT_CHAR: u8 = 4;
const CLASSES: [u8; 256] = {
    let mut classes = [0; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let start = c.is_ascii_alphabetic() || c == b'_' || c >= 0x80;
        let tag = start || c.is_ascii_digit();
        classes[b] = if start { IDENT_START } else { 0 }
            | if tag { TAG_CHAR } else { 0 }
            | if tag || c == b'$' { IDENT_CHAR } else { 0 };
        b += 1;
    }
    classes
};

/// A letter, `_` or a non-ASCII byte: what starts an identifier.
fn ident_start(b: u8) -> bool {
    CLASSES[b as usize] & IDENT_START != 0
}

/// What continues an identifier: also digits and `$`.
fn ident_char(b: u8) -> bool {
    CLASSES[b as usize] & IDENT_CHAR != 0
}

/// What a dollar quote's tag is made of: no `$`.
fn tag_char(b: u8) -> bool {
    CLASSES[b as usize] & TAG_CHAR != 0
}

/// The tokens of SQL text, without whitespace and comments.
struct Tokens<'t> {
    text: &'t [u8],
    pos: usize,
    strings: Strings,
    /// A plain string held a backslash.
    backslash: bool,
}

impl<'t> Tokens<'t> {
    fn new(text: &'t [u8], strings: Strings) -> Self {
        Tokens {
            text,
            pos: 0,
            strings,
            backslash: false,
        }
    }

    /// A string literal whose characters start at `pos`.
    fn string(&mut self, pos: usize, lit: Lit) -> Kind {
        let style = match lit {
            Lit::Plain => self.strings.plain(),
            Lit::Escape => Style::Escapes,
            Lit::Unicode => Style::Doubling,
            Lit::Bits | Lit::Dollar => Style::Bare,
        };
        let read = lex_quoted(self.text, pos, style, None);
        self.pos = read.end;
        self.backslash |= lit == Lit::Plain && read.backslash;
        Kind::Str(lit)
    }

    /// A word starting with `first` at `start`, or the string or identifier it prefixes (E'', B'', X'', U&'',
    /// U&"").
    fn word(&mut self, start: usize, first: u8) -> Kind {
        let text = self.text;
        let rest = text.get(start + 1..).unwrap_or_default();
        let end = start + 1 + rest.iter().take_while(|&&b| ident_char(b)).count();
        self.pos = end;
        if end == start + 1 {
            let next = text.get(end).copied();
            match (first.to_ascii_lowercase(), next) {
                (b'e', Some(b'\'')) => return self.string(end + 1, Lit::Escape),
                (b'b' | b'x', Some(b'\'')) => return self.string(end + 1, Lit::Bits),
                (b'u', Some(b'&')) => match text.get(end + 1) {
                    Some(b'\'') => return self.string(end + 2, Lit::Unicode),
                    Some(b'"') => {
                        self.pos = ident_end(text, end + 2);
                        return Kind::UnicodeQuoted;
                    }
                    _ => {}
                },
                _ => {}
            }
        }
        Kind::Word
    }

    /// At a `$`: a parameter `$1`, a dollar-quoted literal `$tag$...$tag$`, or a lone `$`.
    fn dollar(&mut self, start: usize) -> Kind {
        let text = self.text;
        let rest = text.get(start + 1..).unwrap_or_default();
        if rest.first().is_some_and(u8::is_ascii_digit) {
            self.pos = start + 1 + rest.iter().take_while(|b| b.is_ascii_digit()).count();
            return Kind::Other;
        }
        let tag = rest.iter().take_while(|&&b| tag_char(b)).count();
        let open = start + tag + 2;
        let (Some(&b'$'), Some(delimiter)) = (rest.get(tag), text.get(start..open)) else {
            return Kind::Other;
        };
        // A tag holds no `$`, so every `$` where the delimiter may start is a new try: linear.
        let body = text.get(open..).unwrap_or_default();
        self.pos = (0..body.len())
            .find(|&i| body.get(i..).is_some_and(|at| at.starts_with(delimiter)))
            .map_or(text.len(), |i| open + i + delimiter.len());
        Kind::Str(Lit::Dollar)
    }
}

impl Iterator for Tokens<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        loop {
            let start = self.pos;
            let b = *self.text.get(start)?;
            let next = self.text.get(start + 1).copied();
            self.pos = start + 1;
            let kind = match b {
                b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => continue,
                b'-' if next == Some(b'-') => {
                    self.pos = line_end(self.text, start);
                    continue;
                }
                b'/' if next == Some(b'*') => {
                    self.pos = comment_end(self.text, start);
                    continue;
                }
                b';' => Kind::Semicolon,
                b'(' => Kind::Open,
                b')' => Kind::Close,
                b',' => Kind::Comma,
                b'.' => Kind::Dot,
                b'\'' => self.string(start + 1, Lit::Plain),
                b'"' => {
                    self.pos = ident_end(self.text, start + 1);
                    Kind::Quoted
                }
                b'$' => self.dollar(start),
                b'0'..=b'9' => {
                    // Digits, `_` and `.`: a letter after them starts a word (as in PostgreSQL before 15, where
                    // 1e'...' is 1 and a string).
                    let rest = self.text.get(self.pos..).unwrap_or_default();
                    self.pos += rest
                        .iter()
                        .take_while(|&&b| b.is_ascii_digit() || b == b'_' || b == b'.')
                        .count();
                    Kind::Other
                }
                b if ident_start(b) => self.word(start, b),
                _ => Kind::Other,
            };
            // Offsets fit: `scan` takes no longer text, and nested texts are shorter than theirs.
            return Some(Token {
                kind,
                start: start as u32,
                end: self.pos as u32,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creates(sql: &str) -> Pins {
        scan(sql.as_bytes()).creates
    }

    /// The settings `sql` names, in order.
    fn named(sql: &str) -> Vec<String> {
        scan(sql.as_bytes())
            .settings
            .map(|c| c.names)
            .unwrap_or_default()
    }

    fn reserved(sql: &str) -> bool {
        scan(sql.as_bytes()).reserved
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
        assert_eq!(scan(b"RESET ROLE").clears, Pins::ROLE);
        assert_eq!(scan(b"SET ROLE NONE").clears, Pins::ROLE);
        assert_eq!(scan(b"RESET role").clears, Pins::ROLE);
        // RESET ALL leaves the role and the session authorization (which unnamed settings may be).
        assert_eq!(scan(b"RESET ALL").clears, Pins::default());
        assert_eq!(scan(b"RESET SESSION AUTHORIZATION").clears, Pins::default());
    }

    /// What the relay does with the effects of messages in turn: clears, then creates.
    fn pinned_after(messages: &[&str]) -> Pins {
        let mut pins = Pins::default();
        for sql in messages {
            let effects = scan(sql.as_bytes());
            pins.remove(effects.clears);
            pins.insert(effects.creates);
        }
        pins
    }

    #[test]
    fn reset_all_leaves_the_role_pinned() {
        // RESET ALL does not reset the role: a server that goes back to the pool must not keep it.
        assert_eq!(pinned_after(&["SET ROLE admin", "RESET ALL"]), Pins::ROLE);
        assert_eq!(
            pinned_after(&["SET ROLE admin", "RESET ROLE"]),
            Pins::default()
        );
        assert_eq!(
            pinned_after(&["SET ROLE admin", "SET ROLE NONE"]),
            Pins::default()
        );
        assert_eq!(
            pinned_after(&["SET ROLE admin", "DISCARD ALL"]),
            Pins::default()
        );
        // An unnamed setting may be the role: only DISCARD ALL clears it.
        for set in [
            "SET \"role\" = admin",
            "SELECT set_config($1, $2, false)",
            "DO $$ BEGIN EXECUTE format('SET ROLE %I', r); END $$",
            "SET SESSION AUTHORIZATION bob",
        ] {
            for reset in ["RESET ALL", "RESET ROLE", "RESET SESSION AUTHORIZATION"] {
                assert_eq!(pinned_after(&[set, reset]), Pins::SETTING, "{set}; {reset}");
            }
            assert_eq!(
                pinned_after(&[set, "DISCARD ALL"]),
                Pins::default(),
                "{set}"
            );
        }
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
    fn quotes_and_comments_do_not_hide_or_invent_statements() {
        assert_eq!(creates("SELECT 'it''s; LISTEN x'"), Pins::default());
        assert_eq!(creates("SELECT E'\\'; LISTEN x'"), Pins::default());
        assert_eq!(creates("SELECT 'a'; LISTEN x"), Pins::LISTEN);
        assert_eq!(creates("/* unterminated LISTEN"), Pins::default());
        assert_eq!(creates("SELECT 1 -- ; LISTEN x"), Pins::default());
        assert_eq!(creates("SELECT $1; LISTEN x"), Pins::LISTEN);
    }

    #[test]
    fn lexed_as_postgresql_lexes() {
        // Comments nest: the quote is inside one.
        assert_eq!(
            creates("/* /* */ ' */ LISTEN x; --'"),
            Pins::LISTEN,
            "nested comment"
        );
        assert_eq!(creates("/* /* */ LISTEN x */"), Pins::default());
        // A carriage return ends a `--` comment.
        assert_eq!(creates("SELECT 1 -- c\r; LISTEN x"), Pins::LISTEN);
        // A string continued on a new line keeps its kind: here E'', whose \' does not end it.
        assert_eq!(
            creates("SELECT E'x'\n'\\' ; '; LISTEN y"),
            Pins::LISTEN,
            "continued E string"
        );
        assert_eq!(creates("SELECT 'x' -- c\n  'y; LISTEN z'"), Pins::default());
        // Before PostgreSQL 15, 1e'...' is 1 and an E string.
        assert_eq!(creates("SELECT 1e'\\' ; '; LISTEN x"), Pins::LISTEN);
        // B'' and X'' strings end at the first quote, backslash or not; a quote right after starts a string.
        assert_eq!(creates("SELECT X'1\\'; LISTEN x; --'"), Pins::LISTEN);
        assert_eq!(creates("SELECT B'1''; LISTEN x; --'"), Pins::default());
        // Words are identifiers: `$` and non-ASCII letters belong to them, so these are not dollar quotes.
        assert_eq!(creates("SELECT a$$ ; LISTEN x; $$"), Pins::LISTEN);
        assert_eq!(creates("SELECT $é$ ; LISTEN x; $é$"), Pins::default());
        assert_eq!(creates("SELECT $1$; LISTEN x; $$"), Pins::LISTEN);
        // Unicode identifiers and strings.
        assert_eq!(creates("SELECT U&'a''; LISTEN x'"), Pins::default());
        assert_eq!(creates("SELECT U&\"a\"\"; LISTEN x\""), Pins::default());
        assert_eq!(creates("SELECT U&\"a\"; LISTEN x"), Pins::LISTEN);
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

    /// Bug 1: `*` was a static token that address arithmetic took for a slice of the SQL.
    #[test]
    fn star_as_a_setting_name() {
        for sql in [
            "RESET *",
            "SET * TO 1",
            "SET *",
            "RESET",
            "SET",
            "SET a.",
            "SET a.*",
        ] {
            assert_eq!(creates(sql), Pins::SETTING, "{sql}");
            assert_eq!(named(sql), Vec::<String>::new(), "{sql}");
        }
        assert_eq!(scan(b"UNLISTEN *").clears, Pins::LISTEN);
    }

    /// Bug 2: SESSION shifted the name past the few words kept.
    #[test]
    fn session_forms_name_their_setting() {
        assert_eq!(named("SET SESSION TIME ZONE 0"), ["timezone"]);
        assert_eq!(named("SET SESSION XML OPTION DOCUMENT"), ["xmloption"]);
        assert_eq!(named("SET XML OPTION CONTENT"), ["xmloption"]);
        assert_eq!(named("SET SESSION NAMES 'UTF8'"), ["client_encoding"]);
        assert_eq!(named("SET SESSION SCHEMA 'app'"), ["search_path"]);
        assert_eq!(named("SET SESSION a.b TO 1"), ["a.b"]);
        assert_eq!(named("RESET TIME ZONE"), ["timezone"]);
        assert_eq!(named("SET a . /* c */ b = 1"), ["a.b"]);
        assert_eq!(named("SET work_mem FROM CURRENT"), ["work_mem"]);
        for sql in [
            "SET SESSION TIME",
            "SET SESSION XML",
            "SET SESSION",
            "SET TIME",
        ] {
            assert_eq!(creates(sql), Pins::SETTING, "{sql}");
        }
        assert_eq!(
            creates("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"),
            Pins::SETTING
        );
        assert_eq!(named("RESET SESSION AUTHORIZATION"), Vec::<String>::new());
        // Generic forms of the privileges are privileges too.
        assert_eq!(creates("SET session_authorization = 'bob'"), Pins::SETTING);
        assert_eq!(named("SET role = admin"), Vec::<String>::new());
        assert_eq!(creates("SET role = admin"), Pins::ROLE);
        assert_eq!(creates("SET SESSION ROLE admin"), Pins::ROLE);
        assert_eq!(creates("SET ROLE 'none'"), Pins::ROLE);
        assert_eq!(creates("SET LOCAL ROLE admin"), Pins::default());
    }

    /// Bug 3: set_config with a literal true is SET LOCAL, with a literal false a SET.
    #[test]
    fn set_config_is_read_when_literal() {
        let postgrest = "SELECT set_config('request.jwt.claims', '{\"role\":\"web\"}', true)";
        assert_eq!(scan(postgrest.as_bytes()), Effects::default());
        for local in [
            "true", "TRUE", "'true'", "'on'", "'t'", "'TR'", "' yes '", "'1'", "'y'",
        ] {
            let sql = format!("SELECT set_config('a.b', 'v', {local})");
            assert_eq!(scan(sql.as_bytes()), Effects::default(), "{sql}");
        }
        for session in [
            "false", "False", "'false'", "'off'", "'of'", "'f'", "'no'", "'0'", "'n'",
        ] {
            let sql = format!("SELECT set_config('My.Name', 'v', {session})");
            assert_eq!(creates(&sql), Pins::default(), "{sql}");
            assert_eq!(named(&sql), ["my.name"], "{sql}");
        }
        for unreadable in [
            "SELECT set_config($1, 'v', false)",
            "SELECT set_config('a.b', 'v', $3)",
            "SELECT set_config(name, value, false) FROM settings",
            "SELECT set_config('a.b', 'v', local) FROM t",
            "SELECT set_config('a.b', 'v', NULL)",
            "SELECT set_config('a.b', 'v', 'o')",
            "SELECT set_config('a.b', 'v', 'onx')",
            "SELECT set_config('a.b', 'v', 1)",
            "SELECT set_config('a.b', 'v', true::bool)",
            "SELECT set_config('a.b', 'v')",
            "SELECT set_config('a.b', 'v', false, 1)",
            "SELECT set_config('a' || '.b', 'v', false)",
            "SELECT set_config('a b', 'v', false)",
            "SELECT set_config('a..b', 'v', false)",
            "SELECT set_config('', 'v', false)",
            "SELECT set_config(E'\\141.b', 'v', false)",
            "SELECT set_config('a.b', 'v', false",
            "SELECT set_config('a.b', 'v'; SELECT 1",
        ] {
            assert_eq!(creates(unreadable), Pins::SETTING, "{unreadable}");
            assert_eq!(named(unreadable), Vec::<String>::new(), "{unreadable}");
        }
        assert_eq!(
            named("SELECT pg_catalog.set_config('Search_Path', 'x', false)"),
            ["search_path"]
        );
        assert_eq!(
            named("SELECT \"set_config\"/**/(E'a.b', $$v$$, 'false')"),
            ["a.b"]
        );
        assert_eq!(
            named("SELECT set_config('a.b', '1', false), set_config('c.d', '2', false)"),
            ["a.b", "c.d"]
        );
        assert_eq!(
            named("SELECT set_config('a.b', set_config('c.d', 'x', false), false)"),
            ["c.d", "a.b"]
        );
        assert_eq!(
            named("SELECT set_config('a.b', concat('x', ',', (1, 2)), 'f')"),
            ["a.b"]
        );
        assert_eq!(
            named("SELECT set_config('a.b'\n'.c', 'v', false)"),
            ["a.b.c"]
        );
        // Local calls among others: only the session one counts.
        let sql = "SELECT set_config('a.b', 'x', true), set_config('c.d', 'y', false)";
        assert_eq!(named(sql), ["c.d"]);
        assert_eq!(creates(sql), Pins::default());
        // The privileges are settings too.
        assert_eq!(
            creates("SELECT set_config('role', 'admin', false)"),
            Pins::ROLE
        );
        assert_eq!(
            creates("SELECT set_config('session_authorization', 'bob', false)"),
            Pins::SETTING
        );
        assert_eq!(
            creates("SELECT set_config('ROLE', 'admin', true)"),
            Pins::default()
        );
    }

    /// Bug 4: DO bodies were skipped as dollar quotes.
    #[test]
    fn do_blocks_are_scanned() {
        assert_eq!(
            named("DO $$ BEGIN PERFORM set_config('search_path', 'evil, public', false); END $$"),
            ["search_path"]
        );
        assert_eq!(
            named("DO $$ BEGIN EXECUTE 'SET search_path = evil'; END $$"),
            ["search_path"]
        );
        for sql in [
            "DO $$ BEGIN SET search_path = x; END $$",
            "DO $tag$ BEGIN SET search_path = x; END $tag$",
            "DO 'BEGIN SET search_path = x; END'",
            "DO E'BEGIN SET search_path = x; END'",
            "DO LANGUAGE plpgsql $$ BEGIN SET search_path = x; END $$",
            "DO $$ BEGIN SET search_path = x; END $$ LANGUAGE plpgsql",
            "do language 'plpgsql' $$ begin set search_path = x; end $$",
            "DO $$ BEGIN IF true THEN SET search_path = x; END IF; END $$",
            "DO $$ BEGIN IF a THEN NULL; ELSE SET search_path = x; END IF; END $$",
            "DO $$ BEGIN LOOP SET search_path = x; EXIT; END LOOP; END $$",
            "DO $$ BEGIN NULL; EXCEPTION WHEN others THEN SET search_path = x; END $$",
            "DO $$ DECLARE v int; BEGIN SET search_path = x; END $$",
            "DO 'BEGIN EXECUTE ''SET search_path = x''; END'",
            "DO $$ BEGIN EXECUTE 'SET search_path = ''x'''; END $$",
            "DO $$ BEGIN EXECUTE E'SET search_path = \\'x\\''; END $$",
            "DO $$ BEGIN EXECUTE $q$SET search_path = x$q$; END $$",
            "DO $$ BEGIN EXECUTE 'SET search_path = x' INTO v; END $$",
            "DO $$ BEGIN EXECUTE 'DO $i$ BEGIN SET search_path = x; END $i$'; END $$",
            "DO $$ BEGIN DO $i$ BEGIN SET search_path = x; END $i$; END $$",
            "DO $$ BEGIN EXECUTE 'SELECT set_config(''search_path'', ''x'', false)'; END $$",
        ] {
            assert_eq!(named(sql), ["search_path"], "{sql}");
            assert_eq!(creates(sql), Pins::default(), "{sql}");
        }
        let cases = [
            ("DO $$ BEGIN LISTEN x; END $$", Pins::LISTEN),
            ("DO $$ BEGIN EXECUTE 'LISTEN x'; END $$", Pins::LISTEN),
            ("DO $$ BEGIN PREPARE p AS SELECT 1; END $$", Pins::PREPARED),
            (
                "DO $$ BEGIN CREATE TEMP TABLE t (a int); END $$",
                Pins::TEMP_OBJECT,
            ),
            (
                "DO $$ BEGIN PERFORM pg_advisory_lock(1); END $$",
                Pins::ADVISORY_LOCK,
            ),
            ("DO $$ BEGIN LOAD 'x'; END $$", Pins::PERMANENT),
            ("DO $$ BEGIN SET ROLE admin; END $$", Pins::ROLE),
            (
                "DO $$ DECLARE r record; BEGIN FOR r IN EXECUTE 'LISTEN x' LOOP END LOOP; END $$",
                Pins::LISTEN,
            ),
            (
                "DO $$ BEGIN OPEN c FOR EXECUTE 'SELECT pg_advisory_lock(1)'; END $$",
                Pins::ADVISORY_LOCK,
            ),
            // Dynamic SQL pgherd cannot read.
            (
                "DO $$ BEGIN EXECUTE format('SET search_path = %I', s); END $$",
                Pins::SETTING,
            ),
            (
                "DO $$ BEGIN EXECUTE 'SET search_path = ' || s; END $$",
                Pins::SETTING,
            ),
            ("DO $$ BEGIN EXECUTE q; END $$", Pins::SETTING),
            (
                "DO $$ BEGIN EXECUTE 'SET a.b = 1' 'x'; END $$",
                Pins::SETTING,
            ),
            (
                "DO $$ BEGIN EXECUTE E'SET a.b = \\x31'; END $$",
                Pins::SETTING,
            ),
            ("DO $$ BEGIN EXECUTE $$", Pins::SETTING),
            // Bodies pgherd cannot read.
            (
                "DO LANGUAGE plperl $$ spi_exec_query('SET a.b = 1') $$",
                Pins::SETTING,
            ),
            ("DO $$ x $$ LANGUAGE", Pins::SETTING),
            ("DO", Pins::SETTING),
            ("DO $$ x $$ $$ y $$", Pins::SETTING),
            ("DO $$ unterminated", Pins::SETTING),
            ("DO X'00'", Pins::SETTING),
        ];
        for (sql, pin) in cases {
            assert_eq!(creates(sql), pin, "{sql}");
        }
        for sql in [
            "DO $$ BEGIN UPDATE t SET a = 1; END $$",
            "DO $$ BEGIN SET LOCAL search_path = x; END $$",
            "DO $$ BEGIN PERFORM set_config('a.b', 'v', true); END $$",
            "DO $$ BEGIN RAISE NOTICE 'SET a.b = 1'; END $$",
            "DO $$ BEGIN GRANT EXECUTE ON FUNCTION f() TO u; END $$",
            // Function bodies run later: not scanned.
            "CREATE FUNCTION f() RETURNS void AS $$ BEGIN SET a.b = 1; LISTEN x; END $$ LANGUAGE plpgsql",
            "DO $$ BEGIN CREATE FUNCTION f() RETURNS void AS $f$ BEGIN LISTEN x; END $f$ LANGUAGE plpgsql; END $$",
        ] {
            let effects = scan(sql.as_bytes());
            assert_eq!(effects.creates, Pins::default(), "{sql}");
            assert_eq!(effects.settings, None, "{sql}");
        }
        // A DO block may not run what it holds: its clears do not count.
        for sql in [
            "DO $$ BEGIN UNLISTEN *; END $$",
            "DO $$ BEGIN IF false THEN RESET ALL; END IF; END $$",
            "DO $$ BEGIN EXECUTE 'DISCARD ALL'; END $$",
        ] {
            let effects = scan(sql.as_bytes());
            assert_eq!(effects.clears, Pins::default(), "{sql}");
            assert!(effects.settings.is_none_or(|c| !c.all), "{sql}");
        }
    }

    #[test]
    fn do_blocks_nest_only_so_deep() {
        let nest = |levels: usize| {
            let mut sql = "SET a.b = 1".to_owned();
            for _ in 0..levels {
                sql = format!("DO '{}'", sql.replace('\'', "''"));
            }
            sql
        };
        for levels in 1..=MAX_LEVEL as usize {
            assert_eq!(named(&nest(levels)), ["a.b"], "{levels}");
        }
        let deep = nest(MAX_LEVEL as usize + 1);
        assert_eq!(creates(&deep), Pins::SETTING);
        assert_eq!(named(&deep), Vec::<String>::new());
        // Thousands of levels cost no stack.
        let mut sql = "SET a.b = 1".to_owned();
        for i in 0..5000 {
            sql = format!("DO $t{i}${sql}$t{i}$");
        }
        assert_eq!(creates(&sql), Pins::SETTING);
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
        assert_eq!(creates("PREPARE pgherd_x AS SELECT 1"), Pins::PREPARED);
        assert_eq!(
            creates("CREATE TEMP TABLE t AS EXECUTE pgherd_x"),
            Pins::TEMP_OBJECT
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

    #[test]
    fn literal_values() {
        let value = |sql: &str| {
            let text = sql.as_bytes();
            let token = Tokens::new(text, Strings::Standard).next().unwrap();
            literal_value(text, token, Strings::Standard).map(|v| v.into_owned())
        };
        assert_eq!(value("'a''b'").as_deref(), Some(&b"a'b"[..]));
        assert_eq!(value("'a\\'").as_deref(), Some(&b"a\\"[..]));
        assert_eq!(value("E'a\\'b\\\\'").as_deref(), Some(&b"a'b\\"[..]));
        assert_eq!(value("E'\\n'").as_deref(), Some(&b"\n"[..]));
        assert_eq!(value("E'\\101'"), None);
        assert_eq!(value("'a'\n 'b'").as_deref(), Some(&b"ab"[..]));
        assert_eq!(value("$x$a'b$x$").as_deref(), Some(&b"a'b"[..]));
        assert_eq!(value("$$$$").as_deref(), Some(&b""[..]));
        assert_eq!(value("$x$a$x"), None);
        assert_eq!(value("'a"), None);
        assert_eq!(value("'a''"), None);
        assert_eq!(value("U&'a'").as_deref(), Some(&b"a"[..]));
        assert_eq!(value("U&'\\0041'"), None);
        assert_eq!(value("B'1'"), None);
        assert_eq!(value("x"), None);
    }

    #[test]
    fn booleans_as_postgresql_reads_them() {
        for (input, value) in [
            ("t", Some(true)),
            ("TRUE", Some(true)),
            (" tru ", Some(true)),
            ("yes", Some(true)),
            ("on", Some(true)),
            ("1", Some(true)),
            ("f", Some(false)),
            ("fAlSe", Some(false)),
            ("n", Some(false)),
            ("of", Some(false)),
            ("off", Some(false)),
            ("0", Some(false)),
            ("o", None),
            ("", None),
            ("truex", None),
            ("offf", None),
            ("10", None),
            ("t\0", None),
        ] {
            assert_eq!(parse_bool(input.as_bytes()), value, "{input:?}");
        }
    }
}

/// Property tests (`props::` selects them for scripts/fuzz.sh): the scan is total on any bytes, and on SQL
/// generated with known effects it finds exactly those, whatever the case, spacing, quoting and nesting.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// Pieces of SQL, hostile ones included, for inputs that are almost SQL.
    const FRAGMENTS: &[&[u8]] = &[
        b"$",
        b"$$",
        b"$a$",
        b"$1",
        b"'",
        b"''",
        b"\"",
        b"E'",
        b"e'",
        b"U&'",
        b"U&\"",
        b"B'",
        b"X'",
        b"\\",
        b"\\'",
        b"--",
        b"\n",
        b"\r",
        b"/*",
        b"*/",
        b"*",
        b";",
        b"(",
        b")",
        b",",
        b".",
        b"=",
        b" ",
        b"\0",
        b"\xff",
        b"\xc3\xa9",
        b"SET",
        b"RESET",
        b"SESSION",
        b"TIME",
        b"ZONE",
        b"XML",
        b"OPTION",
        b"LOCAL",
        b"ALL",
        b"ROLE",
        b"NONE",
        b"DO",
        b"LANGUAGE",
        b"plpgsql",
        b"BEGIN",
        b"THEN",
        b"ELSE",
        b"LOOP",
        b"EXCEPTION",
        b"DECLARE",
        b"END",
        b"EXECUTE",
        b"INTO",
        b"USING",
        b"IN",
        b"FOR",
        b"QUERY",
        b"EXPLAIN",
        b"ANALYZE",
        b"PREPARE",
        b"TRANSACTION",
        b"DEALLOCATE",
        b"CREATE",
        b"TEMP",
        b"TABLE",
        b"AS",
        b"LISTEN",
        b"UNLISTEN",
        b"set_config",
        b"pg_catalog",
        b"pg_advisory_lock",
        b"pg_advisory_unlock_all",
        b"true",
        b"false",
        b"'t'",
        b"'off'",
        b"pgherd_",
        b"UESCAPE",
        b"1e",
        b"a.b",
        b"SELECT",
        b"WITH",
        b"HOLD",
        b"ON",
        b"COMMIT",
        b"DROP",
        b"INTO",
        b"pg_temp",
    ];

    /// Fragments, each followed by a space or not, and a few random bytes.
    fn almost_sql() -> impl Strategy<Value = Vec<u8>> {
        let fragment = (prop::sample::select(FRAGMENTS), any::<bool>()).prop_map(|(f, space)| {
            let mut piece = f.to_vec();
            if space {
                piece.push(b' ');
            }
            piece
        });
        let piece = prop_oneof![
            3 => fragment,
            1 => prop::collection::vec(any::<u8>(), 0..4),
        ];
        prop::collection::vec(piece, 0..64).prop_map(|pieces| pieces.concat())
    }

    /// Prepared statement names as written, and whether PostgreSQL folds them to pgherd's prefix.
    const STATEMENT_NAMES: &[(&str, bool)] = &[
        ("p", false),
        ("stmt_1", false),
        ("pgherd", false),
        ("pgherdx_1", false),
        ("\"PGHERD_a1\"", false),
        ("\"pgherd\"\"_x\"", false),
        ("pgherd_0123456789abcdef0123456789abcdef", true),
        ("PgHerd_x", true),
        ("\"pgherd_x\"", true),
    ];
    /// Setting names as SET and RESET write them (the scan reports them in lower case).
    const SETTING_NAMES: &[&str] = &[
        "search_path",
        "work_mem",
        "app.tenant_id",
        "DateStyle",
        "my_ext.x$y",
    ];
    const SETTING_VALUES: &[&str] = &["'x'", "1", "DEFAULT", "'a,b'", "on", "$v$val$v$"];
    /// The SET forms with a name of their own, and that name.
    const SPECIAL_SETS: &[(&str, &str)] = &[
        ("SET TIME ZONE 'UTC'", "timezone"),
        ("SET SESSION TIME ZONE 0", "timezone"),
        ("SET TIME ZONE LOCAL", "timezone"),
        ("SET SESSION XML OPTION DOCUMENT", "xmloption"),
        ("SET XML OPTION CONTENT", "xmloption"),
        ("SET NAMES 'UTF8'", "client_encoding"),
        ("SET SESSION NAMES 'UTF8'", "client_encoding"),
        ("SET SCHEMA 'app'", "search_path"),
        ("SET SESSION SCHEMA 'app'", "search_path"),
        ("RESET TIME ZONE", "timezone"),
    ];
    /// set_config names (string literals keep their case; the scan reports them in lower case).
    const CONFIG_NAMES: &[&str] = &[
        "a.b",
        "App.Tenant",
        "search_path",
        "request.jwt.claims",
        "x$.y_1",
    ];
    const LOCAL_TRUE: &[&str] = &[
        "true",
        "TRUE",
        "'true'",
        "'on'",
        "'t'",
        "'1'",
        "'yes'",
        "'Y'",
        "'\ttRu\t'",
    ];
    const LOCAL_FALSE: &[&str] = &[
        "false", "'false'", "'off'", "'of'", "'f'", "'0'", "'no'", "'N'",
    ];
    /// Words of text inside literals and comments: statements, but never a quote, backslash, `$` or newline.
    const SOUP: &[&str] = &[
        "LISTEN",
        "ch",
        "SET",
        "search_path",
        "=",
        "x",
        ";",
        "PREPARE",
        "pgherd_x",
        "AS",
        "SELECT",
        "1",
        "RESET",
        "ALL",
        "DO",
        "BEGIN",
        "END",
        "THEN",
        "ELSE",
        "LOOP",
        "EXECUTE",
        "set_config",
        "(",
        ")",
        ",",
        "pg_advisory_lock",
        "CREATE",
        "TEMP",
        "TABLE",
        "DECLARE",
        "CURSOR",
        "WITH",
        "HOLD",
        "LOAD",
        "ROLE",
        "DISCARD",
        "UNLISTEN",
        "*",
        "E",
        "U&",
        "-",
        "/",
        ".",
        "DEALLOCATE",
        "EXPLAIN",
        "pg_temp",
        "INTO",
    ];
    /// Noise statements valid in SQL and PL/pgSQL, in SQL only, in PL/pgSQL only.
    const NOISE_ANY: std::ops::Range<usize> = 0..17;
    const NOISE_SQL: std::ops::Range<usize> = 17..20;
    const NOISE_PL: std::ops::Range<usize> = 20..23;

    /// A generated statement: what it is, not how it is written (case, spacing, quoting and the form among
    /// equivalent ones are chosen when it is rendered).
    #[derive(Debug, Clone)]
    enum Stmt {
        Listen,
        Prepare(usize),
        /// SQL's EXECUTE (in PL/pgSQL, EXECUTE runs dynamic SQL).
        Execute(usize),
        ExplainExecute(usize),
        Deallocate(usize),
        CreateAsExecute(usize),
        /// SQL only (DECLARE opens a PL/pgSQL block).
        HoldCursor,
        Temp,
        Advisory,
        Set(usize),
        Special(usize),
        Reset(usize),
        /// set_config(name, value, is_local).
        SetConfig(usize, bool),
        Role,
        Load,
        /// A statement with session state only in literals, identifiers and comments.
        Noise(usize, Vec<usize>),
        /// DO with PL/pgSQL statements.
        Do(Vec<Stmt>),
        /// PL/pgSQL's EXECUTE of a literal holding a SQL statement.
        Dynamic(Box<Stmt>),
    }

    fn noise(range: std::ops::Range<usize>) -> BoxedStrategy<Stmt> {
        let soup = prop::collection::vec(0..SOUP.len(), 0..12);
        (range, soup)
            .prop_map(|(kind, soup)| Stmt::Noise(kind, soup))
            .boxed()
    }

    /// Statements with known effects, for SQL (`pl` false) or PL/pgSQL.
    fn state(pl: bool) -> BoxedStrategy<Stmt> {
        let names = 0..STATEMENT_NAMES.len();
        let common = prop_oneof![
            Just(Stmt::Listen),
            names.clone().prop_map(Stmt::Prepare),
            names.clone().prop_map(Stmt::ExplainExecute),
            names.clone().prop_map(Stmt::Deallocate),
            names.clone().prop_map(Stmt::CreateAsExecute),
            Just(Stmt::Temp),
            Just(Stmt::Advisory),
            (0..SETTING_NAMES.len()).prop_map(Stmt::Set),
            (0..SPECIAL_SETS.len()).prop_map(Stmt::Special),
            (0..SETTING_NAMES.len()).prop_map(Stmt::Reset),
            (0..CONFIG_NAMES.len(), any::<bool>()).prop_map(|(n, l)| Stmt::SetConfig(n, l)),
            Just(Stmt::Role),
            Just(Stmt::Load),
        ];
        if pl {
            common.boxed()
        } else {
            prop_oneof![
                6 => common,
                1 => names.prop_map(Stmt::Execute),
                1 => Just(Stmt::HoldCursor),
            ]
            .boxed()
        }
    }

    /// A SQL statement, with DO blocks nested `levels` deep at most.
    fn sql_stmt(levels: u32, noise_only: bool) -> BoxedStrategy<Stmt> {
        let noise = prop_oneof![noise(NOISE_ANY), noise(NOISE_SQL)];
        let leaf = if noise_only {
            noise.boxed()
        } else {
            prop_oneof![2 => state(false), 1 => noise].boxed()
        };
        if levels == 0 {
            return leaf;
        }
        let body = prop::collection::vec(pl_stmt(levels - 1, noise_only), 1..4);
        prop_oneof![4 => leaf, 1 => body.prop_map(Stmt::Do)].boxed()
    }

    /// A PL/pgSQL statement, with DO blocks and EXECUTE nested `levels` deep at most.
    fn pl_stmt(levels: u32, noise_only: bool) -> BoxedStrategy<Stmt> {
        let noise = prop_oneof![noise(NOISE_ANY), noise(NOISE_PL)];
        let leaf = if noise_only {
            noise.boxed()
        } else {
            prop_oneof![2 => state(true), 1 => noise].boxed()
        };
        if levels == 0 {
            return leaf;
        }
        let body = prop::collection::vec(pl_stmt(levels - 1, noise_only), 1..3);
        let dynamic = sql_stmt(levels - 1, noise_only).prop_map(|s| Stmt::Dynamic(Box::new(s)));
        prop_oneof![4 => leaf, 1 => body.prop_map(Stmt::Do), 1 => dynamic].boxed()
    }

    /// SQL text of one to five statements, nested up to the scan's depth.
    fn statements(noise_only: bool) -> impl Strategy<Value = Vec<Stmt>> {
        prop::collection::vec(sql_stmt(MAX_LEVEL as u32, noise_only), 1..6)
    }

    /// What the scan must find in generated SQL.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct Found {
        creates: Pins,
        names: BTreeSet<String>,
        reserved: bool,
    }

    impl Found {
        fn of(effects: &Effects) -> Found {
            Found {
                creates: effects.creates,
                names: effects
                    .settings
                    .iter()
                    .flat_map(|c| c.names.iter().cloned())
                    .collect(),
                reserved: effects.reserved,
            }
        }

        fn expect(&mut self, stmt: &Stmt) {
            let reserved = |n: &usize| STATEMENT_NAMES[*n].1;
            match stmt {
                Stmt::Listen => self.creates.insert(Pins::LISTEN),
                Stmt::Prepare(n) => {
                    self.creates.insert(Pins::PREPARED);
                    self.reserved |= reserved(n);
                }
                Stmt::Execute(n)
                | Stmt::ExplainExecute(n)
                | Stmt::Deallocate(n)
                | Stmt::CreateAsExecute(n) => self.reserved |= reserved(n),
                Stmt::HoldCursor => self.creates.insert(Pins::HOLD_CURSOR),
                Stmt::Temp => self.creates.insert(Pins::TEMP_OBJECT),
                Stmt::Advisory => self.creates.insert(Pins::ADVISORY_LOCK),
                Stmt::Set(n) | Stmt::Reset(n) => {
                    self.names.insert(SETTING_NAMES[*n].to_ascii_lowercase());
                }
                Stmt::Special(n) => {
                    self.names.insert(SPECIAL_SETS[*n].1.to_owned());
                }
                Stmt::SetConfig(n, local) => {
                    if !local {
                        self.names.insert(CONFIG_NAMES[*n].to_ascii_lowercase());
                    }
                }
                Stmt::Role => self.creates.insert(Pins::ROLE),
                Stmt::Load => self.creates.insert(Pins::PERMANENT),
                Stmt::Noise(..) => {}
                Stmt::Do(body) => body.iter().for_each(|s| self.expect(s)),
                Stmt::Dynamic(s) => self.expect(s),
            }
        }
    }

    fn expected(stmts: &[Stmt]) -> Found {
        let mut found = Found::default();
        stmts.iter().for_each(|s| found.expect(s));
        found
    }

    /// splitmix64: any seed will do.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    /// Writes statements as SQL: `shape` picks among equivalent forms and quotings, `surface` the case of
    /// keywords and identifiers and the whitespace and comments between tokens.
    struct Render {
        sql: String,
        shape: Rng,
        surface: Rng,
    }

    impl Render {
        fn new(shape: u64, surface: u64) -> Self {
            Render {
                sql: String::new(),
                shape: Rng(shape),
                surface: Rng(surface),
            }
        }

        fn statements(mut self, stmts: &[Stmt]) -> String {
            for (i, stmt) in stmts.iter().enumerate() {
                if i > 0 {
                    self.gap();
                    self.sql.push(';');
                    self.gap();
                }
                self.stmt(stmt, false);
            }
            if self.shape.below(2) == 0 {
                self.sql.push(';');
            }
            self.sql
        }

        /// A keyword or unquoted identifier, in any case.
        fn word(&mut self, word: &str) {
            match self.surface.below(3) {
                0 => self.sql.push_str(&word.to_ascii_lowercase()),
                1 => self.sql.push_str(&word.to_ascii_uppercase()),
                _ => {
                    for c in word.chars() {
                        let upper = self.surface.below(2) == 0;
                        self.sql.push(if upper {
                            c.to_ascii_uppercase()
                        } else {
                            c.to_ascii_lowercase()
                        });
                    }
                }
            }
        }

        /// Whitespace between tokens that must be apart.
        fn space(&mut self) {
            let space = self.surface.pick(&[
                " ",
                "  ",
                "\n",
                "\t",
                "\r\n",
                " /* c */ ",
                " -- c\n",
                " -- c\r",
                "\x0c",
                " /* /* n */ */ ",
                "\n\t ",
            ]);
            self.sql.push_str(space);
        }

        /// Whitespace next to punctuation: maybe none.
        fn gap(&mut self) {
            if self.surface.below(2) == 0 {
                self.space();
            }
        }

        /// Space-separated tokens: words (any case) and literals, quoted names and punctuation (as they are).
        fn words(&mut self, tokens: &str) {
            self.form(tokens, "");
        }

        /// Like [`Self::words`], with `{}` standing for `literal`, which is written as it is.
        fn form(&mut self, tokens: &str, literal: &str) {
            let punctuation = |t: &str| ["(", ")", ",", "=", ";"].contains(&t);
            let mut previous: Option<&str> = None;
            for token in tokens.split(' ') {
                match previous {
                    Some(p) if punctuation(p) || punctuation(token) => self.gap(),
                    Some(_) => self.space(),
                    None => {}
                }
                if token == "{}" {
                    self.sql.push_str(literal);
                } else if token.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
                    self.word(token);
                } else {
                    self.sql.push_str(token);
                }
                previous = Some(token);
            }
        }

        /// `body` (text of statements) as a string literal, quoted so that its value is `body` again.
        fn literal(&mut self, body: &str) -> String {
            let body = format!(" {body} ");
            match self.shape.below(3) {
                0 if !body.contains('\\') => format!("'{}'", body.replace('\'', "''")),
                1 => format!("E'{}'", body.replace('\\', "\\\\").replace('\'', "\\'")),
                _ => {
                    let tag = (0..)
                        .map(|i| match i {
                            0 => "$$".to_owned(),
                            i => format!("$t{i}$"),
                        })
                        .find(|tag| !body.contains(tag.as_str()))
                        .unwrap();
                    format!("{tag}{body}{tag}")
                }
            }
        }

        /// Renders with a fresh text: what `write` wrote.
        fn apart(&mut self, write: impl FnOnce(&mut Self)) -> String {
            let outer = std::mem::take(&mut self.sql);
            write(self);
            std::mem::replace(&mut self.sql, outer)
        }

        fn stmt(&mut self, stmt: &Stmt, pl: bool) {
            let name = |n: &usize| STATEMENT_NAMES[*n].0;
            let select = if pl { "PERFORM" } else { "SELECT" };
            match stmt {
                Stmt::Listen => self.words("LISTEN ch"),
                Stmt::Prepare(n) => {
                    let form = self
                        .shape
                        .pick(&["{} AS SELECT 1", "{} ( int ) AS SELECT $1"]);
                    self.words(&format!("PREPARE {}", form.replace("{}", name(n))));
                }
                Stmt::Execute(n) => {
                    let form = self.shape.pick(&["EXECUTE {}", "EXECUTE {} ( 1 , 'x' )"]);
                    self.words(&form.replace("{}", name(n)));
                }
                Stmt::ExplainExecute(n) => {
                    let form = self.shape.pick(&[
                        "EXPLAIN EXECUTE {}",
                        "EXPLAIN ANALYZE VERBOSE EXECUTE {}",
                        "EXPLAIN ( ANALYZE , COSTS OFF ) EXECUTE {} ( 1 )",
                    ]);
                    self.words(&form.replace("{}", name(n)));
                }
                Stmt::Deallocate(n) => {
                    let form = self.shape.pick(&["DEALLOCATE {}", "DEALLOCATE PREPARE {}"]);
                    self.words(&form.replace("{}", name(n)));
                }
                Stmt::CreateAsExecute(n) => {
                    let form = self.shape.pick(&[
                        "CREATE TABLE t AS EXECUTE {}",
                        "CREATE TABLE IF NOT EXISTS t ( a ) AS EXECUTE {} ( 1 )",
                    ]);
                    self.words(&form.replace("{}", name(n)));
                }
                Stmt::HoldCursor => {
                    let form = self.shape.pick(&[
                        "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
                        "DECLARE c NO SCROLL CURSOR WITH HOLD FOR SELECT 'x'",
                    ]);
                    self.words(form);
                }
                Stmt::Temp => {
                    let form = self.shape.pick(&[
                        "CREATE TEMP TABLE t ( a int )",
                        "CREATE GLOBAL TEMPORARY TABLE t ( a int )",
                        "CREATE OR REPLACE TEMP VIEW v AS SELECT 1",
                        "CREATE TABLE pg_temp.t ( a int )",
                        "SELECT 1 AS a INTO TEMP t",
                    ]);
                    self.words(form);
                }
                Stmt::Advisory => {
                    let call = self.shape.pick(&[
                        "pg_advisory_lock ( 1 )",
                        "pg_catalog.pg_try_advisory_lock ( 1 , 2 )",
                        "\"pg_advisory_lock_shared\" ( 1 )",
                    ]);
                    self.words(&format!("{select} {call}"));
                }
                Stmt::Set(n) => {
                    let form = self
                        .shape
                        .pick(&["SET {} = ", "SET {} TO ", "SET SESSION {} = "]);
                    let value = self.shape.pick(SETTING_VALUES);
                    self.words(&format!("{}{value}", form.replace("{}", SETTING_NAMES[*n])));
                }
                Stmt::Special(n) => self.words(SPECIAL_SETS[*n].0),
                Stmt::Reset(n) => self.words(&format!("RESET {}", SETTING_NAMES[*n])),
                Stmt::SetConfig(n, local) => {
                    let config = CONFIG_NAMES[*n];
                    let name = match self.shape.below(3) {
                        0 => format!("'{config}'"),
                        1 => format!("E'{config}'"),
                        _ => format!("$n${config}$n$"),
                    };
                    let function = self.shape.pick(&["set_config", "pg_catalog.set_config"]);
                    let value =
                        self.shape
                            .pick(&["'v'", "'{\"a\":1}'", "concat ( 'a' , ',' )", "NULL"]);
                    let flag = self
                        .shape
                        .pick(if *local { LOCAL_TRUE } else { LOCAL_FALSE });
                    let call = format!("{function} ( {name} , {value} , {flag} )");
                    let form = if pl {
                        self.shape.pick(&["PERFORM {}", "v := {}"])
                    } else {
                        self.shape.pick(&[
                            "SELECT {}",
                            "SELECT {} , 1",
                            "SELECT * FROM t WHERE {} IS NULL",
                        ])
                    };
                    self.words(&form.replace("{}", &call));
                }
                Stmt::Role => {
                    let form = self.shape.pick(&[
                        "SET ROLE admin",
                        "SET SESSION ROLE admin",
                        "SET role TO admin",
                    ]);
                    self.words(form);
                }
                Stmt::Load => self.words("LOAD 'auto_explain'"),
                Stmt::Noise(kind, soup) => {
                    let soup: Vec<&str> = soup.iter().map(|&w| SOUP[w]).collect();
                    self.noise(*kind, &soup.join(" "), pl);
                }
                Stmt::Do(body) => {
                    let body = self.apart(|r| r.block(body));
                    let literal = self.literal(&body);
                    let form = self.shape.pick(&[
                        "DO {}",
                        "DO LANGUAGE plpgsql {}",
                        "DO {} LANGUAGE plpgsql",
                        "DO {} LANGUAGE 'plpgsql'",
                    ]);
                    self.form(form, &literal);
                }
                Stmt::Dynamic(sql) => {
                    let sql = self.apart(|r| r.stmt(sql, false));
                    let literal = self.literal(&sql);
                    let form = self.shape.pick(&[
                        "EXECUTE {}",
                        "EXECUTE {} INTO v",
                        "EXECUTE {} USING 1",
                        "FOR r IN EXECUTE {} LOOP NULL ; END LOOP",
                        "OPEN c FOR EXECUTE {}",
                    ]);
                    self.form(form, &literal);
                }
            }
        }

        /// A PL/pgSQL block of `body`, each statement maybe in a branch, a loop or a block of its own.
        fn block(&mut self, body: &[Stmt]) {
            if self.shape.below(3) == 0 {
                self.words("DECLARE v int ;");
                self.space();
            }
            self.words("BEGIN");
            for stmt in body {
                self.space();
                let wrap = self.shape.pick(&[
                    "{}",
                    "{}",
                    "IF v THEN {} ; END IF",
                    "IF v THEN NULL ; ELSE {} ; END IF",
                    "LOOP {} ; EXIT ; END LOOP",
                    "<<l>> WHILE true LOOP {} ; END LOOP",
                    "BEGIN {} ; EXCEPTION WHEN others THEN NULL ; END",
                    "CASE v WHEN 1 THEN {} ; END CASE",
                ]);
                let (before, after) = wrap.split_once("{}").unwrap();
                if !before.is_empty() {
                    self.words(before.trim_end());
                    self.space();
                }
                self.stmt(stmt, true);
                if !after.trim().is_empty() {
                    self.gap();
                    self.words(after.trim());
                }
                self.gap();
                self.sql.push(';');
            }
            self.space();
            self.words("END");
        }

        /// A statement whose session state is all in a literal, an identifier or a comment (`soup`).
        fn noise(&mut self, kind: usize, soup: &str, pl: bool) {
            let select = if pl { "PERFORM" } else { "SELECT" };
            let (before, literal, after) = match kind {
                0 => ("SELECT", format!("'{soup} '' {soup}'"), ""),
                1 => ("SELECT", format!("E'{soup} \\' \\\\ {soup}'"), ""),
                2 => ("SELECT", format!("\"{soup} \"\" x\""), "FROM t"),
                3 => ("SELECT 1", format!("-- {soup}\n"), ""),
                4 => ("", format!("/* {soup} /* {soup} */ {soup} */"), "SELECT 1"),
                5 => ("SELECT", format!("$${soup} ' \" \\ $$"), ""),
                6 => ("SELECT", format!("$q${soup} $ ' $q$"), ""),
                7 => ("UPDATE t SET a =", format!("'{soup}'"), "WHERE b = 1"),
                8 => ("INSERT INTO t VALUES (", format!("'{soup}'"), ")"),
                9 => (select, format!("set_config('a.b', '{soup}', true)"), ""),
                10 => ("SET LOCAL a.b = 1", String::new(), ""),
                11 => ("SET LOCAL ROLE admin", String::new(), ""),
                12 => (select, "pg_advisory_xact_lock(1)".to_owned(), ""),
                13 => ("CREATE TEMP TABLE t ( a int ) ON COMMIT DROP", String::new(), ""),
                14 => (
                    "CREATE FUNCTION f ( ) RETURNS void AS",
                    format!(
                        "$f$ BEGIN {soup} ; LISTEN x ; PERFORM set_config('a.b', 'v', false) ; END $f$"
                    ),
                    "LANGUAGE plpgsql",
                ),
                15 => ("SELECT CASE WHEN true THEN 1 ELSE 2 END", String::new(), ""),
                16 => ("UPDATE t SET a = 1 , b = 2", String::new(), ""),
                // SQL only.
                17 => ("EXECUTE p ( 1 )", String::new(), ""),
                18 => ("DEALLOCATE p", String::new(), ""),
                19 => ("PREPARE TRANSACTION", format!("'{soup}'"), ""),
                // PL/pgSQL only.
                20 => ("RAISE NOTICE", format!("'{soup}'"), ""),
                21 => ("GRANT EXECUTE ON FUNCTION f ( ) TO u", String::new(), ""),
                _ => ("v :=", format!("'{soup}'"), ""),
            };
            if !before.is_empty() {
                self.words(before);
                self.space();
            }
            self.sql.push_str(&literal);
            if !after.is_empty() {
                self.space();
                self.words(after);
            }
        }
    }

    proptest! {
        #![proptest_config(crate::fuzzing::config())]

        #[test]
        fn total_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = scan(&bytes);
            let _ = message_effects(b'Q', Some(&bytes));
            let _ = message_effects(b'P', Some(&bytes));
        }

        #[test]
        fn total_on_almost_sql(sql in almost_sql(), tag in prop::sample::select(&b"QPB"[..])) {
            let _ = scan(&sql);
            let _ = message_effects(tag, Some(&sql));
        }

        /// Bytes in a dollar-quoted literal of another statement, or in a `--` comment, are inert.
        #[test]
        fn quoted_bytes_create_nothing(sql in almost_sql()) {
            let mut in_dollars = b"SELECT $zz$".to_vec();
            in_dollars.extend(sql.iter().copied().filter(|&b| b != b'z'));
            in_dollars.extend_from_slice(b"$zz$");
            prop_assert_eq!(scan(&in_dollars), Effects::default());
            let mut in_comment = b"SELECT 1 --".to_vec();
            in_comment.extend(sql.iter().copied().filter(|&b| b != b'\n' && b != b'\r'));
            prop_assert_eq!(scan(&in_comment), Effects::default());
        }

        /// Generated SQL: the scan finds every pin, setting and reserved name its statements have, and no other.
        #[test]
        fn generated_sql_has_exactly_its_effects(
            stmts in statements(false),
            shape in any::<u64>(),
            surface in any::<u64>(),
        ) {
            let sql = Render::new(shape, surface).statements(&stmts);
            let effects = scan(sql.as_bytes());
            prop_assert_eq!(Found::of(&effects), expected(&stmts), "{}", sql);
            prop_assert_eq!(effects.clears, Pins::default(), "{}", sql);
            prop_assert!(effects.settings.is_none_or(|c| !c.all), "{}", sql);
        }

        /// A plain string that ends in a backslash ends there, unless the client turned standard_conforming_strings
        /// off: the statements after it are found either way (with what the other reading sees besides).
        #[test]
        fn backslash_before_a_quote_hides_nothing(
            stmts in statements(false),
            shape in any::<u64>(),
            surface in any::<u64>(),
        ) {
            let sql = format!("SELECT 'C:\\'; {}", Render::new(shape, surface).statements(&stmts));
            let found = Found::of(&scan(sql.as_bytes()));
            let expected = expected(&stmts);
            prop_assert!(found.creates.contains(expected.creates), "{}", sql);
            prop_assert!(found.names.is_superset(&expected.names), "{}", sql);
            prop_assert!(found.reserved || !expected.reserved, "{}", sql);
        }

        /// Keywords, names and soup inside literals, identifiers, comments and function bodies create nothing.
        #[test]
        fn noise_creates_nothing(
            stmts in statements(true),
            shape in any::<u64>(),
            surface in any::<u64>(),
        ) {
            let sql = Render::new(shape, surface).statements(&stmts);
            prop_assert_eq!(scan(sql.as_bytes()), Effects::default(), "{}", sql);
        }

        /// The same statements in other case and spacing have the same effects.
        #[test]
        fn case_and_spacing_do_not_matter(
            stmts in statements(false),
            shape in any::<u64>(),
            surfaces in any::<(u64, u64)>(),
        ) {
            let one = Render::new(shape, surfaces.0).statements(&stmts);
            let other = Render::new(shape, surfaces.1).statements(&stmts);
            prop_assert_eq!(scan(one.as_bytes()), scan(other.as_bytes()), "{}\n---\n{}", one, other);
        }
    }
}
