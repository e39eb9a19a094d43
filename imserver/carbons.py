"""XEP-0280 message carbons: which messages are copied, and who has them on.

The rule lives in the core because more than the carbons plugin needs it:
stream management (plugins/sm.py) asks whether a resource already holds a
copy of a message before delivering it again.
"""

from __future__ import annotations

from twisted.words.xish import domish

from imserver.archive import NS_HINTS

NS_CARBONS = "urn:xmpp:carbons:2"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
#: Key in Session.extra: set while the resource has carbons enabled.
ENABLED = "carbons"


def eligible(stanza: domish.Element, inbound: bool) -> bool:
    """Whether a message is copied (XEP-0280 §6 and §9, XEP-0334 §4).

    Chat messages, and normal ones with a body. An error comes back to a
    resource of ours only from a bare JID when it answers a copied chat
    (the sender's server cannot know which resource sent the original), so
    those are copied too. Private (§9), <no-copy/> hints, and private messages
    from a MUC room (§6: never from a MUC) are not.
    """
    type_ = stanza.getAttribute("type") or "normal"
    has_body = False
    for child in stanza.elements():
        uri, name = child.uri, child.name
        if (uri == NS_CARBONS and name in ("private", "sent", "received")) or (
            uri == NS_HINTS and name == "no-copy"
        ):
            return False
        if inbound and uri == NS_MUC_USER and name == "x":
            return False
        if uri == "jabber:client" and name == "body":
            has_body = True
    if type_ == "chat":
        return True
    if type_ == "normal":
        return has_body
    if type_ == "error":
        return inbound and "/" not in (stanza.getAttribute("from") or "")
    return False
