"""The hot-path serializer against domish, the reference, on the same trees."""

from __future__ import annotations

import sys

import pytest
from twisted.words.xish import domish

from imserver.serialize import stanza_bytes
from imserver.stream.parser import parse_stanza

STANZAS = [
    "<message to='b@localhost' type='chat' id='1'><body>hi</body></message>",
    "<message to='b@x' xml:lang='de'><body xml:lang='en'>a &amp; b &lt;c&gt; 'q' \"d\"</body>"
    "<thread parent='p'>t1</thread><subject>s</subject></message>",
    "<message to='b@x' title='it&apos;s &quot;x&quot; &amp; &lt;y&gt;'/>",
    "<iq type='get' id='r'><query xmlns='jabber:iq:roster' ver='3'/></iq>",
    "<presence><show>away</show><status>out</status><priority>-1</priority>"
    "<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='v'/></presence>",
    "<message><x xmlns='urn:a'><y><z xmlns='urn:b'><w/></z></y><v/></x>"
    "<body>after</body></message>",
    "<message><body>mixed <b>bold</b> text ☃ and 𝄞</body></message>",
    "<message><html xmlns='http://jabber.org/protocol/xhtml-im'>"
    "<body xmlns='http://www.w3.org/1999/xhtml'><p>x</p></body></html></message>",
    # Prefixed elements and namespaced attributes take domish's general path.
    "<message><foo:bar xmlns:foo='urn:foo'><foo:baz/></foo:bar></message>",
    "<message><x xmlns='urn:a' xmlns:q='urn:q' q:attr='1'/></message>",
]


def canonical(element: domish.Element):
    """A comparable form of a tree: names, namespaces, attributes, merged text."""
    children = []
    for child in element.children:
        if isinstance(child, domish.Element):
            children.append(canonical(child))
        elif children and isinstance(children[-1], str):
            children[-1] += child
        else:
            children.append(str(child))
    attributes = sorted(element.attributes.items(), key=repr)
    return (element.uri, element.name, attributes, children)


@pytest.mark.parametrize("xml", STANZAS)
def test_same_tree_as_domish(xml):
    stanza = parse_stanza(xml)
    ours = stanza_bytes(stanza).decode()
    reference = stanza.toXml(defaultUri="jabber:client")
    assert canonical(parse_stanza(ours)) == canonical(parse_stanza(reference))
    assert canonical(parse_stanza(ours)) == canonical(stanza)


def test_common_stanza_is_byte_identical_to_domish():
    stanza = parse_stanza(STANZAS[0])
    assert stanza_bytes(stanza) == stanza.toXml(defaultUri="jabber:client").encode()


def test_server_built_elements_inherit_the_stream_namespace():
    iq = domish.Element((None, "iq"))
    iq["type"] = "result"
    query = iq.addElement(("jabber:iq:roster", "query"))
    query.addElement("item")["jid"] = "a@b"
    assert stanza_bytes(iq) == (
        b"<iq type='result'><query xmlns='jabber:iq:roster'><item jid='a@b'/></query></iq>"
    )


def test_serialized_xml_children_are_written_verbatim():
    message = domish.Element((None, "message"))
    message.addRawXml("<body>raw &amp; ready</body>")
    assert stanza_bytes(message) == b"<message><body>raw &amp; ready</body></message>"


def test_deep_tree_does_not_recurse():
    depth = sys.getrecursionlimit() * 2
    root = element = domish.Element(("jabber:client", "message"))
    for _ in range(depth):
        element = element.addElement("x")
    data = stanza_bytes(root)
    assert data.count(b"<x>") == depth - 1 and data.endswith(b"</x>" * (depth - 1) + b"</message>")
