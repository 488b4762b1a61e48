-- Ten reads sent as one pipeline (one Sync): how a pooler copes with batched extended-protocol traffic.
--   pgbench -n -f pgbench-scripts/pipeline.sql -c 100 -j 2 -T 20 -M extended|prepared
\set aid random(1, 100000 * :scale - 10)
\startpipeline
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid + 1;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid + 2;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid + 3;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid + 4;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid + 5;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid + 6;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid + 7;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid + 8;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid + 9;
\endpipeline
