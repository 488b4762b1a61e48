//! Encoders for the messages pgherd originates, appended to a caller's buffer. `message` reserves the length
//! field and patches it once the body is written, so no body is built twice.
//!
//! Every message they write frames correctly, whatever the strings in it:
//! - A string field is a C string, so it ends at the string's first NUL: the rest of that string is left
//!   out, as every C reader of the field would leave it. A NUL in a user name, a parameter value or an error
//!   text can then neither end its field early nor forge the fields after it. (Strings pgherd parsed off the
//!   wire have no NUL; those from the configuration file or a server's catalog might.)
//! - A startup parameter whose name is empty (or starts with NUL) is left out: an empty name ends the list.
//! - A count or length that does not fit its field is written as the field's largest value, never wrapped:
//!   the peer then refuses the message instead of reading its tail as further messages. (None can be reached:
//!   every input is bounded by the limits in [`super`] or by pgherd's own constants.)

/// Appends one tagged message whose body `body` writes.
fn message(out: &mut Vec<u8>, tag: u8, body: impl FnOnce(&mut Vec<u8>)) {
    out.push(tag);
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    body(out);
    patch_len(out, at);
}

/// Writes the length of everything from `at` (the length field itself included) into the 4 bytes at `at`.
fn patch_len(out: &mut [u8], at: usize) {
    let len = saturating_u32(out.len().saturating_sub(at));
    if let Some(field) = out.get_mut(at..).and_then(|rest| rest.get_mut(..4)) {
        field.copy_from_slice(&len.to_be_bytes());
    }
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn saturating_u16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// The part of `s` a C string field can carry: up to its first NUL.
fn c_part(s: &[u8]) -> &[u8] {
    s.split(|&b| b == 0).next().unwrap_or_default()
}

/// Appends a message made of `parts` (already encoded fields), as pgherd writes or rewrites them.
pub fn parts(out: &mut Vec<u8>, tag: u8, parts: &[&[u8]]) {
    message(out, tag, |out| {
        for part in parts {
            out.extend_from_slice(part);
        }
    });
}

/// Parse, Bind, Execute and Sync of the unnamed statement: `sql` with text parameters `$1`...
pub fn extended_query(out: &mut Vec<u8>, sql: &str, params: &[&str]) {
    message(out, b'P', |b| {
        cstr(b, "");
        cstr(b, sql);
        b.extend_from_slice(&0u16.to_be_bytes());
    });
    message(out, b'B', |b| {
        cstr(b, "");
        cstr(b, "");
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&saturating_u16(params.len()).to_be_bytes());
        for p in params {
            b.extend_from_slice(&saturating_u32(p.len()).to_be_bytes());
            b.extend_from_slice(p.as_bytes());
        }
        b.extend_from_slice(&0u16.to_be_bytes());
    });
    message(out, b'E', |b| {
        cstr(b, "");
        b.extend_from_slice(&0u32.to_be_bytes());
    });
    message(out, b'S', |_| {});
}

/// Appends `s` as a C string: up to its first NUL, then the terminator.
fn cstr(out: &mut Vec<u8>, s: &str) {
    cbytes(out, s.as_bytes());
}

fn cbytes(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(c_part(s));
    out.push(0);
}

/// ErrorResponse with PostgreSQL's fields: localized and plain severity, SQLSTATE, message.
pub fn error_response(out: &mut Vec<u8>, severity: &str, code: &str, text: &str) {
    message(out, b'E', |b| {
        for (kind, value) in [
            (b'S', severity),
            (b'V', severity),
            (b'C', code),
            (b'M', text),
        ] {
            b.push(kind);
            cstr(b, value);
        }
        b.push(0);
    });
}

fn authentication(out: &mut Vec<u8>, code: u32, data: &[u8]) {
    message(out, b'R', |b| {
        b.extend_from_slice(&code.to_be_bytes());
        b.extend_from_slice(data);
    });
}

pub fn auth_ok(out: &mut Vec<u8>) {
    authentication(out, 0, &[]);
}

pub fn auth_md5(out: &mut Vec<u8>, salt: [u8; 4]) {
    authentication(out, 5, &salt);
}

pub fn auth_sasl(out: &mut Vec<u8>, mechanism: &str) {
    let mut list = Vec::with_capacity(mechanism.len().saturating_add(2));
    cstr(&mut list, mechanism);
    list.push(0);
    authentication(out, 10, &list);
}

pub fn auth_sasl_continue(out: &mut Vec<u8>, data: &[u8]) {
    authentication(out, 11, data);
}

pub fn auth_sasl_final(out: &mut Vec<u8>, data: &[u8]) {
    authentication(out, 12, data);
}

pub fn parameter_status(out: &mut Vec<u8>, name: &str, value: &str) {
    message(out, b'S', |b| {
        cstr(b, name);
        cstr(b, value);
    });
}

pub fn backend_key_data(out: &mut Vec<u8>, pid: u32, secret: u32) {
    message(out, b'K', |b| {
        b.extend_from_slice(&pid.to_be_bytes());
        b.extend_from_slice(&secret.to_be_bytes());
    });
}

pub fn ready_for_query(out: &mut Vec<u8>, status: u8) {
    message(out, b'Z', |b| b.push(status));
}

/// Tells a client asking for a newer 3.x minor version or `_pq_.` options what this server speaks. `newest` is
/// the newest protocol version supported, as the StartupMessage carries it: `(major << 16) | minor`, e.g.
/// [`PROTOCOL_3_0`](super::PROTOCOL_3_0). PostgreSQL sends the whole version there and libpq reads it so: a
/// bare minor number reads as a version below 3.0 and the client gives up.
pub fn negotiate_protocol_version(out: &mut Vec<u8>, newest: u32, unknown_options: &[&str]) {
    message(out, b'v', |b| {
        b.extend_from_slice(&newest.to_be_bytes());
        b.extend_from_slice(&saturating_u32(unknown_options.len()).to_be_bytes());
        for option in unknown_options {
            cstr(b, option);
        }
    });
}

/// The StartupMessage pgherd sends to PostgreSQL. A parameter with an empty name is left out: its name would
/// end the list.
pub fn startup_message(out: &mut Vec<u8>, params: &[(&str, &str)]) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&super::PROTOCOL_3_0.to_be_bytes());
    for (key, value) in params {
        if !c_part(key.as_bytes()).is_empty() {
            cstr(out, key);
            cstr(out, value);
        }
    }
    out.push(0);
    patch_len(out, at);
}

pub fn cancel_request(out: &mut Vec<u8>, pid: u32, secret: u32) {
    out.extend_from_slice(&16u32.to_be_bytes());
    out.extend_from_slice(&super::CANCEL_REQUEST.to_be_bytes());
    out.extend_from_slice(&pid.to_be_bytes());
    out.extend_from_slice(&secret.to_be_bytes());
}

/// PasswordMessage: a cleartext or md5 password, NUL-terminated (so up to its first NUL).
pub fn password(out: &mut Vec<u8>, password: &[u8]) {
    message(out, b'p', |b| cbytes(b, password));
}

pub fn sasl_initial_response(out: &mut Vec<u8>, mechanism: &str, data: &[u8]) {
    message(out, b'p', |b| {
        cstr(b, mechanism);
        // An Int32 where -1 means "no data": a length over i32::MAX must not wrap to negative.
        let len = i32::try_from(data.len()).unwrap_or(i32::MAX);
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(data);
    });
}

pub fn sasl_response(out: &mut Vec<u8>, data: &[u8]) {
    message(out, b'p', |b| b.extend_from_slice(data));
}

pub fn query(out: &mut Vec<u8>, sql: &str) {
    message(out, b'Q', |b| cstr(b, sql));
}

pub fn terminate(out: &mut Vec<u8>) {
    message(out, b'X', |_| {});
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{frame, message};

    #[test]
    fn encoded_messages_parse_back() {
        let mut out = Vec::new();
        error_response(
            &mut out,
            "FATAL",
            "28P01",
            "password authentication failed for user \"x\"",
        );
        let (tag, body, n) = frame::whole(&out, 1000).unwrap().unwrap();
        assert_eq!((tag, n), (b'E', out.len()));
        let fields = message::ErrorFields::parse(body);
        assert_eq!(fields.code, "28P01");
        assert_eq!(fields.severity, "FATAL");

        let mut out = Vec::new();
        startup_message(&mut out, &[("user", "u"), ("database", "d")]);
        let (body, n) = frame::startup(&out).unwrap().unwrap();
        assert_eq!(n, out.len());
        assert!(matches!(
            message::Startup::parse(body),
            Some(message::Startup::Session { minor: 0, .. })
        ));

        let mut out = Vec::new();
        ready_for_query(&mut out, b'I');
        assert_eq!(out, b"Z\0\0\0\x05I");
    }

    /// libpq 18 with `max_protocol_version=latest` asks for 3.2: the answer names 3.0 in full (196608), which
    /// libpq takes as a downgrade it accepts, and the option it does not know.
    #[test]
    fn negotiate_protocol_version_names_the_whole_version() {
        let mut out = Vec::new();
        negotiate_protocol_version(&mut out, crate::proto::PROTOCOL_3_0, &["_pq_.x"]);
        assert_eq!(
            out, b"v\0\0\0\x13\0\x03\0\0\0\0\0\x01_pq_.x\0",
            "tag, length 19, version 3.0 = 0x00030000, one option, the option"
        );
        assert_eq!(crate::proto::PROTOCOL_3_0, 196_608);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use crate::proto::message::{self, AuthRequest, ErrorFields, Startup};
    use crate::proto::{frame, MAX_MESSAGE_LEN};
    use proptest::prelude::*;

    /// Any string, and often one with NULs in it.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![any::<String>(), "[a-z\0é]{0,12}"]
    }

    /// What a C string field carries of `s`.
    fn c(s: &str) -> &str {
        s.split('\0').next().unwrap_or_default()
    }

    /// The one message in `out`, framed by its own length field.
    fn only(out: &[u8]) -> (u8, &[u8]) {
        let (tag, body, n) = frame::whole(out, MAX_MESSAGE_LEN)
            .expect("a valid length")
            .expect("a whole message");
        assert_eq!(n, out.len(), "the length field covers the whole message");
        (tag, body)
    }

    /// Splits a body into its C strings: each must be terminated.
    fn cstrings(mut body: &[u8]) -> Vec<&[u8]> {
        let mut strings = Vec::new();
        while !body.is_empty() {
            let end = body.iter().position(|&b| b == 0).expect("terminated");
            strings.push(&body[..end]);
            body = &body[end + 1..];
        }
        strings
    }

    proptest! {
        #![proptest_config(crate::fuzzing::config())]

        #[test]
        fn error_response_parses_back(severity in text(), code in text(), text in text()) {
            let mut out = Vec::new();
            error_response(&mut out, &severity, &code, &text);
            let (tag, body) = only(&out);
            prop_assert_eq!(tag, b'E');
            let fields = ErrorFields::parse(body);
            prop_assert_eq!(
                (fields.severity.as_str(), fields.code.as_str(), fields.message.as_str()),
                (c(&severity), c(&code), c(&text))
            );
            // Four fields and the terminator, whatever the strings held.
            prop_assert_eq!(body.last(), Some(&0));
            let kinds: Vec<Option<u8>> = cstrings(&body[..body.len() - 1]).iter().map(|f| f.first().copied()).collect();
            prop_assert_eq!(kinds, b"SVCM".map(Some).to_vec());
        }

        #[test]
        fn parameter_status_parses_back(name in text(), value in text()) {
            let mut out = Vec::new();
            parameter_status(&mut out, &name, &value);
            let (tag, body) = only(&out);
            prop_assert_eq!(tag, b'S');
            prop_assert_eq!(message::parameter_status(body), Some((c(&name), c(&value))));
        }

        #[test]
        fn authentication_requests_parse_back(
            salt in any::<[u8; 4]>(),
            mechanism in text(),
            data in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            let mut out = Vec::new();
            auth_ok(&mut out);
            prop_assert_eq!(AuthRequest::parse(only(&out).1), Some(AuthRequest::Ok));
            out.clear();
            auth_md5(&mut out, salt);
            prop_assert_eq!(AuthRequest::parse(only(&out).1), Some(AuthRequest::Md5 { salt }));
            out.clear();
            auth_sasl(&mut out, &mechanism);
            let mechanisms: Vec<&str> = Some(c(&mechanism)).filter(|m| !m.is_empty()).into_iter().collect();
            prop_assert_eq!(AuthRequest::parse(only(&out).1), Some(AuthRequest::Sasl { mechanisms }));
            out.clear();
            auth_sasl_continue(&mut out, &data);
            prop_assert_eq!(AuthRequest::parse(only(&out).1), Some(AuthRequest::SaslContinue(&data)));
            out.clear();
            auth_sasl_final(&mut out, &data);
            prop_assert_eq!(AuthRequest::parse(only(&out).1), Some(AuthRequest::SaslFinal(&data)));
        }

        #[test]
        fn negotiate_protocol_version_lists_every_option(
            newest in any::<u32>(),
            options in proptest::collection::vec(text(), 0..5),
        ) {
            let options: Vec<&str> = options.iter().map(String::as_str).collect();
            let mut out = Vec::new();
            negotiate_protocol_version(&mut out, newest, &options);
            let (tag, body) = only(&out);
            prop_assert_eq!(tag, b'v');
            prop_assert_eq!(&body[..4], &newest.to_be_bytes());
            prop_assert_eq!(&body[4..8], &(options.len() as u32).to_be_bytes());
            let listed: Vec<&[u8]> = cstrings(&body[8..]);
            let expected: Vec<&[u8]> = options.iter().map(|o| c(o).as_bytes()).collect();
            prop_assert_eq!(listed, expected);
        }

        #[test]
        fn startup_and_cancel_parse_back(
            params in proptest::collection::vec((text(), text()), 0..5),
            pid in any::<u32>(),
            secret in any::<u32>(),
        ) {
            let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let mut out = Vec::new();
            startup_message(&mut out, &pairs);
            let (body, n) = frame::startup(&out).expect("valid length").expect("whole");
            prop_assert_eq!(n, out.len());
            let expected = pairs
                .iter()
                .filter(|(k, _)| !c(k).is_empty())
                .map(|(k, v)| (c(k).to_owned(), c(v).to_owned()))
                .collect();
            prop_assert_eq!(Startup::parse(body), Some(Startup::Session { minor: 0, params: expected }));

            let mut out = Vec::new();
            cancel_request(&mut out, pid, secret);
            let (body, n) = frame::startup(&out).expect("valid length").expect("whole");
            prop_assert_eq!(n, out.len());
            prop_assert_eq!(Startup::parse(body), Some(Startup::Cancel { pid, secret }));
        }

        #[test]
        fn client_messages_frame(
            password_bytes in proptest::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 0..40),
            mechanism in text(),
            data in proptest::collection::vec(any::<u8>(), 0..100),
            sql in text(),
            params in proptest::collection::vec(text(), 0..4),
            status in any::<u8>(),
            pid in any::<u32>(),
            secret in any::<u32>(),
        ) {
            let mut out = Vec::new();
            password(&mut out, &password_bytes);
            let (tag, body) = only(&out);
            let cut = password_bytes.split(|&b| b == 0).next().unwrap_or_default();
            prop_assert_eq!((tag, cstrings(body)), (b'p', vec![cut]));

            out.clear();
            sasl_initial_response(&mut out, &mechanism, &data);
            let (tag, body) = only(&out);
            prop_assert_eq!(tag, b'p');
            prop_assert_eq!(message::sasl_initial_response(body), Some((c(&mechanism), &data[..])));

            out.clear();
            sasl_response(&mut out, &data);
            prop_assert_eq!(only(&out), (b'p', &data[..]));

            out.clear();
            query(&mut out, &sql);
            let expected = [c(&sql).as_bytes(), b"\0"].concat();
            prop_assert_eq!(only(&out), (b'Q', expected.as_slice()));

            out.clear();
            backend_key_data(&mut out, pid, secret);
            let (tag, body) = only(&out);
            prop_assert_eq!((tag, message::backend_key_data(body)), (b'K', Some((pid, secret))));

            out.clear();
            ready_for_query(&mut out, status);
            prop_assert_eq!(only(&out), (b'Z', &[status][..]));

            out.clear();
            terminate(&mut out);
            prop_assert_eq!(only(&out), (b'X', &[][..]));

            out.clear();
            parts(&mut out, status, &[&data, sql.as_bytes()]);
            let expected = [&data[..], sql.as_bytes()].concat();
            prop_assert_eq!(only(&out), (status, expected.as_slice()));

            // Parse, Bind, Execute, Sync, each framed by its own length.
            let params: Vec<&str> = params.iter().map(String::as_str).collect();
            out.clear();
            extended_query(&mut out, &sql, &params);
            let mut rest = &out[..];
            let mut seen = Vec::new();
            while let Some((tag, body, n)) = frame::whole(rest, MAX_MESSAGE_LEN).expect("valid length") {
                seen.push((tag, body.to_vec()));
                rest = &rest[n..];
            }
            prop_assert!(rest.is_empty());
            let tags: Vec<u8> = seen.iter().map(|(t, _)| *t).collect();
            prop_assert_eq!(tags, b"PBES".to_vec());
            prop_assert_eq!(&seen[0].1, &[b"\0", c(&sql).as_bytes(), b"\0\0\0"].concat());
            let mut bind = b"\0\0\0\0".to_vec();
            bind.extend_from_slice(&(params.len() as u16).to_be_bytes());
            for p in &params {
                bind.extend_from_slice(&(p.len() as u32).to_be_bytes());
                bind.extend_from_slice(p.as_bytes());
            }
            bind.extend_from_slice(&[0, 0]);
            prop_assert_eq!(&seen[1].1, &bind);
            prop_assert_eq!(&seen[2].1, b"\0\0\0\0\0");
            prop_assert_eq!(&seen[3].1, b"");
        }
    }
}
