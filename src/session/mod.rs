//! One task per client: login, then the relay until the client leaves. This is where a client is accepted into
//! the pooler and where it is told, with a PostgreSQL SQLSTATE, why it is being closed.

pub mod cancel;
mod intern;
mod login;
pub mod params;
mod pinning;
mod relay;
pub mod state;
pub mod statements;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;

use crate::proto::message::ErrorFields;
use crate::proto::{encode, sqlstate};
use crate::shard::Shard;
use crate::{debug, info};

/// Why a client is being closed.
#[derive(Debug)]
pub enum Fatal {
    /// The client went away: nothing to tell it.
    Gone,
    /// Tell the client this error, then close.
    Error { code: &'static str, message: String },
    /// Pass PostgreSQL's own refusal on.
    Server(ErrorFields),
}

impl Fatal {
    pub fn new(code: &'static str, message: impl Into<String>) -> Fatal {
        Fatal::Error {
            code,
            message: message.into(),
        }
    }

    pub fn protocol(message: impl Into<String>) -> Fatal {
        Fatal::new(sqlstate::PROTOCOL_VIOLATION, message)
    }

    pub fn shutdown() -> Fatal {
        Fatal::new(
            sqlstate::ADMIN_SHUTDOWN,
            "terminating connection due to administrator command",
        )
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Fatal::Gone => {}
            Fatal::Error { code, message } => encode::error_response(out, "FATAL", code, message),
            Fatal::Server(e) => encode::error_response(out, "FATAL", &e.code, &e.message),
        }
    }
}

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fatal::Gone => f.write_str("client went away"),
            Fatal::Error { code, message } => write!(f, "{code} {message}"),
            Fatal::Server(e) => write!(f, "{} {} (from PostgreSQL)", e.code, e.message),
        }
    }
}

/// Last words to a client get this long: a client that does not read must not hold its task.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(1);

async fn say_fatal(stream: &mut TcpStream, fatal: &Fatal) {
    let mut out = Vec::new();
    fatal.encode(&mut out);
    if !out.is_empty() {
        let _ =
            crate::shard::until(Instant::now() + FAREWELL_TIMEOUT, stream.write_all(&out)).await;
    }
}

/// Serves one accepted client to the end.
pub async fn serve(shard: Rc<Shard>, mut stream: TcpStream, peer: SocketAddr) {
    let deadline = Instant::now() + shard.config().client_login_timeout;
    // Boxed: login's state is large and short-lived; inline it would size every client's task for good.
    let login = Box::pin(login::login(&shard, &mut stream, peer));
    let who = match Box::pin(crate::shard::until(deadline, login)).await {
        Some(Ok(login::Outcome::Session(who))) => who,
        Some(Ok(login::Outcome::Cancelled)) => return,
        Some(Err(fatal)) => {
            if !matches!(fatal, Fatal::Gone) {
                info!("client {peer}: login failed: {fatal}");
            }
            return Box::pin(say_fatal(&mut stream, &fatal)).await;
        }
        None => {
            info!("client {peer}: login timed out");
            let fatal = Fatal::new(
                sqlstate::QUERY_CANCELED,
                "canceling authentication due to timeout",
            );
            return Box::pin(say_fatal(&mut stream, &fatal)).await;
        }
    };
    let (pid, secret) = shard.clients.register(shard.id, stream.as_raw_fd());
    debug!("client {peer}: logged in as {} (pid {pid})", who.user);
    let mut greeting = who.greeting;
    encode::backend_key_data(&mut greeting, pid, secret);
    encode::ready_for_query(&mut greeting, b'I');
    let result = match Box::pin(stream.write_all(&greeting)).await {
        Ok(()) => {
            drop(greeting);
            let settings = shard.settings.settings(who.settings);
            relay::Relay::new(&shard, who.key, pid, settings)
                .run(&mut stream)
                .await
        }
        Err(_) => Err(Fatal::Gone),
    };
    shard.clients.unregister(pid);
    drop(who.admission);
    if let Err(fatal) = result {
        if let Fatal::Error { code, message } = &fatal {
            if *code == sqlstate::PROTOCOL_VIOLATION {
                info!("client {peer}: {message}");
            }
        }
        Box::pin(say_fatal(&mut stream, &fatal)).await;
    }
}
