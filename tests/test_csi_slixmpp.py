"""slixmpp's XEP-0352 plugin, an independent client, goes inactive and active again.

While alice (slixmpp with xep_0352) is inactive, bob's chat state waits; his
message with a body brings both, in order. Run against imserver and Prosody 0.12.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
from support.sm import SERVERS, Target, running
from test_sm_slixmpp import STEP, Client


async def scenario(target: Target, alice_account, bob_account) -> None:
    process = target.process
    alice = Client(*alice_account, sm=False)
    alice.register_plugin("xep_0352")
    alice.register_plugin("xep_0085")
    # slixmpp raises "chatstate" for a message with a chat state and "message"
    # only for one with a body: both go to one queue, in arrival order.
    alice.add_event_handler("chatstate", alice.messages.put_nowait)
    csi = asyncio.Event()
    alice.add_event_handler("csi_enabled", lambda _e: csi.set())
    bob = Client(*bob_account, sm=False)
    bob.register_plugin("xep_0085")
    try:
        alice.connect(process.interface, process.port)
        await alice.wait("session_start")
        await asyncio.wait_for(csi.wait(), STEP)  # the server offered <csi/>
        bob.connect(process.interface, process.port)
        await bob.wait("session_start")
        to = alice.boundjid.full

        alice.plugin["xep_0352"].send_inactive()
        await asyncio.wait_for(alice.get_roster(), STEP)  # the server has read it
        composing = bob.make_message(mto=to, mtype="chat")
        composing["chat_state"] = "composing"
        composing.send()
        await asyncio.sleep(0.5)
        if target.name == "prosody":
            # Observed, cause not investigated: Prosody 0.12 delivers this chat state
            # at once. Here bob and alice share no subscription and slixmpp's message
            # has an id; in test_csi (subscribed, no id) Prosody holds chat states.
            assert not alice.messages.empty()
        else:
            assert alice.messages.empty(), "a chat state reached an inactive client"
        bob.send_message(mto=to, mbody="hello", mtype="chat")
        first = await asyncio.wait_for(alice.messages.get(), STEP)
        second = await asyncio.wait_for(alice.messages.get(), STEP)
        assert (first["chat_state"], first["body"]) == ("composing", "")
        assert second["body"] == "hello"
        await asyncio.sleep(0.2)
        assert alice.messages.empty()

        alice.plugin["xep_0352"].send_active()
        composing = bob.make_message(mto=to, mtype="chat")
        composing["chat_state"] = "paused"
        composing.send()
        got = await asyncio.wait_for(alice.messages.get(), STEP)
        assert got["chat_state"] == "paused"
    finally:
        for client in (alice, bob):
            if client.is_connected():
                await asyncio.wait_for(client.disconnect(), STEP)


@pytest.fixture(scope="module", params=SERVERS)
def target(request, tmp_path_factory) -> Iterator[Target]:
    with running(request.param, tmp_path_factory) as started:
        yield started


def test_slixmpp_inactive_then_active(target: Target) -> None:
    logging.getLogger("slixmpp").setLevel(logging.WARNING)
    alice_account, bob_account = target.make_account(), target.make_account()
    asyncio.run(asyncio.wait_for(scenario(target, alice_account, bob_account), 60))
