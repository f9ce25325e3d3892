"""pgqueuer 1.6.0: enqueue JOBS no-op jobs (Queries.enqueue with lists, 1000 per call), then
process them all with 16 queue managers (each on its own asyncpg connection, as the
dequeue workers of pgqueuer's own benchmark tool), with its documented fast path: the
asyncpg driver and uvloop, and a dequeue `batch_size` of 100 (PGQUEUER_BATCH; its
benchmark tool uses 10, which measured 4.5 times slower here; 100 is postgame's claim
size and pg-boss's batch here).

Prints one JSON line like the Node peers.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import timedelta

import asyncpg
import uvloop
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job
from pgqueuer.qm import QueueManager
from pgqueuer.queries import Queries

JOBS = int(os.environ.get("JOBS", "50000"))
CONCURRENCY = int(os.environ.get("CONCURRENCY", "16"))
BATCH = int(os.environ.get("PGQUEUER_BATCH", "100"))
BASE_URL = os.environ.get("DATABASE_URL", "postgres://postgres@localhost:5432/postgame")
DB = "postgame_peer_pgqueuer"
SERVER = BASE_URL.rsplit("/", 1)[0]


async def fresh_database() -> str:
    admin = await asyncpg.connect(f"{SERVER}/postgres")
    await admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    await admin.execute(f"CREATE DATABASE {DB}")
    await admin.close()
    return f"{SERVER}/{DB}"


async def drop_database() -> None:
    admin = await asyncpg.connect(f"{SERVER}/postgres")
    await admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    await admin.close()


async def main() -> None:
    url = await fresh_database()
    conn = await asyncpg.connect(url)
    queries = Queries(AsyncpgDriver(conn))
    await queries.install()

    t0 = time.perf_counter()
    chunk = 1000
    for i in range(0, JOBS, chunk):
        n = min(chunk, JOBS - i)
        await queries.enqueue(["noop"] * n, [str(i + k).encode() for k in range(n)], [0] * n)
    enqueue_s = time.perf_counter() - t0

    managers = []
    for _ in range(CONCURRENCY):
        qm = QueueManager(Queries(AsyncpgDriver(await asyncpg.connect(url))))

        @qm.entrypoint("noop")
        async def noop(job: Job) -> None:
            return None

        managers.append(qm)

    t0 = time.perf_counter()
    runs = [
        asyncio.create_task(qm.run(dequeue_timeout=timedelta(seconds=0.5), batch_size=BATCH))
        for qm in managers
    ]
    # Processed = deleted from the queue table (completions go through a log buffer).
    while True:
        left = await conn.fetchval("SELECT count(*) FROM pgqueuer")
        if left == 0:
            break
        if any(r.done() for r in runs):
            for r in runs:
                if r.done() and r.exception():
                    raise r.exception()
        await asyncio.sleep(0.01)
    process_s = time.perf_counter() - t0
    for qm in managers:
        qm.shutdown.set()
    await asyncio.gather(*runs, return_exceptions=True)
    await conn.close()
    await drop_database()
    print(
        json.dumps(
            {
                "jobs": JOBS,
                "concurrency": CONCURRENCY,
                "peer": "pgqueuer",
                "version": "1.6.0",
                "enqueue_per_s": JOBS / enqueue_s,
                "process_per_s": JOBS / process_s,
                "process_s": process_s,
                "settings": {
                    "queue_managers": CONCURRENCY,
                    "batch_size": BATCH,
                    "driver": "asyncpg",
                    "event_loop": "uvloop",
                },
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    uvloop.run(main())
