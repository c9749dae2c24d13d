"""The kill trial of the distributed mode, repeated: HAProxy in front of two receive hosts, two
work hosts, PostgreSQL (a throwaway cluster of the Debian server), the spool on S3 (SeaweedFS
``weed mini``), Orthanc as the PACS. In each trial a work host is killed (-9) while it holds jobs
whose model calls are in flight and a receive host is killed between two instances of an
association (``tests/killtrial.py`` says what happens and what is counted). Prints one row per
trial and the totals, for ``bench/README.md``.

    .venv/bin/python bench/kill_trials.py --trials 10
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import traceback
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from killtrial import TrialOutcome, run_kill_trial  # noqa: E402
from peers import run_orthanc  # noqa: E402
from pgserver import database_setting, run_postgres  # noqa: E402
from s3peer import run_seaweedfs  # noqa: E402


def _holds(outcome: TrialOutcome) -> bool:
    return (
        outcome.worker_recovered
        and outcome.in_shared_spool == outcome.acknowledged
        and outcome.results_in_pacs == outcome.results_expected
        and outcome.jobs_not_completed == 0
        and outcome.duplicate_jobs == 0
        and outcome.sends_not_sent == 0
        and outcome.distinct_results_sent == outcome.results_expected
    )


def main() -> None:
    """Run ``--trials`` kill trials, each with a fresh database, key prefix and Orthanc."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    os.environ["TCP_NODELAY"] = "1"
    fields = [f.name for f in dataclasses.fields(TrialOutcome)]
    print("| trial | " + " | ".join(fields) + " | all hold |")
    print("|---" * (len(fields) + 2) + "|")
    held = 0
    tmp = tempfile.mkdtemp(prefix="kill-trials-")
    with run_postgres() as postgres, run_seaweedfs(Path(tmp) / "seaweedfs") as seaweedfs:
        for trial in range(1, args.trials + 1):
            work = Path(tmp) / f"trial-{trial}"
            prefix = uuid.uuid4().hex
            database = database_setting(postgres.new_database())
            env = {f"PACSAI_{k.upper()}": v for k, v in database.items()}
            env |= seaweedfs.env(prefix)
            try:
                with run_orthanc(work / "orthanc") as pacs:
                    outcome = run_kill_trial(
                        work, pacs, env, database, (seaweedfs, seaweedfs.spool_url(prefix))
                    )
            except Exception as exc:  # a trial that could not finish is a failed trial
                traceback.print_exc()
                print(f"| {trial} | failed: {type(exc).__name__}: {exc} |", flush=True)
                continue
            ok = _holds(outcome)
            held += ok
            values = [str(getattr(outcome, name)) for name in fields]
            print(f"| {trial} | " + " | ".join(values) + f" | {ok} |", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{held} of {args.trials} trials: every point held")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
