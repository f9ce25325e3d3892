#!/usr/bin/env bash
# The limit: pgbench runs of the raw SQL under the `queue` scenario, with the same client
# count as postgame's workers and the peers' concurrency, on a fresh database of the server
# in DATABASE_URL. Prints one line per script: name, rows per second, what was run.
#
#   bench/limit/run.sh [--clients 16] [--seconds 10] [--rows 51200]
#
# insert         one-row INSERT per transaction, for --seconds           (rows/s = tps)
# drain          DELETE … FOR UPDATE SKIP LOCKED LIMIT 100 … RETURNING over --rows
#                prefilled rows (rounded up to clients × 100)              (rows/s)
# notify         SELECT pg_notify(…) per transaction, for --seconds       (notifies/s)
# insert_notify  INSERT + pg_notify in one transaction, for --seconds     (rows/s)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
clients=16
seconds=10
rows=51200
while [ $# -gt 0 ]; do
    case $1 in
        --clients) clients=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --rows) rows=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

export PGOPTIONS="-c client_min_messages=warning"
url=${DATABASE_URL:-postgres://postgres@localhost:5432/postgame}
server=${url%/*}
db=postgame_limit
dburl="$server/$db"
threads=$(nproc)

psql -qX "$server/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" >/dev/null
trap 'psql -qX "$server/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true' EXIT
psql -qX -v ON_ERROR_STOP=1 "$dburl" -f "$here/setup.sql" >/dev/null

# pgbench's "tps = N (without initial connection time)".
tps() {
    sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p'
}

bench() {
    local log
    if ! log=$(pgbench -n -M prepared -c "$clients" -j "$threads" "$@" "$dburl" 2>&1); then
        echo "$log" >&2
        echo "pgbench failed: $*" >&2
        exit 1
    fi
    echo "$log"
}

# insert
out=$(bench -T "$seconds" -f "$here/insert.sql")
printf 'insert\t%.0f\tclients=%s seconds=%s\n' "$(tps <<<"$out")" "$clients" "$seconds"

# drain: exactly clients × t × 100 rows, t transactions per client.
per_client=$(( (rows + clients * 100 - 1) / (clients * 100) ))
total=$(( per_client * clients * 100 ))
psql -qX -v ON_ERROR_STOP=1 "$dburl" >/dev/null <<SQL
TRUNCATE limitq.control;
INSERT INTO limitq.control (match_id, client_id, name, data)
SELECT md5((g % 1000)::text)::uuid, 'bench', 'input', jsonb_build_object('i', g)
FROM generate_series(1, $total) g;
VACUUM ANALYZE limitq.control;
CHECKPOINT;
SQL
out=$(bench -t "$per_client" -f "$here/drain.sql")
left=$(psql -qXtA "$dburl" -c "SELECT count(*) FROM limitq.control")
drain_tps=$(tps <<<"$out")
# Elapsed = transactions / tps; rows/s = rows actually deleted / elapsed.
rate=$(awk -v t="$drain_tps" -v n="$(( total - left ))" -v x="$(( per_client * clients ))" \
    'BEGIN { printf "%.0f", n * t / x }')
printf 'drain\t%s\tclients=%s rows=%s batch=100 left=%s\n' "$rate" "$clients" "$total" "$left"

# notify
out=$(bench -T "$seconds" -f "$here/notify.sql")
printf 'notify\t%.0f\tclients=%s seconds=%s\n' "$(tps <<<"$out")" "$clients" "$seconds"

# insert_notify
psql -qX "$dburl" -c "TRUNCATE limitq.control" >/dev/null
out=$(bench -T "$seconds" -f "$here/insert_notify.sql")
printf 'insert_notify\t%.0f\tclients=%s seconds=%s\n' "$(tps <<<"$out")" "$clients" "$seconds"
