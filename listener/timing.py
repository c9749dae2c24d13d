"""Time helpers every stage shares: the one exponential backoff and the one UTC text format.

Policies differ per stage (a send retries for minutes, a model call for seconds, a crashed child
restarts after a second), but the curve is one: ``base_s * factor**(attempt-1)``, capped.
"""

from __future__ import annotations

from datetime import UTC, datetime


def backoff_delay(attempt: int, base_s: float, max_s: float, factor: float = 2.0) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based; 0 counts as 1)."""
    return float(min(max_s, base_s * factor ** max(attempt - 1, 0)))


def utc_text(epoch: float, *, precise: bool = False) -> str:
    """``epoch`` as ISO 8601 UTC with a ``Z``: seconds, or microseconds with ``precise``."""
    stamp = datetime.fromtimestamp(epoch, UTC)
    if precise:
        return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
