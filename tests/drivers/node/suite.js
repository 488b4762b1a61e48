// node-postgres scenarios for pgherd's driver suite (see tests/drivers.rs for the contract). Each asserts
// PostgreSQL's own behaviour, so it passes against PostgreSQL directly (--mode direct) as well as through
// pgherd. node-postgres cannot send a controlled pipeline with an error and only speaks UTF8, so the
// pipeline_error and client_encodings scenarios are left to the Python suite.
'use strict';

const { Client } = require('pg');

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].slice(2)] = process.argv[i + 1];

const SCENARIO_TIMEOUT_MS = 30000;

async function connect(extra = {}) {
  const client = new Client({
    host: args.host, port: Number(args.port), user: args.user, password: args.password,
    database: args.dbname, connectionTimeoutMillis: 10000, ...extra,
  });
  await client.connect();
  return client;
}

function check(got, want, what) {
  if (JSON.stringify(got) !== JSON.stringify(want)) {
    throw new Error(`${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
  }
}

// Moves the client under test to another server after each of its transactions, in transaction mode: two
// holders take turns; the next begins a transaction, taking the server the client just released (pgherd's
// pool hands out the server released last), then the previous commits, freeing its own for the client.
async function rounds(n, body) {
  const holders = args.mode === 'session' ? [] : [await connect(), await connect()];
  let holding = null;
  try {
    for (let i = 0; i < n; i++) {
      await body(i);
      if (holders.length === 0) continue;
      const next = holders[i % 2];
      await next.query('BEGIN');
      await next.query('SELECT pg_backend_pid()');
      if (holding) await holding.query('COMMIT');
      holding = next;
    }
  } finally {
    for (const h of holders) await h.end();
  }
}

async function prepared() {
  const a = await connect();
  const pids = new Set();
  try {
    await rounds(12, async (i) => {
      // A named query is parsed once per connection; later uses send only Bind and Execute.
      const r = await a.query({ name: 'add_one', text: 'SELECT $1::int + 1 AS v, pg_backend_pid() AS pid', values: [i] });
      check(r.rows[0].v, i + 1, 'result');
      pids.add(r.rows[0].pid);
    });
  } finally { await a.end(); }
  return pids;
}

async function sameNames() {
  const a = await connect();
  const b = await connect();
  const pids = new Set();
  try {
    await rounds(12, async (i) => {
      const x = await a.query({ name: 'q', text: 'SELECT $1::int * 2 AS v, pg_backend_pid() AS pid', values: [i] });
      const y = await b.query({ name: 'q', text: "SELECT $1::text || '!' AS v, pg_backend_pid() AS pid", values: [String(i)] });
      check([x.rows[0].v, y.rows[0].v], [2 * i, `${i}!`], 'results');
      pids.add(x.rows[0].pid).add(y.rows[0].pid);
    });
  } finally { await a.end(); await b.end(); }
  return pids;
}

async function closeAndDiscard() {
  const a = await connect();
  const b = await connect();
  const pids = new Set();
  try {
    await rounds(4, async (i) => {
      const r = await a.query({ name: 'q', text: 'SELECT $1::int AS v, pg_backend_pid() AS pid', values: [i] });
      pids.add(r.rows[0].pid);
      await b.query({ name: 'q', text: 'SELECT $1::text AS v', values: ['b'] });
    });
    // DISCARD ALL drops a's statements; node-postgres does not know and sends only a Bind: PostgreSQL answers
    // 26000, and so must pgherd. b's statement of the same name is untouched.
    await a.query('DISCARD ALL');
    let code = null;
    try {
      await a.query({ name: 'q', text: 'SELECT $1::int AS v, pg_backend_pid() AS pid', values: [1] });
    } catch (e) { code = e.code; }
    check(code, '26000', 'named query after DISCARD ALL');
    const r = await b.query({ name: 'q', text: 'SELECT $1::text AS v', values: ['still'] });
    check(r.rows[0].v, 'still', "the other client's statement");
  } finally { await a.end(); await b.end(); }
  return pids;
}

async function shows(client, names) {
  const values = {};
  for (const n of names) values[n] = Object.values((await client.query(`SHOW ${n}`)).rows[0])[0];
  return values;
}

async function settings() {
  const a = await connect();
  const b = await connect();
  const pids = new Set();
  const want = { TimeZone: 'Asia/Tokyo', search_path: 'a_schema, public', statement_timeout: '42s',
    'myapp.tenant': 'seven' };
  try {
    await a.query("SET TimeZone = 'Asia/Tokyo'; SET search_path = a_schema, public; " +
      "SET statement_timeout = '42s'; SET myapp.tenant = 'seven'");
    const defaults = await shows(b, ['TimeZone', 'search_path', 'statement_timeout']);
    await rounds(12, async () => {
      pids.add((await a.query('SELECT pg_backend_pid() AS pid')).rows[0].pid);
      check(await shows(a, Object.keys(want)), want, "a's settings");
      check(await shows(b, Object.keys(defaults)), defaults, "b's settings");
    });
  } finally { await a.end(); await b.end(); }
  return pids;
}

async function startup() {
  const a = await connect({
    application_name: 'node-startup', options: '-c search_path=startup_path,public -c statement_timeout=7s',
  });
  const pids = new Set();
  const want = { application_name: 'node-startup', search_path: 'startup_path,public', statement_timeout: '7s' };
  try {
    await rounds(6, async () => {
      pids.add((await a.query('SELECT pg_backend_pid() AS pid')).rows[0].pid);
      check(await shows(a, Object.keys(want)), want, 'startup settings');
    });
    await a.query("SET statement_timeout = '1s'");
    await a.query('RESET statement_timeout');
    check((await shows(a, ['statement_timeout'])).statement_timeout, '7s', 'RESET returns to the startup value');
    await a.query("SET search_path = elsewhere; SET application_name = 'changed'");
    await a.query('RESET ALL');
    check(await shows(a, Object.keys(want)), want, 'RESET ALL returns to the startup values');
  } finally { await a.end(); }
  return pids;
}

async function pins() {
  const a = await connect();
  const other = await connect();
  const pids = new Set();
  try {
    await a.query('CREATE TEMP TABLE scratch (v int); SELECT pg_advisory_lock(4343)');
    await rounds(6, async (i) => {
      await other.query('SELECT 1');
      await a.query('INSERT INTO scratch VALUES ($1)', [i]);
      pids.add((await a.query('SELECT pg_backend_pid() AS pid')).rows[0].pid);
      const r = await other.query('SELECT pg_try_advisory_xact_lock(4343) AS got');
      check(r.rows[0].got, false, 'lock held by a');
    });
    check((await a.query('SELECT count(*)::int AS n FROM scratch')).rows[0].n, 6, 'temp table rows');
    check(pids.size, 1, 'a kept its server while it held session state');
    await a.query('SELECT pg_advisory_unlock_all()');
    await a.query('DISCARD ALL');
    check((await other.query('SELECT pg_try_advisory_xact_lock(4343) AS got')).rows[0].got, true, 'lock released');
  } finally { await a.end(); await other.end(); }
  return pids;
}

async function errors() {
  const cases = [[{ password: 'wrong' }, '28P01'], [{ database: 'no_such_db' }, '3D000'],
    [{ user: 'no_such_user' }, '28P01']];
  for (const [change, code] of cases) {
    const started = Date.now();
    let got = null;
    try {
      const c = await connect(change);
      await c.end();
    } catch (e) { got = e.code; }
    check(got, code, `SQLSTATE for ${JSON.stringify(change)}`);
    check(Date.now() - started < 1000, true, `answered within a second for ${JSON.stringify(change)}`);
  }
  return new Set();
}

const SCENARIOS = [
  ['pg.prepared_statements_follow_the_client', prepared],
  ['pg.same_names_different_sql', sameNames],
  ['pg.close_and_discard', closeAndDiscard],
  ['pg.settings_stick_and_do_not_leak', settings],
  ['pg.startup_parameters_are_session_defaults', startup],
  ['pg.session_state_pins', pins],
  ['pg.errors_like_postgres', errors],
];

function withTimeout(promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${SCENARIO_TIMEOUT_MS} ms`)), SCENARIO_TIMEOUT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

(async () => {
  let failed = 0;
  for (const [name, scenario] of SCENARIOS) {
    try {
      const pids = await withTimeout(scenario());
      console.log(`ok ${name} backends=${pids.size}`);
    } catch (e) {
      failed += 1;
      console.log(`FAIL ${name}: ${e.message}`);
      console.error(e.stack);
    }
  }
  process.exit(failed ? 1 : 0);
})();
