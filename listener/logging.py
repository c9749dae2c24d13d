"""Structured logging with structlog: JSON when not on a terminal, readable console otherwise.

Events have stable snake_case names and carry bound context (association, calling AE, study UID,
job). Patient-identifying attributes and secrets never go into a log event: the
:func:`drop_phi` processor removes them even if a caller passes them by mistake.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

# Keys that must never be logged (PS3.15 Annex E basic profile identifiers, plus secrets).
FORBIDDEN_KEYS = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "patient_name",
        "patient_id",
        "patient_birth_date",
        "OtherPatientIDs",
        "PatientAddress",
        "key",
        "api_key",
        "token",
        "authorization",
        "password",
    }
)


def drop_phi(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Remove any patient identifier or secret that slipped into an event."""
    for key in FORBIDDEN_KEYS.intersection(event_dict):
        event_dict[key] = "[removed]"
    return event_dict


def configure_logging(
    level: str = "info", fmt: Literal["auto", "json", "console"] = "auto"
) -> None:
    """Configure structlog (and the stdlib loggers of our libraries) once per process."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            drop_phi,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # pynetdicom logs every PDU at debug and dataset contents at debug; keep it at warning.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def get_logger(name: str, **context: Any) -> Any:
    """Return a structlog logger with the component name and any bound context."""
    return structlog.get_logger(component=name, **context)
