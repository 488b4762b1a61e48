//! Self-test of the test harness (tests/common) against real PostgreSQL; pgherd is not involved.

mod common;

use std::time::Duration;

use common::{
    connect, free_port, pgbench_without_failures, psql, try_connect, wait_until, Postgres,
};

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_in_parallel_scram_restart_and_cleanup() {
    // Start both at once, from threads that end right away: the clusters must outlive those threads.
    let (mut a, b) = std::thread::scope(|s| {
        let a = s.spawn(Postgres::start);
        let b = s.spawn(Postgres::start);
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_ne!(a.port, b.port);
    assert_ne!(a.dir, b.dir);
    for pg in [&a, &b] {
        pg.create_user("alice", "wonder'land");
        pg.create_database("shop", "alice");
        let stored = pg.sql("SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = 'alice'");
        assert_eq!(stored, "SCRAM-SHA-256$");
    }
    a.sql_in(
        "shop",
        "CREATE TABLE marker (v text); INSERT INTO marker VALUES ('a'); GRANT SELECT ON marker TO alice",
    );
    b.sql_in(
        "shop",
        "CREATE TABLE marker (v text); INSERT INTO marker VALUES ('b'); GRANT SELECT ON marker TO alice",
    );

    // SCRAM over TCP, each client reaching its own cluster.
    let ca = connect(a.port, "alice", "wonder'land", "shop").await;
    let cb = connect(b.port, "alice", "wonder'land", "shop").await;
    let va: String = ca
        .query_one("SELECT v FROM marker", &[])
        .await
        .unwrap()
        .get(0);
    let vb: String = cb
        .query_one("SELECT v FROM marker", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!((va.as_str(), vb.as_str()), ("a", "b"));
    let Err(wrong) = try_connect(a.port, "alice", "wrong", "shop").await else {
        panic!("a wrong password logged in");
    };
    assert_eq!(wrong.code().map(|c| c.code()), Some("28P01"), "{wrong:?}");
    drop(cb);

    // Restart: same port and data, a new postmaster; the old client's connection is gone.
    let first = a.pid().unwrap();
    a.stop();
    assert!(a.pid().is_none());
    assert!(!alive(first), "postmaster {first} survived stop()");
    assert!(ca.query_one("SELECT 1", &[]).await.is_err());
    a.start_again();
    assert_ne!(a.pid().unwrap(), first);
    let ca = connect(a.port, "alice", "wonder'land", "shop").await;
    let va: String = ca
        .query_one("SELECT v FROM marker", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(va, "a");
    drop(ca);

    // Drop stops the postmaster by pid, reaps it and removes the directory.
    let (pid_a, pid_b) = (a.pid().unwrap(), b.pid().unwrap());
    let (dir_a, dir_b) = (a.dir.clone(), b.dir.clone());
    drop(a);
    drop(b);
    for (pid, dir) in [(pid_a, dir_a), (pid_b, dir_b)] {
        assert!(!alive(pid), "postmaster {pid} survived Drop");
        assert!(!dir.exists(), "{} survived Drop", dir.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_count_sql_errors_and_client_tools() {
    let mut pg = Postgres::start();
    pg.create_user("bob", "builder");
    pg.create_database("bob", "bob");
    pg.db = "bob".into();

    // backend_count follows connections opening and closing.
    assert_eq!(pg.backend_count("bob"), 0);
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(connect(pg.port, "bob", "builder", "bob").await);
    }
    assert_eq!(pg.backend_count("bob"), 3);
    let h = pg.handle();
    let counted = std::thread::spawn(move || h.backend_count("bob"))
        .join()
        .unwrap();
    assert_eq!(counted, 3);
    drop(clients);
    wait_until(Duration::from_secs(10), "bob's backends to exit", || {
        pg.backend_count("bob") == 0
    });

    // sql runs in pg.db and panics with psql's error.
    pg.sql("CREATE TABLE t (x int); INSERT INTO t VALUES (41), (1)");
    assert_eq!(pg.sql("SELECT sum(x) FROM t"), "42");
    assert_eq!(
        pg.sql_in("postgres", "SELECT to_regclass('t') IS NULL"),
        "t"
    );
    let h = pg.handle();
    let panic = std::thread::spawn(move || h.sql("SELEC 1"))
        .join()
        .unwrap_err();
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("syntax error"), "{message}");

    // psql and pgbench over TCP with a SCRAM password.
    let out = psql(
        pg.port,
        "bob",
        "builder",
        "bob",
        &["-c", "SELECT current_user"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "bob");
    let out = psql(pg.port, "bob", "nope", "bob", &["-c", "SELECT 1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("password authentication failed"));
    pg.pgbench_init("bob", 1);
    pgbench_without_failures(
        pg.port,
        "bob",
        "builder",
        "bob",
        &["-S", "-c", "2", "-j", "1", "-t", "50"],
    );

    // Stopping twice is harmless; start_again after stop works with the same data.
    pg.stop();
    pg.stop();
    pg.start_again();
    assert_eq!(pg.sql("SELECT count(*) FROM pgbench_branches"), "1");
}

#[test]
fn free_ports_are_distinct_and_bindable() {
    let ports: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| (0..50).map(|_| free_port()).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut sorted = ports.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), ports.len(), "a port was handed out twice");
    for port in ports.iter().take(20) {
        std::net::TcpListener::bind(("127.0.0.1", *port)).unwrap();
    }
}
