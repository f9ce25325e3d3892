#!/usr/bin/env bash
# Every test postgame has: the Rust suite of the workspace (unit tests, doctests, and
# integration tests against PostgreSQL with the real server and real WebSocket clients;
# the example game examples/connect4 included), then the browser side
# (postgame.js under node's test runner, the demo in headless Chromium).
#
# The database is DATABASE_URL's server when it is set. Otherwise it is what
# `postgame serve` would use: the default URL when something answers there, else a private
# cluster from the machine's PostgreSQL installation (in target/test-pgdata, stopped at
# the end), so this runs on a machine where PostgreSQL is installed but not running.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --bin postgame
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
BIN="$TARGET/debug/postgame"
if [ -z "${DATABASE_URL:-}" ]; then
  DATA_DIR="$TARGET/test-pgdata"
  DATABASE_URL="$("$BIN" cluster start --if-needed --data-dir "$DATA_DIR")"
  export DATABASE_URL
  case "$DATABASE_URL" in
    *"host=%2F"*)
      echo "--- tests run on a private PostgreSQL cluster in $DATA_DIR"
      trap '"$BIN" cluster stop --data-dir "$DATA_DIR" >/dev/null' EXIT ;;
  esac
fi
# --workspace: the example game (examples/connect4) and its tests too.
cargo test --workspace
web/run-tests.sh
