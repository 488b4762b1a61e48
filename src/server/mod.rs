//! Connections to PostgreSQL: login as a client ([`connect`]), health, cancel, and moving a connection to
//! another shard.

pub mod connect;

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};

use crate::proto::frame::{Flow, Scanner, Want};
use crate::proto::{encode, message, MAX_MESSAGE_LEN};
use crate::ring::Socket;
use crate::session::params::Fingerprint;
use crate::session::statements::{Held, ServerStatements};

/// A logged-in server connection that no client is using mid-message.
pub struct Server {
    pub stream: Socket,
    /// PostgreSQL's BackendKeyData, for cancelling this server's query.
    pub key: BackendKey,
    /// The ParameterStatus values this server reported.
    pub params: Vec<(String, String)>,
    pub created: Instant,
    pub idle_since: Instant,
    /// Which client settings the session has (see `session::params`).
    pub settings: Fingerprint,
    /// The prepared statements it holds for transaction-mode clients.
    pub statements: ServerStatements,
}

#[derive(Debug, Clone, Copy)]
pub struct BackendKey {
    pub addr: SocketAddr,
    pub pid: u32,
    pub secret: u32,
}

/// A server on its way to another shard: the socket as a plain fd, since a `Socket` belongs to the shard that
/// made it.
pub struct Transfer {
    fd: OwnedFd,
    key: BackendKey,
    params: Vec<(String, String)>,
    created: Instant,
    settings: Fingerprint,
    statements: Held,
}

impl Server {
    /// True unless the server closed or sent something while idle (a FATAL from pg_terminate_backend or a
    /// shutdown): any byte from an idle server means it is going away. Asks the socket's readiness, which its
    /// poll keeps: no system call.
    pub fn is_alive(&mut self) -> bool {
        self.stream.is_quiet()
    }

    pub fn into_transfer(self) -> std::io::Result<Transfer> {
        Ok(Transfer {
            fd: self.stream.into_fd(),
            key: self.key,
            params: self.params,
            created: self.created,
            settings: self.settings,
            statements: self.statements.into_held(),
        })
    }

    pub fn from_transfer(t: Transfer) -> Server {
        Server {
            stream: Socket::adopt(t.fd),
            key: t.key,
            params: t.params,
            created: t.created,
            idle_since: Instant::now(),
            settings: t.settings,
            statements: t.statements.into(),
        }
    }

    /// Runs simple-protocol SQL of pgherd's own (ROLLBACK, the reset query, a client's settings) and waits for
    /// its ReadyForQuery, dropping the replies. Returns whether it succeeded and left the server idle.
    pub async fn run(&mut self, sql: &str, limit: Duration) -> bool {
        self.query(sql, limit, SMALL_ANSWER).await.is_some()
    }

    /// [`Server::run`], keeping the rows (as text) and the ParameterStatus messages the SQL caused, each message
    /// at most `largest` bytes: a longer one fails the query.
    pub async fn query(&mut self, sql: &str, limit: Duration, largest: usize) -> Option<Answer> {
        let mut out = Vec::new();
        encode::query(&mut out, sql);
        self.answer(out, limit, largest).await
    }

    /// One statement with text parameters, by the extended protocol, so values are never spliced into SQL.
    pub async fn query_params(
        &mut self,
        sql: &str,
        params: &[&str],
        limit: Duration,
    ) -> Option<Answer> {
        let mut out = Vec::new();
        encode::extended_query(&mut out, sql, params);
        self.answer(out, limit, SMALL_ANSWER).await
    }

    async fn answer(&mut self, out: Vec<u8>, limit: Duration, largest: usize) -> Option<Answer> {
        let work = async {
            self.stream.write_all(&out).await.ok()?;
            self.drain_until_ready(largest).await
        };
        glommio::timer::timeout(limit, async { Ok(work.await) })
            .await
            .ok()
            .flatten()
    }

    /// Reads server output until a ReadyForQuery; `None` after an error, a row or ParameterStatus longer than
    /// `largest`, or unless the server is left idle. The buffer grows only as far as a message needs.
    async fn drain_until_ready(&mut self, largest: usize) -> Option<Answer> {
        let mut buf = vec![0u8; 8192];
        let (mut have, mut status, mut failed) = (0, None, false);
        let mut answer = Answer::default();
        let mut scanner = Scanner::default();
        while status.is_none() {
            if have == buf.len() {
                // Full with the start of one message no longer than `largest` (longer ones stream through).
                buf.resize((2 * buf.len()).min(largest + 5).max(buf.len() + 1), 0);
            }
            let n = self.stream.read(&mut buf[have..]).await.ok()?;
            if n == 0 {
                return None;
            }
            have += n;
            let used = scanner
                .scan(
                    &buf[..have],
                    MAX_MESSAGE_LEN,
                    |t| match t {
                        b'Z' | b'D' | b'S' => Want::Whole(largest),
                        _ => Want::Tag,
                    },
                    |tag, body| {
                        match (tag, body) {
                            (b'Z', Some(&[s])) => status = Some(s),
                            (b'D', Some(row)) => answer.rows.push(message::data_row(row)),
                            (b'S', Some(body)) => {
                                encode::parts(&mut answer.statuses, b'S', &[body])
                            }
                            (b'E' | b'D' | b'S', _) => failed = true,
                            _ => {}
                        }
                        Flow::Pass
                    },
                )
                .ok()?;
            buf.copy_within(used..have, 0);
            have -= used;
        }
        (status == Some(b'I') && !failed).then_some(answer)
    }
}

/// The longest row or ParameterStatus pgherd reads back from its own short queries (ROLLBACK, resets,
/// auth_query): a name and a password hash.
const SMALL_ANSWER: usize = 4096;

/// What a query of pgherd's own got back.
#[derive(Debug, Default)]
pub struct Answer {
    /// Each row's columns as text (NULL as `None`).
    pub rows: Vec<Vec<Option<String>>>,
    /// ParameterStatus messages, whole, to pass on to the client whose settings changed.
    pub statuses: Vec<u8>,
}

/// Asks PostgreSQL to cancel whatever `key`'s backend is running, on a connection of its own as the protocol
/// requires. Best effort, like PostgreSQL's own cancel.
pub async fn cancel(key: BackendKey, limit: Duration) {
    let mut out = Vec::new();
    encode::cancel_request(&mut out, key.pid, key.secret);
    let attempt = async {
        let mut stream = Socket::connect(key.addr).await?;
        stream.write_all(&out).await?;
        // PostgreSQL closes the connection once it has acted; wait for that so the cancel has landed.
        let mut byte = [0u8; 1];
        let _ = stream.read(&mut byte).await;
        Ok(())
    };
    let _ = glommio::timer::timeout(limit, attempt).await;
}
