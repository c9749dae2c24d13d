"""Structured logging with structlog: JSON when not on a terminal, readable console otherwise.

Events have stable snake_case names and carry bound context (association, calling AE, study UID,
job). Patient-identifying attributes and secrets never go into a log event: the
:func:`drop_phi` processor removes them even if a caller passes them by mistake.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings
from collections.abc import MutableMapping
from typing import Any, Literal

import pydicom.config
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
    quiet_dicom_libraries()


def quiet_dicom_libraries() -> None:
    """Keep the DICOM libraries from writing source values into the log.

    pydicom validates a value whenever a data element is made, read from a file or set in
    code (pydicom 3.0 uses its reading validation mode for both), and by default logs and warns
    about an invalid one with the value itself ("Invalid value for VR DA: '1945-12-31'"): a birth
    date or a malformed patient name in the log of every process that touches the file. That
    validation is off: values that do not conform are the sender's, :mod:`converters.copied` and
    the result gate decide what a result copies, and dciodvfy checks what we write in the tests.
    Any such message that still comes (explicit validation) loses the value
    (:class:`RedactValues`), and its duplicate Python warning is not shown. highdicom logs, at
    info and warning, messages that name source attributes while it copies them; only its
    errors are kept.
    """
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom_logger = logging.getLogger("pydicom")
    if not any(isinstance(f, RedactValues) for f in pydicom_logger.filters):
        pydicom_logger.addFilter(RedactValues())
    warnings.filterwarnings("ignore", message="Invalid value for VR", category=UserWarning)
    logging.getLogger("highdicom").setLevel(logging.ERROR)


class RedactValues(logging.Filter):
    """Cut the value out of pydicom's "Invalid value for VR XX: 'value'." messages."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _INVALID_VALUE.sub(r"\1 [value removed]", message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


_INVALID_VALUE = re.compile(r"(Invalid value for VR \w+:).*", re.DOTALL)


def get_logger(name: str, **context: Any) -> Any:
    """Return a structlog logger with the component name and any bound context."""
    return structlog.get_logger(component=name, **context)
