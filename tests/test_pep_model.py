"""PEP's pure rules (imserver.pubsub) in memory, and its store tables on a real SQLite file."""

from __future__ import annotations

import pytest
from test_storage import HOST, StoreTestCase
from twisted.internet import defer
from twisted.words.protocols.jabber.error import StanzaError
from tx_xmpp.data_form import Field, Form
from tx_xmpp.pubsub import NS_PUBSUB_PUBLISH_OPTIONS

from imserver.credentials import make_credentials
from imserver.pubsub import (
    CONTACT,
    OWNER,
    STRANGER,
    Item,
    Limits,
    NodeConfig,
    Service,
    access_error,
    may_access,
)


def options(**values: str) -> Form:
    form = Form("submit", formNamespace=NS_PUBSUB_PUBLISH_OPTIONS)
    for var, value in values.items():
        form.addField(Field("text-single", f"pubsub#{var}", value=value))
    return form


def item(item_id: str, size: int = 10) -> Item:
    return Item(item_id, "x" * size)


def conditions(error: StanzaError) -> tuple[str, str | None]:
    app = error.appCondition.name if error.appCondition is not None else None
    return error.condition, app


# -- configuration -----------------------------------------------------------------


def test_defaults_follow_xep_0163() -> None:
    config = NodeConfig()
    assert config.values() == {
        "pubsub#access_model": "presence",
        "pubsub#max_items": "1",
        "pubsub#persist_items": "true",
        "pubsub#send_last_published_item": "on_sub_and_presence",
    }
    assert NodeConfig.from_json(config.to_json()) == config


def test_form_updates_and_max() -> None:
    config = NodeConfig().updated(options(access_model="open", max_items="max"), Limits())
    assert (config.access_model, config.max_items) == ("open", None)
    assert NodeConfig.from_json(config.to_json()) == config
    form = config.to_form().toElement()
    assert form.uri == "jabber:x:data"


@pytest.mark.parametrize(
    "var, value, app",
    [
        ("access_model", "authorize", "unsupported-access-model"),
        ("max_items", "0", None),
        ("max_items", "many", None),
        ("max_items", "1001", None),
        ("persist_items", "maybe", None),
        ("send_last_published_item", "sometimes", None),
    ],
)
def test_unacceptable_values(var: str, value: str, app: str | None) -> None:
    with pytest.raises(StanzaError) as raised:
        NodeConfig().updated(options(**{var: value}), Limits())
    assert conditions(raised.value) == ("not-acceptable", app)


def test_preconditions() -> None:
    config = NodeConfig(access_model="open", max_items=None)
    assert config.meets(None)
    assert config.meets(options(access_model="open", max_items="max"))
    assert config.meets(options(persist_items="1"))  # booleans compare by meaning
    assert config.meets(options(**{"unknown_field": "x"}))  # unknown fields are ignored
    assert not config.meets(options(access_model="presence"))
    assert not config.meets(options(max_items="5"))


def test_access_models() -> None:
    table = {
        (model, relation): may_access(model, relation)
        for model in ("open", "presence", "whitelist")
        for relation in (OWNER, CONTACT, STRANGER)
    }
    assert table == {
        ("open", OWNER): True,
        ("open", CONTACT): True,
        ("open", STRANGER): True,
        ("presence", OWNER): True,
        ("presence", CONTACT): True,
        ("presence", STRANGER): False,
        ("whitelist", OWNER): True,
        ("whitelist", CONTACT): False,
        ("whitelist", STRANGER): False,
    }
    assert conditions(access_error("presence")) == (
        "not-authorized",
        "presence-subscription-required",
    )
    assert conditions(access_error("whitelist")) == ("not-allowed", "closed-node")


# -- one account's service ---------------------------------------------------------------


def test_publish_creates_trims_and_replaces() -> None:
    service = Service(Limits())
    first = service.publish("n", item("a"), options(max_items="2"))
    assert first.created and first.node.config.max_items == 2
    service.publish("n", item("b"), None)
    third = service.publish("n", item("c"), None)
    assert third.dropped == ["a"] and not third.created
    assert [i.id for i in service.nodes["n"].items] == ["b", "c"]
    again = service.publish("n", item("b"), None)  # a known id: replaced, now the newest
    assert again.dropped == []
    assert [i.id for i in service.nodes["n"].items] == ["c", "b"]
    assert [i.id for i in service.items("n", None, 1)] == ["b"]
    assert [i.id for i in service.items("n", ["c", "zz"], None)] == ["c"]
    with pytest.raises(StanzaError) as raised:
        service.publish("n", item("d"), options(max_items="3"))
    assert conditions(raised.value) == ("conflict", "precondition-not-met")


def test_quotas() -> None:
    service = Service(Limits(max_nodes=2, max_items=3, max_bytes=100, max_item_bytes=60))
    with pytest.raises(StanzaError) as raised:
        service.publish("a", item("big", 61), None)
    assert conditions(raised.value) == ("not-acceptable", "payload-too-big")
    assert "a" not in service.nodes  # a refused publish creates nothing
    service.publish("a", item("1", 50), options(max_items="max"))
    service.publish("b", item("1"), None)
    with pytest.raises(StanzaError) as raised:
        service.publish("c", item("1"), None)
    assert conditions(raised.value) == ("resource-constraint", "max-nodes-exceeded")
    with pytest.raises(StanzaError) as raised:
        service.publish("a", item("2", 50), None)
    assert conditions(raised.value) == ("resource-constraint", None)  # bytes
    service.publish("a", item("1", 45), None)  # replacing frees its own bytes first
    service.publish("a", item("2"), None)
    with pytest.raises(StanzaError) as raised:
        service.publish("a", item("3"), None)
    assert conditions(raised.value) == ("resource-constraint", "max-items-exceeded")
    service.publish("b", item("2"), None)  # max_items 1 on b: the old one goes, count stays


def test_configure_retract_purge_delete() -> None:
    service = Service(Limits())
    for name in "abcd":
        service.publish("n", item(name), options(max_items="max"))
    node, dropped = service.configure("n", options(max_items="2"))
    assert dropped == ["a", "b"] and [i.id for i in node.items] == ["c", "d"]
    with pytest.raises(StanzaError) as raised:
        service.retract("n", ["zz"])
    assert raised.value.condition == "item-not-found"
    assert [i.id for i in service.retract("n", ["c"]).items] == ["d"]
    assert service.purge("n").items == []
    service.delete("n")
    with pytest.raises(StanzaError):
        service.node("n")


# -- the store ----------------------------------------------------------------------------


class PersonalStoreTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_pep_round_trip(self):
        store = yield self.open()
        yield store.create_user("alice", HOST, make_credentials("pw"))
        config = NodeConfig(max_items=None).to_json()
        yield store.put_pep_item("alice", HOST, "n", config, "a", "<a xmlns='x'/>", [])
        yield store.put_pep_item("alice", HOST, "n", None, "b", "<b xmlns='x'/>", [])
        yield store.put_pep_item("alice", HOST, "n", None, "a", "<a2 xmlns='x'/>", [])
        loaded = yield store.load_pep("alice", HOST)
        self.assertEqual(
            loaded, {"n": (config, [("b", "<b xmlns='x'/>"), ("a", "<a2 xmlns='x'/>")])}
        )
        yield store.put_pep_item("alice", HOST, "n", None, "c", "<c xmlns='x'/>", ["b"])
        yield store.save_pep_node("alice", HOST, "n", NodeConfig().to_json(), ["a"])
        loaded = yield store.load_pep("alice", HOST)
        self.assertEqual(loaded, {"n": (NodeConfig().to_json(), [("c", "<c xmlns='x'/>")])})
        yield store.delete_pep_items("alice", HOST, "n", None)
        self.assertEqual((yield store.load_pep("alice", HOST))["n"][1], [])
        yield store.delete_pep_node("alice", HOST, "n")
        self.assertEqual((yield store.load_pep("alice", HOST)), {})

    @defer.inlineCallbacks
    def test_documents_and_user_deletion(self):
        store = yield self.open()
        yield store.create_user("alice", HOST, make_credentials("pw"))
        self.assertIsNone((yield store.get_document("alice", HOST, "vcard-temp")))
        yield store.put_document("alice", HOST, "vcard-temp", "<vCard xmlns='vcard-temp'/>")
        yield store.put_pep_item("alice", HOST, "n", "{}", "a", "<a xmlns='x'/>", [])
        self.assertEqual(
            (yield store.get_document("alice", HOST, "vcard-temp")), "<vCard xmlns='vcard-temp'/>"
        )
        yield store.delete_user("alice", HOST)
        yield store.create_user("alice", HOST, make_credentials("pw"))
        self.assertIsNone((yield store.get_document("alice", HOST, "vcard-temp")))
        self.assertEqual((yield store.load_pep("alice", HOST)), {})
