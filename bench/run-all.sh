#!/usr/bin/env bash
# One command for docs/BENCHMARKS.md: builds postgame (release), installs the peers, then
# runs, RUNS times each and interleaved (so background noise spreads over all of them):
#   queue   postgame `bench queue --json`, the peers (bench/peers), the limit (bench/limit)
#   fanout  postgame `bench fanout` and its `--baseline`, the memory runs and a rate sweep
# and prints the tables (medians, spread, ratios to postgame) as Markdown on stdout.
# Raw results stay in the directory printed on stderr.
#
#   bench/run-all.sh [--runs 3] [--only queue|fanout] [--no-build]
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
runs=3
only=all
build=1
while [ $# -gt 0 ]; do
    case $1 in
        --runs) runs=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@localhost:5432/postgame}
export RUST_LOG=${RUST_LOG:-warn}
# 10,000 subscribers in one process need 10,000 sockets (and the gateway as many).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

bin=${POSTGAME_BIN:-$root/target/release/postgame}
if [ "$build" = 1 ]; then
    (cd "$root" && cargo build --release --quiet)
fi
out=$(mktemp -d /tmp/postgame-bench.XXXXXX)
echo "raw results: $out" >&2
note() { echo "[$(date +%T)] $*" >&2; }
{
    echo "date: $(date -u +%FT%TZ)"
    echo "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
    echo "postgres: $(psql -XtAc 'SELECT version()' "$DATABASE_URL")"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$out/machine.txt"

if [ "$only" = all ] || [ "$only" = queue ]; then
    "$root/bench/peers/install.sh" >&2
    for i in $(seq "$runs"); do
        note "queue run $i/$runs: postgame"
        "$bin" bench queue --json >"$out/queue.postgame.$i.json"
        note "queue run $i/$runs: peers"
        "$root/bench/peers/run.sh" >"$out/queue.peers.$i.jsonl"
        note "queue run $i/$runs: limit"
        "$root/bench/limit/run.sh" >"$out/queue.limit.$i.tsv"
        echo "load after queue run $i: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/machine.txt"
    done
fi

if [ "$only" = all ] || [ "$only" = fanout ]; then
    # name|arguments
    cases=(
        "postgame 1k x 100/s|--subscribers 1000 --rate 100 --duration 10"
        "baseline 1k x 100/s|--baseline --subscribers 1000 --rate 100 --duration 10"
        "postgame 1k x 100/s, one gateway|--one-gateway --subscribers 1000 --rate 100 --duration 10"
        "postgame 10k x 10/s (gateway process)|--process --subscribers 10000 --rate 10 --duration 10"
        "baseline 10k x 10/s (server process)|--baseline --process --subscribers 10000 --rate 10 --duration 10"
        "postgame 100 x 500/s, 4 KB, 5 slow readers|--subscribers 100 --rate 500 --duration 10 --payload 4000 --slow 5"
        "baseline 2k idle, read buffer 4 KiB (server process)|--baseline --process --subscribers 2000 --rate 1 --duration 2"
        "baseline 2k idle, read buffer 128 KiB (server process)|--baseline --process --baseline-read-buffer 131072 --subscribers 2000 --rate 1 --duration 2"
        "postgame 2k idle (gateway process)|--process --subscribers 2000 --rate 1 --duration 2"
    )
    for i in $(seq "$runs"); do
        for c in "${cases[@]}"; do
            note "fanout run $i/$runs: ${c%%|*}"
            # shellcheck disable=SC2086
            "$bin" bench fanout ${c#*|} --json | python3 -c \
                'import json,sys; r=json.load(sys.stdin); r["case"]=sys.argv[1]; print(json.dumps(r))' \
                "${c%%|*}" >>"$out/fanout.$i.jsonl"
        done
        echo "load after fanout run $i: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/machine.txt"
    done
    # The highest deliveries/s at 1,000 subscribers with p99 under 100 ms: one run per rate.
    for target in postgame baseline; do
        flag=""
        [ "$target" = baseline ] && flag="--baseline"
        for rate in 250 500 1000 2000; do
            note "fanout sweep: $target at $rate msg/s"
            # shellcheck disable=SC2086
            "$bin" bench fanout $flag --subscribers 1000 --rate "$rate" --duration 5 --json |
                python3 -c \
                    'import json,sys; r=json.load(sys.stdin); r["case"]=sys.argv[1]; print(json.dumps(r))' \
                    "$target" >>"$out/sweep.jsonl"
        done
    done
fi

python3 "$root/bench/summarize.py" "$out"
