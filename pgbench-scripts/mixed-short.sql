-- The short half of a mix of long and short transactions: nine short reads for every long transaction.
--   pgbench -n -f pgbench-scripts/mixed-short.sql@9 -f pgbench-scripts/mixed-long.sql@1 -c 100 -j 2 -T 20
\set aid random(1, 100000 * :scale)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
