"""Deterministic UIDs for result objects, so that a re-run duplicates nothing.

A result's Series and SOP Instance UIDs are a function of what produced it
(:class:`converters.provenance.Provenance` builds the key): the source study and its exact
source instances, the model and its version, the routing rule and task, and the kind of result
(plus an index within the kind). Building the same result twice gives the same UIDs and the same
bytes, so a PACS that keeps the first copy (most do) holds the right one; other inputs, a new
model version or another task give new UIDs (PS3.5 §9: one UID, one content), and a follow-up
withdraws the results it supersedes with a rejection note (:mod:`converters.kos`).

Two encodings (PS3.5 §9 and Annex B):

- no root configured: a UUID-derived UID under ``2.25`` (PS3.5 B.2), the UUID being a name-based
  UUID (RFC 9562 version 5) of the key, so no organisation root is needed;
- a root configured: the root followed by decimal digits of a SHA-256 of the key, cut to the
  64-character limit of the UI value representation.
"""

from __future__ import annotations

import hashlib
import re
import uuid

MAX_UID_LENGTH = 64
UUID_ROOT = "2.25."
# Fixed namespace for the name-based UUIDs; changing it would change every result UID.
UID_NAMESPACE = uuid.UUID("5b0e7c1e-4a57-4d8e-9d0c-2f6a9c3b7e11")
# A configured root must leave at least this many digits for the hash part.
MIN_HASH_DIGITS = 20
_ROOT_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\.$")
_SEPARATOR = "\x1f"  # unit separator: cannot occur in UIDs, model names or rule names


def validate_root(root: str) -> str:
    """Check a configured UID root: dotted numeric components ending with a dot, short enough."""
    if not _ROOT_PATTERN.match(root):
        raise ValueError(f"UID root {root!r} must be dotted digits ending with '.'")
    if len(root) > MAX_UID_LENGTH - MIN_HASH_DIGITS:
        raise ValueError(f"UID root {root!r} leaves fewer than {MIN_HASH_DIGITS} digits")
    return root


def derive_uid(*parts: str, root: str | None = None) -> str:
    """The UID for a key made of ``parts``; the same parts always give the same UID."""
    if not parts:
        raise ValueError("a derived UID needs at least one key part")
    key = _SEPARATOR.join(parts)
    if root is None:
        return UUID_ROOT + str(uuid.uuid5(UID_NAMESPACE, key).int)
    validate_root(root)
    digits = str(int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest(), "big"))
    return root + digits[: MAX_UID_LENGTH - len(root)]
