"""A third-party client (slixmpp) through the core: STARTTLS, SASL, bind, XEP-0199 ping.

slixmpp shares no code with the server or with the raw test client, so this
catches readings of the RFCs that only our own two sides agree on. Each
mechanism is forced through slixmpp's feature_mechanisms plugin; every wait
is bounded.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import pytest
from slixmpp import ClientXMPP
from support.server import ServerProcess

STEP = 10.0  # seconds any single step may take


async def slixmpp_session(
    server: ServerProcess, jid: str, password: str, mechanism: str
) -> dict[str, Any]:
    """Log in with slixmpp and ping the server; returns what happened, for the asserts."""
    client = ClientXMPP(
        f"{jid}/slixmpp",
        password,
        plugin_config={"feature_mechanisms": {"use_mech": mechanism}},
    )
    client.register_plugin("xep_0199")
    client.enable_direct_tls = False  # the c2s port speaks STARTTLS
    client.enable_plaintext = False
    client.ssl_context.check_hostname = False
    client.ssl_context.verify_mode = ssl.CERT_NONE  # self-signed test certificate

    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[str] = loop.create_future()

    def settle(result: str):
        def handler(_event: Any) -> None:
            if not outcome.done():
                outcome.set_result(result)

        return handler

    client.add_event_handler("session_start", settle("session"))
    client.add_event_handler("failed_auth", settle("failed_auth"))
    client.add_event_handler("failed_all_auth", settle("failed_auth"))
    client.add_event_handler("disconnected", settle("disconnected"))

    report: dict[str, Any] = {}
    client.connect(server.interface, server.port)
    try:
        report["outcome"] = await asyncio.wait_for(outcome, STEP)
        report["features"] = set(client.features)
        report["mechanism"] = getattr(client.plugin["feature_mechanisms"].mech, "name", None)
        if report["outcome"] == "session":
            report["bound"] = client.boundjid.full
            report["rtt"] = await asyncio.wait_for(
                client.plugin["xep_0199"].ping(jid=server.host, timeout=STEP), STEP
            )
    finally:
        client.disconnect(wait=1)
        try:
            await asyncio.wait_for(client.disconnected, STEP)
        except TimeoutError:
            client.abort()
    return report


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"])
def test_slixmpp_logs_in_binds_and_pings(
    server: ServerProcess, account: tuple[str, str], mechanism: str
) -> None:
    jid, password = account
    report = asyncio.run(asyncio.wait_for(slixmpp_session(server, jid, password, mechanism), 60))
    assert report["outcome"] == "session", report
    assert report["mechanism"] == mechanism
    assert {"starttls", "mechanisms", "bind"} <= report["features"], report
    assert report["bound"] == f"{jid}/slixmpp"
    assert report["rtt"] >= 0


def test_slixmpp_wrong_password_fails(server: ServerProcess, account: tuple[str, str]) -> None:
    jid, _ = account
    report = asyncio.run(
        asyncio.wait_for(slixmpp_session(server, jid, "not the password", "SCRAM-SHA-256"), 60)
    )
    assert report["outcome"] == "failed_auth", report
    assert "bind" not in report["features"]
