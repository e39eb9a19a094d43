"""The archive across federation: imserver's users talking to a Prosody 0.12 domain.

alice@a.test (imserver with the archive and carbons) chats with bob@b.test
(Prosody, no archive of its own). Both directions land once in alice's
archive, addressed with the remote JID; what she receives carries her
archive's stanza-id, and what crosses to Prosody carries none of hers.
"""

from __future__ import annotations

import pytest
from support.archive import carbons, forwarded_message, is_carbon, query, stanza_ids
from support.federation import Federation, account, online
from support.im import body_is
from support.tools import needs

from imserver.config import DEFAULT_PLUGINS

pytestmark = needs("prosody")


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    world = Federation(tmp_path_factory.mktemp("federation")).start()
    yield world
    world.stop()


def test_remote_conversation_is_archived_once_each_way(federation) -> None:
    a_server = federation.imserver(server={"plugins": [*DEFAULT_PLUGINS, "mam", "carbons"]})
    b_server = federation.prosody()
    clients: list = []
    try:
        alice_account = account(a_server, "alice")
        alice = online(a_server, alice_account, clients)
        laptop = online(a_server, alice_account, clients)
        bob = online(b_server, account(b_server, "bob"), clients)
        carbons(laptop)

        alice.send(
            f"<message to='{bob.bare}' type='chat' id='out1'><body>over there</body></message>"
        )
        got = bob.expect(body_is("over there"))
        assert stanza_ids(got, by=alice.bare) == [], "alice's archive id stays home"
        sent = forwarded_message(laptop.expect(is_carbon("sent")), "sent")
        (sent_id,) = stanza_ids(sent, by=alice.bare)

        bob.send(f"<message to='{alice.bare}' type='chat'><body>back here</body></message>")
        received = [u.expect(body_is("back here")) for u in (alice, laptop)]
        (received_id,) = stanza_ids(received[0], by=alice.bare)
        assert stanza_ids(received[1], by=alice.bare) == [received_id], "one copy, one id"

        page = query(alice, fields={"with": bob.bare})
        assert page.bodies == ["over there", "back here"] and page.complete
        assert [r.archive_id for r in page.results] == [sent_id, received_id]
        assert page.results[0].message.get("to") == bob.bare
        assert page.results[1].message.get("from", "").startswith(bob.bare + "/")
    finally:
        for client in clients:
            client.close()
