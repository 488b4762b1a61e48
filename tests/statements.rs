//! Prepared statements in transaction mode: a client's statements work on whichever server runs its next
//! transaction, and clients that use the same names for different statements never meet (pgbench -M prepared:
//! tests/pooling.rs).

mod common;

use std::collections::HashSet;

use common::{connect, fixture, Fixture};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_move_with_their_clients_and_names_never_collide() {
    // One worker: holders that begin a transaction take the server released last, the clients' one.
    let Fixture { pg: _pg, herd } = fixture("transaction", 3, "workers = 1");
    // tokio-postgres names each connection's statements s0, s1, ...: a's s0 and b's s0 differ.
    let a = connect(herd.port, "app", "secret", "app").await;
    let b = connect(herd.port, "app", "secret", "app").await;
    let holder = connect(herd.port, "app", "secret", "app").await;
    let sa = a
        .prepare("SELECT $1::int + 1, pg_backend_pid()")
        .await
        .unwrap();
    let sb = b
        .prepare("SELECT $1::text || '!', pg_backend_pid()")
        .await
        .unwrap();
    let mut backends = HashSet::new();
    for i in 0..16 {
        if i % 3 != 0 {
            holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
        }
        let row = a.query_one(&sa, &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i + 1);
        backends.insert(row.get::<_, i32>(1));
        let row = b.query_one(&sb, &[&i.to_string()]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), format!("{i}!"));
        backends.insert(row.get::<_, i32>(1));
        if i % 3 != 0 {
            holder.batch_execute("COMMIT").await.unwrap();
        }
    }
    assert!(backends.len() > 1, "one backend only: {backends:?}");
    // Dropping a statement closes it for its client only.
    drop(sa);
    let again = a
        .prepare("SELECT $1::int + 1, pg_backend_pid()")
        .await
        .unwrap();
    assert_eq!(
        a.query_one(&again, &[&1]).await.unwrap().get::<_, i32>(0),
        2
    );
    assert_eq!(
        b.query_one(&sb, &[&"x"]).await.unwrap().get::<_, String>(0),
        "x!"
    );
    // DISCARD ALL forgets this client's statements, as PostgreSQL does, and no one else's.
    a.batch_execute("DISCARD ALL").await.unwrap();
    let err = a.query_one(&again, &[&1]).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("26000"), "{err:?}");
    assert_eq!(
        b.query_one(&sb, &[&"y"]).await.unwrap().get::<_, String>(0),
        "y!"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_evicted_from_a_server_is_prepared_again() {
    let Fixture { pg: _pg, herd } =
        fixture("transaction", 1, "workers = 1\nmax_prepared_statements = 2");
    let c = connect(herd.port, "app", "secret", "app").await;
    let statements = [
        c.prepare("SELECT 1::int").await.unwrap(),
        c.prepare("SELECT 2::int").await.unwrap(),
        c.prepare("SELECT 3::int").await.unwrap(),
    ];
    for _ in 0..3 {
        for (i, s) in statements.iter().enumerate() {
            assert_eq!(
                c.query_one(s, &[]).await.unwrap().get::<_, i32>(0),
                i as i32 + 1
            );
        }
    }
    let held: i64 = c
        .query_one("SELECT count(*) FROM pg_prepared_statements", &[])
        .await
        .unwrap()
        .get(0);
    assert!(held <= 3, "the server holds {held} statements");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_pipelined_executions_keep_their_order() {
    let Fixture { pg: _pg, herd } = fixture("transaction", 2, "workers = 1");
    let c = connect(herd.port, "app", "secret", "app").await;
    let s = c.prepare("SELECT $1::int * 2").await.unwrap();
    // tokio-postgres pipelines concurrent queries: far more than one 64 KiB buffer of Binds arrives at once, so
    // renaming them must also work where the buffer has no room left.
    let queries = (0..5000).map(|i| {
        let (c, s) = (&c, &s);
        async move { c.query_one(s, &[&i]).await.map(|r| r.get::<_, i32>(0)) }
    });
    let results = futures_util::future::join_all(queries).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap(), 2 * i as i32);
    }
}
