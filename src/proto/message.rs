//! Views of the message bodies the pooler reads. Each parser takes a body (after tag and length) and returns
//! `None` when it is malformed: the caller answers with a protocol violation.

/// A client's first packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Startup {
    Ssl,
    GssEnc,
    Cancel {
        pid: u32,
        secret: u32,
    },
    /// A session request: protocol minor version, and its parameters in the order sent.
    Session {
        minor: u16,
        params: Vec<(String, String)>,
    },
}

impl Startup {
    pub fn parse(body: &[u8]) -> Option<Startup> {
        let (code, rest) = be_u32(body)?;
        match code {
            super::SSL_REQUEST if rest.is_empty() => Some(Startup::Ssl),
            super::GSSENC_REQUEST if rest.is_empty() => Some(Startup::GssEnc),
            super::CANCEL_REQUEST if rest.len() == 8 => {
                let (pid, rest) = be_u32(rest)?;
                let (secret, _) = be_u32(rest)?;
                Some(Startup::Cancel { pid, secret })
            }
            v if v >> 16 == 3 => {
                let mut params = Vec::new();
                let mut fields = Cstrings(rest);
                loop {
                    let key = fields.next()?;
                    if key.is_empty() {
                        break;
                    }
                    params.push((key.to_owned(), fields.next()?.to_owned()));
                }
                fields.0.is_empty().then_some(Startup::Session {
                    // The low 16 bits are the minor version (the high ones, 3, were matched above).
                    minor: v as u16,
                    params,
                })
            }
            _ => None,
        }
    }
}

/// The big-endian u32 at the front of `b` and the bytes after it.
fn be_u32(b: &[u8]) -> Option<(u32, &[u8])> {
    let (head, rest) = b.split_first_chunk::<4>()?;
    Some((u32::from_be_bytes(*head), rest))
}

/// Iterates NUL-terminated strings.
struct Cstrings<'a>(&'a [u8]);

impl<'a> Cstrings<'a> {
    /// The next string as UTF-8; `None` at the end, without a terminator, or when it is not UTF-8.
    fn next(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.next_bytes()?).ok()
    }

    /// The next string's bytes; `None` at the end or without a terminator.
    fn next_bytes(&mut self) -> Option<&'a [u8]> {
        let end = self.0.iter().position(|&b| b == 0)?;
        let (s, rest) = self.0.split_at_checked(end)?;
        // rest starts with the NUL found at `end`.
        self.0 = rest.get(1..)?;
        Some(s)
    }
}

/// A server's Authentication ('R') request.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthRequest<'a> {
    Ok,
    Cleartext,
    Md5 {
        salt: [u8; 4],
    },
    Sasl {
        mechanisms: Vec<&'a str>,
    },
    SaslContinue(&'a [u8]),
    SaslFinal(&'a [u8]),
    /// Kerberos, GSSAPI, SSPI: nothing a pooler can answer.
    Unsupported(u32),
}

impl<'a> AuthRequest<'a> {
    pub fn parse(body: &'a [u8]) -> Option<AuthRequest<'a>> {
        let (code, data) = be_u32(body)?;
        Some(match code {
            0 => AuthRequest::Ok,
            3 => AuthRequest::Cleartext,
            5 => AuthRequest::Md5 {
                salt: data.try_into().ok()?,
            },
            10 => {
                let mut mechanisms = Vec::new();
                let mut names = Cstrings(data);
                loop {
                    let name = names.next()?;
                    if name.is_empty() {
                        break;
                    }
                    mechanisms.push(name);
                }
                AuthRequest::Sasl { mechanisms }
            }
            11 => AuthRequest::SaslContinue(data),
            12 => AuthRequest::SaslFinal(data),
            other => AuthRequest::Unsupported(other),
        })
    }
}

/// The first SASL message of a client: mechanism name and initial response.
pub fn sasl_initial_response(body: &[u8]) -> Option<(&str, &[u8])> {
    let mut names = Cstrings(body);
    let mechanism = names.next()?;
    let (len, data) = be_u32(names.0)?;
    // An Int32: -1 (no initial response) and every other negative value are refused here.
    let len = i32::from_be_bytes(len.to_be_bytes());
    (usize::try_from(len).ok()? == data.len()).then_some((mechanism, data))
}

/// ParameterStatus: name and value.
pub fn parameter_status(body: &[u8]) -> Option<(&str, &str)> {
    let mut fields = Cstrings(body);
    let pair = (fields.next()?, fields.next()?);
    fields.0.is_empty().then_some(pair)
}

/// DataRow: each column as text, NULL as `None`; a malformed row gives what could be read.
pub fn data_row(body: &[u8]) -> Vec<Option<String>> {
    let mut columns = Vec::new();
    let mut rest = body.get(2..).unwrap_or_default();
    while let Some((len, after)) = be_u32(rest) {
        rest = after;
        // An Int32: -1 is NULL, and so is any other negative length.
        let Ok(len) = usize::try_from(i32::from_be_bytes(len.to_be_bytes())) else {
            columns.push(None);
            continue;
        };
        let Some((value, after)) = rest.split_at_checked(len) else {
            break;
        };
        columns.push(Some(String::from_utf8_lossy(value).into_owned()));
        rest = after;
    }
    columns
}

/// BackendKeyData: process id and secret key.
pub fn backend_key_data(body: &[u8]) -> Option<(u32, u32)> {
    let (pid, rest) = be_u32(body)?;
    let (key, rest) = be_u32(rest)?;
    rest.is_empty().then_some((pid, key))
}

/// The fields of an ErrorResponse or NoticeResponse we report: severity, SQLSTATE, message. A value that is
/// not UTF-8 (a server whose messages are in another encoding: pgherd's StartupMessage sets no client_encoding)
/// is kept with U+FFFD in place of what does not decode, rather than lost.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

impl ErrorFields {
    pub fn parse(body: &[u8]) -> ErrorFields {
        let mut fields = ErrorFields::default();
        let mut rest = body;
        while let Some((&kind, tail)) = rest.split_first() {
            if kind == 0 {
                break;
            }
            let mut strings = Cstrings(tail);
            let Some(value) = strings.next_bytes() else {
                break;
            };
            let value = || String::from_utf8_lossy(value).into_owned();
            match kind {
                b'V' => fields.severity = value(),
                b'S' if fields.severity.is_empty() => fields.severity = value(),
                b'C' => fields.code = value(),
                b'M' => fields.message = value(),
                _ => {}
            }
            rest = strings.0;
        }
        fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_packets() {
        let mut body = crate::proto::PROTOCOL_3_0.to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0bob\0database\0db\0\0");
        assert_eq!(
            Startup::parse(&body),
            Some(Startup::Session {
                minor: 0,
                params: vec![
                    ("user".into(), "bob".into()),
                    ("database".into(), "db".into())
                ]
            })
        );
        // Missing final terminator, trailing garbage, unknown major version.
        assert_eq!(Startup::parse(&body[..body.len() - 1]), None);
        body.push(b'x');
        assert_eq!(Startup::parse(&body), None);
        assert_eq!(Startup::parse(&(2u32 << 16).to_be_bytes()), None);
        assert_eq!(
            Startup::parse(&crate::proto::SSL_REQUEST.to_be_bytes()),
            Some(Startup::Ssl)
        );
        let mut cancel = crate::proto::CANCEL_REQUEST.to_be_bytes().to_vec();
        cancel.extend_from_slice(&[0, 0, 0, 7, 0, 0, 0, 9]);
        assert_eq!(
            Startup::parse(&cancel),
            Some(Startup::Cancel { pid: 7, secret: 9 })
        );
    }

    #[test]
    fn auth_requests() {
        assert_eq!(AuthRequest::parse(&[0, 0, 0, 0]), Some(AuthRequest::Ok));
        assert_eq!(
            AuthRequest::parse(&[0, 0, 0, 5, 1, 2, 3, 4]),
            Some(AuthRequest::Md5 { salt: [1, 2, 3, 4] })
        );
        assert_eq!(AuthRequest::parse(&[0, 0, 0, 5, 1]), None);
        assert_eq!(
            AuthRequest::parse(b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"),
            Some(AuthRequest::Sasl {
                mechanisms: vec!["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
            })
        );
    }

    #[test]
    fn sasl_and_errors() {
        assert_eq!(
            sasl_initial_response(b"SCRAM-SHA-256\0\0\0\0\x03abc"),
            Some(("SCRAM-SHA-256", &b"abc"[..]))
        );
        assert_eq!(sasl_initial_response(b"SCRAM-SHA-256\0\0\0\0\x09abc"), None);
        let e = ErrorFields::parse(b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed\0\0");
        assert_eq!((e.severity.as_str(), e.code.as_str()), ("FATAL", "28P01"));
        assert_eq!(
            parameter_status(b"TimeZone\0UTC\0"),
            Some(("TimeZone", "UTC"))
        );
        assert_eq!(backend_key_data(&[0, 0, 0, 1, 0, 0, 0, 2]), Some((1, 2)));
    }

    #[test]
    fn error_text_in_another_encoding_is_kept() {
        // A LATIN1 server's French "database does not exist", before any client_encoding applies.
        let e = ErrorFields::parse(b"SFATAL\0C3D000\0Mla base \xe9x n'existe pas\0\0");
        assert_eq!(e.code, "3D000");
        assert_eq!(e.message, "la base \u{fffd}x n'existe pas");
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use crate::proto::{encode, frame, MAX_MESSAGE_LEN};
    use proptest::prelude::*;

    /// A string with no NUL: what a C string field can carry whole.
    fn field() -> impl Strategy<Value = String> {
        prop_oneof![any::<String>(), "[a-z_.é]{0,10}"].prop_map(|s| s.replace('\0', ""))
    }

    fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..max)
    }

    /// The body of the one message an encoder wrote.
    fn body_of(out: &[u8]) -> &[u8] {
        let (_, body, n) = frame::whole(out, MAX_MESSAGE_LEN).unwrap().unwrap();
        assert_eq!(n, out.len());
        body
    }

    /// Bodies that start with one of the codes a parser dispatches on, and then anything.
    fn coded(codes: &'static [u32]) -> impl Strategy<Value = Vec<u8>> {
        (proptest::sample::select(codes), bytes(40)).prop_map(|(code, tail)| {
            let mut body = code.to_be_bytes().to_vec();
            body.extend(tail);
            body
        })
    }

    proptest! {
        #![proptest_config(crate::fuzzing::config())]

        #[test]
        fn startup_round_trips(
            params in proptest::collection::vec(("[a-z_.é]{1,10}", field()), 0..6),
            pid in any::<u32>(),
            secret in any::<u32>(),
        ) {
            let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let mut out = Vec::new();
            encode::startup_message(&mut out, &pairs);
            prop_assert_eq!(Startup::parse(&out[4..]), Some(Startup::Session { minor: 0, params }));
            out.clear();
            encode::cancel_request(&mut out, pid, secret);
            prop_assert_eq!(Startup::parse(&out[4..]), Some(Startup::Cancel { pid, secret }));
        }

        /// Whatever parses is what the body says, and re-encodes to that body.
        #[test]
        fn startup_on_arbitrary_bytes(
            body in prop_oneof![
                bytes(60),
                coded(&[
                    crate::proto::SSL_REQUEST,
                    crate::proto::GSSENC_REQUEST,
                    crate::proto::CANCEL_REQUEST,
                    crate::proto::PROTOCOL_3_0,
                    crate::proto::PROTOCOL_3_0 + 2,
                ]),
                (any::<u16>(), proptest::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 0..40))
                    .prop_map(|(minor, tail)| [(3u32 << 16 | u32::from(minor)).to_be_bytes().to_vec(), tail].concat()),
            ],
        ) {
            let mut out = Vec::new();
            match Startup::parse(&body) {
                None => {}
                Some(Startup::Ssl) => prop_assert_eq!(body, crate::proto::SSL_REQUEST.to_be_bytes()),
                Some(Startup::GssEnc) => prop_assert_eq!(body, crate::proto::GSSENC_REQUEST.to_be_bytes()),
                Some(Startup::Cancel { pid, secret }) => {
                    encode::cancel_request(&mut out, pid, secret);
                    prop_assert_eq!(&out[4..], &body[..]);
                }
                Some(Startup::Session { minor, params }) => {
                    let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    encode::startup_message(&mut out, &pairs);
                    prop_assert_eq!(&out[8..], &body[4..]);
                    prop_assert_eq!(&body[..4], &(3u32 << 16 | u32::from(minor)).to_be_bytes());
                }
            }
        }

        #[test]
        fn auth_requests_on_arbitrary_bytes(body in prop_oneof![bytes(60), coded(&[0, 3, 5, 10, 11, 12, 7, 9])]) {
            let Some(request) = AuthRequest::parse(&body) else {
                // Too short for a code, an md5 salt not 4 bytes long, or a SASL list not terminated or not UTF-8.
                let code = body.get(..4).map(|c| u32::from_be_bytes(c.try_into().unwrap()));
                prop_assert!(code.is_none() || code == Some(5) || code == Some(10));
                return Ok(());
            };
            let data = &body[4..];
            match request {
                AuthRequest::Md5 { salt } => prop_assert_eq!(&salt[..], data),
                AuthRequest::Sasl { mechanisms } => {
                    prop_assert!(mechanisms.iter().all(|m| !m.is_empty() && !m.contains('\0')));
                    let listed: Vec<u8> =
                        mechanisms.iter().flat_map(|m| [m.as_bytes(), b"\0"].concat()).chain([0]).collect();
                    prop_assert!(data.starts_with(&listed));
                }
                AuthRequest::SaslContinue(d) | AuthRequest::SaslFinal(d) => prop_assert_eq!(d, data),
                AuthRequest::Unsupported(code) => prop_assert!(![0, 3, 5, 10, 11, 12].contains(&code)),
                AuthRequest::Ok | AuthRequest::Cleartext => {}
            }
        }

        #[test]
        fn sasl_initial_response_round_trips(mechanism in field(), data in bytes(100), junk in bytes(40)) {
            let mut out = Vec::new();
            encode::sasl_initial_response(&mut out, &mechanism, &data);
            prop_assert_eq!(sasl_initial_response(body_of(&out)), Some((mechanism.as_str(), &data[..])));
            if let Some((m, d)) = sasl_initial_response(&junk) {
                out.clear();
                encode::sasl_initial_response(&mut out, m, d);
                prop_assert_eq!(body_of(&out), &junk[..]);
            }
        }

        #[test]
        fn parameter_status_round_trips(name in field(), value in field(), junk in bytes(40)) {
            let mut out = Vec::new();
            encode::parameter_status(&mut out, &name, &value);
            prop_assert_eq!(parameter_status(body_of(&out)), Some((name.as_str(), value.as_str())));
            if let Some((n, v)) = parameter_status(&junk) {
                out.clear();
                encode::parameter_status(&mut out, n, v);
                prop_assert_eq!(body_of(&out), &junk[..]);
            }
        }

        #[test]
        fn backend_key_data_round_trips(pid in any::<u32>(), key in any::<u32>(), junk in bytes(12)) {
            let mut out = Vec::new();
            encode::backend_key_data(&mut out, pid, key);
            prop_assert_eq!(backend_key_data(body_of(&out)), Some((pid, key)));
            match backend_key_data(&junk) {
                Some((p, k)) => prop_assert_eq!([p.to_be_bytes(), k.to_be_bytes()].concat(), junk),
                None => prop_assert_ne!(junk.len(), 8),
            }
        }

        /// A DataRow as PostgreSQL writes it reads back column by column; any bytes read without panic and
        /// give no more columns than lengths could fit.
        #[test]
        fn data_row_round_trips(
            columns in proptest::collection::vec(proptest::option::of(bytes(30)), 0..8),
            junk in bytes(60),
        ) {
            let mut body = (columns.len() as u16).to_be_bytes().to_vec();
            for column in &columns {
                match column {
                    None => body.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(value) => {
                        body.extend_from_slice(&(value.len() as u32).to_be_bytes());
                        body.extend_from_slice(value);
                    }
                }
            }
            let expected: Vec<Option<String>> = columns
                .iter()
                .map(|c| c.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()))
                .collect();
            prop_assert_eq!(data_row(&body), expected);
            prop_assert!(data_row(&junk).len() <= junk.len().saturating_sub(2) / 4);
        }

        #[test]
        fn error_fields_round_trip(
            severity in field(),
            code in field(),
            text in field(),
            others in proptest::collection::vec(
                (any::<u8>().prop_filter("not S V C M", |k| !b"\0SVCM".contains(k)), field()),
                0..4,
            ),
            junk in bytes(80),
        ) {
            let mut out = Vec::new();
            encode::error_response(&mut out, &severity, &code, &text);
            let expected = ErrorFields { severity, code, message: text };
            prop_assert_eq!(ErrorFields::parse(body_of(&out)), expected.clone());
            // Fields pgherd does not report (detail, hint, position...) are skipped wherever they are.
            let mut body = Vec::new();
            for (kind, value) in others {
                body.push(kind);
                body.extend_from_slice(value.as_bytes());
                body.push(0);
            }
            body.extend_from_slice(body_of(&out));
            prop_assert_eq!(ErrorFields::parse(&body), expected);
            let _ = ErrorFields::parse(&junk);
        }
    }
}
