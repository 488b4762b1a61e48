//! Pooling end to end: real PostgreSQL, pgherd, tokio-postgres, psql and pgbench.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{backend_pid, connect, fixture, pgbench_without_failures, psql, value, Fixture};
use tokio_postgres::types::Type;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_clients_share_five_servers() {
    let Fixture { pg, herd } = fixture("transaction", 5, "workers = 2");
    pg.sql("CREATE TABLE counter (n int); INSERT INTO counter VALUES (0)");
    pg.sql("GRANT ALL ON counter TO app");

    // Sample pg_stat_activity while the clients run: never more than the pool.
    let stop = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (stop, most, pg) = (stop.clone(), most.clone(), pg.handle());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                most.fetch_max(pg.backend_count("app"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let mut tasks = Vec::new();
    for i in 0..500 {
        let port = herd.port;
        tasks.push(tokio::spawn(async move {
            let client = connect(port, "app", "secret", "app").await;
            for _ in 0..3 {
                let row = client
                    .query_typed_one("SELECT $1::int + 1", &[(&i, Type::INT4)])
                    .await
                    .unwrap();
                assert_eq!(row.get::<_, i32>(0), i + 1);
                client
                    .batch_execute("BEGIN; UPDATE counter SET n = n + 1; COMMIT")
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    assert_eq!(pg.sql("SELECT n FROM counter"), "1500");
    let most = most.load(Ordering::Relaxed);
    assert!(most <= 5, "saw {most} backends for a pool of 5");
    assert!(most >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_lends_a_server_per_transaction() {
    let Fixture { pg: _pg, herd } = fixture("transaction", 1, "workers = 2");
    let a = connect(herd.port, "app", "secret", "app").await;
    let b = connect(herd.port, "app", "secret", "app").await;
    // Pool of one: both clients run on the same backend, one transaction at a time.
    let pid_a: i32 = backend_pid(&a).await;
    let pid_b: i32 = backend_pid(&b).await;
    assert_eq!(pid_a, pid_b);
    // While a holds a transaction open, b waits; when a commits, b goes on.
    a.batch_execute("BEGIN").await.unwrap();
    let waiting = tokio::spawn(async move { value::<i32>(&b, "SELECT 42").await });
    // Not a wait for an event but a window in which something must not happen.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "b ran while a held the only server");
    a.batch_execute("COMMIT").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_keeps_the_server_and_resets_it() {
    let Fixture { pg: _pg, herd } = fixture("session", 1, "workers = 1");
    let a = connect(herd.port, "app", "secret", "app").await;
    a.batch_execute("CREATE TEMP TABLE mine (x int); SET application_name = 'a-session'")
        .await
        .unwrap();
    a.batch_execute("INSERT INTO mine VALUES (1)")
        .await
        .unwrap();
    let name: String = value(&a, "SHOW application_name").await;
    assert_eq!(name, "a-session");
    let pid_a: i32 = backend_pid(&a).await;
    drop(a);
    // The next client gets the same backend, reset by DISCARD ALL.
    let b = connect(herd.port, "app", "secret", "app").await;
    let pid_b: i32 = backend_pid(&b).await;
    assert_eq!(pid_a, pid_b);
    let err = b.batch_execute("SELECT * FROM mine").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42P01");
    let name: String = value(&b, "SHOW application_name").await;
    assert_ne!(name, "a-session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_mode_refuses_transaction_blocks() {
    let Fixture { pg: _pg, herd } = fixture("statement", 2, "workers = 1");
    let c = connect(herd.port, "app", "secret", "app").await;
    assert_eq!(value::<i32>(&c, "SELECT 7").await, 7);
    let err = c.batch_execute("BEGIN").await.unwrap_err();
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "0A000");
    assert!(db.message().contains("statement pooling"), "{db:?}");
    // The server went back clean: another client gets an idle server.
    let d = connect(herd.port, "app", "secret", "app").await;
    let state: String = value(&d, "SELECT 'ok'").await;
    assert_eq!(state, "ok");
}

#[test]
fn pgbench_simple_extended_and_prepared_have_no_failures() {
    let Fixture { pg, herd } = fixture("transaction", 5, "workers = 2");
    pg.pgbench_init("app", 1);
    // -M prepared: each client's named statements follow it to whichever server its transaction gets.
    for mode in ["simple", "extended", "prepared"] {
        pgbench_without_failures(
            herd.port,
            "app",
            "secret",
            "app",
            &["-S", "-c", "20", "-j", "2", "-T", "3", "-M", mode],
        );
        pgbench_without_failures(
            herd.port,
            "app",
            "secret",
            "app",
            // A thread per client: with -M prepared, pgbench prepares a script's statements synchronously in
            // the middle of a client's first transaction, which would stall the sibling clients of its
            // thread while they hold servers in open transactions, and the pool with them.
            &["-c", "8", "-j", "8", "-t", "100", "-M", mode],
        );
    }
}

#[test]
fn copy_in_and_out_is_byte_identical() {
    let Fixture { pg, herd } = fixture("transaction", 2, "workers = 2");
    pg.sql("CREATE TABLE items (id int, payload text); GRANT ALL ON items TO app");
    let dir = tempdir();
    let input = dir.join("in.tsv");
    let output = dir.join("out.tsv");
    let mut rows = String::new();
    for i in 0..50_000 {
        rows.push_str(&format!(
            "{i}\tline {i} with tab\\tand backslash\\\\ and unicode é\n"
        ));
    }
    std::fs::write(&input, &rows).unwrap();
    let run = |sql: String| {
        let out = psql(herd.port, "app", "secret", "app", &["-c", &sql]);
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(format!("\\copy items from '{}'", input.display()));
    run(format!(
        "\\copy (SELECT * FROM items ORDER BY id) to '{}'",
        output.display()
    ));
    assert_eq!(
        std::fs::read(&input).unwrap(),
        std::fs::read(&output).unwrap()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_32_megabyte_value_passes_both_ways() {
    let Fixture { pg, herd } = fixture("transaction", 2, "workers = 2");
    pg.sql("CREATE TABLE blobs (id int, body text); GRANT ALL ON blobs TO app");
    let c = connect(herd.port, "app", "secret", "app").await;
    let body: String = (0..32 * 1024 * 1024)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    c.execute_typed("INSERT INTO blobs VALUES (1, $1)", &[(&body, Type::TEXT)])
        .await
        .unwrap();
    let back: String = value(&c, "SELECT body FROM blobs WHERE id = 1").await;
    assert!(back == body, "the value came back changed");
    // pgherd streamed it: its peak memory stayed far below the value's size.
    let status = std::fs::read_to_string(format!("/proc/{}/status", herd.pid())).unwrap();
    let peak_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        peak_kb < 24 * 1024,
        "pgherd peaked at {peak_kb} kB for a 32 MB value"
    );
    let len: i32 = value(&c, "SELECT length(body) FROM blobs").await;
    assert_eq!(len, 32 * 1024 * 1024);
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "pgherd-test-{}-{}",
        std::process::id(),
        common::unique()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_waits_at_most_query_wait_timeout() {
    let Fixture { pg: _pg, herd } =
        fixture("transaction", 1, "workers = 2\nquery_wait_timeout = 1");
    let holder = connect(herd.port, "app", "secret", "app").await;
    holder.batch_execute("BEGIN").await.unwrap();
    let waiter = connect(herd.port, "app", "secret", "app").await;
    let started = std::time::Instant::now();
    let err = waiter.batch_execute("SELECT 1").await.unwrap_err();
    let waited = started.elapsed();
    assert_eq!(
        err.as_db_error().map(|e| e.code().code()),
        Some("57014"),
        "{err:?}"
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "waited {waited:?}"
    );
    // The holder is unaffected.
    holder.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_queries_share_one_lease_and_all_answer() {
    let Fixture { pg: _pg, herd } = fixture("transaction", 2, "workers = 2");
    let c = connect(herd.port, "app", "secret", "app").await;
    // tokio-postgres pipelines concurrent queries on one connection: many Syncs in flight at once.
    let queries = (0..200).map(|i: i32| {
        let c = &c;
        async move {
            c.query_typed_one("SELECT $1::int * 2", &[(&i, Type::INT4)])
                .await
                .map(|r| r.get::<_, i32>(0))
        }
    });
    let results = futures_util::future::join_all(queries).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap(), i as i32 * 2);
    }
    // An error in the middle of a pipeline fails only its own query.
    let (a, b, d) = tokio::join!(
        c.query_typed_one("SELECT 1", &[]),
        c.query_typed_one("SELECT 1/0", &[]),
        c.query_typed_one("SELECT 3", &[])
    );
    assert_eq!(a.unwrap().get::<_, i32>(0), 1);
    assert_eq!(b.unwrap_err().as_db_error().unwrap().code().code(), "22012");
    assert_eq!(d.unwrap().get::<_, i32>(0), 3);
}

#[test]
fn min_pool_size_warms_servers_and_idle_ones_expire() {
    let Fixture { pg, herd } = fixture("transaction", 4, "workers = 2\nserver_idle_timeout = 1");
    // min_pool_size is per database; rewrite the fixture's config with it.
    let herd = herd.restarted_with(|body| {
        body.replacen("pool_size = 4", "pool_size = 4\nmin_pool_size = 2", 1)
    });
    // Before any client comes, the pool is filled to min_pool_size, and kept there past server_idle_timeout.
    common::wait_until(Duration::from_secs(10), "two warm servers", || {
        pg.backend_count("app") == 2
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Four at once make the pool grow to its size; idle ones above the minimum then expire.
        let clients = futures_util::future::join_all(
            (0..4).map(|_| connect(herd.port, "app", "secret", "app")),
        )
        .await;
        let busy = clients
            .iter()
            .map(|c| c.batch_execute("BEGIN; SELECT pg_sleep(0.3); COMMIT"));
        for r in futures_util::future::join_all(busy).await {
            r.unwrap();
        }
    });
    assert!(
        pg.backend_count("app") >= 3,
        "the pool grew beyond its minimum"
    );
    common::wait_until(
        Duration::from_secs(10),
        "idle servers above the minimum expire",
        || pg.backend_count("app") == 2,
    );
}

#[test]
fn per_database_and_per_user_client_limits_answer_53300() {
    let Fixture { pg: _pg, herd } = fixture("transaction", 2, "workers = 1");
    let herd = herd.restarted_with(|body| {
        body.replacen("pool_size = 2", "pool_size = 2\nmax_client_conn = 2", 1)
            .replacen(
                "auth_type = \"md5\"",
                "auth_type = \"md5\"\nmax_client_conn = 1",
                1,
            )
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let _legacy = connect(herd.port, "legacy", "secret", "app").await;
        let err = common::try_connect(herd.port, "legacy", "secret", "app")
            .await
            .expect_err("user limit");
        assert_eq!(err.code().map(|c| c.code()), Some("53300"));
        let _app = connect(herd.port, "app", "secret", "app").await;
        let err = common::try_connect(herd.port, "app", "secret", "app")
            .await
            .expect_err("database limit");
        assert_eq!(err.code().map(|c| c.code()), Some("53300"));
    });
}

#[test]
fn notifications_and_notices_pass_through() {
    let Fixture { pg: _pg, herd } = fixture("transaction", 2, "workers = 2");
    let out = psql(
        herd.port,
        "app",
        "secret",
        "app",
        &[
            "-c",
            "LISTEN ch; NOTIFY ch, 'hello'; DO $$ BEGIN RAISE NOTICE 'note to client'; END $$",
        ],
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("notification \"ch\" with payload \"hello\""),
        "{stdout}"
    );
    assert!(stderr.contains("note to client"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_queries_and_suspended_portals_pass_through() {
    let Fixture { pg: _pg, herd } = fixture("transaction", 2, "workers = 2");
    let mut c = connect(herd.port, "app", "secret", "app").await;
    let empty = c
        .simple_query("")
        .await
        .expect("an empty query is answered");
    assert!(!empty
        .iter()
        .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))));
    // Inside a transaction the server stays leased, so a portal can be read in pieces (PortalSuspended).
    let tx = c.transaction().await.unwrap();
    let stmt = tx.prepare("SELECT generate_series(1, 10)").await.unwrap();
    let portal = tx.bind(&stmt, &[]).await.unwrap();
    let first = tx.query_portal(&portal, 4).await.unwrap();
    let rest = tx.query_portal(&portal, 100).await.unwrap();
    assert_eq!((first.len(), rest.len()), (4, 6));
    assert_eq!(rest[5].get::<_, i32>(0), 10);
    tx.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_reach_the_client_as_they_arrive() {
    use futures_util::StreamExt;
    let Fixture { pg: _pg, herd } = fixture("transaction", 2, "workers = 2");
    let c = connect(herd.port, "app", "secret", "app").await;
    // Two 100 kB rows (PostgreSQL flushes them at once), then a row that takes 2 s to compute.
    let sql = "SELECT repeat('x', 100000) FROM generate_series(1, 3) g WHERE g < 3 OR pg_sleep(2) IS NOT NULL";
    let started = std::time::Instant::now();
    let rows = c
        .query_typed_raw(sql, Vec::<(i32, Type)>::new())
        .await
        .unwrap();
    futures_util::pin_mut!(rows);
    rows.next().await.unwrap().unwrap();
    let first = started.elapsed();
    let mut count = 1;
    while let Some(row) = rows.next().await {
        row.unwrap();
        count += 1;
    }
    assert_eq!(count, 3);
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(
        first < Duration::from_millis(1500),
        "the first row came only after {first:?}"
    );
}
