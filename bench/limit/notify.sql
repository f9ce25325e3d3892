-- A transaction that only notifies (what postgame's notifier sends: a small payload).
\set n random(1, 1000000)
SELECT pg_notify('limit_bench', 'bench-0 ' || :n::text);
