//! Faults: cancels, clients killed mid-transaction, dead and restarted servers, hostile startups, limits,
//! shutdown. Every wait is a poll with a deadline.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{backend_pid, connect, fixture, psql, try_connect, value, wait_until, Fixture};
use tokio_postgres::types::Type;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_hits_the_right_query_and_only_it() {
    let Fixture { pg, herd } = fixture("transaction", 3, "workers = 2");
    let a = connect(herd.port, "app", "secret", "app").await;
    let b = connect(herd.port, "app", "secret", "app").await;
    let cancel_a = a.cancel_token();
    let slow = tokio::spawn(async move { a.batch_execute("SELECT pg_sleep(30)").await });
    let other = tokio::spawn(async move {
        b.query_typed_one("SELECT 1 FROM pg_sleep(3)", &[])
            .await
            .map(|_| ())
    });
    wait_until(Duration::from_secs(10), "both queries run", || {
        pg.sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(%' AND state = 'active' AND usename = 'app'") == "2"
    });
    let started = Instant::now();
    cancel_a.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), slow)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "57014");
    assert!(started.elapsed() < Duration::from_secs(5));
    tokio::time::timeout(Duration::from_secs(10), other)
        .await
        .unwrap()
        .unwrap()
        .expect("b was not cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_cancel_key_does_not_touch_the_next_user_of_its_server() {
    // One server: c uses it, then d does; c's key must not cancel d's query.
    let Fixture { pg, herd } = fixture("transaction", 1, "workers = 1");
    let c = connect(herd.port, "app", "secret", "app").await;
    let d = connect(herd.port, "app", "secret", "app").await;
    let pid_c: i32 = backend_pid(&c).await;
    let stale = c.cancel_token();
    let running = tokio::spawn(async move {
        let pid: i32 = backend_pid(&d).await;
        d.query_typed_one("SELECT 1 FROM pg_sleep(1.5)", &[])
            .await
            .map(|_| pid)
    });
    wait_until(Duration::from_secs(10), "d's query runs", || {
        pg.sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(1.5)%' AND state = 'active'") == "1"
    });
    stale.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let pid_d = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap()
        .expect("d was cancelled");
    assert_eq!(
        pid_c, pid_d,
        "the test needs both clients on the same backend"
    );
}

/// A psql process whose stdin we write, so it can be killed at a chosen point.
fn psql_session(port: u16) -> std::process::Child {
    Command::new(common::bin("psql"))
        .args([
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "app",
            "app",
        ])
        .env("PGPASSWORD", "secret")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn a_client_killed_inside_a_transaction_frees_its_lock_and_loses_its_insert() {
    let Fixture { pg, herd } = fixture("transaction", 2, "workers = 2");
    pg.sql(
        "CREATE TABLE locked (id int primary key); INSERT INTO locked VALUES (1);
            CREATE TABLE written (v int); GRANT ALL ON locked, written TO app",
    );
    let mut victim = psql_session(herd.port);
    victim
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"BEGIN;\nINSERT INTO written VALUES (42);\nSELECT * FROM locked WHERE id = 1 FOR UPDATE;\n")
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the victim holds the row lock",
        || {
            pg.sql("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'locked' AND l.mode = 'RowShareLock'") == "1"
        },
    );
    victim.kill().unwrap();
    victim.wait().unwrap();
    let killed = Instant::now();
    // Another client through pgherd gets the lock at once, and the insert never appears.
    wait_until(Duration::from_secs(1), "the row lock is free", || {
        let out = psql(
            herd.port,
            "app",
            "secret",
            "app",
            &["-c", "SELECT id FROM locked WHERE id = 1 FOR UPDATE NOWAIT"],
        );
        out.status.success()
    });
    assert!(killed.elapsed() < Duration::from_secs(1));
    assert_eq!(pg.sql("SELECT count(*) FROM written"), "0");
}

#[test]
fn a_client_killed_during_a_query_stops_the_query() {
    let Fixture { pg, herd } = fixture("transaction", 2, "workers = 2");
    let mut victim = psql_session(herd.port);
    victim
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"SELECT pg_sleep(60);\n")
        .unwrap();
    let running = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%' AND state = 'active'";
    wait_until(Duration::from_secs(10), "the query runs", || {
        pg.sql(running) == "1"
    });
    victim.kill().unwrap();
    victim.wait().unwrap();
    wait_until(
        Duration::from_secs(3),
        "the backend stops running the query",
        || pg.sql(running) == "0",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_idle_servers_are_not_handed_out() {
    let Fixture { pg, herd } = fixture("transaction", 3, "workers = 2");
    for _ in 0..3 {
        let c = connect(herd.port, "app", "secret", "app").await;
        c.batch_execute("SELECT 1").await.unwrap();
    }
    pg.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app'");
    wait_until(Duration::from_secs(5), "backends are gone", || {
        pg.backend_count("app") == 0
    });
    for i in 0..10 {
        let c = connect(herd.port, "app", "secret", "app").await;
        let v: i32 = c
            .query_typed_one("SELECT $1::int", &[(&i, Type::INT4)])
            .await
            .expect("a fresh client failed")
            .get(0);
        assert_eq!(v, i);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_does_not_fail_the_next_clients() {
    let Fixture { mut pg, herd } = fixture("transaction", 3, "workers = 2");
    let held = connect(herd.port, "app", "secret", "app").await;
    held.batch_execute("SELECT 1").await.unwrap();
    pg.stop();
    // A client that asks while PostgreSQL is down waits for it rather than failing.
    let port = herd.port;
    let waiting = tokio::spawn(async move {
        let c = connect(port, "app", "secret", "app").await;
        c.query_typed_one("SELECT 5", &[])
            .await
            .map(|r| r.get::<_, i32>(0))
    });
    herd.wait_for_log("for app@app:", Duration::from_secs(10));
    pg.start_again();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(20), waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        5
    );
    // The already-connected client's next transaction works too.
    assert_eq!(value::<i32>(&held, "SELECT 6").await, 6);
    for _ in 0..5 {
        let c = connect(herd.port, "app", "secret", "app").await;
        c.batch_execute("SELECT 1").await.unwrap();
    }
}

/// A TCP relay to 127.0.0.1:`to` that passes its first connection on only after `delay` (PostgreSQL slow to
/// answer one login) and later ones at once. It runs until the test's runtime ends.
async fn slow_first_connection(to: u16, delay: Duration) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut inbound, _)) = listener.accept().await {
            let delay = if std::mem::take(&mut first) {
                delay
            } else {
                Duration::ZERO
            };
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    port
}

/// Logins that time out while their pool's only server is still being opened (one opening it, one in line
/// behind it) give back what they took: the next client gets the server. Before, the opener's unit of
/// pool_size was lost for good, and every later client waited until query_wait_timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_that_time_out_while_a_server_opens_leave_the_pool_its_size() {
    let Fixture { pg, herd } = fixture("transaction", 1, "workers = 1\nclient_login_timeout = 1");
    let relay = slow_first_connection(pg.port, Duration::from_secs(3)).await;
    let herd = herd.restarted_with(|config| {
        config.replace(&format!("port = {}", pg.port), &format!("port = {relay}"))
    });
    let (first, second) = tokio::join!(
        try_connect(herd.port, "app", "secret", "app"),
        try_connect(herd.port, "app", "secret", "app")
    );
    // Whichever opened the server timed out; the other may have been handed the freed budget in time.
    assert!(
        first.is_err() || second.is_err(),
        "a login waiting 3 s for its server outlived client_login_timeout = 1"
    );
    herd.wait_for_log("login timed out", Duration::from_secs(5));
    let c = connect(herd.port, "app", "secret", "app").await;
    assert_eq!(value::<i32>(&c, "SELECT 7").await, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_errors_carry_postgres_sqlstates() {
    let Fixture { pg: _pg, herd } = fixture("transaction", 2, "workers = 2");
    let code = |r: Result<tokio_postgres::Client, tokio_postgres::Error>| {
        r.expect_err("login should fail")
            .code()
            .map(|c| c.code().to_owned())
    };
    let started = Instant::now();
    assert_eq!(
        code(try_connect(herd.port, "app", "wrong", "app").await).as_deref(),
        Some("28P01")
    );
    assert_eq!(
        code(try_connect(herd.port, "legacy", "wrong", "app").await).as_deref(),
        Some("28P01")
    );
    assert_eq!(
        code(try_connect(herd.port, "nobody", "secret", "app").await).as_deref(),
        Some("28P01")
    );
    assert_eq!(
        code(try_connect(herd.port, "app", "secret", "nodb").await).as_deref(),
        Some("3D000")
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "errors must come at once"
    );
    // md5 with the right password works.
    let c = connect(herd.port, "legacy", "secret", "app").await;
    c.batch_execute("SELECT 1").await.unwrap();
}

#[test]
fn max_client_conn_answers_53300() {
    let Fixture { pg: _pg, herd } = fixture("transaction", 2, "workers = 1\nmax_client_conn = 2");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let _a = connect(herd.port, "app", "secret", "app").await;
        let _b = connect(herd.port, "app", "secret", "app").await;
        let err = try_connect(herd.port, "app", "secret", "app")
            .await
            .expect_err("third client admitted");
        assert_eq!(err.code().map(|c| c.code()), Some("53300"));
    });
}

/// Reads until the peer closes; returns what it sent. Fails the test if it stays open past `limit`.
fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    stream
        .read_to_end(&mut got)
        .expect("pgherd kept the connection open");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_startups_are_closed_while_others_keep_working() {
    let Fixture { pg: _pg, herd } =
        fixture("transaction", 2, "workers = 2\nclient_login_timeout = 1");
    let good = connect(herd.port, "app", "secret", "app").await;
    let addr = ("127.0.0.1", herd.port);

    let mut garbage = TcpStream::connect(addr).unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut oversized = TcpStream::connect(addr).unwrap();
    oversized.write_all(&1_000_000u32.to_be_bytes()).unwrap();
    let mut stalled = TcpStream::connect(addr).unwrap();
    stalled.write_all(&[0, 0, 0, 40, 0, 3, 0, 0, b'u']).unwrap();
    let silent = TcpStream::connect(addr).unwrap();

    // Meanwhile the good client is served without delay.
    for i in 0..20 {
        let t = Instant::now();
        let v: i32 = good
            .query_typed_one("SELECT $1::int", &[(&i, Type::INT4)])
            .await
            .unwrap()
            .get(0);
        assert_eq!(v, i);
        assert!(t.elapsed() < Duration::from_millis(500));
    }
    let reply = read_to_close(&mut garbage, Duration::from_secs(3));
    assert!(
        reply.starts_with(b"E"),
        "garbage gets an ErrorResponse: {reply:?}"
    );
    assert!(String::from_utf8_lossy(&reply).contains("08P01"));
    let reply = read_to_close(&mut oversized, Duration::from_secs(3));
    assert!(String::from_utf8_lossy(&reply).contains("08P01"));
    // The stalled and silent ones are closed by client_login_timeout.
    read_to_close(&mut stalled, Duration::from_secs(4));
    let mut silent = silent;
    read_to_close(&mut silent, Duration::from_secs(4));
    assert_eq!(value::<i32>(&good, "SELECT 1").await, 1);
}

#[test]
fn ssl_request_is_refused_and_a_newer_protocol_is_negotiated_down() {
    let Fixture { pg: _pg, herd } = fixture("transaction", 2, "workers = 1\nauth_type = \"trust\"");
    let mut s = TcpStream::connect(("127.0.0.1", herd.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).unwrap();
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"N");
    s.write_all(&common::startup_packet(
        3 << 16 | 2,
        &[("user", "app"), ("database", "app"), ("_pq_.magic", "1")],
    ))
    .unwrap();
    let mut header = [0u8; 5];
    s.read_exact(&mut header).unwrap();
    assert_eq!(header[0], b'v', "NegotiateProtocolVersion first");
    let mut body = vec![0u8; u32::from_be_bytes(header[1..5].try_into().unwrap()) as usize - 4];
    s.read_exact(&mut body).unwrap();
    assert_eq!(
        &body[..8],
        &[0, 3, 0, 0, 0, 0, 0, 1],
        "the newest version, 3.0, as (3 << 16) | 0, and one unknown option"
    );
    assert_eq!(&body[8..], b"_pq_.magic\0");
    s.read_exact(&mut header).unwrap();
    assert_eq!(header[0], b'R', "then authentication goes on at 3.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_running_transaction_finish() {
    let Fixture { pg: _pg, mut herd } = fixture("transaction", 2, "workers = 2");
    let c = connect(herd.port, "app", "secret", "app").await;
    c.batch_execute("BEGIN").await.unwrap();
    let idle = connect(herd.port, "app", "secret", "app").await;
    herd.signal(libc::SIGTERM);
    // New clients are refused once the listeners close.
    let port = herd.port;
    wait_until(Duration::from_secs(5), "the listener closes", || {
        TcpStream::connect(("127.0.0.1", port)).is_err()
    });
    // The open transaction still finishes.
    let v: i32 = value(&c, "SELECT 3").await;
    assert_eq!(v, 3);
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(herd.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(idle.is_closed() || idle.batch_execute("SELECT 1").await.is_err());
}

/// A SCRAM verifier for `password` in PostgreSQL's pg_authid format, made by PostgreSQL itself.
fn verifier_of(pg: &common::Postgres, role: &str) -> String {
    pg.sql(&format!(
        "SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgherd_logs_in_with_whatever_postgres_asks() {
    let Fixture { pg, herd } = fixture("transaction", 2, "workers = 1");
    // One user per server-side method: md5 (an md5-stored password), cleartext, trust.
    pg.sql("SET password_encryption = 'md5'; CREATE ROLE by_md5 LOGIN PASSWORD 'pw-md5'");
    pg.sql("CREATE ROLE by_clear LOGIN PASSWORD 'pw-clear'");
    pg.sql("CREATE ROLE by_trust LOGIN PASSWORD 'pw-trust'");
    pg.sql("GRANT CONNECT ON DATABASE app TO by_md5, by_clear, by_trust");
    let hba = pg.data.join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!(
            "host all by_md5 127.0.0.1/32 md5\nhost all by_clear 127.0.0.1/32 password\n\
             host all by_trust 127.0.0.1/32 trust\n{rules}"
        ),
    )
    .unwrap();
    pg.sql("SELECT pg_reload_conf()");
    // by_trust's entry holds only a SCRAM verifier: clients are checked against it, and PostgreSQL trusts pgherd.
    let trust_verifier = verifier_of(&pg, "by_trust");
    assert!(trust_verifier.starts_with("SCRAM-SHA-256$"));
    let herd = herd.restarted_with(|body| {
        format!(
            "{body}\n[users.by_md5]\npassword = \"pw-md5\"\n[users.by_clear]\npassword = \"pw-clear\"\n\
             [users.by_trust]\npassword = \"{trust_verifier}\"\n"
        )
    });
    for (user, password) in [
        ("by_md5", "pw-md5"),
        ("by_clear", "pw-clear"),
        ("by_trust", "pw-trust"),
    ] {
        let c = connect(herd.port, user, password, "app").await;
        let who: String = value(&c, "SELECT current_user::text").await;
        assert_eq!(who, user);
    }
    let err = try_connect(herd.port, "by_trust", "wrong", "app")
        .await
        .expect_err("wrong password accepted");
    assert_eq!(err.code().map(|c| c.code()), Some("28P01"));
}

#[test]
fn gssenc_request_is_refused_and_login_goes_on() {
    let Fixture { pg: _pg, herd } = fixture("transaction", 2, "workers = 1\nauth_type = \"trust\"");
    let mut s = TcpStream::connect(("127.0.0.1", herd.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[0, 0, 0, 8, 4, 210, 22, 48]).unwrap();
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"N");
    s.write_all(&common::startup_packet(
        3 << 16,
        &[("user", "app"), ("database", "app")],
    ))
    .unwrap();
    let mut header = [0u8; 5];
    s.read_exact(&mut header).unwrap();
    assert_eq!(
        header[0], b'R',
        "authentication follows on the same connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_dies_under_a_query_is_reported_with_its_sqlstate() {
    let Fixture { pg, herd } = fixture("transaction", 2, "workers = 2");
    let c = connect(herd.port, "app", "secret", "app").await;
    let running = tokio::spawn(async move { c.batch_execute("SELECT pg_sleep(30)").await });
    let active =
        "SELECT pid FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'";
    wait_until(Duration::from_secs(10), "the query runs", || {
        !pg.sql(active).is_empty()
    });
    pg.sql(&format!("SELECT pg_terminate_backend({})", pg.sql(active)));
    let err = tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    let code = err.code().map(|c| c.code().to_owned());
    assert!(
        matches!(code.as_deref(), Some("57P01" | "08006")),
        "{err:?}"
    );
    // Others are not affected.
    let d = connect(herd.port, "app", "secret", "app").await;
    d.batch_execute("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verifier_only_user_logs_in_to_postgres_with_the_clients_proof() {
    // PostgreSQL asks app for SCRAM; pgherd's entry for app holds only PostgreSQL's own verifier.
    let Fixture { pg, herd } = fixture("transaction", 2, "workers = 2");
    let verifier = verifier_of(&pg, "app");
    let herd = herd.restarted_with(|body| {
        let body = body.replacen(
            "password = \"secret\"",
            &format!("password = \"{verifier}\""),
            1,
        );
        assert!(body.contains("SCRAM-SHA-256$"));
        body
    });
    let clients =
        futures_util::future::join_all((0..4).map(|_| connect(herd.port, "app", "secret", "app")))
            .await;
    for c in &clients {
        let who: String = value(c, "SELECT current_user::text").await;
        assert_eq!(who, "app");
    }
    let err = try_connect(herd.port, "app", "not-it", "app")
        .await
        .expect_err("wrong password accepted");
    assert_eq!(err.code().map(|c| c.code()), Some("28P01"));
}

#[test]
fn replication_connections_are_refused_clearly() {
    let Fixture { pg: _pg, herd } = fixture("transaction", 2, "workers = 1\nauth_type = \"trust\"");
    let mut s = TcpStream::connect(("127.0.0.1", herd.port)).unwrap();
    s.write_all(&common::startup_packet(
        3 << 16,
        &[
            ("user", "app"),
            ("database", "app"),
            ("replication", "database"),
        ],
    ))
    .unwrap();
    let reply = read_to_close(&mut s, Duration::from_secs(3));
    assert_eq!(reply.first(), Some(&b'E'));
    assert!(String::from_utf8_lossy(&reply).contains("0A000"));
}

#[test]
fn a_client_stalled_in_the_middle_of_a_message_is_closed_and_frees_its_server() {
    let Fixture { pg: _pg, herd } = fixture(
        "transaction",
        1,
        "workers = 1\nauth_type = \"trust\"\nclient_message_timeout = 1",
    );
    let mut s = TcpStream::connect(("127.0.0.1", herd.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&common::startup_packet(
        3 << 16,
        &[("user", "app"), ("database", "app")],
    ))
    .unwrap();
    // Read the greeting up to ReadyForQuery.
    let mut greeting = Vec::new();
    let mut byte = [0u8; 1];
    while !greeting.ends_with(b"Z\0\0\0\x05I") {
        s.read_exact(&mut byte).unwrap();
        greeting.push(byte[0]);
    }
    // Half a Query: the header promises 100 bytes, 10 arrive, then nothing.
    s.write_all(b"Q\0\0\0\x64SELECT 1 ").unwrap();
    let started = Instant::now();
    let reply = read_to_close(&mut s, Duration::from_secs(5));
    assert!(
        String::from_utf8_lossy(&reply).contains("08P01"),
        "{reply:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    // The only server was freed for others.
    let out = psql(herd.port, "app", "secret", "app", &["-c", "SELECT 42"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sockets_have_keepalive_so_vanished_peers_are_found() {
    let Fixture { pg: _pg, herd } = fixture("transaction", 1, "workers = 1");
    let c = connect(herd.port, "app", "secret", "app").await;
    c.batch_execute("SELECT 1").await.unwrap();
    // pgherd's end of the connection: source port = pgherd's port. `ss -o` shows its keepalive timer once
    // nothing is in flight.
    let ss = || {
        let out = std::process::Command::new("ss")
            .args(["-tno", "state", "established"])
            .arg(format!("( sport = :{} )", herd.port))
            .output()
            .expect("run ss (iproute2)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    common::wait_until(
        Duration::from_secs(5),
        "a keepalive timer on the client socket",
        || ss().contains("timer:(keepalive,"),
    );
    let text = ss();
    // The first probe is due in at most 300 s (the kernel's default is 7,200 s).
    let due = text
        .split("timer:(keepalive,")
        .nth(1)
        .and_then(|t| t.split(',').next())
        .unwrap_or_default()
        .to_owned();
    let minutes: f64 = match due.strip_suffix("min") {
        Some(m) => m.parse().unwrap_or(f64::MAX),
        None => 0.0,
    };
    assert!(minutes <= 5.0, "first keepalive probe due in {due}: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_is_logged_and_ignored() {
    let Fixture { pg: _pg, mut herd } = fixture("transaction", 2, "workers = 2");
    let before = connect(herd.port, "app", "secret", "app").await;
    herd.signal(libc::SIGHUP);
    herd.wait_for_log("received SIGHUP: ignored", Duration::from_secs(5));
    assert_eq!(
        herd.wait_exit(Duration::from_millis(300)),
        None,
        "still running"
    );
    assert_eq!(value::<i32>(&before, "SELECT 7").await, 7);
    let after = connect(herd.port, "app", "secret", "app").await;
    assert_eq!(value::<i32>(&after, "SELECT 8").await, 8);
}

/// A raw connection that sends a startup packet for `user` and reads the first authentication request,
/// then stalls: a client that claims a user name and never proves it.
fn stalled_login(port: u16, user: &str) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let packet = common::startup_packet(3 << 16, &[("user", user), ("database", "app")]);
    stream.write_all(&packet).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tag = [0u8; 1];
    stream.read_exact(&mut tag).unwrap();
    assert_eq!(tag[0], b'R', "an authentication request");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_logins_do_not_take_a_users_places() {
    let Fixture { pg: _pg, herd } = fixture("transaction", 2, "workers = 2");
    let herd = herd
        .restarted_with(|body| body.replacen("[users.app]", "[users.app]\nmax_client_conn = 2", 1));
    let stalled: Vec<TcpStream> = (0..10).map(|_| stalled_login(herd.port, "app")).collect();
    let _a = connect(herd.port, "app", "secret", "app").await;
    let _b = connect(herd.port, "app", "secret", "app").await;
    let err = try_connect(herd.port, "app", "secret", "app")
        .await
        .expect_err("a third authenticated client of app");
    assert_eq!(err.code().map(|c| c.code()), Some("53300"));
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_in_progress_are_bounded_per_shard() {
    let Fixture { pg: _pg, herd } =
        fixture("transaction", 2, "workers = 1\nmax_logins_per_shard = 4");
    let stalled: Vec<TcpStream> = (0..4).map(|_| stalled_login(herd.port, "app")).collect();
    let mut refused = TcpStream::connect(("127.0.0.1", herd.port)).unwrap();
    let said = read_to_close(&mut refused, Duration::from_secs(5));
    assert_eq!(said.first(), Some(&b'E'), "{said:?}");
    assert!(
        said.windows(6).any(|w| w == b"C53300"),
        "{}",
        String::from_utf8_lossy(&said)
    );
    drop(stalled);
    let mut in_again = None;
    for _ in 0..100 {
        match try_connect(herd.port, "app", "secret", "app").await {
            Ok(c) => {
                in_again = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let c = in_again.expect("a client logs in once the stalled logins have gone");
    assert_eq!(value::<i32>(&c, "SELECT 3").await, 3);
}

/// What a login as `user` is asked: the SASL mechanism list, then the SCRAM server-first message with the
/// salt and iteration count, for a client-first with a fixed nonce.
fn scram_challenge(port: u16, user: &str) -> (Vec<u8>, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let packet = common::startup_packet(3 << 16, &[("user", user), ("database", "app")]);
    stream.write_all(&packet).unwrap();
    let (tag, mechanisms) = common::read_message(&mut stream);
    assert_eq!(tag, b'R');
    let first = b"n,,n=,r=fixednonce0123456789";
    let mut initial = b"SCRAM-SHA-256\0".to_vec();
    initial.extend_from_slice(&(first.len() as u32).to_be_bytes());
    initial.extend_from_slice(first);
    stream
        .write_all(&common::message(b'p', &[&initial]))
        .unwrap();
    let (tag, server_first) = common::read_message(&mut stream);
    assert_eq!(tag, b'R', "{}", String::from_utf8_lossy(&server_first));
    assert_eq!(server_first[..4], 11u32.to_be_bytes(), "SASLContinue");
    (
        mechanisms,
        String::from_utf8_lossy(&server_first[4..]).into_owned(),
    )
}

/// The salt and iteration count of a server-first message, without the nonce (random per login).
fn salt_and_iterations(server_first: &str) -> String {
    server_first
        .split(',')
        .filter(|f| !f.starts_with("r="))
        .collect::<Vec<_>>()
        .join(",")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_users_get_the_same_challenge_as_known_ones() {
    let Fixture { pg: _pg, herd } = fixture("transaction", 2, "workers = 2");
    let (known_mechanisms, known) = scram_challenge(herd.port, "app");
    let (unknown_mechanisms, unknown) = scram_challenge(herd.port, "nobody");
    assert_eq!(known_mechanisms, unknown_mechanisms);
    let shape = |s: &str| -> Vec<String> {
        s.split(',')
            .map(|f| f.split_once('=').map_or(0, |(_, v)| v.len()).to_string())
            .collect()
    };
    assert_eq!(shape(&known), shape(&unknown), "{known} / {unknown}");
    assert!(unknown.contains(",i=4096"), "{unknown}");
    // The same name gets the same salt every time (on any shard), another name another one.
    let again = salt_and_iterations(&scram_challenge(herd.port, "nobody").1);
    assert_eq!(salt_and_iterations(&unknown), again);
    assert_ne!(
        salt_and_iterations(&scram_challenge(herd.port, "nobody2").1),
        again
    );
    let err = try_connect(herd.port, "nobody", "secret", "app")
        .await
        .expect_err("no such user");
    assert_eq!(err.code().map(|c| c.code()), Some("28P01"));
    // And across a restart, as PostgreSQL's salts for unknown roles are.
    let herd = herd.restarted_with(|body| body);
    assert_eq!(
        salt_and_iterations(&scram_challenge(herd.port, "nobody").1),
        again
    );
}
