"""The journal's own work on PostgreSQL against SQLite, measured in the same run.

Three figures per engine, each a rate of committed transactions through the real stores:

- ``record``: :meth:`Journal.record_instance` (what a receiver commits before answering a
  C-STORE), ``--instances`` instances over 20 studies, one process;
- ``claim``: :meth:`JobStore.claim` then :meth:`JobStore.complete` of ``--jobs`` jobs, by one
  process, then by two processes together (each claim on PostgreSQL a row-locking transaction
  outside the writers' queue).

SQLite runs in WAL mode with ``synchronous=NORMAL`` as the gateway does; PostgreSQL is a local
throwaway cluster (the Debian server) with fsync on and ``synchronous_commit=off``, the same
promise (a commit survives a crash of the process, a power cut may lose the last ones), over a
loopback TCP connection.

    .venv/bin/python bench/journal_engines.py --instances 2000 --jobs 1000
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from pgserver import run_postgres  # noqa: E402

from listener.settings.database import DatabaseUrl  # noqa: E402
from listener.store.db import DatabaseTarget  # noqa: E402
from listener.store.jobs import JobStore  # noqa: E402
from listener.store.journal import InstanceRecord, Journal  # noqa: E402

CLAIMER = """
import pathlib, sys, time
from listener.settings.database import DatabaseUrl
from listener.store.jobs import JobStore
where, owner = sys.argv[1:3]
jobs = JobStore(DatabaseUrl.parse(where) if "://" in where else pathlib.Path(where))
done = 0
while (job := jobs.claim(owner, 10.0, lease_s=1e9)) is not None:
    assert job.lease is not None and jobs.complete(job.lease, [], 10.0)
    done += 1
print(done)
"""


def _where(target: DatabaseTarget) -> str:
    return target.secret() if isinstance(target, DatabaseUrl) else str(target)


def record_rate(target: DatabaseTarget, n: int) -> float:
    """Instances recorded per second by one process."""
    journal = Journal(target)
    start = time.perf_counter()
    for i in range(n):
        study = f"1.2.{i % 20}"
        record = InstanceRecord(
            f"1.3.{i}", "1.2.840", study, f"{study}.1", "CT", "1.2", "p", 1, 1.0, 0
        )
        journal.record_instance(record, quiet_period_s=10.0)
    rate = n / (time.perf_counter() - start)
    journal.close()
    return rate


def schedule(target: DatabaseTarget, n: int, tag: str) -> None:
    """``n`` scheduled jobs, due now."""
    jobs = JobStore(target)
    for i in range(n):
        jobs.schedule(
            job_key=f"{tag}-{i}",
            study_uid="1.2",
            generation=0,
            rule="r",
            task="t",
            payload={},
            priority=0,
            now=0.0,
        )
    jobs.close()


def claim_rate(target: DatabaseTarget, n: int, processes: int, tag: str) -> float:
    """Jobs claimed and completed per second by ``processes`` processes together."""
    schedule(target, n, tag)
    start = time.perf_counter()
    running = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, _where(target), f"bench:{p}"],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for p in range(processes)
    ]
    done = sum(int(p.communicate()[0]) for p in running)
    elapsed = time.perf_counter() - start
    assert done == n, (done, n)
    return n / elapsed


def main() -> None:
    """Run every figure on both engines and print the table with the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, run_postgres(durable=True) as server:
        targets: dict[str, DatabaseTarget] = {
            "SQLite": Path(folder) / "journal.sqlite",
            "PostgreSQL": server.new_database(),
        }
        rows = {}
        for name, target in targets.items():
            rows[name] = (
                record_rate(target, args.instances),
                claim_rate(target, args.jobs, 1, "one"),
                claim_rate(target, args.jobs, 2, "two"),
            )
    print("| engine | record_instance / s | claim+complete / s, 1 process | 2 processes |")
    print("|---|---|---|---|")
    for name, (record, one, two) in rows.items():
        print(f"| {name} | {record:.0f} | {one:.0f} | {two:.0f} |")
    sqlite, pg = rows["SQLite"], rows["PostgreSQL"]
    ratios = " | ".join(f"{p / s:.2f}" for p, s in zip(pg, sqlite, strict=True))
    print(f"| PostgreSQL / SQLite | {ratios} |")


if __name__ == "__main__":
    main()
