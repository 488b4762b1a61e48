//! auth_query: users that are not in the configuration log in with the password PostgreSQL stores for them,
//! looked up through a non-superuser auth_user and a SECURITY DEFINER function, cached for a TTL.

mod common;

use std::time::{Duration, Instant};

use common::{try_connect, value, wait_until, Pgherd, Postgres};

fn setup(ttl: &str, lookup_password: &str) -> (Postgres, Pgherd) {
    let mut pg = Postgres::start();
    pg.create_user("app", "secret");
    pg.create_database("app", "app");
    pg.create_user("lookup", "lookpw");
    pg.create_user("dyn", "dynpw");
    pg.sql_in(
        "app",
        "CREATE FUNCTION public.user_lookup(text) RETURNS TABLE (usename name, passwd text) \
         LANGUAGE sql SECURITY DEFINER AS \
         $$ SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = $1 $$; \
         REVOKE ALL ON FUNCTION public.user_lookup(text) FROM public; \
         GRANT EXECUTE ON FUNCTION public.user_lookup(text) TO lookup",
    );
    pg.db = "app".into();
    let herd = Pgherd::start(&format!(
        "pool_mode = \"transaction\"\nworkers = 2\n\
         auth_user = \"lookup\"\n\
         auth_query = \"SELECT usename, passwd FROM public.user_lookup($1)\"\n\
         auth_query_cache_ttl = {ttl}\n\n\
         [databases.app]\nport = {}\npool_size = 2\n\n\
         [users.lookup]\npassword = \"{lookup_password}\"\n",
        pg.port
    ));
    (pg, herd)
}

fn sqlstate(r: Result<tokio_postgres::Client, tokio_postgres::Error>) -> Option<String> {
    r.err().and_then(|e| e.code().map(|c| c.code().to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_found_by_auth_query_log_in_with_their_stored_password() {
    let (pg, herd) = setup("1", "lookpw");
    let c = try_connect(herd.port, "dyn", "dynpw", "app").await.unwrap();
    let who: String = value(&c, "SELECT current_user::text").await;
    assert_eq!(who, "dyn");
    let started = Instant::now();
    assert_eq!(
        sqlstate(try_connect(herd.port, "dyn", "wrong", "app").await).as_deref(),
        Some("28P01")
    );
    assert_eq!(
        sqlstate(try_connect(herd.port, "nobody", "x", "app").await).as_deref(),
        Some("28P01")
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // A new password: the cached one works until the TTL, then the new one.
    pg.sql("ALTER USER dyn PASSWORD 'newpw'");
    let rt = tokio::runtime::Handle::current();
    let port = herd.port;
    tokio::task::spawn_blocking(move || {
        wait_until(
            Duration::from_secs(10),
            "the new password to be looked up",
            || {
                rt.block_on(try_connect(port, "dyn", "newpw", "app"))
                    .is_ok()
            },
        );
    })
    .await
    .unwrap();
    assert_eq!(
        sqlstate(try_connect(herd.port, "dyn", "dynpw", "app").await).as_deref(),
        Some("28P01")
    );
    // The client logged in before the change keeps working.
    assert_eq!(value::<i32>(&c, "SELECT 1").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_lookup_is_an_error_not_a_hang() {
    let (_pg, herd) = setup("60", "not-the-password");
    let started = Instant::now();
    let code = sqlstate(try_connect(herd.port, "dyn", "dynpw", "app").await);
    assert_eq!(code.as_deref(), Some("08006"));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        herd.log()
            .contains("auth_query: cannot log in as \"lookup\""),
        "{}",
        herd.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_names_open_no_more_sessions_than_the_lookup_connections() {
    let (pg, herd) = setup("60", "lookpw");
    pg.sql("ALTER SYSTEM SET log_connections = on");
    pg.sql("SELECT pg_reload_conf()");
    wait_until(Duration::from_secs(10), "log_connections on", || {
        pg.sql("SHOW log_connections") == "on"
    });
    let port = herd.port;
    let logins: Vec<_> = (0..8)
        .map(|batch| {
            tokio::spawn(async move {
                for i in 0..40 {
                    let r = try_connect(port, &format!("nobody_{batch}_{i}"), "x", "app").await;
                    assert_eq!(sqlstate(r).as_deref(), Some("28P01"));
                }
            })
        })
        .collect();
    for login in logins {
        login.await.unwrap();
    }
    // A known user found by the same connections still logs in.
    let c = try_connect(herd.port, "dyn", "dynpw", "app").await.unwrap();
    assert_eq!(value::<i32>(&c, "SELECT 1").await, 1);
    let sessions = pg
        .log()
        .matches("connection authorized: user=lookup")
        .count();
    // Two shards, two lookup connections each (auth_query_connections' default).
    assert!(
        (1..=4).contains(&sessions),
        "{sessions} lookup sessions for 321 lookups"
    );
}
