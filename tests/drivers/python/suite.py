"""Driver scenarios for psycopg 3, asyncpg and a raw-protocol client (see tests/drivers.rs for the contract).

Each scenario asserts PostgreSQL's own behaviour, so it must pass against PostgreSQL directly (--mode direct)
as well as through pgherd. A scenario returns the distinct backend pids its main client(s) ran on.
"""

import argparse
import asyncio
import sys
import time
import traceback

import asyncpg
import psycopg

import raw

SCENARIO_TIMEOUT = 30


class Target:
    def __init__(self, a):
        self.host, self.port, self.user, self.password, self.dbname = a.host, a.port, a.user, a.password, a.dbname
        # In session mode every connection holds a server of the 3 in the test pool: no holders there.
        self.moves = a.mode != "session"

    def conninfo(self, **extra):
        params = dict(host=self.host, port=self.port, user=self.user, password=self.password,
                      dbname=self.dbname, connect_timeout=10)
        params.update(extra)
        return psycopg.conninfo.make_conninfo(**params)

    def psycopg(self, **extra):
        prepare_threshold = extra.pop("prepare_threshold", 5)
        autocommit = extra.pop("autocommit", False)
        return psycopg.connect(self.conninfo(**extra), prepare_threshold=prepare_threshold, autocommit=autocommit)

    async def asyncpg(self, **extra):
        return await asyncpg.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                                     database=self.dbname, timeout=10, **extra)


class Moves:
    """Moves the client under test to another server after each of its transactions, in transaction mode.
    Two holder connections take turns: the next one begins a transaction, which takes the server the client
    just released (pgherd's pool hands out the server released last), then the previous one commits, which
    frees its own server for the client's next transaction."""

    def __init__(self, target):
        count = 2 if target.moves else 0
        self.holders = [target.psycopg(autocommit=True) for _ in range(count)]
        self.holding = None

    def step(self, round_):
        if not self.holders:
            return
        holder = self.holders[round_ % 2]
        holder.execute("BEGIN")
        pid = holder.execute("SELECT pg_backend_pid()").fetchone()[0]
        # On stderr, which the test shows when a scenario fails.
        print(f"after round {round_}: holder on backend {pid}", file=sys.stderr)
        if self.holding:
            self.holding.execute("COMMIT")
        self.holding = holder

    def close(self):
        for h in self.holders:
            h.close()


def rounds(target, n=12):
    """Yields round numbers; between two rounds the client's server changes (see Moves)."""
    moves = Moves(target)
    try:
        for i in range(n):
            yield i
            moves.step(i)
    finally:
        moves.close()


def check(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


# ----------------------------------------------------------------------------------------------------------
# psycopg 3
# ----------------------------------------------------------------------------------------------------------

def psycopg_prepared(target, threshold):
    pids = set()
    with target.psycopg(prepare_threshold=threshold) as a:
        for i in rounds(target):
            value, pid = a.execute("SELECT %s::int + 1, pg_backend_pid()", (i,)).fetchone()
            a.commit()
            check(value, i + 1, "result")
            pids.add(pid)
        # The statement really is a server-side prepared one (psycopg names it _pg3_N).
        check(a._prepared._names != {}, True, "psycopg prepared the statement")
    return pids


def psycopg_same_names(target, threshold):
    pids = set()
    with target.psycopg(prepare_threshold=threshold) as a, target.psycopg(prepare_threshold=threshold) as b:
        for i in rounds(target):
            x, pa = a.execute("SELECT %s::int * 2, pg_backend_pid()", (i,)).fetchone()
            a.commit()
            y, pb = b.execute("SELECT %s::text || '!', pg_backend_pid()", (str(i),)).fetchone()
            b.commit()
            check((x, y), (2 * i, f"{i}!"), "results")
            pids |= {pa, pb}
    return pids


def psycopg_close_and_discard(target):
    with target.psycopg(prepare_threshold=0, autocommit=True) as a, target.psycopg(prepare_threshold=0) as b:
        a.prepared_max = 2
        queries = [f"SELECT %s::int + {k}, pg_backend_pid()" for k in range(4)]
        pids = set()
        for i in rounds(target, 8):
            # Four statements with room for two: psycopg closes the oldest as it goes.
            for k, q in enumerate(queries):
                value, pid = a.execute(q, (i,)).fetchone()
                check(value, i + k, "result")
                pids.add(pid)
            check(b.execute("SELECT %s::int * 10", (i,)).fetchone()[0], 10 * i, "other client's result")
            b.commit()
        # DISCARD ALL drops the session's statements; psycopg knows and prepares them again.
        a.execute("DISCARD ALL")
        for k, q in enumerate(queries):
            check(a.execute(q, (1,)).fetchone()[0], 1 + k, "after DISCARD ALL")
        check(b.execute("SELECT %s::int * 10", (3,)).fetchone()[0], 30, "other client after DISCARD ALL")
        b.commit()
    return pids


def psycopg_pipeline_error(target):
    pids = set()
    queries = [("SELECT %s::int, pg_backend_pid()", (0,)), ("SELECT 1 / %s::int", (0,)),
               ("SELECT %s::int + 100", (0,))]
    with target.psycopg(prepare_threshold=0, autocommit=True) as a:
        for _ in rounds(target, 6):
            cursors, raised = [], False
            try:
                with a.pipeline():
                    for sql, params in queries:
                        cursors.append(a.execute(sql, params))
            except psycopg.errors.DivisionByZero:
                # psycopg raises where it reads the error: at a later execute or at the end of the block.
                raised = True
            value, pid = cursors[0].fetchone()
            pids.add(pid)
            check((raised, value), (True, 0), "the batch up to the error")
            for cur in cursors[1:]:
                try:
                    cur.fetchone()
                    raise AssertionError("a statement after the error returned a row")
                except psycopg.ProgrammingError:
                    pass  # no result: skipped up to Sync, as on PostgreSQL
            # The connection and its prepared statements go on working.
            check(a.execute(*queries[2]).fetchone()[0], 100, "after the pipeline")
    return pids


# Setting: (value as written in SET, value SHOW gives).
SETTINGS = {
    "application_name": ("'suite-a'", "suite-a"),
    "DateStyle": ("'SQL, DMY'", "SQL, DMY"),
    "TimeZone": ("'Asia/Tokyo'", "Asia/Tokyo"),
    "IntervalStyle": ("iso_8601", "iso_8601"),
    "search_path": ("a_schema, public", "a_schema, public"),
    "statement_timeout": ("'42s'", "42s"),
    "myapp.tenant": ("'tenant-7'", "tenant-7"),
}


def shows(conn, names):
    values = {n: conn.execute(f"SHOW {n}").fetchone()[0] for n in names}
    conn.commit()
    return values


def psycopg_settings(target):
    pids = set()
    with target.psycopg() as a, target.psycopg() as b:
        defaults = shows(b, [n for n in SETTINGS if n != "myapp.tenant"])
        for name, (value, _) in SETTINGS.items():
            a.execute(f"SET {name} = {value}")
        a.commit()
        want = {n: shown for n, (_, shown) in SETTINGS.items()}
        for _ in rounds(target):
            pids.add(a.execute("SELECT pg_backend_pid()").fetchone()[0])
            a.commit()
            check(shows(a, SETTINGS), want, "client a's settings")
            check(shows(b, defaults), defaults, "client b's settings")
    return pids


def psycopg_startup(target):
    options = "-c search_path=startup_path,public -c statement_timeout=7s"
    with target.psycopg(application_name="suite-startup", options=options, autocommit=True) as a:
        want = {"application_name": "suite-startup", "search_path": "startup_path,public",
                "statement_timeout": "7s"}
        pids = set()
        for _ in rounds(target, 6):
            pids.add(a.execute("SELECT pg_backend_pid()").fetchone()[0])
            check(shows(a, want), want, "startup settings")
        a.execute("SET statement_timeout = '1s'")
        check(shows(a, ["statement_timeout"])["statement_timeout"], "1s", "after SET")
        a.execute("RESET statement_timeout")
        check(shows(a, ["statement_timeout"])["statement_timeout"], "7s", "RESET returns to the startup value")
        a.execute("SET search_path = elsewhere")
        a.execute("SET application_name = 'changed'")
        a.execute("RESET ALL")
        check(shows(a, want), want, "RESET ALL returns to the startup values")
        # What the client was told (ParameterStatus) describes its own session.
        check(a.info.parameter_status("application_name"), "suite-startup", "reported application_name")
    return pids


def psycopg_encodings(target):
    pids = set()
    with target.psycopg(client_encoding="LATIN1") as a, target.psycopg(client_encoding="UTF8") as b:
        for i in rounds(target):
            for conn, encoding in ((a, "LATIN1"), (b, "UTF8")):
                text, length, enc, pid = conn.execute(
                    "SELECT %s::text || 'é', length(%s::text || 'é'), current_setting('client_encoding'), "
                    "pg_backend_pid()", (f"café{i}", f"café{i}")).fetchone()
                conn.commit()
                check((text, length, enc), (f"café{i}é", len(f"café{i}é"), encoding), f"{encoding} client")
                pids.add(pid)
    return pids


def psycopg_pins(target):
    with target.psycopg() as a, target.psycopg(autocommit=True) as other:
        a.execute("CREATE TEMP TABLE scratch (v int)")
        a.execute("SELECT pg_advisory_lock(4242)")
        a.commit()
        pids = set()
        for i in rounds(target, 6):
            other.execute("SELECT 1")
            a.execute("INSERT INTO scratch VALUES (%s)", (i,))
            pids.add(a.execute("SELECT pg_backend_pid()").fetchone()[0])
            a.commit()
            # A transaction-level try: a session-level one would pin `other` too.
            check(other.execute("SELECT pg_try_advisory_xact_lock(4242)").fetchone()[0], False,
                  "lock held by a")
        check(a.execute("SELECT count(*) FROM scratch").fetchone()[0], 6, "temp table rows")
        check(len(pids), 1, "a kept its server while it held session state")
        a.commit()
        a.autocommit = True
        a.execute("SELECT pg_advisory_unlock_all()")
        a.execute("DISCARD ALL")
        check(other.execute("SELECT pg_try_advisory_xact_lock(4242)").fetchone()[0], True, "lock released")
        check(a.execute("SELECT 1").fetchone()[0], 1, "a after DISCARD ALL")
    return pids


# ----------------------------------------------------------------------------------------------------------
# asyncpg
# ----------------------------------------------------------------------------------------------------------

def run_async(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, SCENARIO_TIMEOUT))


def asyncpg_prepared(target):
    async def go():
        a = await target.asyncpg()
        pids = set()
        try:
            for i in rounds(target):
                value, pid = await a.fetchrow("SELECT $1::int + 1, pg_backend_pid()", i)
                check(value, i + 1, "result")
                pids.add(pid)
        finally:
            await a.close()
        return pids
    return run_async(go())


def asyncpg_same_names(target):
    async def go():
        # Each connection's first cached statement is __asyncpg_stmt_1__.
        a, b = await target.asyncpg(), await target.asyncpg()
        pids = set()
        try:
            for i in rounds(target):
                x, pa = await a.fetchrow("SELECT $1::int * 2, pg_backend_pid()", i)
                y, pb = await b.fetchrow("SELECT $1::text || '!', pg_backend_pid()", str(i))
                check((x, y), (2 * i, f"{i}!"), "results")
                pids |= {pa, pb}
        finally:
            await a.close()
            await b.close()
        return pids
    return run_async(go())


def asyncpg_settings(target):
    async def go():
        a, b = await target.asyncpg(), await target.asyncpg()
        pids = set()
        try:
            await a.execute("SET TimeZone = 'Asia/Tokyo'; SET myapp.tenant = 'seven'")
            default_tz = await b.fetchval("SHOW TimeZone")
            for _ in rounds(target):
                pids.add(await a.fetchval("SELECT pg_backend_pid()"))
                check(await a.fetchval("SHOW TimeZone"), "Asia/Tokyo", "a's TimeZone")
                check(await a.fetchval("SELECT current_setting('myapp.tenant')"), "seven", "a's custom setting")
                check(await b.fetchval("SHOW TimeZone"), default_tz, "b's TimeZone")
        finally:
            await a.close()
            await b.close()
        return pids
    return run_async(go())


def asyncpg_errors(target):
    async def go():
        cases = [(dict(password="wrong"), "28P01"), (dict(database="no_such_db"), "3D000"),
                 (dict(user="no_such_user"), "28P01")]
        for change, code in cases:
            params = dict(host=target.host, port=target.port, user=target.user, password=target.password,
                          database=target.dbname, timeout=5)
            params.update(change)
            started = time.monotonic()
            try:
                conn = await asyncpg.connect(**params)
                await conn.close()
                raise AssertionError(f"{change} logged in")
            except asyncpg.PostgresError as e:
                check(e.sqlstate, code, f"SQLSTATE for {change}")
            check(time.monotonic() - started < 1, True, f"answered within a second for {change}")
        return set()
    return run_async(go())


# ----------------------------------------------------------------------------------------------------------
# raw protocol (what drivers here do not do: pgx's statement handling, a hand-made pipeline)
# ----------------------------------------------------------------------------------------------------------

def raw_scenario(body):
    def scenario(target):
        async def go():
            conn = await raw.connect(target.host, target.port, target.user, target.password, target.dbname)
            try:
                return await body(target, conn)
            finally:
                await conn.close()
        return run_async(go())
    return scenario


async def pgx_style(target, conn, name):
    pids = set()
    await conn.send(raw.parse(name, "SELECT $1::int + 1, pg_backend_pid()"), raw.describe_statement(name),
                    raw.sync())
    check(await conn.reply_tags(), "1tTZ", "Parse/Describe/Sync")
    for i in rounds(target):
        await conn.send(raw.bind(name, [str(i)]), raw.execute(), raw.sync())
        tags, rows = await conn.replies()
        check(tags, "2DCZ", "Bind/Execute/Sync in a later batch")
        check(int(rows[0][0]), i + 1, "result")
        pids.add(int(rows[0][1]))
    return pids


async def pipeline_error(target, conn):
    await conn.send(raw.parse("good", "SELECT $1::int * 3, pg_backend_pid()"), raw.bind("good", ["2"]),
                    raw.execute(), raw.parse("fails", "SELECT 1 / $1::int"), raw.bind("fails", ["0"]),
                    raw.execute(), raw.parse("skipped", "SELECT 42"), raw.bind("skipped", []), raw.execute(),
                    raw.sync())
    # As on PostgreSQL: 1 / 0 fails when the Bind plans it, and everything after the error up to Sync is
    # skipped, so "skipped" was never prepared.
    check(await conn.reply_tags(), "12DC1EZ", "pipeline with an error")
    pids = set()
    for i in rounds(target, 6):
        await conn.send(raw.bind("good", [str(i)]), raw.execute(), raw.sync())
        tags, rows = await conn.replies()
        check((tags, int(rows[0][0])), ("2DCZ", 3 * i), "the good statement later")
        pids.add(int(rows[0][1]))
        await conn.send(raw.bind("skipped", []), raw.execute(), raw.sync())
        tags, error = await conn.replies(error=True)
        check((tags, error), ("EZ", "26000"), "the skipped statement does not exist")
    return pids


async def deallocate(target, conn):
    await conn.send(raw.parse("s_1", "SELECT 7"), raw.sync())
    check(await conn.reply_tags(), "1Z", "Parse")
    await conn.send(raw.query("DEALLOCATE s_1"))
    check(await conn.reply_tags(), "CZ", "DEALLOCATE of a protocol-level statement")
    await conn.send(raw.bind("s_1", []), raw.execute(), raw.sync())
    tags, error = await conn.replies(error=True)
    check((tags, error), ("EZ", "26000"), "after DEALLOCATE")
    return set()


SCENARIOS = [
    ("psycopg.prepared_statements_follow_the_client", lambda t: psycopg_prepared(t, 5)),
    ("psycopg.same_names_different_sql", lambda t: psycopg_same_names(t, 5)),
    ("psycopg.close_and_discard", psycopg_close_and_discard),
    ("psycopg.pipeline_error", psycopg_pipeline_error),
    ("psycopg.settings_stick_and_do_not_leak", psycopg_settings),
    ("psycopg.startup_parameters_are_session_defaults", psycopg_startup),
    ("psycopg.client_encodings", psycopg_encodings),
    ("psycopg.session_state_pins", psycopg_pins),
    ("psycopg_threshold0.prepared_statements_follow_the_client", lambda t: psycopg_prepared(t, 0)),
    ("psycopg_threshold0.same_names_different_sql", lambda t: psycopg_same_names(t, 0)),
    ("asyncpg.prepared_statements_follow_the_client", asyncpg_prepared),
    ("asyncpg.same_names_different_sql", asyncpg_same_names),
    ("asyncpg.settings_stick_and_do_not_leak", asyncpg_settings),
    ("asyncpg.errors_like_postgres", asyncpg_errors),
    ("raw.pgx_unnamed", raw_scenario(lambda t, c: pgx_style(t, c, ""))),
    ("raw.pgx_named", raw_scenario(lambda t, c: pgx_style(t, c, "stmtcache_1"))),
    ("raw.pipeline_error", raw_scenario(pipeline_error)),
    ("raw.deallocate", raw_scenario(deallocate)),
]


def main():
    ap = argparse.ArgumentParser()
    for arg in ("--host", "--user", "--password", "--dbname", "--mode"):
        ap.add_argument(arg, required=True)
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args()
    target = Target(a)
    failed = 0
    for name, scenario in SCENARIOS:
        try:
            pids = scenario(target)
            print(f"ok {name} backends={len(pids)}", flush=True)
        except Exception as e:  # one scenario's failure must not stop the others
            failed += 1
            print(f"FAIL {name}: {e!r}", flush=True)
            traceback.print_exc(file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
