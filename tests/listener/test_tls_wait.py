"""The fast receive path's wait sees bytes already decrypted inside a TLS object."""

from __future__ import annotations

import os
import socket
import ssl
import threading
from pathlib import Path

from tlscerts import make_pki

from listener.receive.fastpath.association import wait_readable
from listener.security.tls import client_context, server_context


def test_decrypted_bytes_pending_in_tls_count_as_readable(tmp_path: Path) -> None:
    """After reading part of a TLS record, the rest is readable though the descriptor is quiet."""
    pki = make_pki(tmp_path)
    server_side, client_side = socket.socketpair()
    server = server_context(pki.server.cert, pki.server.key)
    client = client_context(pki.ca, check_hostname=False)
    wrapped: list[ssl.SSLSocket] = []
    handshake = threading.Thread(
        target=lambda: wrapped.append(server.wrap_socket(server_side, server_side=True))
    )
    handshake.start()
    peer = client.wrap_socket(client_side)
    handshake.join()
    sock = wrapped[0]
    wake_read, wake_write = os.pipe()
    try:
        peer.sendall(b"x" * 1000)  # one TLS record
        assert sock.recv(6) == b"xxxxxx"  # a PDU header; 994 bytes stay inside the TLS object
        assert sock.pending() == 994

        assert wait_readable(sock, wake_read, 0.0)
        assert len(sock.recv(4096)) == 994
        assert not wait_readable(sock, wake_read, 0.0)
    finally:
        os.close(wake_read)
        os.close(wake_write)
        peer.close()
        sock.close()
