//! Login and idle-client generator: N clients complete a full PostgreSQL login through a pooler (whatever
//! authentication the pooler asks for: trust, md5 or SCRAM), from several loopback source addresses, with a
//! bounded number of handshakes in flight; they stay idle, a sample of them must still answer, then all close.
//!
//!     logins --port P --pid POOLER_PID --clients N [--user bench] [--password bench] [--db bench]
//!            [--sources 8] [--in-flight 64] [--settle 3] [--idle-secs 0]
//!
//! Prints one line of key=value figures for benches/compare.py: logins per second, handshake p50/p99, the
//! pooler's CPU per login, its resident memory per idle client (growth over N, measured after its server pool
//! was warmed and `--settle` seconds after the last login), and its CPU while everyone sat idle for
//! `--idle-secs`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;

/// How long any one login or sample query may take before it counts as failed.
const PATIENCE: Duration = Duration::from_secs(30);

struct Args {
    port: u16,
    pid: u32,
    clients: usize,
    user: String,
    password: String,
    db: String,
    sources: u8,
    in_flight: usize,
    settle: f64,
    idle_secs: f64,
}

impl Args {
    fn parse() -> Args {
        let mut args = Args {
            port: 0,
            pid: 0,
            clients: 1000,
            user: "bench".into(),
            password: "bench".into(),
            db: "bench".into(),
            sources: 8,
            in_flight: 64,
            settle: 3.0,
            idle_secs: 0.0,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
            match flag.as_str() {
                "--port" => args.port = number(&flag, &value),
                "--pid" => args.pid = number(&flag, &value),
                "--clients" => args.clients = number(&flag, &value),
                "--user" => args.user = value,
                "--password" => args.password = value,
                "--db" => args.db = value,
                "--sources" => args.sources = number(&flag, &value),
                "--in-flight" => args.in_flight = number(&flag, &value),
                "--settle" => args.settle = number(&flag, &value),
                "--idle-secs" => args.idle_secs = number(&flag, &value),
                _ => panic!("unknown flag {flag}"),
            }
        }
        assert!(
            args.port != 0 && args.pid != 0,
            "--port and --pid are required"
        );
        assert!((1..=250).contains(&args.sources), "--sources is 1..=250");
        args
    }
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> T {
    value
        .parse()
        .unwrap_or_else(|_| panic!("bad value for {flag}: {value}"))
}

/// The pooler's user + system CPU so far (all threads).
fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the pooler is running");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_micros(ticks * 1_000_000 / per_sec)
}

fn rss(pid: u32) -> u64 {
    let statm =
        std::fs::read_to_string(format!("/proc/{pid}/statm")).expect("the pooler is running");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

/// Uses the hard file-descriptor limit: one per client.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

/// A connection from 127.0.0.`2 + i % sources`: the kernel picks the port at connect, per source address,
/// so N clients are not limited to one address's ephemeral ports.
async fn connect_from(i: usize, args: &Args) -> std::io::Result<tokio::net::TcpStream> {
    let socket = TcpSocket::new_v4()?;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on an open socket with a pointer to a local int and its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            std::ptr::addr_of!(on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let source = Ipv4Addr::new(127, 0, 0, 2 + (i % args.sources as usize) as u8);
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    let target = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), args.port);
    socket.connect(target).await
}

async fn login(
    i: usize,
    args: &Args,
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, String> {
    let stream = connect_from(i, args).await.map_err(|e| e.to_string())?;
    let (client, connection) = config
        .connect_raw(stream, tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(client)
}

/// Fills the pooler's server pool, so that what the idle clients add is measured without it.
async fn warm_pool(args: &Args, config: &tokio_postgres::Config) {
    let mut warmers = Vec::new();
    for i in 0..20 {
        let client = login(i, args, config).await.expect("a warm-up login");
        warmers.push(tokio::spawn(async move {
            client
                .simple_query("SELECT pg_sleep(0.2)")
                .await
                .expect("a warm-up query");
        }));
    }
    for w in warmers {
        w.await.unwrap();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Arc::new(Args::parse());
    raise_fd_limit();
    let mut config = tokio_postgres::Config::new();
    config
        .user(&args.user)
        .password(&args.password)
        .dbname(&args.db);
    let config = Arc::new(config);

    warm_pool(&args, &config).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss_before, cpu_before) = (rss(args.pid), cpu(args.pid));

    let gate = Arc::new(Semaphore::new(args.in_flight));
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.clients)
        .map(|i| {
            let (gate, args, config) = (gate.clone(), args.clone(), config.clone());
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await.unwrap();
                let t = Instant::now();
                match tokio::time::timeout(PATIENCE, login(i, &args, &config)).await {
                    Ok(Ok(client)) => Ok((client, t.elapsed())),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err("login timed out".into()),
                }
            })
        })
        .collect();
    let mut clients = Vec::with_capacity(args.clients);
    let mut handshakes = Histogram::<u64>::new(3).unwrap();
    let mut errors = 0;
    let mut first_error = None;
    for task in tasks {
        match task.await.unwrap() {
            Ok((client, took)) => {
                handshakes.record(took.as_micros() as u64).unwrap();
                clients.push(client);
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let login_secs = started.elapsed().as_secs_f64();
    let login_cpu = cpu(args.pid) - cpu_before;

    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let rss_idle = rss(args.pid);
    let idle_cpu = if args.idle_secs > 0.0 {
        let before = cpu(args.pid);
        tokio::time::sleep(Duration::from_secs_f64(args.idle_secs)).await;
        cpu(args.pid) - before
    } else {
        Duration::ZERO
    };

    let mut sample_failures = 0;
    for client in clients.iter().step_by((clients.len() / 50).max(1)) {
        let answered = tokio::time::timeout(PATIENCE, client.simple_query("SELECT 1")).await;
        if !matches!(answered, Ok(Ok(_))) {
            sample_failures += 1;
        }
    }
    drop(clients);

    let ok = handshakes.len().max(1) as f64;
    println!(
        "clients={} errors={errors} logins_per_s={:.0} p50_ms={:.2} p99_ms={:.2} cpu_us_per_login={:.1} \
         bytes_per_client={:.0} idle_cpu_ms={} sample_failures={sample_failures}",
        args.clients,
        ok / login_secs,
        handshakes.value_at_quantile(0.5) as f64 / 1000.0,
        handshakes.value_at_quantile(0.99) as f64 / 1000.0,
        login_cpu.as_micros() as f64 / ok,
        (rss_idle as f64 - rss_before as f64) / ok,
        idle_cpu.as_millis(),
    );
    if let Some(e) = first_error {
        eprintln!("first login error: {e}");
    }
}
