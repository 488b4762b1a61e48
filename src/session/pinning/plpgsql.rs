//! PL/pgSQL, as far as session state goes. A DO block runs its body at once, so the body is scanned: as PL/pgSQL,
//! where a statement also starts after the words that open a block, a branch or a loop, and where EXECUTE runs
//! the SQL in a string, which is scanned too when it is a literal. Dynamic SQL built any other way, and a DO
//! block in another language, cannot be read, and pin.

use super::lexer::{Kind, Token};
use super::literal::literal_value;
use super::statement::Head;
use super::{Mode, Scan};

/// `token`, outside parentheses, starts a PL/pgSQL statement: it opens a block, a branch or a loop.
pub(super) fn starts_statement(text: &[u8], token: Token) -> bool {
    ["BEGIN", "THEN", "ELSE", "LOOP", "EXCEPTION", "DECLARE"]
        .iter()
        .any(|k| token.is(text, k))
}

/// EXECUTE after `last` is PL/pgSQL's, which runs dynamic SQL: the statement's `first` word, FOR ... IN EXECUTE,
/// OPEN ... FOR EXECUTE or RETURN QUERY EXECUTE.
pub(super) fn runs_sql(text: &[u8], first: bool, last: Token) -> bool {
    first || last.is(text, "IN") || last.is(text, "FOR") || last.is(text, "QUERY")
}

/// PL/pgSQL's EXECUTE in the statement being read: the string literal it runs, if that is all it runs.
#[derive(Debug, Clone, Copy)]
pub(super) enum Dynamic {
    Idle,
    /// After EXECUTE: its string literal.
    Literal,
    /// After the literal: the end of the statement, INTO or USING (anything else builds the SQL).
    End(Token),
}

impl Dynamic {
    /// The next token of the statement, which is at `level`.
    pub(super) fn token(&mut self, text: &[u8], token: Token, level: u8, scan: &mut Scan) {
        match *self {
            Dynamic::Idle => {}
            Dynamic::Literal if matches!(token.kind, Kind::Str(_)) => *self = Dynamic::End(token),
            Dynamic::End(literal) if token.is(text, "INTO") || token.is(text, "USING") => {
                *self = Dynamic::Idle;
                scan.nested(text, literal, Mode::Sql, level);
            }
            Dynamic::Literal | Dynamic::End(_) => {
                // EXECUTE of a variable or an expression: SQL pgherd cannot read.
                *self = Dynamic::Idle;
                scan.pin();
            }
        }
    }

    /// The statement, at `level`, has ended.
    pub(super) fn end(self, text: &[u8], level: u8, scan: &mut Scan) {
        match self {
            Dynamic::Idle => {}
            Dynamic::Literal => scan.pin(),
            Dynamic::End(literal) => scan.nested(text, literal, Mode::Sql, level),
        }
    }
}

/// `DO [LANGUAGE name] body`, at `level`: a PL/pgSQL body is scanned, anything else pins.
pub(super) fn do_block(text: &[u8], head: &Head, level: u8, scan: &mut Scan) {
    let mut body = None;
    let mut plpgsql = true;
    let mut readable = head.whole();
    let mut i = 1;
    while readable && i < head.len() {
        let token = head.get(i);
        if token.is(text, "LANGUAGE") {
            let language = head.get(i + 1);
            plpgsql &= match language.kind {
                Kind::Word | Kind::Quoted => language.names(text, "plpgsql"),
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
        Some(body) if readable && plpgsql => scan.nested(text, body, Mode::PlPgSql, level),
        _ => scan.pin(),
    }
}

#[cfg(test)]
mod tests {
    use crate::session::pinning::testing::{creates, named};
    use crate::session::pinning::{scan, Pins, MAX_LEVEL};

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
}
