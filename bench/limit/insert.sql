-- One control message per transaction (autocommit): the one-by-one enqueue's floor.
\set m random(1, 1000)
\set i random(1, 1000000000)
INSERT INTO limitq.control (match_id, client_id, name, data)
VALUES (md5(:m::text)::uuid, 'bench', 'input', jsonb_build_object('i', :i::int8));
