"""Turns the raw results of bench/run-all.sh (a directory) into the Markdown tables of
docs/BENCHMARKS.md: medians over the runs, their spread (min–max) and ratios to postgame."""

from __future__ import annotations

import glob
import json
import os
import statistics
import sys


def load_json_lines(pattern: str) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(pattern)):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    rows.append(json.loads(line))
    return rows


def fmt(x: float | None, digits: int = 0) -> str:
    if x is None:
        return "–"
    if digits == 0:
        return f"{x:,.0f}"
    return f"{x:,.{digits}f}"


def stats(values: list[float]) -> tuple[float | None, float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None, None
    return statistics.median(values), min(values), max(values)


def cell(values: list[float], digits: int = 0) -> tuple[str, str, float | None]:
    med, lo, hi = stats(values)
    return fmt(med, digits), f"{fmt(lo, digits)}–{fmt(hi, digits)}", med


def ratio(x: float | None, base: float | None) -> str:
    if x is None or not base:
        return "–"
    return f"{x / base:.2f}×"


def queue_tables(out: str) -> None:
    pg = load_json_lines(os.path.join(out, "queue.postgame.*.json"))
    peers = load_json_lines(os.path.join(out, "queue.peers.*.jsonl"))
    limit: dict[str, list[float]] = {}
    for path in sorted(glob.glob(os.path.join(out, "queue.limit.*.tsv"))):
        with open(path) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) >= 2:
                    limit.setdefault(parts[0], []).append(float(parts[1]))
    if not pg:
        return
    runs = len(pg)
    print(f"### queue: processing 50,000 messages at concurrency 16 ({runs} runs)\n")
    print("| system | processed/s (median) | spread | ratio to postgame |")
    print("| --- | ---: | ---: | ---: |")
    med_pg, spread, base = cell([r["throughput_per_s"] for r in pg])
    print(f"| postgame `queue` drain (16 workers, batch 100) | {med_pg} | {spread} | 1.00× |")
    for name in ["graphile-worker", "pgqueuer", "pg-boss"]:
        vals = [r["process_per_s"] for r in peers if r.get("peer") == name]
        if vals:
            m, s, x = cell(vals)
            version = next(r["version"] for r in peers if r.get("peer") == name)
            print(f"| {name} {version} | {m} | {s} | {ratio(x, base)} |")
    if "drain" in limit:
        m, s, x = cell(limit["drain"])
        print(f"| limit: raw `DELETE … SKIP LOCKED LIMIT 100` (16 clients) | {m} | {s} | {ratio(x, base)} |")
    print()

    print(f"### queue: enqueue ({runs} runs)\n")
    print("| what | messages/s (median) | spread | ratio to postgame one by one |")
    print("| --- | ---: | ---: | ---: |")
    m_obo, s_obo, obo = cell([r["params"]["enqueue_one_by_one_per_s"] for r in pg])
    m_bulk, s_bulk, bulk = cell([r["params"]["enqueue_bulk_per_s"] for r in pg])
    print(f"| postgame one by one (`commit_batch` per message, 16 producers) | {m_obo} | {s_obo} | 1.00× |")
    if "insert" in limit:
        m, s, x = cell(limit["insert"])
        print(f"| limit: one-row `INSERT` per transaction (16 clients) | {m} | {s} | {ratio(x, obo)} |")
    if "insert_notify" in limit:
        m, s, x = cell(limit["insert_notify"])
        print(f"| limit: `INSERT` + `pg_notify` per transaction (16 clients) | {m} | {s} | {ratio(x, obo)} |")
    if "notify" in limit:
        m, s, x = cell(limit["notify"])
        print(f"| limit: `pg_notify` alone per transaction (16 clients) | {m} | {s} | {ratio(x, obo)} |")
    print(f"| postgame bulk (`commit_batch` of 256, sequential) | {m_bulk} | {s_bulk} | {ratio(bulk, obo)} |")
    for name in ["graphile-worker", "pgqueuer", "pg-boss"]:
        vals = [r["enqueue_per_s"] for r in peers if r.get("peer") == name]
        if vals:
            m, s, x = cell(vals)
            print(f"| {name} bulk (1,000 per call) | {m} | {s} | {ratio(x, obo)} |")
    print()

    print(f"### queue: enqueue-to-processed latency at 1,000 messages/s ({runs} runs)\n")
    print("| | p50 ms | p90 ms | p99 ms | max ms |")
    print("| --- | ---: | ---: | ---: | ---: |")
    row = []
    for q in ["p50", "p90", "p99", "max"]:
        m, s, _ = cell([r["latency_ms"][q] for r in pg], 1)
        row.append(f"{m} ({s})")
    print("| postgame, 16 workers, 16 producers | " + " | ".join(row) + " |")
    errors = sum(r["errors"] for r in pg)
    print(f"\nerrors over all postgame runs: {errors}\n")


def fanout_tables(out: str) -> None:
    rows = load_json_lines(os.path.join(out, "fanout.*.jsonl"))
    if rows:
        cases: dict[str, list[dict]] = {}
        for r in rows:
            cases.setdefault(r["case"], []).append(r)
        runs = max(len(v) for v in cases.values())
        print(f"### fanout ({runs} runs each; 100-byte payloads)\n")
        print(
            "| case | deliveries/s (median) | spread | p50 ms | p99 ms | max ms | lost | "
            "RSS before → connected MiB | KiB per connection | RSS of |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        for name, rs in cases.items():
            m, s, _ = cell([r["throughput_per_s"] for r in rs])
            p50, _, _ = cell([r["latency_ms"]["p50"] for r in rs], 1)
            p99, p99s, _ = cell([r["latency_ms"]["p99"] for r in rs], 1)
            mx, _, _ = cell([r["latency_ms"]["max"] for r in rs], 1)
            lost = max(r["params"]["lost"] for r in rs)
            before, _, _ = cell([r["params"]["rss_before_mib"] for r in rs], 1)
            conn, _, _ = cell([r["params"]["rss_connected_mib"] for r in rs], 1)
            per, _, _ = cell([r["params"]["rss_per_connection_kib"] for r in rs], 1)
            print(
                f"| {name} | {m} | {s} | {p50} | {p99} ({p99s}) | {mx} | {lost} | "
                f"{before} → {conn} | {per} | {rs[0]['params']['rss_of']} |"
            )
        slow = [r for r in rows if r["params"].get("slow")]
        if slow:
            print("\nslow readers (read nothing while the publisher ran):")
            for r in slow:
                p = r["params"]
                print(
                    f"- {r['case']}: {p['slow']} slow, closed by the server {p['slow_closed']}, "
                    f"{p['slow_complete']} got everything, received {p['slow_received']} "
                    f"of {p['slow'] * p['acked']}; regular subscribers lost {p['lost']}"
                )
        print()

    sweep = load_json_lines(os.path.join(out, "sweep.jsonl"))
    if sweep:
        print("### fanout: 1,000 subscribers, rising publish rate (one 5 s run per rate)\n")
        print("| target | msg/s | deliveries/s | p50 ms | p99 ms | lost |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        best: dict[str, float] = {}
        for r in sweep:
            p = r["params"]
            l = r["latency_ms"]
            print(
                f"| {r['case']} | {p['rate']:,.0f} | {r['throughput_per_s']:,.0f} | "
                f"{l['p50']:.1f} | {l['p99']:.1f} | {p['lost']} |"
            )
            if l["p99"] < 100 and p["lost"] == 0:
                best[r["case"]] = max(best.get(r["case"], 0), r["throughput_per_s"])
        print()
        pg, bl = best.get("postgame"), best.get("baseline")
        print(
            f"highest deliveries/s with p99 < 100 ms and nothing lost: postgame {fmt(pg)}, "
            f"baseline {fmt(bl)}, ratio {ratio(pg, bl)}\n"
        )


def main() -> None:
    out = sys.argv[1]
    machine = os.path.join(out, "machine.txt")
    if os.path.exists(machine):
        print("```")
        print(open(machine).read().rstrip())
        print("```\n")
    queue_tables(out)
    fanout_tables(out)


if __name__ == "__main__":
    main()
