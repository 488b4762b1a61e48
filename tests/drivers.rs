//! Real drivers with their default settings: psycopg 3, asyncpg, a raw-protocol client (Python), node-postgres
//! and pgjdbc each run their scenario suite (tests/drivers/<language>/) against PostgreSQL directly, as the
//! reference, then through pgherd in transaction and in session mode. Each suite installs its driver at a
//! pinned version (tests/drivers/<language>/install.sh) and prints one line per scenario:
//! `ok <scenario> backends=<n>`, where n is how many distinct PostgreSQL backends the scenario's client used.
//! In transaction mode the scenarios that move a client between servers must have used more than one, or they
//! proved nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Mutex;
use std::time::Duration;

use common::{fixture, Fixture};

/// Installs are run one at a time: two tests must not fill the same directory at once.
static INSTALL: Mutex<()> = Mutex::new(());

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `tests/drivers/<language>/install.sh <dir>` (idempotent) and returns `dir`, where it put the driver.
fn install(language: &str) -> PathBuf {
    let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = root().join("target/drivers").join(language);
    let script = root()
        .join("tests/drivers")
        .join(language)
        .join("install.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(&dir)
        .output()
        .expect("run install.sh");
    assert!(
        out.status.success(),
        "{} failed:\n{}{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// A hung scenario fails the suite instead of hanging the test run.
const SUITE_TIMEOUT: Duration = Duration::from_secs(300);

/// The child's output, killing it (by pid) if it is still running after `limit`.
fn output_within(child: Child, limit: Duration) -> Output {
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        // Disconnected means the suite ended; only a timeout kills.
        if let Err(RecvTimeoutError::Timeout) = finished.recv_timeout(limit) {
            // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    });
    let out = child.wait_with_output().expect("wait for the suite");
    drop(done);
    watchdog.join().unwrap();
    out
}

/// Scenarios whose client must have moved between servers in transaction mode.
const MOVES: &[&str] = &[
    "prepared_statements_follow_the_client",
    "same_names_different_sql",
    "settings_stick_and_do_not_leak",
];

/// Runs `suite` (a command missing only its connection arguments) against PostgreSQL and then pgherd in
/// both modes; fails with its output unless every scenario passed.
fn run_suite(suite: impl Fn() -> Command) {
    for target in ["direct", "transaction", "session"] {
        // One worker, whose pool hands out the server released last: the suites' holder connections rely on
        // it to take the server a client just released, so that the client's next transaction runs elsewhere.
        let mode = if target == "direct" {
            "transaction"
        } else {
            target
        };
        let Fixture { pg, herd } = fixture(mode, 3, "workers = 1");
        let port = if target == "direct" {
            pg.port
        } else {
            herd.port
        };
        let child = suite()
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--user", "app", "--password", "secret", "--dbname", "app"])
            .args(["--mode", target])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the suite");
        let out = output_within(child, SUITE_TIMEOUT);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report = format!(
            "{target}:\n{stdout}{}\n--- pgherd log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            herd.log()
        );
        assert!(out.status.success(), "suite failed against {report}");
        let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("ok ")).collect();
        assert!(!lines.is_empty(), "no scenario ran against {report}");
        if target == "transaction" {
            for line in lines {
                let mut words = line.split_whitespace().skip(1);
                let (scenario, backends) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                let backends: usize = backends
                    .strip_prefix("backends=")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("malformed line {line:?} in {report}"));
                if MOVES.iter().any(|m| scenario.ends_with(m)) {
                    assert!(
                        backends > 1,
                        "{scenario} ran on one backend only: it proved nothing\n{report}"
                    );
                }
            }
        }
        eprintln!("{target}:\n{stdout}");
    }
}

#[test]
fn python_psycopg_asyncpg_and_raw_protocol() {
    let env = install("python");
    run_suite(|| {
        let mut cmd = Command::new(env.join("bin/python"));
        cmd.arg(root().join("tests/drivers/python/suite.py"));
        cmd
    });
}

#[test]
fn node_postgres() {
    let dir = install("node");
    run_suite(|| {
        let mut cmd = Command::new("node");
        cmd.env("NODE_PATH", dir.join("node_modules"))
            .arg(root().join("tests/drivers/node/suite.js"));
        cmd
    });
}

#[test]
fn pgjdbc() {
    let dir = install("java");
    run_suite(|| {
        let mut cmd = Command::new("java");
        cmd.arg("-cp")
            .arg(dir.join("postgresql.jar"))
            .arg(root().join("tests/drivers/java/Suite.java"));
        cmd
    });
}

/// libpq 18 with `max_protocol_version=latest` asks for protocol 3.2; pgherd serves 3.0 and says so in a
/// NegotiateProtocolVersion that libpq must accept (an encoding it misread once refused every such login).
#[test]
fn libpq_18_asking_for_protocol_3_2_connects() {
    let env = install("libpq18");
    let Fixture { pg: _pg, herd } = fixture("transaction", 2, "workers = 1");
    let script = "import sys, psycopg\n\
        assert psycopg.pq.version() >= 180000, psycopg.pq.version()\n\
        with psycopg.connect(sys.argv[1]) as c:\n\
        \x20   print('protocol', c.pgconn.protocol_version, 'answer', c.execute('SELECT 40 + 2').fetchone()[0])\n";
    let conninfo = format!(
        "host=127.0.0.1 port={} user=app password=secret dbname=app max_protocol_version=latest",
        herd.port
    );
    let child = Command::new(env.join("bin/python"))
        .args(["-c", script, &conninfo])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    let out = output_within(child, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("protocol 3 answer 42"),
        "{stdout}{}\n--- pgherd log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        herd.log()
    );
}
