"""The receive AE's server: presentation contexts, admission, and the one listening socket.

Association admission (calling AE and host allow-list, called AE titles, the association limit
shared by all receive processes) is decided by :func:`listener.receive.admission.admission`
before any presentation context is negotiated (PS3.8 §7.1.1.9 A-ASSOCIATE-RJ reasons).

The listening socket is opened once, by :func:`open_listener` in the supervisor, and shared by
every receive process (passed to :func:`start_server`): a second gateway, or any other program,
on the same port makes start-up fail naming the setting, instead of silently sharing the port
(no ``SO_REUSEPORT``). Accepted connections get ``network_timeout_s`` as their socket timeout,
so a peer that stalls inside a PDU is closed; one that never associates is closed after
``acse_timeout_s`` (pynetdicom's ARTIM wait).

DICOM TLS (PS3.15 Annex B.1, B.9): with ``tls.cert_file`` set, a second listening socket on
``tls.port`` serves the same AE over TLS. The handshake runs in the connection's own thread,
never in the accepting one, bounded by ``acse_timeout_s``, so a slow or hostile client delays
no one else; a refused handshake (no client certificate, one from another CA, plain DICOM on
the TLS port) is logged and recorded in the association log with its reason. The verified
client certificate's subject CN is kept on the association for the allow-list and the logs.
"""

from __future__ import annotations

import errno
import socket
import ssl
import threading
from collections.abc import Sequence
from copy import copy
from typing import Any

from pydicom.uid import UID, AllTransferSyntaxes
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from listener.errors import ConfigError
from listener.logging import get_logger
from listener.receive.admission import admission
from listener.receive.fastpath.association import EventAssociation
from listener.receive.scp import Receiver
from listener.receive.stock import BoundedSocket, configure_pynetdicom
from listener.security.tls import handshake_reason, server_context, subject_cn
from listener.settings import Settings

VERIFICATION = "1.2.840.10008.1.1"
UNCOMPRESSED = frozenset(
    {
        "1.2.840.10008.1.2",  # Implicit VR Little Endian
        "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
        "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
    }
)
# Storage SOP classes the gateway must accept even if a pynetdicom release drops them.
REQUIRED_STORAGE_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR Storage
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR Storage
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR Storage
    "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State Storage
    "1.2.840.10008.5.1.4.1.1.11.2",  # Color Softcopy Presentation State Storage
)


def storage_contexts() -> list[PresentationContext]:
    """Every storage SOP class with every transfer syntax pydicom knows (stored as received)."""
    classes = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
    classes += [uid for uid in REQUIRED_STORAGE_CLASSES if uid not in classes]
    syntaxes: list[str | UID] = list(AllTransferSyntaxes)
    contexts = [build_context(uid, syntaxes) for uid in classes]
    contexts.append(build_context(VERIFICATION, syntaxes))
    return contexts


def prefer_requested_syntaxes(
    requested: Sequence[PresentationContext], supported: Sequence[PresentationContext]
) -> list[PresentationContext]:
    """The supported contexts with each one's transfer syntaxes in the requestor's preference.

    pynetdicom accepts the first transfer syntax in the *acceptor's* list that was proposed;
    a sender proposes its preferred one (usually the one its file is in) first, so following
    the sender keeps the data as received and spares the sender a conversion it may not be able
    to do (PS3.8 §9.3.2.2 leaves the choice to the acceptor). Where two proposals of the same
    SOP class rank syntaxes equally, compressed ones go first: an uncompressed-only context
    still gets an uncompressed syntax, and the context that offers compression gets it.

    ``supported`` is the server's list, shared by every association, and is left as it is: a
    context whose order changes is a copy with its own list. pynetdicom's setter would check
    every syntax again (about 50 a context, 150 contexts an association); they were checked when
    the server's contexts were built, so the copy takes the reordered list as it is.
    """
    ranks: dict[str, dict[str, int]] = {}
    for context in requested:
        rank = ranks.setdefault(str(context.abstract_syntax), {})
        for index, syntax in enumerate(context.transfer_syntax):
            rank[str(syntax)] = min(rank.get(str(syntax), index), index)
    ordered_contexts = []
    for context in supported:
        rank = ranks.get(str(context.abstract_syntax), {})
        if rank:
            ordered = sorted(
                context.transfer_syntax,
                key=lambda syntax: (rank.get(str(syntax), len(rank) + 1), syntax in UNCOMPRESSED),
            )
            if ordered != context.transfer_syntax:
                context = copy(context)
                context._transfer_syntax = ordered  # pynetdicom 3.0: the property's own list
        ordered_contexts.append(context)
    return ordered_contexts


# --- the server ----------------------------------------------------------------------------


class _AdmissionACSE(ACSE):
    """pynetdicom's ACSE with our admission decision taken before context negotiation."""

    def __init__(self, assoc: Association, receiver: Receiver) -> None:
        super().__init__(assoc)
        self._receiver = receiver

    def _negotiate_as_acceptor(self) -> None:
        request = self.requestor.primitive
        assert request is not None  # set by the DUL before negotiation starts
        calling = str(request.calling_ae_title).strip()
        called = str(request.called_ae_title).strip()
        peer = str(self.assoc.requestor.address)
        settings = self._receiver.settings
        local = self._receiver.open_associations(self.assoc)
        rejection = admission(
            calling_ae=calling,
            called_ae=called,
            peer_host=peer,
            peer_cn=getattr(self.assoc, "tls_subject", None),
            ae_titles=settings.ae_titles,
            allowed=settings.allowed_callers,
            active=self._receiver.counter.total(local),
            limit=settings.max_associations,
        )
        if rejection is not None:
            self._receiver.log.warning(
                "association_rejected",
                calling_ae=calling,
                called_ae=called,
                peer=peer,
                reason=rejection.why,
                result=rejection.result,
                source=rejection.source,
                diagnostic=rejection.reason,
            )
            self._receiver.record_rejection(self.assoc, calling, called, rejection.why)
            self.requestor.ae_title = request.calling_ae_title
            self.send_reject(rejection.result, rejection.source, rejection.reason)
            evt.trigger(self.assoc, evt.EVT_REJECTED, {})
            self.assoc.kill()
            return
        self._receiver.publish_open(self.assoc)
        self.acceptor.ae_title = called
        supported = self.acceptor.supported_contexts  # this association's own list
        supported[:] = prefer_requested_syntaxes(self.requestor.requested_contexts, supported)
        super()._negotiate_as_acceptor()


class _RequestHandler(RequestHandler):
    """pynetdicom's request handler, making our association and ACSE classes; on the TLS port it
    first completes the TLS handshake in this connection's thread."""

    receiver: Receiver
    tls_subject: str | None = None

    def handle(self) -> None:
        context: ssl.SSLContext | None = getattr(self.server, "tls_context", None)
        if context is not None and not self._handshake(context):
            return
        super().handle()

    def _handshake(self, context: ssl.SSLContext) -> bool:
        """Wrap the connection in TLS; False (logged, recorded) when the handshake fails."""
        raw: socket.socket = self.request
        host, port = str(self.client_address[0]), int(self.client_address[1])
        raw.settimeout(self.ae.acse_timeout)
        try:
            secure = context.wrap_socket(raw, server_side=True)
        except (OSError, ValueError) as exc:
            reason = f"TLS handshake failed: {handshake_reason(exc)}"
            self.receiver.log.warning(
                "association_rejected", peer=host, reason=reason, tls=True, source="tls"
            )
            self.receiver.record_refused_connection(host, port, reason)
            raw.close()
            return False
        secure.settimeout(self.ae.network_timeout)
        self.request = secure
        self.tls_subject = subject_cn(secure)
        return True

    def _create_association(self) -> Any:
        # As RequestHandler._create_association in pynetdicom 3.0, with our classes: on the
        # fast engine the event-driven association that serves C-STORE from the P-DATA bytes,
        # on the stock engine pynetdicom's own association with a PDU-length guard.
        assoc: Any
        if self.receiver.settings.receive_engine == "fast":
            assoc = EventAssociation(self.ae, MODE_ACCEPTOR)
            assoc.set_socket(AssociationSocket(assoc, client_socket=self.request))
            assoc.store_stream = self.receiver
        else:
            assoc = Association(self.ae, MODE_ACCEPTOR)
            assoc.set_socket(BoundedSocket(assoc, client_socket=self.request))
            assoc.failure = None  # why we aborted it, for the association log
            assoc.uids_checked_by_intake = True  # see listener.receive.stock.configure_pynetdicom
        assoc._server = self.server
        assoc.name = f"Acceptor@{self.client_address[0]}:{self.client_address[1]}"
        assoc.acse = _AdmissionACSE(assoc, self.receiver)
        assoc.tls_subject = self.tls_subject
        assoc.tls = isinstance(self.request, ssl.SSLSocket)
        acceptor = assoc.acceptor
        acceptor.maximum_length = self.ae.maximum_pdu_size
        acceptor.ae_title = self.server.ae_title
        acceptor.address_info = self.local
        acceptor.implementation_class_uid = self.ae.implementation_class_uid
        acceptor.implementation_version_name = self.ae.implementation_version_name
        # A list of its own holding the server's contexts, which nothing changes: pynetdicom
        # deep-copies them for every association (about 35 ms of CPU for 150 contexts of 50
        # transfer syntaxes each); the one change made per association, the order of a
        # context's syntaxes, is made on a copy of that context (prefer_requested_syntaxes).
        acceptor.supported_contexts = list(self.server.contexts)
        assoc.requestor.address_info = self.remote
        bound: dict[Any, Any] = self.server._handlers
        for event, handlers in bound.items():
            if event.is_intervention and handlers:
                assoc.bind(event, *handlers)
            elif isinstance(event, evt.NotificationEvent):
                for handler, args in handlers:
                    assoc.bind(event, handler, args)
        return assoc


class ReceiveServer(ThreadedAssociationServer):
    """pynetdicom's threaded server on a listening socket opened beforehand (shared by the
    receive processes), with TCP_NODELAY and the network timeout on accepted sockets."""

    listener: socket.socket | None = None
    tls_context: ssl.SSLContext | None = None

    def server_bind(self) -> None:
        if self.listener is None:
            super().server_bind()
            return
        assert self.socket is not None
        self.socket.close()
        self.socket = self.listener
        # Several processes wait on one socket: the one that loses the race to accept must not
        # block in accept(), so the shared socket is non-blocking here.
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        if self.listener is None:
            super().server_activate()

    def get_request(self) -> tuple[socket.socket, Any]:
        client, address = super().get_request()
        client.setblocking(True)
        client.settimeout(self.ae.network_timeout)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address


def open_listener(settings: Settings, *, tls: bool = False) -> socket.socket:
    """Bind and listen on ``host``:``port`` (``tls.port`` with ``tls``) once, for every receive
    process to share.

    Raises ConfigError naming the setting (``port`` or ``tls.port``) when the port is taken (by
    another gateway or any other program) or cannot be bound.
    """
    name, port = ("tls.port", settings.tls.port) if tls else ("port", settings.port)
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT only; not a 2nd listener
    try:
        sock.bind((settings.host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"{name}: {port} on {settings.host} is already in use"
                " (another pacs-ai serve or another program listens there)"
            ) from None
        raise ConfigError(
            f"{name}: cannot listen on {settings.host}:{port}: {exc.strerror}"
        ) from None
    sock.set_inheritable(False)
    return sock


def open_listeners(settings: Settings) -> list[socket.socket]:
    """The listening sockets of the settings: the plain port unless it is 0, and the TLS port
    when a certificate is configured."""
    sockets = []
    try:
        if settings.port:
            sockets.append(open_listener(settings))
        if settings.tls.enabled:
            sockets.append(open_listener(settings, tls=True))
    except ConfigError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def tls_server_context(settings: Settings) -> ssl.SSLContext:
    """The receive TLS context of ``tls``; ConfigError naming the setting when the certificate
    or key cannot be loaded."""
    tls = settings.tls
    assert tls.cert_file is not None and tls.key_file is not None
    try:
        return server_context(
            tls.cert_file, tls.key_file, tls.ca_file, require_client_cert=tls.require_client_cert
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls.cert_file: cannot load the certificate and key: {exc}") from None


def make_ae(settings: Settings) -> AE:
    """The receive AE with the settings' timeouts, PDU size and contexts."""
    ae = AE(ae_title=settings.ae_titles[0])
    ae.acse_timeout = settings.acse_timeout_s
    ae.dimse_timeout = settings.dimse_timeout_s
    ae.network_timeout = settings.network_timeout_s
    ae.maximum_pdu_size = settings.max_pdu_size
    # The limit is admission's (``_AdmissionACSE``: every receive process, ended associations
    # not counted). pynetdicom's own check counts every association thread still alive, ended
    # ones included, and would refuse a sender for threads that are only winding down; it is
    # left as a backstop on threads at twice the limit.
    ae.maximum_associations = 2 * settings.max_associations
    ae.require_called_aet = False
    ae.require_calling_aet = []
    ae.supported_contexts = storage_contexts()
    return ae


def start_server(
    settings: Settings,
    receiver: Receiver,
    *,
    listener: socket.socket | None = None,
    tls: bool = False,
) -> ReceiveServer:
    """Serve associations on background threads, on ``listener`` (from :func:`open_listener`)
    or on a socket of its own bound to ``host``:``port`` (``tls.port`` with ``tls``); with
    ``tls`` every connection is DICOM TLS."""
    if listener is None:
        listener = open_listener(settings, tls=tls)
    context = tls_server_context(settings) if tls else None
    if settings.receive_engine == "stock":
        configure_pynetdicom()
    ae = make_ae(settings)
    handler = type("RequestHandler", (_RequestHandler,), {"receiver": receiver})
    server_class = type("Server", (ReceiveServer,), {"listener": listener, "tls_context": context})
    server = ae.make_server(
        (settings.host, settings.port),
        evt_handlers=receiver.handlers(),
        server_class=server_class,
        request_handler=handler,
    )
    assert isinstance(server, ReceiveServer)
    ae._servers.append(server)
    name = "receive-server-tls" if tls else "receive-server"
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    get_logger("receive").info(
        "receiver_listening",
        host=settings.host,
        port=server.server_address[1],
        tls=tls,
        client_cert_required=settings.tls.require_client_cert if tls else None,
        ae_titles=settings.ae_titles,
        max_pdu_size=settings.max_pdu_size,
        engine=settings.receive_engine,
    )
    return server
