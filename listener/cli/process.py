"""``pacs-ai process PATH... --out DIR``: route, infer and convert local files, no network DICOM.

Users try the gateway on a folder with it; the tests use it too. It reads the files, groups them
by study, plans each study with the same rules as ``serve``, runs every model task (against the
configured endpoints, or the built-in emulator for models without one) and writes the result
objects into DIR, one line per result on stdout. A study or task that fails gives a FAILED line
with its reason and the run goes on with the others (the command then exits non-zero).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from converters.check import checked_bytes
from listener.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    Subparsers,
    add_config_flag,
    read_studies,
    settings_from_args,
)
from listener.errors import GatewayError
from listener.logging import get_logger
from listener.settings import Settings

if TYPE_CHECKING:  # the pipeline's modules load when the command runs: --help stays fast
    from pydicom import Dataset

    from listener.infer.tasks import TaskOutcome
    from listener.route.model import RuleSet

log = get_logger("process")


@dataclass(frozen=True)
class ResultLine:
    """One written result object, or one failed task."""

    study_uid: str
    task: str
    path: Path | None
    description: str


async def _process_study(
    datasets: list[Dataset],
    rules: RuleSet,
    settings: Settings,
    emulator_url: str | None,
    clock: Callable[[], datetime] | None = None,
) -> list[tuple[str, TaskOutcome | GatewayError]]:
    from listener.infer import build_clients
    from listener.infer.tasks import TaskContext, TaskOutcome, run_task
    from listener.route.plan import headers_from_dataset, plan_study
    from listener.settings import MODEL_NAMES

    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    plan = plan_study(rules, [headers_from_dataset(ds) for ds in datasets])
    if plan.discard:
        return []
    async with build_clients(
        settings.models, emulator_url, emulator_key=settings.emulator.key
    ) as clients:
        context = TaskContext(
            clients=clients,
            load=by_uid.__getitem__,
            egress={name: settings.models.get(name).egress for name in MODEL_NAMES},
        )
        if clock is not None:
            context.clock = clock
        outcomes = await asyncio.gather(
            *(run_task(task, context) for task in plan.tasks), return_exceptions=True
        )
    results: list[tuple[str, TaskOutcome | GatewayError]] = []
    for task, outcome in zip(plan.tasks, outcomes, strict=True):
        if isinstance(outcome, GatewayError | TaskOutcome):
            results.append((f"{task.rule}/{task.name}", outcome))
        elif isinstance(outcome, BaseException):
            raise outcome
    return results


def process_paths(
    paths: Sequence[Path],
    out_dir: Path,
    settings: Settings,
    rules: RuleSet,
    clock: Callable[[], datetime] | None = None,
) -> list[ResultLine]:
    """Run the rules' tasks on the studies in ``paths``; write results under ``out_dir``.

    ``clock`` fixes the results' creation time (tests use it for byte-identical re-runs).
    """
    from converters.copied import redact
    from listener.emulator.server import emulator_if_needed

    out_dir.mkdir(parents=True, exist_ok=True)
    lines: list[ResultLine] = []
    with emulator_if_needed(settings) as emulator_url:
        studies, skipped = read_studies(paths)
        for path, reason in skipped:
            log.warning("file_skipped", path=str(path), reason=reason)
        for study_uid, datasets in studies.items():
            try:
                outcomes = asyncio.run(
                    _process_study(datasets, rules, settings, emulator_url, clock)
                )
            except Exception as exc:  # one study's failure must not stop the others
                reason = redact(f"{type(exc).__name__}: {exc}", datasets)
                log.error("study_failed", study=study_uid, reason=reason)
                lines.append(ResultLine(study_uid, "-", None, f"FAILED: {reason}"))
                continue
            for task, outcome in outcomes:
                if isinstance(outcome, GatewayError):
                    lines.append(ResultLine(study_uid, task, None, f"FAILED: {outcome}"))
                    continue
                for obj in outcome.objects:
                    path = out_dir / f"{obj.SOPInstanceUID}.dcm"
                    path.write_bytes(checked_bytes(obj))  # the bytes the gate checked
                    text = f"{obj.Modality} {obj.get('SeriesDescription', '')}"
                    if outcome.top_label:
                        text += f" top label: {outcome.top_label}"
                    lines.append(ResultLine(study_uid, task, path, text))
    return lines


def add_process(sub: Subparsers) -> None:
    """Declare ``process``."""
    parser = sub.add_parser(
        "process", help="run route, infer and convert on local files; write results to --out"
    )
    parser.add_argument("paths", nargs="+", type=Path, help="DICOM files or folders")
    parser.add_argument("--out", type=Path, required=True, help="folder for the result objects")
    parser.add_argument("--rules", type=Path, help="rules file (default: the embedded rules)")
    add_config_flag(parser)
    parser.set_defaults(func=cmd_process)


def cmd_process(args: argparse.Namespace) -> int:
    """Print one line per result (or failed task); exit 1 when a task failed."""
    from listener.logging import configure_logging
    from listener.route.load import effective_rules

    settings = settings_from_args(args)
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
