"""SASL2, Bind2 and FAST over the wire (XEP-0388, XEP-0386, XEP-0484).

Prosody 0.12 has none of them (they came with Prosody 13 and community
modules), so these run against imserver only; the client side is written
from the XEPs in support.sasl2.
"""

from __future__ import annotations

import sqlite3
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest
from support.client import PRESENCE, RawClient, clark, closed_after, to_text
from support.im import User, body_is, presence
from support.sasl2 import (
    NS_BIND2,
    NS_FAST,
    SASL2Client,
    sasl2,
    token_hash,
    token_of,
)
from support.server import ServerProcess
from support.sm import (
    MECHANISM,
    NS_SM,
    PLUGINS,
    assert_resumed_without_repeats,
    chat_to,
    come_online,
    received_bodies,
    sm,
    superseded_updates_then_chat,
)

NS_CSI = "urn:xmpp:csi:0"
NS_CARBONS = "urn:xmpp:carbons:2"
SASL2_PLUGINS = [*PLUGINS, "carbons", "sasl2", "bind2"]
BIND = f"<bind xmlns='{NS_BIND2}'><tag>phone</tag><enable xmlns='{NS_SM}' resume='true'/></bind>"
REQUEST_TOKEN = f"<request-token xmlns='{NS_FAST}' mechanism='HT-SHA-256-NONE'/>"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("server"), server={"plugins": SASL2_PLUGINS})
    try:
        yield process.start()
    finally:
        process.kill()


@pytest.fixture
def clients(server: ServerProcess) -> Iterator:
    yield from closed_after(lambda cls=SASL2Client, target=None: cls.for_server(target or server))


def success_of(answer: ET.Element) -> ET.Element:
    assert answer.tag == sasl2("success"), to_text(answer)
    return answer


def failure_condition(answer: ET.Element) -> str | None:
    assert answer.tag == sasl2("failure"), to_text(answer)
    for child in answer:
        if child.tag.startswith("{urn:ietf:params:xml:ns:xmpp-sasl}"):
            return child.tag.rpartition("}")[2]
    return None


def test_offered_beside_sasl1_with_inline_features(clients, pool) -> None:
    client: SASL2Client = clients()
    authentication = client.start()
    sasl1 = client.features.find("{urn:ietf:params:xml:ns:xmpp-sasl}mechanisms")
    assert [m.text for m in authentication.findall(sasl2("mechanism"))] == [m.text for m in sasl1]
    inline = authentication.find(sasl2("inline"))
    assert inline.find(sm("sm")) is not None
    bind_features = {
        f.get("var") for f in inline.find(clark(NS_BIND2, "bind")).iter(clark(NS_BIND2, "feature"))
    }
    assert bind_features == {NS_SM, NS_CSI, NS_CARBONS}
    fast = inline.find(clark(NS_FAST, "fast"))
    assert [m.text for m in fast] == ["HT-SHA-256-NONE"]


def test_one_exchange_authenticates_binds_and_enables_sm(clients, pool) -> None:
    (account,) = pool.take(1)
    client: SASL2Client = clients()
    client.start()
    inline = f"<bind xmlns='{NS_BIND2}'><tag>phone</tag><enable xmlns='{NS_SM}' resume='true'/>"
    inline += f"<inactive xmlns='{NS_CSI}'/></bind>"
    success = success_of(client.scram(*account, inline=inline))
    jid = success.findtext(sasl2("authorization-identifier"))
    assert jid.startswith(account[0] + "/phone."), jid
    enabled = success.find(f"{{{NS_BIND2}}}bound/{sm('enabled')}")
    assert enabled is not None and enabled.get("id"), to_text(success)
    # No stream restart: stanzas go straight on, counted by stream management.
    client.counting = True
    roster = client.iq("<iq type='get'><query xmlns='jabber:iq:roster'/></iq>")
    assert roster.get("type") == "result", to_text(roster)
    client.send("<presence/>")
    assert client.request() == 2
    # Inactive from the start (CSI inline): the presence echo waits for <active/>.
    assert not [e for e in client.drain(0.3) if e.tag == PRESENCE]
    client.send(f"<active xmlns='{NS_CSI}'/>")
    client.expect(presence(jid))


@pytest.mark.parametrize(
    "requests",
    [
        f"<enable xmlns='{NS_SM}' resume='true'/><inactive xmlns='{NS_CSI}'/>",
        f"<inactive xmlns='{NS_CSI}'/><enable xmlns='{NS_SM}' resume='true'/>",
    ],
    ids=["enable-first", "inactive-first"],
)
def test_inline_sm_counts_only_what_the_client_state_sends(clients, pool, requests: str) -> None:
    """Whichever order the inline requests come in, a presence update held and
    superseded while inactive is not counted: nothing comes twice on resumption."""
    alice_account, bob_account = pool.take(2)
    phone: SASL2Client = clients()
    phone.start()
    inline = f"<bind xmlns='{NS_BIND2}'><tag>phone</tag>{requests}</bind>"
    success = success_of(phone.scram(*alice_account, inline=inline))
    phone.jid = success.findtext(sasl2("authorization-identifier"))
    phone.sm_id = success.find(f"{{{NS_BIND2}}}bound/{sm('enabled')}").get("id")
    phone.counting = True
    phone.iq("<iq type='get'><query xmlns='jabber:iq:roster'/></iq>")
    phone.send("<presence/>")  # its echo is held: inactive from the start
    laptop = clients(RawClient)
    laptop.login(*alice_account, "laptop", MECHANISM)
    come_online(laptop)
    bob = clients(RawClient)
    bob.login(*bob_account, "desk", MECHANISM)
    superseded_updates_then_chat(
        phone, User(laptop, *alice_account), User(bob, *bob_account), "one"
    )
    assert_resumed_without_repeats(phone, alice_account, body_is("one"), presence(laptop.jid))


def test_carbons_enabled_inline(clients, pool) -> None:
    alice_account, bob_account = pool.take(2)
    phone: SASL2Client = clients()
    phone.start()
    inline = f"<bind xmlns='{NS_BIND2}'><tag>phone</tag><enable xmlns='{NS_CARBONS}'/></bind>"
    success = success_of(phone.scram(*alice_account, inline=inline))
    phone.jid = success.findtext(sasl2("authorization-identifier"))
    come_online(phone)
    desk = clients(RawClient)
    desk.login(*alice_account, "desk", MECHANISM)
    chat_to(desk, bob_account[0], "from the desk")
    copy = phone.expect(lambda e: e.find(clark(NS_CARBONS, "sent")) is not None)
    assert "from the desk" in to_text(copy)


def test_failure_then_success_on_the_same_stream(clients, pool) -> None:
    (account,) = pool.take(1)
    client: SASL2Client = clients()
    client.start()
    assert failure_condition(client.scram(account[0], "wrong")) == "not-authorized"
    success_of(client.scram(*account))
    assert client.bind("after-sasl2").endswith("/after-sasl2")  # classic bind still works


def test_sasl1_is_unchanged(clients, pool) -> None:
    (account,) = pool.take(1)
    client = clients(RawClient)
    assert client.login(*account, "classic", MECHANISM).endswith("/classic")


# -- FAST -----------------------------------------------------------------------------


def fast_token(clients, account, agent: str = "agent-1") -> str:
    client: SASL2Client = clients()
    client.start()
    success = success_of(client.scram(*account, inline=REQUEST_TOKEN, agent=agent))
    token = token_of(success)
    assert token and len(token) > 64, to_text(success)
    return token


def test_fast_token_logs_in_without_scram(clients, pool, server) -> None:
    (account,) = pool.take(1)
    token = fast_token(clients, account)
    client: SASL2Client = clients()
    client.start()
    success = success_of(client.fast(account[0], token, inline=BIND))
    assert token_of(success) is None  # not due for rotation
    assert success.find(clark(NS_BIND2, "bound")) is not None
    # Stored hashed: the token itself is nowhere in the database.
    db = sqlite3.connect(server.data_dir / "imserver.sqlite")
    try:
        rows = db.execute("SELECT token_hash, client FROM fast_tokens").fetchall()
    finally:
        db.close()
    assert (token_hash(token), "agent-1") in rows
    assert all(token not in str(row) for row in rows)


def test_fast_refuses_a_wrong_token_or_another_client(clients, pool) -> None:
    (account,) = pool.take(1)
    token = fast_token(clients, account)
    client: SASL2Client = clients()
    client.start()
    assert failure_condition(client.fast(account[0], token + "x")) == "not-authorized"
    assert failure_condition(client.fast(account[0], token, agent="agent-2")) == "not-authorized"
    success_of(client.fast(account[0], token))


def test_invalidated_token_no_longer_works(clients, pool) -> None:
    (account,) = pool.take(1)
    token = fast_token(clients, account)
    client: SASL2Client = clients()
    client.start()
    success_of(client.fast(account[0], token, fast_attributes=" invalidate='true'"))
    again: SASL2Client = clients()
    again.start()
    assert failure_condition(again.fast(account[0], token)) == "not-authorized"


def test_tokens_rotate_and_expire(clients, make_server) -> None:
    target = make_server(
        server={"plugins": SASL2_PLUGINS}, plugin={"sasl2": {"fast_token_lifetime": 4}}
    )
    account = target.new_account()

    def fast(token: str) -> ET.Element:
        client: SASL2Client = clients(SASL2Client, target)
        client.start()
        return client.fast(account[0], token)

    client: SASL2Client = clients(SASL2Client, target)
    client.start()
    first = token_of(success_of(client.scram(*account, inline=REQUEST_TOKEN)))
    assert token_of(success_of(fast(first))) is None  # fresh: no rotation
    time.sleep(2.2)  # past half its lifetime
    second = token_of(success_of(fast(first)))
    assert second and second != first
    success_of(fast(first))  # still valid: the new one was never used
    third = token_of(success_of(fast(first)))  # still due: another new one, the second dropped
    assert failure_condition(fast(second)) == "not-authorized"
    assert token_of(success_of(fast(third))) is None
    assert failure_condition(fast(first)) == "not-authorized"  # older than the one used
    time.sleep(4.2)
    assert failure_condition(fast(third)) == "credentials-expired"


# -- resuming inside SASL2 ----------------------------------------------------------


def test_fast_and_resume_in_one_exchange(clients, pool) -> None:
    alice_account, bob_account = pool.take(2)
    alice: SASL2Client = clients()
    alice.start()
    success = success_of(alice.scram(*alice_account, inline=BIND + REQUEST_TOKEN))
    token = token_of(success)
    alice.jid = success.findtext(sasl2("authorization-identifier"))
    alice.sm_id = success.find(f"{{{NS_BIND2}}}bound/{sm('enabled')}").get("id")
    alice.counting = True
    come_online(alice)
    bob = clients(RawClient)
    bob.login(*bob_account, "desk", MECHANISM)
    chat_to(bob, alice.jid, "one")
    alice.expect(body_is("one"))
    alice.drop()
    chat_to(bob, alice.jid, "two")
    time.sleep(0.2)

    again: SASL2Client = clients()
    again.start()
    resume = f"<resume xmlns='{NS_SM}' previd='{alice.sm_id}' h='{alice.handled}'/>"
    success = success_of(again.fast(alice_account[0], token, inline=resume + BIND))
    resumed = success.find(sm("resumed"))
    assert resumed is not None, to_text(success)
    assert success.find(clark(NS_BIND2, "bound")) is None  # resumed: no new resource
    assert success.findtext(sasl2("authorization-identifier")) == alice.jid
    assert received_bodies(again) == ["two"]


def test_failed_resume_falls_back_to_bind(clients, pool) -> None:
    (account,) = pool.take(1)
    client: SASL2Client = clients()
    client.start()
    resume = f"<resume xmlns='{NS_SM}' previd='gone' h='0'/>"
    success = success_of(client.scram(*account, inline=resume + BIND))
    failed = success.find(sm("failed"))
    assert (
        failed is not None
        and failed.find("{urn:ietf:params:xml:ns:xmpp-stanzas}item-not-found") is not None
    )
    assert success.find(clark(NS_BIND2, "bound")) is not None
    assert success.findtext(sasl2("authorization-identifier")).startswith(account[0] + "/phone.")
