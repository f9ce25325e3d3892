-- The lock discipline, written down once so every role uses the same keys. All are
-- transaction-scoped advisory locks (released at commit or abort, so PgBouncer in
-- transaction mode works), in the two-int4 key space, first key a postgame namespace.

-- Held by whoever changes a match (worker batch, ticker tick). Taken with "try": a busy
-- match is skipped, never waited for.
CREATE FUNCTION postgame.try_lock_match(match_id uuid) RETURNS boolean
LANGUAGE sql VOLATILE PARALLEL UNSAFE
AS $$ SELECT pg_try_advisory_xact_lock(7476901, uuid_hash(match_id)) $$;

-- Held while control ids of a match are allocated and committed: it makes a match's id
-- order its commit order, so a worker never sees a later message before an earlier one.
CREATE FUNCTION postgame.lock_enqueue(match_id uuid) RETURNS boolean
LANGUAGE sql VOLATILE PARALLEL UNSAFE
AS $$ SELECT pg_advisory_xact_lock(7476902, uuid_hash(match_id)); SELECT true $$;

-- Held while a publisher checks idempotency keys and appends to a channel, so a repeated
-- key is seen by the second of two concurrent publishes.
CREATE FUNCTION postgame.lock_channel_publish(channel text) RETURNS boolean
LANGUAGE sql VOLATILE PARALLEL UNSAFE
AS $$ SELECT pg_advisory_xact_lock(7476903, hashtext(channel)); SELECT true $$;
