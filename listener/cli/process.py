"""``pacs-ai process PATH... --out DIR``: route, infer and convert local files, no network DICOM.

Users try the gateway on a folder with it; the tests use it too. It reads the files, groups them
by study, plans each study with the same rules as ``serve``, runs every model task (against the
configured endpoints, or the built-in emulator for models without one) and writes the result
objects into DIR, one line per result on stdout. A study or task that fails gives a FAILED line
with its reason and the run goes on with the others (the command then exits non-zero).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from converters.copied import redact
from listener.cli.dicom import dicom_files
from listener.emulator.server import emulator_if_needed
from listener.errors import GatewayError
from listener.infer import build_clients
from listener.infer.tasks import TaskContext, TaskOutcome, run_task
from listener.logging import get_logger
from listener.route.model import RuleSet
from listener.route.plan import headers_from_dataset, plan_study
from listener.settings import Settings

log = get_logger("process")


def read_studies(paths: Sequence[Path]) -> dict[str, list[Dataset]]:
    """Readable DICOM files grouped by Study Instance UID; unreadable files are logged, skipped."""
    studies: dict[str, list[Dataset]] = {}
    for path in dicom_files(list(paths)):
        try:
            ds = dcmread(path)
        except (InvalidDicomError, OSError, ValueError) as exc:
            log.warning("file_skipped", path=str(path), reason=str(exc))
            continue
        if "StudyInstanceUID" not in ds or "SOPInstanceUID" not in ds:
            log.warning("file_skipped", path=str(path), reason="no study or instance UID")
            continue
        studies.setdefault(str(ds.StudyInstanceUID), []).append(ds)
    return studies


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
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    plan = plan_study(rules, [headers_from_dataset(ds) for ds in datasets])
    if plan.discard:
        return []
    async with build_clients(
        settings.models, emulator_url, emulator_key=settings.emulator.key
    ) as clients:
        context = TaskContext(clients=clients, load=by_uid.__getitem__)
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
    out_dir.mkdir(parents=True, exist_ok=True)
    lines: list[ResultLine] = []
    with emulator_if_needed(settings) as emulator_url:
        for study_uid, datasets in read_studies(paths).items():
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
                    obj.save_as(path, enforce_file_format=True)
                    text = f"{obj.Modality} {obj.get('SeriesDescription', '')}"
                    if outcome.top_label:
                        text += f" top label: {outcome.top_label}"
                    lines.append(ResultLine(study_uid, task, path, text))
    return lines
