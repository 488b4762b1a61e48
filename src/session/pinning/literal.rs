//! String literals as PostgreSQL reads them: '...' (where a backslash escapes only with
//! standard_conforming_strings off), E'...' and its escapes, U&'...', B'...' and X'...', $tag$...$tag$, and the
//! strings that continue one after a newline. The lexer reads them to know where they end; the scan reads the
//! values of some (a DO body, the SQL an EXECUTE runs, set_config's arguments, a language's name) to know what
//! they do.

use std::borrow::Cow;

use super::lexer::{line_end, quoted_inside, Kind, Token};

/// The kinds of string literal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lit {
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

/// How plain '...' strings are read: standard_conforming_strings on (backslash is a character) or off (it
/// escapes, as in E'...').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Strings {
    Standard,
    Escaping,
}

/// How the characters of a quoted string are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Style {
    /// `''` is a quote, a backslash a character ('...' under standard_conforming_strings, U&'...').
    Doubling,
    /// `''` is a quote, and a backslash escapes the next character (E'...').
    Escapes,
    /// A quote ends it (B'...', X'...').
    Bare,
}

impl Lit {
    /// How the characters of a literal of this kind are read, plain ones as `strings` has it.
    pub(super) fn style(self, strings: Strings) -> Style {
        match self {
            Lit::Plain => match strings {
                Strings::Standard => Style::Doubling,
                Strings::Escaping => Style::Escapes,
            },
            Lit::Escape => Style::Escapes,
            Lit::Unicode => Style::Doubling,
            Lit::Bits | Lit::Dollar => Style::Bare,
        }
    }
}

/// A quoted string read by [`lex_quoted`].
pub(super) struct Quoted {
    /// Just after its closing quote (or the end of the text).
    pub(super) end: usize,
    closed: bool,
    pub(super) backslash: bool,
    /// An escape computes a character (octal, hexadecimal, Unicode), which `value` does not hold.
    computed: bool,
}

/// Reads the quoted string whose characters start at `pos` (after the opening quote) as PostgreSQL's lexer does,
/// with the strings that continue it after a newline, into `value` when given.
pub(super) fn lex_quoted(
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

/// The value of the string literal `token` in `text`, or `None` when pgherd cannot read it: unterminated, a bit
/// string, or with escapes that compute a character (octal, hexadecimal, Unicode).
pub(super) fn literal_value(text: &[u8], token: Token, strings: Strings) -> Option<Cow<'_, [u8]>> {
    let Kind::Str(lit) = token.kind else {
        return None;
    };
    let span = token.text(text);
    // Where the characters start: after the prefix and the opening quote.
    let open = match lit {
        Lit::Dollar => return dollar_body(span).map(Cow::Borrowed),
        Lit::Bits => return None,
        Lit::Plain => 1,
        Lit::Escape => 2,
        Lit::Unicode => 3,
    };
    let inside = quoted_inside(span, open, b'\'')?;
    if lit == Lit::Unicode && inside.contains(&b'\\') {
        return None;
    }
    if !inside.iter().any(|&b| b == b'\'' || b == b'\\') {
        return Some(Cow::Borrowed(inside));
    }
    let mut value = Vec::new();
    let read = lex_quoted(span, open, lit.style(strings), Some(&mut value));
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

#[cfg(test)]
mod tests {
    use super::super::lexer::Tokens;
    use super::*;

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
}
