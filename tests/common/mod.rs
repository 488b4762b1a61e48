//! Integration-test harness: real PostgreSQL clusters and pgherd processes, each on its own port and in its own
//! temporary directory, stopped by pid when dropped (also when a test panics).
//!
//! * One `initdb` per test process (a template cluster); every [`Postgres::start`] copies it, so a cluster starts
//!   in a fraction of a second.
//! * Ports are picked outside the kernel's ephemeral range (so no outgoing connection can take one between the pick
//!   and the bind) and never handed out twice in a process.
//! * Long-lived children (postgres, pgherd) are spawned from one process-wide thread with
//!   `PR_SET_PDEATHSIG = SIGKILL`, so even if the test process is killed outright they do not outlive it.
//! * As root, `initdb` and `postgres` run as the `postgres` user (setuid in the child: the spawned pid is the
//!   postmaster itself) and the temporary directories are chowned to it.
//! * Every wait is a poll with a deadline.
#![allow(dead_code)]

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How often every poll in this harness looks again.
const POLL: Duration = Duration::from_millis(20);
/// Deadline for PostgreSQL to accept connections after its start.
const PG_READY: Duration = Duration::from_secs(30);
/// Deadline for a fast shutdown (SIGINT) before SIGKILL.
const PG_STOP: Duration = Duration::from_secs(10);
/// Deadline for pgherd to accept TCP connections after its start.
const HERD_READY: Duration = Duration::from_secs(20);
/// Deadline for pgherd to exit after SIGTERM (in Drop) before SIGKILL.
const HERD_STOP: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------------------------

/// A PostgreSQL binary: `$PG_BIN/<name>` if PG_BIN is set, else `/usr/lib/postgresql/15/bin/<name>`.
pub fn bin(name: &str) -> PathBuf {
    match std::env::var_os("PG_BIN") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join(name),
        _ => PathBuf::from("/usr/lib/postgresql/15/bin").join(name),
    }
}

/// A number unique within this test process (for names of directories, tables, ...).
pub fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Polls `f` every 20 ms until it returns true; panics naming `what` if `deadline` passes first.
pub fn wait_until(deadline: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    loop {
        if f() {
            return;
        }
        if Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(POLL);
    }
}

/// Where the harness makes its temp dirs: `$PGHERD_TEST_TMPDIR` if set; else /dev/shm when it is a tmpfs with at
/// least 1 GiB free (copying a cluster there takes ~50 ms instead of ~1 s on a slow disk: a cluster is ~1000
/// files); else `std::env::temp_dir()`. As root, `postgres` must be able to reach it.
pub fn temp_base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        if let Some(dir) = std::env::var_os("PGHERD_TEST_TMPDIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        let shm = Path::new("/dev/shm");
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: the path is NUL-terminated and st is a valid out-pointer.
        let ok = unsafe { libc::statvfs(c"/dev/shm".as_ptr(), &mut st) } == 0;
        if ok && st.f_bavail as u64 * st.f_frsize as u64 >= 1 << 30 && shm.is_dir() {
            return shm.to_path_buf();
        }
        std::env::temp_dir()
    })
}

/// A new empty directory `<temp_base>/pgherd-test-<pid>-<label>-<n>`, owned by the user PostgreSQL runs as.
/// The caller removes it (the harness's own structs do so in Drop).
pub fn temp_dir(label: &str) -> PathBuf {
    let dir = temp_base().join(format!(
        "pgherd-test-{}-{}-{}",
        std::process::id(),
        label,
        unique()
    ));
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    chown_to_pg(&dir);
    dir
}

/// Removes `pgherd-test-<pid>-*` directories left in the temp dir by test processes that no longer exist
/// (killed runs, or the per-process template cluster). Runs once per process.
fn remove_stale_dirs() {
    let me = std::process::id();
    let bases = [
        temp_base().to_path_buf(),
        std::env::temp_dir(),
        PathBuf::from("/dev/shm"),
    ];
    for entry in bases
        .iter()
        .filter_map(|b| fs::read_dir(b).ok())
        .flatten()
        .flatten()
    {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("pgherd-test-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if pid <= 0 || pid as u32 == me {
            continue;
        }
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } == -1
            && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone && entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Removes PG* variables of the environment the tests run in, so only what the harness sets reaches psql/pgbench.
fn clean_pg_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if let Some(k) = key.to_str() {
            if k.starts_with("PG") && k != "PG_BIN" {
                cmd.env_remove(k);
            }
        }
    }
    cmd.env("PGCONNECT_TIMEOUT", "10");
}

fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Exit code of a finished child; 128 + signal number if a signal ended it.
fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

// ---------------------------------------------------------------------------------------------------------------
// Users, ports, spawning
// ---------------------------------------------------------------------------------------------------------------

/// (uid, gid) to run PostgreSQL as: the `postgres` user when the tests run as root, else None (ourselves).
fn pg_owner() -> Option<(u32, u32)> {
    static OWNER: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *OWNER.get_or_init(|| {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        // SAFETY: called once, under the OnceLock; the entry is copied out before anything else calls getpw*.
        let pw = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
        assert!(
            !pw.is_null(),
            "the tests run as root, but there is no `postgres` user to run PostgreSQL as"
        );
        // SAFETY: pw is non-null and points to getpwnam's static entry.
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        Some((uid, gid))
    })
}

fn chown_to_pg(path: &Path) {
    if let Some((uid, gid)) = pg_owner() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

fn run_as_pg(cmd: &mut Command) {
    if let Some((uid, gid)) = pg_owner() {
        cmd.uid(uid).gid(gid);
    }
}

fn ephemeral_range() -> (u32, u32) {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|n| n.parse::<u32>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// A TCP port free on 127.0.0.1, never handed out before in this process. Chosen outside the ephemeral port
/// range when possible, so an outgoing connection cannot take it before the server binds it.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut guard = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let given = guard.get_or_insert_with(HashSet::new);
    let (lo, hi) = ephemeral_range();
    let range = if lo >= 12_000 {
        Some((10_000, lo - 1))
    } else if hi <= 63_000 {
        Some((hi + 1, 65_535))
    } else {
        None
    };
    if let Some((start, end)) = range {
        let span = (end - start + 1) as u64;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut x = (std::process::id() as u64) << 32 ^ nanos ^ 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let port = (start as u64 + x % span) as u16;
            if given.contains(&port) {
                continue;
            }
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.insert(port);
                return port;
            }
        }
    }
    // No room outside the ephemeral range: let the kernel choose.
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        if given.insert(port) {
            return port;
        }
    }
    panic!("no free TCP port found on 127.0.0.1");
}

/// Spawns a long-lived child from one process-wide thread that never ends, with PR_SET_PDEATHSIG = SIGKILL: the
/// child dies with the test process however that ends. (The death signal follows the spawning *thread*, which is
/// why that thread must outlive every test.)
fn spawn_tied(mut cmd: Command) -> io::Result<Child> {
    type Job = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("harness-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the harness spawner thread");
        Mutex::new(tx)
    });
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl, getppid and _exit are async-signal-safe; nothing is allocated.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let (reply, answer) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((cmd, reply))
        .expect("harness spawner thread is gone");
    answer.recv().expect("harness spawner thread is gone")
}

/// Sends `sig`, polls for the exit until `deadline`, then SIGKILLs; always reaps. Returns how the child ended.
fn stop_child(child: &mut Child, sig: i32, deadline: Duration) -> ExitStatus {
    if let Ok(Some(status)) = child.try_wait() {
        return status;
    }
    // SAFETY: the child is not reaped yet, so its pid cannot have been reused.
    unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        match child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) => std::thread::sleep(POLL),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    child.wait().expect("waitpid")
}

// ---------------------------------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------------------------------

/// The template cluster's data directory: initdb once per test process.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        remove_stale_dirs();
        let root = temp_dir("template");
        let data = root.join("data");
        let mut cmd = Command::new(bin("initdb"));
        cmd.args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
            "-D",
        ])
        .arg(&data)
        .current_dir(&root)
        .stdin(Stdio::null());
        clean_pg_env(&mut cmd);
        run_as_pg(&mut cmd);
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", bin("initdb").display()));
        assert!(out.status.success(), "initdb failed: {}", describe(&out));
        data
    })
}

/// What a thread needs to query a cluster: cheap to clone, Send, does not own the process.
#[derive(Debug, Clone)]
pub struct PgHandle {
    pub port: u16,
    pub socket_dir: PathBuf,
    /// Database that `sql` runs in.
    pub db: String,
}

impl PgHandle {
    /// Runs `sql` as superuser `postgres` over the Unix socket in database `self.db`; returns trimmed stdout.
    /// Panics with psql's stderr if it fails.
    pub fn sql(&self, sql: &str) -> String {
        self.sql_in(&self.db, sql)
    }

    /// Like `sql`, in database `db`.
    pub fn sql_in(&self, db: &str, sql: &str) -> String {
        let mut cmd = Command::new(bin("psql"));
        clean_pg_env(&mut cmd);
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ])
            .stdin(Stdio::null());
        let out = cmd.output().expect("run psql");
        assert!(
            out.status.success(),
            "psql (port {}, db {db}) failed on {sql:?}: {}",
            self.port,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Client backends of `user` in pg_stat_activity (not counting the backend asking).
    pub fn backend_count(&self, user: &str) -> usize {
        let n = self.sql_in(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' \
                 AND usename = {} AND pid <> pg_backend_pid()",
                quote_literal(user)
            ),
        );
        n.parse()
            .unwrap_or_else(|_| panic!("backend count: unexpected {n:?}"))
    }
}

/// A PostgreSQL 15 cluster of its own: temp dir, TCP port on 127.0.0.1, Unix socket in `dir`.
/// Dropping it stops the postmaster (SIGINT, then SIGKILL) and removes `dir`.
#[derive(Debug)]
pub struct Postgres {
    pub port: u16,
    /// The cluster's temp dir: holds `data/`, `postgres.log` and the Unix socket.
    pub dir: PathBuf,
    /// The data directory, `dir/data`.
    pub data: PathBuf,
    /// Database that `sql` runs in: "postgres" unless changed (the fixture sets "app").
    pub db: String,
    child: Option<Child>,
}

impl Postgres {
    /// A fresh cluster (a copy of the process's template) accepting connections. Superuser `postgres` is trusted
    /// over the Unix socket and from 127.0.0.1; every other user needs its SCRAM password over TCP.
    pub fn start() -> Postgres {
        let template = template();
        let dir = temp_dir("pg");
        let data = dir.join("data");
        let out = Command::new("cp")
            .arg("-a")
            .arg(template)
            .arg(&data)
            .output()
            .expect("run cp");
        assert!(out.status.success(), "cp -a template: {}", describe(&out));
        let mut pg = Postgres {
            port: free_port(),
            dir,
            data,
            db: "postgres".into(),
            child: None,
        };
        let conf = format!(
            "\n# pgherd test harness\n\
             listen_addresses = '127.0.0.1'\n\
             port = {}\n\
             unix_socket_directories = '{}'\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             max_connections = 200\n\
             shared_buffers = 32MB\n\
             log_min_messages = warning\n\
             logging_collector = off\n\
             max_wal_size = 256MB\n",
            pg.port,
            pg.dir.display()
        );
        pg.append_conf(&conf);
        fs::write(
            pg.data.join("pg_hba.conf"),
            "local all all trust\n\
             host all postgres 127.0.0.1/32 trust\n\
             host all all 127.0.0.1/32 scram-sha-256\n",
        )
        .expect("write pg_hba.conf");
        for attempt in 1.. {
            match pg.launch() {
                Ok(()) => return pg,
                // Someone outside this process took the port in between: another one.
                Err(log) if attempt < 3 && log.contains("could not bind") => {
                    pg.port = free_port();
                    pg.append_conf(&format!("port = {}\n", pg.port));
                }
                Err(log) => panic!("{log}"),
            }
        }
        unreachable!()
    }

    fn append_conf(&self, text: &str) {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .expect("open postgresql.conf");
        f.write_all(text.as_bytes())
            .expect("append to postgresql.conf");
    }

    /// Spawns the postmaster and polls until it accepts connections. Err(message with the log) if it exits first.
    fn launch(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "PostgreSQL is already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open postgres.log");
        let mut cmd = Command::new(bin("postgres"));
        cmd.arg("-D")
            .arg(&self.data)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log);
        clean_pg_env(&mut cmd);
        run_as_pg(&mut cmd);
        let child =
            spawn_tied(cmd).unwrap_or_else(|e| panic!("spawn {}: {e}", bin("postgres").display()));
        let pid = child.id();
        self.child = Some(child);
        let end = Instant::now() + PG_READY;
        loop {
            let child = self.child.as_mut().unwrap();
            if let Some(status) = child.try_wait().expect("waitpid") {
                self.child = None;
                return Err(format!(
                    "postgres (port {}) exited with {status} while starting; log:\n{}",
                    self.port,
                    tail(&self.log(), 50)
                ));
            }
            if self.ready(pid) {
                return Ok(());
            }
            if Instant::now() >= end {
                let log = self.log();
                self.stop();
                return Err(format!(
                    "postgres (port {}) not ready after {PG_READY:?}; log:\n{}",
                    self.port,
                    tail(&log, 50)
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// postmaster.pid names this postmaster and says "ready", and the TCP port answers.
    fn ready(&self, pid: u32) -> bool {
        let Ok(text) = fs::read_to_string(self.data.join("postmaster.pid")) else {
            return false;
        };
        let lines: Vec<&str> = text.lines().collect();
        lines.len() >= 8
            && lines[0].trim() == pid.to_string()
            && lines[7].trim() == "ready"
            && TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], self.port)),
                Duration::from_secs(1),
            )
            .is_ok()
    }

    /// Fast shutdown: SIGINT, poll for the exit (10 s), then SIGKILL; reaps. Does nothing if stopped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, libc::SIGINT, PG_STOP);
        }
    }

    /// Starts the stopped cluster again, same directory and port, and polls until it accepts connections.
    pub fn start_again(&mut self) {
        if let Err(log) = self.launch() {
            panic!("{log}");
        }
    }

    /// The postmaster's pid, None while stopped.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// A clonable, Send handle for querying this cluster from other threads.
    pub fn handle(&self) -> PgHandle {
        PgHandle {
            port: self.port,
            socket_dir: self.dir.clone(),
            db: self.db.clone(),
        }
    }

    /// See [`PgHandle::sql`]: runs in database `self.db` as superuser, returns trimmed stdout.
    pub fn sql(&self, sql: &str) -> String {
        self.handle().sql(sql)
    }

    /// See [`PgHandle::sql_in`].
    pub fn sql_in(&self, db: &str, sql: &str) -> String {
        self.handle().sql_in(db, sql)
    }

    /// `CREATE ROLE name LOGIN PASSWORD 'password'` (stored as SCRAM-SHA-256, the default password_encryption).
    pub fn create_user(&self, name: &str, password: &str) {
        self.sql_in(
            "postgres",
            &format!(
                "CREATE ROLE {} LOGIN PASSWORD {}",
                quote_ident(name),
                quote_literal(password)
            ),
        );
    }

    /// `CREATE DATABASE name OWNER owner`.
    pub fn create_database(&self, name: &str, owner: &str) {
        self.sql_in(
            "postgres",
            &format!(
                "CREATE DATABASE {} OWNER {}",
                quote_ident(name),
                quote_ident(owner)
            ),
        );
    }

    /// See [`PgHandle::backend_count`].
    pub fn backend_count(&self, user: &str) -> usize {
        self.handle().backend_count(user)
    }

    /// `pgbench -i -s <scale>` as `user` in database `self.db`, over the Unix socket.
    pub fn pgbench_init(&self, user: &str, scale: u32) {
        let mut cmd = Command::new(bin("pgbench"));
        clean_pg_env(&mut cmd);
        cmd.arg("-h")
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-U", user, "-i", "-q", "-s"])
            .arg(scale.to_string())
            .arg(&self.db)
            .stdin(Stdio::null());
        let out = cmd.output().expect("run pgbench");
        assert!(out.status.success(), "pgbench -i: {}", describe(&out));
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "--- PostgreSQL log, port {} (last 40 lines) ---\n{}\n---",
                self.port,
                tail(&self.log(), 40)
            );
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// pgherd
// ---------------------------------------------------------------------------------------------------------------

/// A pgherd process on its own port. Dropping it SIGTERMs it (SIGKILL after 5 s), reaps it and removes `dir`.
#[derive(Debug)]
pub struct Pgherd {
    pub port: u16,
    pub config_path: PathBuf,
    /// Temp dir with the config file and `pgherd.log` (stdout and stderr).
    pub dir: PathBuf,
    child: Child,
    status: Option<ExitStatus>,
}

impl Pgherd {
    /// Starts the crate's `pgherd` binary. `config_body` is TOML without `listen`: the harness picks a free port
    /// and puts `listen = ["127.0.0.1:<port>"]` first. Polls (20 s) until the port accepts TCP connections;
    /// panics with the log if pgherd exits first.
    pub fn start(config_body: &str) -> Pgherd {
        Self::start_program(Path::new(env!("CARGO_BIN_EXE_pgherd")), config_body)
    }

    /// Like `start`, with another program that takes `--config FILE`.
    pub fn start_program(program: &Path, config_body: &str) -> Pgherd {
        let dir = temp_dir("herd");
        let config_path = dir.join("pgherd.toml");
        for attempt in 1.. {
            let port = free_port();
            fs::write(&config_path, Self::config_text(port, config_body)).expect("write config");
            let log = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("pgherd.log"))
                .expect("open pgherd.log");
            let mut cmd = Command::new(program);
            cmd.arg("--config")
                .arg(&config_path)
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup log fd"))
                .stderr(log);
            let child =
                spawn_tied(cmd).unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
            let mut herd = Pgherd {
                port,
                config_path: config_path.clone(),
                dir: dir.clone(),
                child,
                status: None,
            };
            let end = Instant::now() + HERD_READY;
            loop {
                if let Some(status) = herd.child.try_wait().expect("waitpid") {
                    herd.status = Some(status);
                    let log = herd.log();
                    if attempt < 3 && log.contains("Address already in use") {
                        std::mem::forget(herd); // keep dir; nothing to stop
                        fs::write(dir.join("pgherd.log"), "").ok();
                        break;
                    }
                    panic!("pgherd exited with {status} while starting; log:\n{log}");
                }
                if TcpStream::connect_timeout(
                    &SocketAddr::from(([127, 0, 0, 1], port)),
                    Duration::from_secs(1),
                )
                .is_ok()
                {
                    return herd;
                }
                if Instant::now() >= end {
                    panic!(
                        "pgherd did not accept on port {port} within {HERD_READY:?}; log:\n{}",
                        herd.log()
                    );
                }
                std::thread::sleep(POLL);
            }
        }
        unreachable!()
    }

    fn config_text(port: u16, body: &str) -> String {
        format!("listen = [\"127.0.0.1:{port}\"]\n{body}")
    }

    /// Stops this pgherd and starts a new one, on a new port, with its configuration (less the listen line)
    /// changed by `edit`.
    pub fn restarted_with(self, edit: impl FnOnce(String) -> String) -> Pgherd {
        let config = fs::read_to_string(&self.config_path).expect("read the config");
        drop(self);
        let body: Vec<&str> = config
            .lines()
            .filter(|l| !l.starts_with("listen"))
            .collect();
        Pgherd::start(&edit(body.join("\n")))
    }

    /// Replaces the config file with `config_body`, keeping the listen line (e.g. before a SIGHUP).
    pub fn rewrite_config(&self, config_body: &str) {
        fs::write(&self.config_path, Self::config_text(self.port, config_body))
            .expect("write config");
    }

    /// stdout and stderr of pgherd so far.
    pub fn log(&self) -> String {
        fs::read(self.dir.join("pgherd.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Polls (every 20 ms) until the log contains `needle`; panics with the log after `deadline`.
    pub fn wait_for_log(&self, needle: &str, deadline: Duration) {
        let end = Instant::now() + deadline;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return;
            }
            if Instant::now() >= end {
                panic!("pgherd log has no {needle:?} after {deadline:?}; log:\n{log}");
            }
            std::thread::sleep(POLL);
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends signal `sig` (libc::SIGHUP, libc::SIGTERM, ...). Does nothing once the process has been reaped.
    pub fn signal(&self, sig: i32) {
        if self.status.is_none() {
            // SAFETY: not reaped yet, so the pid is still ours.
            unsafe { libc::kill(self.pid(), sig) };
        }
    }

    /// Polls until pgherd exits or `deadline` passes. Some(exit code), 128 + signal number if a signal ended it;
    /// None if it still runs.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<i32> {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.status {
                return Some(exit_code(status));
            }
            if let Some(status) = self.child.try_wait().expect("waitpid") {
                self.status = Some(status);
                continue;
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Pgherd {
    fn drop(&mut self) {
        if self.status.is_none() {
            self.status = Some(stop_child(&mut self.child, libc::SIGTERM, HERD_STOP));
        }
        if std::thread::panicking() {
            eprintln!(
                "--- pgherd log, port {} (last 200 lines) ---\n{}\n---",
                self.port,
                tail(&self.log(), 200)
            );
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------------------------

/// psql over TCP to 127.0.0.1:port with PGPASSWORD, `-X -A -t -q` then `args`. Output as is (check status).
pub fn psql(port: u16, user: &str, password: &str, db: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin("psql"));
    clean_pg_env(&mut cmd);
    cmd.env("PGPASSWORD", password)
        .args(["-X", "-A", "-t", "-q", "-h", "127.0.0.1"])
        .args(["-p", &port.to_string(), "-U", user, "-d", db])
        .args(args)
        .stdin(Stdio::null());
    cmd.output().expect("run psql")
}

/// pgbench over TCP to 127.0.0.1:port with PGPASSWORD: `pgbench -h 127.0.0.1 -p port -U user <args> <db>`.
pub fn pgbench(port: u16, user: &str, password: &str, db: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin("pgbench"));
    clean_pg_env(&mut cmd);
    cmd.env("PGPASSWORD", password)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", user])
        .args(args)
        .arg(db)
        .stdin(Stdio::null());
    cmd.output().expect("run pgbench")
}

/// Runs [`pgbench`] and fails the test unless it exits 0 with no failed transaction, as every run here must.
pub fn pgbench_without_failures(port: u16, user: &str, password: &str, db: &str, args: &[&str]) {
    let out = pgbench(port, user, password, db, args);
    let text = String::from_utf8_lossy(&out.stdout);
    let run = args.join(" ");
    assert!(out.status.success(), "pgbench {run}: {}", describe(&out));
    assert!(
        text.contains("number of failed transactions: 0 "),
        "pgbench {run}: {text}"
    );
}

/// tokio-postgres over TCP to 127.0.0.1:port, no TLS; the connection task is spawned on the current runtime.
pub async fn try_connect(
    port: u16,
    user: &str,
    password: &str,
    db: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .password(password)
        .dbname(db)
        .connect_timeout(Duration::from_secs(10));
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// `try_connect`, panicking with the error.
pub async fn connect(port: u16, user: &str, password: &str, db: &str) -> tokio_postgres::Client {
    match try_connect(port, user, password, db).await {
        Ok(client) => client,
        Err(e) => panic!("connect to 127.0.0.1:{port} as {user} to {db}: {e} ({e:?})"),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The usual setup: a cluster with user app/secret owning database app, and pgherd in front of it
// ---------------------------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct Fixture {
    /// Its `db` is "app", so `pg.sql` and `pg.pgbench_init` work in the database the clients use.
    pub pg: Postgres,
    pub herd: Pgherd,
}

/// PostgreSQL with user `app` (password `secret`, SCRAM) owning database `app` and user `legacy` (password
/// `secret`), and pgherd with `pool_mode = <mode>`, the `extra` top-level keys (e.g. "workers = 2"), database
/// `app` with `pool_size = <pool_size>`, user `app` (default auth_type) and user `legacy` (`auth_type = "md5"`).
pub fn fixture(mode: &str, pool_size: u32, extra: &str) -> Fixture {
    let mut pg = Postgres::start();
    pg.create_user("app", "secret");
    pg.create_database("app", "app");
    pg.create_user("legacy", "secret");
    pg.db = "app".into();
    let herd = Pgherd::start(&format!(
        "pool_mode = \"{mode}\"\n{extra}\n\n\
         [databases.app]\n\
         host = \"127.0.0.1\"\n\
         port = {}\n\
         pool_size = {pool_size}\n\n\
         [users.app]\n\
         password = \"secret\"\n\n\
         [users.legacy]\n\
         password = \"secret\"\n\
         auth_type = \"md5\"\n",
        pg.port
    ));
    Fixture { pg, herd }
}

/// Column 0 of the one row `sql` returns: many tests read just one value, and a failure names the SQL.
pub async fn value<T: tokio_postgres::types::FromSqlOwned>(
    c: &tokio_postgres::Client,
    sql: &str,
) -> T {
    c.query_typed_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .get(0)
}

/// The PostgreSQL backend a client's next transaction runs on.
pub async fn backend_pid(c: &tokio_postgres::Client) -> i32 {
    value(c, "SELECT pg_backend_pid()").await
}

// ---------------------------------------------------------------------------------------------------------------
// Raw protocol bytes, for what drivers do not let a test choose
// ---------------------------------------------------------------------------------------------------------------

/// A StartupMessage: protocol `version` (`3 << 16` for 3.0), then the key/value pairs.
pub fn startup_packet(version: u32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend(body);
    packet
}

/// A frontend message: tag, length, and the parts of its body.
pub fn message(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len()).sum::<usize>() + 4;
    let mut out = Vec::with_capacity(1 + len);
    out.push(tag);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    for part in parts {
        out.extend_from_slice(part);
    }
    out
}

/// Reads one backend message: (tag, body).
pub fn read_message(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).expect("read a message header");
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0; len.saturating_sub(4)];
    stream.read_exact(&mut body).expect("read a message body");
    (head[0], body)
}

/// Ends backend `pid` from PostgreSQL's side and polls until it is gone, so a client's next transaction needs
/// another server.
pub fn terminate_backend(pg: &Postgres, pid: i32) {
    pg.sql(&format!("SELECT pg_terminate_backend({pid})"));
    wait_until(Duration::from_secs(10), "the backend is gone", || {
        pg.sql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"
        )) == "0"
    });
}
