//! Transaction mode with session state: a client that creates state a server cannot hand on (LISTEN, SET,
//! temporary tables, prepared statements, advisory locks, WITH HOLD cursors) keeps its server until the state is
//! gone, and nothing of it reaches another client.

mod common;

use std::time::Duration;

use common::{backend_pid, connect, fixture, value, Fixture};
use futures_util::StreamExt;
use tokio_postgres::AsyncMessage;

/// Runs a short transaction on `other` so that, with a small pool, an unpinned client would move servers.
async fn churn(other: &tokio_postgres::Client) {
    other
        .batch_execute("BEGIN; SELECT 1; COMMIT")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_tables_and_settings_stay_with_their_client() {
    let Fixture { pg: _pg, herd } = fixture("transaction", 2, "workers = 1");
    let a = connect(herd.port, "app", "secret", "app").await;
    let b = connect(herd.port, "app", "secret", "app").await;
    a.batch_execute("CREATE TEMP TABLE scratch (v int); SET application_name = 'client-a'")
        .await
        .unwrap();
    let pid = backend_pid(&a).await;
    for i in 0..10 {
        churn(&b).await;
        a.batch_execute(&format!("INSERT INTO scratch VALUES ({i})"))
            .await
            .unwrap();
        assert_eq!(
            backend_pid(&a).await,
            pid,
            "a pinned client kept its server"
        );
        let name: String = value(&b, "SHOW application_name").await;
        assert_ne!(name, "client-a", "a setting leaked to another client");
    }
    let n: i64 = value(&a, "SELECT count(*) FROM scratch").await;
    assert_eq!(n, 10);
    // DISCARD ALL ends the state: the client returns to pooling.
    a.batch_execute("DISCARD ALL").await.unwrap();
    let held = connect(herd.port, "app", "secret", "app").await;
    held.batch_execute("BEGIN").await.unwrap();
    // With one server held by `held`, a and b share the other one: both keep working.
    for _ in 0..3 {
        churn(&b).await;
        a.batch_execute("SELECT 1").await.unwrap();
    }
    held.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_prepared_statements_work_in_transaction_mode() {
    let Fixture { pg: _pg, herd } = fixture("transaction", 2, "workers = 2");
    let a = connect(herd.port, "app", "secret", "app").await;
    let b = connect(herd.port, "app", "secret", "app").await;
    // tokio-postgres prepares named statements by default.
    let stmt = a.prepare("SELECT $1::int + 1").await.unwrap();
    for i in 0..20 {
        churn(&b).await;
        let v: i32 = a.query_one(&stmt, &[&i]).await.unwrap().get(0);
        assert_eq!(v, i + 1);
        let w: i32 = b
            .query_one("SELECT $1::int * 3", &[&i])
            .await
            .unwrap()
            .get(0);
        assert_eq!(w, i * 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_clients_state_is_discarded_when_it_leaves() {
    let Fixture { pg: _pg, herd } = fixture("transaction", 1, "workers = 1");
    let a = connect(herd.port, "app", "secret", "app").await;
    a.batch_execute(
        "CREATE TEMP TABLE mine (v int); SET search_path = nowhere; SELECT pg_advisory_lock(7)",
    )
    .await
    .unwrap();
    let pid = backend_pid(&a).await;
    drop(a);
    let b = connect(herd.port, "app", "secret", "app").await;
    assert_eq!(backend_pid(&b).await, pid, "one server: b gets a's old one");
    let err = b.batch_execute("SELECT * FROM mine").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42P01");
    let path: String = value(&b, "SHOW search_path").await;
    assert_ne!(path, "nowhere");
    let free: bool = value(&b, "SELECT pg_try_advisory_lock(7)").await;
    assert!(free, "a's advisory lock was released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_keeps_the_server_so_notifications_arrive() {
    let Fixture { pg: _pg, herd } = fixture("transaction", 2, "workers = 2");
    let conninfo = format!(
        "host=127.0.0.1 port={} user=app password=secret dbname=app",
        herd.port
    );
    let (listener, mut connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut notes) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    listener.batch_execute("LISTEN jobs").await.unwrap();
    let sender = connect(herd.port, "app", "secret", "app").await;
    for i in 0..3 {
        churn(&sender).await;
        sender
            .batch_execute(&format!("NOTIFY jobs, 'job {i}'"))
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), notes.recv())
            .await
            .expect("no notification");
        assert_eq!(got.as_deref(), Some(format!("job {i}").as_str()));
    }
    listener.batch_execute("UNLISTEN *").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_clients_are_counted_in_stats() {
    let Fixture { pg: _pg, herd } = fixture("transaction", 2, "workers = 2\nstats_period = 0.2");
    let a = connect(herd.port, "app", "secret", "app").await;
    a.batch_execute("LISTEN jobs").await.unwrap();
    herd.wait_for_log("stats: 1 client(s), 1 pinned", Duration::from_secs(10));
    herd.wait_for_log("keeps its server: LISTEN", Duration::from_secs(1));
    a.batch_execute("UNLISTEN *").await.unwrap();
    herd.wait_for_log("returns to pooling", Duration::from_secs(5));
    let log_len = herd.log().len();
    common::wait_until(
        Duration::from_secs(10),
        "a stats line with nobody pinned",
        || herd.log()[log_len..].contains("stats: 1 client(s), 0 pinned"),
    );
}
