"""Send: C-STORE SCU (PS3.4 Annex B, PS3.7 §9.1.1) to a destination, with a per-instance outcome.

- TCP_NODELAY is set on every association socket as soon as the connection opens: pynetdicom
  never sets it, and without it each C-STORE waits for the peer's delayed ACK (~40 ms).
- Presentation contexts are proposed from the files themselves (PS3.8 §9.3.2.2): per SOP class
  and transfer syntax a context with exactly the file's transfer syntax, so the stored bytes go
  out unchanged, and per SOP class one more offering Explicit and Implicit VR Little Endian for
  every file that can be converted to them: uncompressed files (pynetdicom re-encodes), and
  compressed ones that pydicom has a decoder for (many PACS take no JPEG 2000).
- The stored syntax is always preferred: a file is converted only when the peer accepted nothing
  better for it. Conversion only ever decodes (never encodes), so a lossy source is not
  compressed again; its decoded copy keeps Lossy Image Compression "01" with its ratio and method
  (PS3.3 C.7.6.1.1.5), and its SOP Instance UID (the pixel values are the ones the source
  decodes to), so result objects that reference it stay valid.
- Files sent in their stored syntax are streamed from disk without decoding (pynetdicom's chunked
  send, :func:`enable_chunked_send`), so what arrives is byte-identical to what was stored.
- At most ``Destination.max_associations`` associations are open to one destination at a time,
  across every caller of the same :class:`StoreSender`.
- DICOM TLS (PS3.15 Annex B.1, BCP 195) to a destination with ``tls: true``: the peer's
  certificate is verified against ``tls_ca_file`` (and its host name unless
  ``tls_check_hostname: false``); our ``tls_cert_file`` goes to a peer that asks for one. A
  handshake that fails on a certificate (ours refused, theirs unverifiable) is a
  :class:`PermanentSendError` naming the TLS reason: no retry changes a certificate.
- Failures are classified per instance: refused connection, timeout, Out of Resources (A7xx),
  aborted or transiently rejected association are :class:`TransientSendError`; a permanently
  rejected association (e.g. calling AE not recognised, PS3.8 §9.3.4), no accepted presentation
  context (SOP class or transfer syntax not supported) and other failure statuses are
  :class:`PermanentSendError`.
"""

from __future__ import annotations

import math
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
)
from pynetdicom import AE, _config, build_context, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.status import code_to_category

from listener.errors import PermanentSendError, SendError, TransientSendError
from listener.logging import get_logger
from listener.receive.status import StoreStatus
from listener.route import Destination
from listener.security.tls import client_context, handshake_reason

# PS3.8 §9.3.1: at most 128 presentation contexts in one A-ASSOCIATE-RQ (odd IDs 1..255).
MAX_CONTEXTS = 128
# Below this many instances per association, another association is not worth opening.
MIN_INSTANCES_PER_ASSOCIATION = 16
_UNCOMPRESSED_LE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
# PS3.4 B.2.3: "Refused: Out of Resources" is A7xx; compare the high byte.
_STATUS_CLASS_MASK = 0xFF00
# PS3.8 Table 9-21: A-ASSOCIATE-RJ result 2 is "rejected-transient".
_REJECTED_TRANSIENT = 2
# Transfer syntaxes whose process is always lossy, with the Lossy Image Compression Method that
# names it (PS3.3 C.7.6.1.1.5.1, CID 7050). Others (JPEG 2000, JPEG-LS near-lossless) may be
# lossless; their source then says so itself in Lossy Image Compression.
_LOSSY_METHODS = {JPEGBaseline8Bit: "ISO_10918_1", JPEGExtended12Bit: "ISO_10918_1"}

_log = get_logger("send")


@dataclass(frozen=True)
class StoreItem:
    """One stored file to send, with the SOP Instance UID it holds."""

    path: Path
    sop_instance_uid: str


@dataclass(frozen=True)
class InstanceOutcome:
    """What happened to one instance: confirmed (``error`` is None) or the classified failure."""

    item: StoreItem
    error: SendError | None = None
    status: int | None = None

    @property
    def confirmed(self) -> bool:
        return self.error is None

    @property
    def transient(self) -> bool:
        return isinstance(self.error, TransientSendError)


@dataclass(frozen=True)
class _Prepared:
    item: StoreItem
    sop_class: UID
    transfer_syntax: UID

    @property
    def convertible(self) -> bool:
        """Whether this file can also go as Explicit/Implicit VR Little Endian."""
        return can_send_uncompressed(self.transfer_syntax)


@dataclass(frozen=True)
class SendTimeouts:
    """Seconds pynetdicom waits for association replies, DIMSE replies and network reads."""

    acse_s: float = 30.0
    dimse_s: float = 60.0
    network_s: float = 60.0


def enable_chunked_send() -> None:
    """Make pynetdicom send a file given by path from disk as stored, without decoding it
    (byte-identical, little memory).

    The switch is process-wide in pynetdicom (``_config.STORE_SEND_CHUNKED_DATASET``, no
    per-association option), so a sender process calls this once at start-up; building a
    :class:`StoreSender` (or reading the outbox) changes nothing global. It only affects
    ``send_c_store`` calls given a file path.
    """
    _config.STORE_SEND_CHUNKED_DATASET = True


class StoreSender:
    """C-STORE SCU shared by every sender in a process; bounds associations per destination."""

    def __init__(
        self, calling_ae: str, timeouts: SendTimeouts | None = None, max_pdu: int = 0
    ) -> None:
        self.calling_ae = calling_ae
        self.timeouts = timeouts or SendTimeouts()
        self.max_pdu = max_pdu
        self._limits: dict[tuple[str, str, int], threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()

    def _limit(self, dest: Destination) -> threading.BoundedSemaphore:
        key = (dest.ae_title, dest.host, dest.port)
        with self._lock:
            if key not in self._limits:
                self._limits[key] = threading.BoundedSemaphore(dest.max_associations)
            return self._limits[key]

    def send(self, dest: Destination, items: Sequence[StoreItem]) -> list[InstanceOutcome]:
        """Send ``items`` over up to ``max_associations`` associations; one outcome per item.

        Outcomes are grouped by association, not in the order of ``items``.
        """
        outcomes: list[InstanceOutcome] = []
        prepared: list[_Prepared] = []
        for item in items:
            try:
                prepared.append(_prepare(item))
            except (OSError, ValueError, AttributeError) as exc:
                error = PermanentSendError(f"cannot read the file's meta information: {exc}")
                outcomes.append(InstanceOutcome(item, error))
        chunks = list(_chunks(prepared, dest.max_associations))
        if len(chunks) <= 1:
            for chunk in chunks:
                outcomes += self._send_bounded(dest, chunk)
            return outcomes
        with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
            for result in pool.map(lambda chunk: self._send_bounded(dest, chunk), chunks):
                outcomes += result
        return outcomes

    def _send_bounded(self, dest: Destination, chunk: list[_Prepared]) -> list[InstanceOutcome]:
        with self._limit(dest):
            return self._send_association(dest, chunk)

    def _send_association(self, dest: Destination, chunk: list[_Prepared]) -> list[InstanceOutcome]:
        opened = threading.Event()

        def on_open(event: Event) -> None:
            opened.set()
            prepare_requestor(event.assoc)

        ae = AE(ae_title=dest.calling_ae or self.calling_ae)
        ae.acse_timeout = self.timeouts.acse_s
        ae.dimse_timeout = self.timeouts.dimse_s
        ae.network_timeout = self.timeouts.network_s
        tls = _TlsAttempt(dest) if dest.tls else None
        assoc = ae.associate(
            dest.host,
            dest.port,
            contexts=_contexts(chunk),
            ae_title=dest.ae_title,
            max_pdu=self.max_pdu,
            evt_handlers=[(evt.EVT_CONN_OPEN, on_open)],
            tls_args=tls.args if tls else None,
        )
        if not assoc.is_established:
            error = _association_error(assoc, opened.is_set(), dest, tls)
            _log.warning("send_association_failed", destination=dest.describe(), reason=str(error))
            return [InstanceOutcome(p.item, error) for p in chunk]
        outcomes: list[InstanceOutcome] = []
        try:
            for prepared in chunk:
                if not assoc.is_established:
                    error = TransientSendError("the association ended before this instance")
                    outcomes.append(InstanceOutcome(prepared.item, error))
                    continue
                outcomes.append(_store_one(assoc, prepared))
        finally:
            if assoc.is_established:
                assoc.release()
        sent = sum(o.confirmed for o in outcomes)
        _log.info(
            "send_association_done",
            destination=dest.describe(),
            sent=sent,
            failed=len(outcomes) - sent,
        )
        return outcomes


def _prepare(item: StoreItem) -> _Prepared:
    meta = read_file_meta_info(item.path)
    return _Prepared(item, UID(meta.MediaStorageSOPClassUID), UID(meta.TransferSyntaxUID))


def _chunks(prepared: list[_Prepared], max_associations: int) -> Iterator[list[_Prepared]]:
    """Split into at most ``max_associations`` parts of 16+ instances, each within 128 contexts."""
    if not prepared:
        return
    wanted = min(max_associations, math.ceil(len(prepared) / MIN_INSTANCES_PER_ASSOCIATION))
    size = math.ceil(len(prepared) / wanted)
    for start in range(0, len(prepared), size):
        yield from _within_context_limit(prepared[start : start + size])


def _within_context_limit(chunk: list[_Prepared]) -> Iterator[list[_Prepared]]:
    part: list[_Prepared] = []
    for prepared in chunk:
        if len(_contexts([*part, prepared])) > MAX_CONTEXTS:
            yield part
            part = []
        part.append(prepared)
    if part:
        yield part


def can_send_uncompressed(transfer_syntax: UID) -> bool:
    """Whether a file stored in ``transfer_syntax`` can be sent as Explicit/Implicit VR Little
    Endian: it already is (pynetdicom converts between the two), or it is compressed and one of
    pydicom's decoder plugins for it is installed."""
    if transfer_syntax in _UNCOMPRESSED_LE:
        return True
    if not transfer_syntax.is_encapsulated:
        return False  # big endian, deflated: sent only as stored
    try:
        return bool(get_decoder(transfer_syntax).is_available)
    except NotImplementedError:
        return False  # no decoder at all (video, for one)


def decoded(path: Path) -> Dataset:
    """The instance at ``path`` with its pixel data decoded to Explicit VR Little Endian.

    Same SOP Instance UID (only the encoding changes). A lossy source keeps, or gets, Lossy Image
    Compression "01" with its ratio and method (PS3.3 C.7.6.1.1.5): decoding does not make the
    pixels lossless again, and nothing here ever encodes, so no second lossy step happens.
    """
    ds = dcmread(path)
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    compressed_size = len(ds.PixelData) if "PixelData" in ds else 0
    ds.decompress(generate_instance_uid=False)
    method = _LOSSY_METHODS.get(syntax)
    if method is not None and ds.get("LossyImageCompression") != "01":
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = method
        if compressed_size:
            ratio = len(ds.PixelData) / compressed_size
            ds.LossyImageCompressionRatio = f"{ratio:.4g}"[:16]
    return ds


def _contexts(chunk: Sequence[_Prepared]) -> list[Any]:
    """Exact (SOP class, transfer syntax) contexts, plus an uncompressed fallback per SOP class
    with a file that can be sent uncompressed."""
    exact: dict[tuple[str, str], None] = {}
    fallback: dict[str, None] = {}
    for p in chunk:
        exact[(p.sop_class, p.transfer_syntax)] = None
        if p.convertible:
            fallback[p.sop_class] = None
    contexts = [build_context(sop, [ts]) for sop, ts in exact]
    contexts += [build_context(sop, list(_UNCOMPRESSED_LE)) for sop in fallback]
    return contexts


def prepare_requestor(assoc: Association) -> None:
    """Ready an outgoing association (bind it to ``EVT_CONN_OPEN``, so it runs before pynetdicom
    starts the association's reactor): TCP_NODELAY, and responses kept for the caller.

    pynetdicom 3.0's reactor polls the DIMSE queue without blocking; between a ``send_*()`` call's
    check that the reactor is paused and the reactor really pausing, it can take the peer's
    response off the queue ("Received unexpected C-STORE service message"), and ``send_c_store``
    then waits out the DIMSE timeout (pynetdicom issue #875; over loopback with TCP_NODELAY the
    response is quick enough to hit the window). Our SCU associations never serve requests from
    the peer, so the reactor's non-blocking polls get nothing and every response goes to the call
    that waits for it.
    """
    set_nodelay(assoc)
    dimse = assoc.dimse
    get_msg = dimse.get_msg

    def blocking_only(block: bool = False) -> Any:
        return get_msg(block=True) if block else (None, None)

    dimse.get_msg = blocking_only  # type: ignore[method-assign]  # the reactor-race guard


def set_nodelay(assoc: Association) -> None:
    """Turn Nagle's algorithm off on an association's socket (pynetdicom never does; without
    it every C-STORE waits for the peer's delayed ACK)."""
    sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _TlsAttempt:
    """The TLS context of one association to ``dest``, remembering why its handshake failed
    (pynetdicom only logs it)."""

    def __init__(self, dest: Destination) -> None:
        context = client_context(
            dest.tls_ca_file,
            dest.tls_cert_file,
            dest.tls_key_file,
            check_hostname=dest.tls_check_hostname,
        )
        self.failure: ssl.SSLError | None = None
        attempt = self

        class _Socket(ssl.SSLSocket):
            def connect(self, address: Any) -> None:
                try:
                    super().connect(address)
                except ssl.SSLError as exc:
                    attempt.failure = exc
                    raise

            def read(self, *args: Any, **kwargs: Any) -> Any:
                # Under TLS 1.3 the server refuses our certificate after the client's side of
                # the handshake is done: its alert arrives with the first read.
                try:
                    return super().read(*args, **kwargs)
                except ssl.SSLError as exc:
                    attempt.failure = attempt.failure or exc
                    raise

        context.sslsocket_class = _Socket
        self.args = (context, dest.host)  # SNI; checked only with tls_check_hostname

    def error(self, where: str) -> SendError | None:
        """The classified handshake failure, or None when the handshake did not fail."""
        exc = self.failure
        if exc is None:
            return None
        reason = f"TLS handshake with {where} failed: {handshake_reason(exc)}"
        if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLWantReadError):
            return TransientSendError(reason)  # the connection dropped mid-handshake
        return PermanentSendError(reason)


def _association_error(
    assoc: Association, connected: bool, dest: Destination, tls: _TlsAttempt | None = None
) -> SendError:
    """Classify an association that did not come up."""
    where = dest.describe()
    handshake = tls.error(where) if tls is not None else None
    if handshake is not None:
        return handshake
    if assoc.is_rejected:
        rsp = assoc.acceptor.primitive
        if rsp is None:
            return TransientSendError(f"association rejected by {where} (no reason given)")
        why = f"{rsp.result_str}, {rsp.source_str}: {rsp.reason_str}"
        if rsp.result == _REJECTED_TRANSIENT:
            return TransientSendError(f"association rejected by {where} ({why})")
        return PermanentSendError(f"association rejected by {where} ({why})")
    if not connected:
        return TransientSendError(f"cannot connect to {where} (refused or unreachable)")
    rsp = assoc.acceptor.primitive
    if rsp is not None and getattr(rsp, "result", None) == 0 and not assoc.accepted_contexts:
        return PermanentSendError(f"{where} accepted none of the presentation contexts")
    return TransientSendError(f"association with {where} aborted or timed out")


def _store_one(assoc: Association, prepared: _Prepared) -> InstanceOutcome:
    """C-STORE one file on an established association and classify the answer.

    The stored syntax goes out as stored; otherwise an accepted uncompressed context takes the
    file re-encoded (uncompressed source) or decoded (compressed source, :func:`decoded`).
    """
    item = prepared.item
    accepted = [
        UID(cx.transfer_syntax[0])
        for cx in assoc.accepted_contexts
        if cx.abstract_syntax == prepared.sop_class
    ]
    started = time.monotonic()
    try:
        if prepared.transfer_syntax in accepted:
            reply = assoc.send_c_store(item.path)
        elif prepared.convertible and any(ts in _UNCOMPRESSED_LE for ts in accepted):
            if prepared.transfer_syntax in _UNCOMPRESSED_LE:
                reply = assoc.send_c_store(dcmread(item.path))
            else:
                _log.info(
                    "send_decompressed",
                    sop_instance_uid=item.sop_instance_uid,
                    stored_syntax=prepared.transfer_syntax.name,
                )
                reply = assoc.send_c_store(decoded(item.path))
        else:
            return InstanceOutcome(
                item,
                PermanentSendError(
                    f"no accepted presentation context for SOP class {prepared.sop_class.name} in "
                    f"{prepared.transfer_syntax.name}"
                ),
            )
    except (ValueError, AttributeError, RuntimeError) as exc:
        return InstanceOutcome(item, PermanentSendError(f"cannot send this instance: {exc}"))
    except OSError as exc:
        return InstanceOutcome(item, PermanentSendError(f"cannot read the file: {exc}"))
    status = reply.get("Status") if reply is not None else None
    if status is None:
        return InstanceOutcome(item, _no_response(assoc, time.monotonic() - started))
    return InstanceOutcome(item, status_error(int(status)), int(status))


def _no_response(assoc: Association, elapsed_s: float) -> TransientSendError:
    """No C-STORE response: the DIMSE timeout ran out, or the peer aborted the association.

    Some PACS (Orthanc, for one) refuse a calling AE they do not know by aborting the
    association at the first C-STORE rather than rejecting it; that reads as an abort here.
    """
    limit = assoc.dimse_timeout
    timed_out = limit is not None and elapsed_s >= limit * 0.9
    if assoc.is_established:
        assoc.abort()
    if timed_out:
        return TransientSendError(f"no C-STORE response within {elapsed_s:.0f} s")
    return TransientSendError("the peer aborted the association during C-STORE")


def status_error(status: int) -> SendError | None:
    """None for Success and Warning (stored, PS3.4 B.2.3); the classified error otherwise."""
    category = code_to_category(status)
    if category in ("Success", "Warning"):
        return None
    text = f"C-STORE status 0x{status:04X} ({category})"
    if status & _STATUS_CLASS_MASK == StoreStatus.OUT_OF_RESOURCES:
        return TransientSendError(f"{text}: out of resources")
    if status == StoreStatus.SOP_CLASS_NOT_SUPPORTED:
        return PermanentSendError(f"{text}: SOP class not supported")
    return PermanentSendError(text)
