"""Where a remote domain's server listens: static map, DNS SRV, then the A record.

RFC 6120 §3.2 and XEP-0368: the SRV records of C{_xmpps-server._tcp} (direct
TLS) and C{_xmpp-server._tcp} (STARTTLS) are merged and ordered by RFC 2782
(priority, then a weighted random pick within a priority; among
zero-weight records direct TLS comes first); with no SRV records, the
domain's own address on port 5269. A lone target of "." means the domain
offers no service: no fallback then. Host names are resolved
through the same DNS servers (twisted.names), never the system's hosts file,
so tests can run their own zone.

twisted.names opens a UDP port for every query (a fresh random source port,
RFC 5452 §9.2) and closes it after the answer, and Twisted logs both at info
level: four lines a query, a dozen or more per connection attempt. The
resolver's ports (L{QuietUDPReactor}) log that chatter at debug level
instead, which the server's log leaves out (L{imserver.logs}); what an
operator needs, a query that timed out or that the DNS server failed, is one
line of ours.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from twisted.internet import defer, reactor, udp
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.logger import Logger, LogLevel
from twisted.names import client, dns, error
from twisted.python import log as legacy_log

log = Logger()

DEFAULT_PORT = 5269
#: Seconds for each try of a DNS query (twisted.names retries with these timeouts).
QUERY_TIMEOUTS = (1, 3, 5)


@dataclass(frozen=True)
class Target:
    """One place to try: a host name or address, a port, and whether TLS starts at once."""

    host: str
    port: int
    direct_tls: bool = False


def rfc2782_order(records: Sequence[tuple[int, int, Target]], rng=random) -> list[Target]:
    """Order (priority, weight, target) records per RFC 2782's selection algorithm.

    Lowest priority first; within one priority, repeatedly pick at random with
    probability proportional to weight (zero-weight records get a small chance,
    placed first in the running sum as the RFC says).
    """
    ordered: list[Target] = []
    for priority in sorted({r[0] for r in records}):
        group = [r for r in records if r[0] == priority]
        # Zero weights first, so they are only picked when the random number is 0.
        group.sort(key=lambda r: (r[1] != 0, not r[2].direct_tls))
        while group:
            total = sum(r[1] for r in group)
            pick = rng.randint(0, total) if total else 0
            running = 0
            for index, record in enumerate(group):
                running += record[1]
                if running >= pick:
                    ordered.append(record[2])
                    del group[index]
                    break
    return ordered


#: Runs a call with Twisted's legacy log lines inside it marked debug, not info.
_at_debug_level = partial(legacy_log.callWithContext, {"log_level": LogLevel.debug})


class _QuietPort(udp.Port):
    """A query's UDP port: "<protocol> starting on <port>" and "(UDP Port <port> Closed)".

    L{udp.Port} logs both with C{log.msg}, unconditionally; here they are debug lines.
    """

    def startListening(self) -> None:
        _at_debug_level(super().startListening)

    def connectionLost(self, reason=None) -> None:
        _at_debug_level(super().connectionLost, reason)


class QuietUDPReactor:
    """The reactor as twisted.names' client sees it: UDP ports that log at debug level.

    Everything but C{listenUDP} is the real reactor's. The DNS protocol on the port
    is made quiet too ("Starting protocol"/"Stopping protocol" are its C{noisy} lines).
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def listenUDP(
        self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192
    ) -> udp.Port:
        protocol.noisy = False
        listening = _QuietPort(port, protocol, interface, maxPacketSize, self._reactor)
        listening.startListening()
        return listening


class DomainResolver:
    """Finds the targets of a remote domain; C{servers} are (ip, port) DNS servers."""

    def __init__(
        self, servers: Sequence[tuple[str, int]], static: dict[str, tuple[str, int]]
    ) -> None:
        quiet = QuietUDPReactor(reactor)
        if servers:
            self.dns = client.Resolver(servers=list(servers), reactor=quiet)
        else:
            self.dns = client.Resolver(resolv="/etc/resolv.conf", reactor=quiet)
        self.static = static

    @defer.inlineCallbacks
    def targets(self, domain: str):
        """Fire with the ordered list of L{Target}s (empty when the domain has none)."""
        if domain in self.static:
            host, port = self.static[domain]
            return [Target(host, port)]
        records: list[tuple[int, int, Target]] = []
        unavailable = False
        for service, direct_tls in (("_xmpps-server._tcp", True), ("_xmpp-server._tcp", False)):
            answers = yield self._query(self.dns.lookupService, f"{service}.{domain}")
            for answer in answers:
                srv = answer.payload
                if answer.type != dns.SRV:
                    continue
                target = srv.target.name.decode("ascii")
                if target in ("", "."):
                    unavailable = True
                    continue
                records.append((srv.priority, srv.weight, Target(target, srv.port, direct_tls)))
        if records:
            return rfc2782_order(records)
        if unavailable:
            # RFC 2782 and RFC 6120 §3.2.1: target "." means the service is decidedly
            # not available; no fallback to the domain's own address.
            return []
        return [Target(domain, DEFAULT_PORT)]

    @defer.inlineCallbacks
    def addresses(self, host: str):
        """Fire with the IP addresses of C{host} (itself when it is one), A then AAAA."""
        if isIPAddress(host) or isIPv6Address(host):
            return [host]
        found = []
        for lookup in (self.dns.lookupAddress, self.dns.lookupIPV6Address):
            for answer in (yield self._query(lookup, host)):
                if answer.type == dns.A:
                    found.append(answer.payload.dottedQuad())
                elif answer.type == dns.AAAA:
                    found.append(socket.inet_ntop(socket.AF_INET6, answer.payload.address))
        return found

    @staticmethod
    @defer.inlineCallbacks
    def _query(lookup, name: str):
        try:
            answers, _, _ = yield lookup(name, timeout=QUERY_TIMEOUTS)
        except error.DNSNameError:  # NXDOMAIN: an answer, and a common one (no SRV record)
            return []
        except (defer.TimeoutError, error.DNSQueryTimeoutError):
            log.info("DNS query for {name} timed out", name=name)
            return []
        except error.DomainError as failed:  # SERVFAIL, REFUSED, FORMERR...: the resolver's fault
            log.info("DNS query for {name} failed: {why}", name=name, why=failed.__class__.__name__)
            return []
        return answers
