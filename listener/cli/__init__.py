"""The ``pacs-ai`` command line: one module per group of commands, :mod:`listener.cli.main` builds
the parser."""

from listener.cli.main import main

__all__ = ["main"]
