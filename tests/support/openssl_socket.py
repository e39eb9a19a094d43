"""A blocking TLS client socket on pyOpenSSL, for what Python's ssl module lacks.

Python 3.11's ssl has no RFC 5705 keying-material exporter, so it cannot give
a client the RFC 9266 'tls-exporter' channel binding. This wrapper offers the
part of ssl.SSLSocket that RawClient uses (sendall, recv, settimeout, close,
getpeercert, version) plus export_keying_material. The socket itself is put in
non-blocking mode and every wait is a select() with the caller's timeout.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL


class OpenSSLSocket:
    def __init__(
        self, sock: socket.socket, server_hostname: str, max_version: int | None = None
    ) -> None:
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_verify(SSL.VERIFY_NONE)  # the test server's certificate is self-signed
        if max_version is not None:
            context.set_max_proto_version(max_version)
        self._timeout = sock.gettimeout()
        self._sock = sock
        sock.setblocking(False)
        self._conn = SSL.Connection(context, sock)
        self._conn.set_tlsext_host_name(server_hostname.encode())
        self._conn.set_connect_state()
        self._retry(self._conn.do_handshake)

    def _retry(self, operation, *args):
        """Run a pyOpenSSL call until it stops asking to wait; TimeoutError past the timeout."""
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            try:
                return operation(*args)
            except SSL.WantReadError:
                readable, writable = [self._sock], []
            except SSL.WantWriteError:
                readable, writable = [], [self._sock]
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            if not any(select.select(readable, writable, [], left)[:2]):
                raise TimeoutError("TLS operation timed out")

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            sent = self._retry(self._conn.send, view)
            view = view[sent:]

    def recv(self, size: int) -> bytes:
        try:
            return self._retry(self._conn.recv, size)
        except (SSL.ZeroReturnError, SSL.SysCallError):
            return b""  # the peer closed (with or without close_notify)

    def close(self) -> None:
        with contextlib.suppress(SSL.Error, OSError):
            self._conn.shutdown()
        self._sock.close()

    def getpeercert(self, binary_form: bool = False) -> bytes | None:
        certificate = self._conn.get_peer_certificate(as_cryptography=True)
        return None if certificate is None else certificate.public_bytes(Encoding.DER)

    def version(self) -> str:
        return self._conn.get_protocol_version_name()

    def export_keying_material(self, label: bytes, length: int) -> bytes:
        return self._conn.export_keying_material(label, length)
