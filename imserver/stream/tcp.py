"""The TCP side of our stream listeners: Nagle off, and writes sent once per reactor turn.

Twisted's TCP transport queues every C{write()} and sends at the next poll:
each call re-arms the socket for writing (an epoll_ctl), the poll reports it
writable, C{doWrite} sends and disarms it (another epoll_ctl), all in Python
per connection per turn. A server that routes thousands of small stanzas a
second pays that on every one. L{StreamServer} connections instead keep what
a turn writes in a list and send it in one C{send()} at the start of the next
turn, straight to the socket when nothing is queued before it (as asyncio's
transports do); only what the kernel will not take goes through Twisted's own
buffer, so flow control (a producer paused while the peer does not read) is
unchanged. Under TLS, Twisted's TLS layer already gathers a turn's writes;
its one write per turn goes straight to the socket too.

This reaches below Twisted's public API (the transport's buffer attributes and
C{twisted.internet._newtls.startTLS}, which takes the class TLS writes its
records through); tests/test_tls_transport.py and every wire test exercise it.
"""

from __future__ import annotations

from twisted.application import service
from twisted.internet import defer, reactor, tcp
from twisted.internet._newtls import startTLS
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IProtocolFactory, ITCPTransport
from twisted.protocols.tls import TLSMemoryBIOFactory


def no_delay(transport) -> None:
    """Turn Nagle's algorithm off (as Prosody does), when C{transport} is TCP.

    With Nagle on, a small write made right after a large one (a stanza after
    a roster, a ping answer after an archive page) waits for the peer's
    delayed ACK: up to 40 ms on Linux.
    """
    if ITCPTransport.providedBy(transport):
        transport.setTcpNoDelay(True)


def _send(connection: FileDescriptor, data: bytes) -> None:
    """Write C{data} to the socket now if nothing waits before it; else queue it as Twisted does."""
    if (
        connection.connected
        and not connection.disconnecting
        and not connection._aborting
        and not connection._writeDisconnected
        and not connection._tempDataBuffer
        and connection.offset == len(connection.dataBuffer)
    ):
        try:
            sent = connection.socket.send(data)
        except OSError:
            # Full (EAGAIN) or dead: Twisted's own path waits, or finds out and reports it.
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    FileDescriptor.write(connection, data)


class _TLSRecords:
    """What the TLS layer of a STARTTLS connection writes its records through (the 'bypass')."""

    write = _send

    def writeSequence(connection, iovec) -> None:  # noqa: N805 (called on the class)
        _send(connection, b"".join(iovec))

    loseConnection = FileDescriptor.loseConnection
    registerProducer = FileDescriptor.registerProducer
    unregisterProducer = FileDescriptor.unregisterProducer


class _Turn:
    """The connections written to in this reactor turn; one call sends for all of them."""

    def __init__(self) -> None:
        self.written: list[StreamConnection] = []
        self.call = None

    def add(self, connection: StreamConnection) -> None:
        self.written.append(connection)
        if self.call is None:
            self.call = reactor.callLater(0, self.flush)

    def flush(self) -> None:
        self.call = None
        written, self.written = self.written, []
        for connection in written:
            connection.flush()


_turn = _Turn()


class StreamConnection(tcp.Server):
    """A server-side connection that sends what one turn wrote in one go (see the module)."""

    _pending: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self.TLS:
            super().write(data)  # the TLS layer gathers and comes back through _TLSRecords
        elif data and self.connected and not self._writeDisconnected:
            if self._pending is None:
                self._pending = [data]
                _turn.add(self)
            else:
                self._pending.append(data)

    def writeSequence(self, iovec) -> None:
        for data in iovec:
            self.write(data)

    def flush(self) -> None:
        """Send what this turn wrote (before TLS starts, or the connection closes)."""
        pending, self._pending = self._pending, None
        if pending:
            _send(self, b"".join(pending))

    def loseConnection(self) -> None:
        self.flush()
        super().loseConnection()

    def abortConnection(self) -> None:
        self._pending = None  # an abort sends nothing more
        super().abortConnection()

    def startTLS(self, ctx, normal: bool = True) -> None:
        self.flush()  # e.g. <proceed/>: in the clear, before the handshake
        startTLS(self, ctx, normal, _TLSRecords)


class TLSStreamConnection(tcp.Server):
    """The TCP under a direct-TLS connection: the TLS layer gathers a turn's writes already."""

    def write(self, data: bytes) -> None:
        if data:
            _send(self, data)


class _Port(tcp.Port):
    transport = StreamConnection


class _TLSPort(tcp.Port):
    transport = TLSStreamConnection


class StreamServer(service.Service):
    """Listen on C{port} for XMPP streams: c2s, s2s, or HTTP carrying WebSocket and BOSH.

    Over TLS from the first byte when C{tls} is given. The counterpart of
    C{internet.TCPServer} and C{internet.SSLServer}, with L{StreamConnection}s
    as transports.
    """

    def __init__(self, port: int, factory: IProtocolFactory, interface: str = "", tls=None) -> None:
        self.port_number = port
        self.factory = factory
        self.interface = interface
        self.tls = tls
        self._port: tcp.Port | None = None

    def _listen(self) -> tcp.Port:
        if self.tls is None:
            port = _Port(self.port_number, self.factory, interface=self.interface)
        else:
            wrapped = TLSMemoryBIOFactory(self.tls, False, self.factory)
            port = _TLSPort(self.port_number, wrapped, interface=self.interface)
        port.startListening()
        return port

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._port = self._listen()

    def startService(self) -> None:
        super().startService()
        if self._port is None:
            self._port = self._listen()

    def stopService(self) -> defer.Deferred:
        super().stopService()
        port, self._port = self._port, None
        return defer.maybeDeferred(port.stopListening) if port is not None else defer.succeed(None)
