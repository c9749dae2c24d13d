"""Studies per hour over several processes: 20 chest CRs in flight through the embedded gateway
(one ``pacs-ai serve``, SQLite journal) and through the distributed arrangement on PostgreSQL
with one and with two work hosts, side by side in one run on the same machine.

Every peer is real: DCMTK storescu sends the 20 studies at once (one process each), a fresh
Orthanc is the PACS of every scenario, the built-in emulator answers at zero latency. The
distributed scenarios run ``pacs-ai serve --role receive`` behind HAProxy (``docker/haproxy.cfg``)
and ``--role work`` hosts with ``--executor-id``, all on one PostgreSQL journal (a throwaway
cluster from the Debian server binaries); the spool is the receivers' shared local folder, or S3
on SeaweedFS with ``--s3``. Each scenario first sends one warm-up study and waits for its
results. Studies per hour run from the first storescu start to the moment Orthanc holds every
result (three per CR: report SR, presentation state, classification SR).

    .venv/bin/python bench/scale_throughput.py --studies 20 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from loop_throughput import cr_studies, storescu_all, study_uid  # noqa: E402
from peers import Orthanc, run_gateway, run_orthanc  # noqa: E402
from pgserver import PostgresServer, run_postgres  # noqa: E402
from scaleout import result_count, run_cluster  # noqa: E402

CR_RESULTS = 3
WAIT_S = 600.0


def _wait_results(orthanc: Orthanc, uids: list[str]) -> float:
    deadline = time.monotonic() + WAIT_S
    while sum(result_count(orthanc, uid) for uid in uids) < CR_RESULTS * len(uids):
        if time.monotonic() > deadline:
            raise RuntimeError("results did not arrive")
        time.sleep(0.2)
    return time.time()


def _env(orthanc: Orthanc, extra: dict[str, str]) -> dict[str, str]:
    return {
        "PACSAI_DESTINATIONS__PACS__AE_TITLE": orthanc.aet,
        "PACSAI_DESTINATIONS__PACS__HOST": "127.0.0.1",
        "PACSAI_DESTINATIONS__PACS__PORT": str(orthanc.dicom_port),
        "PACSAI_QUIET_PERIOD_S": "1",
        "PACSAI_MAX_ASSOCIATIONS": "64",
        **extra,
    }


@contextmanager
def _embedded(work: Path, env: dict[str, str]) -> Iterator[int]:
    with run_gateway(work / "data", env=env) as gateway:
        yield gateway.port


@contextmanager
def _distributed(work: Path, env: dict[str, str], workers: int) -> Iterator[int]:
    with run_cluster(work, env, receivers=2, workers=workers) as cluster:
        yield cluster.port


def _spool_env(stack: ExitStack, work: Path, s3: bool) -> dict[str, str]:
    if not s3:
        return {}
    from s3peer import run_seaweedfs

    server = stack.enter_context(run_seaweedfs(work / "seaweedfs"))
    return server.env()


def scenario(
    name: str, work: Path, pg: PostgresServer | None, studies: int, workers: int, s3: bool
) -> float:
    """Studies per hour for ``studies`` CRs at once in one scenario (fresh Orthanc, fresh
    journal)."""
    work.mkdir(parents=True)
    warm = cr_studies(work / "warm", 1)
    batch = cr_studies(work / "batch", studies)
    with ExitStack() as stack:
        orthanc = stack.enter_context(run_orthanc(work / "orthanc"))
        extra = _spool_env(stack, work, s3) if pg is not None else {}
        if pg is not None:
            extra["PACSAI_DATABASE_URL"] = pg.new_database().secret()
        env = _env(orthanc, extra)
        if pg is None:
            port = stack.enter_context(_embedded(work, env))
        else:
            port = stack.enter_context(_distributed(work, env, workers))
        storescu_all(port, "PACSAI", [[p] for p in warm])
        _wait_results(orthanc, [study_uid(p) for p in warm])
        started, _ = storescu_all(port, "PACSAI", [[p] for p in batch])
        finished = _wait_results(orthanc, [study_uid(p) for p in batch])
    rate = studies / (finished - started) * 3600
    print(f"{name}: {finished - started:.1f} s, {rate:,.0f} studies/h", flush=True)
    return rate


def main() -> None:
    """Run the scenarios ``--repeat`` times, alternating, and print the medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--s3", action="store_true", help="spool on S3 (SeaweedFS) when distributed"
    )
    args = parser.parse_args()
    os.environ["TCP_NODELAY"] = "1"
    rates: dict[str, list[float]] = {
        "embedded": [],
        "postgresql, 1 work host": [],
        "postgresql, 2 work hosts": [],
    }
    with run_postgres() as pg, tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        for round_ in range(args.repeat):
            for name, server, workers in (
                ("embedded", None, 0),
                ("postgresql, 1 work host", pg, 1),
                ("postgresql, 2 work hosts", pg, 2),
            ):
                work = Path(tmp) / f"{round_}-{workers}-{name[:3]}"
                rates[name].append(scenario(name, work, server, args.studies, workers, args.s3))
    base = statistics.median(rates["embedded"])
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    print("| scenario | studies/h per round | median | ratio to embedded |")
    print("|---|---|---|---|")
    for name, values in rates.items():
        median = statistics.median(values)
        rounds = " / ".join(f"{v:,.0f}" for v in values)
        print(f"| {name} | {rounds} | {median:,.0f} | {median / base:.2f} |")


if __name__ == "__main__":
    main()
