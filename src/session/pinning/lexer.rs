//! SQL text cut into tokens as PostgreSQL's lexer cuts it, so that no quote or comment can hide a statement from
//! the scan or invent one: whitespace and comments (`--` to the end of a line, `/* */` nested) are skipped, and a
//! quoted identifier, a string literal of any kind (see `literal`) or a dollar quote is one token, whatever it
//! holds. Words are identifiers as PostgreSQL has them: `$` and non-ASCII bytes belong to them.

use super::literal::{lex_quoted, Lit, Strings};

/// A token of SQL text: its kind and where it is, as byte offsets in the text (which nothing else points into).
/// Small, since the scan copies tokens around: [`scan`](super::scan) takes no text of 4 GiB or more.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Token {
    pub(super) kind: Kind,
    start: u32,
    end: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum Kind {
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

impl Token {
    pub(super) fn text(self, text: &[u8]) -> &[u8] {
        text.get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }

    /// The unquoted keyword `keyword`, in any case.
    /// Where the token is in the text it came from.
    pub(super) fn span(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }

    pub(super) fn is(self, text: &[u8], keyword: &str) -> bool {
        self.kind == Kind::Word && self.text(text).eq_ignore_ascii_case(keyword.as_bytes())
    }

    pub(super) fn is_char(self, text: &[u8], c: u8) -> bool {
        self.kind == Kind::Other && self.text(text) == [c]
    }

    /// The name of the identifier, quoted or not: its text without quotes, and whether it was quoted.
    pub(super) fn ident(self, text: &[u8]) -> Option<(&[u8], bool)> {
        let span = self.text(text);
        match self.kind {
            Kind::Word => Some((span, false)),
            Kind::Quoted => quoted_inside(span, 1, b'"').map(|name| (name, true)),
            Kind::UnicodeQuoted => quoted_inside(span, 3, b'"').map(|name| (name, true)),
            _ => None,
        }
    }

    /// The identifier `name` (lower case): unquoted in any case, or quoted exactly.
    pub(super) fn names(self, text: &[u8], name: &str) -> bool {
        match self.ident(text) {
            Some((ident, false)) => ident.eq_ignore_ascii_case(name.as_bytes()),
            Some((ident, true)) => ident == name.as_bytes(),
            None => false,
        }
    }

    /// An identifier whose name, folded as PostgreSQL folds it, starts with `prefix` (lower case, no quote).
    pub(super) fn ident_starts_with(self, text: &[u8], prefix: &[u8]) -> bool {
        match self.ident(text) {
            Some((ident, false)) => ident
                .get(..prefix.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(prefix)),
            // A quoted name keeps its case, and `""` in it is one `"`, which `prefix` has none of.
            Some((ident, true)) => ident.starts_with(prefix),
            None => false,
        }
    }
}

/// What is between the quotes of the quoted token `span`, whose first `open` bytes are its prefix and opening
/// quote and whose last one must be the closing quote `close`; `None` when it is not there.
pub(super) fn quoted_inside(span: &[u8], open: usize, close: u8) -> Option<&[u8]> {
    let inside = span.get(open..span.len().checked_sub(1)?)?;
    (span.last() == Some(&close)).then_some(inside)
}

/// The end of the `--` comment at `pos`: its newline, or the end of the text.
pub(super) fn line_end(text: &[u8], pos: usize) -> usize {
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
pub(super) struct Tokens<'t> {
    text: &'t [u8],
    pos: usize,
    strings: Strings,
    /// A plain string held a backslash.
    pub(super) backslash: bool,
}

impl<'t> Tokens<'t> {
    pub(super) fn new(text: &'t [u8], strings: Strings) -> Self {
        Tokens {
            text,
            pos: 0,
            strings,
            backslash: false,
        }
    }

    /// A string literal whose characters start at `pos`.
    fn string(&mut self, pos: usize, lit: Lit) -> Kind {
        let read = lex_quoted(self.text, pos, lit.style(self.strings), None);
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
    use crate::session::pinning::testing::creates;
    use crate::session::pinning::Pins;

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
}
