"""What every ``pacs-ai`` command shares: the exit statuses, the parser class, the common flags,
settings from flags, the journal a command reads, and reading DICOM files into studies.

Exit statuses, one set for every command:

- :data:`EXIT_OK` (0): done;
- :data:`EXIT_FAILED` (1): the command ran and something failed (a send, a job action, no
  journal where one was expected, no DICOM file found);
- :data:`EXIT_USAGE` (2): a bad argument, setting or rules file; argparse uses 2 for its own
  errors, so every "you asked for something impossible" answer has one status.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from listener.settings import Settings, load_settings
from listener.settings.database import DatabaseUrl

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

Subparsers = Any  # argparse's _SubParsersAction is private; its type is not worth importing


class CommandError(Exception):
    """A command cannot do what it was asked; the message says why. Exit status 1."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` for options with a real default; flags whose default is "not
    given" (None) or off (False) say nothing, their help text names the setting instead."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or not action.option_strings:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line naming the argument, exit status 2, and whose
    help shows the defaults. Subparsers inherit the class (argparse passes ``type(self)``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def setting_default(name: str) -> str:
    """The embedded default of a top-level setting, for help texts."""
    field = Settings.model_fields[name]
    value = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
    return str(value)


def port_number(text: str) -> int:
    """A TCP port (1-65535): an argparse ``type``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1-65535, got {value}")
    return value


def listen_port(text: str) -> int:
    """A port to listen on: 1-65535, or 0 for no plain DICOM listener (TLS only): an argparse
    ``type``."""
    if text.strip() == "0":
        return 0
    return port_number(text)


def positive_int(text: str) -> int:
    """An integer of at least 1: an argparse ``type``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    """Declare ``--config``, the YAML settings file."""
    parser.add_argument("--config", type=Path, help="YAML settings file (see config/)")


def add_data_dir_flag(parser: argparse.ArgumentParser) -> None:
    """Declare ``--data-dir``, the folder of the spool and the journal."""
    parser.add_argument(
        "--data-dir",
        type=Path,
        help=f"folder of the spool and the journal (setting data_dir, default "
        f"{setting_default('data_dir')})",
    )


def settings_from_args(args: argparse.Namespace, **overrides: Any) -> Settings:
    """Settings from ``--config`` and the common flags present on ``args`` (None: not given)."""
    flags = {
        "data_dir": getattr(args, "data_dir", None),
        "rules_file": getattr(args, "rules", None),
    }
    flags.update(overrides)
    return load_settings(getattr(args, "config", None), **flags)


def existing_journal(settings: Settings) -> DatabaseUrl:
    """The journal a reading command works on; CommandError when its SQLite file is missing (a
    wrong ``--data-dir``, or another working directory): reading never creates an empty one. A
    PostgreSQL journal (``database_url``) is used as it is."""
    database = settings.journal_database
    path = database.path
    if path is None:
        return database
    if not path.is_file():
        raise CommandError(
            f"no journal at {path}: give the gateway's data folder with --data-dir"
            " (setting data_dir)"
        )
    return database


def dicom_files(paths: Iterable[Path]) -> list[Path]:
    """The files named, and every file under the folders named, in a stable order."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.is_file())
        else:
            out.append(path)
    return out


def read_studies(
    paths: Iterable[Path], *, headers_only: bool = False
) -> tuple[dict[str, list[Dataset]], list[tuple[Path, str]]]:
    """Readable DICOM files under ``paths`` grouped by Study Instance UID, and the files skipped
    with why (not DICOM, unreadable, or without a study or instance UID).

    ``headers_only`` stops before the pixel data (``rules test`` needs only the attributes).
    """
    studies: dict[str, list[Dataset]] = {}
    skipped: list[tuple[Path, str]] = []
    for path in dicom_files(paths):
        try:
            ds = dcmread(path, stop_before_pixels=headers_only)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            skipped.append((path, f"not readable as DICOM: {exc}"))
            continue
        if "StudyInstanceUID" not in ds or "SOPInstanceUID" not in ds:
            skipped.append((path, "no study or instance UID"))
            continue
        studies.setdefault(str(ds.StudyInstanceUID), []).append(ds)
    return studies, skipped
