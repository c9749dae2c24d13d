"""What ``pacs-ai serve`` says about its configuration when it starts: one log event per
destination, one per model (the real endpoint it calls, or the emulator), where results go, and
where the journal is (its URL without the password).

A typo in a destination's variable or a missing endpoint otherwise shows only when results never
reach the PACS; these lines let an operator check the configuration in the first second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from listener.route.model import RuleSet
from listener.settings import MODEL_NAMES, Settings


@dataclass(frozen=True)
class SummaryLine:
    """One start-up log event: its name, its level and its fields."""

    event: str
    level: str
    fields: dict[str, Any]


def _endpoint(url: str) -> str:
    """The scheme, host and path of an endpoint: never a query string (it may carry a key)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


def startup_summary(
    settings: Settings, rules: RuleSet, emulator_url: str | None
) -> list[SummaryLine]:
    """The start-up lines for ``settings`` and the effective ``rules``."""
    lines: list[SummaryLine] = []
    for name, destination in sorted(rules.destinations.items()):
        lines.append(
            SummaryLine(
                "destination_configured",
                "info",
                {"destination": name, "peer": destination.describe()},
            )
        )
    used = {
        "medimageinsight" if task.model == "adapter" else task.model  # an adapter embeds with it
        for rule in rules.rules
        for task in rule.tasks
    }
    for model in MODEL_NAMES:
        config = settings.models.get(model)
        fields: dict[str, Any] = {"model": model, "used_by_rules": model in used}
        if config.endpoint:
            fields |= {"source": "endpoint", "endpoint": _endpoint(config.endpoint)}
            fields |= {"auth": config.auth, "key_set": config.key is not None}
            lines.append(SummaryLine("model_configured", "info", fields))
        else:
            fields |= {"source": "emulator", "endpoint": emulator_url}
            fields["notice"] = "emulator: synthetic answers, not a clinical model"
            level = "warning" if model in used else "info"
            lines.append(SummaryLine("model_configured", level, fields))
    results_dir = settings.data_dir / "results"
    targets = sorted({dest for rule in rules.rules if rule.tasks for dest in rule.results_to})
    if targets:
        lines.append(
            SummaryLine(
                "results_destinations",
                "info",
                {"destinations": targets, "kept_under": str(results_dir)},
            )
        )
    else:
        lines.append(
            SummaryLine(
                "results_kept_locally",
                "warning",
                {
                    "message": f"results kept only under {results_dir}: no destination",
                    "kept_under": str(results_dir),
                },
            )
        )
    database = settings.journal_database  # its str() hides the password
    lines.append(
        SummaryLine(
            "journal_database", "info", {"engine": str(database.engine), "url": str(database)}
        )
    )
    lines.append(_spool_line(settings))
    return lines


def _spool_line(settings: Settings) -> SummaryLine:
    """Where received instances are kept: the local folder, and the bucket when there is
    one (whether credentials are set, never their values)."""
    fields: dict[str, Any] = {"local": str(settings.spool_dir)}
    if settings.spool_url is not None:
        s3 = settings.s3
        fields |= {"bucket_url": settings.spool_url, "endpoint": s3.endpoint_url or "AWS"}
        fields |= {"ack": s3.ack, "key_set": s3.secret_access_key is not None}
    return SummaryLine("spool_configured", "info", fields)


def log_startup_summary(log: Any, lines: list[SummaryLine]) -> None:
    """Write the lines to a structlog logger."""
    for line in lines:
        getattr(log, line.level)(line.event, **line.fields)
