"""XEP-0280 message carbons (carbons:2) with XEP-0334 hints, over the wire.

Two resources of one account enable carbons; each must see what the other
sends and receives, exactly once, wrapped per XEP-0297, and nothing that the
hints or the rules of XEP-0280 §6 keep out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from support.archive import (
    NS_CARBONS,
    carbons,
    forwarded_message,
    is_carbon,
    query,
    stanza_ids,
)
from support.client import RawClient, clark, to_text
from support.im import AccountPool, User, body_is, chat, online
from support.server import ServerProcess

from imserver.config import DEFAULT_PLUGINS

MakeClient = Callable[..., RawClient]
PLUGINS = [*DEFAULT_PLUGINS, "mam", "carbons"]
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("server"), server={"plugins": PLUGINS})
    try:
        yield process.start()
    finally:
        process.kill()


class Devices:
    """Alice on a phone (priority 1) and a laptop (priority 0), both with carbons; bob."""

    def __init__(self, make_client: MakeClient, pool: AccountPool) -> None:
        alice_account, bob_account = pool.take(2)
        self.phone = online(make_client, alice_account, resource="phone", priority=1)
        self.laptop = online(make_client, alice_account, resource="laptop", priority=0)
        self.bob = online(make_client, bob_account, resource="home")
        carbons(self.phone)
        carbons(self.laptop)
        for user in (self.phone, self.laptop, self.bob):
            user.received(0.05)  # presence of the other resource, etc.


@pytest.fixture
def devices(make_client: MakeClient, pool: AccountPool) -> Devices:
    return Devices(make_client, pool)


def test_disco_announces_carbons(make_client: MakeClient, pool: AccountPool) -> None:
    (account,) = pool.take(1)
    user = online(make_client, account)
    answer = user.iq(
        f"<iq type='get' to='{user.client.domain}'><query xmlns='{NS_DISCO_INFO}'/></iq>"
    )
    features = {f.get("var") for f in answer.iter(clark(NS_DISCO_INFO, "feature"))}
    assert NS_CARBONS in features


def test_sent_copies(devices: Devices) -> None:
    phone, laptop, bob = devices.phone, devices.laptop, devices.bob
    phone.send(
        f"<message to='{bob.bare}' type='chat' id='s1'><body>from the phone</body></message>"
    )
    original = bob.expect(body_is("from the phone"))
    copy = laptop.expect(is_carbon("sent"))
    assert copy.get("from") == phone.bare and copy.get("to") == laptop.jid
    assert copy.get("type") == "chat"
    inner = forwarded_message(copy, "sent")
    assert inner.get("from") == phone.jid and inner.get("to") == bob.bare
    assert inner.get("id") == "s1"
    assert inner.findtext("{jabber:client}body") == "from the phone"
    # The copy tells the other device the sender's archive id; bob never sees it.
    (archive_id,) = stanza_ids(inner, by=phone.bare)
    assert stanza_ids(original, by=phone.bare) == []
    assert [r.archive_id for r in query(laptop).results] == [archive_id]
    phone.assert_nothing(is_carbon())
    laptop.assert_nothing()


def test_received_copies_to_full_jid(devices: Devices) -> None:
    phone, laptop, bob = devices.phone, devices.laptop, devices.bob
    bob.send(f"<message to='{laptop.jid}' type='chat'><body>to the laptop</body></message>")
    original = laptop.expect(body_is("to the laptop"))
    copy = phone.expect(is_carbon("received"))
    assert copy.get("from") == phone.bare and copy.get("to") == phone.jid
    inner = forwarded_message(copy, "received")
    assert inner.get("from") == bob.jid and inner.get("to") == laptop.jid
    assert stanza_ids(inner, phone.bare) == stanza_ids(original, phone.bare) != []
    laptop.assert_nothing(is_carbon())
    phone.assert_nothing()


def test_received_copies_to_bare_jid(devices: Devices) -> None:
    """The highest-priority resource gets the original, the other a copy; never both."""
    phone, laptop, bob = devices.phone, devices.laptop, devices.bob
    chat(bob, phone.bare, "to alice")
    phone.expect(body_is("to alice"))
    inner = forwarded_message(laptop.expect(is_carbon("received")), "received")
    assert inner.findtext("{jabber:client}body") == "to alice"
    phone.assert_nothing()
    laptop.assert_nothing()


def test_same_priority_gets_originals_and_no_copies(
    make_client: MakeClient, pool: AccountPool
) -> None:
    alice_account, bob_account = pool.take(2)
    one = online(make_client, alice_account, resource="one")
    two = online(make_client, alice_account, resource="two")
    bob = online(make_client, bob_account)
    carbons(one)
    carbons(two)
    chat(bob, one.bare, "to both")
    one.expect(body_is("to both"))
    two.expect(body_is("to both"))
    one.assert_nothing(is_carbon())
    two.assert_nothing(is_carbon())


def test_each_sees_the_others_conversation(devices: Devices) -> None:
    """The issue's scenario: a conversation from two devices, both see all of it once."""
    phone, laptop, bob = devices.phone, devices.laptop, devices.bob
    chat(phone, bob.bare, "1 phone says")
    chat(bob, laptop.jid, "2 bob to laptop")
    chat(laptop, bob.jid, "3 laptop says")
    chat(bob, phone.jid, "4 bob to phone")

    def timeline(user: User) -> list[str]:
        seen = []
        for element in user.received(0.3):
            if element.tag != "{jabber:client}message":
                continue
            for direction in ("sent", "received"):
                if element.find(clark(NS_CARBONS, direction)) is not None:
                    inner = forwarded_message(element, direction)
                    seen.append(f"{direction}:{inner.findtext('{jabber:client}body')}")
                    break
            else:
                seen.append(f"direct:{element.findtext('{jabber:client}body')}")
        return seen

    assert timeline(phone) == [
        "received:2 bob to laptop",
        "sent:3 laptop says",
        "direct:4 bob to phone",
    ]
    assert timeline(laptop) == [
        "sent:1 phone says",
        "direct:2 bob to laptop",
        "received:4 bob to phone",
    ]
    assert [m.findtext("{jabber:client}body") for m in bob.client.drain()] == [
        "1 phone says",
        "3 laptop says",
    ]


@pytest.mark.parametrize(
    "hint",
    [
        f"<private xmlns='{NS_CARBONS}'/>",
        "<no-copy xmlns='urn:xmpp:hints'/>",
    ],
)
def test_hints_keep_copies_away(devices: Devices, hint: str) -> None:
    phone, laptop, bob = devices.phone, devices.laptop, devices.bob
    phone.send(f"<message to='{bob.bare}' type='chat'><body>out</body>{hint}</message>")
    got = bob.expect(body_is("out"))
    bob.send(f"<message to='{phone.jid}' type='chat'><body>in</body>{hint}</message>")
    phone.expect(body_is("in"))
    laptop.assert_nothing(is_carbon())
    if "private" in hint:  # §9: the receiving server removes <private/>
        assert got.find(clark(NS_CARBONS, "private")) is None, to_text(got)


def test_only_im_messages_are_copied(devices: Devices) -> None:
    phone, laptop, bob = devices.phone, devices.laptop, devices.bob
    bob.send(f"<message to='{phone.jid}' type='headline'><body>news</body></message>")
    bob.send(f"<message to='{phone.jid}'><subject>no body</subject></message>")
    bob.send(f"<message to='{phone.jid}'><body>normal with body</body></message>")
    phone.expect(body_is("news"))
    phone.expect(body_is("normal with body"))
    copies = [m for m in laptop.received(0.2) if is_carbon("received")(m)]
    assert [forwarded_message(c, "received").findtext("{jabber:client}body") for c in copies] == [
        "normal with body"
    ]


def test_disable_and_enable_again(devices: Devices) -> None:
    phone, laptop, bob = devices.phone, devices.laptop, devices.bob
    carbons(laptop, enable=False)
    carbons(laptop, enable=False)  # repeating is not an error (§10.1)
    chat(phone, bob.bare, "not copied")
    bob.expect(body_is("not copied"))
    laptop.assert_nothing(is_carbon())
    carbons(laptop)
    carbons(laptop)
    chat(phone, bob.bare, "copied")
    bob.expect(body_is("copied"))
    laptop.expect(is_carbon("sent"))
    laptop.assert_nothing(is_carbon())


def test_resource_without_carbons_gets_no_copies(
    make_client: MakeClient, pool: AccountPool
) -> None:
    alice_account, bob_account = pool.take(2)
    phone = online(make_client, alice_account, resource="phone", priority=1)
    laptop = online(make_client, alice_account, resource="laptop")
    bob = online(make_client, bob_account)
    carbons(phone)  # the phone asked; the laptop did not
    chat(phone, bob.bare, "out")
    chat(bob, phone.bare, "in")
    phone.expect(body_is("in"))
    bob.expect(body_is("out"))
    laptop.assert_nothing(is_carbon())
    phone.assert_nothing(is_carbon())
