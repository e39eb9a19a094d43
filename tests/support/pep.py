"""Helpers for the PEP, caps, vCard and private-storage wire tests.

The caps hash here is written from XEP-0115 §5.2's worked example, apart
from the server's own implementation, so the two check each other.
"""

from __future__ import annotations

import base64
import hashlib
import xml.etree.ElementTree as ET
from xml.sax.saxutils import quoteattr

from support.client import IQ, MESSAGE, clark, to_text
from support.im import User

NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_PUBSUB_OWNER = NS_PUBSUB + "#owner"
NS_EVENT = NS_PUBSUB + "#event"
NS_ERRORS = NS_PUBSUB + "#errors"
NS_CAPS = "http://jabber.org/protocol/caps"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
CLIENT_NODE = "https://imserver.test/client"
IDENTITY = ("client", "pc", "", "pep-tests")


def caps_ver(features: list[str], identity: tuple[str, str, str, str] = IDENTITY) -> str:
    """XEP-0115 §5.1 for one identity and no forms: sha-1, base64."""
    s = "/".join(identity) + "<" + "".join(f + "<" for f in sorted(features))
    return base64.b64encode(hashlib.sha1(s.encode("utf-8")).digest()).decode()


def disco_query(features: list[str], node: str = "", identity=IDENTITY) -> str:
    node_attr = f" node={quoteattr(node)}" if node else ""
    inner = (
        f"<identity category='{identity[0]}' type='{identity[1]}' name='{identity[3]}'/>"
        + "".join(f"<feature var={quoteattr(f)}/>" for f in features)
    )
    return f"<query xmlns='{NS_DISCO_INFO}'{node_attr}>{inner}</query>"


def interested_in(*nodes: str) -> list[str]:
    return [NS_DISCO_INFO, NS_CAPS, *(f"{n}+notify" for n in nodes)]


def is_caps_query(e: ET.Element) -> bool:
    return (
        e.tag == IQ and e.get("type") == "get" and e.find(clark(NS_DISCO_INFO, "query")) is not None
    )


def announce_caps(
    user: User, features: list[str], ver: str | None = None, answer: bool = True
) -> ET.Element | None:
    """Send available presence with caps; answer the server's disco#info query when it comes.

    Returns the query (None when C{answer} is False, or none was asked within the timeout).
    """
    ver = ver or caps_ver(features)
    user.send(
        f"<presence><c xmlns='{NS_CAPS}' hash='sha-1' node='{CLIENT_NODE}' ver='{ver}'/></presence>"
    )
    user.expect(lambda e: e.tag.endswith("presence") and e.get("from") == user.jid)
    if not answer:
        return None
    query = user.expect(is_caps_query)
    answer_caps_query(user, query, features)
    user.sync()  # the server has read the answer: the caps are known from here on
    return query


def answer_caps_query(user: User, query: ET.Element, features: list[str]) -> None:
    node = query.find(clark(NS_DISCO_INFO, "query")).get("node", "")
    user.send(
        f"<iq type='result' id={quoteattr(query.get('id'))} to={quoteattr(query.get('from'))}>"
        f"{disco_query(features, node)}</iq>"
    )


def publish(user: User, node: str, payload: str, item_id: str | None = None, options=None):
    """Publish one item; C{options} {var: value} become publish-options. Returns the iq answer."""
    id_attr = f" id={quoteattr(item_id)}" if item_id else ""
    form = ""
    if options:
        fields = "".join(
            f"<field var={quoteattr(var)}><value>{value}</value></field>"
            for var, value in options.items()
        )
        form = (
            "<publish-options><x xmlns='jabber:x:data' type='submit'>"
            "<field var='FORM_TYPE' type='hidden'>"
            f"<value>{NS_PUBSUB}#publish-options</value></field>{fields}</x></publish-options>"
        )
    return user.iq(
        f"<iq type='set'><pubsub xmlns='{NS_PUBSUB}'><publish node={quoteattr(node)}>"
        f"<item{id_attr}>{payload}</item></publish>{form}</pubsub></iq>"
    )


def items(user: User, owner: str, node: str, extra: str = "", attrs: str = "") -> ET.Element:
    return user.iq(
        f"<iq type='get' to='{owner}'><pubsub xmlns='{NS_PUBSUB}'>"
        f"<items node={quoteattr(node)}{attrs}>{extra}</items></pubsub></iq>"
    )


def item_ids(answer: ET.Element) -> list[str]:
    assert answer.get("type") == "result", to_text(answer)
    found = answer.find(f"{clark(NS_PUBSUB, 'pubsub')}/{clark(NS_PUBSUB, 'items')}")
    return [i.get("id") for i in found.findall(clark(NS_PUBSUB, "item"))]


def owner_iq(user: User, verb_xml: str, type_: str = "set") -> ET.Element:
    return user.iq(f"<iq type='{type_}'><pubsub xmlns='{NS_PUBSUB_OWNER}'>{verb_xml}</pubsub></iq>")


def error_of(answer: ET.Element) -> tuple[str | None, str | None]:
    """(defined condition, pubsub#errors condition) of an error iq."""
    assert answer.get("type") == "error", to_text(answer)
    error = answer.find(clark("jabber:client", "error"))
    condition = app = None
    for child in error:
        namespace, _, local = child.tag[1:].partition("}")
        if namespace == NS_STANZAS and local != "text":
            condition = local
        elif namespace == NS_ERRORS:
            app = local
    return condition, app


def event_from(owner: str, node: str):
    """A PEP notification from C{owner} about C{node}."""

    def match(e: ET.Element) -> bool:
        if e.tag != MESSAGE or e.get("from") != owner:
            return False
        event = e.find(clark(NS_EVENT, "event"))
        return event is not None and any(c.get("node") == node for c in event)

    match.__name__ = f"event(from={owner!r}, node={node!r})"
    return match


def event_item_ids(message: ET.Element) -> list[str]:
    items_ = message.find(f"{clark(NS_EVENT, 'event')}/{clark(NS_EVENT, 'items')}")
    return [i.get("id") for i in items_.findall(clark(NS_EVENT, "item"))]


def config_values(answer: ET.Element) -> dict[str, str | None]:
    """The field values of the data form in an answer (a node configuration)."""
    assert answer.get("type") == "result", to_text(answer)
    return {
        f.get("var"): f.findtext("{jabber:x:data}value")
        for f in answer.iter("{jabber:x:data}field")
    }
