"""The dispatcher's stages, the route table and the session seams, in memory.

A real Server with its plugins over an in-memory store and fake streams
(tests/support/memory.py): each test follows one stanza through every stage
synchronously. The same rules are tested over sockets in the wire suites.
"""

from __future__ import annotations

import pytest
from support.memory import connect, make_server, send, taken
from twisted.internet import defer
from zope.interface import implementer

from imserver.errors import ConfigError
from imserver.interfaces import IRoute
from imserver.privacy import PrivacyItem, PrivacySettings
from imserver.server import load_plugins

NS_CLIENT = "jabber:client"


def body(stanza) -> str | None:
    element = next(stanza.elements(NS_CLIENT, "body"), None)
    return None if element is None else str(element)


def error_condition(stanza) -> str | None:
    error = next(stanza.elements(NS_CLIENT, "error"), None)
    if error is None:
        return None
    return next(error.elements()).name


def available(server, session, priority: int = 0) -> None:
    send(server, session, f"<presence><priority>{priority}</priority></presence>")
    taken(session)


# -- RFC 6121 §8.5 delivery rules (Router.deliver) ------------------------------------


def test_chat_to_bare_goes_to_the_highest_priority_resources_only() -> None:
    server = make_server()
    romeo = connect(server, "romeo@example.net/orchard")
    high = connect(server, "juliet@example.net/balcony")
    low = connect(server, "juliet@example.net/chamber")
    negative = connect(server, "juliet@example.net/garden")
    available(server, high, 5)
    available(server, low, 1)
    available(server, negative, -1)
    for s in (high, low, negative):
        taken(s)
    send(server, romeo, "<message to='juliet@example.net' type='chat'><body>hi</body></message>")
    assert [body(s) for s in taken(high)] == ["hi"]
    assert taken(low) == [] and taken(negative) == []


def test_headline_to_bare_goes_to_every_non_negative_resource() -> None:
    server = make_server()
    romeo = connect(server, "romeo@example.net/orchard")
    high = connect(server, "juliet@example.net/balcony")
    low = connect(server, "juliet@example.net/chamber")
    negative = connect(server, "juliet@example.net/garden")
    available(server, high, 5)
    available(server, low, 0)
    available(server, negative, -1)
    for s in (high, low, negative):
        taken(s)
    send(
        server,
        romeo,
        "<message to='juliet@example.net' type='headline'><body>news</body></message>",
    )
    assert [body(s) for s in taken(high)] == ["news"]
    assert [body(s) for s in taken(low)] == ["news"]
    assert taken(negative) == []


def test_groupchat_to_an_account_bounces_and_error_messages_are_dropped() -> None:
    server = make_server()
    romeo = connect(server, "romeo@example.net/orchard")
    juliet = connect(server, "juliet@example.net/balcony")
    available(server, juliet)
    send(
        server,
        romeo,
        "<message to='juliet@example.net' type='groupchat' id='g'><body>x</body></message>",
    )
    send(server, romeo, "<message to='juliet@example.net' type='error' id='e'/>")
    [bounce] = taken(romeo)
    assert bounce["id"] == "g" and error_condition(bounce) == "service-unavailable"
    assert taken(juliet) == []


def test_message_to_a_gone_full_jid_is_stored_offline_once_and_holds_the_sender() -> None:
    """§8.5.3.2.1: as if to the bare JID; nobody is available, so offline storage.

    The dispatch returns the write's Deferred: the sender's stream holds its
    next stanzas until it fires (C2SStream queues behind a pending dispatch).
    """
    server = make_server()
    romeo = connect(server, "romeo@example.net/orchard")
    server.store.users[("juliet", "example.net")] = object()
    server.store.hold_offline = release = defer.Deferred()
    pending = send(
        server, romeo, "<message to='juliet@example.net/gone' type='chat'><body>1</body></message>"
    )
    assert isinstance(pending, defer.Deferred)
    done = []
    pending.addBoth(done.append)
    assert done == [] and server.store.offline_writes == 1  # held while the write runs
    release.callback(None)
    assert len(done) == 1
    [stored] = server.store.offline[("juliet", "example.net")]
    assert "<body>1</body>" in stored and "urn:xmpp:delay" in stored
    assert server.store.offline_writes == 1
    assert taken(romeo) == []


def test_message_nobody_can_take_bounces_without_offline_storage() -> None:
    server = make_server(plugins=("presence",))
    romeo = connect(server, "romeo@example.net/orchard")
    send(server, romeo, "<message to='juliet@example.net' id='m'><body>x</body></message>")
    [bounce] = taken(romeo)
    assert error_condition(bounce) == "service-unavailable"


def test_iq_to_a_missing_resource_gets_service_unavailable() -> None:
    server = make_server()
    romeo = connect(server, "romeo@example.net/orchard")
    send(
        server, romeo, "<iq to='juliet@example.net/x' type='get' id='q'><query xmlns='urn:x'/></iq>"
    )
    [answer] = taken(romeo)
    assert answer["type"] == "error" and error_condition(answer) == "service-unavailable"


# -- privacy on each path, as the two filters -----------------------------------------


def blocking(server, user: str, blocked: str) -> None:
    server.store.privacy[(user, "example.net")] = PrivacySettings(
        default="block", lists={"block": [PrivacyItem(1, "deny", "jid", blocked)]}
    )


def subscribed_both(server, a: str, b: str) -> None:
    from imserver.roster import Roster, RosterItem

    for user, contact in ((a, b), (b, a)):
        server.store.rosters[(user, "example.net")] = Roster(
            1, {f"{contact}@example.net": RosterItem(f"{contact}@example.net", subscription="both")}
        )


def test_a_blocked_senders_message_gets_service_unavailable_and_is_not_delivered() -> None:
    server = make_server()
    blocking(server, "juliet", "tybalt@example.net")
    juliet = connect(server, "juliet@example.net/balcony")
    tybalt = connect(server, "tybalt@example.net/street")
    available(server, juliet)
    send(server, tybalt, "<message to='juliet@example.net' id='m'><body>x</body></message>")
    assert taken(juliet) == []
    [bounce] = taken(tybalt)
    assert error_condition(bounce) == "service-unavailable"


def test_a_message_to_a_blocked_contact_gets_not_acceptable_before_any_handler() -> None:
    server = make_server()
    blocking(server, "juliet", "tybalt@example.net")
    juliet = connect(server, "juliet@example.net/balcony")
    tybalt = connect(server, "tybalt@example.net/street")
    available(server, tybalt)
    send(server, juliet, "<message to='tybalt@example.net' id='m'><body>x</body></message>")
    [bounce] = taken(juliet)
    assert error_condition(bounce) == "not-acceptable"
    assert taken(tybalt) == []


def test_broadcast_and_probe_answers_skip_a_blocked_subscriber() -> None:
    server = make_server()
    subscribed_both(server, "juliet", "tybalt")
    blocking(server, "juliet", "tybalt@example.net")
    tybalt = connect(server, "tybalt@example.net/street")
    available(server, tybalt)
    juliet = connect(server, "juliet@example.net/balcony")
    send(server, juliet, "<presence/>")  # broadcast to tybalt, and a probe of tybalt
    assert taken(tybalt) == []  # neither the broadcast nor an answer to the probe
    assert all(s.getAttribute("from", "").startswith("juliet@") for s in taken(juliet))


# -- the route table --------------------------------------------------------------------


@implementer(IRoute)
class Recorder:
    def __init__(self) -> None:
        self.events = []

    def route(self, event):
        self.events.append(event)


def test_remote_domains_get_remote_server_not_found_until_a_route_serves_them() -> None:
    server = make_server()
    romeo = connect(server, "romeo@example.net/orchard")
    send(server, romeo, "<message to='mercutio@verona.example' id='1'><body>x</body></message>")
    [bounce] = taken(romeo)
    assert error_condition(bounce) == "remote-server-not-found"

    cluster, federation = Recorder(), Recorder()
    server.router.add_route("verona.example", cluster)
    server.router.set_default_route(federation)
    send(server, romeo, "<message to='mercutio@verona.example' id='2'><body>x</body></message>")
    send(server, romeo, "<message to='nurse@padua.example' id='3'><body>x</body></message>")
    assert [e.stanza["id"] for e in cluster.events] == ["2"]
    assert [e.stanza["id"] for e in federation.events] == ["3"]
    assert federation.events[0].stanza["from"] == "romeo@example.net/orchard"
    assert taken(romeo) == []


def test_a_bounce_to_a_remote_sender_goes_through_its_route() -> None:
    server = make_server()
    federation = Recorder()
    server.router.set_default_route(federation)
    stanza_xml = "<message from='mercutio@verona.example/x' to='nobody@example.net' id='r'/>"
    from imserver.jid import parse_jid
    from imserver.stream.parser import parse_stanza

    stanza = parse_stanza(stanza_xml)
    server.dispatcher.route(stanza, parse_jid(stanza["from"]), parse_jid(stanza["to"]))
    [event] = federation.events
    assert event.stanza["type"] == "error" and event.stanza["to"] == "mercutio@verona.example/x"


# -- session seams ------------------------------------------------------------------------


def test_stream_elements_are_events_and_unclaimed_ones_are_refused() -> None:
    server = make_server()
    romeo = connect(server, "romeo@example.net/orchard")
    seen = []
    server.dispatcher.on(("stream", "urn:test:sm", "r"), lambda event: seen.append(event) or True)
    from imserver.stream.parser import parse_stanza

    claimed = parse_stanza("<r xmlns='urn:test:sm'/>")
    assert server.dispatcher.dispatch_element(claimed, romeo) is None
    assert seen[0].origin is romeo and seen[0].stanza is claimed
    assert (
        server.dispatcher.dispatch_element(parse_stanza("<a xmlns='urn:test:sm'/>"), romeo) is False
    )


def test_pre_session_ended_may_keep_a_session_bound() -> None:
    server = make_server()
    romeo = connect(server, "romeo@example.net/orchard")
    kept = []
    server.dispatcher.hook(
        "pre-session-ended", lambda session, reason: kept.append(reason) or reason == "lost"
    )
    server.stream_gone(romeo, "lost")
    assert server.sessions.get("romeo@example.net", "orchard") is romeo
    server.stream_gone(romeo, "closed")
    assert server.sessions.get("romeo@example.net", "orchard") is None
    assert kept == ["lost", "closed"]


# -- registration checks ------------------------------------------------------------------


def test_mistyped_keys_and_hooks_fail_when_registered() -> None:
    server = make_server()
    with pytest.raises(ValueError):
        server.dispatcher.on(("message", "chat", "everyone"), lambda e: True)
    with pytest.raises(ValueError):
        server.dispatcher.on(("iq", "get", "urn:x", "nowhere"), lambda e: True)
    with pytest.raises(ValueError):
        server.dispatcher.on(("presence", "subscribed_", "bare"), lambda e: True)
    with pytest.raises(ValueError):
        server.dispatcher.hook("session-endd", lambda *a: None)


def test_a_plugin_without_what_it_requires_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'offline' requires 'presence'"):
        load_plugins(("offline",))


def test_unknown_plugin_options_fail_at_start() -> None:
    with pytest.raises(ConfigError, match="plugin.version.nmae"):
        make_server(plugins=("version",), plugin={"version": {"nmae": "x"}})


def test_roster_changed_fires_after_a_stored_change() -> None:
    server = make_server()
    romeo = connect(server, "romeo@example.net/orchard")
    changes = []
    server.dispatcher.hook("roster-changed", lambda *args: changes.append(args))
    send(
        server,
        romeo,
        "<iq type='set' id='r'><query xmlns='jabber:iq:roster'>"
        "<item jid='juliet@example.net' name='J'/></query></iq>",
    )
    [(user, host, items)] = changes
    assert (user, host) == ("romeo", "example.net")
    assert items["juliet@example.net"].name == "J"
