"""The input rate of s2s links is [s2s]'s own, not the per-client one of [limits].

Two imserver processes federate (a.test -> b.test). A peer server carries
many users' traffic at once, so b.test must read it much faster than the
64 KiB/s a single client gets; and a peer exceeding a rate configured for
s2s is slowed down (reading pauses), not disconnected, and loses nothing.
"""

from __future__ import annotations

import time

import pytest
from support.federation import A, B, Federation, account, online
from support.im import message

KIB, MIB = 1024, 1024 * 1024
#: Alice's own stream and a.test's output are not what these tests measure.
SENDER_LIMITS = {"input_rate": 64 * MIB, "input_burst": 64 * MIB, "max_output_buffer": 64 * MIB}


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    world = Federation(tmp_path_factory.mktemp("federation")).start()
    yield world
    world.stop()


@pytest.fixture
def clients():
    made: list = []
    yield made
    for client in made:
        client.close()
    made.clear()


@pytest.fixture
def cell(federation):
    yield federation
    federation.stop_servers()


def linked(cell, clients, receiver_limits: dict, receiver_s2s: dict | None = None):
    """alice@a.test and bob@b.test online, with the s2s link between them already up."""
    a_server = cell.imserver(A, limits=SENDER_LIMITS)
    b_server = cell.imserver(B, limits=receiver_limits, s2s=receiver_s2s)
    alice = online(a_server, account(a_server, "alice"), clients)
    bob = online(b_server, account(b_server, "bob"), clients)
    alice.send(f"<message to='{bob.jid}' type='chat'><body>hello</body></message>")
    bob.expect(message(alice.jid, "chat"))
    time.sleep(1.0)  # the receiver's token bucket refills after the handshake
    return a_server, b_server, alice, bob


def burst(alice, bob, count: int, body_size: int) -> int:
    """Send C{count} chats of C{body_size} bytes from alice to bob at once; return the bytes."""
    body = "x" * body_size
    data = "".join(
        f"<message to='{bob.jid}' id='m{n}' type='chat'><body>{body}</body></message>"
        for n in range(count)
    )
    alice.send(data)
    return len(data)


def receive_all(bob, sender: str, count: int, deadline: float) -> list[str]:
    """The ids of C{count} chats from C{sender}, in the order they came, before C{deadline}."""
    ids = []
    while len(ids) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(ids)} of {count} messages arrived in time"
        ids.append(bob.expect(message(sender, "chat"), timeout=left).get("id"))
    return ids


def incoming_link_closed(server) -> bool:
    return any(
        "s2s <S2SStream" in line and line.endswith(" closed")
        for line in server.log_text().splitlines()
    )


def test_a_federated_burst_is_not_held_to_the_client_rate(cell, clients):
    """With [limits] at its 64 KiB/s, 1.5 MiB over s2s still arrives in seconds."""
    client_rate, client_burst = 64 * KIB, 256 * KIB
    _, b_server, alice, bob = linked(
        cell,
        clients,
        # bob must not be cut off for reading slower than the burst arrives.
        {"input_rate": client_rate, "input_burst": client_burst, "max_output_buffer": 64 * MIB},
    )
    count = 192
    started = time.monotonic()
    size = burst(alice, bob, count, 8000)
    # Read at the client rate, this would take at least this long (a read is up to 64 KiB).
    client_paced = (size - client_burst - 64 * KIB) / client_rate
    bound = 6.0
    assert client_paced > 2.5 * bound
    ids = receive_all(bob, alice.jid, count, started + bound)
    elapsed = time.monotonic() - started
    print(f"{size / MIB:.2f} MiB over s2s in {elapsed:.2f} s (client pace: {client_paced:.1f} s)")
    assert ids == [f"m{n}" for n in range(count)]
    assert not incoming_link_closed(b_server)


def test_a_peer_over_the_s2s_rate_is_slowed_not_disconnected(cell, clients):
    """[s2s] input_rate applies to the link (not [limits]): reading pauses, nothing is lost."""
    rate, burst_size = 128 * KIB, 64 * KIB
    a_server, b_server, alice, bob = linked(
        cell,
        clients,
        {"input_rate": 64 * MIB, "input_burst": 64 * MIB, "max_output_buffer": 64 * MIB},
        {"input_rate": rate, "input_burst": burst_size},
    )
    count = 80
    started = time.monotonic()
    size = burst(alice, bob, count, 8000)
    # Twisted reads up to 64 KiB at a time, so the last read may come in before its pause.
    fastest = (size - burst_size - 64 * KIB) / rate
    slowest = (size - burst_size) / rate
    ids = receive_all(bob, alice.jid, count, started + 1.5 * slowest + 3)
    elapsed = time.monotonic() - started
    print(f"{size / KIB:.0f} KiB at {rate // KIB} KiB/s: {elapsed:.2f} s (fastest {fastest:.2f})")
    assert elapsed >= 0.8 * fastest
    assert ids == [f"m{n}" for n in range(count)]
    # The same link, still up: it carries the next message at once.
    alice.send(f"<message to='{bob.jid}' id='after' type='chat'><body>still here</body></message>")
    assert bob.expect(message(alice.jid, "chat"), timeout=5).get("id") == "after"
    assert not incoming_link_closed(b_server)
    assert "giving up" not in a_server.log_text()
