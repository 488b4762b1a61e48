-- Select-only, as pgbench's built-in -S: one indexed read per transaction. The headline CPU-per-transaction
-- workload of benches/compare.py.
--   pgbench -n -f pgbench-scripts/select-only.sql -c 100 -j 2 -T 20 -M simple|extended|prepared
\set aid random(1, 100000 * :scale)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
