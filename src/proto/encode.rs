//! Encoders for the messages pgherd originates, appended to a caller's buffer. `message` reserves the length
//! field and patches it once the body is written, so no body is built twice.

/// Appends one tagged message whose body `body` writes.
fn message(out: &mut Vec<u8>, tag: u8, body: impl FnOnce(&mut Vec<u8>)) {
    out.push(tag);
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    body(out);
    let len = (out.len() - at) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
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
        b.extend_from_slice(&(params.len() as u16).to_be_bytes());
        for p in params {
            b.extend_from_slice(&(p.len() as u32).to_be_bytes());
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

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
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
    let mut list = Vec::with_capacity(mechanism.len() + 2);
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
        b.extend_from_slice(&(unknown_options.len() as u32).to_be_bytes());
        for option in unknown_options {
            cstr(b, option);
        }
    });
}

/// The StartupMessage pgherd sends to PostgreSQL.
pub fn startup_message(out: &mut Vec<u8>, params: &[(&str, &str)]) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&super::PROTOCOL_3_0.to_be_bytes());
    for (key, value) in params {
        cstr(out, key);
        cstr(out, value);
    }
    out.push(0);
    let len = (out.len() - at) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn cancel_request(out: &mut Vec<u8>, pid: u32, secret: u32) {
    out.extend_from_slice(&16u32.to_be_bytes());
    out.extend_from_slice(&super::CANCEL_REQUEST.to_be_bytes());
    out.extend_from_slice(&pid.to_be_bytes());
    out.extend_from_slice(&secret.to_be_bytes());
}

/// PasswordMessage: a cleartext or md5 password, NUL-terminated.
pub fn password(out: &mut Vec<u8>, password: &[u8]) {
    message(out, b'p', |b| {
        b.extend_from_slice(password);
        b.push(0);
    });
}

pub fn sasl_initial_response(out: &mut Vec<u8>, mechanism: &str, data: &[u8]) {
    message(out, b'p', |b| {
        cstr(b, mechanism);
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
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
