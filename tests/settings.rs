//! Startup settings (application_name, TimeZone, `options=-c ...`) are each client's session defaults on
//! whichever server runs its transaction, what it SETs stays with it, RESET returns to its startup values, and
//! none of it reaches another client.

mod common;

use std::collections::HashSet;

use common::{backend_pid, fixture, psql, value, Fixture};

async fn connect_with(port: u16, extra: &str) -> tokio_postgres::Client {
    let conninfo =
        format!("host=127.0.0.1 port={port} user=app password=secret dbname=app {extra}");
    let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

async fn show(c: &tokio_postgres::Client, name: &str) -> String {
    value(c, &format!("SHOW {name}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_sees_its_own_startup_settings_on_a_shared_server() {
    // One server: every transaction of every client runs on it.
    let Fixture { pg: _pg, herd } = fixture("transaction", 1, "workers = 1");
    let tokyo = connect_with(
        herd.port,
        "application_name=tokyo options='-c TimeZone=Asia/Tokyo'",
    )
    .await;
    let lima = connect_with(
        herd.port,
        "application_name=lima options='-c TimeZone=America/Lima'",
    )
    .await;
    let plain = connect_with(herd.port, "").await;
    let server_default = show(&plain, "TimeZone").await;
    for _ in 0..3 {
        assert_eq!(show(&tokyo, "TimeZone").await, "Asia/Tokyo");
        assert_eq!(show(&lima, "TimeZone").await, "America/Lima");
        assert_eq!(show(&tokyo, "application_name").await, "tokyo");
        assert_eq!(show(&plain, "TimeZone").await, server_default);
        assert_eq!(show(&plain, "application_name").await, "");
    }
    // RESET ALL drops them on the server; the client's next transaction has its startup values again.
    tokyo.batch_execute("RESET ALL").await.unwrap();
    assert_eq!(show(&lima, "TimeZone").await, "America/Lima");
    assert_eq!(show(&tokyo, "TimeZone").await, "Asia/Tokyo");
}

#[test]
fn psql_options_set_a_search_path_list() {
    let Fixture { pg: _pg, herd } = fixture("transaction", 2, "workers = 1");
    let out = std::process::Command::new(common::bin("psql"))
        .args(["-X", "-A", "-t", "-c", "SHOW search_path"])
        .arg(format!(
            "host=127.0.0.1 port={} user=app dbname=app password=secret options='-c search_path=alpha,\\\\ beta'",
            herd.port
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "alpha, beta");
    // The next client, without options, has the server's default path.
    let out = psql(
        herd.port,
        "app",
        "secret",
        "app",
        &["-c", "SHOW search_path"],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "\"$user\", public"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setting_postgres_refuses_fails_that_client_only() {
    let Fixture { pg: _pg, herd } = fixture("transaction", 1, "workers = 1");
    let bad = connect_with(herd.port, "options='-c TimeZone=Not/AZone'").await;
    let err = bad.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22023"), "{err:?}");
    let good = connect_with(herd.port, "options='-c TimeZone=UTC'").await;
    assert_eq!(show(&good, "TimeZone").await, "UTC");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_follows_its_client_across_servers_and_reset_returns_to_startup_values() {
    let Fixture { pg: _pg, herd } = fixture("transaction", 3, "workers = 1");
    let a = connect_with(herd.port, "options='-c TimeZone=Asia/Tokyo'").await;
    let b = connect_with(herd.port, "").await;
    let holder = connect_with(herd.port, "").await;
    let server_default = show(&b, "TimeZone").await;
    a.batch_execute(
        "SET TimeZone = 'America/Lima'; SET search_path = a_schema, public; \
         SET myapp.tenant = 'seven'; SET statement_timeout = '42s'",
    )
    .await
    .unwrap();
    let mut backends = HashSet::new();
    for i in 0..12 {
        // A held transaction every other round makes the next one of `a` run elsewhere.
        if i % 2 == 0 {
            holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
        }
        backends.insert(backend_pid(&a).await);
        assert_eq!(show(&a, "TimeZone").await, "America/Lima");
        assert_eq!(show(&a, "search_path").await, "a_schema, public");
        assert_eq!(show(&a, "myapp.tenant").await, "seven");
        assert_eq!(show(&a, "statement_timeout").await, "42s");
        assert_eq!(show(&b, "TimeZone").await, server_default);
        assert_eq!(show(&b, "statement_timeout").await, "0");
        if i % 2 == 0 {
            holder.batch_execute("COMMIT").await.unwrap();
        }
    }
    assert!(
        backends.len() > 1,
        "a ran on one backend only: {backends:?}"
    );
    // A SET inside a rolled-back transaction, a SET LOCAL, and a failed SET leave nothing behind.
    a.batch_execute("BEGIN; SET TimeZone = 'UTC'; ROLLBACK")
        .await
        .unwrap();
    a.batch_execute("BEGIN; SET LOCAL TimeZone = 'UTC'; COMMIT")
        .await
        .unwrap();
    assert!(a
        .batch_execute("SET TimeZone = 'UTC'; SELECT 1/0")
        .await
        .is_err());
    assert_eq!(show(&a, "TimeZone").await, "America/Lima");
    // RESET goes back to the startup value, not the server's default.
    a.batch_execute("RESET TimeZone").await.unwrap();
    assert_eq!(show(&a, "TimeZone").await, "Asia/Tokyo");
    a.batch_execute("RESET ALL").await.unwrap();
    assert_eq!(show(&a, "search_path").await, "\"$user\", public");
    assert_eq!(show(&a, "TimeZone").await, "Asia/Tokyo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_kb_value_and_a_thousand_custom_settings_follow_their_client() {
    let Fixture { pg, herd } = fixture("transaction", 2, "workers = 1");
    let a = connect_with(herd.port, "").await;
    let jwt = "j".repeat(64 * 1024);
    let mut sql = format!("SET app.jwt = '{jwt}'");
    for i in 0..1000 {
        sql.push_str(&format!("; SET app.s{i} = 'v{i}'"));
    }
    a.batch_execute(&sql).await.unwrap();
    let first = backend_pid(&a).await;
    common::terminate_backend(&pg, first);
    assert_ne!(backend_pid(&a).await, first);
    assert_eq!(show(&a, "app.jwt").await, jwt);
    assert_eq!(show(&a, "app.s0").await, "v0");
    assert_eq!(show(&a, "app.s999").await, "v999");
    let b = connect_with(herd.port, "").await;
    let leaked: Option<String> = value(&b, "SELECT current_setting('app.s999', true)").await;
    assert!(leaked.as_deref().is_none_or(str::is_empty), "{leaked:?}");
    assert!(!herd.log().contains("keeps its server"), "{}", herd.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_past_the_bound_keep_the_client_on_its_server_until_discard_all() {
    let Fixture { pg: _pg, herd } =
        fixture("transaction", 2, "workers = 1\nmax_client_settings = 10");
    let a = connect_with(herd.port, "").await;
    let b = connect_with(herd.port, "").await;
    let sql: Vec<String> = (0..20).map(|i| format!("SET app.s{i} = 'v{i}'")).collect();
    a.batch_execute(&sql.join("; ")).await.unwrap();
    let pinned = backend_pid(&a).await;
    herd.wait_for_log(
        "exceed max_client_settings (10)",
        std::time::Duration::from_secs(5),
    );
    for _ in 0..3 {
        assert_eq!(backend_pid(&a).await, pinned, "a keeps its server");
        assert_eq!(show(&a, "app.s19").await, "v19");
        assert_ne!(backend_pid(&b).await, pinned, "no one else gets it");
    }
    a.batch_execute("DISCARD ALL").await.unwrap();
    herd.wait_for_log("returns to pooling", std::time::Duration::from_secs(5));
    let gone: Option<String> = value(&a, "SELECT current_setting('app.s19', true)").await;
    assert!(gone.as_deref().is_none_or(str::is_empty), "{gone:?}");
}
