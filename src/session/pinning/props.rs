//! Property tests (`props::` selects them for scripts/fuzz.sh): the scan is total on any bytes, and on SQL
//! generated with known effects it finds exactly those, whatever the case, spacing, quoting and nesting.

use super::{message_effects, scan, Effects, Pins, MAX_LEVEL};
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

/// A statement of SQL (`pl` false) or of PL/pgSQL, with DO blocks, and in PL/pgSQL EXECUTE, nested `levels` deep
/// at most.
fn stmt(pl: bool, levels: u32, noise_only: bool) -> BoxedStrategy<Stmt> {
    let own_noise = if pl { NOISE_PL } else { NOISE_SQL };
    let noise = prop_oneof![noise(NOISE_ANY), noise(own_noise)];
    let leaf = if noise_only {
        noise.boxed()
    } else {
        prop_oneof![2 => state(pl), 1 => noise].boxed()
    };
    if levels == 0 {
        return leaf;
    }
    let body_len = if pl { 1..3 } else { 1..4 };
    let body = prop::collection::vec(stmt(true, levels - 1, noise_only), body_len);
    if !pl {
        return prop_oneof![4 => leaf, 1 => body.prop_map(Stmt::Do)].boxed();
    }
    let dynamic = stmt(false, levels - 1, noise_only).prop_map(|s| Stmt::Dynamic(Box::new(s)));
    prop_oneof![4 => leaf, 1 => body.prop_map(Stmt::Do), 1 => dynamic].boxed()
}

/// SQL text of one to five statements, nested up to the scan's depth.
fn statements(noise_only: bool) -> impl Strategy<Value = Vec<Stmt>> {
    prop::collection::vec(stmt(false, MAX_LEVEL as u32, noise_only), 1..6)
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
            // Refused or renamed: either way, no `pgherd_` name reaches the server as written.
            reserved: effects.reserved || !effects.renames.is_empty(),
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
            13 => (
                "CREATE TEMP TABLE t ( a int ) ON COMMIT DROP",
                String::new(),
                "",
            ),
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
        let (mut a, mut b) = (scan(one.as_bytes()), scan(other.as_bytes()));
        // Where renamed names are depends on the spacing; how many there are does not.
        prop_assert_eq!(a.renames.len(), b.renames.len(), "{}\n---\n{}", one, other);
        a.renames.clear();
        b.renames.clear();
        prop_assert_eq!(a, b, "{}\n---\n{}", one, other);
    }

    /// Renaming the `pgherd_` names of generated SQL leaves nothing to rename or refuse at the top level, and
    /// changes nothing else the scan finds.
    #[test]
    fn renamed_names_are_the_clients_own(
        stmts in statements(false),
        shape in any::<u64>(),
        surface in any::<u64>(),
    ) {
        let sql = Render::new(shape, surface).statements(&stmts);
        let before = scan(sql.as_bytes());
        if before.renames.is_empty() || before.reserved {
            // Most generated SQL names no such statement: nothing to check.
            return Ok(());
        }
        let mut body = sql.clone().into_bytes();
        body.push(0);
        let renamed = super::renamed(b'Q', &body, &before.renames);
        let renamed = renamed.ok_or_else(|| TestCaseError::fail(format!("not renamed: {sql}")))?;
        let after = scan(&renamed[..renamed.len() - 1]);
        prop_assert!(after.renames.is_empty() && !after.reserved, "{}", String::from_utf8_lossy(&renamed));
        prop_assert_eq!((after.creates, after.clears), (before.creates, before.clears), "{}", sql);
    }
}
