"""Federation with a live Prosody 0.12: every cell of the issue's matrix, one IM scenario each.

imserver serves a.test, Prosody b.test. Cells: authentication by certificate
(TLS + SASL EXTERNAL, both sides with secure_auth) or by dialback (TLS, each
side distrusting the other's CA), bidi (XEP-0288) on or off on both sides,
and which side opens the first connection. In each cell, with a client on
each server: the subscription handshake both ways, presence both ways, chat
both ways, a probe answered after re-login on each side, and unsubscribe.
Both imserver <-> imserver cells run the same scenario.
"""

from __future__ import annotations

import pytest
from support.federation import Federation, account, online
from support.im import message, presence
from support.prosody import ProsodyProcess
from support.tools import needs

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
    for user, contact in ((first, second), (second, first)):
        user.send(f"<presence to='{contact.bare}' type='subscribe'/>")
        contact.expect(presence(user.bare, "subscribe"))
        contact.send(f"<presence to='{user.bare}' type='subscribed'/>")
        user.expect(presence(contact.bare, "subscribed"))
        # §3.1.5: the approval brings the contact's current presence along.
        user.expect(presence(contact.jid))

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
