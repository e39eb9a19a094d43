"""XEP-0115 entity capabilities: the verification string, and what a session is interested in.

Pure functions over disco#info elements: the caps plugin computes C{ver} for
answers it gets from clients (to verify them) and for the server's own
disco#info (to advertise it); the PEP plugin reads a session's C{+notify}
interests from what the caps plugin recorded on it.
"""

from __future__ import annotations

import base64
import hashlib

from twisted.words.xish import domish
from tx_xmpp.data_form import NS_X_DATA
from tx_xmpp.disco import NS_DISCO_INFO

NS_CAPS = "http://jabber.org/protocol/caps"
#: The node the server names in its own caps (XEP-0115 §4: a URI identifying the software).
SERVER_NODE = "https://imserver.invalid/caps"
NOTIFY_SUFFIX = "+notify"
#: The IANA names XEP-0115 allows, mapped to hashlib's.
HASHES = {"sha-1": "sha1", "sha-224": "sha224", "sha-256": "sha256", "sha-384": "sha384",
          "sha-512": "sha512"}  # fmt: skip

#: Key of L{imserver.session.Session.extra} where the caps plugin keeps a session's features.
SESSION_KEY = "caps"
_XML_LANG = ("http://www.w3.org/XML/1998/namespace", "lang")


class InvalidCaps(ValueError):
    """A disco#info answer that XEP-0115 §5.4 says must not be trusted (duplicates, bad forms)."""


def verification_string(query: domish.Element) -> str:
    """The XEP-0115 §5.1 string S for a disco#info <query/> (before hashing).

    Raises L{InvalidCaps} for the cases §5.4 rejects: duplicate identities or
    features, and extension forms whose FORM_TYPE is missing-but-claimed,
    not hidden, or repeated.
    """
    identities, features, forms = [], [], []
    for child in query.elements():
        if child.uri == NS_DISCO_INFO and child.name == "identity":
            identities.append(
                "/".join(
                    (
                        child.getAttribute("category", ""),
                        child.getAttribute("type", ""),
                        child.getAttribute(_XML_LANG, ""),
                        child.getAttribute("name", ""),
                    )
                )
            )
        elif child.uri == NS_DISCO_INFO and child.name == "feature":
            features.append(child.getAttribute("var", ""))
        elif child.uri == NS_X_DATA and child.name == "x":
            forms.append(_form_string(child))
    if len(set(identities)) != len(identities):
        raise InvalidCaps("duplicate identity")
    if len(set(features)) != len(features):
        raise InvalidCaps("duplicate feature")
    forms = [f for f in forms if f is not None]
    form_types = [form_type for form_type, _ in forms]
    if len(set(form_types)) != len(form_types):
        raise InvalidCaps("two extension forms with one FORM_TYPE")
    parts = sorted(identities) + sorted(features)
    out = "".join(p + "<" for p in parts)
    for _, text in sorted(forms):
        out += text
    return out


def _form_string(element: domish.Element) -> tuple[str, str] | None:
    """(FORM_TYPE, its part of S) for an extension form; None for a form without FORM_TYPE.

    Read from the XML itself: the verification string needs the values exactly
    as sent, and tx-xmpp's Form turns FORM_TYPE into an attribute and coerces values.
    """
    fields: dict[str, tuple[str | None, list[str]]] = {}
    for field_ in element.elements(NS_X_DATA, "field"):
        var = field_.getAttribute("var")
        if var is None:
            continue
        values = [str(v) for v in field_.elements(NS_X_DATA, "value")]
        fields[var] = (field_.getAttribute("type"), values)
    form_type = fields.pop("FORM_TYPE", None)
    if form_type is None:
        return None  # §5.4 3.6: ignored
    type_, values = form_type
    if type_ != "hidden":
        raise InvalidCaps("FORM_TYPE is not hidden")
    if len(values) != 1:
        raise InvalidCaps("FORM_TYPE must have one value")
    text = values[0] + "<"
    for var in sorted(fields):
        text += var + "<" + "".join(v + "<" for v in sorted(fields[var][1]))
    return values[0], text


def ver(query: domish.Element, algorithm: str = "sha-1") -> str:
    """The XEP-0115 verification string of a disco#info <query/>: base64 of the hash of S."""
    digest = hashlib.new(HASHES[algorithm], verification_string(query).encode("utf-8")).digest()
    return base64.b64encode(digest).decode("ascii")


def features_of(query: domish.Element) -> frozenset[str]:
    return frozenset(
        child.getAttribute("var", "")
        for child in query.elements(NS_DISCO_INFO, "feature")
        if child.getAttribute("var")
    )


def notify_nodes(features: frozenset[str]) -> frozenset[str]:
    """The PEP nodes a client wants notifications for: its "NODE+notify" features."""
    return frozenset(f[: -len(NOTIFY_SUFFIX)] for f in features if f.endswith(NOTIFY_SUFFIX))


def session_interests(session) -> frozenset[str]:
    """The nodes C{session} asked for through caps (empty until its caps are known)."""
    return session.extra.get(SESSION_KEY, frozenset())


def caps_element(query: domish.Element, node: str = SERVER_NODE) -> domish.Element:
    """A <c/> naming C{query}'s verification string (for stream features or presence)."""
    c = domish.Element((NS_CAPS, "c"))
    c["hash"] = "sha-1"
    c["node"] = node
    c["ver"] = ver(query)
    return c
