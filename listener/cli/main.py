"""The ``pacs-ai`` command line: :func:`build_parser` and :func:`main`.

Each group of commands lives in its own module with an ``add_<command>`` function that declares
the arguments and binds the function that runs it as ``func``:

- ``serve``: :mod:`listener.cli.serve`;
- ``echo``, ``send``, ``studies``: :mod:`listener.cli.dicom`;
- ``rules check|test``: :mod:`listener.cli.rules`;
- ``process``: :mod:`listener.cli.process`;
- ``jobs list|show|retry|cancel``: :mod:`listener.cli.jobs`;
- ``similar``: :mod:`listener.cli.similar`;
- ``emulator``: :mod:`listener.emulator.command` (it also runs as ``python -m listener.emulator``).

Heavy modules are imported inside the command functions so that ``pacs-ai --help`` stays fast.
Settings are built once with :func:`listener.settings.load_settings`. Exit statuses are those of
:mod:`listener.cli.common`: a bad argument, setting or rules file ends the command with one line
naming it and status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from listener.cli.adapter import add_adapter
from listener.cli.audit import add_audit
from listener.cli.common import EXIT_FAILED, EXIT_USAGE, CommandError, Parser, Subparsers
from listener.cli.dicom import add_echo, add_send, add_studies
from listener.cli.drift import add_drift
from listener.cli.jobs import add_jobs
from listener.cli.process import add_process
from listener.cli.rules import add_rules
from listener.cli.serve import add_serve
from listener.cli.similar import add_similar
from listener.emulator.command import add_emulator
from listener.errors import ConfigError
from listener.store.db import DatabaseUnavailableError

ADDERS: list[Callable[[Subparsers], None]] = [
    add_serve,
    add_echo,
    add_send,
    add_studies,
    add_rules,
    add_audit,
    add_emulator,
    add_process,
    add_jobs,
    add_similar,
    add_adapter,
    add_drift,
]


def build_parser() -> argparse.ArgumentParser:
    """The ``pacs-ai`` parser with every subcommand in :data:`ADDERS`."""
    parser = Parser(
        prog="pacs-ai",
        description="DICOM gateway between a PACS and hosted medical imaging models.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in ADDERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand and return its exit status (see :mod:`listener.cli.common`)."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        # ``send HOST PORT --aec X PATH...``: argparse gives a positional's words after an option
        # back as extras; they are more paths. Anything else unknown is an error as usual.
        if (
            extra
            and getattr(args, "command", None) == "send"
            and not any(word.startswith("-") for word in extra)
        ):
            args.target += extra
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # --help, or a bad argument (already reported on one line)
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        return EXIT_USAGE
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        print(f"pacs-ai: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (CommandError, DatabaseUnavailableError) as exc:
        print(f"pacs-ai: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return result


if __name__ == "__main__":
    sys.exit(main())
