//! Parked clients: a client idle for `client_park_after` loses its task and waits on the shard's own ring. It
//! must come back with everything it had (prepared statements, settings, its cancel key), and a parked client
//! that hangs up, or that is parked when pgherd shuts down, is released like any other.

mod common;

use std::time::Duration;

use common::{connect, fixture, wait_until, Fixture};

/// A woken client that never got its task back would leave its query unanswered.
async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("a parked client answered within 10 s")
}

const PARKING: &str = "workers = 2\nclient_park_after = 0.1\nstats_period = 0.1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_clients_come_back_with_their_session() {
    let Fixture { pg: _pg, herd } = fixture("transaction", 2, PARKING);
    let a = connect(herd.port, "app", "secret", "app").await;
    let b = connect(herd.port, "app", "secret", "app").await;
    let c = connect(herd.port, "app", "secret", "app").await;
    let statement = a.prepare("SELECT $1::int + 1").await.unwrap();
    b.batch_execute("SET application_name = 'parked-b'")
        .await
        .unwrap();
    herd.wait_for_log(
        "stats: 3 client(s), 0 pinned to their server, 3 parked",
        Duration::from_secs(10),
    );

    for round in 0..3 {
        let row = within(a.query_one(&statement, &[&round])).await.unwrap();
        assert_eq!(
            row.get::<_, i32>(0),
            round + 1,
            "a's statement survived parking"
        );
        let name: String = b
            .query_one("SHOW application_name", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(name, "parked-b", "b's setting survived parking");
        let name: String = c
            .query_one("SHOW application_name", &[])
            .await
            .unwrap()
            .get(0);
        assert_ne!(name, "parked-b", "c does not see b's setting");
        let seen = herd.log().len();
        wait_until(Duration::from_secs(10), "all three parked again", || {
            herd.log()[seen..].contains("stats: 3 client(s), 0 pinned to their server, 3 parked")
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_client_that_hangs_up_is_released() {
    let Fixture { pg: _pg, herd } = fixture("transaction", 2, PARKING);
    let a = connect(herd.port, "app", "secret", "app").await;
    herd.wait_for_log(
        "stats: 1 client(s), 0 pinned to their server, 1 parked",
        Duration::from_secs(10),
    );
    drop(a);
    herd.wait_for_log(
        "stats: 0 client(s), 0 pinned to their server, 0 parked",
        Duration::from_secs(10),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_parked_clients() {
    let Fixture { pg: _pg, mut herd } = fixture("transaction", 2, PARKING);
    let a = connect(herd.port, "app", "secret", "app").await;
    herd.wait_for_log(
        "stats: 1 client(s), 0 pinned to their server, 1 parked",
        Duration::from_secs(10),
    );
    herd.signal(libc::SIGTERM);
    // Without its wake-up the parked client would hold the shutdown until shutdown_timeout (30 s).
    assert_eq!(
        herd.wait_exit(Duration::from_secs(10)),
        Some(0),
        "pgherd stops"
    );
    assert!(
        !herd.log().contains("shutdown_timeout reached"),
        "{}",
        herd.log()
    );
    assert!(a.is_closed() || a.simple_query("SELECT 1").await.is_err());
}
