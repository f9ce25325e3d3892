#!/usr/bin/env bash
# One command for docs/BENCHMARKS.md. Builds postgame (release), installs the peers (for
# `queue`), then runs every case RUNS times, the runs interleaved (run 1 of every scenario,
# then run 2 of every scenario, ...) so background noise spreads over all of them:
#   queue   postgame `bench queue`, the peers (bench/peers), the raw-SQL limit (bench/limit)
#   fanout  postgame `bench fanout` and its `--baseline`, the memory runs; then a rate sweep
#   e2e     postgame `bench e2e`: closed loop, offered 2,000 and 500 moves/s
#   ticks   postgame `bench ticks`: 1,000 Pong matches at 20 Hz on 2 and 4 tickers, noop
# then summarizes them (bench/summarize.py: medians, spread, ratios to each case's baseline
# of the same run) and rewrites the generated blocks of docs/BENCHMARKS.md, between
# `<!-- run-all:begin SCENARIO -->` and `<!-- run-all:end SCENARIO -->`, one per scenario
# that ran; the prose around them is left alone. Raw results stay in the directory printed
# on stderr. A case that fails (or times out) is recorded as failed in its table and the
# script goes on; it exits 1 at the end if any failed.
#
#   bench/run-all.sh [--runs 3] [--only queue,fanout,e2e,ticks] [--quick] [--no-build]
#                    [--no-write] [--doc docs/BENCHMARKS.md]
#
#   --runs N      runs of every case (default 3; 1 with --quick)
#   --only LIST   scenarios to run, comma-separated: queue, fanout, e2e, ticks (default all)
#   --quick       smoke test: 1 run, small and short cases; implies --no-write
#   --no-build    use the existing binary (POSTGAME_BIN, default target/release/postgame)
#   --no-write    print the Markdown on stdout, leave docs/BENCHMARKS.md alone
#   --write       rewrite the doc even with --quick
#   --doc FILE    the page to rewrite (default docs/BENCHMARKS.md)
#
# Environment: DATABASE_URL (default postgres://postgres@localhost:5432/postgame; every
# case creates and drops its own database on that server), POSTGAME_BIN, and the sizes
# below (TICKS_DURATION, TICKS_MATCHES, E2E_DURATION, E2E_PLAYERS, FANOUT_DURATION, ...).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
invocation="bench/run-all.sh${*:+ $*}"
runs=""
only=all
build=1
quick=0
write=""
doc=$root/docs/BENCHMARKS.md
while [ $# -gt 0 ]; do
    case $1 in
        --runs) runs=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        --quick) quick=1; shift ;;
        --no-build) build=0; shift ;;
        --no-write) write=0; shift ;;
        --write) write=1; shift ;;
        --doc) doc=$(realpath -m "$2"); shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ -z "$runs" ]; then
    runs=$([ "$quick" = 1 ] && echo 1 || echo 3)
fi
if [ -z "$write" ]; then
    write=$([ "$quick" = 1 ] && echo 0 || echo 1)
fi
case $runs in '' | *[!0-9]* | 0) echo "--runs must be a positive integer" >&2; exit 2 ;; esac

scenarios=()
for s in queue fanout e2e ticks; do
    if [ "$only" = all ] || [[ ",$only," == *",$s,"* ]]; then
        scenarios+=("$s")
    fi
done
for s in ${only//,/ }; do
    case $s in all | queue | fanout | e2e | ticks) ;; *) echo "--only: unknown scenario $s" >&2; exit 2 ;; esac
done
selected() { [[ " ${scenarios[*]} " == *" $1 "* ]]; }

# The cases' sizes; --quick shrinks them to a smoke test of a few seconds each.
if [ "$quick" = 1 ]; then
    : "${TICKS_MATCHES:=50}" "${TICKS_DURATION:=5}"
    : "${E2E_DURATION:=3}"
    : "${FANOUT_DURATION:=2}" "${SWEEP_DURATION:=2}" "${SWEEP_RATES:=250}"
    : "${QUEUE_ARGS:=--messages 5000 --one-by-one 1000 --latency-messages 500}"
    : "${PEERS_JOBS:=5000}" "${LIMIT_ARGS:=--seconds 2 --rows 6400}"
fi
: "${TICKS_MATCHES:=1000}"          # the issue's target: 1,000 matches at 20 Hz, 2 tickers
: "${TICKS_DURATION:=60}"           # seconds measured (pong: warm-up + this < ~109 s)
: "${E2E_PLAYERS:=200}" "${E2E_DURATION:=10}"
: "${FANOUT_DURATION:=10}" "${SWEEP_DURATION:=5}" "${SWEEP_RATES:=250 500 1000 2000}"
: "${QUEUE_ARGS:=}" "${PEERS_JOBS:=50000}" "${LIMIT_ARGS:=}"

export DATABASE_URL=${DATABASE_URL:-postgres://postgres@localhost:5432/postgame}
export RUST_LOG=${RUST_LOG:-warn}
server_url=${DATABASE_URL%/*}
# 10,000 subscribers in one process need 10,000 sockets (and the gateway as many).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

need() {
    command -v "$1" >/dev/null 2>&1 || { echo "run-all.sh needs $1 ($2)" >&2; exit 2; }
}
need python3 "summarizes the results"
need timeout "coreutils: bounds every case"
if selected queue; then
    need psql "PostgreSQL client, for bench/limit"
    need pgbench "PostgreSQL client, for bench/limit"
    need node "Node 20, for bench/peers"
    need npm "Node 20, for bench/peers/install.sh"
fi

bin=${POSTGAME_BIN:-$root/target/release/postgame}
case $bin in /*) ;; *) bin=$root/$bin ;; esac
if [ "$build" = 1 ]; then
    need cargo "Rust toolchain, to build postgame"
    (cd "$root" && cargo build --release --quiet --bin postgame)
    bin=${POSTGAME_BIN:-$root/target/release/postgame}
    case $bin in /*) ;; *) bin=$root/$bin ;; esac
fi
[ -x "$bin" ] || { echo "no postgame binary at $bin (drop --no-build, or set POSTGAME_BIN)" >&2; exit 2; }

out=$(mktemp -d /tmp/postgame-bench.XXXXXX)
echo "raw results: $out" >&2
note() { echo "[$(date +%T)] $*" >&2; }
pg_version=$(psql -XtAc 'SELECT version()' "$server_url/postgres" 2>/dev/null || echo unknown)
if [ "$pg_version" = unknown ]; then
    echo "warning: cannot query the PostgreSQL version at $server_url/postgres" >&2
fi
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ "$commit" != unknown ] && [ -n "$(git -C "$root" status --porcelain 2>/dev/null | head -1)" ]; then
    commit="$commit+dirty"
fi
{
    echo "date: $(date -u +%FT%TZ)"
    echo "invocation: $invocation"
    echo "runs: $runs"
    echo "quick: $quick"
    echo "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
    echo "postgres: $pg_version"
    echo "commit: $commit"
    echo "binary: ${bin#"$root"/}"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$out/machine.txt"

# run_case SCENARIO CASE TIMEOUT_S COMMAND...: runs COMMAND (stdout into a file, stderr
# into another), records the outcome in runs.jsonl; a failure is noted, never fatal.
failed=0
seq_no=0
run_case() {
    local scenario=$1 name=$2 limit=$3
    shift 3
    seq_no=$((seq_no + 1))
    local base stdout stderr started rc=0
    base=$(printf '%03d.%s' "$seq_no" "$scenario")
    stdout="$base.out"
    stderr="$base.err"
    note "$scenario run $i/$runs: $name"
    started=$(date +%s.%N)
    timeout -k 30 "$limit" "$@" >"$out/$stdout" 2>"$out/$stderr" </dev/null || rc=$?
    if [ "$rc" != 0 ]; then
        failed=$((failed + 1))
        if [ "$rc" = 124 ]; then
            note "  FAILED: timed out after $limit s (log: $out/$stderr)"
        else
            note "  FAILED: exit status $rc (log: $out/$stderr)"
        fi
        tail -n 5 "$out/$stderr" | sed 's/^/    /' >&2
    fi
    python3 - "$root" "$scenario" "$name" "$i" "$rc" "$started" "$(date +%s.%N)" "$stdout" \
        "$stderr" "$limit" "$@" >>"$out/runs.jsonl" <<'PY'
import json, shlex, sys
root, scenario, name, run, rc, t0, t1, stdout, stderr, limit, *cmd = sys.argv[1:]
rel = lambda a: a[len(root) + 1:] if a.startswith(root + "/") else a
print(json.dumps({
    "scenario": scenario, "case": name, "run": int(run), "ok": rc == "0", "rc": int(rc),
    "timed_out": rc == "124", "timeout_s": int(limit), "seconds": float(t1) - float(t0),
    "cmd": shlex.join(rel(a) for a in cmd), "stdout": stdout, "stderr": stderr,
}))
PY
}

# The cases: "name|arguments of `postgame bench`".
fanout_cases=(
    "postgame 1k x 100/s|fanout --subscribers 1000 --rate 100 --duration $FANOUT_DURATION"
    "baseline 1k x 100/s|fanout --baseline --subscribers 1000 --rate 100 --duration $FANOUT_DURATION"
    "postgame 1k x 100/s, one gateway|fanout --one-gateway --subscribers 1000 --rate 100 --duration $FANOUT_DURATION"
    "postgame 10k x 10/s (gateway process)|fanout --process --subscribers 10000 --rate 10 --duration $FANOUT_DURATION"
    "baseline 10k x 10/s (server process)|fanout --baseline --process --subscribers 10000 --rate 10 --duration $FANOUT_DURATION"
    "postgame 100 x 500/s, 4 KB, 5 slow readers|fanout --subscribers 100 --rate 500 --duration $FANOUT_DURATION --payload 4000 --slow 5"
    "baseline 2k idle, read buffer 4 KiB (server process)|fanout --baseline --process --subscribers 2000 --rate 1 --duration 2"
    "baseline 2k idle, read buffer 128 KiB (server process)|fanout --baseline --process --baseline-read-buffer 131072 --subscribers 2000 --rate 1 --duration 2"
    "postgame 2k idle (gateway process)|fanout --process --subscribers 2000 --rate 1 --duration 2"
)
e2e_cases=(
    "closed loop|e2e --players $E2E_PLAYERS --duration $E2E_DURATION"
    "offered 2,000 moves/s|e2e --players $E2E_PLAYERS --rate 2000 --duration $E2E_DURATION"
    "offered 500 moves/s|e2e --players $E2E_PLAYERS --rate 500 --duration $E2E_DURATION"
)
ticks_cases=(
    "pong, 2 tickers|ticks --game pong --matches $TICKS_MATCHES --hz 20 --tickers 2 --duration $TICKS_DURATION"
    "noop, 2 tickers|ticks --game noop --matches $TICKS_MATCHES --hz 20 --tickers 2 --duration $TICKS_DURATION"
    "pong, 4 tickers|ticks --game pong --matches $TICKS_MATCHES --hz 20 --tickers 4 --duration $TICKS_DURATION"
    "pong, 3x the matches (saturated: capacity), 2 tickers|ticks --game pong --matches $((TICKS_MATCHES * 3)) --hz 20 --tickers 2 --duration $((TICKS_DURATION / 3 + 1))"
)
# Bounds per case: the run, plus setup, plus (ticks) the in-run baseline of equal length.
limit_of() { # limit_of SECONDS_MEASURED FACTOR
    awk -v d="$1" -v f="$2" 'BEGIN { printf "%d", d * f + 300 }'
}

# run_postgame SCENARIO LIST-ENTRY TIMEOUT_S
run_postgame() {
    local entry=$2
    # shellcheck disable=SC2086
    run_case "$1" "${entry%%|*}" "$3" "$bin" bench ${entry#*|} --json
}

if selected queue; then
    note "installing the peers (bench/peers/install.sh)"
    if ! "$root/bench/peers/install.sh" >&2; then
        note "FAILED to install the peers: their runs will fail"
    fi
fi

for i in $(seq "$runs"); do
    if selected queue; then
        # shellcheck disable=SC2086
        run_case queue postgame 1800 "$bin" bench queue $QUEUE_ARGS --json
        run_case queue peers 2400 env "JOBS=$PEERS_JOBS" "$root/bench/peers/run.sh"
        # shellcheck disable=SC2086
        run_case queue limit 900 "$root/bench/limit/run.sh" $LIMIT_ARGS
    fi
    if selected fanout; then
        for c in "${fanout_cases[@]}"; do
            run_postgame fanout "$c" "$(limit_of "$FANOUT_DURATION" 1)"
        done
    fi
    if selected e2e; then
        for c in "${e2e_cases[@]}"; do
            run_postgame e2e "$c" "$(limit_of "$E2E_DURATION" 2)"
        done
    fi
    if selected ticks; then
        for c in "${ticks_cases[@]}"; do
            run_postgame ticks "$c" "$(limit_of "$TICKS_DURATION" 3)"
        done
    fi
    echo "load after run $i: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/machine.txt"
done

if selected fanout; then
    # The highest deliveries/s at 1,000 subscribers with p99 under 100 ms: one run per rate.
    i=1
    for target in postgame baseline; do
        flag=""
        [ "$target" = baseline ] && flag="--baseline "
        for rate in $SWEEP_RATES; do
            run_postgame fanout-sweep \
                "$target $rate|fanout ${flag}--subscribers 1000 --rate $rate --duration $SWEEP_DURATION" \
                "$(limit_of "$SWEEP_DURATION" 1)"
        done
    done
fi
echo "date end: $(date -u +%FT%TZ)" >>"$out/machine.txt"

summary_rc=0
if [ "$write" = 1 ]; then
    python3 "$root/bench/summarize.py" "$out" --write "$doc" || summary_rc=$?
else
    python3 "$root/bench/summarize.py" "$out" || summary_rc=$?
fi
if [ "$failed" -gt 0 ]; then
    note "$failed case run(s) failed; see the tables and the logs in $out"
    exit 1
fi
exit "$summary_rc"
