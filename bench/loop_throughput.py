"""The whole loop, PACS to PACS: overhead per study and studies per hour, against DCMTK storescu
storing the same studies straight into Orthanc.

Every peer is real: DCMTK storescu is the modality, a fresh Orthanc is the PACS for every
scenario, ``pacs-ai serve`` runs with its embedded default rules, a 1 s quiet period and the
built-in emulator at zero latency, and sends its results to Orthanc (destination ``pacs``).

Scenarios, each against a fresh gateway and a fresh Orthanc, each after one warm-up study of the
same kind (measured too, as the first study after start-up):

1. one chest CR (``RG1_UNCR.dcm``, 1841×1955): report SR + presentation state from CXRReportGen,
   classification SR from MedImageInsight;
2. one CT of ``--ct-slices`` 512×512 CHEST slices: MedImageParse on every slice, SEG + SR;
3. ``--studies`` distinct chest CR studies sent at once (one storescu process each).

Overhead per study runs from the study's release (``studies.released_at``, so the quiet period
is left out) to the acknowledgement of its last result by Orthanc: the ``outbox_delivered`` log
event of the delivery pass that sent it (``outbox.sent_at`` is stamped when that pass starts,
before the C-STOREs). Studies per hour run from the first storescu start to the last
acknowledgement. The peer figure is storescu's wall time storing the same files into a fresh
Orthanc (one association per study, the 20 at once). Ratios are gateway / peer. Job retries and
results that needed a second attempt are listed, since each one costs a backoff.

    .venv/bin/python bench/loop_throughput.py --ct-slices 200 --studies 20

``--scenarios many`` (or ``cr``, ``ct``, comma-separated) runs a subset, e.g. under a profiler::

    py-spy record --subprocesses -r 50 -f raw -o many.txt -- \
        .venv/bin/python bench/loop_throughput.py --scenarios many
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from factory import ct_series, write_series  # noqa: E402
from peers import Gateway, nodelay_env, run_gateway, run_orthanc  # noqa: E402
from pydicom import dcmread  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

UID_ROOT = "1.2.826.0.1.3680043.8.498."
WAIT_S = 400.0


# --- data --------------------------------------------------------------------------------------


def cr_studies(folder: Path, count: int) -> list[Path]:
    """``count`` copies of the chest CR, each a distinct study (new study/series/SOP UIDs)."""
    source = get_testdata_file("RG1_UNCR.dcm")
    assert source is not None
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for index in range(count):
        ds = dcmread(source)
        ds.StudyInstanceUID = generate_uid(prefix=UID_ROOT)
        ds.SeriesInstanceUID = generate_uid(prefix=UID_ROOT)
        ds.SOPInstanceUID = generate_uid(prefix=UID_ROOT)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / f"cr{index:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def study_uid(path: Path) -> str:
    """The Study Instance UID of the first file under ``path``."""
    return str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)


# --- sending -----------------------------------------------------------------------------------


def storescu_all(port: int, aec: str, studies: list[list[Path]]) -> tuple[float, float]:
    """One storescu process per study, all at once; return (wall start, seconds to finish)."""
    started, start = time.time(), time.perf_counter()
    senders = [
        subprocess.Popen(
            ["storescu", "-aec", aec, "127.0.0.1", str(port), *map(str, files)],
            env=nodelay_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for files in studies
    ]
    for sender in senders:
        _, err = sender.communicate(timeout=300)
        if sender.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode(errors='replace')[-500:]}")
    return started, time.perf_counter() - start


def peer_seconds(scratch: Path, name: str, warmup: list[Path], studies: list[list[Path]]) -> float:
    """Storescu into a fresh Orthanc, after one warm-up study: the PACS ingesting the originals,
    nothing else."""
    with run_orthanc(scratch / f"peer-{name}") as pacs:
        storescu_all(pacs.dicom_port, pacs.aet, [warmup])
        _, seconds = storescu_all(pacs.dicom_port, pacs.aet, studies)
        expected = len(warmup) + sum(len(files) for files in studies)
        if pacs.instance_count() != expected:
            raise RuntimeError(f"Orthanc holds {pacs.instance_count()} of {expected} instances")
    return seconds


# --- reading the gateway's journal and log -----------------------------------------------------


def _query(db_path: Path, sql: str, *args: Any) -> list[sqlite3.Row]:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    db.row_factory = sqlite3.Row
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def _done(db_path: Path, uids: list[str]) -> bool:
    """Every study released, every job completed, every result of every job sent."""
    marks = ",".join("?" * len(uids))
    try:
        studies = _query(
            db_path, f"SELECT released_at FROM studies WHERE study_uid IN ({marks})", *uids
        )
        jobs = _query(
            db_path, f"SELECT id, state, outputs FROM jobs WHERE study_uid IN ({marks})", *uids
        )
        sent = _query(db_path, "SELECT job_id, state FROM outbox")
    except sqlite3.OperationalError:  # journal not created yet
        return False
    if len(studies) < len(uids) or any(s["released_at"] is None for s in studies) or not jobs:
        return False
    if {j["state"] for j in jobs} - {"COMPLETED"}:
        if "CANCELED" in {j["state"] for j in jobs}:
            raise RuntimeError("a job was canceled; see the gateway log")
        return False
    ids = {str(j["id"]) for j in jobs}
    expected = sum(len(json.loads(j["outputs"] or "[]")) for j in jobs)
    return sum(1 for row in sent if row["job_id"] in ids and row["state"] == "sent") == expected


def wait_done(gateway: Gateway, uids: list[str]) -> None:
    """Wait until every study in ``uids`` is done in the gateway's journal."""
    deadline = time.monotonic() + WAIT_S
    db_path = gateway.data_dir / "journal.sqlite"
    while not _done(db_path, uids):
        if time.monotonic() > deadline or gateway.proc.poll() is not None:
            raise RuntimeError(f"the loop did not finish; see {gateway.log_path}")
        time.sleep(0.2)


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def ack_times(gateway: Gateway) -> list[float]:
    """When each delivery pass to ``pacs`` that sent something had its answers recorded."""
    return sorted(
        _epoch(e["timestamp"])
        for e in gateway.events("outbox_delivered")
        if e.get("destination") == "pacs" and int(e.get("sent", 0)) > 0
    )


@dataclass
class Timeline:
    """One study's way through the gateway, wall-clock seconds (epoch)."""

    last_received: float
    released: float
    planned: float
    first_start: float
    last_start: float
    last_end: float
    last_enqueued: float
    pass_start: float
    acked: float
    jobs: list[tuple[str, float, float]]  # task, start, end

    @property
    def overhead(self) -> float:
        return self.acked - self.released


def timeline(gateway: Gateway, uid: str, acks: list[float]) -> Timeline:
    """When each step of one study happened, from the journal and the PACS acknowledgements."""
    db_path = gateway.data_dir / "journal.sqlite"
    study = _query(db_path, "SELECT * FROM studies WHERE study_uid = ?", uid)[0]
    jobs = _query(
        db_path,
        "SELECT j.id, j.task, j.created_at, min(s.at) AS started, max(c.at) AS ended"
        " FROM jobs j JOIN job_events s ON s.job_id = j.id AND s.state = 'IN PROGRESS'"
        " JOIN job_events c ON c.job_id = j.id AND c.state = 'COMPLETED'"
        " WHERE j.study_uid = ? GROUP BY j.id",
        uid,
    )
    marks = ",".join("?" * len(jobs))
    sends = _query(
        db_path,
        f"SELECT max(enqueued_at) AS enqueued, max(sent_at) AS sent FROM outbox"
        f" WHERE destination = 'pacs' AND job_id IN ({marks})",
        *(str(j["id"]) for j in jobs),
    )[0]
    acked = next(t for t in acks if t >= sends["sent"])
    return Timeline(
        last_received=study["last_received_at"],
        released=study["released_at"],
        planned=min(j["created_at"] for j in jobs),
        first_start=min(j["started"] for j in jobs),
        last_start=max(j["started"] for j in jobs),
        last_end=max(j["ended"] for j in jobs),
        last_enqueued=sends["enqueued"],
        pass_start=sends["sent"],
        acked=acked,
        jobs=[(j["task"], j["started"], j["ended"]) for j in jobs],
    )


def trouble(gateway: Gateway) -> list[str]:
    """Job retries and failed sends: each one costs a backoff, so the figures name them."""
    db_path = gateway.data_dir / "journal.sqlite"
    failed = _query(
        db_path,
        "SELECT e.detail, j.task FROM job_events e JOIN jobs j ON j.id = e.job_id"
        " WHERE e.state = 'SCHEDULED' AND e.detail IS NOT NULL",
    )
    resent = _query(db_path, "SELECT count(*) AS n FROM outbox WHERE attempts > 1")[0]["n"]
    out = [f"job {row['task']} retried: {row['detail'][:200]}" for row in failed]
    return out + ([f"{resent} outbox entries needed more than one attempt"] if resent else [])


def model_calls(gateway: Gateway) -> dict[str, tuple[int, float]]:
    """Per model: calls and summed call time, from the admin records."""
    rows = _query(
        gateway.data_dir / "journal.sqlite",
        "SELECT model, count(*) AS n, sum(duration_s) AS s FROM model_calls GROUP BY model",
    )
    return {row["model"]: (int(row["n"]), float(row["s"])) for row in rows}


# --- CPU per process ---------------------------------------------------------------------------


def _process_tree(root: int) -> list[int]:
    """``root`` and every process below it (from the parent PIDs in ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    tree, queue = [], [root]
    while queue:
        pid = queue.pop()
        tree.append(pid)
        queue += children.get(pid, [])
    return tree


def cpu_by_process(root: int) -> dict[str, float]:
    """CPU seconds (user + system) used so far by the gateway's processes, by the name each
    child carries in ``ps`` (``receive-0``, ``job-runner-1``; the supervisor, which also runs
    the emulator, as ``supervisor``). Wall-clock ratios swing with a shared machine's load;
    CPU seconds per study are steadier."""
    tick = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    for pid in _process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        name = "supervisor" if pid == root else name
        used[name] = used.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return used


def _cpu_since(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: seconds - before.get(name, 0.0) for name, seconds in after.items()}


# --- gateway scenarios -------------------------------------------------------------------------


@dataclass
class LoopRun:
    """What one gateway scenario measured (the warm-up study apart)."""

    send_started: float
    send_seconds: float
    timelines: list[Timeline]
    calls: dict[str, tuple[int, float]]
    cold: Timeline
    trouble: list[str]
    cpu: dict[str, float]  # CPU seconds per gateway process over the measured studies

    @property
    def span(self) -> float:
        """First storescu start to last acknowledged result."""
        return max(t.acked for t in self.timelines) - self.send_started


def _calls_since(
    before: dict[str, tuple[int, float]], after: dict[str, tuple[int, float]]
) -> dict[str, tuple[int, float]]:
    return {
        model: (n - before.get(model, (0, 0.0))[0], s - before.get(model, (0, 0.0))[1])
        for model, (n, s) in after.items()
    }


def gateway_run(scratch: Path, name: str, warmup: list[Path], studies: list[list[Path]]) -> LoopRun:
    """Send one warm-up study to a fresh gateway whose PACS is a fresh Orthanc and wait for its
    results (the first study after start-up, measured as ``cold``), then send the studies at
    once and wait for every result."""
    with run_orthanc(scratch / f"pacs-{name}") as pacs:
        env = {
            "PACSAI_DESTINATIONS__PACS__AE_TITLE": pacs.aet,
            "PACSAI_DESTINATIONS__PACS__HOST": "127.0.0.1",
            "PACSAI_DESTINATIONS__PACS__PORT": str(pacs.dicom_port),
            "PACSAI_EMULATOR__LATENCY_MS": "0",
            # The default (16) answers a burst of 20 associations with "local limit exceeded".
            "PACSAI_MAX_ASSOCIATIONS": "64",
        }
        with run_gateway(scratch / f"gw-{name}" / "data", "--quiet-period", "1", env=env) as gw:
            time.sleep(3.0)  # let every child process (receivers, worker, job runners) start
            storescu_all(gw.port, "PACSAI", [warmup])
            wait_done(gw, [study_uid(warmup[0])])
            before = model_calls(gw)
            cpu_before = cpu_by_process(gw.proc.pid)
            uids = [study_uid(files[0]) for files in studies]
            started, seconds = storescu_all(gw.port, "PACSAI", studies)
            wait_done(gw, uids)
            cpu = _cpu_since(cpu_before, cpu_by_process(gw.proc.pid))
            acks = ack_times(gw)
            run = LoopRun(
                started,
                seconds,
                [timeline(gw, uid, acks) for uid in uids],
                _calls_since(before, model_calls(gw)),
                cold=timeline(gw, study_uid(warmup[0]), acks),
                trouble=trouble(gw),
                cpu=cpu,
            )
        results = pacs.instance_count()
    if results == 0:
        raise RuntimeError("no result reached Orthanc")
    print(f"{name}: {results} results in Orthanc, {run.span:.2f} s", file=sys.stderr)
    return run


# --- report ------------------------------------------------------------------------------------


def _version(command: list[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def machine() -> str:
    """One line describing this machine (CPUs, memory) for the report."""
    import pynetdicom

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), Python {platform.python_version()}, "
        f"pynetdicom {pynetdicom.__version__}, {_version(['storescu', '--version'])}, "
        f"load average {load}"
    )


def breakdown(t: Timeline) -> str:
    """The time spent in each stage of one study's timeline, as text."""
    steps = [
        ("release lag after quiet period", t.released - t.last_received - 1.0),
        ("release -> planned", t.planned - t.released),
        ("planned -> first job start", t.first_start - t.planned),
        ("first job start -> last job end", t.last_end - t.first_start),
        ("last job end -> its send pass starts", t.pass_start - t.last_end),
        ("send pass (C-STOREs to Orthanc)", t.acked - t.pass_start),
    ]
    lines = [f"    {label}: {seconds:.3f} s" for label, seconds in steps]
    lines += [f"    job {task}: {end - start:.3f} s" for task, start, end in t.jobs]
    return "\n".join(lines)


def _jobs_line(run: LoopRun) -> str:
    """Median run time per task, and how many jobs ran at once on average."""
    jobs = [job for t in run.timelines for job in t.jobs]
    tasks = sorted({task for task, _, _ in jobs})
    medians = ", ".join(
        f"{task} median {statistics.median(e - s for k, s, e in jobs if k == task):.2f} s"
        for task in tasks
    )
    busy = sum(end - start for _, start, end in jobs)
    window = max(e for _, _, e in jobs) - min(s for _, s, _ in jobs)
    return f"{len(jobs)} jobs: {medians}; {busy / window:.1f} jobs running on average"


def _cpu_line(run: LoopRun) -> str:
    """The gateway's CPU seconds per process over the measured studies, and per study."""
    total = sum(run.cpu.values())
    parts = ", ".join(f"{name} {seconds:.2f}" for name, seconds in sorted(run.cpu.items()))
    return f"gateway CPU {total:.2f} s ({total / len(run.timelines):.2f} s a study): {parts}"


def report(runs: dict[str, LoopRun], peers: dict[str, float], count: int) -> None:
    """Print the figures and their ratios to the peer's."""
    print("| study | gateway, warm | gateway, first after start | storescu -> Orthanc | ratio |")
    print("|---|---|---|---|---|")
    for name in [n for n in ("cr", "ct") if n in runs]:
        run, peer = runs[name], peers[name]
        warm, cold = run.timelines[0].overhead, run.cold.overhead
        print(f"| {name} | {warm:.2f} s | {cold:.2f} s | {peer:.3f} s | {warm / peer:.1f} |")
    if "many" not in runs:
        _breakdowns(runs)
        return
    many, peer = runs["many"], peers["many"]
    ours, theirs = count / many.span * 3600, count / peer * 3600
    print(
        f"\n{count} CR studies at once: gateway {many.span:.2f} s (first send -> last ack), "
        f"{ours:.0f} studies/h; storescu -> Orthanc {peer:.3f} s, {theirs:.0f} studies/h; "
        f"ratio {ours / theirs:.4f}"
    )
    overheads = sorted(t.overhead for t in many.timelines)
    print(
        f"  gateway senders' wall time {many.send_seconds:.2f} s; per-study overhead "
        f"median {statistics.median(overheads):.2f} s, max {overheads[-1]:.2f} s"
    )
    print(f"  {_jobs_line(many)}")
    print(f"  {_cpu_line(many)}")
    for name, run in runs.items():
        for line in run.trouble:
            print(f"  {name}: {line}")
    for model, (calls, seconds) in sorted(many.calls.items()):
        print(f"  {model}: {calls} calls, {seconds:.3f} s summed (queueing included)")
    _breakdowns(runs)


def _breakdowns(runs: dict[str, LoopRun]) -> None:
    """The step-by-step breakdown of the single-study scenarios that ran."""
    for name in [n for n in ("cr", "ct") if n in runs]:
        run = runs[name]
        print(f"\nbreakdown, {name}, warm:\n{breakdown(run.timelines[0])}")
        print(f"    {_cpu_line(run)}")
        for model, (calls, seconds) in sorted(run.calls.items()):
            print(f"    {model}: {calls} calls, {seconds:.3f} s summed (queueing included)")
        print(f"breakdown, {name}, first study after start:\n{breakdown(run.cold)}")


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct-slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument(
        "--scenarios",
        default="cr,ct,many",
        help="comma-separated subset of cr, ct, many (e.g. only many, under a profiler)",
    )
    args = parser.parse_args()
    chosen = args.scenarios.split(",")
    print(machine())
    begun = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        crs = cr_studies(scratch / "cr", args.studies + 3)
        cts = [
            write_series(
                ct_series(args.ct_slices, rows=args.size, cols=args.size, body_part="CHEST"),
                scratch / f"ct{index}",
            )
            for index in range(2)
        ]
        # name: (warm-up study, studies sent at once)
        scenarios = {
            "cr": ([crs[0]], [[crs[1]]]),
            "ct": (cts[0], [cts[1]]),
            "many": ([crs[2]], [[p] for p in crs[3:]]),
        }
        scenarios = {name: s for name, s in scenarios.items() if name in chosen}
        peers = {name: peer_seconds(scratch, name, *s) for name, s in scenarios.items()}
        print(f"peer seconds: {peers}", file=sys.stderr)
        runs = {name: gateway_run(scratch, name, *s) for name, s in scenarios.items()}
    report(runs, peers, args.studies)
    print(f"\nwhole benchmark: {time.perf_counter() - begun:.0f} s; {machine()}")


if __name__ == "__main__":
    main()
