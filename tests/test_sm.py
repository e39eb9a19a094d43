"""XEP-0198 stream management over the wire, run against imserver and Prosody 0.12.

Each scenario takes a C{target} (imserver, or Prosody with mod_smacks) with
the same short resumption time, so one file is the differential test. Where
Prosody does something else, the test says so and which side follows the XEP.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support.client import RawClient, clark, closed_after, stream_error_condition, to_text
from support.im import User, body_is, presence
from support.sm import (
    MECHANISM,
    NS_SM,
    RESUME_TIMEOUT,
    SERVERS,
    SMClient,
    Target,
    chat_to,
    come_online,
    failed_condition,
    plain_online,
    received_bodies,
    running,
    sm,
    sm_online,
)


@pytest.fixture(scope="module", params=SERVERS)
def target(request, tmp_path_factory) -> Iterator[Target]:
    with running(request.param, tmp_path_factory) as started:
        yield started


@pytest.fixture
def clients(target: Target) -> Iterator[Callable[..., Any]]:
    """clients(cls=SMClient): a new unconnected client for the target; all closed at the end."""
    yield from closed_after(lambda cls=SMClient: cls.for_server(target.process))


def mutual(a: RawClient, a_bare: str, b: RawClient, b_bare: str) -> None:
    """a and b subscribe to each other, each approving the other's request."""
    for x, x_bare, y, y_bare in ((a, a_bare, b, b_bare), (b, b_bare, a, a_bare)):
        x.send(f"<presence to='{y_bare}' type='subscribe'/>")
        y.expect(presence(x_bare, "subscribe"))
        y.send(f"<presence to='{x_bare}' type='subscribed'/>")
        x.expect(presence(y_bare, "subscribed"))


# -- negotiation ----------------------------------------------------------------


def test_feature_offered_after_authentication(target: Target, clients) -> None:
    account = target.make_account()
    client: SMClient = clients()
    client.connect()
    before = client.open_stream()
    assert before.find(sm("sm")) is None, to_text(before)
    if before.find(clark("urn:ietf:params:xml:ns:xmpp-tls", "starttls")) is not None:
        client.starttls()
        assert client.open_stream().find(sm("sm")) is None
    client.auth_scram(account[0], account[1], MECHANISM)
    after = client.open_stream()
    assert after.find(sm("sm")) is not None, to_text(after)


def test_enable_answers_with_a_resumption_id_and_max(target: Target, clients) -> None:
    client: SMClient = clients()
    account = target.make_account()
    client.login(account[0], account[1], "r1", MECHANISM)
    enabled = client.enable()
    assert enabled.tag == sm("enabled"), to_text(enabled)
    assert enabled.get("resume") in ("true", "1")
    assert enabled.get("id")
    assert int(enabled.get("max")) == RESUME_TIMEOUT
    again = client.enable()
    assert again.tag == sm("failed") and failed_condition(again) == "unexpected-request"


def test_enable_before_bind_fails_and_bind_still_works(target: Target, clients) -> None:
    account = target.make_account()
    client: SMClient = clients()
    client.reconnect(*account)
    answer = client.enable()
    assert answer.tag == sm("failed"), to_text(answer)
    assert failed_condition(answer) == "unexpected-request"
    assert client.bind("r").endswith("/r")


def test_request_counts_the_clients_stanzas(target: Target, clients) -> None:
    account = target.make_account()
    client = sm_online(clients, account)  # roster get + presence: 2 stanzas
    assert client.request() == 2
    for i in range(3):
        client.send(f"<iq type='get' id='p{i}'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert client.request() == 5


def test_server_asks_for_acks_and_takes_them(target: Target, clients) -> None:
    account = target.make_account()
    client = sm_online(clients, account)
    # The roster result and the presence echo were sent: the server asks for an ack.
    client.expect(sm("r"))
    client.ack()
    user = User(client, *account)
    user.sync()
    client.expect(sm("r"))
    client.ack()
    assert client.request() == 3  # still fine after acking everything


def test_ack_for_more_than_was_sent_closes_the_stream(target: Target, clients) -> None:
    account = target.make_account()
    client = sm_online(clients, account)
    client.send(f"<a xmlns='{NS_SM}' h='{client.handled + 10}'/>")
    error = client.expect(clark("http://etherx.jabber.org/streams", "error"))
    assert stream_error_condition(error) == "undefined-condition", to_text(error)
    too_high = error.find(sm("handled-count-too-high"))
    if target.name == "prosody":
        # Prosody 0.12 leaves out the XEP's <handled-count-too-high/> condition (§4).
        assert too_high is None, to_text(error)
        return
    assert too_high is not None, to_text(error)
    assert too_high.get("h") == str(client.handled + 10)
    assert too_high.get("send-count") == str(client.handled)


def test_r_without_enable_is_a_stream_error(target: Target, clients) -> None:
    account = target.make_account()
    client: SMClient = clients()
    client.login(account[0], account[1], "r", MECHANISM)
    client.send(f"<r xmlns='{NS_SM}'/>")
    client.expect_stream_error("unsupported-stanza-type")


# -- resumption -----------------------------------------------------------------


def test_killed_socket_then_resume_delivers_each_message_once_in_order(
    target: Target, clients
) -> None:
    alice_account, bob_account = target.make_account(), target.make_account()
    alice = sm_online(clients, alice_account)
    bob = plain_online(clients, bob_account)
    mutual(alice, alice_account[0], bob.client, bob.bare)
    alice_full = alice.jid
    User(alice, *alice_account).received(0.1)
    bob.received(0.1)

    chat_to(bob, alice_full, "m1", "m2", "m3")
    for text in ("m1", "m2", "m3"):
        alice.expect(body_is(text))
    alice.ack()
    chat_to(bob, alice_full, "m4", "m5")
    for text in ("m4", "m5"):
        alice.expect(body_is(text))
    alice.drop()  # m4 and m5 arrived but were never acknowledged
    time.sleep(0.2)
    chat_to(bob, alice_full, "m6", "m7")
    bob.sync()

    alice.reconnect(*alice_account)
    resumed = alice.resume()
    assert resumed.tag == sm("resumed"), to_text(resumed)
    assert resumed.get("previd") == alice.sm_id
    got = received_bodies(alice)
    assert got == ["m6", "m7"], got
    # The session never ended: no unavailable presence reached bob.
    bob.assert_nothing(presence(alice_full, "unavailable"))
    chat_to(bob, alice_full, "m8")
    alice.expect(body_is("m8"))


def test_resume_with_a_lower_h_resends_from_there(target: Target, clients) -> None:
    alice_account, bob_account = target.make_account(), target.make_account()
    alice = sm_online(clients, alice_account)
    bob = plain_online(clients, bob_account)
    User(alice, *alice_account).received(0.1)
    alice.ack()
    start = alice.handled
    chat_to(bob, alice.jid, "a", "b", "c")
    for text in ("a", "b", "c"):
        alice.expect(body_is(text))
    alice.drop()
    alice.reconnect(*alice_account)
    resumed = alice.resume(h=start + 1)  # the client lost "b" and "c" (e.g. a crash)
    assert resumed.tag == sm("resumed"), to_text(resumed)
    assert received_bodies(alice) == ["b", "c"]


def test_resumption_times_out_then_messages_wait_offline(target: Target, clients) -> None:
    alice_account, bob_account = target.make_account(), target.make_account()
    alice = sm_online(clients, alice_account)
    bob = plain_online(clients, bob_account)
    mutual(alice, alice_account[0], bob.client, bob.bare)
    alice_full = alice.jid
    User(alice, *alice_account).received(0.1)
    alice.ack()
    chat_to(bob, alice_full, "t1", "t2")
    alice.expect(body_is("t2"))
    alice.drop()  # t1 and t2 were never acknowledged
    time.sleep(0.2)
    chat_to(bob, alice_full, "t3")
    bob.expect(presence(alice_full, "unavailable"), timeout=RESUME_TIMEOUT + 5)

    again: SMClient = clients()
    again.reconnect(*alice_account)
    failed = again.resume(previd=alice.sm_id, h=alice.handled)
    assert failed.tag == sm("failed") and failed_condition(failed) == "item-not-found"
    again.bind("phone")
    come_online(again)
    assert received_bodies(again, 0.5) == ["t1", "t2", "t3"]


def test_closing_the_stream_ends_the_session_and_keeps_unacked_messages(
    target: Target, clients
) -> None:
    alice_account, bob_account = target.make_account(), target.make_account()
    alice = sm_online(clients, alice_account)
    bob = plain_online(clients, bob_account)
    mutual(alice, alice_account[0], bob.client, bob.bare)
    alice_full = alice.jid
    User(alice, *alice_account).received(0.1)
    alice.ack()
    chat_to(bob, alice_full, "c1")
    alice.expect(body_is("c1"))
    alice.close()  # </stream:stream> without acknowledging c1
    bob.expect(presence(alice_full, "unavailable"))

    again = clients()
    again.login(alice_account[0], alice_account[1], "phone", MECHANISM)
    come_online(again)
    assert received_bodies(again, 0.5) == ["c1"]


def test_unknown_or_foreign_previd_fails_with_item_not_found(target: Target, clients) -> None:
    alice_account, mallory_account = target.make_account(), target.make_account()
    alice = sm_online(clients, alice_account)
    mallory: SMClient = clients()
    mallory.reconnect(*mallory_account)
    failed = mallory.resume(previd="no-such-session", h=0)
    assert failed.tag == sm("failed") and failed_condition(failed) == "item-not-found"
    failed = mallory.resume(previd=alice.sm_id, h=0)  # someone else's session
    assert failed.tag == sm("failed") and failed_condition(failed) == "item-not-found"
    assert mallory.bind("m").endswith("/m")  # the stream goes on
    assert alice.request() == 2  # alice's session is untouched


def test_resume_with_h_too_high_fails_and_ends_the_session(target: Target, clients) -> None:
    alice_account, bob_account = target.make_account(), target.make_account()
    alice = sm_online(clients, alice_account)
    bob = plain_online(clients, bob_account)
    mutual(alice, alice_account[0], bob.client, bob.bare)
    User(alice, *alice_account).received(0.1)
    chat_to(bob, alice.jid, "x1")
    alice.expect(body_is("x1"))
    alice.drop()
    alice.reconnect(*alice_account)
    if target.name == "prosody":
        # Prosody 0.12 drops the connection without <failed/> or a stream error;
        # XEP-0198 §6 wants <failed/> (the stream stays usable for a bind).
        alice.send(f"<resume xmlns='{NS_SM}' previd='{alice.sm_id}' h='{alice.handled + 5}'/>")
        alice.drain(2.0)
        assert alice.closed
        return
    failed = alice.resume(h=alice.handled + 5)
    assert failed.tag == sm("failed"), to_text(failed)
    assert failed_condition(failed) == "undefined-condition", to_text(failed)
    too_high = failed.find(sm("handled-count-too-high"))
    assert too_high is not None and too_high.get("h") == str(alice.handled + 5)
    # The old session ended: its unacknowledged message waits offline.
    bob.expect(presence(alice.jid, "unavailable"))
    alice.bind("phone")
    come_online(alice)
    assert received_bodies(alice, 0.5) == ["x1"]


def test_second_resume_replaces_the_first_stream(target: Target, clients) -> None:
    alice_account, bob_account = target.make_account(), target.make_account()
    first = sm_online(clients, alice_account)
    bob = plain_online(clients, bob_account)
    User(first, *alice_account).received(0.1)
    first.ack()
    first.drop()
    second: SMClient = clients()
    second.reconnect(*alice_account)
    answer = second.resume(previd=first.sm_id, h=first.handled)
    assert answer.tag == sm("resumed"), to_text(answer)
    chat_to(bob, first.jid, "on-second")
    second.expect(body_is("on-second"))

    third: SMClient = clients()
    third.reconnect(*alice_account)
    answer = third.resume(previd=first.sm_id, h=first.handled)  # second never acked: resent
    assert answer.tag == sm("resumed"), to_text(answer)
    if target.name == "prosody":
        # Prosody 0.12 just closes the replaced connection; the XEP (§5) says
        # to send it a conflict stream error first, as imserver does.
        second.drain(1.0)
        assert second.closed
    else:
        second.expect_stream_error("conflict")
    assert received_bodies(third) == ["on-second"]
    chat_to(bob, first.jid, "on-third")
    third.expect(body_is("on-third"))
