//! The configuration file: TOML, every key documented here with its default, unknown keys refused. Loading
//! validates everything and derives what the shards need (client secrets, server credentials), so a running
//! pooler never meets a bad value. Errors name the file, the line and the key.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::auth::{md5, scram};

/// How long a client keeps a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// From a client's login to its logout; `server_reset_query` runs before the server is reused.
    Session,
    /// From the first message of a transaction to the ReadyForQuery that ends it.
    Transaction,
    /// One statement at a time: transaction blocks are refused.
    Statement,
}

/// How pgherd authenticates clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AuthType {
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "md5")]
    Md5,
    #[serde(rename = "trust")]
    Trust,
}

/// Log verbosity, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

/// The whole file, as written. The values that validation checks keep their place in the text
/// (`Spanned`), so that an error names the line they are written on; defaults have an empty span (see
/// `line_of`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// Addresses to accept clients on. Default `["127.0.0.1:6432"]`.
    #[serde(default = "default_listen")]
    listen: Spanned<Vec<SocketAddr>>,
    /// Executors, one pinned per core. Default 0 = one per online CPU.
    #[serde(default = "unwritten")]
    workers: Spanned<usize>,
    /// Pool mode of every database and user that does not set its own. Default "transaction".
    #[serde(default = "default_pool_mode")]
    pool_mode: PoolMode,
    /// Most clients connected at once, over all shards; more get SQLSTATE 53300. Default 100000.
    #[serde(default = "default_max_client_conn")]
    max_client_conn: u32,
    /// Client authentication of every user that does not set its own. Default "scram-sha-256".
    #[serde(default = "default_auth_type")]
    auth_type: AuthType,
    /// A [users] entry whose password pgherd uses to look up users that are not in [users], with `auth_query`,
    /// in the database the client asked for. Default none: only [users] may log in.
    auth_user: Option<Spanned<String>>,
    /// The lookup: `$1` is the user name; it returns the name and the stored password (a SCRAM verifier or an
    /// md5 hash; NULL or no row: the user cannot log in). Default
    /// `SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = $1` (needs a superuser auth_user; a
    /// SECURITY DEFINER function is the usual way around that).
    #[serde(default = "default_auth_query")]
    auth_query: String,
    /// Seconds a looked-up password (or its absence) is trusted before the next login looks again. Default 60.
    #[serde(default = "secs::<60>", deserialize_with = "seconds")]
    auth_query_cache_ttl: Duration,
    /// Any text; what pgherd derives the SCRAM salt it shows for a user name that does not exist from (as
    /// PostgreSQL derives it from its cluster's secret), so the same name gets the same challenge across
    /// restarts and a client cannot tell unknown names from known ones. Default: derived from the [users]
    /// passwords and auth_user, so the salts change when they do; set it to keep them steady.
    auth_unknown_user_secret: Option<String>,
    /// listen(2) backlog of each shard's listener (capped by net.core.somaxconn). Default 4096.
    #[serde(default = "default_backlog")]
    listen_backlog: u32,
    /// Seconds a client may take from connect to logged in before it is closed (checked on the shard's
    /// one-second tick, so up to a second later). Default 60.
    #[serde(default = "secs::<60>", deserialize_with = "seconds")]
    client_login_timeout: Duration,
    /// Seconds a client may pause in the middle of a message it started sending; a client that stalls longer is
    /// closed with SQLSTATE 08P01, so a half-sent message cannot hold a buffer and a server forever. Default 60.
    #[serde(default = "secs::<60>", deserialize_with = "seconds")]
    client_message_timeout: Duration,
    /// Seconds a client may sit idle between transactions (no server, nothing in flight) before it is parked:
    /// its task and socket stream are dropped and it waits as a small entry on the shard's own io_uring, which
    /// is what lets hundreds of thousands of idle clients fit (see `shard::parking`). Parking and waking cost a
    /// few system calls, so a client that is busy more often than this never pays them. Counted in the shard's
    /// 1 s ticks, so a client parks between this and one second later. Default 1.
    #[serde(default = "secs::<1>", deserialize_with = "seconds")]
    client_park_after: Duration,
    /// Seconds a client may wait for a server before it gets SQLSTATE 57014 and is closed; checked on the
    /// shard's 1 s tick, so the wait ends between this and one second later. Default 120.
    #[serde(default = "secs::<120>", deserialize_with = "seconds")]
    query_wait_timeout: Duration,
    /// Seconds to connect and log in to PostgreSQL before the attempt counts as failed. Default 15.
    #[serde(default = "secs::<15>", deserialize_with = "seconds")]
    server_connect_timeout: Duration,
    /// Longest pause between failed server connection attempts; retries start at 50 ms and double. Default 1.
    #[serde(default = "secs::<1>", deserialize_with = "seconds")]
    server_login_retry: Duration,
    /// Seconds an idle server above `min_pool_size` is kept. Default 600.
    #[serde(default = "secs::<600>", deserialize_with = "seconds")]
    server_idle_timeout: Duration,
    /// Seconds after which a server is closed when next idle. Default 3600.
    #[serde(default = "secs::<3600>", deserialize_with = "seconds")]
    server_lifetime: Duration,
    /// Prepared statements each server connection keeps for transaction-mode clients; beyond this the least
    /// recently used is closed, and prepared again if a client needs it. Must be at least 1. Default 200.
    #[serde(default = "default_max_prepared_statements")]
    max_prepared_statements: Spanned<usize>,
    /// Named prepared statements pgherd carries for one transaction-mode client. A client past it (or past
    /// `max_client_statement_bytes`) keeps its server from then on: its further statements are prepared there
    /// under its own names, the pin is logged, and DEALLOCATE ALL or DISCARD ALL lets it go. Default 1000.
    #[serde(default = "default_max_client_statements")]
    max_client_statements: usize,
    /// Bytes of statement text (with parameter types) pgherd carries for one transaction-mode client; past it,
    /// as past `max_client_statements`. Default 4194304 (4 MiB).
    #[serde(default = "default_max_client_statement_bytes")]
    max_client_statement_bytes: usize,
    /// Settings (startup parameters and what SET, RESET and set_config changed) pgherd carries for one
    /// transaction-mode client to each server it uses. A client past it (or past `max_client_settings_bytes`)
    /// keeps its server until DISCARD ALL; the pin is logged. Default 2000.
    #[serde(default = "default_max_client_settings")]
    max_client_settings: usize,
    /// Bytes of setting names and values pgherd carries for one client; past it, as past
    /// `max_client_settings`. Default 1048576 (1 MiB): a 64 KB JWT in a custom setting fits many times.
    #[serde(default = "default_max_client_settings_bytes")]
    max_client_settings_bytes: usize,
    /// Connections still logging in (startup packet, authentication) on each shard. More are refused at once
    /// with SQLSTATE 53300; logged-in clients count only against max_client_conn and the per-database and
    /// per-user limits. With client_login_timeout it bounds what a flood of stalled logins can hold.
    /// Default 10000.
    #[serde(default = "default_max_logins_per_shard")]
    max_logins_per_shard: Spanned<usize>,
    /// Lookups of user names (found or not) that `auth_query` keeps, least recently used dropped first.
    /// Default 10000.
    #[serde(default = "default_auth_query_cache_size")]
    auth_query_cache_size: Spanned<usize>,
    /// Connections each shard keeps per database for `auth_query` lookups; lookups beyond that wait for one
    /// (within server_connect_timeout). Default 2.
    #[serde(default = "default_auth_query_connections")]
    auth_query_connections: Spanned<usize>,
    /// Query run on a server when a session-mode client leaves. Default "DISCARD ALL"; "" runs nothing.
    #[serde(default = "default_reset_query")]
    server_reset_query: String,
    /// Seconds between two "stats:" log lines (clients, clients pinned to their server). Default 60.
    #[serde(default = "secs::<60>", deserialize_with = "seconds")]
    stats_period: Duration,
    /// Seconds that SIGTERM/SIGINT waits for running transactions before closing everything. Default 30.
    #[serde(default = "secs::<30>", deserialize_with = "seconds")]
    shutdown_timeout: Duration,
    /// "error", "warn", "info" or "debug". Default "info".
    #[serde(default = "default_log_level")]
    log_level: LogLevel,
    /// The databases clients may ask for, by the name they ask for.
    #[serde(default)]
    databases: BTreeMap<String, DatabaseFile>,
    /// The users that may log in.
    #[serde(default)]
    users: BTreeMap<String, UserFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatabaseFile {
    /// PostgreSQL host. Default "127.0.0.1".
    #[serde(default = "default_host")]
    host: String,
    /// PostgreSQL port. Default 5432.
    #[serde(default = "default_port")]
    port: u16,
    /// Database name on PostgreSQL. Default: the section's name.
    dbname: Option<String>,
    /// Most server connections per user of this database, over all shards. Default 20.
    #[serde(default = "default_pool_size")]
    pool_size: Spanned<u32>,
    /// Servers kept open even when idle, in each (this database, user) pool. Default 0.
    #[serde(default = "unwritten")]
    min_pool_size: Spanned<u32>,
    /// Overrides the global pool_mode for this database.
    pool_mode: Option<PoolMode>,
    /// Most clients of this database at once. Default: no limit beyond max_client_conn.
    max_client_conn: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserFile {
    /// Plaintext, "md5<32 hex>" or a "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>" verifier.
    password: Spanned<String>,
    /// Overrides the global auth_type for this user.
    auth_type: Option<AuthType>,
    /// Overrides the database's pool_mode for this user.
    pool_mode: Option<PoolMode>,
    /// Most clients of this user at once. Default: no limit beyond max_client_conn.
    max_client_conn: Option<u32>,
}

/// A default: a value with an empty span, which names no line.
fn unwritten<T: Default>() -> Spanned<T> {
    Spanned::new(0..0, T::default())
}
fn default_listen() -> Spanned<Vec<SocketAddr>> {
    Spanned::new(0..0, vec![SocketAddr::from(([127, 0, 0, 1], 6432))])
}
fn default_pool_mode() -> PoolMode {
    PoolMode::Transaction
}
fn default_max_client_conn() -> u32 {
    100_000
}
fn default_auth_type() -> AuthType {
    AuthType::ScramSha256
}
fn default_auth_query() -> String {
    "SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = $1".into()
}
fn default_backlog() -> u32 {
    4096
}
fn default_max_prepared_statements() -> Spanned<usize> {
    Spanned::new(0..0, 200)
}
fn default_max_client_statements() -> usize {
    1000
}
fn default_max_client_statement_bytes() -> usize {
    4 << 20
}
fn default_max_client_settings() -> usize {
    2000
}
fn default_max_client_settings_bytes() -> usize {
    1 << 20
}
fn default_max_logins_per_shard() -> Spanned<usize> {
    Spanned::new(0..0, 10_000)
}
fn default_auth_query_cache_size() -> Spanned<usize> {
    Spanned::new(0..0, 10_000)
}
fn default_auth_query_connections() -> Spanned<usize> {
    Spanned::new(0..0, 2)
}
fn default_reset_query() -> String {
    "DISCARD ALL".into()
}
fn default_log_level() -> LogLevel {
    LogLevel::Info
}
fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_port() -> u16 {
    5432
}
fn default_pool_size() -> Spanned<u32> {
    Spanned::new(0..0, 20)
}
fn secs<const N: u64>() -> Duration {
    Duration::from_secs(N)
}

/// Durations are written in seconds, whole or fractional.
fn seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let value = f64::deserialize(d)?;
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "expected a positive number of seconds, got {value}"
            ))
        })
}

/// The validated configuration the shards run on. Read-only after start-up.
#[derive(Debug)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    pub workers: usize,
    pub max_client_conn: u32,
    pub listen_backlog: u32,
    pub client_login_timeout: Duration,
    pub client_message_timeout: Duration,
    pub client_park_after: Duration,
    pub query_wait_timeout: Duration,
    pub server_connect_timeout: Duration,
    pub server_login_retry: Duration,
    pub server_idle_timeout: Duration,
    pub server_lifetime: Duration,
    pub server_reset_query: String,
    pub max_prepared_statements: usize,
    pub max_client_statements: usize,
    pub max_client_statement_bytes: usize,
    pub max_client_settings: usize,
    pub max_client_settings_bytes: usize,
    pub max_logins_per_shard: usize,
    pub shutdown_timeout: Duration,
    pub stats_period: Duration,
    pub log_level: LogLevel,
    pub databases: Vec<Database>,
    /// Shared with the users `auth_query` finds, which live beside them (see `shard::users`).
    pub users: Vec<Arc<User>>,
    /// Client authentication for users found by auth_query.
    pub auth_type: AuthType,
    /// Index in `users` of the auth_user.
    pub auth_user: Option<usize>,
    pub auth_query: String,
    pub auth_query_cache_ttl: Duration,
    pub auth_query_cache_size: usize,
    pub auth_query_connections: usize,
    /// Keys the stand-in SCRAM secrets of unknown users (see `auth_unknown_user_secret`).
    pub unknown_user_secret: [u8; 32],
}

#[derive(Debug)]
pub struct Database {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub pool_size: u32,
    pub min_pool_size: u32,
    pub pool_mode: PoolMode,
    pub max_client_conn: Option<u32>,
}

#[derive(Debug)]
pub struct User {
    pub name: String,
    pub client_auth: ClientAuth,
    /// What pgherd answers when PostgreSQL asks this user for a password.
    pub server_password: ServerPassword,
    pub pool_mode: Option<PoolMode>,
    pub max_client_conn: Option<u32>,
}

/// What a client must prove, derived once at load so no login pays for a PBKDF2.
#[derive(Debug)]
pub enum ClientAuth {
    Trust,
    /// The "md5..." hash PostgreSQL would store.
    Md5(String),
    Scram(scram::Secret),
}

#[derive(Debug, PartialEq, Eq)]
pub enum ServerPassword {
    Plain(String),
    /// Enough for md5 authentication, not for SCRAM or cleartext.
    Md5(String),
    /// A SCRAM verifier: PostgreSQL holding the same verifier accepts the ClientKey that a client proves when it
    /// logs in to pgherd with SCRAM (PgBouncer's pass-through), so operators need not write plaintext passwords.
    ScramPassThrough {
        server_key: [u8; 32],
    },
}

impl Config {
    pub fn database(&self, name: &str) -> Option<usize> {
        self.databases.iter().position(|d| d.name == name)
    }

    pub fn user(&self, name: &str) -> Option<usize> {
        self.users.iter().position(|u| u.name == name)
    }

    /// Pool mode of a (database, user) pair: the user's override wins over the database's. `db` is an index
    /// into `databases` (from `Config::database`), not anything read from the file; out of range is a bug.
    pub fn pool_mode(&self, db: usize, user: usize) -> PoolMode {
        self.users
            .get(user)
            .and_then(|u| u.pool_mode)
            .unwrap_or(self.databases[db].pool_mode)
    }

    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: None,
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&text).map_err(|mut e| {
            e.file = path.display().to_string();
            e
        })
    }

    /// Validates a configuration text; errors carry the line they concern.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let file: File = toml::from_str(text).map_err(|e| ConfigError {
            file: String::new(),
            line: e.span().map(|span| line_at(text, span.start)),
            message: e.message().trim().to_owned(),
        })?;
        // An error about a value names the line the value is written on.
        let fail = |span: std::ops::Range<usize>, message: String| ConfigError {
            file: String::new(),
            line: line_of(text, span),
            message,
        };

        if file.listen.get_ref().is_empty() {
            return Err(fail(
                file.listen.span(),
                "listen: at least one address is needed".into(),
            ));
        }
        // Client ids carry the shard in 7 bits (see session::cancel).
        if *file.workers.get_ref() > 128 {
            return Err(fail(
                file.workers.span(),
                format!(
                    "workers: {} is more than the 128 supported",
                    file.workers.get_ref()
                ),
            ));
        }
        for (key, value) in [
            ("max_prepared_statements", &file.max_prepared_statements),
            ("max_logins_per_shard", &file.max_logins_per_shard),
            ("auth_query_cache_size", &file.auth_query_cache_size),
            ("auth_query_connections", &file.auth_query_connections),
        ] {
            if *value.get_ref() == 0 {
                return Err(fail(value.span(), format!("{key}: must be at least 1")));
            }
        }
        let unknown_user_secret = unknown_user_secret(&file);
        let mut databases = Vec::new();
        for (name, d) in file.databases {
            let (pool_size, min_pool_size) = (*d.pool_size.get_ref(), *d.min_pool_size.get_ref());
            if pool_size == 0 {
                return Err(fail(
                    d.pool_size.span(),
                    format!("databases.{name}.pool_size: must be at least 1"),
                ));
            }
            if min_pool_size > pool_size {
                return Err(fail(
                    d.min_pool_size.span(),
                    format!("databases.{name}.min_pool_size: more than pool_size"),
                ));
            }
            databases.push(Database {
                dbname: d.dbname.unwrap_or_else(|| name.clone()),
                name,
                host: d.host,
                port: d.port,
                pool_size,
                min_pool_size,
                pool_mode: d.pool_mode.unwrap_or(file.pool_mode),
                max_client_conn: d.max_client_conn,
            });
        }
        let mut users = Vec::new();
        for (name, u) in file.users {
            let auth = u.auth_type.unwrap_or(file.auth_type);
            let (client_auth, server_password) = derive_secrets(&name, u.password.get_ref(), auth)
                .map_err(|why| fail(u.password.span(), format!("users.{name}.password: {why}")))?;
            users.push(Arc::new(User {
                name,
                client_auth,
                server_password,
                pool_mode: u.pool_mode,
                max_client_conn: u.max_client_conn,
            }));
        }
        let auth_user = match &file.auth_user {
            Some(name) => Some(
                users
                    .iter()
                    .position(|u| u.name == *name.get_ref())
                    .ok_or_else(|| {
                        fail(
                            name.span(),
                            format!("auth_user: \"{}\" is not in [users]", name.get_ref()),
                        )
                    })?,
            ),
            None => None,
        };
        Ok(Config {
            auth_type: file.auth_type,
            auth_user,
            auth_query: file.auth_query,
            auth_query_cache_ttl: file.auth_query_cache_ttl,
            auth_query_cache_size: file.auth_query_cache_size.into_inner(),
            auth_query_connections: file.auth_query_connections.into_inner(),
            unknown_user_secret,
            listen: file.listen.into_inner(),
            workers: file.workers.into_inner(),
            max_client_conn: file.max_client_conn,
            listen_backlog: file.listen_backlog,
            client_login_timeout: file.client_login_timeout,
            client_message_timeout: file.client_message_timeout,
            client_park_after: file.client_park_after,
            query_wait_timeout: file.query_wait_timeout,
            server_connect_timeout: file.server_connect_timeout,
            server_login_retry: file.server_login_retry,
            server_idle_timeout: file.server_idle_timeout,
            server_lifetime: file.server_lifetime,
            server_reset_query: file.server_reset_query,
            max_prepared_statements: file.max_prepared_statements.into_inner(),
            max_client_statements: file.max_client_statements,
            max_client_statement_bytes: file.max_client_statement_bytes,
            max_client_settings: file.max_client_settings,
            max_client_settings_bytes: file.max_client_settings_bytes,
            max_logins_per_shard: file.max_logins_per_shard.into_inner(),
            shutdown_timeout: file.shutdown_timeout,
            stats_period: file.stats_period,
            log_level: file.log_level,
            databases,
            users,
        })
    }
}

/// The configured `auth_unknown_user_secret`, or one derived from what only the operator knows: the users'
/// passwords as written.
fn unknown_user_secret(file: &File) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(b"pgherd unknown-user secret\0");
    match &file.auth_unknown_user_secret {
        Some(secret) => hash.update(secret.as_bytes()),
        None => {
            for (name, user) in &file.users {
                let password = user.password.get_ref();
                for part in [name.as_bytes(), b"\0", password.as_bytes(), b"\0"] {
                    hash.update(part);
                }
            }
            let auth_user = file.auth_user.as_ref().map_or("", |name| name.get_ref());
            hash.update(auth_user.as_bytes());
        }
    }
    hash.finalize().into()
}

fn is_md5_hash(password: &str) -> bool {
    password
        .strip_prefix("md5")
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The line (from 1) that byte `offset` of `text` is on. Counts bytes, so no offset can panic: one past the
/// end counts every line.
fn line_at(text: &str, offset: usize) -> usize {
    let before = text.as_bytes().iter().take(offset);
    before.filter(|&&b| b == b'\n').count() + 1
}

/// The line a value is written on; none for a default, which is not written and has an empty span (no value
/// written in TOML is empty).
fn line_of(text: &str, span: std::ops::Range<usize>) -> Option<usize> {
    (!span.is_empty()).then(|| line_at(text, span.start))
}

/// Turns a configured password into what client authentication checks and what server login answers.
pub(crate) fn derive_secrets(
    user: &str,
    password: &str,
    auth: AuthType,
) -> Result<(ClientAuth, ServerPassword), String> {
    if password.starts_with("SCRAM-SHA-256$") {
        let secret = scram::Secret::parse(password).ok_or("malformed SCRAM-SHA-256 verifier")?;
        let server = ServerPassword::ScramPassThrough {
            server_key: secret.server_key,
        };
        return match auth {
            AuthType::ScramSha256 => Ok((ClientAuth::Scram(secret), server)),
            AuthType::Trust => Ok((ClientAuth::Trust, server)),
            AuthType::Md5 => Err("a SCRAM verifier cannot check md5 logins".into()),
        };
    }
    if is_md5_hash(password) {
        let hash = password.to_ascii_lowercase();
        return match auth {
            AuthType::Md5 => Ok((ClientAuth::Md5(hash.clone()), ServerPassword::Md5(hash))),
            AuthType::Trust => Ok((ClientAuth::Trust, ServerPassword::Md5(hash))),
            AuthType::ScramSha256 => Err("an md5 hash cannot check SCRAM-SHA-256 logins".into()),
        };
    }
    let client = match auth {
        AuthType::Trust => ClientAuth::Trust,
        AuthType::Md5 => ClientAuth::Md5(md5::stored_hash(user, password)),
        AuthType::ScramSha256 => ClientAuth::Scram(scram::Secret::generate(password)),
    };
    Ok((client, ServerPassword::Plain(password.to_owned())))
}

/// A configuration problem, reported as `file:line: message`.
#[derive(Debug)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file, line, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
listen = ["127.0.0.1:6432"]
workers = 2
pool_mode = "transaction"
max_client_conn = 100000
auth_type = "scram-sha-256"

[databases.bench]
host = "127.0.0.1"
port = 5432
dbname = "bench"
pool_size = 20

[users.bench]
password = "bench"

[users.legacy]
password = "legacy"
auth_type = "md5"
"#;

    #[test]
    fn the_documented_example_loads() {
        let c = Config::parse(EXAMPLE).unwrap();
        assert_eq!(c.workers, 2);
        assert_eq!(c.databases[0].pool_size, 20);
        assert_eq!(c.pool_mode(0, 0), PoolMode::Transaction);
        let legacy = &c.users[c.user("legacy").unwrap()];
        assert!(
            matches!(&legacy.client_auth, ClientAuth::Md5(h) if *h == md5::stored_hash("legacy", "legacy"))
        );
        assert!(matches!(
            c.users[c.user("bench").unwrap()].client_auth,
            ClientAuth::Scram(_)
        ));
        assert_eq!(c.query_wait_timeout, Duration::from_secs(120));
    }

    fn error_of(text: &str) -> ConfigError {
        Config::parse(text).unwrap_err()
    }

    #[test]
    fn unknown_keys_name_the_key_and_line() {
        let e = error_of("workers = 1\npool_sise = 3\n");
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("pool_sise"), "{}", e.message);
        let e = error_of("[databases.a]\nhost = \"h\"\npoolsize = 3\n");
        assert_eq!(e.line, Some(3));
    }

    #[test]
    fn bad_values_are_refused() {
        let e = error_of("workers = 1\npool_mode = \"sometimes\"\n");
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("sometimes"), "{}", e.message);
        let e = error_of("query_wait_timeout = -1\n");
        assert_eq!(e.line, Some(1));
        let e = error_of("[databases.a]\npool_size = 0\n");
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("pool_size"));
        let e = error_of("\n[users.u]\npassword = \"md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\n");
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("users.u.password"));
        assert!(error_of("listen = [\"not an address\"]")
            .message
            .contains("address"));
    }

    #[test]
    fn validation_errors_name_the_line_of_the_value_at_fault() {
        // A key that starts like another, above it.
        let e = error_of("listen_backlog = 0\nlisten = []\n");
        assert_eq!(
            (e.line, e.message.as_str()),
            (Some(2), "listen: at least one address is needed")
        );
        let e = error_of("log_level = \"info\"\n\nworkers = 129\n");
        assert_eq!(e.line, Some(3));
        for key in [
            "max_prepared_statements",
            "max_logins_per_shard",
            "auth_query_cache_size",
            "auth_query_connections",
        ] {
            let e = error_of(&format!("workers = 1\n{key} = 0\n"));
            assert_eq!(e.line, Some(2), "{key}");
            assert!(e.message.starts_with(key), "{}", e.message);
        }
        let e = error_of("auth_type = \"trust\"\nauth_user = \"v\"\n[users.u]\npassword = \"p\"\n");
        assert_eq!(e.line, Some(2));
        // Databases and users in every form TOML allows, with names that need quotes.
        for (text, line) in [
            ("[ databases . \"a b\" ]\nhost = \"h\"\npool_size = 0\n", 3),
            ("[databases.\"a.b\"]\nmin_pool_size = 30\n", 2),
            ("[databases.a]\npool_size = 5\nmin_pool_size = 6\n", 3),
            ("workers = 1\ndatabases.app.pool_size = 0\n", 2),
            ("workers = 1\n\"databases\" . 'x y' . pool_size = 0\n", 2),
            (
                "[databases]\nb = { host = \"h\" }\napp = { pool_size = 0 }\n",
                3,
            ),
            (
                "[databases]\napp = {}\n[databases.z]\n\n\npool_size = 0\n",
                6,
            ),
            ("users.\"u v\".password = \"SCRAM-SHA-256$0:x\"\n", 1),
            (
                "[users]\nu = { auth_type = \"md5\", password = \"SCRAM-SHA-256$0:x\" }\n",
                2,
            ),
        ] {
            let e = error_of(text);
            assert_eq!(e.line, Some(line), "{text}: {}", e.message);
        }
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = Config::load(Path::new("/nonexistent/pgherd.toml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/pgherd.toml: cannot read"),
            "{e}"
        );
    }
}
