//! Chaos at the wire. Hostile clients log in over raw TCP (trust auth) and send random frames, random SQL built
//! from SQL's tricky tokens (by the simple and the extended protocol, messages in random orders), and hang up in
//! the middle of a message or of a transaction, against pgherd in transaction mode (pool_size 4, 2 workers) and a
//! real PostgreSQL. Meanwhile two well-behaved tokio-postgres clients check every transaction they run: one with
//! settings and prepared statements of its own must see exactly those, one that set nothing must see
//! PostgreSQL's defaults, and neither may ever see a hostile client's values. Some hostile clients log in with the
//! very settings the first one has, so they share its servers. Throughout and afterwards: pgherd still runs and
//! serves a fresh client, pool_size clients can each hold a transaction at once (every unit of pool budget came
//! back), and pgherd never has more than pool_size servers open (pg_stat_activity, polled directly on PostgreSQL;
//! a backend still exiting after pgherd closed its connection is reported but not counted). A crash of PostgreSQL
//! itself is reported as such.
//!
//! Everything is bounded in count and time, and the bytes are deterministic for a seed: each hostile session's
//! come from the seed, its lane and its number alone. `PGHERD_FUZZ_SEED=<u64>` picks another seed (the seed in use
//! is printed and named in every failure, with the sessions that were under way when pgherd died).
//! `PGHERD_CHAOS_SKIP_KNOWN=1` leaves out the SQL that hits the known crashes, to look for others while those are
//! being fixed. The known crashes have small reproducers at the end of the file, each compared with what
//! PostgreSQL itself answers.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{fixture, message, try_connect, Fixture, Pgherd};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::types::Type;

/// The seed when PGHERD_FUZZ_SEED is not set.
const DEFAULT_SEED: u64 = 0x00c4_a05d_eadb_eef5;
/// Servers for the one pool: more hostile lanes at once than this would starve the victims by design.
const POOL_SIZE: usize = 4;
/// Hostile clients connected at once.
const LANES: usize = 3;
/// Hostile sessions per lane, one after another.
const SESSIONS_PER_LANE: usize = 150;
/// Hostile sessions of the test that runs them one at a time.
const SEQUENTIAL_SESSIONS: usize = 200;
/// Most steps in a hostile session.
const MAX_STEPS: usize = 24;
/// The chaos phase stops here even if sessions are left (a slow machine); the rest are skipped.
const CHAOS_DEADLINE: Duration = Duration::from_secs(20);
/// Longest wait for any one answer.
const ANSWER: Duration = Duration::from_secs(5);

/// What the tenant victim set for itself, and what it must see in every transaction.
const VICTIM_APP: &str = "chaos-victim";
const VICTIM_PATH: &str = "victim_schema, public";
const VICTIM_TENANT: &str = "42";

// ---------------------------------------------------------------------------------------------------------------
// Seeded randomness
// ---------------------------------------------------------------------------------------------------------------

fn seed() -> u64 {
    match std::env::var("PGHERD_FUZZ_SEED") {
        Ok(text) if !text.trim().is_empty() => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("PGHERD_FUZZ_SEED={text:?} is not a u64")),
        _ => DEFAULT_SEED,
    }
}

fn skip_known() -> bool {
    std::env::var("PGHERD_CHAOS_SKIP_KNOWN").is_ok_and(|v| !v.is_empty() && v != "0")
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// xorshift64*: small, fast, and plenty for picking among tokens.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(splitmix(seed) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True `percent` times in a hundred.
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Frontend messages
// ---------------------------------------------------------------------------------------------------------------

fn query(sql: &[u8]) -> Vec<u8> {
    message(b'Q', &[sql, b"\0"])
}

fn parse(name: &[u8], sql: &[u8], types: &[u32]) -> Vec<u8> {
    let mut tail = (types.len() as u16).to_be_bytes().to_vec();
    for t in types {
        tail.extend_from_slice(&t.to_be_bytes());
    }
    message(b'P', &[name, b"\0", sql, b"\0", &tail])
}

fn bind(
    portal: &[u8],
    statement: &[u8],
    formats: &[i16],
    params: &[Option<&[u8]>],
    results: &[i16],
) -> Vec<u8> {
    let mut tail = (formats.len() as u16).to_be_bytes().to_vec();
    for f in formats {
        tail.extend_from_slice(&f.to_be_bytes());
    }
    tail.extend_from_slice(&(params.len() as u16).to_be_bytes());
    for p in params {
        match p {
            Some(v) => {
                tail.extend_from_slice(&(v.len() as i32).to_be_bytes());
                tail.extend_from_slice(v);
            }
            None => tail.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    tail.extend_from_slice(&(results.len() as u16).to_be_bytes());
    for r in results {
        tail.extend_from_slice(&r.to_be_bytes());
    }
    message(b'B', &[portal, b"\0", statement, b"\0", &tail])
}

fn describe(kind: u8, name: &[u8]) -> Vec<u8> {
    message(b'D', &[&[kind], name, b"\0"])
}

fn execute(portal: &[u8], max_rows: i32) -> Vec<u8> {
    message(b'E', &[portal, b"\0", &max_rows.to_be_bytes()])
}

fn close(kind: u8, name: &[u8]) -> Vec<u8> {
    message(b'C', &[&[kind], name, b"\0"])
}

fn sync() -> Vec<u8> {
    message(b'S', &[])
}

fn flush() -> Vec<u8> {
    message(b'H', &[])
}

/// Bytes for a failure message: printable ASCII as is, the rest escaped, long runs shortened.
fn show(bytes: &[u8]) -> String {
    let text = bytes.escape_ascii().to_string();
    if text.len() <= 240 {
        return text;
    }
    let head: String = text.chars().take(160).collect();
    let tail: String = {
        let chars: Vec<char> = text.chars().collect();
        chars[chars.len() - 60..].iter().collect()
    };
    format!("{head}...({} bytes)...{tail}", bytes.len())
}

// ---------------------------------------------------------------------------------------------------------------
// Hostile SQL
// ---------------------------------------------------------------------------------------------------------------

/// Values hostile clients give the settings the victims watch.
const HOSTILE_TENANTS: [&str; 3] = ["666", "13", "evil"];

/// A statement that tries to change what others see, or that the pooler has to understand.
fn hostile_statement(rng: &mut Rng) -> String {
    let tenant = *rng.pick(&HOSTILE_TENANTS);
    let known = !skip_known();
    let s: &str = match rng.below(66) {
        0 => "SET search_path = evil, public",
        1 => "SET SESSION search_path TO evil",
        2 => return format!("SET app.tenant = '{tenant}'"),
        3 => return format!("SET SESSION app.tenant TO '{tenant}'"),
        4 => return format!("SET LOCAL app.tenant = '{tenant}'"),
        5 => "SET application_name = 'hostile'",
        6 => "SET SESSION application_name TO hostile",
        7 => "RESET app.tenant",
        8 => "RESET search_path",
        9 => "RESET ALL",
        10 if known => "RESET *",
        11 if known => "SET * TO 1",
        12 if known => "SET SESSION TIME ZONE 0",
        13 if known => "SET SESSION XML OPTION DOCUMENT",
        14 => "SET TIME ZONE 'UTC'",
        15 => "SET XML OPTION CONTENT",
        16 => "SET SCHEMA 'evil'",
        17 => "SET NAMES 'UTF8'",
        18 => "PREPARE p1 AS SELECT 1",
        19 => "EXECUTE p1",
        20 => "DEALLOCATE p1",
        21 => "DEALLOCATE ALL",
        22 => "DISCARD ALL",
        23 => "DISCARD TEMP",
        24 => "LISTEN chaos",
        25 => "UNLISTEN *",
        26 => "DO $$BEGIN PERFORM set_config('search_path', 'evil', false); END$$",
        27 => {
            return format!(
                "DO $x$ BEGIN PERFORM set_config('app.tenant', '{tenant}', false); END $x$"
            )
        }
        28 => "DO $$BEGIN EXECUTE 'SET application_name = ''hostile'''; END$$",
        29 => return format!("DO $body$ BEGIN SET app.tenant = '{tenant}'; END $body$"),
        30 => "DO $$BEGIN EXECUTE 'SET search_path = evil'; END$$",
        31 => return format!("SELECT set_config('app.tenant', '{tenant}', false)"),
        32 => "SELECT set_config('search_path', 'evil', false)",
        33 => "SELECT pg_catalog.set_config('application_name', 'hostile', false)",
        34 => "SELECT set_config('app.tenant', 'local', true)",
        35 => "BEGIN",
        36 => "COMMIT",
        37 => "ROLLBACK",
        38 => return format!("BEGIN; SET app.tenant = '{tenant}'"),
        39 => return format!("SET \"app.tenant\" = '{tenant}'"),
        40 => "SET app.\"tenant\" = 'evil'",
        41 => "SET \"search_path\" TO evil",
        42 => "RESET \"app.tenant\"",
        43 => "SET pgherd_x.y = 1",
        44 => "PREPARE pgherd_none AS SELECT 2",
        45 => "EXECUTE pgherd_none",
        46 => "DEALLOCATE pgherd_0123456789abcdef0123456789abcdef",
        47 => return format!("SET app.{} = '1'", "x".repeat(64 + rng.below(300))),
        48 => return format!("SELECT 1 AS {}", "y".repeat(100 + rng.below(5000))),
        49 => "CREATE TEMP TABLE chaos_t (a int)",
        50 => "CREATE TEMP TABLE chaos_d (a int) ON COMMIT DROP",
        51 => "SELECT current_setting('app.tenant', true)",
        52 => "SELECT v FROM whoami",
        53 => "SELECT pg_sleep(0.02)",
        54 => "SELECT name FROM pg_prepared_statements",
        55 => "SELECT E'\\'' || $$;$$ || $t$ '; SET app.tenant = 1 $t$ AS x",
        56 => "SHOW app.tenant",
        57 => return format!("SET app.tenant = '{tenant}'; SELECT 1/0"),
        58 => {
            return format!("SET SESSION search_path = evil; SET app.tenant = '{tenant}'; COMMIT")
        }
        59 => "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        60 => "SET statement_timeout = '3s'",
        61 => "/* SET app.tenant = 1 */ SET search_path = evil -- ; RESET ALL",
        62 => "SELECT 1; SET app.tenant = 'evil'; SELECT 2",
        // With standard_conforming_strings on, '\' is a whole literal: the SET is a statement of its own.
        63 => return format!("SELECT '\\'; SET app.tenant = '{tenant}'; SELECT ''"),
        _ => "SELECT 1",
    };
    s.to_owned()
}

/// Tokens for mutations and token soup.
const TOKENS: &[&str] = &[
    "'",
    "''",
    "'x'",
    "E'",
    "E'\\''",
    "E'\\\\'",
    "$$",
    "$x$",
    "$1",
    "$",
    "--",
    "--\n",
    "/*",
    "*/",
    "*",
    ".",
    ";",
    ",",
    "(",
    ")",
    "=",
    "\"",
    "\"\"",
    "SET",
    "RESET",
    "SESSION",
    "LOCAL",
    "TO",
    "ALL",
    "TIME",
    "ZONE",
    "XML",
    "OPTION",
    "SCHEMA",
    "NAMES",
    "ROLE",
    "AUTHORIZATION",
    "PREPARE",
    "EXECUTE",
    "DEALLOCATE",
    "DISCARD",
    "LISTEN",
    "UNLISTEN",
    "DO",
    "BEGIN",
    "COMMIT",
    "SELECT",
    "AS",
    "set_config",
    "set_config(",
    "current_setting(",
    "search_path",
    "app.tenant",
    "application_name",
    "app",
    "tenant",
    "evil",
    "'666'",
    "pgherd_",
    "pgherd_none",
    "TRANSACTION",
    "CHARACTERISTICS",
    "\0",
    "\n",
    " ",
    "DEFAULT",
    "FROM",
    "CURRENT",
];

/// Tokens left out with PGHERD_CHAOS_SKIP_KNOWN: with them, token soup and mutations make `SET *`, `RESET *`
/// and `SET SESSION TIME ZONE`/`XML OPTION` (known crashes).
const KNOWN_CRASH_TOKENS: &[&str] = &["*", "*/", "SESSION", "TIME", "XML"];

fn token(rng: &mut Rng) -> Vec<u8> {
    match rng.below(40) {
        0 => "z".repeat(60 + rng.below(2000)).into_bytes(),
        1 => vec![0xff, 0xfe],
        2 => {
            let tenant = *rng.pick(&HOSTILE_TENANTS);
            format!("'{tenant}'").into_bytes()
        }
        _ => loop {
            let t = *rng.pick(TOKENS);
            if !(skip_known() && KNOWN_CRASH_TOKENS.contains(&t)) {
                return t.as_bytes().to_vec();
            }
        },
    }
}

/// SQL text: hostile statements, mutated ones, or token soup. With PGHERD_CHAOS_SKIP_KNOWN, every `*` that does
/// not open a comment becomes `+`: a `*` word after SET or RESET is a known crash.
fn random_sql(rng: &mut Rng) -> Vec<u8> {
    let mut sql = any_sql(rng);
    if skip_known() {
        for i in 0..sql.len() {
            if sql[i] == b'*' && (i == 0 || sql[i - 1] != b'/') {
                sql[i] = b'+';
            }
        }
    }
    sql
}

fn any_sql(rng: &mut Rng) -> Vec<u8> {
    match rng.below(10) {
        0..=3 => {
            let n = 1 + rng.below(3);
            let parts: Vec<String> = (0..n).map(|_| hostile_statement(rng)).collect();
            parts.join("; ").into_bytes()
        }
        4..=7 => {
            let mut words: Vec<Vec<u8>> = hostile_statement(rng)
                .split(' ')
                .map(|w| w.as_bytes().to_vec())
                .collect();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(words.len() + 1);
                match rng.below(3) {
                    0 if at < words.len() => {
                        words.remove(at);
                    }
                    1 if at < words.len() => words[at] = token(rng),
                    _ => words.insert(at, token(rng)),
                }
            }
            words.join(&b" "[..])
        }
        _ => {
            let mut sql = Vec::new();
            for _ in 0..1 + rng.below(16) {
                sql.extend(token(rng));
                let separator = *rng.pick(&["", " ", " ", "\n"]);
                sql.extend_from_slice(separator.as_bytes());
            }
            sql
        }
    }
}

fn statement_name(rng: &mut Rng) -> Vec<u8> {
    match rng.below(14) {
        0..=2 => Vec::new(),
        3 => b"s0".to_vec(),
        4 => b"s1".to_vec(),
        5 => b"p1".to_vec(),
        6 => b"pgherd_none".to_vec(),
        7 => b"pgherd_0123456789abcdef0123456789abcdef".to_vec(),
        8 => format!("pgherd_{:032x}", rng.next()).into_bytes(),
        9 => "n".repeat(900 + rng.below(1400)).into_bytes(),
        10 => vec![0xff, b'x', 0xfe],
        11 => b"S_1".to_vec(),
        _ => format!("h{}", rng.below(4)).into_bytes(),
    }
}

fn portal_name(rng: &mut Rng) -> Vec<u8> {
    match rng.below(6) {
        0..=2 => Vec::new(),
        3 => b"c1".to_vec(),
        4 => b"pgherd_p".to_vec(),
        _ => "q".repeat(1000 + rng.below(1500)).into_bytes(),
    }
}

fn random_param(rng: &mut Rng) -> Option<Vec<u8>> {
    match rng.below(6) {
        0 => None,
        1 => Some(b"1".to_vec()),
        2 => Some(b"evil".to_vec()),
        3 => Some(vec![0, 0, 0, 7]),
        _ => {
            let n = rng.below(12);
            Some(rng.bytes(n))
        }
    }
}

fn random_bind(rng: &mut Rng) -> Vec<u8> {
    let portal = portal_name(rng);
    let statement = statement_name(rng);
    if rng.chance(15) {
        // Names, then random bytes where the counts should be.
        let n = rng.below(24);
        let junk = rng.bytes(n);
        return message(b'B', &[&portal, b"\0", &statement, b"\0", &junk]);
    }
    let formats: Vec<i16> = (0..rng.below(3))
        .map(|_| *rng.pick(&[0, 1, 2, -1]))
        .collect();
    let params: Vec<Option<Vec<u8>>> = (0..rng.below(4)).map(|_| random_param(rng)).collect();
    let params: Vec<Option<&[u8]>> = params.iter().map(|p| p.as_deref()).collect();
    let results: Vec<i16> = (0..rng.below(3)).map(|_| *rng.pick(&[0, 1, 3])).collect();
    bind(&portal, &statement, &formats, &params, &results)
}

/// One extended-protocol message.
fn random_extended(rng: &mut Rng) -> Vec<u8> {
    match rng.below(100) {
        0..=24 => {
            let types: Vec<u32> = (0..rng.below(3))
                .map(|_| *rng.pick(&[0, 23, 25, 0xdead_beef]))
                .collect();
            parse(&statement_name(rng), &random_sql(rng), &types)
        }
        25..=44 => random_bind(rng),
        45..=54 => {
            let kind = *rng.pick(b"SSPX");
            let name = if kind == b'P' {
                portal_name(rng)
            } else {
                statement_name(rng)
            };
            describe(kind, &name)
        }
        55..=69 => execute(&portal_name(rng), *rng.pick(&[0, 1, -1, 2])),
        70..=79 => {
            let kind = *rng.pick(b"SSPY");
            let name = if kind == b'P' {
                portal_name(rng)
            } else {
                statement_name(rng)
            };
            close(kind, &name)
        }
        80..=94 => sync(),
        _ => flush(),
    }
}

/// A whole extended round that runs hostile SQL: Parse, Bind, Describe, Execute, maybe Close, then Sync (or not).
fn extended_round(rng: &mut Rng) -> Vec<u8> {
    let name = statement_name(rng);
    let sql = if rng.chance(70) {
        hostile_statement(rng).into_bytes()
    } else {
        random_sql(rng)
    };
    let mut out = parse(&name, &sql, &[]);
    out.extend(bind(b"", &name, &[], &[], &[]));
    if rng.chance(50) {
        out.extend(describe(b'P', b""));
    }
    out.extend(execute(b"", 0));
    if rng.chance(30) {
        out.extend(close(b'S', &name));
    }
    out.extend(if rng.chance(85) { sync() } else { flush() });
    out
}

/// A validly framed message of any type, with a random body.
fn random_frame(rng: &mut Rng) -> Vec<u8> {
    let tag = if rng.chance(70) {
        *rng.pick(b"QPBDECSFHXcdfp")
    } else {
        rng.next() as u8
    };
    let n = if rng.chance(10) {
        rng.below(3000)
    } else {
        rng.below(40)
    };
    let body = rng.bytes(n);
    message(tag, &[&body])
}

enum Step {
    Send(Vec<u8>, String),
    Pause(u64),
}

/// How a hostile session ends.
enum End {
    /// Sync, ROLLBACK and a marker query; waits for the marker (or for pgherd to close), then Terminate.
    Graceful,
    /// Closes the socket (FIN) without a word.
    Drop,
    /// Closes with a reset (SO_LINGER 0).
    Reset,
    /// Sends the first bytes of a message, then closes.
    MidMessage(Vec<u8>),
}

struct Plan {
    lane: usize,
    index: usize,
    startup: Vec<(String, String)>,
    steps: Vec<Step>,
    end: End,
}

impl Plan {
    fn marker(&self) -> String {
        format!("chaos-done-{}-{}", self.lane, self.index)
    }

    fn describe(&self) -> String {
        let mut out = format!(
            "  session lane {} #{}, startup {:?}\n",
            self.lane, self.index, self.startup
        );
        for step in &self.steps {
            match step {
                Step::Send(_, what) => out.push_str(&format!("    {what}\n")),
                Step::Pause(ms) => out.push_str(&format!("    (pause {ms} ms)\n")),
            }
        }
        out.push_str(&match &self.end {
            End::Graceful => "    end: Sync, ROLLBACK, marker query, Terminate\n".to_owned(),
            End::Drop => "    end: close\n".to_owned(),
            End::Reset => "    end: reset (SO_LINGER 0)\n".to_owned(),
            End::MidMessage(b) => format!("    end: close after the partial message {}\n", show(b)),
        });
        out
    }
}

/// What a message sent by a hostile client was, for a failure report.
fn describe_message(bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut at = 0;
    while at + 5 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
        let end = (at + 1 + len).min(bytes.len());
        if !out.is_empty() {
            out.push_str(" + ");
        }
        out.push_str(&format!(
            "{}[{}]",
            bytes[at].escape_ascii(),
            show(&bytes[at + 5..end])
        ));
        at = end;
    }
    out
}

/// A short session of SQL that SETs things (simple and extended protocol), ended gracefully: for checking what
/// a session leaves on its server. A function of the seed and the index only.
fn settings_plan(seed: u64, index: usize) -> Plan {
    let mut rng = Rng::new(seed ^ splitmix(0x5e77_1265 << 32 | index as u64));
    let startup = startup_params(&mut rng);
    let mut steps = Vec::new();
    for _ in 0..1 + rng.below(4) {
        let bytes = match rng.below(10) {
            0..=4 => query(hostile_statement(&mut rng).as_bytes()),
            5..=6 => query(&random_sql(&mut rng)),
            _ => extended_round(&mut rng),
        };
        let what = describe_message(&bytes);
        steps.push(Step::Send(bytes, what));
    }
    Plan {
        lane: LANES,
        index,
        startup,
        steps,
        end: End::Graceful,
    }
}

/// A hostile client's startup parameters: none, client_encoding (as drivers send), its own application_name,
/// or exactly the tenant victim's settings.
fn startup_params(rng: &mut Rng) -> Vec<(String, String)> {
    let mut startup = vec![
        ("user".to_owned(), "app".to_owned()),
        ("database".to_owned(), "app".to_owned()),
    ];
    match rng.below(4) {
        0 => {}
        1 => startup.push(("client_encoding".into(), "UTF8".into())),
        2 => startup.push(("application_name".into(), "hostile".into())),
        _ => {
            // Looks exactly like the tenant victim after its SETs: same settings, same servers.
            startup.push(("client_encoding".into(), "UTF8".into()));
            startup.push(("application_name".into(), VICTIM_APP.into()));
            startup.push((
                "options".into(),
                "-c search_path=victim_schema,\\ public -c app.tenant=42".into(),
            ));
        }
    }
    startup
}

/// The session `index` of lane `lane`: a function of the seed, the lane and the index only.
fn plan(seed: u64, lane: usize, index: usize) -> Plan {
    let mut rng = Rng::new(seed ^ splitmix((lane as u64) << 32 | index as u64));
    let startup = startup_params(&mut rng);
    let mut steps = Vec::new();
    let in_transaction = rng.chance(15);
    for _ in 0..1 + rng.below(MAX_STEPS) {
        let bytes = match rng.below(100) {
            0..=29 => query(&random_sql(&mut rng)),
            30..=64 => random_extended(&mut rng),
            65..=79 => extended_round(&mut rng),
            80..=87 => random_frame(&mut rng),
            88..=95 => query(hostile_statement(&mut rng).as_bytes()),
            96..=98 => {
                steps.push(Step::Pause(1 + rng.below(20) as u64));
                continue;
            }
            _ => {
                // SQL too long to be scanned (above 48 KiB).
                let sql = format!("SELECT '{}' AS long", "w".repeat(50 * 1024));
                query(sql.as_bytes())
            }
        };
        let what = describe_message(&bytes);
        steps.push(Step::Send(bytes, what));
    }
    if in_transaction {
        let tenant = *rng.pick(&HOSTILE_TENANTS);
        let sql = format!("BEGIN; SET search_path = evil; SET app.tenant = '{tenant}'");
        steps.push(Step::Send(query(sql.as_bytes()), format!("Q[{sql}]")));
        steps.push(Step::Pause(rng.below(30) as u64));
    }
    let end = match rng.below(10) {
        0..=4 if !in_transaction => End::Graceful,
        0..=1 => End::Graceful,
        2..=4 => End::Drop,
        5..=6 => End::Reset,
        _ => {
            let whole = match rng.below(3) {
                0 => query(&random_sql(&mut rng)),
                1 => extended_round(&mut rng),
                _ => random_extended(&mut rng),
            };
            let cut = 1 + rng.below(whole.len() - 1);
            End::MidMessage(whole[..cut].to_vec())
        }
    };
    Plan {
        lane,
        index,
        startup,
        steps,
        end,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Running hostile sessions
// ---------------------------------------------------------------------------------------------------------------

/// Reads one backend message; `None` at EOF.
async fn read_message(stream: &mut TcpStream) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut header = [0u8; 5];
    match tokio::time::timeout(ANSWER, stream.read_exact(&mut header)).await {
        Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(_)) => {}
    }
    let len = u32::from_be_bytes(header[1..5].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len.saturating_sub(4)];
    match tokio::time::timeout(ANSWER, stream.read_exact(&mut body)).await {
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Ok(Err(e)) => Err(e),
        Ok(Ok(_)) => Ok(Some((header[0], body))),
    }
}

/// The SQLSTATE of an ErrorResponse body.
fn sqlstate(body: &[u8]) -> String {
    body.split(|&b| b == 0)
        .find_map(|f| f.strip_prefix(b"C"))
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .unwrap_or_default()
}

/// The message text of an ErrorResponse body.
fn error_text(body: &[u8]) -> String {
    body.split(|&b| b == 0)
        .find_map(|f| f.strip_prefix(b"M"))
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .unwrap_or_default()
}

/// Logs in with trust auth and reads up to the first ReadyForQuery.
async fn login(port: u16, params: &[(String, String)]) -> Result<TcpStream, String> {
    let pairs: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .write_all(&common::startup_packet(3 << 16, &pairs))
        .await
        .map_err(|e| format!("send startup: {e}"))?;
    loop {
        match read_message(&mut stream).await {
            Ok(Some((b'Z', _))) => return Ok(stream),
            Ok(Some((b'E', body))) => {
                return Err(format!(
                    "login refused: {} {}",
                    sqlstate(&body),
                    error_text(&body)
                ))
            }
            Ok(Some((b'R', body))) if body[..4] != [0, 0, 0, 0] => {
                return Err(format!("authentication asked: {body:?} (trust expected)"))
            }
            Ok(Some(_)) => {}
            Ok(None) => return Err("closed during login".into()),
            Err(e) => return Err(format!("login: {e}")),
        }
    }
}

/// What the reader of a hostile session saw.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Heard {
    marker: bool,
    closed: bool,
}

/// Reads and drops everything pgherd sends, noting the marker and the end.
async fn drain(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    marker: Vec<u8>,
    tx: tokio::sync::watch::Sender<Heard>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut window: Vec<u8> = Vec::new();
    let mut heard = Heard::default();
    loop {
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => {
                heard.closed = true;
                let _ = tx.send(heard);
                return;
            }
            Ok(n) => {
                if !heard.marker {
                    window.extend_from_slice(&buf[..n]);
                    if window.windows(marker.len()).any(|w| w == marker) {
                        heard.marker = true;
                        let _ = tx.send(heard);
                    }
                    let keep = window.len().min(marker.len());
                    window.drain(..window.len() - keep);
                }
            }
        }
    }
}

/// What went wrong in a hostile session that pgherd should have handled.
enum Trouble {
    /// pgherd could not be reached or refused the login: it is probably gone.
    Login(String),
    /// No answer to Sync + ROLLBACK + the marker query, and no close either.
    Hang(String),
}

/// Runs a hostile session; Ok(true) when it ended gracefully and pgherd answered everything it sent.
async fn run_session(port: u16, plan: &Plan) -> Result<bool, Trouble> {
    let stream = login(port, &plan.startup).await.map_err(Trouble::Login)?;
    if matches!(plan.end, End::Reset) {
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .map_err(|e| Trouble::Login(format!("SO_LINGER: {e}")))?;
    }
    let (rd, mut wr) = stream.into_split();
    let (tx, mut rx) = tokio::sync::watch::channel(Heard::default());
    let reader = tokio::spawn(drain(rd, plan.marker().into_bytes(), tx));
    let mut open = true;
    for step in &plan.steps {
        match step {
            Step::Send(bytes, _) => {
                // A write that fails means pgherd closed the connection (e.g. after a protocol violation).
                match tokio::time::timeout(ANSWER, wr.write_all(bytes)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => {
                        open = false;
                        break;
                    }
                    Err(_) => {
                        reader.abort();
                        return Err(Trouble::Hang(format!(
                            "a write of {} bytes stalled for {ANSWER:?}",
                            bytes.len()
                        )));
                    }
                }
            }
            Step::Pause(ms) => tokio::time::sleep(Duration::from_millis(*ms)).await,
        }
    }
    let result = match (&plan.end, open) {
        (_, false) => Ok(false),
        (End::Graceful, true) => {
            let mut tail = sync();
            tail.extend(query(b"ROLLBACK"));
            tail.extend(query(format!("SELECT '{}'", plan.marker()).as_bytes()));
            if wr.write_all(&tail).await.is_ok() {
                let answered = tokio::time::timeout(ANSWER, rx.wait_for(|h| h.marker || h.closed))
                    .await
                    .is_ok();
                match answered {
                    true => {
                        let _ = wr.write_all(&message(b'X', &[])).await;
                        Ok(rx.borrow().marker)
                    }
                    false => Err(Trouble::Hang(format!(
                        "no answer to Sync + ROLLBACK + SELECT '{}' within {ANSWER:?}",
                        plan.marker()
                    ))),
                }
            } else {
                Ok(false)
            }
        }
        (End::MidMessage(partial), true) => {
            let _ = wr.write_all(partial).await;
            Ok(false)
        }
        (End::Drop | End::Reset, true) => Ok(false),
    };
    drop(wr);
    reader.abort();
    result
}

/// What a lane did.
struct LaneReport {
    sessions: usize,
    troubles: Vec<String>,
    /// The last session the lane ran before one could not log in, described.
    last: Option<String>,
}

async fn run_lane(
    port: u16,
    seed: u64,
    lane: usize,
    stop: Arc<AtomicBool>,
    current: Arc<Mutex<String>>,
) -> LaneReport {
    let mut report = LaneReport {
        sessions: 0,
        troubles: Vec::new(),
        last: None,
    };
    for index in 0..SESSIONS_PER_LANE {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let plan = plan(seed, lane, index);
        let previous = std::mem::replace(&mut *current.lock().unwrap(), plan.describe());
        match run_session(port, &plan).await {
            Ok(_) => report.sessions += 1,
            Err(Trouble::Login(e)) => {
                // This session never ran: the one before is the lane's last.
                *current.lock().unwrap() = previous.clone();
                report
                    .troubles
                    .push(format!("lane {lane} session #{index}: {e}"));
                report.last = Some(previous);
                break;
            }
            Err(Trouble::Hang(e)) => {
                report.sessions += 1;
                report.troubles.push(format!(
                    "pgherd answers every client: lane {lane} session #{index}: {e}\n{}",
                    plan.describe()
                ));
            }
        }
    }
    report
}

/// A fresh client with `startup` (a hostile session's) sees its startup settings, else PostgreSQL's defaults.
async fn twin_sees_its_own(port: u16, startup: &[(String, String)]) -> Result<(), String> {
    let given = |name: &str| {
        startup
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    // Only the twins of the tenant victim set these two, in `options`.
    let (path, tenants): (&str, &[&str]) = match given("options") {
        Some(_) => (VICTIM_PATH, &[VICTIM_TENANT]),
        None => ("\"$user\", public", &["NULL", ""]),
    };
    let app = given("application_name").unwrap_or("");
    let expected: Vec<String> = tenants
        .iter()
        .map(|t| {
            format!(
                "row [{}, {}, {t}]",
                show(app.as_bytes()),
                show(path.as_bytes())
            )
        })
        .collect();
    let mut twin = Raw {
        stream: login(port, startup).await?,
    };
    let answer = twin
        .round(
            &query(
                b"SELECT current_setting('application_name'), current_setting('search_path'), \
                  current_setting('app.tenant', true)",
            ),
            1,
        )
        .await;
    let _ = twin.stream.write_all(&message(b'X', &[])).await;
    match answer.get(1) {
        Some(row) if expected.contains(row) => Ok(()),
        _ => Err(format!(
            "saw {{{}}}, expected {}",
            answer.join(", "),
            expected.join(" or ")
        )),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Victims and the backend monitor
// ---------------------------------------------------------------------------------------------------------------

type Seen = (String, String, Option<String>, String);

fn seen_of(row: &tokio_postgres::Row) -> Seen {
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

const SEEN_SQL: &str =
    "SELECT current_setting('application_name'), current_setting('search_path'), \
                        current_setting('app.tenant', true), (SELECT v FROM whoami)";

async fn within<T, E: std::fmt::Debug>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(ANSWER, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e:?}")),
        Err(_) => Err(format!("{what}: no answer within {ANSWER:?}")),
    }
}

/// A client with settings and prepared statements of its own, checking them in every transaction until `stop`.
/// Ok(transactions run) or the first thing it saw wrong.
async fn tenant_victim(port: u16, stop: Arc<AtomicBool>) -> Result<u64, String> {
    let c = within("victim connect", try_connect(port, "app", "secret", "app")).await?;
    within(
        "victim SETs",
        c.batch_execute(&format!(
            "SET application_name = '{VICTIM_APP}'; SET search_path = {VICTIM_PATH}; \
             SET app.tenant = '{VICTIM_TENANT}'"
        )),
    )
    .await?;
    let all = within(
        "victim prepare",
        c.prepare(&format!("{SEEN_SQL}, $1::int * 7")),
    )
    .await?;
    let tagged = within(
        "victim prepare",
        c.prepare("SELECT $1::text || '/' || current_setting('app.tenant', true)"),
    )
    .await?;
    let expected: Seen = (
        VICTIM_APP.into(),
        VICTIM_PATH.into(),
        Some(VICTIM_TENANT.into()),
        "victim".into(),
    );
    let check = |how: &str, seen: Seen, i: i32| -> Result<(), String> {
        if seen == expected {
            Ok(())
        } else {
            Err(format!(
                "tenant victim, transaction {i} ({how}): saw {seen:?}, expected {expected:?}"
            ))
        }
    };
    let mut i: i32 = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        match i % 4 {
            0 => {
                let row = within("named statement", c.query_one(&all, &[&i])).await?;
                check("named statement", seen_of(&row), i)?;
                let times: i32 = row.get(4);
                if times != i * 7 {
                    return Err(format!("tenant victim: {i} * 7 gave {times}"));
                }
            }
            1 => {
                within("BEGIN", c.batch_execute("BEGIN")).await?;
                let row =
                    within("named statement in a transaction", c.query_one(&all, &[&i])).await?;
                check("named statement in a transaction", seen_of(&row), i)?;
                let tag = format!("t{i}");
                let row = within("second statement", c.query_one(&tagged, &[&tag])).await?;
                let got: String = row.get(0);
                if got != format!("t{i}/{VICTIM_TENANT}") {
                    return Err(format!(
                        "tenant victim, transaction {i}: tagged statement gave {got:?}"
                    ));
                }
                let rows =
                    within("SHOW in a transaction", c.simple_query("SHOW search_path")).await?;
                let path = rows.iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                    _ => None,
                });
                if path.as_deref() != Some(VICTIM_PATH) {
                    return Err(format!(
                        "tenant victim, transaction {i}: SHOW search_path gave {path:?}"
                    ));
                }
                within("COMMIT", c.batch_execute("COMMIT")).await?;
            }
            2 => {
                let rows = within("simple query", c.simple_query(SEEN_SQL)).await?;
                let seen = rows.iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => Some((
                        r.get(0).unwrap_or_default().to_owned(),
                        r.get(1).unwrap_or_default().to_owned(),
                        r.get(2).map(str::to_owned),
                        r.get(3).unwrap_or_default().to_owned(),
                    )),
                    _ => None,
                });
                match seen {
                    Some(seen) => check("simple query", seen, i)?,
                    None => return Err(format!("tenant victim, transaction {i}: no row")),
                }
            }
            _ => {
                let row = within(
                    "unnamed statement",
                    c.query_typed_one(&format!("{SEEN_SQL}, $1::int * 7"), &[(&i, Type::INT4)]),
                )
                .await?;
                check("unnamed statement", seen_of(&row), i)?;
            }
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    Ok(i as u64)
}

/// A client that set nothing: it must see PostgreSQL's defaults, never what hostile clients set.
async fn plain_victim(port: u16, stop: Arc<AtomicBool>) -> Result<u64, String> {
    let c = within("plain connect", try_connect(port, "app", "secret", "app")).await?;
    let mut i: i32 = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let row = within(
            "plain query",
            c.query_typed_one(&format!("{SEEN_SQL}, $1::int"), &[(&i, Type::INT4)]),
        )
        .await?;
        let (app, path, tenant, who) = seen_of(&row);
        let echoed: i32 = row.get(4);
        // A custom setting never set in a session reads NULL; one reset after a SET reads ''.
        let tenant_ok = tenant.as_deref().is_none_or(str::is_empty);
        if !app.is_empty()
            || path != "\"$user\", public"
            || !tenant_ok
            || who != "public"
            || echoed != i
        {
            return Err(format!(
                "plain victim, transaction {i}: saw {:?}, expected PostgreSQL's defaults",
                (app, path, tenant, who, echoed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    Ok(i as u64)
}

/// Local ports of the ESTABLISHED TCP connections to 127.0.0.1:`port` (from /proc/net/tcp): pgherd's server
/// connections, and the monitor's own.
fn established_to(port: u16) -> Vec<u16> {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let port_of = |a: &str| {
        a.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (local, remote) = (port_of(f.get(1)?)?, port_of(f.get(2)?)?);
            (remote == port && *f.get(3)? == "01").then_some(local)
        })
        .collect()
}

/// What the monitor saw of pgherd's backends.
#[derive(Debug, Default)]
struct Backends {
    /// The most at once in pg_stat_activity.
    most: usize,
    /// The most at once whose connection pgherd still had open (not counting backends still exiting after
    /// pgherd closed their connection).
    most_open: usize,
    /// pg_stat_activity the first time more than pool_size were open on pgherd's side.
    over: Option<String>,
    /// The same, the first time pg_stat_activity alone showed more than pool_size.
    lingering: Option<String>,
}

/// Polls pg_stat_activity directly on PostgreSQL until `stop`, counting backends of user app (all of them are
/// pgherd's servers). A backend whose connection pgherd has closed can stay in pg_stat_activity for a moment
/// while it exits, so each backend's connection is also looked up right after the query: only those pgherd
/// still holds open count against pool_size; the others are noted.
async fn monitor(pg_port: u16, stop: Arc<AtomicBool>) -> Result<Backends, String> {
    let c = within(
        "monitor connect",
        try_connect(pg_port, "postgres", "", "postgres"),
    )
    .await?;
    let mut seen = Backends::default();
    loop {
        let done = stop.load(Ordering::Relaxed);
        let rows = within(
            "monitor query",
            c.query(
                "SELECT pid, state, left(query, 60), client_port FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND usename = 'app'",
                &[],
            ),
        )
        .await?;
        let open = established_to(pg_port);
        let listing = || {
            let lines: Vec<String> = rows
                .iter()
                .map(|r| {
                    let port = r.get::<_, Option<i32>>(3).unwrap_or(-1);
                    format!(
                        "pid {} {:?} last query {:?}, port {port} {}",
                        r.get::<_, i32>(0),
                        r.get::<_, Option<String>>(1).unwrap_or_default(),
                        r.get::<_, Option<String>>(2).unwrap_or_default(),
                        if open.contains(&(port as u16)) {
                            "open"
                        } else {
                            "closed by pgherd"
                        }
                    )
                })
                .collect();
            lines.join("\n    ")
        };
        let held = rows
            .iter()
            .filter(|r| {
                r.get::<_, Option<i32>>(3)
                    .is_some_and(|p| open.contains(&(p as u16)))
            })
            .count();
        seen.most = seen.most.max(rows.len());
        seen.most_open = seen.most_open.max(held);
        if held > POOL_SIZE && seen.over.is_none() {
            seen.over = Some(listing());
        }
        if rows.len() > POOL_SIZE && seen.lingering.is_none() {
            seen.lingering = Some(listing());
        }
        if done {
            return Ok(seen);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Checks shared by the chaos test and the reproducers
// ---------------------------------------------------------------------------------------------------------------

/// The panic messages in pgherd's log (with the line after each), or the log's last lines if there are none.
fn panics(herd: &Pgherd) -> String {
    let log = herd.log();
    let lines: Vec<&str> = log.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.contains("panicked") {
            out.push(line.to_string());
            if let Some(next) = lines.get(i + 1) {
                out.push(format!("  {next}"));
            }
        }
    }
    if out.is_empty() {
        let start = lines.len().saturating_sub(15);
        out.push(format!(
            "(no panic in the log; its last lines:)\n{}",
            lines[start..].join("\n")
        ));
    }
    out.join("\n")
}

/// None while pgherd runs; else how it ended, with its panic messages.
fn death(herd: &mut Pgherd) -> Option<String> {
    death_within(herd, Duration::ZERO)
}

/// Like [`death`], giving a process that is going down `grace` to finish (a panic takes a moment to abort).
fn death_within(herd: &mut Pgherd, grace: Duration) -> Option<String> {
    herd.wait_exit(grace).map(|code| {
        format!(
            "pgherd is gone (exit code {code}, 128 + signal if a signal ended it); its panics:\n{}",
            panics(herd)
        )
    })
}

/// PostgreSQL backends that died of a signal, each with the last lines its pid logged before.
fn postgres_crashes(log: &str) -> Option<String> {
    let lines: Vec<&str> = log.lines().collect();
    let mut out = Vec::new();
    for line in lines
        .iter()
        .filter(|l| l.contains("was terminated by signal"))
    {
        let pid = line
            .split("(PID ")
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .unwrap_or_default();
        let tag = format!("[{pid}]");
        let before: Vec<&str> = lines.iter().filter(|l| l.contains(&tag)).copied().collect();
        let start = before.len().saturating_sub(8);
        out.push(format!(
            "{line}\n  its last log lines:\n  {}",
            before[start..].join("\n  ")
        ));
    }
    (!out.is_empty()).then(|| out.join("\n"))
}

/// A fresh tokio-postgres client logs in and runs `SELECT 1`.
async fn fresh_client_works(port: u16) -> Result<(), String> {
    let c = within(
        "fresh client connect",
        try_connect(port, "app", "secret", "app"),
    )
    .await?;
    let row = within("fresh client SELECT 1", c.query_one("SELECT 1", &[])).await?;
    match row.get::<_, i32>(0) {
        1 => Ok(()),
        v => Err(format!("fresh client: SELECT 1 gave {v}")),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The chaos test
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_neither_crash_pgherd_nor_reach_other_clients_nor_leak_servers() {
    let seed = seed();
    println!("chaos seed {seed}: replay with PGHERD_FUZZ_SEED={seed}");
    let started = Instant::now();
    let Fixture { pg, mut herd } = fixture(
        "transaction",
        POOL_SIZE as u32,
        "workers = 2\nauth_type = \"trust\"\nclient_message_timeout = 2\nclient_login_timeout = 5\n\
         query_wait_timeout = 15",
    );
    pg.sql(
        "CREATE SCHEMA victim_schema; CREATE SCHEMA evil; \
         CREATE TABLE victim_schema.whoami AS SELECT 'victim'::text AS v; \
         CREATE TABLE evil.whoami AS SELECT 'evil'::text AS v; \
         CREATE TABLE public.whoami AS SELECT 'public'::text AS v; \
         GRANT USAGE ON SCHEMA victim_schema, evil TO app; \
         GRANT SELECT ON victim_schema.whoami, evil.whoami, public.whoami TO app",
    );
    let port = herd.port;
    let stop_victims = Arc::new(AtomicBool::new(false));
    let stop_lanes = Arc::new(AtomicBool::new(false));
    let stop_monitor = Arc::new(AtomicBool::new(false));
    let monitor = tokio::spawn(monitor(pg.port, stop_monitor.clone()));
    let tenant = tokio::spawn(tenant_victim(port, stop_victims.clone()));
    let plain = tokio::spawn(plain_victim(port, stop_victims.clone()));
    let currents: Vec<Arc<Mutex<String>>> = (0..LANES).map(|_| Arc::default()).collect();
    let lanes: Vec<_> = (0..LANES)
        .map(|lane| {
            tokio::spawn(run_lane(
                port,
                seed,
                lane,
                stop_lanes.clone(),
                currents[lane].clone(),
            ))
        })
        .collect();

    let mut failures: Vec<String> = Vec::new();
    let chaos_started = Instant::now();
    let mut died = None;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some(d) = death(&mut herd) {
            let sessions: Vec<String> =
                currents.iter().map(|c| c.lock().unwrap().clone()).collect();
            died = Some(format!(
                "{d}\nthe last hostile session of each lane (one of them killed it):\n{}",
                sessions.join("")
            ));
            stop_lanes.store(true, Ordering::Relaxed);
            break;
        }
        if lanes.iter().all(|l| l.is_finished()) {
            break;
        }
        if chaos_started.elapsed() > CHAOS_DEADLINE {
            println!("chaos deadline reached: the remaining hostile sessions are skipped");
            stop_lanes.store(true, Ordering::Relaxed);
            break;
        }
    }
    let mut sessions = 0;
    for lane in lanes {
        let report = lane.await.expect("lane task");
        sessions += report.sessions;
        if died.is_none() {
            failures.extend(report.troubles);
            if let Some(last) = report.last {
                failures.push(format!("the lane's session before:\n{last}"));
            }
        }
    }
    let chaos_time = chaos_started.elapsed();
    stop_victims.store(true, Ordering::Relaxed);
    let tenant = tenant.await.expect("tenant victim task");
    let plain = plain.await.expect("plain victim task");
    if let Some(d) = died.or_else(|| death(&mut herd)) {
        failures.insert(0, format!("1. pgherd must survive: {d}"));
    }
    for victim in [&tenant, &plain] {
        if let Err(e) = victim {
            failures.push(format!(
                "2. victims see only their own settings and results: {e}"
            ));
        }
    }
    println!(
        "{sessions} hostile sessions in {chaos_time:?}; tenant victim {tenant:?}, plain victim {plain:?}"
    );

    // 3. No server leaks: pool_size clients hold a transaction each at the same time.
    if death(&mut herd).is_none() {
        let holders = futures_util::future::join_all((0..POOL_SIZE).map(|n| async move {
            let c = within("holder connect", try_connect(port, "app", "secret", "app")).await?;
            within(
                &format!("holder {n} BEGIN; SELECT 1"),
                c.batch_execute("BEGIN; SELECT 1"),
            )
            .await?;
            Ok::<_, String>(c)
        }))
        .await;
        let mut held = Vec::new();
        for h in holders {
            match h {
                Ok(c) => held.push(c),
                Err(e) => failures.push(format!(
                    "3. every unit of pool budget came back: {POOL_SIZE} clients could not each hold a \
                     transaction at once: {e}"
                )),
            }
        }
        for c in &held {
            if let Err(e) = within("holder COMMIT", c.batch_execute("COMMIT")).await {
                failures.push(format!("3. holder: {e}"));
            }
        }
        drop(held);
        if let Err(e) = fresh_client_works(port).await {
            failures.push(format!("1. a fresh client works after the chaos: {e}"));
        }
    }
    stop_monitor.store(true, Ordering::Relaxed);
    match monitor.await.expect("monitor task") {
        Ok(seen) => {
            println!(
                "pgherd's backends at once: at most {} open, {} in pg_stat_activity (pool_size {POOL_SIZE})",
                seen.most_open, seen.most
            );
            if let Some(listing) = seen.over {
                failures.push(format!(
                    "3. never more than pool_size = {POOL_SIZE} servers: {} were open at once; the first time:\n    \
                     {listing}",
                    seen.most_open
                ));
            }
            if let Some(listing) = seen.lingering {
                println!(
                    "note: pg_stat_activity showed {} backends of pgherd at once, some still exiting after pgherd \
                     closed them:\n    {listing}",
                    seen.most
                );
            }
        }
        Err(e) => failures.push(format!("monitor: {e}")),
    }
    if let Some(d) = death(&mut herd) {
        if !failures
            .iter()
            .any(|f| f.starts_with("1. pgherd must survive"))
        {
            failures.insert(0, format!("1. pgherd must survive: {d}"));
        }
    }
    if let Some(crash) = postgres_crashes(&pg.log()) {
        failures.insert(
            0,
            format!(
                "PostgreSQL itself crashed (a PostgreSQL bug, not pgherd's; it ends every backend, so failures \
                 below may follow from it):\n{crash}"
            ),
        );
    }
    println!("chaos test took {:?}", started.elapsed());
    assert!(
        failures.is_empty(),
        "seed {seed} (PGHERD_FUZZ_SEED={seed}), {sessions} hostile sessions:\n\n{}",
        failures.join("\n\n")
    );
}

/// Short hostile sessions of SQL that SETs things, one at a time on a single server and each ended gracefully;
/// each that pgherd answered whole is followed by a client with the same startup settings: it gets that very server, set up for exactly those
/// settings, so it must see its startup settings and nothing the hostile session SET (by DO blocks,
/// set_config, or SQL the scan misreads). One server and one client at a time make the outcome as deterministic
/// as the bytes: a failure names the session that caused it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_sessions_one_at_a_time_leave_nothing_to_the_next_client() {
    let seed = seed();
    println!("chaos seed {seed}: replay with PGHERD_FUZZ_SEED={seed}");
    let Fixture { pg, mut herd } = fixture(
        "transaction",
        1,
        "workers = 1\nauth_type = \"trust\"\nclient_message_timeout = 2\nquery_wait_timeout = 15",
    );
    pg.sql(
        "CREATE SCHEMA victim_schema; CREATE SCHEMA evil; GRANT USAGE ON SCHEMA victim_schema, evil TO app; \
         CREATE TABLE public.whoami AS SELECT 'public'::text AS v; GRANT SELECT ON public.whoami TO app",
    );
    let mut failures = Vec::new();
    let mut checked = 0;
    for index in 0..SEQUENTIAL_SESSIONS {
        let plan = settings_plan(seed, index);
        let answered = run_session(herd.port, &plan).await;
        if let Some(d) = death_within(&mut herd, Duration::from_millis(20)) {
            failures.push(format!(
                "1. pgherd must survive: {d}\nthe session that killed it:\n{}",
                plan.describe()
            ));
            break;
        }
        match answered {
            Ok(true) => {
                checked += 1;
                if let Err(e) = twin_sees_its_own(herd.port, &plan.startup).await {
                    failures.push(format!(
                        "2. a client with the startup settings of settings session #{index} got its server \
                         and {e}\n{}",
                        plan.describe()
                    ));
                }
            }
            Ok(false) => {}
            Err(Trouble::Hang(e)) => failures.push(format!(
                "pgherd answers every client: settings session #{index}: {e}\n{}",
                plan.describe()
            )),
            Err(Trouble::Login(e)) => {
                failures.push(format!("settings session #{index}: {e}"));
                break;
            }
        }
        if failures.len() >= 5 {
            break;
        }
    }
    if let Some(crash) = postgres_crashes(&pg.log()) {
        failures.insert(
            0,
            format!("PostgreSQL itself crashed (a PostgreSQL bug, not pgherd's):\n{crash}"),
        );
    }
    println!("{checked} sessions checked by a client with their startup settings");
    assert!(
        failures.is_empty(),
        "seed {seed} (PGHERD_FUZZ_SEED={seed}):\n\n{}",
        failures.join("\n\n")
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Reproducers of known crashes
// ---------------------------------------------------------------------------------------------------------------

/// How long a reproducer gives pgherd to go down after a failed answer before it checks that it still runs.
const GRACE: Duration = Duration::from_millis(300);

/// A raw client: messages out, a summary of the answers in.
struct Raw {
    stream: TcpStream,
}

impl Raw {
    async fn login(port: u16, user: &str) -> Result<Raw, String> {
        let params = [
            ("user".to_owned(), user.to_owned()),
            ("database".to_owned(), "app".to_owned()),
        ];
        Ok(Raw {
            stream: login(port, &params).await?,
        })
    }

    /// Sends `bytes` and reads up to the ReadyForQuery after `readies` of them: a summary of every answer
    /// (asynchronous ParameterStatus, NoticeResponse and NotificationResponse left out).
    async fn round(&mut self, bytes: &[u8], readies: usize) -> Vec<String> {
        let mut out = Vec::new();
        if let Err(e) = self.stream.write_all(bytes).await {
            out.push(format!("send failed: {e}"));
            return out;
        }
        let mut left = readies;
        while left > 0 {
            match read_message(&mut self.stream).await {
                Ok(Some((tag, body))) => match tag {
                    b'S' | b'N' | b'A' => {}
                    b'E' => out.push(format!("error {}: {}", sqlstate(&body), error_text(&body))),
                    b'C' => out.push(format!(
                        "complete {}",
                        String::from_utf8_lossy(body.strip_suffix(b"\0").unwrap_or(&body))
                    )),
                    b'D' => out.push(format!("row {}", row_text(&body))),
                    b'Z' => {
                        out.push(format!("ready {}", body[0] as char));
                        left -= 1;
                    }
                    b'T' => out.push("row description".into()),
                    b'1' => out.push("parse complete".into()),
                    b'2' => out.push("bind complete".into()),
                    b'3' => out.push("close complete".into()),
                    b'n' => out.push("no data".into()),
                    other => out.push(format!("message {}", other.escape_ascii())),
                },
                Ok(None) => {
                    out.push("connection closed".into());
                    return out;
                }
                Err(e) => {
                    out.push(format!("read failed: {e}"));
                    return out;
                }
            }
        }
        out
    }

    async fn simple(&mut self, sql: &str) -> Vec<String> {
        self.round(&query(sql.as_bytes()), 1).await
    }
}

/// A DataRow's fields as text (shortened), NULL as `NULL`.
fn row_text(body: &[u8]) -> String {
    let mut fields = Vec::new();
    let mut at = 2;
    while at + 4 <= body.len() {
        let len = i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
        at += 4;
        if len < 0 {
            fields.push("NULL".to_owned());
            continue;
        }
        let end = (at + len as usize).min(body.len());
        fields.push(show(&body[at..end]));
        at = end;
    }
    format!("[{}]", fields.join(", "))
}

/// Only the SQLSTATE of error lines: PostgreSQL's and pgherd's message texts may be worded differently where
/// pgherd answers itself.
fn codes(summary: &[String]) -> Vec<String> {
    summary
        .iter()
        .map(|s| match s.strip_prefix("error ") {
            Some(rest) => format!("error {}", &rest[..5.min(rest.len())]),
            None => s.clone(),
        })
        .collect()
}

/// Sends `sql` to PostgreSQL directly and through pgherd: both must answer alike (`expected`), then `SHOW
/// shown` in the next transaction must agree, pgherd must still run, and the same and a fresh client work.
async fn answered_like_postgres(sql: &str, expected: &[&str], shown: Option<&str>) {
    let Fixture { pg, mut herd } = fixture("transaction", 2, "workers = 1\nauth_type = \"trust\"");
    let mut direct = Raw::login(pg.port, "postgres")
        .await
        .expect("login to PostgreSQL");
    let from_pg = codes(&direct.simple(sql).await);
    assert_eq!(from_pg, expected, "PostgreSQL itself answers {sql:?} so");
    let pg_shows = match shown {
        Some(name) => Some(direct.simple(&format!("SHOW {name}")).await),
        None => None,
    };
    let mut failures = Vec::new();
    let mut client = Raw::login(herd.port, "app").await.expect("login to pgherd");
    let from_herd = codes(&client.simple(sql).await);
    if from_herd != from_pg {
        failures.push(format!(
            "{sql:?}: PostgreSQL answers {from_pg:?}, pgherd answered {from_herd:?}"
        ));
    }
    if let Some(d) = death_within(&mut herd, GRACE) {
        failures.push(d);
    } else {
        if let (Some(name), Some(pg_shows)) = (shown, pg_shows) {
            let herd_shows = client.simple(&format!("SHOW {name}")).await;
            if herd_shows != pg_shows {
                failures.push(format!(
                    "SHOW {name} after {sql:?}: PostgreSQL shows {pg_shows:?}, pgherd {herd_shows:?}"
                ));
            }
        }
        let again = client.simple("SELECT 1").await;
        if again != ["row description", "row [1]", "complete SELECT 1", "ready I"] {
            failures.push(format!("the same client's next SELECT 1: {again:?}"));
        }
        if let Err(e) = fresh_client_works(herd.port).await {
            failures.push(e);
        }
        if let Some(d) = death(&mut herd) {
            failures.push(d);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_star_is_a_syntax_error() {
    answered_like_postgres("RESET *", &["error 42601", "ready I"], None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_star_is_a_syntax_error() {
    answered_like_postgres("SET * TO 1", &["error 42601", "ready I"], None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_session_time_zone_sets_the_time_zone() {
    answered_like_postgres(
        "SET SESSION TIME ZONE 0",
        &["complete SET", "ready I"],
        Some("TimeZone"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_session_xml_option_sets_the_xml_option() {
    answered_like_postgres(
        "SET SESSION XML OPTION DOCUMENT",
        &["complete SET", "ready I"],
        Some("xmloption"),
    )
    .await;
}

/// A 40 KB statement is evicted from its server by 200 others (max_prepared_statements is 200), then parsed
/// again under its name: PostgreSQL refuses the duplicate name (42P05) and the statement still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_40kb_statement_parsed_again_after_its_eviction() {
    // One server, so that the evicting statements land where the big one is.
    let Fixture { pg, mut herd } = fixture("transaction", 1, "workers = 1\nauth_type = \"trust\"");
    let big_sql = format!("SELECT '{}'::text AS big", "x".repeat(40 * 1024));
    let mut rounds: Vec<(Vec<u8>, usize)> = Vec::new();
    let mut first = parse(b"big", big_sql.as_bytes(), &[]);
    first.extend(sync());
    rounds.push((first, 1));
    let mut others = Vec::new();
    for i in 0..200 {
        others.extend(parse(
            format!("other{i}").as_bytes(),
            format!("SELECT {i}::int").as_bytes(),
            &[],
        ));
    }
    others.extend(sync());
    rounds.push((others, 1));
    let mut again = parse(b"big", big_sql.as_bytes(), &[]);
    again.extend(sync());
    rounds.push((again, 1));
    let mut run = bind(b"", b"big", &[], &[], &[]);
    run.extend(execute(b"", 0));
    run.extend(sync());
    rounds.push((run, 1));

    let mut direct = Raw::login(pg.port, "postgres")
        .await
        .expect("login to PostgreSQL");
    let mut from_pg = Vec::new();
    for (bytes, readies) in &rounds {
        from_pg.push(codes(&direct.round(bytes, *readies).await));
    }
    assert_eq!(
        from_pg[2],
        ["error 42P05", "ready I"],
        "PostgreSQL refuses the duplicate name"
    );
    let mut client = Raw::login(herd.port, "app").await.expect("login to pgherd");
    let mut failures = Vec::new();
    for (n, (bytes, readies)) in rounds.iter().enumerate() {
        let got = codes(&client.round(bytes, *readies).await);
        if got != from_pg[n] {
            failures.push(format!(
                "round {n}: PostgreSQL answers {}, pgherd answered {}",
                show(format!("{:?}", from_pg[n]).as_bytes()),
                show(format!("{got:?}").as_bytes())
            ));
            break;
        }
    }
    if let Some(d) = death_within(&mut herd, GRACE) {
        failures.push(d);
    } else if let Err(e) = fresh_client_works(herd.port).await {
        failures.push(e);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
