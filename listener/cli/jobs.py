"""Subcommands around the pipeline: ``process`` (local files), ``jobs`` (list, show, retry, cancel).

Registered in :mod:`listener.cli.main` like every other command: an ``add_<command>`` function
declares the arguments and binds the function that runs it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from listener.timing import utc_text

EXIT_OK, EXIT_FAILED = 0, 1


def _settings(args: argparse.Namespace) -> Any:
    from listener.settings import load_settings

    overrides: dict[str, Any] = {}
    if getattr(args, "data_dir", None) is not None:
        overrides["data_dir"] = args.data_dir
    if getattr(args, "rules", None) is not None:
        overrides["rules_file"] = args.rules
    return load_settings(getattr(args, "config", None), **overrides)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML settings file (see config/)")
    parser.add_argument("--data-dir", type=Path, help="folder of the spool and the journal")


# --- process -------------------------------------------------------------------------------


def add_process(sub: Any) -> None:
    """Declare ``pacs-ai process`` and its arguments."""
    parser = sub.add_parser(
        "process", help="run route, infer and convert on local files; write results to --out"
    )
    parser.add_argument("paths", nargs="+", type=Path, help="DICOM files or folders")
    parser.add_argument("--out", type=Path, required=True, help="folder for the result objects")
    parser.add_argument("--rules", type=Path, help="rules file (default: the embedded plan)")
    parser.add_argument("--config", type=Path, help="YAML settings file (see config/)")
    parser.set_defaults(func=cmd_process)


def cmd_process(args: argparse.Namespace) -> int:
    """Run ``pacs-ai process``; the exit status."""
    from listener.cli.process import process_paths
    from listener.logging import configure_logging
    from listener.route.load import effective_rules

    settings = _settings(args)
    configure_logging(settings.log_level, settings.log_format)
    lines = process_paths(args.paths, args.out, settings, effective_rules(settings))
    failed = 0
    for line in lines:
        where = line.path if line.path else "-"
        print(f"{line.study_uid}\t{line.task}\t{where}\t{line.description}")
        failed += line.path is None
    if not lines:
        print("no result: no study matched a rule with a model task", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


# --- similar -------------------------------------------------------------------------------


def add_similar(sub: Any) -> None:
    """Declare ``pacs-ai similar`` and its arguments."""
    parser = sub.add_parser(
        "similar", help="instances most similar to one (MedImageInsight embeddings)"
    )
    parser.add_argument("sop_instance_uid")
    parser.add_argument("--top", type=int, default=5)
    _common(parser)
    parser.set_defaults(func=cmd_similar)


def cmd_similar(args: argparse.Namespace) -> int:
    """Run ``pacs-ai similar``; the exit status."""
    from listener.store.embeddings import EmbeddingStore

    store = EmbeddingStore(_settings(args).journal_path)
    try:
        neighbours = store.similar(args.sop_instance_uid, args.top)
    except KeyError:
        print(f"pacs-ai: no embedding for {args.sop_instance_uid}", file=sys.stderr)
        return EXIT_FAILED
    print("SIMILARITY\tSOP INSTANCE\tSTUDY")
    for neighbour in neighbours:
        print(f"{neighbour.similarity:.4f}\t{neighbour.sop_instance_uid}\t{neighbour.study_uid}")
    return EXIT_OK


# --- jobs ----------------------------------------------------------------------------------


def add_jobs(sub: Any) -> None:
    """Declare ``pacs-ai jobs`` and its actions."""
    parser = sub.add_parser("jobs", help="list, show, retry or cancel pipeline jobs")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="jobs and outbox dead letters")
    listing.add_argument("--state", help="SCHEDULED, IN PROGRESS, COMPLETED or CANCELED")
    listing.add_argument("--json", action="store_true")
    _common(listing)
    for name, text in (
        ("show", "one job with its timeline"),
        ("retry", "rerun a canceled job as a new job and resubmit its dead-lettered sends"),
        ("cancel", "cancel a job that has not finished"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("job_id", type=int)
        _common(action)
    parser.set_defaults(func=cmd_jobs)


def _stamp(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return utc_text(epoch)


def cmd_jobs(args: argparse.Namespace) -> int:
    """Run ``pacs-ai jobs ACTION``; the exit status."""
    from listener.store.jobs import JobState, JobStore
    from listener.store.outbox import Outbox

    settings = _settings(args)
    jobs = JobStore(settings.journal_path)
    outbox = Outbox(settings.journal_path)
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
        "rule": job.rule,
        "task": job.task,
        "model": job.payload.get("model"),
        "priority": job.priority,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "last_error": job.last_error,
        "waiting_for": job.waiting_for,
        "retry_of": job.retry_of,
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
