"""``pacs-ai jobs list|show|retry|cancel``: the pipeline's jobs and the outbox's dead letters.

Reading commands never create a journal: with none at the data folder given they fail naming
``--data-dir``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from listener.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    Subparsers,
    add_config_flag,
    add_data_dir_flag,
    existing_journal,
    settings_from_args,
)
from listener.store.jobs import JobState
from listener.timing import utc_text


def _job_state(text: str) -> str:
    """A job state as typed on the command line: any case, ``_`` for the space."""
    return text.strip().upper().replace("_", " ")


def add_jobs(sub: Subparsers) -> None:
    """Declare ``jobs`` and its actions."""
    parser = sub.add_parser("jobs", help="list, show, retry or cancel pipeline jobs")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="jobs and outbox dead letters")
    listing.add_argument(
        "--state",
        type=_job_state,
        choices=[state.value for state in JobState],
        help="only jobs in this UPS state (PS3.4 CC.1.1)",
    )
    listing.add_argument("--json", action="store_true", help="one JSON document")
    add_config_flag(listing)
    add_data_dir_flag(listing)
    for name, text in (
        ("show", "one job with its timeline"),
        ("retry", "rerun a canceled job as a new job and resubmit its dead-lettered sends"),
        ("cancel", "cancel a job that has not finished"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("job_id", type=int)
        add_config_flag(action)
        add_data_dir_flag(action)
    parser.set_defaults(func=cmd_jobs)


def _stamp(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return utc_text(epoch)


def cmd_jobs(args: argparse.Namespace) -> int:
    """Run one ``jobs`` action on the journal at the data folder."""
    from listener.store.jobs import JobStore
    from listener.store.outbox import Outbox

    settings = settings_from_args(args)
    journal = existing_journal(settings)
    jobs = JobStore(journal)
    outbox = Outbox(journal)
    now = time.time()
    if args.action == "list":
        state = JobState(args.state) if args.state else None
        rows = jobs.list_jobs(state=state)
        dead = outbox.dead_letters()
        if args.json:
            print(
                json.dumps(
                    {
                        "jobs": [_job_dict(job) for job in rows],
                        "dead_letters": [_entry_dict(entry) for entry in dead],
                    },
                    indent=2,
                )
            )
            return EXIT_OK
        print("ID\tSTATE\tATTEMPTS\tRULE/TASK\tSTUDY\tUPDATED\tLAST ERROR")
        for job in rows:
            print(
                f"{job.id}\t{job.state.value}\t{job.attempts}/{job.max_attempts}\t"
                f"{job.rule}/{job.task}\t{job.study_uid}\t{_stamp(job.updated_at)}\t"
                f"{job.last_error or ''}"
            )
        if dead:
            print("\nDEAD LETTERS (sends that failed permanently)")
            print("ENTRY\tJOB\tDESTINATION\tSOP INSTANCE\tREASON")
            for entry in dead:
                print(
                    f"{entry.id}\t{entry.job_id}\t{entry.destination}\t"
                    f"{entry.sop_instance_uid}\t{entry.last_error or ''}"
                )
        return EXIT_OK
    found = jobs.get(args.job_id)
    if found is None:
        print(f"pacs-ai: no job {args.job_id}", file=sys.stderr)
        return EXIT_FAILED
    job = found
    if args.action == "show":
        print(json.dumps(_job_dict(job), indent=2))
        for at, state_name, detail in jobs.events(job.id):
            print(f"{_stamp(at)}\t{state_name}\t{detail or ''}")
        for entry in outbox.entries(job_id=job.id):
            print(f"send\t{entry.destination}\t{entry.sop_instance_uid}\t{entry.state}")
        return EXIT_OK
    if args.action == "retry":
        from listener.store.retry import retry_job

        outcome = retry_job(jobs, outbox, job.id, now)
        if outcome is None or not outcome.done:
            print(f"pacs-ai: job {job.id} ({job.state.value}): nothing to retry", file=sys.stderr)
            return EXIT_FAILED
        again = f"retried as job {outcome.new_job_id}" if outcome.new_job_id else "not rerun"
        print(f"job {job.id}: {again}; sends resubmitted: {outcome.resubmitted}")
        return EXIT_OK
    canceled = jobs.cancel(job.id, now)
    print(f"job {job.id}: canceled={canceled}")
    return EXIT_OK if canceled else EXIT_FAILED


def _job_dict(job: Any) -> dict[str, Any]:
    return {
        "id": job.id,
        "state": job.state.value,
        "study_uid": job.study_uid,
        "generation": job.generation,
        "waiting_for": job.waiting_for,
        "retry_of": job.retry_of,
        "rule": job.rule,
        "task": job.task,
        "model": job.payload.get("model"),
        "priority": job.priority,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "last_error": job.last_error,
        "outputs": job.outputs,
        "created": _stamp(job.created_at),
        "updated": _stamp(job.updated_at),
    }


def _entry_dict(entry: Any) -> dict[str, Any]:
    return {
        "id": entry.id,
        "job_id": entry.job_id,
        "destination": entry.destination,
        "sop_instance_uid": entry.sop_instance_uid,
        "state": str(entry.state),
        "last_error": entry.last_error,
    }
