"""slixmpp's XEP-0198 plugin, an independent client, resumes a dropped stream.

Alice (slixmpp with xep_0198) gets a message, her TCP connection is aborted,
bob sends two more while she is away, and slixmpp reconnects and resumes:
she gets exactly the two she missed, once and in order, and her session
(same full JID) carries on. Run against imserver and Prosody 0.12.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
from slixmpp import ClientXMPP
from support.sm import SERVERS, Target, running

STEP = 10.0


class Client(ClientXMPP):
    def __init__(self, jid: str, password: str, sm: bool) -> None:
        super().__init__(jid + "/" + ("phone" if sm else "desk"), password)
        if sm:
            self.register_plugin("xep_0198")
        self.enable_direct_tls = False
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self.messages: asyncio.Queue = asyncio.Queue()
        self.events: dict[str, asyncio.Event] = {}
        for name in ("session_start", "sm_enabled", "session_resumed", "disconnected"):
            self.events[name] = asyncio.Event()
            self.add_event_handler(name, lambda _e, n=name: self.events[n].set())
        self.add_event_handler("session_start", self.start)
        self.add_event_handler("message", self.messages.put_nowait)

    async def start(self, _event: Any) -> None:
        await self.get_roster()
        self.send_presence()

    async def wait(self, name: str) -> None:
        await asyncio.wait_for(self.events[name].wait(), STEP)
        self.events[name].clear()

    async def body(self) -> str:
        return str((await asyncio.wait_for(self.messages.get(), STEP))["body"])


async def scenario(target: Target, alice_account, bob_account) -> None:
    process = target.process
    alice = Client(*alice_account, sm=True)
    bob = Client(*bob_account, sm=False)
    try:
        alice.connect(process.interface, process.port)
        await alice.wait("session_start")
        await alice.wait("sm_enabled")
        sm_id = alice.plugin["xep_0198"].sm_id
        assert sm_id
        full = alice.boundjid.full
        bob.connect(process.interface, process.port)
        await bob.wait("session_start")

        bob.send_message(mto=full, mbody="before", mtype="chat")
        assert await alice.body() == "before"
        alice.transport.abort()  # the network is gone: no </stream:stream>
        await alice.wait("disconnected")
        bob.send_message(mto=full, mbody="away-1", mtype="chat")
        bob.send_message(mto=full, mbody="away-2", mtype="chat")
        await asyncio.wait_for(bob.get_roster(), STEP)  # bob's messages were handled

        alice.connect(process.interface, process.port)
        await alice.wait("session_resumed")
        assert alice.boundjid.full == full
        assert alice.plugin["xep_0198"].sm_id == sm_id
        assert [await alice.body(), await alice.body()] == ["away-1", "away-2"]
        await asyncio.wait_for(alice.get_roster(), STEP)
        await asyncio.sleep(0.3)
        assert alice.messages.empty(), "a message arrived twice"
        bob.send_message(mto=full, mbody="after", mtype="chat")
        assert await alice.body() == "after"
    finally:
        for client in (alice, bob):
            if client.is_connected():
                await asyncio.wait_for(client.disconnect(), STEP)


@pytest.fixture(scope="module", params=SERVERS)
def target(request, tmp_path_factory) -> Iterator[Target]:
    with running(request.param, tmp_path_factory) as started:
        yield started


def test_slixmpp_resumes_after_the_connection_drops(target: Target) -> None:
    logging.getLogger("slixmpp").setLevel(logging.WARNING)
    alice_account, bob_account = target.make_account(), target.make_account()
    asyncio.run(asyncio.wait_for(scenario(target, alice_account, bob_account), 60))
