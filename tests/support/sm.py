"""XEP-0198 on the wire: a RawClient that counts what it handles, and its acks and resumes.

The client side of stream management, written from the XEP and sharing no
code with the server: it counts every stanza it receives after <enable/> (its
'h', kept across resumptions), answers the server's <r/> only when told to,
and can drop its connection without closing the stream (a phone losing its
network) or resume on a new connection.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import struct
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from support.ca import TestCA
from support.client import IQ, MESSAGE, NS_CLIENT, PRESENCE, RawClient, clark, to_text
from support.im import User, body_is, presence
from support.prosody import DEFAULT_MODULES, ProsodyProcess
from support.server import ServerProcess
from support.tools import needs

NS_SM = "urn:xmpp:sm:3"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
MECHANISM = "SCRAM-SHA-1"  # offered by imserver and Prosody alike
STANZA_TAGS = frozenset((IQ, MESSAGE, PRESENCE))


def sm(local: str) -> str:
    return clark(NS_SM, local)


class SMClient(RawClient):
    """A RawClient with a XEP-0198 inbound counter.

    C{handled} counts stanzas received since <enable/> (mod 2^32) whether or
    not the test has taken them from the queue yet: what arrived is handled.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counting = False
        self.handled = 0
        self.sm_id: str | None = None

    def _feed(self, data: bytes) -> None:
        before = len(self._queue)
        super()._feed(data)
        if self.counting:
            new = list(self._queue)[before:]
            self.handled = (self.handled + sum(e.tag in STANZA_TAGS for e in new)) % 2**32

    def enable(self, resume: bool = True, max_: int | None = None) -> ET.Element:
        """<enable/>; returns <enabled/> (or <failed/>) and starts counting."""
        attributes = " resume='true'" if resume else ""
        if max_ is not None:
            attributes += f" max='{max_}'"
        self.send(f"<enable xmlns='{NS_SM}'{attributes}/>")
        self.counting = True
        self.handled = 0
        answer = self.expect(lambda e: e.tag in (sm("enabled"), sm("failed")))
        if answer.tag == sm("enabled"):
            self.sm_id = answer.get("id")
        return answer

    def ack(self) -> None:
        """Send <a/> with everything handled so far."""
        self.send(f"<a xmlns='{NS_SM}' h='{self.handled}'/>")

    def request(self) -> int:
        """<r/> and the server's 'h' from its <a/>."""
        self.send(f"<r xmlns='{NS_SM}'/>")
        return int(self.expect(sm("a")).get("h"))

    def drop(self) -> None:
        """Lose the connection: no </stream:stream>, a TCP reset (like a dead network)."""
        sock, self.sock = self.sock, None
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            sock.close()
        self.closed = True

    def reconnect(self, user: str, password: str) -> None:
        """A new connection up to the point of bind (TLS, SASL, stream restart)."""
        self.sock = None
        self.closed = False
        self._queue.clear()
        self.connect()
        features = self.open_stream()
        if features.find(clark("urn:ietf:params:xml:ns:xmpp-tls", "starttls")) is not None:
            self.starttls()
            self.open_stream()
        self.auth_scram(user, password, "SCRAM-SHA-1")
        self.features = self.open_stream()

    def resume(self, previd: str | None = None, h: int | None = None) -> ET.Element:
        """<resume/>; returns <resumed/> or <failed/>."""
        previd = self.sm_id if previd is None else previd
        h = self.handled if h is None else h
        self.send(f"<resume xmlns='{NS_SM}' previd='{previd}' h='{h}'/>")
        return self.expect(lambda e: e.tag in (sm("resumed"), sm("failed")))


def failed_condition(element: ET.Element) -> str | None:
    """The stanza error condition inside a <failed/>."""
    for child in element:
        if child.tag.startswith(f"{{{NS_STANZAS}}}"):
            return child.tag.rpartition("}")[2]
    return None


#: imserver's default plugins plus stream management and client state indication.
PLUGINS = [
    "sessions",
    "disco",
    "ping",
    "version",
    "roster",
    "presence",
    "subscriptions",
    "offline",
    "privacy",
    "blocking",
    "sm",
    "csi",
]


def sm_online(clients, account, resume: bool = True) -> SMClient:
    """Log in like a mobile client: bind, enable SM, roster, initial presence."""
    client: SMClient = clients()
    client.login(account[0], account[1], "phone", MECHANISM)
    enabled = client.enable(resume=resume)
    assert enabled.tag == sm("enabled"), to_text(enabled)
    come_online(client)
    return client


def come_online(client: RawClient) -> None:
    """Roster get, then initial presence and its echo (Prosody's has no 'to')."""
    result = client.iq("<iq type='get'><query xmlns='jabber:iq:roster'/></iq>")
    assert result.get("type") == "result", to_text(result)
    client.send("<presence/>")
    client.expect(presence(client.jid))


def superseded_updates_then_chat(phone: SMClient, laptop: User, bob: User, text: str) -> None:
    """While C{phone} is inactive (XEP-0352), C{laptop} changes its presence three times
    (the server holds the last and drops the others), then C{bob} chats: the held
    update and the message arrive, and the phone acknowledges all it received."""
    for show in ("away", "xa", "dnd"):
        laptop.send(f"<presence><show>{show}</show></presence>")
    laptop.sync()
    chat_to(bob, phone.jid, text)
    phone.expect(body_is(text))
    updates = [e for e in phone.drain(0.2) if presence(laptop.client.jid)(e)]
    assert [e.findtext(clark(NS_CLIENT, "show")) for e in updates] == ["dnd"]
    phone.ack()
    phone.request()  # a round trip: the ack has been taken


def assert_resumed_without_repeats(phone: SMClient, account, *repeats: Callable) -> None:
    """Drop C{phone}'s connection and resume: none of C{repeats} may arrive again."""
    phone.drop()
    phone.reconnect(*account)
    assert phone.resume().tag == sm("resumed")
    again = [e for e in phone.drain(0.5) if any(repeat(e) for repeat in repeats)]
    assert not again, [to_text(e) for e in again]


def plain_online(clients, account, resource: str = "desk") -> User:
    """Log in without stream management: bind C{resource}, roster, initial presence."""
    client = clients(RawClient)
    client.login(account[0], account[1], resource, MECHANISM)
    come_online(client)
    return User(client, *account)


def chat_to(sender: User | RawClient, to: str, *bodies: str) -> None:
    for text in bodies:
        sender.send(f"<message to='{to}' type='chat'><body>{text}</body></message>")


def bodies(elements) -> list[str]:
    return [e.findtext(clark(NS_CLIENT, "body")) for e in elements if e.tag == MESSAGE]


def received_bodies(client: RawClient, wait: float = 0.3) -> list[str]:
    """Bodies of every message that arrived (and was not taken) after a ping round trip."""
    user = User(client, "", "")
    return bodies(user.received(wait))


# -- one scenario, either server ------------------------------------------------------

#: Seconds a dropped session waits for resumption, on both servers.
RESUME_TIMEOUT = 3
#: Senders (imserver) or stanzas (Prosody) an inactive client's queue holds before a flush.
CSI_LIMIT = 4
SERVERS = ["imserver", pytest.param("prosody", marks=needs("prosody"))]


@dataclass
class Target:
    """One server under test: its name, process and a way to make accounts."""

    name: str
    process: ServerProcess | ProsodyProcess
    make_account: Callable[[], tuple[str, str]]


@contextlib.contextmanager
def running(name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """A started imserver or Prosody ("imserver"/"prosody") with SM and a short resume time."""
    if name == "imserver":
        process = ServerProcess(
            tmp_path_factory.mktemp("imserver"),
            server={"plugins": PLUGINS},
            plugin={"sm": {"resume_timeout": RESUME_TIMEOUT}, "csi": {"max_held": CSI_LIMIT}},
        )
        process.start()

        def make() -> tuple[str, str]:
            return process.new_account("sm")

    else:
        ca = TestCA(tmp_path_factory.mktemp("ca"))
        process = ProsodyProcess(
            tmp_path_factory.mktemp("prosody"),
            certificate=ca.issue("localhost"),
            modules_enabled=(*DEFAULT_MODULES, "smacks", "csi_simple"),
            options={"smacks_hibernation_time": RESUME_TIMEOUT, "csi_queue_size": CSI_LIMIT},
        )
        process.start()

        def make() -> tuple[str, str]:
            jid = f"sm-{secrets.token_hex(4)}@{process.host}"
            password = "pw-" + secrets.token_urlsafe(8)
            process.register(jid, password)
            return jid, password

    try:
        yield Target(name, process, make)
    finally:
        process.stop() if name == "prosody" else process.kill()
