"""The stock receive engine (``receive_engine: stock``): pynetdicom's own association, DUL and
DIMSE layer, its Storage service class and the ``EVT_C_STORE`` handler.

Nothing here reaches into pynetdicom's internals beyond its documented classes: the association
is a plain :class:`pynetdicom.association.Association`, each C-STORE is decoded by pynetdicom and
handed to :meth:`listener.receive.scp.Receiver.on_c_store`, which feeds the same intake as the
fast path (:mod:`listener.receive.fastpath`), so durability, admission, duplicates, statuses and
journal rows are the same on both engines.

Two adjustments keep the answers the same as the fast path's. pynetdicom checks the UIDs of a
command set while it decodes it and, for a UID over 64 characters, drops the association
(PS3.8 Evt19) instead of answering; on the receive associations of this engine the check is
left to the intake, which refuses a malformed UID with a status and quarantines the instance
(:func:`configure_pynetdicom`, through pynetdicom's documented ``_config.VALIDATORS`` hook).
The data set is staged by pynetdicom in a temporary file of the system's temporary folder
(``TMPDIR``), then streamed into the spool: a large instance costs disk there, not memory.
And pynetdicom reads every PDU it is announced, whatever its length. The
socket here refuses, before reading it, a PDU longer than we accept (PS3.8 §9.3.1; a P-DATA-TF
over the maximum length we announced, PS3.8 §D.1), with an A-ABORT (service provider, invalid
PDU parameter value, PS3.8 Table 9-26), as the fast path does. It relies only on the DUL reading
a PDU through :meth:`AssociationSocket.recv` as a 6-byte header and then its body.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable

from pydicom.uid import UID
from pynetdicom import _config
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket

from listener.logging import get_logger

_PDU_HEADER_LENGTH = 6
_PDU_HEADER = struct.Struct(">BBL")
P_DATA_TF = 0x04  # PS3.8 §9.3.1
# The largest association-control PDU we read (an A-ASSOCIATE-RQ with every storage SOP class
# and transfer syntax is far smaller); the same bound as the fast path's.
CONTROL_PDU_LIMIT = 1024 * 1024
# PS3.8 Table 9-26: A-ABORT source 2 (service provider), reason 6 (invalid PDU parameter value).
_ABORT_SOURCE_PROVIDER = 0x02
_ABORT_INVALID_PARAMETER = 0x06


class PduTooLongError(OSError):
    """A PDU announced more bytes than we accept; the association was aborted."""


class BoundedSocket(AssociationSocket):
    """pynetdicom's association socket, refusing a PDU longer than we accept before reading it."""

    _pdu_type: int | None = None

    def recv(self, nr_bytes: int) -> bytearray:
        pdu_type, self._pdu_type = self._pdu_type, None
        if pdu_type is None and nr_bytes == _PDU_HEADER_LENGTH:
            header = super().recv(nr_bytes)
            if len(header) == _PDU_HEADER_LENGTH:
                self._pdu_type = header[0]
            return header
        if pdu_type is not None:
            limit = self._limit(pdu_type)
            if nr_bytes > limit:
                self._abort(
                    f"PDU of type {pdu_type:#04x} announces {nr_bytes} bytes,"
                    f" over the limit of {limit}"
                )
        return super().recv(nr_bytes)

    def _limit(self, pdu_type: int) -> int:
        if pdu_type != P_DATA_TF:
            return CONTROL_PDU_LIMIT
        announced = int(self.assoc.acceptor.maximum_length or 0)
        return announced if announced > 0 else CONTROL_PDU_LIMIT

    def _abort(self, reason: str) -> None:
        """Send the A-ABORT, shut the connection and raise: pynetdicom's DUL treats the error as
        the transport connection closing (PS3.8 §9.2 Evt17); the association log records
        ``reason`` (``assoc.failure``)."""
        get_logger("receive").warning("association_aborted", reason=reason)
        self.assoc.failure = reason  # type: ignore[attr-defined]
        abort = A_ABORT_RQ()
        abort.source = _ABORT_SOURCE_PROVIDER
        abort.reason_diagnostic = _ABORT_INVALID_PARAMETER
        raw = self.socket
        if raw is not None:
            with contextlib.suppress(OSError):
                raw.sendall(abort.encode())
            with contextlib.suppress(OSError):
                raw.shutdown(socket.SHUT_RDWR)
        raise PduTooLongError(reason)


def _on_stock_receive_association() -> bool:
    """Whether this thread is the DUL or the association thread (request decoding, response
    building) of an association served by the stock engine."""
    thread = threading.current_thread()
    assoc = thread.assoc if isinstance(thread, DULServiceProvider) else thread
    return bool(getattr(assoc, "uids_checked_by_intake", False))


class _UidCheck:
    """pynetdicom's UID validator, passing every UID on stock receive associations: there the
    intake checks it against PS3.5 §9.1 and answers a malformed one with a status."""

    def __init__(self, default: Callable[[UID], tuple[bool, str]]) -> None:
        self.default = default

    def __call__(self, value: UID) -> tuple[bool, str]:
        if _on_stock_receive_association():
            return True, ""
        return self.default(value)


def configure_pynetdicom() -> None:
    """Pynetdicom's documented settings for the stock engine, once per process: the UID check
    left to the intake on its receive associations (see :class:`_UidCheck`), and each data set
    written to a temporary file as its fragments arrive (``STORE_RECV_CHUNKED_DATASET``) rather
    than gathered in memory, so a large instance costs disk, not memory; the handler then
    streams it into the spool."""
    current = _config.VALIDATORS["UI"]
    if not isinstance(current, _UidCheck):
        _config.VALIDATORS["UI"] = _UidCheck(current)
    _config.STORE_RECV_CHUNKED_DATASET = True
