-- A new connection (and full login) for every transaction: the cost of logins, as serverless clients cause.
--   pgbench -n -C -f pgbench-scripts/connection-storm.sql -c 100 -j 2 -T 20
SELECT 1;
