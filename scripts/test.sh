#!/usr/bin/env bash
# Every test postgame has: the Rust suite (unit tests, and integration tests against the
# local PostgreSQL with the real server and real WebSocket clients), then the browser
# side (postgame.js under node's test runner, the demo in headless Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test
web/run-tests.sh
