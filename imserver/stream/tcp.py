"""Socket options every stream transport we own sets on its TCP connection."""

from __future__ import annotations

from twisted.internet.interfaces import ITCPTransport


def no_delay(transport) -> None:
    """Turn Nagle's algorithm off (as Prosody does), when C{transport} is TCP.

    With Nagle on, a small write made right after a large one (a stanza after
    a roster, a ping answer after an archive page) waits for the peer's
    delayed ACK: up to 40 ms on Linux.
    """
    if ITCPTransport.providedBy(transport):
        transport.setTcpNoDelay(True)
