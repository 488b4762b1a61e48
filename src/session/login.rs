//! A client's way in: startup packet (answering SSL and GSSAPI requests with 'N'), protocol negotiation,
//! limits, authentication, and the greeting. Everything here runs under client_login_timeout.

use std::sync::Arc;

use futures_lite::{AsyncReadExt, AsyncWriteExt};

use super::params::StartupParams;
use super::Fatal;
use crate::auth::{md5, random, scram};
use crate::config::{AuthType, ClientAuth, ServerPassword};
use crate::proto::message::{self, Startup};
use crate::proto::{encode, frame, sqlstate, MAX_LOGIN_MESSAGE_LEN, PROTOCOL_3_0};
use crate::ring::Socket;
use crate::shard::{AcquireError, Admission, PoolKey, Shard};

/// A logged-in client, greeted and ready for its first query.
pub struct LoggedIn {
    pub key: PoolKey,
    pub admission: Admission,
    pub user: String,
    /// The session settings the client gave at startup.
    pub settings: StartupParams,
    /// AuthenticationOk and ParameterStatus messages, sent together with BackendKeyData and ReadyForQuery
    /// once the client is registered, in one write.
    pub greeting: Vec<u8>,
}

/// What a startup ends in.
pub enum Outcome {
    Session(LoggedIn),
    /// A CancelRequest was handled; close quietly as PostgreSQL does.
    Cancelled,
}

/// Bytes read during login that are not yet consumed. Login messages are small and bounded.
struct Inbox {
    buf: Vec<u8>,
}

impl Inbox {
    async fn fill(&mut self, stream: &mut Socket) -> Result<(), Fatal> {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.map_err(|_| Fatal::Gone)?;
        if n == 0 {
            return Err(Fatal::Gone);
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    async fn startup_packet(&mut self, stream: &mut Socket) -> Result<Vec<u8>, Fatal> {
        loop {
            match frame::startup(&self.buf) {
                Ok(Some((body, used))) => {
                    let body = body.to_vec();
                    self.buf.drain(..used);
                    return Ok(body);
                }
                Ok(None) => self.fill(stream).await?,
                Err(e) => return Err(Fatal::protocol(e.to_string())),
            }
        }
    }

    /// The next PasswordMessage-family ('p') message body.
    async fn password_message(&mut self, stream: &mut Socket) -> Result<Vec<u8>, Fatal> {
        loop {
            match frame::whole(&self.buf, MAX_LOGIN_MESSAGE_LEN) {
                Ok(Some((b'p', body, used))) => {
                    let body = body.to_vec();
                    self.buf.drain(..used);
                    return Ok(body);
                }
                Ok(Some((tag, ..))) => {
                    return Err(Fatal::protocol(format!(
                        "expected password response, got message type {}",
                        tag.escape_ascii()
                    )))
                }
                Ok(None) => self.fill(stream).await?,
                Err(e) => return Err(Fatal::protocol(e.to_string())),
            }
        }
    }
}

pub async fn login(shard: &Shard, stream: &mut Socket) -> Result<Outcome, Fatal> {
    let mut inbox = Inbox { buf: Vec::new() };
    let (minor, params) = loop {
        let body = inbox.startup_packet(stream).await?;
        match Startup::parse(&body) {
            Some(Startup::Ssl | Startup::GssEnc) => {
                // Encryption comes later; PostgreSQL clients then go on in plaintext on the same connection.
                stream.write_all(b"N").await.map_err(|_| Fatal::Gone)?;
            }
            Some(Startup::Cancel { pid, secret }) => {
                shard.route_cancel(pid, secret);
                return Ok(Outcome::Cancelled);
            }
            Some(Startup::Session { minor, params }) => break (minor, params),
            None => return Err(Fatal::protocol("invalid startup packet layout")),
        }
    };
    let settings = StartupParams::from_startup(&params)
        .map_err(|why| Fatal::new(sqlstate::INVALID_PARAMETER_VALUE, why))?;
    // Room for the whole greeting (about 14 ParameterStatus messages), so it is not regrown message by message.
    let mut out = Vec::with_capacity(1024);
    let unknown: Vec<&str> = params
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| k.starts_with("_pq_."))
        .collect();
    if minor > 0 || !unknown.is_empty() {
        encode::negotiate_protocol_version(&mut out, PROTOCOL_3_0, &unknown);
    }
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let Some(user_name) = param("user").filter(|u| !u.is_empty()) else {
        return Err(Fatal::new(
            sqlstate::INVALID_AUTHORIZATION,
            "no PostgreSQL user name specified in startup packet",
        ));
    };
    // A walsender session is not something a pool of regular backends can serve.
    if param("replication").is_some_and(|v| {
        !matches!(
            v.to_ascii_lowercase().as_str(),
            "false" | "off" | "no" | "0"
        )
    }) {
        return Err(Fatal::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "replication connections are not supported by pgherd; connect to PostgreSQL directly",
        ));
    }
    let db_name = param("database")
        .filter(|d| !d.is_empty())
        .unwrap_or(user_name);
    let config = shard.config();
    let Some(db) = config.database(db_name) else {
        return Err(Fatal::new(
            sqlstate::INVALID_CATALOG_NAME,
            format!("database \"{db_name}\" does not exist"),
        ));
    };
    let user = match config.user(user_name) {
        Some(user) => Some(user),
        None if config.auth_user.is_some() => Box::pin(shard.find_user(db, user_name))
            .await
            .map_err(|why| Fatal::new(sqlstate::CONNECTION_FAILURE, why))?,
        None => None,
    };
    let Some(user) = user else {
        crate::info!(
            "login refused for unknown user \"{user_name}\" from {}",
            super::Peer(stream)
        );
        // As PostgreSQL does: the same challenge as for a real user, then 28P01, so names cannot be probed.
        let stand_in = match config.auth_type {
            AuthType::Trust => return Err(wrong_password(user_name)),
            // A hash of random bytes: no response matches it.
            AuthType::Md5 => ClientAuth::Md5(md5::stored_hash(
                user_name,
                &String::from_utf8_lossy(&random::bytes::<16>()),
            )),
            AuthType::ScramSha256 => ClientAuth::Scram(scram::Secret::for_unknown_user(
                user_name,
                &config.unknown_user_secret,
            )),
        };
        authenticate(&stand_in, user_name, stream, &mut inbox, &mut out).await?;
        return Err(wrong_password(user_name));
    };
    let record = shard.shared.user(user);
    let proved = authenticate(&record.client_auth, user_name, stream, &mut inbox, &mut out).await?;
    // Counted once authenticated, as PostgreSQL does: connections that only claim a user name cannot take
    // that user's places (they are bounded by max_logins_per_shard and client_login_timeout instead).
    let Some(admission) = Arc::clone(&shard.shared).admit(db, user) else {
        return Err(Fatal::new(
            sqlstate::TOO_MANY_CONNECTIONS,
            "sorry, too many clients already",
        ));
    };
    if let (Some(client_key), ServerPassword::ScramPassThrough { .. }) =
        (proved, &record.server_password)
    {
        shard.shared.learn_client_key(user, client_key);
    }

    let key = PoolKey {
        db: db as u32,
        user: user as u32,
    };
    let server_params = shard
        .server_params(key)
        .await
        .map_err(Fatal::from_acquire)?;
    encode::auth_ok(&mut out);
    // The client is told its own settings where it gave them, as PostgreSQL would after applying them.
    for (name, value) in server_params.iter() {
        encode::parameter_status(&mut out, name, settings.get(name).unwrap_or(value));
    }
    Ok(Outcome::Session(LoggedIn {
        key,
        admission,
        user: user_name.to_owned(),
        settings,
        greeting: out,
    }))
}

fn wrong_password(user: &str) -> Fatal {
    Fatal::new(
        sqlstate::INVALID_PASSWORD,
        format!("password authentication failed for user \"{user}\""),
    )
}

/// Checks the client's proof; for SCRAM, returns the ClientKey it proved.
async fn authenticate(
    auth: &ClientAuth,
    user: &str,
    stream: &mut Socket,
    inbox: &mut Inbox,
    out: &mut Vec<u8>,
) -> Result<Option<[u8; 32]>, Fatal> {
    match auth {
        ClientAuth::Trust => Ok(None),
        ClientAuth::Md5(stored) => {
            let salt = random::bytes::<4>();
            encode::auth_md5(out, salt);
            send(stream, out).await?;
            let response = inbox.password_message(stream).await?;
            if md5::verify(stored, salt, &response) {
                Ok(None)
            } else {
                Err(wrong_password(user))
            }
        }
        ClientAuth::Scram(secret) => {
            encode::auth_sasl(out, scram::MECHANISM);
            send(stream, out).await?;
            let initial = inbox.password_message(stream).await?;
            let (mechanism, first) = message::sasl_initial_response(&initial)
                .ok_or_else(|| Fatal::protocol("malformed SASLInitialResponse"))?;
            if mechanism != scram::MECHANISM {
                return Err(Fatal::protocol(
                    "client selected an invalid SASL authentication mechanism",
                ));
            }
            let mut exchange = scram::ServerExchange::new(secret.clone());
            let server_first = exchange
                .client_first(first)
                .map_err(|e| scram_error(e, user))?;
            encode::auth_sasl_continue(out, &server_first);
            send(stream, out).await?;
            let last = inbox.password_message(stream).await?;
            let (server_final, client_key) = exchange
                .client_final(&last)
                .map_err(|e| scram_error(e, user))?;
            encode::auth_sasl_final(out, &server_final);
            Ok(Some(client_key))
        }
    }
}

fn scram_error(e: scram::ScramError, user: &str) -> Fatal {
    match e {
        scram::ScramError::WrongPassword => wrong_password(user),
        other => Fatal::protocol(other.to_string()),
    }
}

async fn send(stream: &mut Socket, out: &mut Vec<u8>) -> Result<(), Fatal> {
    stream.write_all(out).await.map_err(|_| Fatal::Gone)?;
    out.clear();
    Ok(())
}

impl Fatal {
    fn from_acquire(e: AcquireError) -> Fatal {
        match e {
            AcquireError::Timeout => Fatal::new(
                sqlstate::QUERY_CANCELED,
                "query_wait_timeout: no server available",
            ),
            AcquireError::Rejected(fields) => Fatal::Server(fields),
            AcquireError::Unusable(why) => Fatal::new(sqlstate::CONNECTION_FAILURE, why),
        }
    }
}
