#!/usr/bin/env bash
# Runs each peer once on a fresh database of the server in DATABASE_URL: enqueue JOBS
# (50,000) no-op jobs, then process them all at concurrency CONCURRENCY (16). One JSON line
# per peer on stdout. Run install.sh first.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@localhost:5432/postgame}
node "$here/node/graphile.js"
node "$here/node/pgboss.js"
"$here/.venv/bin/python" "$here/pgqueuer_bench.py"
