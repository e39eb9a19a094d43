"""The XEP-0060 subset behind PEP (XEP-0163): one account's nodes, items and rules.

Pure logic, no Twisted I/O: a L{Service} is the in-memory picture of one
account's nodes that the PEP plugin keeps cached and writes through to the
store. Everything a request may be refused for is decided here (access
models, publish-options preconditions, node configuration, the per-account
quotas), so it is unit-tested without sockets; the plugin only speaks the
wire forms (tx-xmpp's pubsub and data_form) and sends notifications.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish
from tx_xmpp.data_form import Field, Form
from tx_xmpp.pubsub import NS_PUBSUB_ERRORS, NS_PUBSUB_NODE_CONFIG

ACCESS_MODELS = ("open", "presence", "whitelist")
SEND_LAST = ("never", "on_sub", "on_sub_and_presence")
#: The node configuration fields we implement; others in a form are ignored, as Prosody does.
CONFIG_FIELDS = (
    "pubsub#access_model",
    "pubsub#max_items",
    "pubsub#persist_items",
    "pubsub#send_last_published_item",
)
_TRUE = ("1", "true")
_FALSE = ("0", "false")


def pubsub_error(condition: str, app: str | None = None, text: str | None = None) -> StanzaError:
    """A stanza error carrying a XEP-0060 application condition (pubsub#errors)."""
    error = StanzaError(condition, text=text)
    if app is not None:
        error.appCondition = domish.Element((NS_PUBSUB_ERRORS, app))
    return error


@dataclass(frozen=True)
class Limits:
    """Quotas per account: a full one answers resource-constraint, a big item not-acceptable."""

    max_nodes: int = 64
    max_items: int = 1000
    max_bytes: int = 4 * 1024 * 1024
    max_item_bytes: int = 256 * 1024


@dataclass(frozen=True)
class NodeConfig:
    """A node's configuration; C{max_items} None stands for "max" (the account quota)."""

    access_model: str = "presence"
    max_items: int | None = 1
    persist_items: bool = True
    send_last_published_item: str = "on_sub_and_presence"

    # -- data forms ------------------------------------------------------------

    def values(self) -> dict[str, str]:
        """Each field's wire value (what a precondition compares against)."""
        return {
            "pubsub#access_model": self.access_model,
            "pubsub#max_items": "max" if self.max_items is None else str(self.max_items),
            "pubsub#persist_items": "true" if self.persist_items else "false",
            "pubsub#send_last_published_item": self.send_last_published_item,
        }

    def to_form(self) -> Form:
        """The owner's configuration form (XEP-0060 §8.2)."""
        form = Form("form", formNamespace=NS_PUBSUB_NODE_CONFIG)
        form.addField(
            Field(
                "list-single",
                "pubsub#access_model",
                value=self.access_model,
                options={m: None for m in ACCESS_MODELS},
            )
        )
        form.addField(
            Field("text-single", "pubsub#max_items", value=self.values()["pubsub#max_items"])
        )
        form.addField(Field("boolean", "pubsub#persist_items", value=self.persist_items))
        form.addField(
            Field(
                "list-single",
                "pubsub#send_last_published_item",
                value=self.send_last_published_item,
                options={m: None for m in SEND_LAST},
            )
        )
        return form

    def updated(self, form: Form | None, limits: Limits) -> NodeConfig:
        """This configuration with a submitted form's known fields applied.

        A value we cannot honour is not-acceptable, never silently changed.
        """
        if form is None:
            return self
        changes: dict = {}
        for var in CONFIG_FIELDS:
            raw = _raw_value(form, var)
            if raw is None:
                continue
            changes[_attribute(var)] = _parse_value(var, raw, limits)
        return replace(self, **changes)

    def meets(self, form: Form | None) -> bool:
        """Whether every known publish-options field equals this configuration (§7.1.5)."""
        if form is None:
            return True
        mine = self.values()
        for var in CONFIG_FIELDS:
            raw = _raw_value(form, var)
            if raw is None:
                continue
            if var == "pubsub#persist_items":
                if raw.lower() not in _TRUE + _FALSE:
                    return False
                if (raw.lower() in _TRUE) != self.persist_items:
                    return False
            elif raw != mine[var]:
                return False
        return True

    # -- storage -------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(self.values(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> NodeConfig:
        return cls().updated(_form_of(json.loads(text)), Limits(max_items=2**31))


def _form_of(values: dict[str, str]) -> Form:
    form = Form("submit", formNamespace=NS_PUBSUB_NODE_CONFIG)
    for var, value in values.items():
        form.addField(Field("text-single", var, value=value))
    return form


def _attribute(var: str) -> str:
    return var.removeprefix("pubsub#")


def _raw_value(form: Form, var: str) -> str | None:
    field_ = form.fields.get(var)
    if field_ is None or not field_.values:
        return None
    value = field_.raw_values[0]
    return value if isinstance(value, str) else str(value)


def _parse_value(var: str, raw: str, limits: Limits):
    if var == "pubsub#access_model":
        if raw not in ACCESS_MODELS:
            raise pubsub_error("not-acceptable", "unsupported-access-model", text=raw)
        return raw
    if var == "pubsub#send_last_published_item":
        if raw not in SEND_LAST:
            raise pubsub_error("not-acceptable", text=f"{var} {raw!r} is not supported")
        return raw
    if var == "pubsub#persist_items":
        if raw.lower() not in _TRUE + _FALSE:
            raise pubsub_error("not-acceptable", text=f"{var} must be a boolean")
        return raw.lower() in _TRUE
    # pubsub#max_items
    if raw == "max":
        return None
    try:
        number = int(raw)
    except ValueError:
        raise pubsub_error("not-acceptable", text="max_items must be a number or 'max'") from None
    if not 1 <= number <= limits.max_items:
        raise pubsub_error(
            "not-acceptable", text=f"max_items must be between 1 and {limits.max_items}"
        )
    return number


# -- access ---------------------------------------------------------------------------

#: How a requester stands to the node's owner.
OWNER, CONTACT, STRANGER = "owner", "contact", "stranger"


def may_access(access_model: str, relation: str) -> bool:
    """Whether C{relation} may read items and get notifications under C{access_model}.

    C{CONTACT} is an entity with a presence subscription to the owner
    (subscription 'from' or 'both' in the owner's roster). Whitelists hold the
    owner only: we keep no member affiliations.
    """
    if relation == OWNER or access_model == "open":
        return True
    if access_model == "presence":
        return relation == CONTACT
    return False


def access_error(access_model: str) -> StanzaError:
    """XEP-0060 §6.5.9: why an entity may not read a node."""
    if access_model == "presence":
        return pubsub_error("not-authorized", "presence-subscription-required")
    return pubsub_error("not-allowed", "closed-node")


# -- one account's nodes ---------------------------------------------------------------


@dataclass
class Item:
    """One published item: its id, the payload as stored, and the payload element."""

    id: str
    xml: str
    payload: object = None  # a domish.Element, parsed once

    @property
    def size(self) -> int:
        return len(self.xml.encode("utf-8"))


@dataclass
class Node:
    name: str
    config: NodeConfig
    #: Oldest first; the last one is the node's "last published item".
    items: list[Item] = field(default_factory=list)

    def item(self, item_id: str) -> Item | None:
        return next((i for i in self.items if i.id == item_id), None)

    @property
    def last(self) -> Item | None:
        return self.items[-1] if self.items else None

    def select(self, ids: list[str] | None, max_items: int | None) -> list[Item]:
        """Items by id (those that exist), or the C{max_items} newest; oldest first."""
        if ids:
            return [i for i in self.items if i.id in ids]
        if max_items is not None:
            return self.items[-max_items:] if max_items > 0 else []
        return list(self.items)


@dataclass
class Published:
    """What a publish changed: for the store write and the notifications."""

    node: Node
    item: Item
    created: bool
    dropped: list[str]


class Service:
    """The nodes of one account, with its quotas (XEP-0163's virtual pubsub service)."""

    def __init__(self, limits: Limits, nodes: dict[str, Node] | None = None) -> None:
        self.limits = limits
        self.nodes: dict[str, Node] = nodes or {}

    @property
    def item_count(self) -> int:
        return sum(len(n.items) for n in self.nodes.values())

    @property
    def byte_count(self) -> int:
        return sum(i.size for n in self.nodes.values() for i in n.items)

    def node(self, name: str) -> Node:
        node = self.nodes.get(name)
        if node is None:
            raise StanzaError("item-not-found")
        return node

    def create(self, name: str, config: NodeConfig) -> Node:
        if name in self.nodes:
            raise StanzaError("conflict", text="the node exists")
        if len(self.nodes) >= self.limits.max_nodes:
            raise pubsub_error("resource-constraint", "max-nodes-exceeded")
        node = self.nodes[name] = Node(name, config)
        return node

    def publish(self, name: str, item: Item, options: Form | None) -> Published:
        """Add or replace C{item} on node C{name}, creating the node when missing (§7.1.5)."""
        if item.size > self.limits.max_item_bytes:
            raise pubsub_error(
                "not-acceptable",
                "payload-too-big",
                text=f"items are limited to {self.limits.max_item_bytes} bytes",
            )
        node = self.nodes.get(name)
        created = node is None
        if created:
            config = NodeConfig().updated(options, self.limits)
        else:
            if not node.config.meets(options):
                raise pubsub_error("conflict", "precondition-not-met")
            config = node.config
        items = [] if created else node.items
        replaced = next((i for i in items if i.id == item.id), None)
        kept = [i for i in items if i is not replaced]
        capacity = self.limits.max_items if config.max_items is None else config.max_items
        dropped = kept[: max(0, len(kept) + 1 - capacity)]
        kept = kept[len(dropped) :]
        removed = dropped + ([replaced] if replaced else [])
        if self.item_count - len(removed) + 1 > self.limits.max_items:
            raise pubsub_error(
                "resource-constraint", "max-items-exceeded", text="item quota reached"
            )
        if self.byte_count - sum(i.size for i in removed) + item.size > self.limits.max_bytes:
            raise pubsub_error("resource-constraint", text="storage quota reached")
        if created:
            node = self.create(name, config)
        node.items = [*kept, item]
        return Published(node, item, created, [i.id for i in dropped])

    def configure(self, name: str, form: Form) -> tuple[Node, list[str]]:
        """Apply an owner's configuration form; return the node and the items it trimmed."""
        node = self.node(name)
        node.config = node.config.updated(form, self.limits)
        capacity = node.config.max_items or self.limits.max_items
        dropped = node.items[: max(0, len(node.items) - capacity)]
        node.items = node.items[len(dropped) :]
        return node, [i.id for i in dropped]

    def retract(self, name: str, item_ids: list[str]) -> Node:
        node = self.node(name)
        missing = [i for i in item_ids if node.item(i) is None]
        if missing:
            raise StanzaError("item-not-found", text=f"no item {missing[0]!r}")
        node.items = [i for i in node.items if i.id not in item_ids]
        return node

    def purge(self, name: str) -> Node:
        node = self.node(name)
        node.items = []
        return node

    def delete(self, name: str) -> Node:
        node = self.node(name)
        del self.nodes[name]
        return node

    def items(self, name: str, ids: list[str] | None, max_items: int | None) -> list[Item]:
        return self.node(name).select(ids, max_items)
