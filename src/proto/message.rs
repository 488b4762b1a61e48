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
        let code = u32::from_be_bytes(body.get(..4)?.try_into().ok()?);
        let rest = &body[4..];
        match code {
            super::SSL_REQUEST if rest.is_empty() => Some(Startup::Ssl),
            super::GSSENC_REQUEST if rest.is_empty() => Some(Startup::GssEnc),
            super::CANCEL_REQUEST if rest.len() == 8 => Some(Startup::Cancel {
                pid: u32::from_be_bytes(rest[..4].try_into().ok()?),
                secret: u32::from_be_bytes(rest[4..].try_into().ok()?),
            }),
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
                    minor: v as u16,
                    params,
                })
            }
            _ => None,
        }
    }
}

/// Iterates NUL-terminated UTF-8 strings.
struct Cstrings<'a>(&'a [u8]);

impl<'a> Cstrings<'a> {
    fn next(&mut self) -> Option<&'a str> {
        let end = self.0.iter().position(|&b| b == 0)?;
        let s = std::str::from_utf8(&self.0[..end]).ok()?;
        self.0 = &self.0[end + 1..];
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
        let code = u32::from_be_bytes(body.get(..4)?.try_into().ok()?);
        let data = &body[4..];
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
    let rest = names.0;
    let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    let data = &rest[4..];
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
    while let Some(len) = rest.get(..4) {
        let len = i32::from_be_bytes(len.try_into().expect("4 bytes"));
        rest = &rest[4..];
        let Ok(len) = usize::try_from(len) else {
            columns.push(None);
            continue;
        };
        let Some(value) = rest.get(..len) else {
            break;
        };
        columns.push(Some(String::from_utf8_lossy(value).into_owned()));
        rest = &rest[len..];
    }
    columns
}

/// BackendKeyData: process id and secret key.
pub fn backend_key_data(body: &[u8]) -> Option<(u32, u32)> {
    let pid = u32::from_be_bytes(body.get(..4)?.try_into().ok()?);
    let key = u32::from_be_bytes(body.get(4..8)?.try_into().ok()?);
    (body.len() == 8).then_some((pid, key))
}

/// The fields of an ErrorResponse or NoticeResponse we report: severity, SQLSTATE, message.
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
            let Some(value) = strings.next() else { break };
            match kind {
                b'V' => fields.severity = value.to_owned(),
                b'S' if fields.severity.is_empty() => fields.severity = value.to_owned(),
                b'C' => fields.code = value.to_owned(),
                b'M' => fields.message = value.to_owned(),
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
}
