"""``python -m listener.emulator``: run the model emulator in the foreground (not a clinical model);
the same as ``pacs-ai emulator``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from listener.emulator.command import cmd_emulator, declare_arguments
from listener.errors import ConfigError


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments and serve the emulator; the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m listener.emulator",
        description="Run the model emulator (synthetic answers, not a clinical model).",
    )
    declare_arguments(parser)
    try:
        return cmd_emulator(parser.parse_args(argv))
    except ConfigError as exc:
        print(f"emulator: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
