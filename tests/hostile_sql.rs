//! SQL that real applications and hostile clients send, which the pooler must read right: what PostgreSQL
//! refuses is refused, state the text shows never reaches another client, statements never cross clients.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::{
    backend_pid, connect, fixture, message, read_message, startup_packet, terminate_backend, value,
    Fixture,
};

/// A raw protocol client, for messages drivers do not let a test choose (logs in with trust).
struct Raw(TcpStream);

type Message = (u8, Vec<u8>);

impl Raw {
    fn login(port: u16) -> Raw {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(&startup_packet(
            3 << 16,
            &[("user", "app"), ("database", "app")],
        ))
        .unwrap();
        let mut raw = Raw(s);
        let login = raw.until_ready();
        assert!(login.iter().all(|(t, _)| *t != b'E'), "{login:?}");
        raw
    }

    fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).unwrap();
    }

    fn until_ready(&mut self) -> Vec<Message> {
        let mut got = Vec::new();
        loop {
            let m = read_message(&mut self.0);
            let done = m.0 == b'Z';
            got.push(m);
            if done {
                return got;
            }
        }
    }

    /// Parse (with inferred parameter types), Bind one text value, Execute, Sync: the replies.
    fn run_prepared(&mut self, name: &str, sql: &str, param: &str) -> Vec<Message> {
        let mut out = message(
            b'P',
            &[name.as_bytes(), b"\0", sql.as_bytes(), b"\0", &[0, 0]],
        );
        let len = (param.len() as u32).to_be_bytes();
        out.extend(message(
            b'B',
            &[
                b"\0",
                name.as_bytes(),
                b"\0",
                &[0, 0, 0, 1],
                &len,
                param.as_bytes(),
                &[0, 0],
            ],
        ));
        out.extend(message(b'E', &[b"\0", &[0, 0, 0, 0]]));
        out.extend(message(b'S', &[]));
        self.send(&out);
        self.until_ready()
    }
}

/// The SQLSTATE of the first ErrorResponse among `replies`.
fn error_code(replies: &[Message]) -> Option<String> {
    let (_, body) = replies.iter().find(|(t, _)| *t == b'E')?;
    body.split(|&b| b == 0)
        .find_map(|f| f.strip_prefix(b"C"))
        .map(|c| String::from_utf8_lossy(c).into_owned())
}

fn trust() -> Fixture {
    fixture("transaction", 1, "workers = 1\nauth_type = \"trust\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_postgres_refuses_is_refused_and_the_pooler_lives_on() {
    let Fixture { pg: _pg, herd } = fixture("transaction", 2, "workers = 2");
    let c = connect(herd.port, "app", "secret", "app").await;
    for sql in [
        "RESET *",
        "SET * TO 1",
        "SET SESSION * TO 1",
        "RESET",
        "SET",
    ] {
        let err = c.batch_execute(sql).await.expect_err(sql);
        assert_eq!(
            err.code().map(|c| c.code()),
            Some("42601"),
            "{sql}: {err:?}"
        );
    }
    for sql in ["SET SESSION TIME ZONE 0", "SET SESSION XML OPTION DOCUMENT"] {
        c.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
    let other = connect(herd.port, "app", "secret", "app").await;
    assert_eq!(value::<i32>(&other, "SELECT 2").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_session_forms_follow_their_client() {
    let Fixture { pg, herd } = fixture("transaction", 2, "workers = 1");
    let c = connect(herd.port, "app", "secret", "app").await;
    c.batch_execute("SET SESSION TIME ZONE 'Asia/Tokyo'; SET SESSION XML OPTION DOCUMENT")
        .await
        .unwrap();
    terminate_backend(&pg, backend_pid(&c).await);
    assert_eq!(value::<String>(&c, "SHOW TimeZone").await, "Asia/Tokyo");
    assert_eq!(value::<String>(&c, "SHOW xmloption").await, "document");
    assert!(!herd.log().contains("keeps its server"), "{}", herd.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgrest_transaction_local_set_config_does_not_pin() {
    let Fixture { pg: _pg, herd } = fixture("transaction", 2, "workers = 1");
    let c = connect(herd.port, "app", "secret", "app").await;
    let other = connect(herd.port, "app", "secret", "app").await;
    for i in 0..5 {
        let tx = format!(
            "BEGIN; SELECT set_config('request.jwt.claims', '{{\"sub\":\"{i}\"}}', true), \
             set_config('role', 'app', true); SELECT 1; COMMIT"
        );
        c.batch_execute(&tx).await.unwrap();
        let left: Option<String> =
            value(&other, "SELECT current_setting('request.jwt.claims', true)").await;
        assert!(left.as_deref().is_none_or(str::is_empty), "{left:?}");
    }
    assert!(!herd.log().contains("keeps its server"), "{}", herd.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_changed_inside_do_blocks_never_reach_another_client() {
    // Two servers: SQL pgherd cannot read (EXECUTE format(...)) keeps its client on its server.
    let Fixture { pg: _pg, herd } = fixture("transaction", 2, "workers = 1");
    let evil = connect(herd.port, "app", "secret", "app").await;
    let victim = connect(herd.port, "app", "secret", "app").await;
    let before: String = value(&victim, "SHOW search_path").await;
    for sql in [
        "DO $$ BEGIN PERFORM set_config('search_path', 'evil, public', false); END $$",
        "DO $body$ BEGIN EXECUTE 'SET search_path = evil'; END $body$",
        "DO $$ BEGIN EXECUTE format('SET %I = %L', 'search_path', 'evil'); END $$",
        "DO LANGUAGE plpgsql 'BEGIN SET search_path = evil; END'",
        "DO $$ BEGIN SET application_name = 'evil'; END $$",
    ] {
        evil.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        assert_eq!(
            value::<String>(&victim, "SHOW search_path").await,
            before,
            "{sql}"
        );
        assert_eq!(
            value::<String>(&victim, "SHOW application_name").await,
            "",
            "{sql}"
        );
        // The client itself sees what it set, as on PostgreSQL.
        let own: String = value(&evil, "SHOW search_path").await;
        let app: String = value(&evil, "SHOW application_name").await;
        assert!(own.contains("evil") || app == "evil", "{sql}: {own} {app}");
        evil.batch_execute("DISCARD ALL").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_cannot_reach_the_pooler_s_statements() {
    let Fixture { pg: _pg, herd } = trust();
    let mut owner = Raw::login(herd.port);
    let mut hostile = Raw::login(herd.port);
    let sql = "SELECT $1::int + 1";
    assert_eq!(error_code(&owner.run_prepared("mine", sql, "1")), None);
    let names = Raw::simple(&mut hostile, "SELECT name FROM pg_prepared_statements");
    let hidden: Vec<String> = names
        .into_iter()
        .filter(|n| n.starts_with("pgherd_"))
        .collect();
    assert!(
        !hidden.is_empty(),
        "the hidden statement is visible on the shared server"
    );
    // In the client's own namespace, as on PostgreSQL: it has no statement of that name.
    for name in &hidden {
        for attempt in [
            format!("DEALLOCATE \"{name}\""),
            format!("DEALLOCATE PREPARE {name}"),
            format!("EXECUTE {name}(1)"),
            format!("SELECT 1; EXPLAIN EXECUTE {}(1)", name.to_uppercase()),
        ] {
            let replies = hostile.query(&attempt);
            assert_eq!(error_code(&replies).as_deref(), Some("26000"), "{attempt}");
        }
        // Where pgherd cannot rename the name, the SQL fails instead.
        let nested = format!("DO $$ BEGIN EXECUTE 'DEALLOCATE {name}'; END $$");
        assert_eq!(
            error_code(&hostile.query(&nested)).as_deref(),
            Some("42939")
        );
    }
    // The owner's statement is untouched.
    let mut bind = message(
        b'B',
        &[b"\0mine\0", &[0, 0, 0, 1, 0, 0, 0, 1], b"5", &[0, 0]],
    );
    bind.extend(message(b'E', &[b"\0", &[0, 0, 0, 0]]));
    bind.extend(message(b'S', &[]));
    owner.send(&bind);
    let replies = owner.until_ready();
    assert_eq!(error_code(&replies), None, "{replies:?}");
    assert!(replies.iter().any(|(t, b)| *t == b'D' && b.ends_with(b"6")));
    // A server-side function's dynamic SQL cannot be read: the statement is prepared again after one failed
    // use at most.
    hostile.query(
        "CREATE FUNCTION drop_statement(n text) RETURNS void LANGUAGE plpgsql AS \
         $$ BEGIN EXECUTE 'DEALLOCATE ' || quote_ident(n); END $$",
    );
    let dropped = hostile.query(&format!("SELECT drop_statement('{}')", hidden[0]));
    assert_eq!(error_code(&dropped), None, "{dropped:?}");
    owner.send(&bind);
    let first = error_code(&owner.until_ready());
    assert!(
        matches!(first.as_deref(), None | Some("26000")),
        "{first:?}"
    );
    owner.send(&bind);
    let again = owner.until_ready();
    assert_eq!(error_code(&again), None, "{again:?}");
    // A client's own statement under such a name works as on PostgreSQL (it keeps the client on its server,
    // like any SQL PREPARE), and never touches the hidden one.
    let name = &hidden[0];
    for (sql, code) in [
        (format!("PREPARE {name} AS SELECT 2"), None),
        (format!("PREPARE {name} AS SELECT 3"), Some("42P05")),
        (format!("EXECUTE {name}"), None),
        (format!("DEALLOCATE {name}"), None),
        (format!("EXECUTE {name}"), Some("26000")),
    ] {
        assert_eq!(error_code(&hostile.query(&sql)).as_deref(), code, "{sql}");
    }
    drop(hostile);
    owner.send(&bind);
    let still = owner.until_ready();
    assert_eq!(error_code(&still), None, "{still:?}");
    assert!(still.iter().any(|(t, b)| *t == b'D' && b.ends_with(b"6")));
}

impl Raw {
    fn query(&mut self, sql: &str) -> Vec<Message> {
        self.send(&message(b'Q', &[sql.as_bytes(), b"\0"]));
        self.until_ready()
    }

    /// The first column of each row of `sql`, as text.
    fn simple(&mut self, sql: &str) -> Vec<String> {
        self.query(sql)
            .into_iter()
            .filter(|(t, _)| *t == b'D')
            .map(|(_, b)| {
                let len = u32::from_be_bytes([b[2], b[3], b[4], b[5]]) as usize;
                String::from_utf8_lossy(&b[6..6 + len]).into_owned()
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_parsed_again_after_ddl_is_planned_fresh() {
    let Fixture { pg: _pg, herd } = trust();
    let ddl = connect(herd.port, "app", "secret", "app").await;
    ddl.batch_execute("CREATE TYPE mood AS ENUM ('ok'); CREATE TABLE feelings (m mood)")
        .await
        .unwrap();
    let insert = "INSERT INTO feelings VALUES ($1)";
    let mut first = Raw::login(herd.port);
    assert_eq!(error_code(&first.run_prepared("ins", insert, "ok")), None);
    ddl.batch_execute(
        "DROP TABLE feelings; DROP TYPE mood; CREATE TYPE mood AS ENUM ('ok'); \
         CREATE TABLE feelings (m mood)",
    )
    .await
    .unwrap();
    // Same text, another client, the same (only) server: PostgreSQL plans a new Parse afresh.
    let mut second = Raw::login(herd.port);
    let replies = second.run_prepared("ins", insert, "ok");
    assert_eq!(error_code(&replies), None, "{replies:?}");
    assert_eq!(value::<i64>(&ddl, "SELECT count(*) FROM feelings").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_cleared_only_by_statements_that_ran_and_committed() {
    let Fixture { pg: _pg, herd } = fixture("transaction", 2, "workers = 1");
    let c = connect(herd.port, "app", "secret", "app").await;
    c.batch_execute("LISTEN channel").await.unwrap();
    herd.wait_for_log("keeps its server: LISTEN", Duration::from_secs(5));
    let pinned = backend_pid(&c).await;
    // Refused inside a transaction block, rolled back, failed: the LISTEN is still on the server.
    let refused = c.batch_execute("SELECT 1; DISCARD ALL").await.unwrap_err();
    assert_eq!(
        refused.code().map(|c| c.code()),
        Some("25001"),
        "{refused:?}"
    );
    c.batch_execute("BEGIN; UNLISTEN *; ROLLBACK")
        .await
        .unwrap();
    c.batch_execute("BEGIN; UNLISTEN *; SELECT 1/0")
        .await
        .unwrap_err();
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(backend_pid(&c).await, pinned);
    assert!(!herd.log().contains("returns to pooling"), "{}", herd.log());
    let listening: i64 = value(&c, "SELECT count(*) FROM pg_listening_channels()").await;
    assert_eq!(listening, 1);
    // A LISTEN after the UNLISTEN * in the same committed batch keeps the client on its server.
    c.batch_execute("UNLISTEN *; LISTEN other").await.unwrap();
    assert_eq!(backend_pid(&c).await, pinned);
    assert!(!herd.log().contains("returns to pooling"), "{}", herd.log());
    // Committed: the client goes back to pooling.
    c.batch_execute("BEGIN; UNLISTEN *; COMMIT").await.unwrap();
    herd.wait_for_log("returns to pooling", Duration::from_secs(5));
}
