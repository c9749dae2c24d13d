"""Process supervision for ``pacs-ai serve``."""

from __future__ import annotations

from listener.settings import Settings


def serve(settings: Settings) -> int:
    """Run the gateway until SIGTERM/SIGINT; return the exit status."""
    raise NotImplementedError
