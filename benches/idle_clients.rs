//! Idle-client generator: opens N logged-in client connections through a pooler, keeps them idle, checks a
//! sample still answers, and prints the pooler's resident memory while they are held.
//!
//!     idle_clients PORT N        (env: PGPASSWORD, PGHERD_HOLD_PID = the pooler's pid to sample)
//!
//! Prints `logins_per_s=… rss_after=…` on one line. Used by benches/compare.py.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

/// Handshakes in flight at once: enough to keep the pooler busy, few enough not to overflow its backlog.
const IN_FLIGHT: usize = 64;

fn rss_bytes(pid: &str) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).expect("pooler pid");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (port, n): (u16, usize) = (args[1].parse().unwrap(), args[2].parse().unwrap());
    let password = std::env::var("PGPASSWORD").unwrap_or_default();
    let pid = std::env::var("PGHERD_HOLD_PID").expect("PGHERD_HOLD_PID");
    let conninfo =
        format!("host=127.0.0.1 port={port} user=bench dbname=bench password={password}");
    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (gate, conninfo) = (gate.clone(), conninfo.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client
        }));
    }
    let mut clients = Vec::with_capacity(n);
    for task in tasks {
        clients.push(task.await.unwrap());
    }
    let login_secs = started.elapsed().as_secs_f64();
    // Let the pooler settle, then sample it while everyone is idle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = rss_bytes(&pid);
    for client in clients.iter().step_by((n / 20).max(1)) {
        client
            .simple_query("SELECT 1")
            .await
            .expect("an idle client no longer answers");
    }
    println!("logins_per_s={:.0} rss_after={rss}", n as f64 / login_secs);
}
