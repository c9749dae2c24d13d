"""``python -m listener.infer``: run the model emulator in the foreground (not a clinical model).

Settings come from the usual sources (``PACSAI_EMULATOR__*``, ``--config``); the flags override.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from listener.infer.server import run_emulator
from listener.logging import configure_logging
from listener.settings import EmulatorSettings, load_settings


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m listener.infer",
        description="Run the model emulator (synthetic answers, not a clinical model).",
    )
    parser.add_argument("--config", type=Path, help="settings file (YAML)")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to bind (0: a free port)")
    parser.add_argument("--latency-ms", type=float, help="added latency per request")
    parser.add_argument("--fault-rate", type=float, help="share of requests answered 408/429/503")
    parser.add_argument("--retry-after-s", type=float, help="Retry-After sent with 429/503")
    parser.add_argument("--max-in-flight", type=int, help="above this many requests answer 429")
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    configure_logging(settings.log_level, settings.log_format)
    overrides = {
        name: value
        for name, value in {
            "host": args.host,
            "port": args.port,
            "latency_ms": args.latency_ms,
            "fault_rate": args.fault_rate,
            "retry_after_s": args.retry_after_s,
            "max_in_flight": args.max_in_flight,
        }.items()
        if value is not None
    }
    try:
        emulator = EmulatorSettings.model_validate({**settings.emulator.model_dump(), **overrides})
    except ValidationError as exc:
        parser.error(f"invalid emulator option: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}")
    run_emulator(emulator)


if __name__ == "__main__":
    main()
