"""RFC 6121 §5 and §8.5 (RFC 3921 §4, §11) message delivery to local users, and the errors.

Resources are given explicit priorities; the tests check which resources get
a message and that the others get nothing.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable

import pytest
from support.client import IQ, MESSAGE, NS_CLIENT, RawClient, stanza_error, to_text
from support.im import AccountPool, User, canonical, login, message, online

MakeClient = Callable[..., RawClient]


def body(stanza: ET.Element) -> str | None:
    return stanza.findtext(f"{{{NS_CLIENT}}}body")


def resources(
    make_client: MakeClient, account: tuple[str, str], priorities: dict[str, int]
) -> dict[str, User]:
    """One available resource per name, with the given priority each."""
    users = {
        name: online(make_client, account, name, priority) for name, priority in priorities.items()
    }
    for user in users.values():
        user.received(0.05)  # each other's presence
    return users


def error_of(sender: User, stanza_id: str) -> tuple[str | None, str | None]:
    """The error the sender got back for its message C{stanza_id}."""
    bounced = sender.expect(lambda e: e.tag == MESSAGE and e.get("id") == stanza_id)
    assert bounced.get("type") == "error", to_text(bounced)
    return stanza_error(bounced)


# -- to a full JID (§8.5.3) ------------------------------------------------------------


def test_to_full_jid_reaches_that_resource_only(make_client: MakeClient, pool: AccountPool) -> None:
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    bob = resources(make_client, bob_account, {"high": 10, "low": 1})
    alice.send(f"<message id='m1' type='chat' to='{bob['low'].jid}'><body>psst</body></message>")
    got = bob["low"].expect(message(alice.jid, "chat"))
    assert (got.get("id"), got.get("to"), body(got)) == ("m1", bob["low"].jid, "psst")
    bob["high"].assert_nothing()
    alice.assert_nothing()


@pytest.mark.parametrize("type_", ["chat", "normal"])
def test_to_unknown_resource_is_as_if_to_bare_jid(
    make_client: MakeClient, pool: AccountPool, type_: str
) -> None:
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    bob = resources(make_client, bob_account, {"high": 10, "low": 1})
    alice.send(f"<message type='{type_}' to='{bob['low'].bare}/gone'><body>hi</body></message>")
    assert body(bob["high"].expect(message(alice.jid, type_))) == "hi"
    bob["low"].assert_nothing()
    alice.assert_nothing()


def test_groupchat_to_unknown_resource_is_service_unavailable(
    make_client: MakeClient, pool: AccountPool
) -> None:
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    bob = online(make_client, bob_account)
    alice.send(f"<message id='g1' type='groupchat' to='{bob.bare}/gone'><body>x</body></message>")
    assert error_of(alice, "g1") == ("cancel", "service-unavailable")
    bob.assert_nothing()


def test_headline_to_unknown_resource_is_dropped(
    make_client: MakeClient, pool: AccountPool
) -> None:
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    bob = online(make_client, bob_account)
    alice.send(f"<message type='headline' to='{bob.bare}/gone'><body>news</body></message>")
    bob.assert_nothing()
    alice.assert_nothing()


# -- to a bare JID (§8.5.2) --------------------------------------------------------------


@pytest.mark.parametrize("type_", ["chat", "normal"])
def test_bare_jid_goes_to_highest_priority(
    make_client: MakeClient, pool: AccountPool, type_: str
) -> None:
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    bob = resources(make_client, bob_account, {"desk": 5, "phone": 1, "away": -1})
    alice.send(f"<message type='{type_}' to='{bob['desk'].bare}'><body>one</body></message>")
    got = bob["desk"].expect(message(alice.jid, type_))
    assert (got.get("to"), body(got)) == (bob["desk"].bare, "one")
    bob["phone"].assert_nothing()
    bob["away"].assert_nothing()


def test_bare_jid_goes_to_every_resource_sharing_the_top_priority(
    make_client: MakeClient, pool: AccountPool
) -> None:
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    bob = resources(make_client, bob_account, {"a": 3, "b": 3, "c": 0})
    alice.send(f"<message type='chat' to='{bob['a'].bare}'><body>both</body></message>")
    for name in ("a", "b"):
        assert body(bob[name].expect(message(alice.jid, "chat"))) == "both"
    bob["c"].assert_nothing()


def test_message_without_type_is_normal(make_client: MakeClient, pool: AccountPool) -> None:
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    bob = resources(make_client, bob_account, {"a": 2, "b": 1})
    alice.send(f"<message to='{bob['a'].bare}'><body>plain</body></message>")
    got = bob["a"].expect(message(alice.jid))
    assert got.get("type") in (None, "normal") and body(got) == "plain"
    bob["b"].assert_nothing()


def test_headline_to_bare_jid_goes_to_every_non_negative_resource(
    make_client: MakeClient, pool: AccountPool
) -> None:
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    bob = resources(make_client, bob_account, {"a": 5, "b": 0, "c": -5})
    alice.send(f"<message type='headline' to='{bob['a'].bare}'><body>news</body></message>")
    for name in ("a", "b"):
        assert body(bob[name].expect(message(alice.jid, "headline"))) == "news"
    bob["c"].assert_nothing()


def test_negative_priority_never_gets_bare_jid_messages(
    make_client: MakeClient, pool: AccountPool
) -> None:
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    bob = resources(make_client, bob_account, {"bot": -1})["bot"]
    for type_ in ("chat", "normal", "headline"):
        alice.send(f"<message type='{type_}' to='{bob.bare}'><body>{type_}</body></message>")
    bob.assert_nothing()
    alice.assert_nothing()  # chat and normal went to offline storage, headline was dropped
    # ... and a full-JID message still reaches it.
    alice.send(f"<message type='chat' to='{bob.jid}'><body>direct</body></message>")
    assert body(bob.expect(message(alice.jid, "chat"))) == "direct"


def test_groupchat_to_bare_jid_is_service_unavailable(
    make_client: MakeClient, pool: AccountPool
) -> None:
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    bob = online(make_client, bob_account)
    alice.send(f"<message id='g2' type='groupchat' to='{bob.bare}'><body>x</body></message>")
    assert error_of(alice, "g2") == ("cancel", "service-unavailable")
    bob.assert_nothing()


def test_error_message_to_bare_jid_is_dropped(make_client: MakeClient, pool: AccountPool) -> None:
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    bob = online(make_client, bob_account)
    alice.send(
        f"<message type='error' to='{bob.bare}'><error type='cancel'>"
        "<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
    )
    bob.assert_nothing()
    alice.assert_nothing()


# -- payloads pass through untouched ------------------------------------------------------

PAYLOAD = (
    "<subject xml:lang='fr'>Le sujet</subject>"
    "<body>Wherefore art thou, Romeo? &amp; &lt;3</body>"
    "<body xml:lang='cz'>Pro&#x10D; jsi ty, Romeo?</body>"
    "<thread parent='e0ffe42b28561960c6b12b944a092794b9683a38'>"
    "c6b12b944a092794b9683a38e0ffe42b28561960</thread>"
    "<x xmlns='urn:example:unknown' level='3'><deep xmlns:p='urn:example:p' p:flag='yes'>"
    "text<inner/>tail</deep></x>"
)


def test_thread_subject_lang_and_extensions_pass_through(
    make_client: MakeClient, pool: AccountPool
) -> None:
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    bob = online(make_client, bob_account)
    alice.send(f"<message id='p1' type='chat' xml:lang='en' to='{bob.bare}'>{PAYLOAD}</message>")
    got = bob.expect(message(alice.jid, "chat"))
    assert got.get("{http://www.w3.org/XML/1998/namespace}lang") == "en"
    assert got.get("id") == "p1"
    sent = ET.fromstring(f"<message xmlns='{NS_CLIENT}'>{PAYLOAD}</message>")
    assert [canonical(c) for c in got] == [canonical(c) for c in sent]


# -- errors (§8.1, §8.5.1) ----------------------------------------------------------------


def test_message_to_nonexistent_user_is_service_unavailable(
    make_client: MakeClient, pool: AccountPool
) -> None:
    (account,) = pool.take(1)
    alice = online(make_client, account)
    for type_ in ("chat", "normal"):
        alice.send(
            f"<message id='x-{type_}' type='{type_}' to='nobody-here@localhost'>"
            "<body>anyone?</body></message>"
        )
        bounced = alice.expect(lambda e, t=type_: e.tag == MESSAGE and e.get("id") == f"x-{t}")
        assert bounced.get("type") == "error"
        assert bounced.get("from") == "nobody-here@localhost"
        assert stanza_error(bounced) == ("cancel", "service-unavailable")
        assert body(bounced) == "anyone?"  # the original payload comes back with it


@pytest.mark.parametrize(
    ("to", "namespace"),
    [
        ("nobody-here@localhost", "jabber:iq:version"),
        ("nobody-here@localhost", "urn:example:unknown"),
        ("{bob}", "urn:example:unknown"),
    ],
    ids=["nonexistent-known-ns", "nonexistent-unknown-ns", "existing-unknown-ns"],
)
def test_iq_to_a_bare_jid_nobody_handles_is_service_unavailable(
    make_client: MakeClient, pool: AccountPool, to: str, namespace: str
) -> None:
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    bob = online(make_client, bob_account)
    to = to.format(bob=bob.bare)
    answer = alice.iq(f"<iq id='q1' type='get' to='{to}'><query xmlns='{namespace}'/></iq>")
    assert (answer.get("type"), answer.get("from"), answer.get("to")) == ("error", to, alice.jid)
    assert stanza_error(answer) == ("cancel", "service-unavailable")
    bob.assert_nothing()


def test_iq_to_unknown_full_jid_is_service_unavailable(
    make_client: MakeClient, pool: AccountPool
) -> None:
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    answer = alice.iq(
        f"<iq type='get' to='{bob_account[0]}/gone'><ping xmlns='urn:xmpp:ping'/></iq>"
    )
    assert stanza_error(answer) == ("cancel", "service-unavailable")


def test_iq_to_full_jid_is_delivered_and_answered(
    make_client: MakeClient, pool: AccountPool
) -> None:
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    bob = online(make_client, bob_account)
    alice.send(f"<iq id='v1' type='get' to='{bob.jid}'><query xmlns='jabber:iq:version'/></iq>")
    request = bob.expect(lambda e: e.tag == IQ and e.get("id") == "v1")
    assert (request.get("from"), request.get("type")) == (alice.jid, "get")
    bob.send(
        f"<iq id='v1' type='result' to='{alice.jid}'><query xmlns='jabber:iq:version'>"
        "<name>bob's client</name></query></iq>"
    )
    answer = alice.expect(lambda e: e.tag == IQ and e.get("id") == "v1")
    assert (answer.get("type"), answer.get("from")) == ("result", bob.jid)
    assert answer.findtext("{jabber:iq:version}query/{jabber:iq:version}name") == "bob's client"


def test_stanzas_without_to_are_handled_for_the_user(
    make_client: MakeClient, pool: AccountPool
) -> None:
    """RFC 6120 §10.3: no 'to' means the user's own bare JID."""
    (account,) = pool.take(1)
    users = resources(make_client, account, {"desk": 2, "phone": 1})
    desk, phone = users["desk"], users["phone"]
    phone.send("<message type='chat'><body>note to self</body></message>")
    got = desk.expect(message(phone.jid, "chat"))
    assert (got.get("to"), body(got)) == (None, "note to self")
    phone.assert_nothing()
    # An iq without 'to' is answered by the server for the account.
    answer = phone.iq("<iq type='get'><query xmlns='jabber:iq:roster'/></iq>")
    assert answer.get("type") == "result"
    answer = phone.iq("<iq type='get'><query xmlns='urn:example:unknown'/></iq>")
    assert stanza_error(answer) == ("cancel", "service-unavailable")


def test_message_to_remote_domain_is_remote_server_not_found(
    make_client: MakeClient, pool: AccountPool
) -> None:
    (account,) = pool.take(1)
    alice = online(make_client, account)
    alice.send("<message id='r1' type='chat' to='juliet@capulet.example'><body>hi</body></message>")
    bounced = alice.expect(lambda e: e.tag == MESSAGE and e.get("id") == "r1")
    assert bounced.get("from") == "juliet@capulet.example"
    assert stanza_error(bounced) == ("cancel", "remote-server-not-found")


@pytest.mark.parametrize(
    "to",
    ["bad user@localhost", "user@local host", "user@localhost/" + "r" * 1024],
    ids=["space-in-localpart", "space-in-domain", "long-resource"],
)
def test_to_failing_stringprep_is_jid_malformed(
    make_client: MakeClient, pool: AccountPool, to: str
) -> None:
    (account,) = pool.take(1)
    alice = online(make_client, account)
    alice.send(f"<message id='j1' type='chat' to='{to}'><body>hi</body></message>")
    bounced = alice.expect(lambda e: e.tag == MESSAGE and e.get("id") == "j1")
    assert stanza_error(bounced) == ("modify", "jid-malformed")
    assert bounced.get("to") == alice.jid


@pytest.mark.parametrize(
    "to", ["", "@localhost", "user@localhost/"], ids=["empty", "empty-localpart", "empty-resource"]
)
def test_to_with_an_empty_part_is_jid_malformed(
    make_client: MakeClient, pool: AccountPool, to: str
) -> None:
    """RFC 7622 §3.3.1 and §3.4.1: a localpart or resourcepart, once separated by '@'
    or '/', must not be empty; neither may the whole address."""
    (account,) = pool.take(1)
    alice = online(make_client, account)
    alice.send(f"<message id='j2' type='chat' to='{to}'><body>hi</body></message>")
    bounced = alice.expect(lambda e: e.tag == MESSAGE and e.get("id") == "j2")
    assert stanza_error(bounced) == ("modify", "jid-malformed")


def test_message_between_two_resources_of_one_account(
    make_client: MakeClient, pool: AccountPool
) -> None:
    (account,) = pool.take(1)
    first = login(make_client, account, "first")
    second = online(make_client, account, "second")
    first.send(f"<message type='chat' to='{second.jid}'><body>me to me</body></message>")
    got = second.expect(message(first.jid, "chat"))
    assert body(got) == "me to me"
