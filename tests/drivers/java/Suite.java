// pgjdbc scenarios for pgherd's driver suite (see tests/drivers.rs for the contract). Each asserts PostgreSQL's
// own behaviour, so it passes against PostgreSQL directly (--mode direct) as well as through pgherd. pgjdbc
// always speaks UTF8, so client_encodings is left to the Python suite.

import java.sql.*;
import java.util.*;

public class Suite {
    static Map<String, String> args = new HashMap<>();

    interface Scenario {
        Set<Integer> run() throws Exception;
    }

    static Connection connect(Properties extra) throws SQLException {
        Properties p = new Properties();
        p.setProperty("user", args.get("user"));
        p.setProperty("password", args.get("password"));
        p.setProperty("connectTimeout", "10");
        p.setProperty("socketTimeout", "30");
        p.putAll(extra);
        String url = "jdbc:postgresql://" + args.get("host") + ":" + args.get("port") + "/" + args.get("dbname");
        return DriverManager.getConnection(url, p);
    }

    static Connection connect() throws SQLException {
        return connect(new Properties());
    }

    static Properties props(String... kv) {
        Properties p = new Properties();
        for (int i = 0; i < kv.length; i += 2) p.setProperty(kv[i], kv[i + 1]);
        return p;
    }

    static void check(Object got, Object want, String what) {
        if (!Objects.equals(got, want)) throw new AssertionError(what + ": got " + got + ", want " + want);
    }

    interface Round {
        void run(int i) throws Exception;
    }

    /** Moves the client under test to another server after each of its transactions, in transaction mode: two
     * holders take turns; the next begins a transaction, taking the server the client just released (pgherd's
     * pool hands out the server released last), then the previous commits, freeing its own for the client. */
    static void rounds(int n, Round body) throws Exception {
        List<Connection> holders = new ArrayList<>();
        if (!args.get("mode").equals("session")) {
            holders.add(connect());
            holders.add(connect());
        }
        Connection holding = null;
        try {
            for (int i = 0; i < n; i++) {
                body.run(i);
                if (holders.isEmpty()) continue;
                Connection next = holders.get(i % 2);
                next.setAutoCommit(false);
                next.createStatement().execute("SELECT pg_backend_pid()");
                if (holding != null) holding.commit();
                holding = next;
            }
        } finally {
            for (Connection h : holders) h.close();
        }
    }

    /** Runs `ps` and returns its single row's columns as strings. */
    static List<String> row(PreparedStatement ps) throws SQLException {
        try (ResultSet rs = ps.executeQuery()) {
            rs.next();
            List<String> out = new ArrayList<>();
            for (int c = 1; c <= rs.getMetaData().getColumnCount(); c++) out.add(rs.getString(c));
            return out;
        }
    }

    static String show(Connection c, String name) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SHOW " + name)) {
            rs.next();
            return rs.getString(1);
        }
    }

    static Set<Integer> prepared(String threshold) throws Exception {
        Set<Integer> pids = new HashSet<>();
        try (Connection a = connect(props("prepareThreshold", threshold))) {
            PreparedStatement ps = a.prepareStatement("SELECT ?::int + 1, pg_backend_pid()");
            rounds(12, i -> {
                ps.setInt(1, i);
                List<String> r = row(ps);
                check(r.get(0), String.valueOf(i + 1), "result");
                pids.add(Integer.parseInt(r.get(1)));
            });
            check(ps.unwrap(org.postgresql.PGStatement.class).isUseServerPrepare(), true,
                    "pgjdbc uses a server-side prepared statement");
        }
        return pids;
    }

    static Set<Integer> sameNames(String threshold) throws Exception {
        Set<Integer> pids = new HashSet<>();
        try (Connection a = connect(props("prepareThreshold", threshold));
             Connection b = connect(props("prepareThreshold", threshold))) {
            // Each connection's first server-side statement is S_1.
            PreparedStatement pa = a.prepareStatement("SELECT ?::int * 2, pg_backend_pid()");
            PreparedStatement pb = b.prepareStatement("SELECT ?::text || '!', pg_backend_pid()");
            rounds(12, i -> {
                pa.setInt(1, i);
                pb.setString(1, String.valueOf(i));
                List<String> x = row(pa), y = row(pb);
                check(List.of(x.get(0), y.get(0)), List.of(String.valueOf(2 * i), i + "!"), "results");
                pids.add(Integer.parseInt(x.get(1)));
                pids.add(Integer.parseInt(y.get(1)));
            });
        }
        return pids;
    }

    static Set<Integer> closeAndDiscard() throws Exception {
        Set<Integer> pids = new HashSet<>();
        try (Connection a = connect(props("prepareThreshold", "1")); Connection b = connect(props("prepareThreshold", "1"))) {
            PreparedStatement kept = b.prepareStatement("SELECT ?::int * 10");
            rounds(6, i -> {
                // A statement closed after use: pgjdbc sends Close for it.
                try (PreparedStatement ps = a.prepareStatement("SELECT ?::int + 5, pg_backend_pid()")) {
                    ps.setInt(1, i);
                    List<String> r = row(ps);
                    check(r.get(0), String.valueOf(i + 5), "result");
                    pids.add(Integer.parseInt(r.get(1)));
                }
                kept.setInt(1, i);
                check(row(kept).get(0), String.valueOf(10 * i), "other client's statement");
            });
            // DEALLOCATE ALL: pgjdbc notices and prepares again; b is untouched.
            a.createStatement().execute("DEALLOCATE ALL");
            PreparedStatement again = a.prepareStatement("SELECT ?::int + 5");
            again.setInt(1, 1);
            check(row(again).get(0), "6", "after DEALLOCATE ALL");
            again.setInt(1, 2);
            check(row(again).get(0), "7", "after DEALLOCATE ALL, prepared");
            kept.setInt(1, 3);
            check(row(kept).get(0), "30", "other client after DEALLOCATE ALL");
        }
        return pids;
    }

    static Set<Integer> pipelineError() throws Exception {
        Set<Integer> pids = new HashSet<>();
        try (Connection a = connect(props("prepareThreshold", "1"))) {
            a.createStatement().execute("CREATE TABLE IF NOT EXISTS jdbc_batch (round int, v int)");
            PreparedStatement insert = a.prepareStatement("INSERT INTO jdbc_batch VALUES (?, 10 / ?)");
            PreparedStatement count = a.prepareStatement("SELECT count(*), pg_backend_pid() FROM jdbc_batch WHERE round = ?");
            rounds(6, i -> {
                for (int divisor : new int[] {1, 0, 2}) {
                    insert.setInt(1, i);
                    insert.setInt(2, divisor);
                    insert.addBatch();
                }
                String failed = null;
                try {
                    insert.executeBatch();
                } catch (BatchUpdateException e) {
                    failed = e.getSQLState();
                }
                // One implicit transaction for the batch: the error rolls it back and skips the rest.
                check(failed, "22012", "the batch fails on division by zero");
                count.setInt(1, i);
                List<String> r = row(count);
                check(r.get(0), "0", "rows the failed batch left");
                pids.add(Integer.parseInt(r.get(1)));
            });
        }
        return pids;
    }

    static Set<Integer> settings() throws Exception {
        Set<Integer> pids = new HashSet<>();
        Map<String, String> want = new LinkedHashMap<>();
        want.put("TimeZone", "Asia/Tokyo");
        want.put("search_path", "a_schema, public");
        want.put("statement_timeout", "42s");
        want.put("myapp.tenant", "seven");
        try (Connection a = connect(); Connection b = connect()) {
            Statement s = a.createStatement();
            s.execute("SET TimeZone = 'Asia/Tokyo'");
            s.execute("SET search_path = a_schema, public");
            s.execute("SET statement_timeout = '42s'");
            s.execute("SET myapp.tenant = 'seven'");
            String defaultZone = show(b, "TimeZone");
            PreparedStatement pid = a.prepareStatement("SELECT pg_backend_pid()");
            rounds(12, i -> {
                pids.add(Integer.parseInt(row(pid).get(0)));
                for (Map.Entry<String, String> e : want.entrySet())
                    check(show(a, e.getKey()), e.getValue(), "a's " + e.getKey());
                check(show(b, "TimeZone"), defaultZone, "b's TimeZone");
                check(show(b, "statement_timeout"), "0", "b's statement_timeout");
            });
        }
        return pids;
    }

    static Set<Integer> startup() throws Exception {
        Set<Integer> pids = new HashSet<>();
        Properties p = props("ApplicationName", "jdbc-startup",
                "options", "-c search_path=startup_path,public -c statement_timeout=7s");
        try (Connection a = connect(p)) {
            PreparedStatement pid = a.prepareStatement("SELECT pg_backend_pid()");
            rounds(6, i -> {
                pids.add(Integer.parseInt(row(pid).get(0)));
                check(show(a, "application_name"), "jdbc-startup", "application_name");
                check(show(a, "search_path"), "startup_path,public", "search_path");
                check(show(a, "statement_timeout"), "7s", "statement_timeout");
            });
            Statement s = a.createStatement();
            s.execute("SET statement_timeout = '1s'");
            s.execute("RESET statement_timeout");
            check(show(a, "statement_timeout"), "7s", "RESET returns to the startup value");
            s.execute("SET search_path = elsewhere");
            s.execute("RESET ALL");
            check(show(a, "search_path"), "startup_path,public", "RESET ALL returns to the startup values");
        }
        return pids;
    }

    static Set<Integer> pins() throws Exception {
        Set<Integer> pids = new HashSet<>();
        try (Connection a = connect(); Connection other = connect()) {
            a.createStatement().execute("CREATE TEMP TABLE scratch (v int)");
            a.createStatement().execute("SELECT pg_advisory_lock(4444)");
            PreparedStatement insert = a.prepareStatement("INSERT INTO scratch VALUES (?)");
            PreparedStatement pid = a.prepareStatement("SELECT pg_backend_pid()");
            PreparedStatement tryLock = other.prepareStatement("SELECT pg_try_advisory_xact_lock(4444)");
            rounds(6, i -> {
                insert.setInt(1, i);
                insert.executeUpdate();
                pids.add(Integer.parseInt(row(pid).get(0)));
                check(row(tryLock).get(0), "f", "lock held by a");
            });
            check(row(a.prepareStatement("SELECT count(*) FROM scratch")).get(0), "6", "temp table rows");
            check(pids.size(), 1, "a kept its server while it held session state");
            a.createStatement().execute("SELECT pg_advisory_unlock_all()");
            a.createStatement().execute("DISCARD ALL");
            check(row(tryLock).get(0), "t", "lock released");
        }
        return pids;
    }

    static Set<Integer> errors() throws Exception {
        Object[][] cases = {{props("password", "wrong"), "28P01"}, {props("user", "no_such_user"), "28P01"}};
        for (Object[] c : cases) {
            long started = System.nanoTime();
            String got = null;
            try (Connection x = connect((Properties) c[0])) {
                got = "logged in";
            } catch (SQLException e) {
                got = e.getSQLState();
            }
            check(got, c[1], "SQLSTATE for " + c[0]);
            check((System.nanoTime() - started) / 1_000_000 < 1000, true, "answered within a second for " + c[0]);
        }
        String url = "jdbc:postgresql://" + args.get("host") + ":" + args.get("port") + "/no_such_db";
        try (Connection x = DriverManager.getConnection(url, args.get("user"), args.get("password"))) {
            throw new AssertionError("logged in to no_such_db");
        } catch (SQLException e) {
            check(e.getSQLState(), "3D000", "SQLSTATE for an unknown database");
        }
        return new HashSet<>();
    }

    public static void main(String[] argv) {
        for (int i = 0; i + 1 < argv.length; i += 2) args.put(argv[i].substring(2), argv[i + 1]);
        Map<String, Scenario> scenarios = new LinkedHashMap<>();
        scenarios.put("pgjdbc.prepared_statements_follow_the_client", () -> prepared("5"));
        scenarios.put("pgjdbc.same_names_different_sql", () -> sameNames("5"));
        scenarios.put("pgjdbc.close_and_discard", Suite::closeAndDiscard);
        scenarios.put("pgjdbc.pipeline_error", Suite::pipelineError);
        scenarios.put("pgjdbc.settings_stick_and_do_not_leak", Suite::settings);
        scenarios.put("pgjdbc.startup_parameters_are_session_defaults", Suite::startup);
        scenarios.put("pgjdbc.session_state_pins", Suite::pins);
        scenarios.put("pgjdbc.errors_like_postgres", Suite::errors);
        scenarios.put("pgjdbc_threshold1.prepared_statements_follow_the_client", () -> prepared("1"));
        scenarios.put("pgjdbc_threshold1.same_names_different_sql", () -> sameNames("1"));
        int failed = 0;
        for (Map.Entry<String, Scenario> s : scenarios.entrySet()) {
            try {
                System.out.println("ok " + s.getKey() + " backends=" + s.getValue().run().size());
            } catch (Throwable e) {
                failed++;
                System.out.println("FAIL " + s.getKey() + ": " + e);
                e.printStackTrace();
            }
            System.out.flush();
        }
        System.exit(failed == 0 ? 0 : 1);
    }
}
