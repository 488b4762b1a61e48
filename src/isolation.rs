//! Fault isolation: a bug that panics while serving one client ends that client, never its shard or the
//! process. Shards share nothing mutable, so a panic can be contained where one client's work is done:
//!
//! - **The boundary** is one client's unit of work: its login, and its relay from the moment it wakes until it
//!   parks or leaves ([`catch`]). Everything that work holds belongs to that client (its buffers, its half-read
//!   messages, the server it leased) and is dropped with it; the server is closed, never returned to a pool,
//!   and its unit of pool budget is given back, because its protocol state can no longer be trusted.
//! - **What it may leave behind** is the shard's own bookkeeping, touched only in short synchronous calls that
//!   do not read client bytes (pool cores, counters); a `RefCell` borrowed at the panic is released by the
//!   unwind. That is why catching with `AssertUnwindSafe` is sound here.
//! - **Every other task** a shard spawns (server warm-up, mesh sends, cancels) goes through [`spawn`], so a
//!   panic there ends that task alone, with a log line. The shard's loop (`ring::event_loop`) catches each
//!   poll of a client's session as a last line: a panic outside the two catches above ends that session.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_lite::FutureExt;

/// Runs `work`; a panic in it comes back as its message instead of unwinding further.
pub async fn catch<T>(work: impl Future<Output = T>) -> Result<T, String> {
    AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .map_err(|payload| message(&*payload))
}

/// Spawns a detached task on the current shard, logging a panic in it as a bug in `what`.
pub fn spawn(what: &'static str, task: impl Future<Output = ()> + 'static) {
    glommio::spawn_local(async move {
        if let Err(panic) = catch(task).await {
            crate::error!("bug: {what} panicked: {panic}; that task alone has ended");
        }
    })
    .detach();
}

/// The text of a panic's payload (`panic!` with a literal or with format arguments).
pub fn message(payload: &(dyn Any + Send)) -> String {
    match (
        payload.downcast_ref::<&str>(),
        payload.downcast_ref::<String>(),
    ) {
        (Some(s), _) => (*s).to_owned(),
        (_, Some(s)) => s.clone(),
        _ => "(no message)".to_owned(),
    }
}

/// Where a panic happened, written when it happens: the catching site only knows the message. Replaces the
/// default hook, which writes a multi-line report that is not in the log's format.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map_or_else(String::new, |l| format!(" at {}:{}", l.file(), l.line()));
        crate::error!("panic{location}: {}", message(info.payload()));
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_message() {
        let caught = futures_lite::future::block_on(catch(async { panic!("bad {}", 7) }));
        assert_eq!(caught, Err::<(), _>("bad 7".to_owned()));
        let caught = futures_lite::future::block_on(catch(async { panic!("literal") }));
        assert_eq!(caught, Err::<(), _>("literal".to_owned()));
        assert_eq!(futures_lite::future::block_on(catch(async { 5 })), Ok(5));
    }
}
