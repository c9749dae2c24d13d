"""The ``pacs-ai`` command line: one small function per subcommand.

Each subcommand has an ``_add_<command>`` function that declares its arguments and binds its
``_cmd_<command>`` function as ``func``; :func:`build_parser` calls them in turn. Heavy modules are
imported inside the command functions so that ``pacs-ai --help`` stays fast. Settings are built
once with :func:`listener.settings.load_settings`; a bad setting ends the command with a one-line
message naming it and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from listener.cli.jobs import add_jobs, add_process, add_similar
from listener.cli.rules import add_rules
from listener.emulator.command import add_emulator
from listener.errors import ConfigError
from listener.settings import Settings, load_settings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2

Subparsers = Any  # argparse's _SubParsersAction is private; its type is not worth importing


def _add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML settings file (see config/)")


def _add_data_dir_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, help="folder of the spool and the journal")


def settings_from_args(args: argparse.Namespace, **overrides: Any) -> Settings:
    """Settings from ``--config`` and the common flags present on ``args`` (None: not given)."""
    flags = {
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "ae_titles": getattr(args, "ae_title", None),
        "data_dir": getattr(args, "data_dir", None),
        "quiet_period_s": getattr(args, "quiet_period", None),
    }
    flags.update(overrides)
    return load_settings(getattr(args, "config", None), **flags)


# --- serve ---------------------------------------------------------------------------------


def _add_serve(sub: Subparsers) -> None:
    parser = sub.add_parser("serve", help="receive studies and run the pipeline")
    _add_config_flag(parser)
    parser.add_argument("--host", help="address to listen on")
    parser.add_argument("--port", type=int, help="DICOM port")
    parser.add_argument(
        "--ae-title", action="append", help="AE title to answer to (repeat for several)"
    )
    _add_data_dir_flag(parser)
    parser.add_argument("--quiet-period", type=float, help="seconds without a new instance")
    parser.add_argument(
        "--receivers", type=int, help="number of receive processes sharing the port"
    )
    parser.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    from listener.logging import configure_logging
    from listener.serve.supervisor import serve

    settings = settings_from_args(args, receive_processes=args.receivers)
    configure_logging(settings.log_level, settings.log_format)
    return serve(settings)


# --- echo ----------------------------------------------------------------------------------


def _add_scu_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--aet", default="PACSAI-SCU", help="our (calling) AE title")
    parser.add_argument("--aec", default="PACSAI", help="the peer's (called) AE title")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per network step")


def _add_echo(sub: Subparsers) -> None:
    parser = sub.add_parser("echo", help="C-ECHO a DICOM peer")
    _add_scu_flags(parser)
    parser.set_defaults(func=_cmd_echo)


def _cmd_echo(args: argparse.Namespace) -> int:
    from listener.cli.dicom import echo

    ok, message = echo(args.host, args.port, aet=args.aet, aec=args.aec, timeout=args.timeout)
    print(message, file=sys.stdout if ok else sys.stderr)
    return EXIT_OK if ok else EXIT_FAILED


# --- send ----------------------------------------------------------------------------------


def _add_send(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "send",
        help="C-STORE DICOM files or folders to a peer (HOST PORT PATH...), or STOW-RS them"
        " (--dicomweb URL PATH...)",
    )
    parser.add_argument("target", nargs="+", metavar="HOST PORT PATH")
    parser.add_argument("--aet", default="PACSAI-SCU", help="our (calling) AE title")
    parser.add_argument("--aec", default="PACSAI", help="the peer's (called) AE title")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per network step")
    parser.add_argument("--dicomweb", metavar="URL", help="STOW-RS to this DICOMweb service root")
    parser.add_argument(
        "--user", metavar="USER:PASSWORD", help="basic auth for --dicomweb (as curl's -u)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_cmd_send)


def _cmd_send(args: argparse.Namespace) -> int:
    from listener.cli.dicom import send_dicomweb, send_files

    if args.dicomweb:
        report = send_dicomweb(
            args.dicomweb, [Path(p) for p in args.target], user=args.user, timeout=args.timeout
        )
    elif len(args.target) < 3 or not args.target[1].isdigit():
        print("send: HOST PORT PATH... (or --dicomweb URL PATH...)", file=sys.stderr)
        return EXIT_FAILED
    else:
        report = send_files(
            args.target[0],
            int(args.target[1]),
            [Path(p) for p in args.target[2:]],
            aet=args.aet,
            aec=args.aec,
            timeout=args.timeout,
            progress=not args.no_progress,
        )
    print(report.summary(), file=sys.stdout if report.ok else sys.stderr)
    return EXIT_OK if report.ok else EXIT_FAILED


# --- studies -------------------------------------------------------------------------------


def _add_studies(sub: Subparsers) -> None:
    parser = sub.add_parser("studies", help="list the studies the journal holds")
    _add_config_flag(parser)
    _add_data_dir_flag(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object per study")
    parser.add_argument(
        "--show-patient", action="store_true", help="also show patient ID and name (PHI)"
    )
    parser.set_defaults(func=_cmd_studies)


def _cmd_studies(args: argparse.Namespace) -> int:
    from listener.cli.dicom import print_studies

    settings = settings_from_args(args)
    return print_studies(settings, as_json=args.json, show_patient=args.show_patient)


# --- parser and entry point ----------------------------------------------------------------

ADDERS: list[Callable[[Subparsers], None]] = [_add_serve, _add_echo, _add_send, _add_studies]
ADDERS.append(add_rules)
ADDERS.append(add_emulator)
ADDERS.extend([add_process, add_jobs, add_similar])


def build_parser() -> argparse.ArgumentParser:
    """The ``pacs-ai`` parser with every subcommand in :data:`ADDERS`."""
    parser = argparse.ArgumentParser(
        prog="pacs-ai",
        description="DICOM gateway between a PACS and hosted medical imaging models.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in ADDERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; exit status 0 on success, 1 on failure, 2 on bad settings."""
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        print(f"pacs-ai: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return result


if __name__ == "__main__":
    sys.exit(main())
