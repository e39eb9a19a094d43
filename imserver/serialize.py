"""Stanza serialisation for the hot path: every delivered stanza crosses it once.

domish's serializer is general (prefixes, scoped namespaces) and recursive;
nearly every stanza needs none of that, and profiling put it first among the
costs of routing a message. This one walks the tree with an explicit stack
(never recursing on client-controlled depth) and handles the common shape:
default namespaces only, plain attributes plus xml:lang. Anything else
(prefixed elements, other namespaced attributes) goes to domish, which stays
the reference: the tests compare both on the same trees.
"""

from __future__ import annotations

from twisted.words.xish import domish

NS_XML = "http://www.w3.org/XML/1998/namespace"
NS_CLIENT = "jabber:client"


def _text(value: str) -> str:
    # Most text needs no escaping, and the membership tests are far cheaper
    # than str.translate or a chain of replace calls.
    if "&" in value or "<" in value or ">" in value:
        return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return value


def escape_attribute(value: str) -> str:
    if "&" in value or "<" in value or ">" in value or "'" in value or '"' in value:
        return (
            value.replace("&", "&amp;")
            .replace("<", "&lt;")
            .replace(">", "&gt;")
            .replace("'", "&apos;")
            .replace('"', "&quot;")
        )
    return value


class _Unusual(Exception):
    """The tree needs domish's general serializer."""


def stanza_bytes(stanza: domish.Element, default_ns: str = NS_CLIENT) -> bytes:
    """UTF-8 bytes of a stanza for a stream whose default namespace is C{default_ns}."""
    try:
        return _serialize(stanza, default_ns).encode("utf-8")
    except _Unusual:
        return stanza.toXml(defaultUri=default_ns).encode("utf-8")


def _serialize(root: domish.Element, default_ns: str) -> str:
    out: list[str] = []
    write = out.append
    # Items are (element, inherited default namespace) or a closing tag string.
    stack: list = [(root, default_ns)]
    pop, push = stack.pop, stack.append
    while stack:
        item = pop()
        if item.__class__ is str:
            write(item)
            continue
        element, inherited = item
        if element.localPrefixes:
            raise _Unusual
        name = element.name
        write("<" + name)
        uri = element.uri
        if uri is not None and uri != inherited:
            write(" xmlns='" + escape_attribute(uri) + "'")
            inherited = uri
        for key, value in element.attributes.items():
            if key.__class__ is tuple:
                if key[0] != NS_XML:
                    raise _Unusual
                key = "xml:" + key[1]
            write(" " + key + "='" + escape_attribute(value) + "'")
        children = element.children
        if not children:
            write("/>")
            continue
        write(">")
        push("</" + name + ">")
        for child in reversed(children):
            if child.__class__ is str:
                push(_text(child))
            elif isinstance(child, domish.Element):
                push((child, inherited))
            elif isinstance(child, domish.SerializedXML):
                push(str(child))  # already XML: written as is
            else:
                push(_text(str(child)))
    return "".join(out)
