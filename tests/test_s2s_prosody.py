"""Federation with a live Prosody 0.12: every cell of the issue's matrix, one IM scenario each.

imserver serves a.test, Prosody b.test. Cells: authentication by certificate
(TLS + SASL EXTERNAL, both sides with secure_auth) or by dialback (TLS, each
side distrusting the other's CA), bidi (XEP-0288) on or off on both sides,
and which side opens the first connection. In each cell, with a client on
each server: the subscription handshake both ways, presence both ways, chat
both ways, a probe answered after re-login on each side, and unsubscribe.
Both imserver <-> imserver cells run the same scenario. The slixmpp cells run
a shorter scenario with slixmpp (an independent client library) on both sides.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time

import pytest
from support.client import stanza_error
from support.federation import B_ADDRESS, A, B, Federation, account, online
from support.im import message, presence
from support.prosody import ProsodyProcess
from support.server import free_port
from support.tools import needs

# The slixmpp client of the single-server interop test, reused across two servers.
from test_interop_im import STEP, until
from test_interop_im import Client as SlixClient

pytestmark = needs("prosody")


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    world = Federation(tmp_path_factory.mktemp("federation")).start()
    yield world
    world.stop()


@pytest.fixture
def cell(federation):
    yield federation
    federation.stop_servers()


def scenario(a_server, b_server, initiator: str) -> None:
    clients: list = []
    try:
        _scenario(a_server, b_server, initiator, clients)
    finally:
        for client in clients:
            client.close()


def _scenario(a_server, b_server, initiator: str, clients: list) -> None:
    alice_account, bob_account = account(a_server, "alice"), account(b_server, "bob")
    alice = online(a_server, alice_account, clients)
    bob = online(b_server, bob_account, clients)
    first, second = (alice, bob) if initiator == "a" else (bob, alice)

    # RFC 6121 §3.1: the initiator's user subscribes first (this opens the first s2s link).
    mutual(first, second)

    # Chat both ways (to the bare JID, then to the full JID).
    alice.send(f"<message to='{bob.bare}' type='chat'><body>hello bob</body></message>")
    assert bob.expect(message(alice.jid, "chat")).findtext("{jabber:client}body") == "hello bob"
    bob.send(f"<message to='{alice.jid}' type='chat'><body>hello alice</body></message>")
    assert alice.expect(message(bob.jid, "chat")).findtext("{jabber:client}body") == "hello alice"

    # Logout: the contact hears unavailable (§4.5.2); re-login: the probe is answered (§4.3).
    alice.client.close()
    bob.expect(presence(alice.jid, "unavailable"))
    alice = online(a_server, alice_account, clients)
    alice.expect(presence(bob.jid))  # Prosody answered our probe
    bob.expect(presence(alice.jid))  # our broadcast reached a remote subscriber
    bob.client.close()
    alice.expect(presence(bob.jid, "unavailable"))
    bob = online(b_server, bob_account, clients)
    bob.expect(presence(alice.jid))  # we answered Prosody's probe
    alice.expect(presence(bob.jid))

    # §3.3: alice unsubscribes; her roster says 'from', bob is told.
    alice.send(f"<presence to='{bob.bare}' type='unsubscribe'/>")
    assert alice.expect_push(bob.bare)[1]["subscription"] == "from"
    bob.expect(presence(alice.bare, "unsubscribe"))
    if not isinstance(b_server, ProsodyProcess):
        # §3.3.3: the contact's server sends unavailable from the contact's
        # resources. Prosody 0.12 does not (mod_presence only pushes the roster).
        alice.expect(presence(bob.jid, "unavailable"))
    # Still subscribed the other way: bob sees alice go away.
    alice.client.close()
    bob.expect(presence(alice.jid, "unavailable"))


def mutual(first, second) -> None:
    """Subscribe both ways, C{first} asking first; each then has the other's presence."""
    for user, contact in ((first, second), (second, first)):
        user.send(f"<presence to='{contact.bare}' type='subscribe'/>")
        contact.expect(presence(user.bare, "subscribe"))
        contact.send(f"<presence to='{user.bare}' type='subscribed'/>")
        user.expect(presence(contact.bare, "subscribed"))
        # §3.1.5: the approval brings the contact's current presence along.
        user.expect(presence(contact.jid))


CELLS = [
    pytest.param(
        auth, bidi, initiator, id=f"{auth}-bidi_{'on' if bidi else 'off'}-{initiator}_first"
    )
    for auth in ("sasl", "dialback")
    for bidi in (True, False)
    for initiator in ("a", "b")
]


@pytest.mark.parametrize(("auth", "bidi", "initiator"), CELLS)
def test_prosody_matrix(cell, auth, bidi, initiator):
    secure = auth == "sasl"
    a_server = cell.imserver(trusted=secure, secure_auth=secure, bidi=bidi)
    b_server = cell.prosody(trusted=secure, secure_auth=secure, bidi=bidi)
    scenario(a_server, b_server, initiator)
    log = a_server.log_text()
    if secure:
        assert "authenticated by certificate" in log
        assert "dialback" not in log.replace("dialback decides", "")
    else:
        assert "authenticated by dialback" in log or "accepted by dialback" in log
        assert "SASL EXTERNAL)" not in log


@pytest.mark.parametrize("auth", ["sasl", "dialback"])
def test_two_imservers(cell, auth):
    secure = auth == "sasl"
    a_server = cell.imserver("a.test", trusted=secure, secure_auth=secure)
    b_server = cell.imserver("b.test", trusted=secure, secure_auth=secure)
    scenario(a_server, b_server, "a")


def test_directed_presence_and_bounces(cell):
    """RFC 6121 §4.6 directed presence to a remote non-contact, and errors crossing back."""
    a_server = cell.imserver()
    b_server = cell.prosody()
    clients: list = []
    try:
        alice = online(a_server, account(a_server, "alice"), clients)
        carol = online(b_server, account(b_server, "carol"), clients)
        # Directed presence reaches a non-contact; so does our unavailable when alice leaves.
        alice.send(f"<presence to='{carol.jid}'><status>here</status></presence>")
        carol.expect(presence(alice.jid))
        # A message to a remote resource that does not exist goes to the bare JID (§8.5.3.2.1).
        alice.send(f"<message to='{carol.bare}/gone' type='chat'><body>to bare</body></message>")
        carol.expect(message(alice.jid, "chat"))
        # An iq to it bounces service-unavailable, back across the link (§8.5.3.2.1).
        alice.send(f"<iq type='get' id='q1' to='{carol.bare}/gone'><query xmlns='x:y'/></iq>")
        error = alice.expect(lambda e: e.get("id") == "q1")
        assert stanza_error(error) == ("cancel", "service-unavailable")
        # And a message to a user that does not exist there bounces too.
        alice.send(
            f"<message to='nobody@{b_server.host}' id='m2' type='chat'><body>?</body></message>"
        )
        error = alice.expect(lambda e: e.get("id") == "m2")
        assert stanza_error(error)[1] == "service-unavailable"
        # Remote entities reach our users' full JIDs and the server itself (XEP-0199 ping).
        carol.send(
            f"<iq type='get' id='p1' to='{a_server.host}'><ping xmlns='urn:xmpp:ping'/></iq>"
        )
        assert carol.expect(lambda e: e.get("id") == "p1").get("type") == "result"
        alice.client.close()
        carol.expect(presence(alice.jid, "unavailable"))
    finally:
        for client in clients:
            client.close()


@pytest.mark.parametrize("secure_auth", [True, False], ids=["secure_auth", "dialback_allowed"])
def test_certificate_for_another_name(cell, secure_auth):
    """Prosody serves b.test with a certificate for c.test (from the trusted CA)."""
    a_server = cell.imserver(secure_auth=secure_auth)
    b_server = cell.prosody(secure_auth=False, names=("c.test",))
    clients: list = []
    try:
        alice = online(a_server, account(a_server, "alice"), clients)
        bob = online(b_server, account(b_server, "bob"), clients)
        alice.send(f"<message to='{bob.bare}' id='w1' type='chat'><body>hi</body></message>")
        if secure_auth:
            bounce = alice.expect(message(bob.bare, "error"), timeout=10)
            assert stanza_error(bounce)[1] == "remote-server-not-found"
            assert "certificate not for this domain (secure_auth)" in a_server.log_text()
        else:
            bob.expect(message(alice.jid, "chat"), timeout=10)
            # And b.test's own connection to us can only authenticate by dialback.
            bob.send(f"<message to='{alice.bare}' type='chat'><body>back</body></message>")
            alice.expect(message(bob.jid, "chat"), timeout=10)
            log = a_server.log_text()
            assert "certificate not for this domain for b.test; dialback decides" in log
    finally:
        for client in clients:
            client.close()


def test_idle_connections_close_and_come_back(cell):
    a_server = cell.imserver("a.test", s2s={"idle_timeout": 1.0})
    b_server = cell.imserver("b.test", s2s={"idle_timeout": 60.0})
    clients: list = []
    try:
        alice = online(a_server, account(a_server, "alice"), clients)
        bob = online(b_server, account(b_server, "bob"), clients)
        alice.send(f"<message to='{bob.bare}' type='chat'><body>one</body></message>")
        bob.expect(message(alice.jid, "chat"))
        deadline = time.monotonic() + 5
        while "idle: closing" not in a_server.log_text():
            assert time.monotonic() < deadline, "the idle s2s connection stayed open"
            time.sleep(0.1)
        alice.send(f"<message to='{bob.bare}' type='chat'><body>two</body></message>")
        assert bob.expect(message(alice.jid, "chat")).findtext("{jabber:client}body") == "two"
    finally:
        for client in clients:
            client.close()


def test_remote_senders_meet_blocking_and_offline_storage(cell):
    """Stanzas from a peer server go through the same pipeline as local ones."""
    a_server = cell.imserver()
    b_server = cell.prosody()
    clients: list = []
    try:
        alice_account = account(a_server, "alice")
        alice = online(a_server, alice_account, clients)
        bob = online(b_server, account(b_server, "bob"), clients)
        # XEP-0191: alice blocks bob; his messages do not reach her.
        result = alice.iq(
            f"<iq type='set'><block xmlns='urn:xmpp:blocking'><item jid='{bob.bare}'/></block></iq>"
        )
        assert result.get("type") == "result"
        bob.send(f"<message to='{alice.bare}' type='chat'><body>blocked</body></message>")
        alice.assert_nothing(message(bob.jid), wait=1.0)
        alice.iq("<iq type='set'><unblock xmlns='urn:xmpp:blocking'/></iq>")
        # XEP-0160: while alice is offline, bob's message is stored for her.
        alice.send("</stream:stream>")
        alice.client.expect_closed()  # the server has ended her session
        bob.send(f"<message to='{alice.bare}' type='chat'><body>later</body></message>")
        # The link keeps order: once a.test answers this ping, the message is stored.
        pong = bob.iq(f"<iq type='get' to='{a_server.host}'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert pong.get("type") == "result"
        alice = online(a_server, alice_account, clients)
        stored = alice.expect(message(bob.jid, "chat"))
        assert stored.findtext("{jabber:client}body") == "later"
        assert stored.find("{urn:xmpp:delay}delay") is not None
    finally:
        for client in clients:
            client.close()


def test_direct_tls_between_imservers(cell):
    """XEP-0368: b.test publishes only _xmpps-server; a.test connects with TLS at once."""
    direct = free_port(B_ADDRESS)
    a_server = cell.imserver(A)
    b_server = cell.imserver(B, s2s={"direct_tls_port": direct})
    cell.zone.remove(f"_xmpp-server._tcp.{B}")
    cell.zone.add_srv("_xmpps-server._tcp", B, B, direct)
    clients: list = []
    try:
        # The listener selects ALPN "xmpp-server" when offered.
        context = ssl.create_default_context(cafile=str(cell.ca.path))
        context.set_alpn_protocols(["xmpp-server"])
        with (
            socket.create_connection((B_ADDRESS, direct), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=B) as secure,
        ):
            assert secure.selected_alpn_protocol() == "xmpp-server"
        alice = online(a_server, account(a_server, "alice"), clients)
        bob = online(b_server, account(b_server, "bob"), clients)
        alice.send(f"<message to='{bob.bare}' type='chat'><body>direct</body></message>")
        bob.expect(message(alice.jid, "chat"))
        assert "authenticated by certificate" in a_server.log_text()
    finally:
        cell.zone.remove(f"_xmpps-server._tcp.{B}")
        for client in clients:
            client.close()


def test_secure_auth_refuses_an_untrusted_peer_both_ways(cell):
    """imserver trusts no CA that signed Prosody's certificate and allows no dialback."""
    a_server = cell.imserver(trusted=False, secure_auth=True)
    b_server = cell.prosody(secure_auth=False)
    clients: list = []
    try:
        alice = online(a_server, account(a_server, "alice"), clients)
        bob = online(b_server, account(b_server, "bob"), clients)
        alice.send(f"<message to='{bob.bare}' id='o1' type='chat'><body>x</body></message>")
        bounce = alice.expect(lambda e: e.get("id") == "o1", timeout=10)
        assert stanza_error(bounce)[1] == "remote-server-not-found"
        assert "certificate not trusted (secure_auth)" in a_server.log_text()
        bob.send(f"<message to='{alice.bare}' id='i1' type='chat'><body>x</body></message>")
        bounce = bob.expect(lambda e: e.get("id") == "i1", timeout=15)
        assert stanza_error(bounce)[0] is not None
        alice.assert_nothing(message(bob.jid))
    finally:
        for client in clients:
            client.close()


def test_shutdown_tells_remote_contacts_then_closes_the_link(cell):
    """On SIGTERM, remote subscribers hear unavailable before the s2s stream ends."""
    a_server = cell.imserver()
    b_server = cell.prosody()
    clients: list = []
    try:
        alice = online(a_server, account(a_server, "alice"), clients)
        bob = online(b_server, account(b_server, "bob"), clients)
        mutual(alice, bob)
        assert a_server.stop() == 0
        bob.expect(presence(alice.jid, "unavailable"))
        assert "closed with system-shutdown" in a_server.log_text()
    finally:
        for client in clients:
            client.close()


@pytest.mark.parametrize("auth", ["sasl", "dialback"])
def test_slixmpp_clients_across_federation(cell, auth):
    """slixmpp (an independent client) on each side: subscribe, presence, chat, re-login."""
    logging.getLogger("slixmpp").setLevel(logging.WARNING)
    secure = auth == "sasl"
    a_server = cell.imserver(trusted=secure, secure_auth=secure)
    b_server = cell.prosody(trusted=secure, secure_auth=secure)
    alice_account, bob_account = account(a_server, "alice"), account(b_server, "bob")
    asyncio.run(asyncio.wait_for(_slixmpp(a_server, b_server, alice_account, bob_account), 90))


async def _slixmpp(a_server, b_server, alice_account, bob_account) -> None:
    alice = await SlixClient(*alice_account).online(a_server)
    bob = await SlixClient(*bob_account).online(b_server)
    alice_jid, bob_jid = alice_account[0], bob_account[0]
    try:
        alice.send_presence(pto=bob_jid, ptype="subscribe")
        await until(lambda: alice.subscription(bob_jid) == "both", "alice has 'both'")
        await until(lambda: bob.subscription(alice_jid) == "both", "bob has 'both'")
        await until(lambda: alice.sees(bob_jid) and bob.sees(alice_jid), "both see the other")
        alice.send_message(mto=bob_jid, mbody="from a.test", mtype="chat")
        got = await asyncio.wait_for(bob.messages.get(), STEP)
        assert (got["body"], got["from"].bare) == ("from a.test", alice_jid)
        bob.send_message(mto=alice_jid, mbody="from b.test", mtype="chat")
        got = await asyncio.wait_for(alice.messages.get(), STEP)
        assert (got["body"], got["from"].bare) == ("from b.test", bob_jid)
        # Re-login on each side: the probe is answered across the link.
        await bob.offline()
        await until(lambda: not alice.sees(bob_jid), "alice sees bob leave")
        bob = await SlixClient(*bob_account).online(b_server)
        await until(lambda: alice.sees(bob_jid) and bob.sees(alice_jid), "both see the other")
        await alice.offline()
        await until(lambda: not bob.sees(alice_jid), "bob sees alice leave")
        alice = await SlixClient(*alice_account).online(a_server)
        await until(lambda: alice.sees(bob_jid) and bob.sees(alice_jid), "both see the other")
        # Unsubscribe (RFC 6121 §3.3): bob stops seeing alice.
        bob.send_presence(pto=alice_jid, ptype="unsubscribe")
        await until(lambda: alice.subscription(bob_jid) == "to", "alice has 'to'")
        await until(lambda: not bob.sees(alice_jid), "bob no longer sees alice")
    finally:
        for client in (alice, bob):
            if client.is_connected():
                await client.offline()


def test_direct_tls_to_prosody(cell):
    """XEP-0368 against Prosody: only _xmpps-server is published for b.test."""
    a_server = cell.imserver(secure_auth=True)
    b_server = cell.prosody(secure_auth=True, direct_tls=True)
    cell.zone.remove(f"_xmpp-server._tcp.{B}")
    cell.zone.add_srv("_xmpps-server._tcp", B, B, b_server.s2s_tls_port)
    clients: list = []
    try:
        alice = online(a_server, account(a_server, "alice"), clients)
        bob = online(b_server, account(b_server, "bob"), clients)
        alice.send(f"<message to='{bob.bare}' type='chat'><body>direct</body></message>")
        bob.expect(message(alice.jid, "chat"))
        assert "authenticated by certificate" in a_server.log_text()
    finally:
        cell.zone.remove(f"_xmpps-server._tcp.{B}")
        for client in clients:
            client.close()
