"""Peak memory of one job process running a classification on a 2,000-instance study.

    .venv/bin/python bench/job_memory.py --instances 2000 --size 512

Sources: a synthetic CT series (tests/factory.py) of ``--instances`` slices of ``--size``²
16-bit pixels, written into a data folder's spool and journal as the receiver would, and one
MedImageInsight classification job over every instance (what a classification rule schedules).
The job runs in a fresh process (``python -c``: claim, ``JobRunner.run_job`` against the
built-in emulator over loopback HTTP, the emulator in the parent process as ``pacs-ai serve``
runs it, outside its job runners); the figure is the job process's peak RSS (``ru_maxrss``)
when the job has completed.

``--eager`` makes the job read every input instance whole, pixels included (the loader before
the job stage deferred large elements): the peer figure.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import factory
from spooled import schedule_classification

from listener.emulator.server import start_emulator
from listener.pipeline import build_pipeline
from listener.settings import EmulatorSettings, Settings
from listener.store.journal import InstanceRecord

JOB = """
import asyncio, resource, sys, time
from pydicom import dcmread
from listener.infer import build_clients
from listener.pipeline import build_pipeline
from listener.settings import Settings
from listener.store.journal import instance_paths

pipeline = build_pipeline(Settings(data_dir=sys.argv[1]))
eager = sys.argv[2] == "eager"

async def main():
    async with build_clients(pipeline.settings.models, sys.argv[3]) as clients:
        job = pipeline.jobs.claim("bench:1", time.time(), 600)
        context = pipeline.runner.context(clients, job.study_uid)
        if eager:
            paths = instance_paths(pipeline.journal, pipeline.settings.spool_dir, job.study_uid)
            context.load = lambda uid: dcmread(paths[uid])
        started = time.monotonic()
        await pipeline.runner.run_job(job, context)
        return job.id, time.monotonic() - started

job_id, seconds = asyncio.run(main())
state = pipeline.jobs.get(job_id).state.value
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{state} {peak_mb:.0f} {seconds:.1f}")
"""


def prepare(data_dir: Path, instances: int, size: int) -> None:
    """Spool and journal one study of ``instances`` slices and schedule its classification."""
    pipeline = build_pipeline(Settings(data_dir=data_dir))
    study_uid = series_uid = None
    uids = []
    for start in range(0, instances, 100):  # in batches: the generator holds its pixels
        batch = factory.ct_series(
            min(100, instances - start),
            rows=size,
            cols=size,
            study_uid=study_uid,
            series_uid=series_uid,
        )
        study_uid, series_uid = str(batch[0].StudyInstanceUID), str(batch[0].SeriesInstanceUID)
        for n, ds in enumerate(batch):
            ds.InstanceNumber = start + n + 1
            ds.ImagePositionPatient = [0, 0, -(start + n) * 2.5]
            relative = f"{study_uid}/{series_uid}/{ds.SOPInstanceUID}.dcm"
            path = pipeline.settings.spool_dir / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            pipeline.journal.record_instance(
                InstanceRecord(
                    str(ds.SOPInstanceUID),
                    str(ds.SOPClassUID),
                    study_uid,
                    series_uid,
                    "CT",
                    str(ds.file_meta.TransferSyntaxUID),
                    relative,
                    path.stat().st_size,
                    time.time(),
                    0,
                ),
                quiet_period_s=10.0,
            )
            uids.append(str(ds.SOPInstanceUID))
    assert study_uid is not None
    schedule_classification(
        pipeline, study_uid, uids, labels=("abdominal CT", "head CT", "chest x-ray"), rule="bench"
    )
    pipeline.close()


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--eager", action="store_true", help="read every instance whole")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data_dir = Path(folder) / "var"
        prepare(data_dir, args.instances, args.size)
        mode = "eager" if args.eager else "deferred"
        emulator = start_emulator(EmulatorSettings())  # in this process, as serve runs it
        try:
            out = subprocess.run(
                [sys.executable, "-c", JOB, str(data_dir), mode, emulator.url],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()[-3:]
        finally:
            emulator.stop()
        state, peak_mb, seconds = out
        print(
            f"{args.instances} instances of {args.size}x{args.size}, {mode} loading: "
            f"job {state}, peak RSS {peak_mb} MB, {seconds} s"
        )


if __name__ == "__main__":
    main()
