#!/usr/bin/env bash
# Runs the browser-side tests: postgame.js against the real server (web/test) and the demo
# in headless Chromium (web/e2e). Builds the server, installs Debian's chromium if missing,
# installs playwright-core with `npm ci` (and Node.js 20 when node is missing or older).
# Needs the PostgreSQL server of DATABASE_URL (by default localhost:5432, user postgres,
# trust auth; scripts/test.sh starts a private one when nothing answers there), where it
# creates a database per test server. Screenshots go to target/web-screenshots/.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "--- cargo build (postgame, and connect4 for web/e2e/connect4.test.mjs)"
SQLX_OFFLINE="${SQLX_OFFLINE:-true}" cargo build --workspace --bins

if [ ! -x /usr/bin/chromium ]; then
  echo "--- installing chromium (Debian package)"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y chromium
fi

node_major() { node --version 2>/dev/null | sed -E 's/^v([0-9]+).*/\1/'; }
if [ "$(node_major || echo 0)" -lt 20 ] 2>/dev/null || ! command -v npm >/dev/null; then
  echo "--- installing Node.js 20 or later (the tests use its WebSocket and test runner)"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y nodejs npm
  if [ "$(node_major || echo 0)" -lt 20 ]; then
    # Debian 12 ships Node.js 18: take 20 from NodeSource.
    curl -fsSL https://deb.nodesource.com/setup_20.x | $SUDO bash -
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y nodejs
  fi
fi

echo "--- npm ci (web/)"
(cd web && npm ci --no-audit --no-fund)

# Test databases are named postgame_webtest_<run>_…; whatever a killed run leaves behind
# is dropped on the way out.
export POSTGAME_WEBTEST_RUN="r$$"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@localhost:5432/postgame}"
# The maintenance database of the same server (query parameters such as a socket kept).
MAINT_URL="$(printf '%s' "$DATABASE_URL" | sed -E 's#^([a-z]+://[^/?]*)(/[^?]*)?#\1/postgres#')"
cleanup() {
  psql "$MAINT_URL" -qAt -c \
    "SELECT datname FROM pg_database WHERE datname LIKE 'postgame_webtest_${POSTGAME_WEBTEST_RUN}_%'" 2>/dev/null |
    while read -r db; do
      psql "$MAINT_URL" -q -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" || true
    done
}
trap cleanup EXIT

echo "--- node --test web/test web/e2e"
# Node.js 20 has a global WebSocket only behind this flag (22+ has it by default).
node --experimental-websocket --test web/test web/e2e
