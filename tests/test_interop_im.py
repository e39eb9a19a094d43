"""Two slixmpp clients, an independent XMPP implementation, use the server for IM.

They add each other, subscribe both ways with auto-authorisation, see each
other's presence and chat; then one goes offline, gets a message while away
and receives it, delay-stamped, when it comes back.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any

import pytest
from slixmpp import ClientXMPP
from support.im import AccountPool
from support.server import ServerProcess

STEP = 10.0  # seconds any single step may take


class Client(ClientXMPP):
    """A slixmpp client that logs in, fetches its roster, goes available, keeps messages."""

    def __init__(self, jid: str, password: str) -> None:
        super().__init__(jid, password)
        self.register_plugin("xep_0203")  # delayed delivery, to read the offline stamp
        self.enable_direct_tls = False  # STARTTLS on the c2s port, like most clients
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE  # the test server's cert is self-signed
        self.roster.auto_authorize = True
        self.roster.auto_subscribe = True
        self.messages: asyncio.Queue = asyncio.Queue()
        self.ready = asyncio.Event()
        self.add_event_handler("session_start", self.start)
        self.add_event_handler("message", self.messages.put_nowait)

    async def start(self, _event: Any) -> None:
        await self.get_roster()
        self.send_presence()
        self.ready.set()

    async def online(self, server: ServerProcess) -> Client:
        self.connect(server.interface, server.port)
        await asyncio.wait_for(self.ready.wait(), STEP)
        return self

    def subscription(self, contact: str) -> str:
        return self.client_roster[contact]["subscription"]

    def sees(self, contact: str) -> bool:
        """Whether this client currently has available presence from C{contact}."""
        return bool(self.client_roster.presence(contact))

    async def offline(self) -> None:
        await asyncio.wait_for(self.disconnect(), STEP)


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) until C{condition()} holds."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(poll(), STEP)
    except TimeoutError:
        raise AssertionError(f"timed out waiting until {what}") from None


async def scenario(server: ServerProcess, alice_account, bob_account) -> None:
    alice = await Client(*alice_account).online(server)
    bob = await Client(*bob_account).online(server)
    alice_jid, bob_jid = alice_account[0], bob_account[0]
    try:
        # Alice adds bob to her roster, then asks for his presence; both auto-authorise.
        await asyncio.wait_for(alice.update_roster(bob_jid, name="Bob", groups=["Friends"]), STEP)
        alice.send_presence(pto=bob_jid, ptype="subscribe")
        await until(lambda: alice.subscription(bob_jid) == "both", "alice has 'both'")
        await until(lambda: bob.subscription(alice_jid) == "both", "bob has 'both'")
        assert alice.client_roster[bob_jid]["name"] == "Bob"
        assert alice.client_roster[bob_jid]["groups"] == ["Friends"]
        await until(lambda: alice.sees(bob_jid) and bob.sees(alice_jid), "both see the other")

        alice.send_message(mto=bob_jid, mbody="Art thou not Romeo?", mtype="chat")
        got = await asyncio.wait_for(bob.messages.get(), STEP)
        assert (got["body"], got["type"], got["from"].bare) == (
            "Art thou not Romeo?",
            "chat",
            alice_jid,
        )
        assert got["delay"]["stamp"] is None, "a live message carries no delay"

        await bob.offline()
        await until(lambda: not alice.sees(bob_jid), "alice sees bob go offline")
        alice.send_message(mto=bob_jid, mbody="Wherefore art thou?", mtype="chat")
        # The server handles alice's stanzas in order, so once this iq is answered
        # the message is stored.
        await asyncio.wait_for(alice.get_roster(), STEP)

        bob = await Client(*bob_account).online(server)
        got = await asyncio.wait_for(bob.messages.get(), STEP)
        assert (got["body"], got["from"].bare) == ("Wherefore art thou?", alice_jid)
        assert got["delay"]["stamp"] is not None, "an offline message is delay-stamped"
        await until(lambda: alice.sees(bob_jid), "alice sees bob back")
    finally:
        for client in (alice, bob):
            if client.is_connected():
                await client.offline()


@pytest.fixture(scope="module")
def pool(server: ServerProcess) -> AccountPool:
    return AccountPool(server, batch=2)


def test_two_slixmpp_clients(server: ServerProcess, pool: AccountPool) -> None:
    logging.getLogger("slixmpp").setLevel(logging.WARNING)
    alice_account, bob_account = pool.take(2)
    asyncio.run(asyncio.wait_for(scenario(server, alice_account, bob_account), 60))
