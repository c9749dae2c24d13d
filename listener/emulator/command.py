"""``pacs-ai emulator`` (also ``python -m listener.emulator``): run the model emulator in the
foreground. Its answers are synthetic; it is not a clinical model.

Settings come from the usual sources (``PACSAI_EMULATOR__*``, ``--config``); the flags override
them. Heavy modules are imported when the command runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

_FLAGS = ("host", "port", "latency_ms", "fault_rate", "retry_after_s", "max_in_flight")


def declare_arguments(parser: argparse.ArgumentParser) -> None:
    """The emulator's flags, shared by the subcommand and ``python -m listener.emulator``."""
    parser.add_argument("--config", type=Path, help="YAML settings file (see config/)")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to bind (0: a free port, logged)")
    parser.add_argument("--latency-ms", type=float, help="minimum service time per request")
    parser.add_argument("--fault-rate", type=float, help="share of requests answered 408/429/503")
    parser.add_argument("--retry-after-s", type=float, help="Retry-After sent with 429/503")
    parser.add_argument("--max-in-flight", type=int, help="answer 429 beyond this many requests")


def add_emulator(sub: Any) -> None:
    """Register ``emulator`` on the ``pacs-ai`` subcommand parser."""
    parser = sub.add_parser(
        "emulator", help="run the model emulator (synthetic answers, not a clinical model)"
    )
    declare_arguments(parser)
    parser.set_defaults(func=cmd_emulator)


def cmd_emulator(args: argparse.Namespace) -> int:
    """Serve until interrupted; a bad setting raises ConfigError naming it."""
    from pydantic import ValidationError

    from listener.emulator.server import run_emulator
    from listener.errors import ConfigError
    from listener.logging import configure_logging
    from listener.settings import EmulatorSettings, load_settings

    settings = load_settings(getattr(args, "config", None))
    configure_logging(settings.log_level, settings.log_format)
    given = {name: getattr(args, name) for name in _FLAGS}
    overrides = {name: value for name, value in given.items() if value is not None}
    try:
        emulator = EmulatorSettings.model_validate({**settings.emulator.model_dump(), **overrides})
    except ValidationError as exc:
        problems = "; ".join(
            f"emulator.{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None
    run_emulator(emulator)
    return 0
