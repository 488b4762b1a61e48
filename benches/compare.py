#!/usr/bin/env python3
"""Runs pgbench through pgherd and PgBouncer side by side and reports CPU per transaction.

One command, a throwaway everything: a PostgreSQL 15 cluster (fsync off), PgBouncer and pgherd with the same
settings (transaction pooling, pool of 20, SCRAM), then for each pooler and protocol mode a warm-up that is not
recorded and a measured pgbench run. CPU comes from /proc (utime + stime of every thread), the method in
BENCHMARKING.md: ratios between poolers in one run are the figures that mean something on a noisy machine.

    python3 benches/compare.py [--seconds 20] [--clients 100] [--modes simple,extended,prepared]
        [--workloads select-only,tpcb-like] [--out FILE]

Workloads are the scripts in pgbench-scripts/ (select-only, tpcb-like, pipeline, connection-storm, mixed).

A pooler whose pgbench run fails (PgBouncer 1.18 cannot serve -M prepared in transaction mode) gets a row
saying why instead of figures.

Then logins and idle clients (benches/logins.rs): logins/s, handshake p50/p99, pooler CPU per login and
pooler memory per idle client for SCRAM and md5 at --logins N (default 1000,10000,19000), and pooler CPU
while the largest SCRAM crowd sits idle for --idle-secs; then a storm of --storm md5 clients (default 19000)
that all connect at once. With --syscalls, each pooler's system calls per select-only transaction and per
login, counted by strace in separate runs; with --profile, where its CPU per select-only transaction goes, sampled by perf.
Every process it starts is stopped by pid on exit, also on failure.
"""

import argparse
import atexit
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
CHILDREN = []


def stop_all():
    for proc in reversed(CHILDREN):
        if proc.poll() is None:
            stop(proc)


atexit.register(stop_all)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))


def stop(proc):
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres():
    """PostgreSQL refuses to run as root."""
    if os.geteuid() != 0:
        return {}
    import pwd
    pw = pwd.getpwnam("postgres")
    return {"user": pw.pw_uid, "group": pw.pw_gid}


def spawn(args, log, **kw):
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, **kw)
    CHILDREN.append(proc)
    return proc


def wait_port(port, proc, what):
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited early")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not start listening on {port}")


def stat_fields(pid):
    """The fields of /proc/PID/stat after the command name (state first)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def cpu_ticks(pid, fields=None):
    """utime + stime of a whole process (all threads), in clock ticks."""
    fields = fields or stat_fields(pid)
    return int(fields[11]) + int(fields[12])


def postgres_ticks(postmaster):
    total = cpu_ticks(postmaster)
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                fields = stat_fields(pid)
                if int(fields[1]) == postmaster:
                    total += cpu_ticks(pid, fields)
            except OSError:
                pass
    return total


def host_busy_ticks():
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    return sum(cpu) - cpu[3] - cpu[4], sum(cpu)


def rss_bytes(pid):
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


class Cluster:
    def __init__(self, work):
        self.dir = os.path.join(work, "pg")
        self.port = free_port()
        os.makedirs(self.dir)
        creds = as_postgres()
        if creds:
            os.chown(work, creds["user"], creds["group"])
            os.chown(self.dir, creds["user"], creds["group"])
        subprocess.run([f"{PG_BIN}/initdb", "-D", f"{self.dir}/data", "-A", "trust", "-U", "postgres",
                        "-E", "UTF8", "--locale=C"], check=True, stdout=subprocess.DEVNULL, **creds)
        with open(f"{self.dir}/data/postgresql.conf", "a") as f:
            f.write(f"listen_addresses='127.0.0.1'\nport={self.port}\nunix_socket_directories='{self.dir}'\n"
                    "fsync=off\nsynchronous_commit=off\nfull_page_writes=off\nmax_connections=300\n"
                    "shared_buffers=256MB\n")
        with open(f"{self.dir}/data/pg_hba.conf", "w") as f:
            f.write("local all all trust\nhost all postgres 127.0.0.1/32 trust\n"
                    "host all all 127.0.0.1/32 md5\n")
        self.proc = spawn([f"{PG_BIN}/postgres", "-D", f"{self.dir}/data"], open(f"{self.dir}/log", "w"), **creds)
        wait_port(self.port, self.proc, "postgres")
        time.sleep(0.5)

    def sql(self, *commands):
        """Runs each command on its own (VACUUM cannot share a transaction)."""
        args = [f"{PG_BIN}/psql", "-X", "-A", "-t", "-q", "-h", self.dir, "-p", str(self.port), "-U", "postgres",
                "-d", "bench"]
        for c in commands:
            args += ["-c", c]
        return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()


def start_pgbouncer(work, pg, pool_size):
    port = free_port()
    conf = os.path.join(work, "pgbouncer.ini")
    # The stored SCRAM verifier, as pgherd is given in effect (it derives one at start): neither pays a PBKDF2
    # per login, and PgBouncer logs in to PostgreSQL with the client's proof.
    # bench_md5 has an md5 hash, which PgBouncer's auth_type md5 checks with md5 (and bench's SCRAM with SCRAM).
    with open(os.path.join(work, "userlist.txt"), "w") as f:
        for user in ("bench", "bench_md5"):
            stored = pg.sql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{user}'")
            f.write(f'"{user}" "{stored}"\n')
    with open(conf, "w") as f:
        f.write(f"""[databases]
bench = host=127.0.0.1 port={pg.port} dbname=bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = md5
auth_file = {work}/userlist.txt
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 100000
; pgherd's default backlog, so a connection storm meets the same accept queue
listen_backlog = 4096
logfile = {work}/pgbouncer.log
; pgherd at log_level warn writes nothing per client; PgBouncer by default writes a line at each login and logout
log_connections = 0
log_disconnections = 0
""")
    creds = as_postgres()
    if creds:
        for name in ("pgbouncer.ini", "userlist.txt"):
            os.chown(os.path.join(work, name), creds["user"], creds["group"])
    proc = spawn(["pgbouncer", conf], open(os.path.join(work, "pgbouncer.out"), "w"), **creds)
    wait_port(port, proc, "pgbouncer")
    return proc, port


def start_pgherd(work, pg, pool_size, workers):
    port = free_port()
    conf = os.path.join(work, f"pgherd-{workers}.toml")
    with open(conf, "w") as f:
        f.write(f"""listen = ["127.0.0.1:{port}"]
workers = {workers}
max_client_conn = 19500
pool_mode = "transaction"
auth_type = "scram-sha-256"
log_level = "warn"
[databases.bench]
port = {pg.port}
pool_size = {pool_size}
[users.bench]
password = "bench"
[users.bench_md5]
password = "bench"
auth_type = "md5"
""")
    proc = spawn([os.path.join(ROOT, "target/release/pgherd"), "--config", conf],
                 open(os.path.join(work, f"pgherd-{workers}.log"), "w"))
    wait_port(port, proc, "pgherd")
    return proc, port


SCRIPTS = os.path.join(ROOT, "pgbench-scripts")

# Workload name -> pgbench arguments (the scripts' header comments give the same flags), and the protocol modes
# it can run in.
WORKLOADS = {
    "select-only": (["-f", f"{SCRIPTS}/select-only.sql"], ("simple", "extended", "prepared")),
    "tpcb-like": (["-f", f"{SCRIPTS}/tpcb-like.sql"], ("simple", "extended", "prepared")),
    "pipeline": (["-f", f"{SCRIPTS}/pipeline.sql"], ("extended", "prepared")),
    "connection-storm": (["-C", "-f", f"{SCRIPTS}/connection-storm.sql"], ("simple",)),
    "mixed": (["-f", f"{SCRIPTS}/mixed-short.sql@9", "-f", f"{SCRIPTS}/mixed-long.sql@1"], ("simple", "extended")),
}


def pgbench(port, args, seconds, log_prefix=None):
    env = dict(os.environ, PGPASSWORD="bench")
    cmd = [f"{PG_BIN}/pgbench", "-n", "-h", "127.0.0.1", "-p", str(port), "-U", "bench", "-T", str(seconds)] + args
    if log_prefix:
        cmd += ["-l", f"--log-prefix={log_prefix}"]
    return subprocess.Popen(cmd + ["bench"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


# pgbench's count of what it ran.
TRANSACTIONS = r"number of transactions actually processed: (\d+)"


def select_only(mode, clients):
    """pgbench arguments of the select-only workload with 2 threads."""
    return WORKLOADS["select-only"][0] + ["-M", mode, "-c", str(clients), "-j", "2"]


def p99_ms(log_prefix):
    """The 99th percentile of the transaction latencies pgbench logged (third field, µs), in ms."""
    latencies = []
    for path in glob.glob(log_prefix + ".*"):
        with open(path) as f:
            latencies += [int(line.split()[2]) for line in f if line.strip()]
        os.remove(path)
    latencies.sort()
    return latencies[int(len(latencies) * 0.99)] / 1000 if latencies else float("nan")


def measure(pg, pooler_pid, port, args, seconds, work):
    pg.sql("VACUUM pgbench_accounts", "VACUUM pgbench_history", "CHECKPOINT")
    warm = pgbench(port, args, 5)
    warm.communicate()
    p0, g0, (b0, t0) = cpu_ticks(pooler_pid), postgres_ticks(pg.proc.pid), host_busy_ticks()
    log_prefix = os.path.join(work, "pgbench-log")
    run = pgbench(port, args, seconds, log_prefix)
    # pgbench's own CPU: read its /proc entry just before it exits, by polling.
    bench_ticks = 0
    deadline = time.monotonic() + seconds + 60
    while run.poll() is None:
        if time.monotonic() > deadline:
            # A pooler that loses a client's reply leaves pgbench waiting past -T: report it, do not hang.
            run.kill()
            run.communicate()
            return {"error": f"pgbench still waiting {seconds + 60} s after start (a client never got its reply)"}
        try:
            bench_ticks = cpu_ticks(run.pid)
        except OSError:
            pass
        time.sleep(0.2)
    out, err = run.communicate()
    p1, g1, (b1, t1) = cpu_ticks(pooler_pid), postgres_ticks(pg.proc.pid), host_busy_ticks()
    if run.returncode != 0:
        # E.g. PgBouncer 1.18 in transaction mode with -M prepared: "prepared statement ... does not exist".
        first_error = next((l for l in err.splitlines() if "ERROR" in l or "error" in l), err.strip()[:200])
        return {"error": first_error.strip()}
    found = [re.search(p, out) for p in (TRANSACTIONS,
                                          r"latency average = ([\d.]+) ms", r"tps = ([\d.]+)")]
    if not all(found):
        return {"error": "pgbench reported no figures: " + ((err + out).strip().splitlines() or ["(nothing)"])[-1][:200]}
    txs, lat, tps = int(found[0].group(1)), float(found[1].group(1)), float(found[2].group(1))
    failed = re.search(r"number of failed transactions: (\d+)", out)
    us = lambda ticks: ticks / CLK_TCK * 1e6 / max(txs, 1)
    pooler, postgres, bench = p1 - p0, g1 - g0, bench_ticks
    busy_ticks = b1 - b0
    other = max(busy_ticks - pooler - postgres - bench, 0) / max(t1 - t0, 1) * 100 * os.cpu_count()
    return {"tps": tps, "lat": lat, "p99": p99_ms(log_prefix), "failed": int(failed.group(1)) if failed else -1,
            "pooler": us(pooler), "postgres": us(postgres), "pgbench": us(bench), "other": other,
            "rss": rss_bytes(pooler_pid)}


def watched(tool, attached, run):
    """`run()` while `tool` (a command that stops on SIGINT) watches the pooler; `attached()` says when it has
    started watching. Returns what `run()` returns."""
    watcher = subprocess.Popen(tool, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    CHILDREN.append(watcher)
    # Counting before the tool has attached would miss part of the run.
    deadline = time.monotonic() + 10
    while watcher.poll() is None and not attached() and time.monotonic() < deadline:
        time.sleep(0.05)
    result = run()
    watcher.send_signal(signal.SIGINT)
    watcher.wait(120)
    return result


def transactions(port, args, seconds):
    """Runs pgbench; its transaction count, or None when it failed."""
    run = pgbench(port, args, seconds)
    stdout, _ = run.communicate()
    txs = re.search(TRANSACTIONS, stdout)
    return int(txs.group(1)) if run.returncode == 0 and txs else None


def syscalls_per(pooler_pid, work, run):
    """System calls the pooler makes per unit of `run()` (which returns how many units it ran, or None), counted
    by `strace -c -f`, which slows it down: these runs give counts, never speed."""
    out = os.path.join(work, "strace.txt")
    # strace writes its table to `out` only when it stops; it is attached once the pooler's threads show in /proc
    # as traced (TracerPid).
    traced = lambda: all(tracer_of(pooler_pid, tid) for tid in os.listdir(f"/proc/{pooler_pid}/task"))
    n = watched(["strace", "-c", "-f", "-p", str(pooler_pid), "-o", out], traced, run)
    calls = {}
    with open(out) as f:
        for line in f:
            fields = line.split()
            # Rows: % time, seconds, usecs/call, calls, [errors,] syscall.
            if len(fields) >= 5 and fields[3].isdigit() and fields[-1] != "total":
                calls[fields[-1]] = int(fields[3])
    os.remove(out)
    if not n or not calls:
        return None
    return {name: count / n for name, count in calls.items()}


def tracer_of(pid, tid):
    try:
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            return int(re.search(r"TracerPid:\s+(\d+)", f.read()).group(1))
    except OSError:
        return 0


# Where a pooler's CPU goes, as kernel functions perf samples inside: moving the bytes (the two system calls
# every pooler makes per message) and the rest.
PROFILE_PARTS = (("sendto", "__sys_sendto"), ("recvfrom", "__sys_recvfrom"))


def profile_per_tx(pooler_pid, port, args, seconds, work):
    """The pooler's CPU per transaction split by `perf record -e cpu-clock -g`: in sendto (on loopback this
    includes the receiving side's TCP work and wake-up), in recvfrom, elsewhere in the kernel, in user space.
    µs come from /proc over the same run; perf gives the shares."""
    out = os.path.join(work, "perf.data")
    tool = ["perf", "record", "-q", "-e", "cpu-clock", "-g", "-p", str(pooler_pid), "-o", out]
    t0 = cpu_ticks(pooler_pid)
    n = watched(tool, lambda: os.path.exists(out) and os.path.getsize(out) > 0,
                lambda: transactions(port, args, seconds))
    t1 = cpu_ticks(pooler_pid)
    report = lambda *how: subprocess.run(["perf", "report", "-i", out, "--stdio", "-g", "none", *how],
                                         capture_output=True, text=True).stdout
    callers = report("--children", "--sort", "sym")
    by_dso = report("--no-children", "--sort", "dso")
    os.remove(out)
    if not n:
        return None
    us = (t1 - t0) / CLK_TCK * 1e6 / n
    share = {}
    for part, symbol in PROFILE_PARTS:
        found = re.search(r"^\s*([\d.]+)%\s+[\d.]+%\s+\[k\] " + symbol + "$", callers, re.M)
        share[part] = float(found.group(1)) / 100 if found else 0.0
    kernel = re.search(r"^\s*([\d.]+)%\s+\[kernel\.kallsyms\]", by_dso, re.M)
    kernel = float(kernel.group(1)) / 100 if kernel else 0.0
    parts = {part: us * share[part] for part, _ in PROFILE_PARTS}
    parts["other kernel"] = us * max(kernel - sum(share.values()), 0.0)
    parts["user space"] = us * (1 - kernel)
    return {"total": us, **parts}


# Handshakes in flight in the login runs; the storm run has every client connect at once.
LOGINS_IN_FLIGHT = 64

# The database users of each login kind: bench's password is stored for SCRAM, bench_md5's as an md5 hash.
LOGIN_USERS = {"scram": "bench", "md5": "bench_md5"}
# Logins counted under strace with --syscalls.
SYSCALL_LOGINS = 2000

LOGIN_FIELDS = ("errors", "logins_per_s", "p50_ms", "p99_ms", "cpu_us_per_login", "bytes_per_client",
                "idle_cpu_ms", "sample_failures")


def logins(port, pooler_pid, user, n, idle_secs, in_flight):
    """N clients log in through the pooler as `user`, `in_flight` at a time, and stay idle; the generator's
    figures."""
    gen = subprocess.run([os.path.join(ROOT, "target/release/examples/logins"), "--port", str(port),
                          "--pid", str(pooler_pid), "--clients", str(n), "--user", user, "--password", "bench",
                          "--idle-secs", str(idle_secs), "--in-flight", str(in_flight)],
                         capture_output=True, text=True, timeout=900)
    found = dict(re.findall(r"(\w+)=(-?[\d.]+)", gen.stdout))
    if gen.returncode != 0 or not all(k in found for k in LOGIN_FIELDS):
        sys.exit(f"login generator failed: {gen.stdout}{gen.stderr}")
    return {k: float(found[k]) for k in LOGIN_FIELDS}


def markdown_table(intro, columns, rows):
    """Report lines: a blank line, `intro`, a blank line and a table. `columns` are (title, "<" or ">" for
    alignment); a row with fewer cells than columns (a failed run, its reason last) is padded with empty ones."""
    lines = ["", intro, "", "| " + " | ".join(title for title, _ in columns) + " |",
             "|" + "|".join("---" if align == "<" else "---:" for _, align in columns) + "|"]
    for cells in rows:
        cells = [str(c) for c in cells] + [""] * (len(columns) - len(cells))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--modes", default="simple,extended,prepared")
    ap.add_argument("--workloads", default="select-only,tpcb-like",
                    help=f"comma-separated, of: {', '.join(WORKLOADS)}")
    ap.add_argument("--workers", default="2", help="pgherd worker counts to run, e.g. 2,1")
    ap.add_argument("--pool-size", type=int, default=20)
    ap.add_argument("--many", type=int, default=5000,
                    help="also run select-only with this many clients (-j 2; 0 skips it)")
    ap.add_argument("--logins", default="1000,10000,19000",
                    help="client counts for the login and idle-client runs (empty: none)")
    ap.add_argument("--auth", default="scram,md5", help="login runs with SCRAM-SHA-256 and/or md5")
    ap.add_argument("--storm", type=int, default=19000,
                    help="also this many md5 clients connecting all at once (0 skips it)")
    ap.add_argument("--idle-secs", type=int, default=60,
                    help="pooler CPU is measured while the largest SCRAM run sits idle this long")
    ap.add_argument("--syscalls", action="store_true",
                    help="also count each pooler's system calls per select-only transaction and per login under strace")
    ap.add_argument("--profile", action="store_true",
                    help="also split each pooler's CPU per select-only transaction by where perf samples it")
    ap.add_argument("--out", default=None, help="also write the markdown report here")
    a = ap.parse_args()

    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "pgherd", "--example", "logins"],
                   cwd=ROOT, check=True)
    if not shutil.which("pgbouncer"):
        sys.exit("pgbouncer is not installed: apt-get install -y pgbouncer")
    if a.syscalls and not shutil.which("strace"):
        sys.exit("--syscalls needs strace: apt-get install -y strace")
    if a.profile and not shutil.which("perf"):
        sys.exit("--profile needs perf: apt-get install -y linux-perf")
    work = tempfile.mkdtemp(prefix="pgherd-bench-")
    os.chmod(work, 0o755)
    atexit.register(shutil.rmtree, work, True)
    # One descriptor per client, in the poolers and the generator: use the hard limit.
    import resource
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    pg = Cluster(work)
    subprocess.run([f"{PG_BIN}/psql", "-X", "-q", "-h", pg.dir, "-p", str(pg.port), "-U", "postgres", "-c",
                    "CREATE USER bench PASSWORD 'bench'", "-c", "CREATE DATABASE bench OWNER bench",
                    "-c", "SET password_encryption = 'md5'", "-c", "CREATE USER bench_md5 PASSWORD 'bench'",
                    "-c", "GRANT ALL ON DATABASE bench TO bench_md5"], check=True)
    subprocess.run([f"{PG_BIN}/pgbench", "-i", "-q", "-s", "10", "-h", pg.dir, "-p", str(pg.port), "-U", "bench",
                    "bench"], check=True, capture_output=True)

    starters = [("pgbouncer 1.18", lambda: start_pgbouncer(work, pg, a.pool_size))]
    for w in a.workers.split(","):
        starters.append((f"pgherd ({w} worker{'s' if w != '1' else ''})",
                         lambda w=w: start_pgherd(work, pg, a.pool_size, int(w))))
    poolers = [(name, *start()) for name, start in starters]

    rows = []
    for workload in [w for w in a.workloads.split(",") if w]:
        script_args, modes = WORKLOADS[workload]
        for mode in [m for m in a.modes.split(",") if m in modes]:
            # pgbench prepares each statement synchronously before its first use; inside a transaction that
            # stalls the other clients of its thread while they hold servers, so -M prepared of a multi-statement
            # transaction runs a thread per client.
            threads = a.clients if mode == "prepared" and workload in ("tpcb-like", "mixed") else 2
            cell = f"{workload} {mode}"
            for name, proc, port in poolers:
                args = script_args + ["-M", mode, "-c", str(a.clients), "-j", str(threads)]
                r = measure(pg, proc.pid, port, args, a.seconds, work)
                r["threads"] = threads
                rows.append((cell, name, r))
                if "error" in r:
                    print(f"{cell:22} {name:22} failed: {r['error']}", file=sys.stderr)
                    continue
                print(f"{cell:22} {name:22} tps {r['tps']:9.0f}  pooler {r['pooler']:6.1f} us/tx  "
                      f"other {r['other']:4.1f}%", file=sys.stderr)
    traced = []
    for mode in [m for m in a.modes.split(",") if m] if a.syscalls else []:
        for name, proc, port in poolers:
            per_tx = syscalls_per(proc.pid, work, lambda: transactions(port, select_only(mode, a.clients), 5))
            traced.append((f"select-only {mode}", name, per_tx))
            print(f"syscalls select-only {mode:8} {name:22} "
                  f"{sum(per_tx.values()) if per_tx else float('nan'):.2f}/tx", file=sys.stderr)
    profiled = []
    for mode in [m for m in a.modes.split(",") if m] if a.profile else []:
        for name, proc, port in poolers:
            parts = profile_per_tx(proc.pid, port, select_only(mode, a.clients), a.seconds, work)
            profiled.append((mode, name, parts))
            print(f"profile select-only {mode:8} {name:22} "
                  f"{parts['total'] if parts else float('nan'):.1f} us/tx", file=sys.stderr)
    for auth in [x for x in a.auth.split(",") if x] if a.syscalls else []:
        for name, start in starters:
            proc, port = start()

            def run():
                logins(port, proc.pid, LOGIN_USERS[auth], SYSCALL_LOGINS, 0, LOGINS_IN_FLIGHT)
                return SYSCALL_LOGINS
            per_login = syscalls_per(proc.pid, work, run)
            stop(proc)
            traced.append((f"{auth} login", name, per_login))
            print(f"syscalls {auth} login {name:22} {sum(per_login.values()) if per_login else float('nan'):.2f}",
                  file=sys.stderr)
    counts = [int(n) for n in a.logins.split(",") if n]
    runs = [(auth, n, LOGINS_IN_FLIGHT) for auth in a.auth.split(",") if auth for n in counts]
    if a.storm:
        runs.append(("md5", a.storm, a.storm))
    login_rows = []
    for auth, n, in_flight in runs:
        user = LOGIN_USERS[auth]
        idle_secs = a.idle_secs if auth == "scram" and n == max(counts, default=0) else 0
        for name, start in starters:
            # A fresh pooler per run: memory freed by an earlier crowd would be reused and hide the cost.
            proc, port = start()
            r = logins(port, proc.pid, user, n, idle_secs, in_flight)
            stop(proc)
            login_rows.append((auth, n, in_flight, name, r, idle_secs))
            print(f"logins {auth:5} {n:6} ({in_flight:5} at once) {name:22} {r['logins_per_s']:7.0f}/s  "
                  f"{r['cpu_us_per_login']:6.1f} us/login  {r['bytes_per_client']:5.0f} B/client", file=sys.stderr)

    if a.many:
        cell = f"select-only simple, {a.many} clients"
        for name, proc, port in poolers:
            # Thousands of SCRAM logins come first (pgbench's own PBKDF2 per client) and -T counts them: give the
            # run time after them.
            r = measure(pg, proc.pid, port, select_only("simple", a.many), max(a.seconds, 60), work)
            r["threads"] = 2
            rows.append((cell, name, r))
            said = r["error"] if "error" in r else f"tps {r['tps']:9.0f}  p99 {r['p99']:.1f} ms  failed {r['failed']}"
            print(f"{cell:22} {name:22} {said}", file=sys.stderr)
    matrix = []
    for cell, name, r in rows:
        label = cell + (f" (-j {r['threads']})" if r["threads"] != 2 else "")
        if "error" in r:
            matrix.append([label, name, f"pgbench failed: {r['error']}"])
            continue
        flag = " (busy host)" if r["other"] > 10 else ""
        matrix.append([label, name, f"{r['tps']:.0f}", f"{r['lat']:.2f}", f"{r['p99']:.2f}", r["failed"],
                       f"{r['pooler']:.1f}", f"{r['postgres']:.1f}", f"{r['pgbench']:.1f}", f"{r['other']:.1f}{flag}",
                       f"{r['rss'] / 2**20:.1f}"])
    lines = markdown_table(
        f"pgbench -n -f pgbench-scripts/<workload>.sql -M <mode> -c {a.clients} -j 2 -T {a.seconds} (5 s warm-up "
        f"not recorded; -j {a.clients} where marked), pool_size {a.pool_size}, transaction pooling, PostgreSQL 15 "
        f"scale 10, {os.cpu_count()} CPUs.",
        [("workload, mode", "<"), ("pooler", "<"), ("tps", ">"), ("avg latency ms", ">"), ("p99 latency ms", ">"),
         ("failed", ">"), ("pooler CPU µs/tx", ">"), ("PostgreSQL CPU µs/tx", ">"), ("pgbench CPU µs/tx", ">"),
         ("other CPU %", ">"), ("pooler RSS MiB", ">")], matrix)[1:]
    base = {mode: r["pooler"] for mode, name, r in rows if name.startswith("pgbouncer") and "error" not in r}
    lines.append("")
    for mode, name, r in rows:
        if not name.startswith("pgbouncer") and mode in base and "error" not in r:
            lines.append(f"- {mode}: {name} uses {r['pooler'] / base[mode]:.2f}× PgBouncer's CPU per transaction")
    if traced:
        lines += markdown_table(
            f"System calls under `strace -c -f` (counts only: strace slows every pooler down): per select-only "
            f"transaction, pgbench -c {a.clients} -j 2 -T 5; per login, {SYSCALL_LOGINS} clients through a freshly "
            f"started pooler, {LOGINS_IN_FLIGHT} handshakes in flight, everything the run costs (warm-up, a query on "
            "every fiftieth client, the closes) divided by the logins.",
            [("what", "<"), ("pooler", "<"), ("system calls per transaction or login", ">"),
             ("the most frequent", "<")],
            [[what, name, "the run failed"] if per is None else
             [what, name, f"{sum(per.values()):.2f}",
              ", ".join(f"{call} {n:.2f}" for call, n in sorted(per.items(), key=lambda kv: -kv[1])[:5])]
             for what, name, per in traced])
    if profiled:
        lines += markdown_table(
            f"Where the pooler's CPU per select-only transaction goes: pgbench -c {a.clients} -j 2 -T {a.seconds} "
            "with the pooler under `perf record -e cpu-clock -g` (separate runs); µs per transaction from /proc "
            "over the run, split by perf's shares. On loopback, sendto also does the receiving socket's TCP work "
            "and wakes its reader.",
            [("mode", "<"), ("pooler", "<"), ("µs/tx", ">"), ("in sendto", ">"), ("in recvfrom", ">"),
             ("elsewhere in the kernel", ">"), ("user space", ">")],
            [[mode, name, "pgbench failed"] if parts is None else
             [mode, name] + [f"{parts[k]:.1f}" for k in ("total", "sendto", "recvfrom", "other kernel", "user space")]
             for mode, name, parts in profiled])
    if login_rows:
        lines += markdown_table(
            "Logins and idle clients: benches/logins.rs, N clients from 8 loopback source addresses with at most "
            "the given number of handshakes in flight; bytes per idle client = pooler RSS growth / N, 3 s after the "
            "last login, server pool already warm.",
            [("auth", "<"), ("clients", ">"), ("in flight", ">"), ("pooler", "<"), ("logins/s", ">"),
             ("handshake p50 ms", ">"), ("p99 ms", ">"), ("pooler CPU µs/login", ">"), ("bytes per idle client", ">"),
             ("idle CPU ms (over s)", ">"), ("errors", ">"), ("sample failures", ">")],
            [[auth, n, in_flight, name, f"{r['logins_per_s']:.0f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
              f"{r['cpu_us_per_login']:.1f}", f"{r['bytes_per_client']:.0f}",
              f"{r['idle_cpu_ms']:.0f} ({idle_secs} s)" if idle_secs else "", f"{r['errors']:.0f}",
              f"{r['sample_failures']:.0f}"]
             for auth, n, in_flight, name, r, idle_secs in login_rows])
    report = "\n".join(lines)
    print(report)
    if a.out:
        with open(a.out, "w") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
