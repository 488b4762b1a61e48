//! Fault isolation: a bug that panics while serving one client ends that client only. Needs the
//! `fault-injection` feature (the README's test command enables it), which lets a query make the relay panic.
#![cfg(feature = "fault-injection")]

mod common;

use std::time::Duration;

use common::{connect, fixture, value, wait_until, Fixture};

const INJECT_PANIC: &str = "SELECT 'pgherd: inject a panic'";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_ends_only_the_client_it_happened_in() {
    let Fixture { pg, herd } = fixture("transaction", 2, "workers = 2");
    let mut others = Vec::new();
    for _ in 0..100 {
        others.push(connect(herd.port, "app", "secret", "app").await);
    }
    // Two of them hold a transaction open across the panics, on both servers' worth of budget minus one.
    others[0]
        .batch_execute("BEGIN; SET LOCAL application_name = 'held'")
        .await
        .unwrap();
    for round in 0..3 {
        let victim = connect(herd.port, "app", "secret", "app").await;
        let err = victim.simple_query(INJECT_PANIC).await.unwrap_err();
        let code = err.code().map(|c| c.code().to_owned());
        assert_eq!(code.as_deref(), Some("XX000"), "round {round}: {err:?}");
        assert!(victim.is_closed() || victim.simple_query("SELECT 1").await.is_err());
    }
    herd.wait_for_log("fault injected by the client", Duration::from_secs(5));
    let log = herd.log();
    assert!(
        log.lines().any(|l| l.contains("client 127.0.0.1:")
            && l.contains("XX000 internal error in pgherd")
            && l.contains("fault injected by the client")),
        "a log line names the client and the panic: {log}"
    );
    // Every other client goes on, the one inside a transaction too.
    assert_eq!(
        value::<String>(&others[0], "SHOW application_name").await,
        "held"
    );
    others[0].batch_execute("COMMIT").await.unwrap();
    for (i, client) in others.iter().enumerate() {
        let got: i32 = value(client, &format!("SELECT {i}")).await;
        assert_eq!(got, i as i32);
    }
    // The servers the panicking clients held were closed and their budget came back: both units of
    // pool_size can be held at once again.
    let (a, b) = (&others[1], &others[2]);
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let both = tokio::time::timeout(Duration::from_secs(10), b.batch_execute("BEGIN; SELECT 1"));
    both.await
        .expect("the second unit of pool budget is free")
        .unwrap();
    wait_until(Duration::from_secs(10), "at most pool_size servers", || {
        pg.backend_count("app") <= 2
    });
    a.batch_execute("COMMIT").await.unwrap();
    b.batch_execute("COMMIT").await.unwrap();
}
