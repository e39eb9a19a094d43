"""Self-contained elements for WebSocket and BOSH (imserver.web.framing), in memory."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from twisted.words.protocols.jabber.error import StreamError
from twisted.words.xish import domish

from imserver.serialize import stanza_bytes
from imserver.web.framing import element_bytes, namespaced


def test_a_stanza_gets_jabber_client_declared() -> None:
    assert namespaced(b"<iq/>") == b"<iq xmlns='jabber:client'/>"
    assert namespaced(b"<message to='a@b'>x</message>") == (
        b"<message xmlns='jabber:client' to='a@b'>x</message>"
    )
    assert (
        namespaced(b"<presence>\n</presence>") == b"<presence xmlns='jabber:client'>\n</presence>"
    )


def test_prebuilt_stream_features_get_the_stream_prefix_declared() -> None:
    data = b"<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>"
    parsed = ET.fromstring(namespaced(data))
    assert parsed.tag == "{http://etherx.jabber.org/streams}features"


def test_an_element_with_its_own_namespace_is_left_alone() -> None:
    data = b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
    assert namespaced(data) is data


def test_a_broadcast_is_rewritten_once_for_every_recipient() -> None:
    """The router hands each session the same bytes object: one rewrite, reused."""
    data = stanza_bytes(_message())
    first = namespaced(data)
    assert namespaced(data) is first
    assert namespaced(bytes(data)) == first  # an equal but new object is rewritten afresh


def test_elements_parse_on_their_own_with_the_right_names() -> None:
    for element, tag in [
        (_message(), "{jabber:client}message"),
        (StreamError("conflict").getElement(), "{http://etherx.jabber.org/streams}error"),
        (_features(), "{http://etherx.jabber.org/streams}features"),
    ]:
        parsed = ET.fromstring(element_bytes(element))
        assert parsed.tag == tag
    body = ET.fromstring(element_bytes(_message())).find("{jabber:client}body")
    assert body is not None and body.text == "a < b & c"


def _message() -> domish.Element:
    message = domish.Element((None, "message"))
    message["to"] = "juliet@example.com"
    message.addElement("body", content="a < b & c")
    return message


def _features() -> domish.Element:
    features = domish.Element(("http://etherx.jabber.org/streams", "features"))
    features.addElement(("urn:ietf:params:xml:ns:xmpp-bind", "bind"))
    return features
