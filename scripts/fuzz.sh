#!/usr/bin/env bash
# Runs every fuzz target for a while on its committed corpus (default 15 s each), new
# inputs going to a scratch folder so the committed corpus only changes on purpose.
# Usage: scripts/fuzz.sh [seconds per target] [target…]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH="${1:-15}"
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(frame http_body token game_tictactoe game_pong)
fi
if ! command -v cargo-fuzz >/dev/null; then
    cargo install cargo-fuzz --version 0.13.2 --locked
fi
# cargo fuzz passes nightly-only flags; this lets the stable toolchain take them.
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
for t in "${TARGETS[@]}"; do
    scratch="$(mktemp -d)"
    echo "--- fuzz $t (${SECONDS_EACH}s)"
    log="$scratch.log"
    if ! cargo fuzz run -O "$t" "$scratch" "fuzz/corpus/$t" -- \
        -max_total_time="$SECONDS_EACH" -print_final_stats=1 >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "fuzz target $t failed (the input is in fuzz/artifacts/$t)" >&2
        exit 1
    fi
    grep -E "stat::number_of_executed_units|Done " "$log" || true
    rm -rf "$scratch" "$log"
done
