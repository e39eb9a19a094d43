"""RFC 6121 §2 (RFC 3921 §7) roster management over the wire.

Every test uses fresh accounts, so the tests are independent of each other and
of their order across xdist workers.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from support.client import RawClient, stanza_error, to_text
from support.im import (
    NS_ROSTER,
    ROSTER_ITEM,
    ROSTER_QUERY,
    AccountPool,
    User,
    any_presence,
    item_view,
    login,
    online,
    presence,
    settle,
    subscribe,
)
from support.server import ServerProcess

MakeClient = Callable[..., RawClient]


def roster_set(user: User, item: str) -> tuple[str | None, str | None]:
    """A raw roster set; (error type, condition) of the answer, (None, None) for a result."""
    answer = user.iq(f"<iq type='set'><query xmlns='{NS_ROSTER}'>{item}</query></iq>")
    if answer.get("type") == "result":
        return None, None
    assert answer.get("type") == "error", to_text(answer)
    return stanza_error(answer)


# -- get ---------------------------------------------------------------------------


def test_get_empty_roster(make_client: MakeClient, pool: AccountPool) -> None:
    (account,) = pool.take(1)
    alice = login(make_client, account)
    result = alice.iq(f"<iq id='r1' type='get'><query xmlns='{NS_ROSTER}'/></iq>")
    assert (result.get("type"), result.get("id"), result.get("to")) == ("result", "r1", alice.jid)
    query = result.find(ROSTER_QUERY)
    assert query is not None, to_text(result)
    assert list(query) == []
    assert query.get("ver"), "a server that supports versioning puts 'ver' on every result"


def test_get_populated_roster(make_client: MakeClient, pool: AccountPool) -> None:
    (account,) = pool.take(1)
    alice = login(make_client, account)
    alice.set_item("romeo@example.net", name="Romeo", groups=("Friends",))
    alice.set_item("mercutio@localhost", name="Mercutio", groups=("Friends", "Verona"))
    alice.set_item("benvolio@localhost")
    assert alice.roster_items() == {
        "romeo@example.net": {
            "jid": "romeo@example.net",
            "name": "Romeo",
            "subscription": "none",
            "groups": ["Friends"],
        },
        "mercutio@localhost": {
            "jid": "mercutio@localhost",
            "name": "Mercutio",
            "subscription": "none",
            "groups": ["Friends", "Verona"],
        },
        "benvolio@localhost": {"jid": "benvolio@localhost", "subscription": "none"},
    }


# -- set ---------------------------------------------------------------------------


def test_add_item_pushes_to_every_interested_resource(
    make_client: MakeClient, pool: AccountPool
) -> None:
    (account,) = pool.take(1)
    balcony = login(make_client, account, "balcony")
    chamber = login(make_client, account, "chamber")
    garden = login(make_client, account, "garden")  # never asks for the roster
    balcony.roster()
    chamber.roster()
    garden.available()

    result = balcony.iq(
        f"<iq id='set1' type='set'><query xmlns='{NS_ROSTER}'>"
        "<item jid='nurse@example.com' name='Nurse'><group>Servants</group></item>"
        "</query></iq>"
    )
    assert (result.get("type"), result.get("to"), list(result)) == ("result", balcony.jid, [])
    expected = {
        "jid": "nurse@example.com",
        "name": "Nurse",
        "subscription": "none",
        "groups": ["Servants"],
    }
    versions = set()
    for resource in (balcony, chamber):  # including the one that made the change
        query, item = resource.expect_push("nurse@example.com")
        assert item == expected
        versions.add(query.get("ver"))
    assert len(versions) == 1 and None not in versions
    garden.assert_nothing()


def test_update_replaces_name_and_groups(make_client: MakeClient, pool: AccountPool) -> None:
    (account,) = pool.take(1)
    alice = login(make_client, account)
    alice.roster()
    alice.set_item("nurse@example.com", name="Nurse", groups=("Servants", "Capulets"))
    alice.expect_push("nurse@example.com")

    alice.set_item("nurse@example.com", name="Angelica", groups=("Friends",))
    _, item = alice.expect_push("nurse@example.com")
    assert item == {
        "jid": "nurse@example.com",
        "name": "Angelica",
        "subscription": "none",
        "groups": ["Friends"],
    }
    alice.set_item("nurse@example.com")  # no name and no group: both are cleared
    _, item = alice.expect_push("nurse@example.com")
    assert item == {"jid": "nurse@example.com", "subscription": "none"}
    assert alice.roster_items() == {"nurse@example.com": item}


def test_subscription_attributes_in_a_set_are_ignored(
    make_client: MakeClient, pool: AccountPool
) -> None:
    """§2.1.2.5: only 'remove' counts; a client cannot grant itself a subscription."""
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    bob = online(make_client, bob_account)
    for value in ("both", "to", "from", "none"):
        error = roster_set(
            alice,
            f"<item jid='{bob.bare}' subscription='{value}' ask='subscribe' approved='true'/>",
        )
        assert error == (None, None)
        _, item = alice.expect_push(bob.bare)
        assert item == {"jid": bob.bare, "subscription": "none"}
    # Nothing was asked of bob, and bob does not see alice's presence.
    bob.assert_nothing()
    alice.send("<presence><status>here</status></presence>")
    bob.assert_nothing()


# -- remove ------------------------------------------------------------------------


def test_remove_cancels_both_subscriptions(make_client: MakeClient, pool: AccountPool) -> None:
    """§2.5.2: removing a 'both' contact sends it unsubscribe and unsubscribed."""
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    bob = online(make_client, bob_account)
    subscribe(alice, bob)
    subscribe(bob, alice)
    settle(alice, bob)
    assert alice.roster_items()[bob.bare]["subscription"] == "both"

    result = alice.iq(
        f"<iq type='set'><query xmlns='{NS_ROSTER}'>"
        f"<item jid='{bob.bare}' subscription='remove'/></query></iq>"
    )
    assert result.get("type") == "result", to_text(result)
    _, item = alice.expect_push(bob.bare)
    assert item == {"jid": bob.bare, "subscription": "remove"}

    # The contact hears both from the user's bare JID, and, while still subscribed,
    # unavailable from the user's resource before the cancellation (§3.2.2).
    heard = [bob.expect(any_presence(alice.bare)) for _ in range(3)]
    assert [(p.get("type"), p.get("from"), p.get("to")) for p in heard] == [
        ("unsubscribe", alice.bare, bob.bare),
        ("unavailable", alice.jid, bob.bare),
        ("unsubscribed", alice.bare, bob.bare),
    ]
    _, item = bob.expect_push(alice.bare)
    assert item == {"jid": alice.bare, "subscription": "to"}
    _, item = bob.expect_push(alice.bare)
    assert item == {"jid": alice.bare, "subscription": "none"}
    # The unsubscribe ends alice's view of bob too (§3.3.3).
    alice.expect(presence(bob.jid, "unavailable"))

    # The contact keeps its item (only a roster set removes one), now with no subscription.
    assert bob.roster_items() == {alice.bare: {"jid": alice.bare, "subscription": "none"}}
    assert bob.bare not in alice.roster_items()
    # And presence no longer flows either way.
    settle(alice, bob)
    alice.send("<presence><show>away</show></presence>")
    bob.send("<presence><show>away</show></presence>")
    alice.expect(presence(alice.jid))
    bob.expect(presence(bob.jid))
    alice.assert_nothing()
    bob.assert_nothing()


def test_remove_refuses_a_pending_request(make_client: MakeClient, pool: AccountPool) -> None:
    """Removing a contact whose request is pending denies it (the contact's ask goes)."""
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    bob = online(make_client, bob_account)
    alice.set_item(bob.bare, name="Bob")
    alice.expect_push(bob.bare)
    bob.send(f"<presence to='{alice.bare}' type='subscribe'/>")
    alice.expect(presence(bob.bare, "subscribe"))
    bob.expect_push(alice.bare)

    assert roster_set(alice, f"<item jid='{bob.bare}' subscription='remove'/>") == (None, None)
    bob.expect(presence(alice.bare, "unsubscribed"))
    _, item = bob.expect_push(alice.bare)
    assert item == {"jid": alice.bare, "subscription": "none"}
    # The request is gone for good: no redelivery at alice's next login.
    again = online(make_client, (alice.bare, alice.password))
    again.assert_nothing(presence(bob.bare, "subscribe"))


def test_remove_unknown_item_is_item_not_found(make_client: MakeClient, pool: AccountPool) -> None:
    (account,) = pool.take(1)
    alice = login(make_client, account)
    error = roster_set(alice, "<item jid='nobody@localhost' subscription='remove'/>")
    assert error == ("cancel", "item-not-found")


# -- errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ("<item jid='a@localhost'/><item jid='b@localhost'/>", ("modify", "bad-request")),
        ("", ("modify", "bad-request")),
        ("<item jid='a@localhost'><group></group></item>", ("modify", "not-acceptable")),
        (
            "<item jid='a@localhost'><group>X</group><group>X</group></item>",
            ("modify", "bad-request"),
        ),
        ("<item jid='a b@localhost'/>", ("modify", "bad-request")),
        ("<item jid='@localhost'/>", ("modify", "bad-request")),
        ("<item/>", ("modify", "bad-request")),
    ],
    ids=[
        "two-items",
        "no-item",
        "empty-group",
        "duplicate-group",
        "bad-localpart",
        "empty-localpart",
        "no-jid",
    ],
)
def test_invalid_roster_set(
    make_client: MakeClient, pool: AccountPool, payload: str, expected: tuple[str, str]
) -> None:
    (account,) = pool.take(1)
    alice = login(make_client, account)
    alice.roster()
    assert roster_set(alice, payload) == expected
    alice.assert_nothing()  # no push: nothing changed
    assert alice.roster_items() == {}


@pytest.mark.parametrize("iq_type", ["get", "set"])
def test_roster_of_another_user_is_forbidden(
    make_client: MakeClient, pool: AccountPool, iq_type: str
) -> None:
    alice_account, bob_account = pool.take(2)
    alice = login(make_client, alice_account)
    item = "<item jid='x@localhost'/>" if iq_type == "set" else ""
    answer = alice.iq(
        f"<iq type='{iq_type}' to='{bob_account[0]}'><query xmlns='{NS_ROSTER}'>{item}</query></iq>"
    )
    assert answer.get("type") == "error", to_text(answer)
    assert stanza_error(answer) == ("auth", "forbidden")
    assert answer.get("from") == bob_account[0]


def test_roster_to_own_bare_jid_is_own_roster(make_client: MakeClient, pool: AccountPool) -> None:
    (account,) = pool.take(1)
    alice = login(make_client, account)
    alice.set_item("x@localhost")
    answer = alice.iq(f"<iq type='get' to='{alice.bare}'><query xmlns='{NS_ROSTER}'/></iq>")
    assert answer.get("type") == "result", to_text(answer)
    assert [i.get("jid") for i in answer.find(ROSTER_QUERY)] == ["x@localhost"]


def test_roster_size_limit_is_not_allowed(
    make_server: Callable[..., ServerProcess], make_client: MakeClient
) -> None:
    small = make_server(limits={"roster_size": 2})
    (account,) = AccountPool(small, batch=1).take(1)
    alice = login(make_client, account, target=small)
    alice.set_item("a@localhost")
    alice.set_item("b@localhost")
    assert roster_set(alice, "<item jid='c@localhost'/>") == ("cancel", "not-allowed")
    # Updating an item that is already there is still fine.
    assert roster_set(alice, "<item jid='a@localhost' name='A'/>") == (None, None)
    assert sorted(alice.roster_items()) == ["a@localhost", "b@localhost"]


def test_name_and_group_length_limits_are_not_acceptable(
    make_client: MakeClient, pool: AccountPool
) -> None:
    """RFC 6121 §2.3.3: limits.roster_text_length (1023 bytes of UTF-8 by default)."""
    (account,) = pool.take(1)
    alice = login(make_client, account)
    longest = "ü" * 511 + "x"  # 1023 bytes
    too_long = longest + "y"
    assert roster_set(alice, f"<item jid='a@localhost' name='{too_long}'/>") == (
        "modify",
        "not-acceptable",
    )
    group = f"<item jid='a@localhost'><group>ok</group><group>{too_long}</group></item>"
    assert roster_set(alice, group) == ("modify", "not-acceptable")
    assert alice.roster_items() == {}  # nothing of either was stored
    fits = f"<item jid='a@localhost' name='{longest}'><group>{longest}</group></item>"
    assert roster_set(alice, fits) == (None, None)
    assert alice.roster_items()["a@localhost"]["name"] == longest


# -- versioning (§2.6) ---------------------------------------------------------------


def test_versioning_current_ver_gets_empty_result_then_pushes(
    make_client: MakeClient, pool: AccountPool
) -> None:
    (account,) = pool.take(1)
    alice = login(make_client, account)
    alice.set_item("a@localhost")
    ver = alice.roster().find(ROSTER_QUERY).get("ver")

    again = login(make_client, account)
    result = again.roster(ver=ver)
    assert list(result) == [], "up to date: an empty result, no query (§2.6.3)"
    # The roster is now interesting to this resource: changes arrive as pushes.
    alice.set_item("b@localhost", name="B")
    query, item = again.expect_push("b@localhost")
    assert item == {"jid": "b@localhost", "name": "B", "subscription": "none"}
    assert query.get("ver") not in (None, ver)
    # Another login with the push's version is up to date as well.
    third = login(make_client, account)
    assert list(third.roster(ver=query.get("ver"))) == []


def test_versioning_stale_ver_gets_full_roster(make_client: MakeClient, pool: AccountPool) -> None:
    (account,) = pool.take(1)
    alice = login(make_client, account)
    alice.set_item("a@localhost")
    stale = alice.roster().find(ROSTER_QUERY).get("ver")
    alice.set_item("b@localhost")
    current = alice.roster().find(ROSTER_QUERY).get("ver")
    assert current != stale

    for ver in (stale, "", "not-a-version"):
        query = login(make_client, account).roster(ver=ver).find(ROSTER_QUERY)
        assert query is not None
        assert query.get("ver") == current
        assert sorted(item_view(i)["jid"] for i in query.findall(ROSTER_ITEM)) == [
            "a@localhost",
            "b@localhost",
        ]


def test_roster_ver_feature_advertised(make_client: MakeClient, pool: AccountPool) -> None:
    (account,) = pool.take(1)
    alice = login(make_client, account)
    features = alice.client.features
    assert features is not None
    assert features.find("{urn:xmpp:features:rosterver}ver") is not None, to_text(features)
