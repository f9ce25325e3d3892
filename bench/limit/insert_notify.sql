-- A write and a NOTIFY in one transaction: NOTIFY takes a database-wide lock at commit,
-- so these commits serialise (why postgame sends its NOTIFYs from a separate task).
\set m random(1, 1000)
\set n random(1, 1000000)
BEGIN;
INSERT INTO limitq.control (match_id, client_id, name, data)
VALUES (md5(:m::text)::uuid, 'bench', 'input', jsonb_build_object('i', :n::int8));
SELECT pg_notify('limit_bench', 'bench-0 ' || :n::text);
COMMIT;
