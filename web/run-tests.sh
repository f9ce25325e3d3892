#!/usr/bin/env bash
# Runs the browser-side tests: postgame.js against the real server (web/test) and the demo
# in headless Chromium (web/e2e). Builds the server, installs Debian's chromium if missing,
# installs playwright-core with `npm ci`. Needs PostgreSQL on localhost:5432 (user postgres,
# trust auth), like `cargo test`. Screenshots go to target/web-screenshots/.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "--- cargo build"
SQLX_OFFLINE="${SQLX_OFFLINE:-true}" cargo build --bin postgame

if [ ! -x /usr/bin/chromium ]; then
  echo "--- installing chromium (Debian package)"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y chromium
fi

echo "--- npm ci (web/)"
(cd web && npm ci --no-audit --no-fund)

# Test databases are named postgame_webtest_<run>_…; whatever a killed run leaves behind
# is dropped on the way out.
export POSTGAME_WEBTEST_RUN="r$$"
cleanup() {
  psql postgres://postgres@localhost:5432/postgres -qAt -c \
    "SELECT datname FROM pg_database WHERE datname LIKE 'postgame_webtest_${POSTGAME_WEBTEST_RUN}_%'" 2>/dev/null |
    while read -r db; do
      psql postgres://postgres@localhost:5432/postgres -q -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" || true
    done
}
trap cleanup EXIT

echo "--- node --test web/test web/e2e"
# Node.js 20 has a global WebSocket only behind this flag (22+ has it by default).
node --experimental-websocket --test web/test web/e2e
