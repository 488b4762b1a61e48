//! Logging in to PostgreSQL as a client: startup, whatever authentication the server asks for, then the
//! ParameterStatus set and BackendKeyData that the pooler keeps.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};

use super::{BackendKey, Server};
use crate::auth::{md5, scram};
use crate::config::{Database, ServerPassword, User};
use crate::proto::message::{self, AuthRequest, ErrorFields};
use crate::proto::{encode, frame, sqlstate, MAX_LOGIN_MESSAGE_LEN};
use crate::ring::Socket;
use crate::session::params::FRESH;

#[derive(Debug)]
pub enum ConnectError {
    /// Could not reach the server, or it went away: worth retrying.
    Io(std::io::Error),
    /// The server refused the login with this error (wrong password, no such database, starting up ...).
    Rejected(ErrorFields),
    /// The server asked for something pgherd cannot answer, or spoke nonsense.
    Unsupported(String),
}

impl ConnectError {
    /// Errors a retry may cure: the server is down or still starting.
    pub fn is_transient(&self) -> bool {
        match self {
            ConnectError::Io(_) => true,
            ConnectError::Rejected(e) => is_transient(e),
            ConnectError::Unsupported(_) => false,
        }
    }
}

/// Refusals that go away by themselves: the server is starting up, or out of connection slots.
pub fn is_transient(e: &ErrorFields) -> bool {
    e.code == sqlstate::CANNOT_CONNECT_NOW || e.code == sqlstate::TOO_MANY_CONNECTIONS
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Io(e) => write!(f, "{e}"),
            ConnectError::Rejected(e) => write!(f, "{} {}: {}", e.severity, e.code, e.message),
            ConnectError::Unsupported(why) => f.write_str(why),
        }
    }
}

impl From<std::io::Error> for ConnectError {
    fn from(e: std::io::Error) -> Self {
        ConnectError::Io(e)
    }
}

fn unsupported(why: impl Into<String>) -> ConnectError {
    ConnectError::Unsupported(why.into())
}

pub fn resolve(db: &Database) -> std::io::Result<SocketAddr> {
    (db.host.as_str(), db.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no address for {}", db.host),
            )
        })
}

/// Connects and logs in within `limit`. `client_key` is the SCRAM ClientKey a client of this user proved, for
/// users configured with a verifier only.
pub async fn connect(
    db: &Database,
    user: &User,
    client_key: Option<[u8; 32]>,
    limit: Duration,
) -> Result<Server, ConnectError> {
    let attempt = async { Ok(login(db, user, client_key).await) };
    match glommio::timer::timeout(limit, attempt).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "login timed out",
        ))),
    }
}

async fn login(
    db: &Database,
    user: &User,
    client_key: Option<[u8; 32]>,
) -> Result<Server, ConnectError> {
    let addr = resolve(db)?;
    let mut stream = Socket::connect(addr).await?;
    let mut out = Vec::new();
    encode::startup_message(&mut out, &[("user", &user.name), ("database", &db.dbname)]);
    stream.write_all(&out).await?;

    let mut buf = Vec::with_capacity(1024);
    let mut scram: Option<scram::ClientExchange> = None;
    let mut params = Vec::new();
    let mut key = None;
    loop {
        let (tag, body, used) = loop {
            if let Some((tag, body, used)) =
                frame::whole(&buf, MAX_LOGIN_MESSAGE_LEN).map_err(|e| unsupported(e.to_string()))?
            {
                break (tag, body.to_vec(), used);
            }
            let mut chunk = [0u8; 2048];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        buf.drain(..used);
        out.clear();
        match tag {
            b'R' => {
                let request = AuthRequest::parse(&body)
                    .ok_or_else(|| unsupported("malformed authentication"))?;
                if let (AuthRequest::SaslContinue(data), Some(exchange)) = (&request, &mut scram) {
                    derive_between_others(exchange, data).await?;
                }
                answer(request, user, client_key, &mut scram, &mut out)?;
                if !out.is_empty() {
                    stream.write_all(&out).await?;
                }
            }
            b'S' => {
                let (name, value) = message::parameter_status(&body)
                    .ok_or_else(|| unsupported("malformed ParameterStatus"))?;
                params.push((name.to_owned(), value.to_owned()));
            }
            b'K' => {
                let (pid, secret) = message::backend_key_data(&body)
                    .ok_or_else(|| unsupported("malformed BackendKeyData"))?;
                key = Some(BackendKey { addr, pid, secret });
            }
            b'E' => return Err(ConnectError::Rejected(ErrorFields::parse(&body))),
            b'N' | b'v' => {}
            b'Z' => {
                let key = key.ok_or_else(|| unsupported("server sent no BackendKeyData"))?;
                let now = Instant::now();
                return Ok(Server {
                    stream,
                    key,
                    params,
                    created: now,
                    idle_since: now,
                    settings: FRESH,
                    statements: Default::default(),
                });
            }
            other => {
                return Err(unsupported(format!(
                    "unexpected message \"{}\" during login",
                    other.escape_ascii()
                )))
            }
        }
    }
}

/// PBKDF2 iterations between two yields: about 50 µs of hashing.
const DERIVATION_STEP: u32 = 128;

/// A plaintext password makes a SCRAM login derive its keys (4,096 HMACs, a millisecond or two): done in
/// steps with the shard's other tasks running in between, so clients mid-transaction do not wait for it.
async fn derive_between_others(
    exchange: &mut scram::ClientExchange,
    server_first: &[u8],
) -> Result<(), ConnectError> {
    let derivation = exchange
        .derivation(server_first)
        .map_err(|e| unsupported(format!("SCRAM: {e}")))?;
    if let Some(mut derivation) = derivation {
        while !derivation.step(DERIVATION_STEP) {
            futures_lite::future::yield_now().await;
        }
        exchange.use_keys(derivation.keys());
    }
    Ok(())
}

/// Writes the answer to one authentication request into `out` (nothing for AuthenticationOk and SASL final).
fn answer(
    request: AuthRequest<'_>,
    user: &User,
    client_key: Option<[u8; 32]>,
    scram: &mut Option<scram::ClientExchange>,
    out: &mut Vec<u8>,
) -> Result<(), ConnectError> {
    let plain = match &user.server_password {
        ServerPassword::Plain(p) => Some(p.as_str()),
        _ => None,
    };
    let no_password = |method: &str| {
        unsupported(format!(
            "PostgreSQL asks {method} authentication for user \"{}\" and pgherd has no usable password",
            user.name
        ))
    };
    match request {
        AuthRequest::Ok => {}
        AuthRequest::Cleartext => encode::password(
            out,
            plain.ok_or_else(|| no_password("password"))?.as_bytes(),
        ),
        AuthRequest::Md5 { salt } => {
            let stored = match &user.server_password {
                ServerPassword::Plain(p) => md5::stored_hash(&user.name, p),
                ServerPassword::Md5(hash) => hash.clone(),
                ServerPassword::ScramPassThrough { .. } => return Err(no_password("md5")),
            };
            encode::password(out, &md5::client_response(&stored, salt));
        }
        AuthRequest::Sasl { mechanisms } => {
            if !mechanisms.contains(&scram::MECHANISM) {
                return Err(unsupported(format!(
                    "server offers only SASL {mechanisms:?}"
                )));
            }
            let exchange = match (&user.server_password, client_key) {
                (ServerPassword::Plain(password), _) => scram::ClientExchange::new(password),
                (ServerPassword::ScramPassThrough { server_key }, Some(client_key)) => {
                    scram::ClientExchange::from_keys(client_key, *server_key)
                }
                (ServerPassword::ScramPassThrough { .. }, None) => {
                    return Err(unsupported(format!(
                        "user \"{}\" is configured with a SCRAM verifier only: pgherd can log in to PostgreSQL \
                         once a client of this user has logged in with SCRAM",
                        user.name
                    )))
                }
                _ => return Err(no_password("SCRAM-SHA-256")),
            };
            encode::sasl_initial_response(out, scram::MECHANISM, &exchange.client_first());
            *scram = Some(exchange);
        }
        AuthRequest::SaslContinue(data) => {
            let exchange = scram
                .as_mut()
                .ok_or_else(|| unsupported("SASL continue before SASL start"))?;
            let reply = exchange
                .server_first(data)
                .map_err(|e| unsupported(format!("SCRAM: {e}")))?;
            encode::sasl_response(out, &reply);
        }
        AuthRequest::SaslFinal(data) => {
            let exchange = scram
                .as_ref()
                .ok_or_else(|| unsupported("SASL final before SASL start"))?;
            exchange
                .server_final(data)
                .map_err(|e| unsupported(format!("SCRAM: {e}")))?;
        }
        AuthRequest::Unsupported(code) => {
            return Err(unsupported(format!(
                "server asks authentication method {code}"
            )));
        }
    }
    Ok(())
}
