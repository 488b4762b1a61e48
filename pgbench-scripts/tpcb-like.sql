-- TPC-B-like, as pgbench's built-in default: a five-statement read-write transaction.
--   pgbench -n -f pgbench-scripts/tpcb-like.sql -c 100 -j 2 -T 20 -M simple|extended
-- With -M prepared through a transaction pooler, run one thread per client (-j = -c): pgbench prepares each
-- statement synchronously before its first use, in the middle of a transaction, which stalls the other clients
-- of its thread while they hold servers.
\set aid random(1, 100000 * :scale)
\set bid random(1, 1 * :scale)
\set tid random(1, 10 * :scale)
\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
