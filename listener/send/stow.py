"""Send: STOW-RS (PS3.18 §10.5) to a ``kind: dicomweb`` destination, with a per-instance outcome.

The same outbox, retries, dead letters and resubmission as a DIMSE destination
(:class:`~listener.send.deliver.Deliverer` picks the sender by the destination's kind). Stored
files go out as they are, streamed from disk as the parts of a ``multipart/related;
type="application/dicom"`` body with its length known up front (no chunked encoding, which some
servers refuse), a batch of instances per request.

The answer is read per instance (PS3.18 §10.5.3): 200 confirms the whole batch; a 202 or 409
body's Referenced SOP Sequence confirms those instances and its Failed SOP Sequence fails the
others with their Failure Reason, classified like a C-STORE status (A7xx Out of Resources is
transient, other failures permanent), so that only the failed instances are tried again. A
request refused as a whole with a 4xx other than 408/429 is tried again one instance per
request, so one bad instance cannot dead-letter its batch. A refused connection, a timeout, 408,
429 and 5xx are transient for the whole batch.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from listener.errors import PermanentSendError, SendError, TransientSendError
from listener.infer.dicomweb import DICOM_JSON, json_value, open_client
from listener.logging import get_logger
from listener.send.scu import InstanceOutcome, StoreItem, status_error
from listener.settings import Destination

_CHUNK = 1 << 20
_REFERENCED_SOP_SEQUENCE, _FAILED_SOP_SEQUENCE = "00081199", "00081198"
_REFERENCED_SOP_INSTANCE, _FAILURE_REASON = "00081155", "00081197"
_TRANSIENT_HTTP = frozenset({408, 429})

_log = get_logger("send")


@dataclass(frozen=True)
class _Part:
    item: StoreItem
    size: int


class StowSender:
    """STOW-RS client of every DICOMweb destination; ``batch_instances`` / ``batch_bytes``
    bound one request."""

    def __init__(self, *, batch_instances: int = 64, batch_bytes: int = 512 * 1024 * 1024) -> None:
        self.batch_instances = batch_instances
        self.batch_bytes = batch_bytes

    def send(self, dest: Destination, items: Sequence[StoreItem]) -> list[InstanceOutcome]:
        """Store ``items`` at ``dest``; one outcome per item."""
        outcomes: list[InstanceOutcome] = []
        parts: list[_Part] = []
        for item in items:
            try:
                parts.append(_Part(item, Path(item.path).stat().st_size))
            except OSError as exc:
                outcomes.append(
                    InstanceOutcome(item, PermanentSendError(f"cannot read the file: {exc}"))
                )
        with open_client(dest) as client:
            for batch in self._batches(parts):
                outcomes += self._store(client, dest, batch, split=True)
        return outcomes

    def _batches(self, parts: list[_Part]) -> Iterator[list[_Part]]:
        batch: list[_Part] = []
        size = 0
        for part in parts:
            if batch and (
                len(batch) >= self.batch_instances or size + part.size > self.batch_bytes
            ):
                yield batch
                batch, size = [], 0
            batch.append(part)
            size += part.size
        if batch:
            yield batch

    def _store(
        self, client: httpx.Client, dest: Destination, batch: list[_Part], *, split: bool
    ) -> list[InstanceOutcome]:
        boundary = f"pacs-ai-{uuid.uuid4().hex}"
        body = _Body(batch, boundary)
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Content-Length": str(body.length),
            "Accept": DICOM_JSON,
        }
        try:
            response = client.post("/studies", content=body.chunks(), headers=headers)
        except httpx.TimeoutException as exc:
            return _all(batch, TransientSendError(f"STOW-RS timed out: {type(exc).__name__}"))
        except httpx.TransportError as exc:
            return _all(batch, TransientSendError(f"STOW-RS connection failed: {exc}"))
        code = response.status_code
        if code in (200, 202, 409):
            answer = _json(response)
            if answer is not None or code == 200:
                return _per_instance(batch, code, answer or {})
        text = f"STOW-RS answered HTTP {code}"
        if code >= 500 or code in _TRANSIENT_HTTP:
            return _all(batch, TransientSendError(text))
        if split and len(batch) > 1 and code not in (401, 403):
            _log.info("stow_batch_split", destination=dest.describe(), status=code, n=len(batch))
            outcomes: list[InstanceOutcome] = []
            for part in batch:
                outcomes += self._store(client, dest, [part], split=False)
            return outcomes
        return _all(batch, PermanentSendError(text))


class _Body:
    """A multipart/related body over files on disk, streamed, with its length known."""

    def __init__(self, parts: list[_Part], boundary: str) -> None:
        self.parts = parts
        self.head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        self.tail = f"--{boundary}--\r\n".encode()
        self.length = sum(len(self.head) + p.size + 2 for p in parts) + len(self.tail)

    def chunks(self) -> Iterator[bytes]:
        for part in self.parts:
            yield self.head
            with Path(part.item.path).open("rb") as handle:
                while chunk := handle.read(_CHUNK):
                    yield chunk
            yield b"\r\n"
        yield self.tail


def _json(response: httpx.Response) -> dict[str, Any] | None:
    try:
        parsed = response.json()
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _all(batch: list[_Part], error: SendError) -> list[InstanceOutcome]:
    return [InstanceOutcome(part.item, error) for part in batch]


def _per_instance(batch: list[_Part], code: int, answer: dict[str, Any]) -> list[InstanceOutcome]:
    """Each instance's outcome from a store response (PS3.18 Table 10.5.3-3)."""
    stored = {
        json_value(item, _REFERENCED_SOP_INSTANCE)
        for item in answer.get(_REFERENCED_SOP_SEQUENCE, {}).get("Value", [])
    }
    failed = {
        json_value(item, _REFERENCED_SOP_INSTANCE): json_value(item, _FAILURE_REASON)
        for item in answer.get(_FAILED_SOP_SEQUENCE, {}).get("Value", [])
    }
    outcomes = []
    for part in batch:
        uid = part.item.sop_instance_uid
        if uid in failed:
            reason = failed[uid] if isinstance(failed[uid], int) else None
            shown = f"0x{reason:04X}" if reason is not None else "none given"
            classified = status_error(reason) if reason is not None else None
            error: SendError = (
                TransientSendError(f"STOW-RS Failure Reason {shown}")
                if isinstance(classified, TransientSendError)
                else PermanentSendError(f"STOW-RS Failure Reason {shown}")
            )
            outcomes.append(InstanceOutcome(part.item, error, status=reason))
        elif uid in stored or (code == 200 and not failed):
            outcomes.append(InstanceOutcome(part.item))
        else:
            error = TransientSendError(f"STOW-RS HTTP {code} did not name this instance")
            outcomes.append(InstanceOutcome(part.item, error))
    return outcomes
