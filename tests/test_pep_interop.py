"""One slixmpp scenario file for PEP, caps, vCard avatars, bookmarks and private storage,
run against imserver and against Prosody 0.12 (the reference, with mod_pep,
mod_vcard_legacy, mod_bookmarks and mod_private).

slixmpp is the independent client: its xep_0060, xep_0163, xep_0115 (caps
answered by slixmpp itself), xep_0054, xep_0084, xep_0153, xep_0049 (through
xep_0048's legacy bookmarks) plugins, and xep_0402's stanza. Each step records
what the client observed; both servers must observe the same, except where
L{PROSODY_DIFFERS} names a known, explained difference.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import ssl
from collections.abc import Callable
from typing import Any

import pytest
from slixmpp import ClientXMPP
from slixmpp.exceptions import IqError
from slixmpp.plugins.xep_0004 import Form
from slixmpp.plugins.xep_0048.stanza import Bookmarks
from slixmpp.plugins.xep_0402.stanza import Conference
from slixmpp.xmlstream import ET
from support.ca import TestCA
from support.im import AccountPool
from support.prosody import DEFAULT_MODULES, ProsodyProcess
from support.tools import needs

STEP = 10.0
DEVICES = "eu.siacs.conversations.axolotl.devicelist"
STATUS = "urn:example:status"
BOOKMARKS = "urn:xmpp:bookmarks:1"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
IMAGE = bytes(range(200)) * 3
IMAGE2 = bytes(reversed(range(256))) * 2

#: What the client sees on a server that implements the issue fully.
EXPECTED: dict[str, Any] = {
    "account disco: pubsub/pep identity": True,
    "account disco: publish-options": True,
    "omemo devicelist (open) read by a stranger": ["current"],
    "presence node read by a stranger": "not-authorized",
    "presence node read by a contact": 1,
    "+notify on publish": "s2",
    "+notify at login: last item": "s2",
    "PEP avatar seen in the vCard": True,
    "vCard avatar seen in PEP metadata": True,
    "vCard avatar data in PEP": True,
    "legacy bookmarks seen in PEP": ["room@muc.example.net"],
    "PEP bookmarks seen by a legacy client": ["coven@muc.example.net", "room@muc.example.net"],
    "precondition clash": "conflict",
}
#: Steps where Prosody 0.12 answers otherwise, and why (measured, see the README).
PROSODY_DIFFERS: dict[str, Any] = {
    # XEP-0060 §6.5.9.2 asks for <not-authorized/> with <presence-subscription-required/>;
    # Prosody's util.pubsub answers every access refusal with <forbidden/>.
    "presence node read by a stranger": "forbidden",
}


class Client(ClientXMPP):
    def __init__(self, jid: str, password: str, interests: tuple[str, ...] = ()) -> None:
        super().__init__(jid, password)
        for plugin in (
            "xep_0030",
            "xep_0060",
            "xep_0115",
            "xep_0163",
            "xep_0054",
            "xep_0084",
            "xep_0153",
            "xep_0049",
            "xep_0048",
        ):
            self.register_plugin(plugin)
        self.enable_direct_tls = False
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self.roster.auto_authorize = True
        self.roster.auto_subscribe = True
        self.events: asyncio.Queue = asyncio.Queue()
        self.ready = asyncio.Event()
        self.interests = interests
        self.add_event_handler("session_start", self.start)
        self.add_event_handler("pubsub_publish", self.events.put_nowait)

    async def start(self, _event: Any) -> None:
        for namespace in self.interests:
            self.plugin["xep_0163"].add_interest(namespace)
        await self.get_roster()
        self.send_presence()
        self.ready.set()

    async def online(self, target: Any) -> Client:
        self.connect(target.interface, target.port)
        await asyncio.wait_for(self.ready.wait(), STEP)
        return self

    async def offline(self) -> None:
        await asyncio.wait_for(self.disconnect(), STEP)


def publish_options(**values: str) -> Form:
    form = Form()
    form["type"] = "submit"
    form.add_field("FORM_TYPE", ftype="hidden", value=f"{NS_PUBSUB}#publish-options")
    for var, value in values.items():
        form.add_field(f"pubsub#{var}", value=value)
    return form


async def until(condition: Callable[[], bool], what: str) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(poll(), STEP)
    except TimeoutError:
        raise AssertionError(f"timed out waiting until {what}") from None


async def condition_of(call) -> str | None:
    try:
        await call
    except IqError as e:
        return e.condition
    return None


async def next_event(client: Client, node: str):
    while True:
        msg = await asyncio.wait_for(client.events.get(), STEP)
        if msg["pubsub_event"]["items"]["node"] == node:
            return msg


async def scenario(target: Any, accounts: list[tuple[str, str]]) -> dict[str, Any]:
    (alice_jid, alice_pw), (bob_jid, bob_pw), (carol_jid, carol_pw) = accounts
    seen: dict[str, Any] = {}
    alice = await Client(alice_jid, alice_pw).online(target)
    bob = await Client(bob_jid, bob_pw, interests=(STATUS,)).online(target)
    carol = await Client(carol_jid, carol_pw).online(target)
    clients = [alice, bob, carol]
    try:
        alice.send_presence(pto=bob_jid, ptype="subscribe")
        await until(lambda: alice.client_roster[bob_jid]["subscription"] == "both", "both ways")

        info = await alice.plugin["xep_0030"].get_info(jid=alice_jid, timeout=STEP)
        identities = {(i[0], i[1]) for i in info["disco_info"]["identities"]}
        features = info["disco_info"]["features"]
        seen["account disco: pubsub/pep identity"] = ("pubsub", "pep") in identities
        seen["account disco: publish-options"] = f"{NS_PUBSUB}#publish-options" in features

        devices = ET.fromstring(
            "<list xmlns='eu.siacs.conversations.axolotl'><device id='7'/></list>"
        )
        await alice.plugin["xep_0060"].publish(
            alice_jid, DEVICES, id="current", payload=devices,
            options=publish_options(access_model="open"), timeout=STEP,
        )  # fmt: skip
        got = await carol.plugin["xep_0060"].get_items(alice_jid, DEVICES, timeout=STEP)
        seen["omemo devicelist (open) read by a stranger"] = [
            i["id"] for i in got["pubsub"]["items"]
        ]
        seen["precondition clash"] = await condition_of(
            alice.plugin["xep_0060"].publish(
                alice_jid, DEVICES, id="current", payload=devices,
                options=publish_options(access_model="whitelist"), timeout=STEP,
            )
        )  # fmt: skip

        status = ET.fromstring(f"<status xmlns='{STATUS}'>s1</status>")
        await alice.plugin["xep_0060"].publish(
            alice_jid, STATUS, id="s1", payload=status, timeout=STEP
        )
        seen["presence node read by a stranger"] = await condition_of(
            carol.plugin["xep_0060"].get_items(alice_jid, STATUS, timeout=STEP)
        )
        got = await bob.plugin["xep_0060"].get_items(alice_jid, STATUS, timeout=STEP)
        seen["presence node read by a contact"] = len(got["pubsub"]["items"])

        # +notify: bob's caps carry STATUS+notify (slixmpp answers the server's query).
        while not bob.events.empty():
            bob.events.get_nowait()
        status = ET.fromstring(f"<status xmlns='{STATUS}'>s2</status>")
        await alice.plugin["xep_0060"].publish(
            alice_jid, STATUS, id="s2", payload=status, timeout=STEP
        )
        note = await next_event(bob, STATUS)
        seen["+notify on publish"] = note["pubsub_event"]["items"]["item"]["id"]
        bob_again = await Client(bob_jid, bob_pw, interests=(STATUS,)).online(target)
        clients.append(bob_again)
        note = await next_event(bob_again, STATUS)
        seen["+notify at login: last item"] = note["pubsub_event"]["items"]["item"]["id"]

        # XEP-0084 avatar published by a modern client, read from the vCard by an old one.
        await alice.plugin["xep_0084"].publish_avatar(IMAGE, timeout=STEP)
        sha1 = hashlib.sha1(IMAGE).hexdigest()
        await alice.plugin["xep_0084"].publish_avatar_metadata(
            [{"id": sha1, "type": "image/png", "bytes": len(IMAGE)}], timeout=STEP
        )
        vcard = await bob.plugin["xep_0054"].get_vcard(alice_jid, cached=False, timeout=STEP)
        seen["PEP avatar seen in the vCard"] = vcard["vcard_temp"]["PHOTO"]["BINVAL"] == IMAGE

        # An old client sets its avatar in the vCard (XEP-0153): PEP gets it.
        await alice.plugin["xep_0153"].set_avatar(avatar=IMAGE2, mtype="image/png", timeout=STEP)
        sha1 = hashlib.sha1(IMAGE2).hexdigest()
        got = await bob.plugin["xep_0060"].get_items(
            alice_jid, "urn:xmpp:avatar:metadata", timeout=STEP
        )
        seen["vCard avatar seen in PEP metadata"] = [i["id"] for i in got["pubsub"]["items"]] == [
            sha1
        ]
        got = await bob.plugin["xep_0084"].retrieve_avatar(alice_jid, sha1, timeout=STEP)
        data = got["pubsub"]["items"]["item"].xml.find("{urn:xmpp:avatar:data}data")
        seen["vCard avatar data in PEP"] = base64.b64decode(data.text or "") == IMAGE2

        # Bookmarks: legacy private storage <-> XEP-0402 PEP items.
        legacy = Bookmarks()
        legacy.add_conference("room@muc.example.net", "al", name="Room", autojoin=True)
        await alice.plugin["xep_0048"].set_bookmarks(legacy, method="xep_0049", timeout=STEP)
        got = await alice.plugin["xep_0060"].get_items(alice_jid, BOOKMARKS, timeout=STEP)
        seen["legacy bookmarks seen in PEP"] = sorted(i["id"] for i in got["pubsub"]["items"])
        conference = Conference()
        conference["name"] = "Coven"
        conference["autojoin"] = True
        conference["nick"] = "w"
        await alice.plugin["xep_0060"].publish(
            alice_jid, BOOKMARKS, id="coven@muc.example.net", payload=conference,
            options=publish_options(
                persist_items="true", max_items="max",
                send_last_published_item="never", access_model="whitelist",
            ),
            timeout=STEP,
        )  # fmt: skip
        got = await alice.plugin["xep_0048"].get_bookmarks(method="xep_0049", timeout=STEP)
        seen["PEP bookmarks seen by a legacy client"] = sorted(
            str(c["jid"]) for c in got["private"]["bookmarks"]["conferences"]
        )
    finally:
        for client in clients:
            if client.is_connected():
                await client.offline()
    return seen


def run(target: Any, accounts: list[tuple[str, str]]) -> dict[str, Any]:
    logging.getLogger("slixmpp").setLevel(logging.CRITICAL)
    return asyncio.run(asyncio.wait_for(scenario(target, accounts), 120))


def test_slixmpp_scenario_against_imserver(server) -> None:
    seen = run(server, AccountPool(server, batch=3).take(3))
    assert seen == EXPECTED


@needs("prosody")
def test_same_scenario_against_prosody(tmp_path) -> None:
    prosody = ProsodyProcess(
        tmp_path / "prosody",
        modules_enabled=(*DEFAULT_MODULES, "pep", "vcard_legacy", "private", "bookmarks"),
        certificate=TestCA(tmp_path / "ca").issue("localhost"),  # it offers STARTTLS
    )
    accounts = [(f"{name}@localhost", f"pw-{name}") for name in ("alice", "bob", "carol")]
    for jid, password in accounts:
        prosody.register(jid, password)
    prosody.start()
    try:
        seen = run(prosody, accounts)
    finally:
        prosody.stop()
    assert seen == {**EXPECTED, **PROSODY_DIFFERS}


@pytest.fixture(scope="module")
def pool(server) -> AccountPool:
    return AccountPool(server, batch=3)
