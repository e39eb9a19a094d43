"""A block holds on every path, both ways; and a third-party client can drive it.

The first test walks every way a stanza travels between two users (message,
iq, presence broadcast, directed presence, probe answer, subscription
request, a presence update) once before the block, proving each path
delivers, and once after, asserting that nothing gets through in either
direction. The second drives XEP-0191 with slixmpp's own plugin.
"""

from __future__ import annotations

import asyncio
import ssl
import xml.etree.ElementTree as ET
from collections.abc import Callable

import slixmpp
from support.client import IQ, MESSAGE, PRESENCE, RawClient, stanza_error, to_text
from support.im import BLOCKED, AccountPool, User, from_, online, presence, settle, subscribe
from support.server import ServerProcess

MakeClient = Callable[..., RawClient]

NS_BLOCKING = "urn:xmpp:blocking"


def status(sender: str, text: str) -> Callable[[ET.Element], bool]:
    def match(e: ET.Element) -> bool:
        return (
            e.tag == PRESENCE
            and e.get("from") == sender
            and e.get("type") is None
            and e.findtext("{jabber:client}status") == text
        )

    match.__name__ = f"presence(from={sender!r}, status={text!r})"
    return match


def body(text: str) -> Callable[[ET.Element], bool]:
    def match(e: ET.Element) -> bool:
        return e.tag == MESSAGE and e.findtext("{jabber:client}body") == text

    match.__name__ = f"message(body={text!r})"
    return match


def iq_id(id_: str) -> Callable[[ET.Element], bool]:
    def match(e: ET.Element) -> bool:
        return e.tag == IQ and e.get("id") == id_

    match.__name__ = f"iq(id={id_!r})"
    return match


class Paths:
    """Every path between a user and a contact, each direction, tagged by phase."""

    def __init__(self, make_client: MakeClient, users: dict[str, User]) -> None:
        self.make_client = make_client
        self.alice = users["alice"]
        self.bob = users["bob"]
        self.mallory = users["mallory"]
        #: Every resource logged in along the way, by account.
        self.resources: dict[str, list[User]] = {u.bare: [u] for u in users.values()}

    def send_all(self, phase: str) -> list[tuple[str, User, Callable[[ET.Element], bool]]]:
        """Send on every path; returns (path, receiver, what would arrive) for each."""
        alice, bob, mallory = self.alice, self.bob, self.mallory
        sent = []
        for sender, receiver in ((bob, alice), (alice, bob)):
            tag = f"{phase}-{sender.bare.partition('@')[0]}"
            sender.send(
                f"<message to='{receiver.bare}' type='chat'><body>{tag}-bare</body></message>"
            )
            sent.append(("message to bare JID", receiver, body(f"{tag}-bare")))
            sender.send(
                f"<message to='{receiver.jid}' type='chat'><body>{tag}-full</body></message>"
            )
            sent.append(("message to full JID", receiver, body(f"{tag}-full")))
            sender.send(
                f"<iq type='get' id='{tag}-iq' to='{receiver.jid}'>"
                "<query xmlns='jabber:iq:version'/></iq>"
            )
            sent.append(("iq get", receiver, iq_id(f"{tag}-iq")))
            sender.send(f"<presence><status>{tag}-broadcast</status></presence>")
            sent.append(("presence broadcast", receiver, status(sender.jid, f"{tag}-broadcast")))
            sender.send(f"<presence to='{receiver.jid}'><status>{tag}-directed</status></presence>")
            sent.append(("directed presence", receiver, status(sender.jid, f"{tag}-directed")))
        # Subscription requests, with a stranger: from the blocked one, and to it.
        mallory.send(f"<presence to='{alice.bare}' type='subscribe'/>")
        sent.append(("subscription request in", alice, presence(mallory.bare, "subscribe")))
        alice.send(f"<presence to='{mallory.bare}' type='subscribe'/>")
        sent.append(("subscription request out", mallory, presence(alice.bare, "subscribe")))
        return sent

    def probe_answers(self, phase: str) -> list[tuple[str, User, Callable[[ET.Element], bool]]]:
        """A new resource of each side logs in: the server probes the other side for it."""
        alice_late = online(self.make_client, (self.alice.bare, self.alice.password), phase)
        bob_late = online(self.make_client, (self.bob.bare, self.bob.password), phase)
        self.resources[self.alice.bare].append(alice_late)
        self.resources[self.bob.bare].append(bob_late)
        return [
            ("probe answer in", alice_late, from_(self.bob.bare)),
            ("probe answer out", bob_late, from_(self.alice.bare)),
        ]


def test_a_block_stops_every_path_both_ways(make_client: MakeClient, pool: AccountPool) -> None:
    accounts = pool.take(3)
    users = {
        name: online(make_client, account, "main")
        for name, account in zip(("alice", "bob", "mallory"), accounts, strict=True)
    }
    alice, bob, mallory = users["alice"], users["bob"], users["mallory"]
    subscribe(alice, bob)
    subscribe(bob, alice)
    settle(alice, bob, mallory)
    paths = Paths(make_client, users)

    # Open: every path delivers (so "nothing arrived" below means blocked, not broken).
    for name, receiver, arrives in paths.send_all("open") + paths.probe_answers("open"):
        try:
            receiver.expect(arrives)
        except AssertionError as e:
            raise AssertionError(f"path {name!r} does not deliver even unblocked: {e}") from None
    # Answer what is pending so both sides start from the same state.
    for user, other in ((alice, bob), (bob, alice)):
        user.send(
            f"<iq type='result' id='open-{other.bare.partition('@')[0]}-iq' to='{other.jid}'/>"
        )
    alice.send(f"<presence to='{mallory.bare}' type='unsubscribed'/>")
    mallory.send(f"<presence to='{alice.bare}' type='unsubscribed'/>")
    everyone = [r for resources in paths.resources.values() for r in resources]
    settle(*everyone)

    answer = alice.iq(
        f"<iq type='set'><block xmlns='{NS_BLOCKING}'>"
        f"<item jid='{bob.bare}'/><item jid='{mallory.bare}'/></block></iq>"
    )
    assert answer.get("type") == "result", to_text(answer)
    # The block itself: bob sees alice go, alice stops seeing bob.
    bob.expect(presence(alice.jid, "unavailable"))
    alice.expect(presence(bob.jid, "unavailable"))
    settle(*everyone)

    blocked = paths.send_all("blocked") + paths.probe_answers("blocked")
    alice.send("<presence><status>update after the block</status></presence>")
    bob.send("<presence><status>update after the block</status></presence>")
    blocked += [
        ("presence update after block", bob, status(alice.jid, "update after the block")),
        ("presence update after block", alice, status(bob.jid, "update after the block")),
    ]

    everyone = [r for resources in paths.resources.values() for r in resources]
    arrived = {r.jid: r.received(0.5) for r in everyone}
    leaks = [
        f"{name}: {to_text(e)}"
        for name, receiver, arrives in blocked
        for e in arrived[receiver.jid]
        if arrives(e)
    ]
    assert not leaks, "got through the block:\n" + "\n".join(leaks)
    # Beyond the paths, at every resource: only error answers crossed the block.
    for receiver in everyone:
        others = [bare for bare in paths.resources if bare != receiver.bare]
        for e in arrived[receiver.jid]:
            if any(from_(bare)(e) for bare in others):
                assert e.get("type") == "error", f"{receiver.jid} got {to_text(e)}"
    # And they are the spec's: the contact's stanzas meet an unavailable user,
    # the user's own are refused as blocked (XEP-0191 §3.3).
    bob_errors = [e for e in arrived[bob.jid] if from_(alice.bare)(e)]
    assert sorted(stanza_error(e)[1] for e in bob_errors) == ["service-unavailable"] * 3
    alice_errors = [e for e in arrived[alice.jid] if from_(bob.bare)(e)]
    assert sorted(stanza_error(e)[1] for e in alice_errors) == ["not-acceptable"] * 4
    for error in alice_errors:
        assert error.find(BLOCKED) is not None, to_text(error)


# -- slixmpp's XEP-0191 plugin against the server -------------------------------------------------


def test_slixmpp_blocks_and_unblocks(
    server: ServerProcess, make_client: MakeClient, pool: AccountPool
) -> None:
    alice_account, bob_account = pool.take(2)
    bob = online(make_client, bob_account)

    async def scenario() -> None:
        xmpp = slixmpp.ClientXMPP(alice_account[0], alice_account[1])
        xmpp.register_plugin("xep_0030")
        xmpp.register_plugin("xep_0191")
        xmpp.ssl_context.check_hostname = False
        xmpp.ssl_context.verify_mode = ssl.CERT_NONE
        received: asyncio.Queue = asyncio.Queue()
        pushes: asyncio.Queue = asyncio.Queue()
        xmpp.add_event_handler("message", received.put_nowait)
        xmpp.add_event_handler("blocked", pushes.put_nowait)
        xmpp.add_event_handler("unblocked", pushes.put_nowait)
        xmpp.connect(host=server.interface, port=server.port)
        await xmpp.wait_until("session_start", timeout=10)
        try:
            await xmpp.get_roster()
            xmpp.send_presence()
            info = await xmpp.plugin["xep_0030"].get_info(jid=server.host, timeout=5)
            assert NS_BLOCKING in info["disco_info"]["features"]
            assert await xmpp.plugin["xep_0191"].get_blocked_jids(timeout=5) == set()

            await xmpp.plugin["xep_0191"].block(slixmpp.JID(bob.bare), timeout=5)
            push = await asyncio.wait_for(pushes.get(), 5)
            assert [str(i["jid"]) for i in push["block"]] == [bob.bare]
            assert await xmpp.plugin["xep_0191"].get_blocked_jids(timeout=5) == {
                slixmpp.JID(bob.bare)
            }
            bob.send(f"<message to='{alice_account[0]}' type='chat'><body>blocked</body></message>")
            error = bob.expect(lambda e: e.tag == MESSAGE and e.get("type") == "error")
            assert stanza_error(error) == ("cancel", "service-unavailable"), to_text(error)

            await xmpp.plugin["xep_0191"].unblock(slixmpp.JID(bob.bare), timeout=5)
            push = await asyncio.wait_for(pushes.get(), 5)
            assert [str(i["jid"]) for i in push["unblock"]] == [bob.bare]
            assert await xmpp.plugin["xep_0191"].get_blocked_jids(timeout=5) == set()
            bob.send(f"<message to='{alice_account[0]}' type='chat'><body>free</body></message>")
            message = await asyncio.wait_for(received.get(), 5)
            assert (message["body"], message["from"].bare) == ("free", bob.bare)
            assert received.empty(), "the blocked message must never arrive"
        finally:
            xmpp.disconnect()
            await xmpp.wait_until("disconnected", timeout=5)

    asyncio.run(scenario())
    bob.assert_nothing(lambda e: e.tag == MESSAGE and e.get("type") == "error")
