//! set_config(name, value, is_local) calls, wherever a statement makes them (in another call's arguments too).
//! One whose name and is_local are literals is read as what it does: with is_local true it lasts the transaction
//! like SET LOCAL, with is_local false it is a SET of that setting. Any other call pgherd cannot read, and pins.

use super::lexer::{Kind, Token};
use super::literal::literal_value;
use super::settings;
use super::{Pins, Scan};

/// set_config calls nested in each other that the scan follows; deeper ones pin.
const MAX_CALLS: usize = 4;

/// The set_config calls of a statement whose arguments are being read, the innermost last.
#[derive(Default)]
pub(super) struct Calls {
    calls: [Call; MAX_CALLS],
    open: usize,
}

impl Calls {
    /// A call starts, at its `(`: `depth` parentheses are open, its own included.
    pub(super) fn open(&mut self, depth: usize, scan: &mut Scan) {
        match self.calls.get_mut(self.open) {
            Some(call) => {
                *call = Call {
                    depth: depth.saturating_sub(1),
                    ..Call::default()
                };
                self.open += 1;
            }
            None => scan.pin(),
        }
    }

    /// A token of the statement, with `depth` parentheses open before it: part of the innermost call's
    /// arguments, or the end of that call.
    pub(super) fn token(&mut self, text: &[u8], token: Token, depth: usize, scan: &mut Scan) {
        let Some(i) = self.open.checked_sub(1) else {
            return;
        };
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
                self.open = i;
                set_config(text, call, scan);
            }
            _ => call.take(token),
        }
    }

    /// The statement has ended: a call still open was cut short, and is unreadable.
    pub(super) fn end(&self, scan: &mut Scan) {
        if self.open > 0 {
            scan.pin();
        }
    }
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
                let name = settings::lower_case(&name).collect();
                // Clears are the statement's; a set_config that resets nothing clears nothing.
                settings::change(name, false, scan.effects, &mut Pins::default());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::pinning::testing::{creates, named};
    use crate::session::pinning::{scan, Effects};

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
