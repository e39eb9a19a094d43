"""Helpers for the RFC 6121 wire tests: fresh accounts fast, and clients that speak IM.

Tests read like the RFC's examples: C{alice.send("<presence to=... type='subscribe'/>")}
then C{bob.expect(presence(alice.bare, "subscribe"))}. Everything here is a thin
layer over L{RawClient}; what arrives is still checked element by element.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

from support.client import IQ, MESSAGE, NS_CLIENT, PRESENCE, RawClient, clark, to_text

NS_ROSTER = "jabber:iq:roster"
NS_DELAY = "urn:xmpp:delay"
NS_PING = "urn:xmpp:ping"
ROSTER_QUERY = clark(NS_ROSTER, "query")
ROSTER_ITEM = clark(NS_ROSTER, "item")
ROSTER_GROUP = clark(NS_ROSTER, "group")

Account = tuple[str, str]
Predicate = Callable[[ET.Element], bool]

# Creates many accounts in one process through the store API the CLI uses: one
# `imserver adduser` costs about a second of CPU (interpreter and imports), which
# for a few hundred accounts would dominate the whole run.
_MAKE_ACCOUNTS = """
import json, sys
from twisted.internet import defer, task
from imserver import config
from imserver.credentials import make_credentials
from imserver.storage import open_store

@defer.inlineCallbacks
def main(reactor, path):
    store = open_store(config.load(path).storage_url)
    yield store.start()
    try:
        for jid, password in json.load(sys.stdin):
            user, _, host = jid.partition("@")
            yield store.create_user(user, host, make_credentials(password))
    finally:
        yield store.stop()

task.react(main, sys.argv[1:])
"""


class AccountPool:
    """Fresh accounts on one server, created in batches by a single process."""

    def __init__(self, server: Any, batch: int = 24) -> None:
        self.server = server
        self.batch = batch
        self._ready: list[Account] = []

    def take(self, count: int = 1) -> list[Account]:
        """C{count} accounts nobody else has used: (bare JID, password) each."""
        if len(self._ready) < count:
            self._ready.extend(self._create(max(self.batch, count - len(self._ready))))
        taken, self._ready = self._ready[:count], self._ready[count:]
        return taken

    def _create(self, count: int) -> list[Account]:
        accounts = [
            (f"u{secrets.token_hex(5)}@{self.server.host}", "pw-" + secrets.token_urlsafe(12))
            for _ in range(count)
        ]
        result = subprocess.run(
            [sys.executable, "-c", _MAKE_ACCOUNTS, str(self.server.config_path)],
            input=json.dumps(accounts),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise AssertionError(f"creating accounts failed: {result.stderr}")
        return accounts


# -- matching stanzas ------------------------------------------------------------


def presence(sender: str | None = None, type_: str | None = None) -> Predicate:
    """Presence from C{sender} (exact 'from') with C{type_} (None: available)."""

    def match(e: ET.Element) -> bool:
        return (
            e.tag == PRESENCE
            and (sender is None or e.get("from") == sender)
            and e.get("type") == type_
        )

    match.__name__ = f"presence(from={sender!r}, type={type_!r})"
    return match


def any_presence(sender: str) -> Predicate:
    """Any presence whose 'from' is C{sender} or one of its resources."""

    def match(e: ET.Element) -> bool:
        source = e.get("from") or ""
        return e.tag == PRESENCE and (source == sender or source.startswith(sender + "/"))

    match.__name__ = f"any_presence(from={sender!r})"
    return match


def message(sender: str | None = None, type_: str | None = None) -> Predicate:
    """A message from C{sender} (exact 'from'); C{type_} None matches any type."""

    def match(e: ET.Element) -> bool:
        return (
            e.tag == MESSAGE
            and (sender is None or e.get("from") == sender)
            and (type_ is None or e.get("type") == type_)
        )

    match.__name__ = f"message(from={sender!r}, type={type_!r})"
    return match


def is_push(e: ET.Element) -> bool:
    return e.tag == IQ and e.get("type") == "set" and e.find(ROSTER_QUERY) is not None


def child(stanza: ET.Element, local: str, ns: str = NS_CLIENT) -> ET.Element | None:
    return stanza.find(clark(ns, local))


def text_of(stanza: ET.Element, local: str) -> str | None:
    element = child(stanza, local)
    return None if element is None else element.text


def item_view(item: ET.Element) -> dict[str, Any]:
    """A roster item as a dict: its attributes plus its groups (a list, in order)."""
    view: dict[str, Any] = dict(item.attrib)
    groups = [g.text or "" for g in item.findall(ROSTER_GROUP)]
    if groups:
        view["groups"] = groups
    return view


def canonical(element: ET.Element) -> str:
    """Canonical XML (C14N 2.0) of an element: equal strings mean equivalent XML."""
    return ET.canonicalize(ET.tostring(element, encoding="unicode"))


# -- a logged-in user ---------------------------------------------------------------


class User:
    """One logged-in resource of an account, with the RFC 6121 steps tests repeat."""

    def __init__(self, client: RawClient, bare: str, password: str) -> None:
        self.client = client
        self.bare = bare
        self.password = password
        self.jid = client.jid or ""

    @property
    def resource(self) -> str:
        return self.jid.partition("/")[2]

    # sending and receiving
    def send(self, xml: str) -> None:
        self.client.send(xml)

    def expect(self, match: str | Predicate, timeout: float | None = None) -> ET.Element:
        return self.client.expect(match, timeout)

    def iq(self, xml: str) -> ET.Element:
        return self.client.iq(xml)

    def sync(self) -> None:
        """Ping the server and wait for the answer: whatever the server sent this
        stream before answering is then in our queue."""
        answer = self.iq(f"<iq type='get' to='{self.client.domain}'><ping xmlns='{NS_PING}'/></iq>")
        assert answer.get("type") == "result", to_text(answer)

    def received(self, wait: float = 0.2) -> list[ET.Element]:
        """Everything that arrived and was not yet taken, after C{wait} seconds and a ping."""
        early = self.client.drain(wait)
        self.sync()
        return early + self.client.drain()

    def assert_nothing(self, match: Predicate | None = None, wait: float = 0.2) -> None:
        """Assert that nothing (or nothing matching) arrived within C{wait} seconds."""
        unexpected = [e for e in self.received(wait) if match is None or match(e)]
        assert not unexpected, "unexpected: " + "; ".join(to_text(e) for e in unexpected)

    # roster
    def roster(self, ver: str | None = None) -> ET.Element:
        """Roster get (which makes this resource interested); the whole result iq."""
        attribute = "" if ver is None else f" ver='{ver}'"
        result = self.iq(f"<iq type='get'><query xmlns='{NS_ROSTER}'{attribute}/></iq>")
        assert result.get("type") == "result", to_text(result)
        return result

    def roster_items(self) -> dict[str, dict[str, Any]]:
        """The roster, by contact JID, as L{item_view} dicts."""
        query = self.roster().find(ROSTER_QUERY)
        assert query is not None
        return {item.get("jid"): item_view(item) for item in query.findall(ROSTER_ITEM)}

    def set_item(self, jid: str, name: str | None = None, groups: tuple[str, ...] = ()) -> None:
        name_attr = f" name='{name}'" if name is not None else ""
        inner = "".join(f"<group>{g}</group>" for g in groups)
        result = self.iq(
            f"<iq type='set'><query xmlns='{NS_ROSTER}'>"
            f"<item jid='{jid}'{name_attr}>{inner}</item></query></iq>"
        )
        assert result.get("type") == "result", to_text(result)

    def expect_push(self, jid: str | None = None) -> tuple[ET.Element, dict[str, Any]]:
        """The next roster push (for C{jid}); returns (its query, the item view).

        Checks the push's envelope (RFC 6121 §2.1.6): type set, an id, and no
        'from' other than the user's bare JID; and one item.
        """

        def match(e: ET.Element) -> bool:
            if not is_push(e):
                return False
            item = e.find(ROSTER_QUERY).find(ROSTER_ITEM)
            return jid is None or (item is not None and item.get("jid") == jid)

        push = self.expect(match)
        assert push.get("id"), to_text(push)
        assert push.get("from") in (None, self.bare), to_text(push)
        assert push.get("to") == self.jid, to_text(push)
        query = push.find(ROSTER_QUERY)
        items = query.findall(ROSTER_ITEM)
        assert len(items) == 1, to_text(push)
        return query, item_view(items[0])

    # presence
    def available(self, extra: str = "", priority: int | None = None) -> ET.Element:
        """Send initial (or updated) presence and take our own copy of it back."""
        inner = extra + (f"<priority>{priority}</priority>" if priority is not None else "")
        self.send(f"<presence>{inner}</presence>" if inner else "<presence/>")
        echo = self.expect(presence(self.jid))
        assert echo.get("to") == self.jid, to_text(echo)
        return echo


def login(
    make_client: Callable[..., RawClient],
    account: Account,
    resource: str | None = None,
    target: Any = None,
) -> User:
    """A connected, authenticated, bound resource (not yet interested nor available)."""
    client = make_client(target)
    client.login(account[0], account[1], resource=resource or "r" + secrets.token_hex(3))
    return User(client, account[0], account[1])


def online(
    make_client: Callable[..., RawClient],
    account: Account,
    resource: str | None = None,
    priority: int | None = None,
    target: Any = None,
) -> User:
    """Log in the way a typical client does: roster get, then initial presence."""
    user = login(make_client, account, resource, target)
    user.roster()
    user.available(priority=priority)
    return user


def subscribe(user: User, contact: User) -> None:
    """C{user} subscribes to C{contact}, who approves (RFC 6121 §3.1); both must be online.

    Returns once the approval reached C{user}; the rest (pushes, presence) is left
    queued: call L{settle} to clear it.
    """
    user.send(f"<presence to='{contact.bare}' type='subscribe'/>")
    contact.expect(presence(user.bare, "subscribe"))
    contact.send(f"<presence to='{user.bare}' type='subscribed'/>")
    user.expect(presence(contact.bare, "subscribed"))


def settle(*users: User) -> None:
    """Let in-flight stanzas arrive, then forget them: the next step starts clean."""
    for user in users:
        user.received(0.1)


#: The XEP-0191 §3.5 application condition inside an error.
BLOCKED = "{jabber:client}error/{urn:xmpp:blocking:errors}blocked"


def from_(bare: str) -> Predicate:
    """Any stanza from C{bare} or one of its resources."""

    def match(e: ET.Element) -> bool:
        source = e.get("from") or ""
        return source == bare or source.startswith(bare + "/")

    match.__name__ = f"from({bare!r})"
    return match


def chat(sender: User, to: str, body: str) -> None:
    sender.send(f"<message to='{to}' type='chat'><body>{body}</body></message>")


def body_is(body: str) -> Predicate:
    """A message whose body is C{body}."""

    def match(e: ET.Element) -> bool:
        return e.tag == clark(NS_CLIENT, "message") and e.findtext(clark(NS_CLIENT, "body")) == body

    match.__name__ = f"message(body={body!r})"
    return match
