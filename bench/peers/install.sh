#!/usr/bin/env bash
# Installs the peers from their registries, by name and pinned version:
#   npm:  graphile-worker 0.17.3, pg-boss 10.4.2 (and pg 8.23.1), from node/package-lock.json
#   PyPI: pgqueuer 1.6.0 with asyncpg and uvloop, into bench/peers/.venv (requirements.txt)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
(cd "$here/node" && npm ci --no-audit --no-fund --loglevel=error)
if [ ! -x "$here/.venv/bin/python" ]; then
    python3 -m venv "$here/.venv"
fi
"$here/.venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
