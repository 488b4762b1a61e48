-- The long half of the mix (see mixed-short.sql): a transaction that keeps its server for 50 ms, so short
-- transactions must be served by the servers left.
--   pgbench -n -f pgbench-scripts/mixed-short.sql@9 -f pgbench-scripts/mixed-long.sql@1 -c 100 -j 2 -T 20
\set aid random(1, 100000 * :scale)
BEGIN;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
SELECT pg_sleep(0.05);
END;
