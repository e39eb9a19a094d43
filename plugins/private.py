"""XEP-0049 private XML storage, with XEP-0048 bookmarks kept in PEP (XEP-0402, XEP-0411).

Any namespaced element may be stored for oneself and read back. Bookmarks
(<storage xmlns='storage:bookmarks'/>) are not stored here: with the pep
plugin loaded they live as one urn:xmpp:bookmarks:1 item per room, so a
legacy client's private-storage bookmarks and a modern client's PEP
bookmarks are the same list (XEP-0411). Legacy <url/> bookmarks have no
XEP-0402 form and are dropped, as XEP-0411 §4 allows.

Config ([plugin.private]): max_bytes per stored element (default 64 KiB;
larger is not-acceptable) and max_documents per account (default 100, counting
the vCard; more is resource-constraint).
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.plugin import IPlugin
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish
from tx_xmpp.data_form import Field, Form
from tx_xmpp.pubsub import NS_PUBSUB_PUBLISH_OPTIONS
from zope.interface import implementer

from imserver.interfaces import IFeature
from imserver.jid import InvalidFormat, parse_jid
from imserver.pep import new_item, payload_xml
from imserver.stream.parser import parse_stanza

NS_PRIVATE = "jabber:iq:private"
NS_BOOKMARKS_LEGACY = "storage:bookmarks"
NS_BOOKMARKS = "urn:xmpp:bookmarks:1"
#: XEP-0402 §3.3: the server keeps XEP-0049 bookmarks and PEP bookmarks in sync.
NS_BOOKMARKS_COMPAT = NS_BOOKMARKS + "#compat"
_TRUE = ("1", "true")


@implementer(IPlugin, IFeature)
class Private:
    name = "private"
    disco_features = (NS_PRIVATE,)

    def attach(self, server) -> None:
        self.server = server
        self.store = server.store
        options = server.options("private")
        self.max_bytes = options.positive_int("max_bytes", 64 * 1024)
        self.max_documents = options.positive_int("max_documents", 100)
        on = server.dispatcher.on
        on(("iq", "get", NS_PRIVATE, "self"), self.get)
        on(("iq", "set", NS_PRIVATE, "self"), self.set)
        for type_ in ("get", "set"):
            on(("iq", type_, NS_PRIVATE, "bare"), _forbidden)
        if server.pep is not None:
            server.account_features.add(NS_BOOKMARKS_COMPAT)

    @defer.inlineCallbacks
    def get(self, event):
        wanted = _only_child(event)
        owner = event.to.userhostJID()
        if wanted.uri == NS_BOOKMARKS_LEGACY and self.server.pep is not None:
            answer = yield self._legacy_bookmarks(owner)
        else:
            xml = yield self.store.get_document(owner.user, owner.host, _key(wanted))
            answer = parse_stanza(xml) if xml else domish.Element((wanted.uri, wanted.name))
        query = domish.Element((NS_PRIVATE, "query"))
        query.addChild(answer)
        return event.answer(query)

    @defer.inlineCallbacks
    def set(self, event):
        element = _only_child(event)
        owner = event.to.userhostJID()
        xml = payload_xml(element)
        if len(xml.encode("utf-8")) > self.max_bytes:
            raise StanzaError("not-acceptable", text=f"limited to {self.max_bytes} bytes")
        if element.uri == NS_BOOKMARKS_LEGACY and self.server.pep is not None:
            yield self._store_legacy_bookmarks(owner, element)
        else:
            stored = yield self.store.put_document(
                owner.user, owner.host, _key(element), xml, self.max_documents
            )
            if not stored:
                raise StanzaError(
                    "resource-constraint", text=f"at most {self.max_documents} stored elements"
                )
        return event.answer()

    # -- bookmarks (XEP-0411) -------------------------------------------------------------

    @defer.inlineCallbacks
    def _legacy_bookmarks(self, owner):
        service = yield self.server.pep.service(owner)
        storage = domish.Element((NS_BOOKMARKS_LEGACY, "storage"))
        node = service.nodes.get(NS_BOOKMARKS)
        for item in node.items if node else ():
            storage.addChild(_to_legacy(item.id, item.payload))
        return storage

    @defer.inlineCallbacks
    def _store_legacy_bookmarks(self, owner, storage: domish.Element):
        pep = self.server.pep
        service = yield pep.service(owner)
        wanted: dict[str, domish.Element] = {}
        for conference in storage.elements(NS_BOOKMARKS_LEGACY, "conference"):
            room = conference.getAttribute("jid", "")
            try:
                wanted[parse_jid(room).full()] = _to_pep(conference)
            except InvalidFormat:
                raise StanzaError("bad-request", text=f"bad room JID {room!r}") from None
        node = service.nodes.get(NS_BOOKMARKS)
        existing = {item.id: item for item in node.items} if node else {}
        for room, payload in wanted.items():
            old = existing.get(room)
            if old is None or old.xml != payload_xml(payload):
                yield pep.publish(owner, NS_BOOKMARKS, new_item(room, payload), _bookmark_options())
        gone = [room for room in existing if room not in wanted]
        if gone:
            yield pep.retract(owner, NS_BOOKMARKS, gone, notify=True)


def _forbidden(event):
    raise StanzaError("forbidden", text="private storage is for its owner only")


def _only_child(event) -> domish.Element:
    children = list(event.stanza.firstChildElement().elements())
    if len(children) != 1:
        raise StanzaError("bad-request", text="exactly one element to get or set")
    element = children[0]
    if not element.uri or element.uri.startswith("jabber:") or element.uri == "vcard-temp":
        raise StanzaError("not-acceptable", text=f"namespace {element.uri!r} cannot be stored")
    return element


def _key(element: domish.Element) -> str:
    return f"private {element.uri} {element.name}"


def _to_pep(conference: domish.Element) -> domish.Element:
    """A XEP-0048 <conference/> as its XEP-0402 payload."""
    payload = domish.Element((NS_BOOKMARKS, "conference"))
    name = conference.getAttribute("name")
    if name:
        payload["name"] = name
    autojoin = conference.getAttribute("autojoin", "false").lower() in _TRUE
    payload["autojoin"] = "true" if autojoin else "false"
    for tag in ("nick", "password"):
        child = next(conference.elements(NS_BOOKMARKS_LEGACY, tag), None)
        if child is not None:
            payload.addElement(tag, content=str(child))
    return payload


def _to_legacy(room: str, payload: domish.Element) -> domish.Element:
    """A XEP-0402 item as a XEP-0048 <conference/>."""
    conference = domish.Element((NS_BOOKMARKS_LEGACY, "conference"))
    conference["jid"] = room
    if payload.getAttribute("name"):
        conference["name"] = payload["name"]
    autojoin = payload.getAttribute("autojoin", "false").lower() in _TRUE
    conference["autojoin"] = "true" if autojoin else "false"
    for tag in ("nick", "password"):
        child = next(payload.elements(NS_BOOKMARKS, tag), None)
        if child is not None:
            conference.addElement(tag, content=str(child))
    return conference


def _bookmark_options() -> Form:
    """XEP-0402 §3: the node's configuration, as its own clients publish it."""
    form = Form("submit", formNamespace=NS_PUBSUB_PUBLISH_OPTIONS)
    for var, value in (
        ("pubsub#persist_items", "true"),
        ("pubsub#max_items", "max"),
        ("pubsub#send_last_published_item", "never"),
        ("pubsub#access_model", "whitelist"),
    ):
        form.addField(Field("text-single", var, value=value))
    return form


feature = Private()
