"""A whole imserver Server in memory: real dispatcher, router and plugins, no sockets.

The store keeps everything in dicts and answers with already-fired Deferreds,
so a stanza's whole trip (stages 1-7, plugins, hooks) runs synchronously inside
the test, without a reactor. Streams are L{FakeStream}s that keep what was sent
to them. For plugin logic (delivery rules, privacy on each path); behaviour on
the wire is tested against a real server process elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet import defer
from twisted.words.xish import domish
from zope.interface import implementer

from imserver import config
from imserver.errors import UserExists, UserNotFound
from imserver.interfaces import ISessionStream, IStore
from imserver.jid import parse_jid
from imserver.privacy import PrivacySettings
from imserver.roster import Roster
from imserver.serialize import stanza_bytes
from imserver.server import Server
from imserver.session import Session
from imserver.stream.parser import parse_stanza

PLUGINS = ("disco", "roster", "presence", "subscriptions", "offline", "privacy", "blocking")


@implementer(IStore)
class MemoryStore:
    """Every store interface over dicts; C{hold_offline} makes offline writes wait."""

    def __init__(self) -> None:
        self.users: dict[tuple[str, str], Any] = {}
        self.rosters: dict[tuple[str, str], Roster] = {}
        self.offline: dict[tuple[str, str], list[str]] = {}
        self.privacy: dict[tuple[str, str], PrivacySettings] = {}
        #: When set, store_offline returns this Deferred's successor (the test fires it).
        self.hold_offline: defer.Deferred | None = None
        self.offline_writes = 0

    def start(self):
        return defer.succeed(None)

    def stop(self):
        return defer.succeed(None)

    def create_user(self, user, host, credentials):
        if (user, host) in self.users:
            return defer.fail(UserExists(user))
        self.users[(user, host)] = credentials
        return defer.succeed(None)

    def get_credentials(self, user, host):
        return defer.succeed(self.users.get((user, host)))

    def set_credentials(self, user, host, credentials):
        if (user, host) not in self.users:
            return defer.fail(UserNotFound(user))
        self.users[(user, host)] = credentials
        return defer.succeed(None)

    def delete_user(self, user, host):
        for table in (self.users, self.rosters, self.offline, self.privacy):
            table.pop((user, host), None)
        return defer.succeed(None)

    def user_exists(self, user, host):
        return defer.succeed((user, host) in self.users)

    def get_roster(self, user, host):
        stored = self.rosters.get((user, host))
        if stored is None:
            return defer.succeed(Roster())
        return defer.succeed(Roster(stored.version, dict(stored.items), dict(stored.pending_in)))

    def write_roster(self, user, host, version, items, pending_in):
        self.rosters.setdefault((user, host), Roster()).apply(version, items, pending_in)
        return defer.succeed(None)

    def store_offline(self, user, host, stanza_xml, limit):
        self.offline_writes += 1
        queue = self.offline.setdefault((user, host), [])
        if len(queue) >= limit:
            return defer.succeed(False)
        queue.append(stanza_xml)
        if self.hold_offline is not None:
            held = defer.Deferred()
            self.hold_offline.addCallback(lambda _: held.callback(True))
            return held
        return defer.succeed(True)

    def pop_offline(self, user, host):
        return defer.succeed(self.offline.pop((user, host), []))

    def get_privacy(self, user, host):
        stored = self.privacy.get((user, host), PrivacySettings())
        return defer.succeed(PrivacySettings(stored.default, dict(stored.lists)))

    def write_privacy(self, user, host, lists, default):
        settings = self.privacy.setdefault((user, host), PrivacySettings())
        for name, items in lists.items():
            if items:
                settings.lists[name] = list(items)
            else:
                settings.lists.pop(name, None)
        settings.default = default
        return defer.succeed(None)


@implementer(ISessionStream)
class FakeStream:
    """What a session's transport would be: it keeps the stanzas sent, parsed back."""

    secure = True
    peer_address = "127.0.0.1"

    def __init__(self) -> None:
        self.closed = False
        self.sent: list[domish.Element] = []
        self.failed: tuple[str, str | None] | None = None

    def send_stanza(self, stanza: domish.Element) -> None:
        self.send_bytes(stanza_bytes(stanza))

    def send_bytes(self, data: bytes) -> None:
        if not self.closed:
            self.sent.append(parse_stanza(data.decode()))

    def drained(self):
        return defer.succeed(None)

    def fail(self, condition: str, text: str | None = None) -> None:
        self.failed = (condition, text)
        self.closed = True

    def take(self) -> list[domish.Element]:
        """What was sent since the last take."""
        sent, self.sent = self.sent, []
        return sent


def make_server(plugins: Iterable[str] = PLUGINS, hosts=("example.net",), **tables) -> Server:
    """A Server with C{plugins} over a L{MemoryStore}; C{tables} are extra config tables."""
    raw = {"server": {"hosts": list(hosts), "plugins": list(plugins)}, **tables}
    server = Server(config.from_dict(raw), MemoryStore())
    server.ready.callback(None)
    return server


def connect(server: Server, full_jid: str, account: bool = True) -> Session:
    """Bind a session for C{full_jid} (creating the account) on a fake stream."""
    jid = parse_jid(full_jid)
    if account:
        server.store.users.setdefault((jid.user, jid.host), object())
    session = Session(jid, FakeStream())
    server.bind(session)
    return session


def send(server: Server, session: Session, xml: str):
    """Dispatch one stanza from C{session}, as its stream would; returns what dispatch did."""
    return server.dispatcher.dispatch(parse_stanza(xml), session)


def taken(session: Session) -> list[domish.Element]:
    return session.stream.take()
