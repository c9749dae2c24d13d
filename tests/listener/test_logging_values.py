"""configure_logging keeps pydicom and highdicom from quoting source values in the log."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator

import pydicom.config
import pytest
from pydicom import Dataset

from listener.logging import configure_logging

BIRTH_DATE = "1945-12-31"


class Collect(logging.Handler):
    """Keeps the messages of the records it is given."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def collected() -> Iterator[Collect]:
    """configure_logging applied, a handler on the root logger; pydicom's settings restored."""
    reading = pydicom.config.settings.reading_validation_mode
    pydicom_filters = list(logging.getLogger("pydicom").filters)
    highdicom_level = logging.getLogger("highdicom").level
    handler = Collect()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with warnings.catch_warnings():
            configure_logging("info", "json")
            yield handler
    finally:
        root.removeHandler(handler)
        pydicom.config.settings.reading_validation_mode = reading
        logging.getLogger("pydicom").filters[:] = pydicom_filters
        logging.getLogger("highdicom").setLevel(highdicom_level)


def test_an_invalid_source_value_is_not_logged(collected: Collect) -> None:
    """Setting an invalid DA (as reading one does) logs and warns nothing that quotes it."""
    with warnings.catch_warnings(record=True) as shown:
        Dataset().PatientBirthDate = BIRTH_DATE
    assert not [line for line in collected.lines if BIRTH_DATE in line]
    assert not [w for w in shown if BIRTH_DATE in str(w.message)]
    assert logging.getLogger("highdicom").getEffectiveLevel() == logging.ERROR


def test_pydicom_validation_messages_lose_the_value(collected: Collect) -> None:
    """A validation message pydicom still logs keeps its reason and loses the value."""
    logging.getLogger("pydicom").warning("Invalid value for VR PN: %r.", "A^B^C^D^E^F")
    assert collected.lines[-1] == "Invalid value for VR PN: [value removed]"
