"""pynetdicom 3.0's acceptor-side association and DUL with event-driven waits.

Stock pynetdicom sleeps on a fixed timer in its association reactor (1 ms per loop) and in its
DUL loop whenever it is idle, so every PDU of a C-STORE and every response waits out a sleep.
These subclasses wait on the message queue, on the socket and on a wake-up pipe instead; the loop
bodies and the release/abort/timeout checks are pynetdicom's own. In the data transfer state
the DUL reads P-DATA-TF PDUs itself and serves C-STOREs in its own thread
(:mod:`listener.receive.fastpath.store`). They copy pynetdicom 3.0 internals, which is why the
dependency is pinned below 3.1.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import socket
import ssl
import struct
import threading
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ

from listener.logging import get_logger
from listener.receive.fastpath.codec import P_DATA_TF
from listener.receive.fastpath.store import (
    ESTABLISHED_WAIT_S,
    StorePath,
    StreamedStore,
    lean_path_allowed,
)

REACTOR_WAIT_S = 0.001
DUL_IDLE_WAIT_S = 0.05
# PS3.8 §9.3.1: the PDU types a peer may send (A-ASSOCIATE-RQ .. A-ABORT).
_PDU_TYPES = range(0x01, 0x08)
_PDU_HEADER = struct.Struct(">BBL")
# The largest association-control PDU we read (A-ASSOCIATE-RQ with every storage SOP class and
# transfer syntax, user identity included, is far smaller). P-DATA-TF PDUs are bounded by the
# maximum length we announce (PS3.8 §D.1).
CONTROL_PDU_LIMIT = 1024 * 1024
# PS3.8 Table 9-26: A-ABORT source 2 (service provider), reason 6 (invalid PDU parameter value).
_ABORT_SOURCE_PROVIDER = 0x02
_ABORT_INVALID_PARAMETER = 0x06


def wait_readable(sock: socket.socket | None, wake_fd: int, timeout_s: float) -> bool:
    """Wait until ``sock`` has data to read or ``wake_fd`` is written to (drained here), at most
    ``timeout_s``; True when the socket has data.

    Over DICOM TLS a wait on the descriptor is not enough: bytes already read from the network
    and decrypted sit inside the TLS object (``pending()``), and the descriptor stays quiet until
    the peer sends more, which it will not do before we answer. So decrypted bytes count as
    readable at once (pynetdicom checks ``pending()`` for its own sockets for the same reason).
    """
    if isinstance(sock, ssl.SSLSocket) and sock.fileno() >= 0 and sock.pending():
        return True
    watched = [wake_fd]
    if sock is not None and sock.fileno() >= 0:
        watched.append(sock.fileno())
    ready, _, _ = select.select(watched, [], [], timeout_s)
    if wake_fd in ready:
        os.read(wake_fd, 4096)
    return len(ready) > (wake_fd in ready)


class EventDUL(DULServiceProvider):
    """pynetdicom 3.0's DUL with its idle sleep replaced by a wait on the socket.

    The stock loop sleeps ``_run_loop_delay`` whenever it found nothing to do, so every PDU of
    a C-STORE and every response waits out a sleep. Here it waits in ``select`` on the socket
    and on a pipe that :meth:`send_pdu` writes to: it wakes the moment data arrives or a
    response is queued, and sleeps up to :data:`DUL_IDLE_WAIT_S` when the association is idle.
    The loop body is pynetdicom's own.

    In the data transfer state (Sta6) it reads P-DATA-TF PDUs itself and hands their PDVs to a
    :class:`~listener.receive.fastpath.store.StorePath`, which serves C-STOREs in this thread;
    every other PDU, and every PDU in another state, is read and decoded as pynetdicom does.
    """

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
        self._store = StorePath(self)
        self._lean: bool | None = None  # decided at the first PDU in Sta6
        self._refused = False

    def _read_pdu_data(self) -> None:
        # As DULServiceProvider._read_pdu_data in pynetdicom 3.0, checking the PDU length before
        # anything is allocated for it, and serving P-DATA-TF in Sta6 on the fast path.
        if self._refused:
            if self.socket is not None:
                self.socket.close()  # Evt17; the peer ignored our A-ABORT
            return
        header = self._recv_exact(6)
        if header is None:
            self.event_queue.put("Evt17")  # PS3.8 §9.2: transport connection closed
            return
        pdu_type, _, length = _PDU_HEADER.unpack(header)
        if pdu_type not in _PDU_TYPES:
            self.event_queue.put("Evt19")  # PS3.8 §9.2: unrecognised or invalid PDU
            return
        limit = self._limit(pdu_type)
        if length > limit:
            self._refuse(pdu_type, length, limit)
            return
        if pdu_type != P_DATA_TF or self.state_machine.current_state != "Sta6":
            self._read_other_pdu(header, pdu_type, length)
            return
        if self._lean is None:
            self._lean = lean_path_allowed(self.assoc)
        if not self._lean:
            self._read_other_pdu(header, pdu_type, length)
            return
        body = self._recv_exact(length)
        if body is None:
            self.event_queue.put("Evt17")
            return
        self._store.on_pdu(memoryview(body))

    def _limit(self, pdu_type: int) -> int:
        if pdu_type != P_DATA_TF:
            return CONTROL_PDU_LIMIT
        announced = int(self.assoc.acceptor.maximum_length or 0)
        return announced if announced > 0 else CONTROL_PDU_LIMIT

    def _refuse(self, pdu_type: int, length: int, limit: int) -> None:
        """Abort for a PDU longer than we accept (PS3.8 §9.3.1; P-DATA-TF over the maximum
        length we announced, §D.1), before reading or allocating any of it."""
        reason = f"PDU of type {pdu_type:#04x} announces {length} bytes, over the limit of {limit}"
        self.abort_for(reason)

    def abort_for(self, reason: str) -> None:
        """Send an A-ABORT (service provider, invalid PDU parameter value) and close; the
        association log records ``reason``."""
        get_logger("receive").warning("association_aborted", reason=reason)
        assoc = cast(EventAssociation, self.assoc)
        if self.state_machine.current_state == "Sta6":
            # Let the association thread record the association first (EVT_ESTABLISHED), as
            # the fast path does before it serves a request, so its record shows the abort.
            assoc.serving.wait(ESTABLISHED_WAIT_S)
        assoc.failure = reason
        self._refused = True
        abort = A_ABORT_RQ()
        abort.source = _ABORT_SOURCE_PROVIDER
        abort.reason_diagnostic = _ABORT_INVALID_PARAMETER
        with contextlib.suppress(OSError):
            if self.socket is not None and self.socket.socket is not None:
                self.socket.socket.sendall(abort.encode())
        if self.socket is not None:
            self.socket.close()  # Evt17: nothing more from this peer is read

    def _recv_exact(self, size: int) -> bytearray | None:
        """``size`` bytes from the socket, or None if it closed or failed first."""
        buffer = bytearray(size)
        view = memoryview(buffer)
        received = 0
        sock = self.socket.socket if self.socket is not None else None
        if sock is None:
            return None
        try:
            while received < size:
                count = sock.recv_into(view[received:])
                if not count:
                    return None
                received += count
        except OSError:  # TimeoutError included
            return None
        return buffer

    def _read_other_pdu(self, header: bytearray, pdu_type: int, length: int) -> None:
        # As the rest of DULServiceProvider._read_pdu_data in pynetdicom 3.0.
        body = self._recv_exact(length)
        if body is None:
            self.event_queue.put("Evt17")
            return
        try:
            pdu, event = self._decode_pdu(header + body)
        except Exception:
            get_logger("receive").warning("pdu_undecodable", pdu_type=pdu_type)
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_write, b"\0")

    def _wait(self) -> None:
        sock = self.socket.socket if self.socket is not None else None
        wait_readable(sock, self._wake_read, DUL_IDLE_WAIT_S)

    def run_reactor(self) -> None:
        try:
            self._loop()
        finally:
            self._store.close()
            os.close(self._wake_read)
            os.close(self._wake_write)

    def _loop(self) -> None:
        # As DULServiceProvider.run_reactor in pynetdicom 3.0, with _wait() for the sleep.
        self._idle_timer.start()
        idle = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                idle = True
            if idle:
                self._wait()
            if self._kill_thread:
                return
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception:
                self._abort_on_error()
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                idle = True
                continue
            self.state_machine.do_action(event)
            idle = False

    def _abort_on_error(self) -> None:
        # As pynetdicom: bypass the state machine and send an A-ABORT.
        get_logger("receive").exception("dul_failed")
        abort = A_ABORT_RQ()
        abort.source = 0x02  # PS3.8 Table 9-26: DICOM UL service provider
        abort.reason_diagnostic = 0x00
        if self.socket is not None:
            self.socket.send(abort.encode())
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self.assoc._kill = True
        self._kill_thread = True


class EventAssociation(Association):
    """pynetdicom 3.0's acceptor with event-driven waits instead of fixed sleeps.

    The stock reactor sleeps 1 ms per loop before it polls the queue of decoded DIMSE messages;
    here it blocks on that queue for up to the same millisecond, so a message is served the
    moment it is decoded. Its DUL is :class:`EventDUL`. The release/abort/timeout checks are
    pynetdicom's own, unchanged.
    """

    def __init__(self, ae: Any, mode: str) -> None:
        super().__init__(ae, mode)
        self.dul = EventDUL(self)
        # Association.__init__ set the ARTIM (acse_timeout) and idle (network_timeout) timers on
        # the DUL it made; the replacement gets them again, or it keeps pynetdicom's defaults.
        self.acse_timeout = self.acse_timeout
        self.network_timeout = self.network_timeout
        self.release_answered = False
        self.failure: str | None = None  # why we aborted it, for the association log
        self.store_stream: StreamedStore | None = None  # serves C-STOREs on the fast path
        self.serving = threading.Event()  # set once EVT_ESTABLISHED has been handled
        self.tls = False  # over DICOM TLS
        self.tls_subject: str | None = None  # the verified client certificate's CN

    def _run_reactor(self) -> None:
        self.serving.set()
        self._reactor()

    def _reactor(self) -> None:
        self._is_paused = False
        while not self._kill:
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            try:
                context_id, msg = self.dimse.msg_queue.get(timeout=REACTOR_WAIT_S)
            except queue.Empty:
                context_id, msg = None, None
            if msg:
                self._serve_request(msg, cast(int, context_id))
            if self._finished():
                return

    def _finished(self) -> bool:
        if self.is_established and self.acse.is_release_requested():
            self.release_answered = True  # before the peer can close the connection
            self.acse.send_release(is_response=True)
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return True
        if self.acse.is_aborted():
            self.dul.receive_pdu(wait=False)
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return True
        if not self.dul.is_alive():
            self.kill()
            return True
        if self.dul.idle_timer_expired():
            self.abort()
            self.kill()
            return True
        return False
