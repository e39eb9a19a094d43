"""Idle authenticated streams: a XEP-0199 ping after silence, connection-timeout if unanswered.

A client that vanished without closing its TCP connection must not stay
"available" for ever: after the timeout its contacts get unavailable, as for
any stream that ends without unavailable presence (RFC 6121 §4.5.2).
"""

from __future__ import annotations

import time

import pytest
from support.client import NS_CLIENT, clark
from support.im import AccountPool, online, presence, settle, subscribe

PING = clark("urn:xmpp:ping", "ping")


def is_server_ping(element) -> bool:
    return element.tag == clark(NS_CLIENT, "iq") and element.find(PING) is not None


@pytest.fixture
def idle_server(make_server):
    return make_server(limits={"idle_timeout": 1.0, "idle_ping_timeout": 1.0})


def test_quiet_client_is_pinged_and_stays_while_it_answers(idle_server, make_client):
    alice = online(make_client, AccountPool(idle_server, batch=1).take()[0], target=idle_server)
    for _ in range(3):
        ping = alice.expect(is_server_ping, timeout=3)
        assert ping.get("type") == "get" and ping.get("from") == idle_server.host
        alice.send(f"<iq type='result' id='{ping.get('id')}' to='{idle_server.host}'/>")
    assert not alice.client.closed and not alice.client.stream_ended


def test_silent_client_times_out_and_its_contacts_see_it_leave(idle_server, make_client):
    alice_account, bob_account = AccountPool(idle_server, batch=2).take(2)
    alice = online(make_client, alice_account, target=idle_server)
    bob = online(make_client, bob_account, target=idle_server)
    subscribe(bob, alice)
    settle(alice, bob)

    # Alice says nothing from here on; Bob keeps his stream alive with whitespace.
    started = time.monotonic()
    deadline = started + 6
    gone = None
    while gone is None and time.monotonic() < deadline:
        bob.client.send(b" ")
        gone = next((e for e in bob.received(0.3) if presence(alice.jid, "unavailable")(e)), None)
    assert gone is not None, "Bob never heard that Alice timed out"
    elapsed = time.monotonic() - started
    assert 1.5 <= elapsed <= 5, elapsed
    alice.client.expect_stream_error("connection-timeout", timeout=2)
    assert not bob.client.closed
