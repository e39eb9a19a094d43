"""XEP-0054 vcard-temp, and the avatar bridge between it and PEP (XEP-0153, XEP-0398, XEP-0084).

Get and set one's own vCard, get anyone's. A vCard with a PHOTO is mirrored
to the account's XEP-0084 nodes (urn:xmpp:avatar:data, then :metadata), and
an avatar published to PEP is written back into the vCard's PHOTO, so old and
new clients show the same picture. Outgoing presence gets the XEP-0153
<x xmlns='vcard-temp:x:update'><photo/></x> hash when the client left it out
(XEP-0398 §4). The two directions meet in the same sha1 id, so a conversion
never triggers its own reverse.

Config ([plugin.vcard]): max_bytes (a serialised vCard, default 128 KiB) and
max_avatar_bytes (the decoded image, default 96 KiB); beyond them, not-acceptable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from twisted.internet import defer
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish
from tx_xmpp.data_form import Field, Form
from tx_xmpp.pubsub import NS_PUBSUB_PUBLISH_OPTIONS
from zope.interface import implementer

from imserver.interfaces import IFeature
from imserver.pep import new_item, payload_xml
from imserver.stream.parser import parse_stanza

log = Logger()

NS_VCARD = "vcard-temp"
NS_VCARD_UPDATE = "vcard-temp:x:update"
NS_AVATAR_DATA = "urn:xmpp:avatar:data"
NS_AVATAR_METADATA = "urn:xmpp:avatar:metadata"
#: XEP-0398: the server converts between vCard and PEP avatars.
NS_AVATAR_CONVERSION = "urn:xmpp:pep-vcard-conversion:0"
DOCUMENT = "vcard-temp"


@implementer(IPlugin, IFeature)
class VCard:
    name = "vcard"
    disco_features = (NS_VCARD,)

    def attach(self, server) -> None:
        self.server = server
        self.store = server.store
        options = server.options("vcard")
        self.max_bytes = options.positive_int("max_bytes", 128 * 1024)
        self.max_avatar_bytes = options.positive_int("max_avatar_bytes", 96 * 1024)
        #: Bare JID -> current avatar sha1 ("" for none), for online accounts.
        self.hashes: dict[str, str] = {}
        on = server.dispatcher.on
        on(("iq", "get", NS_VCARD, "self"), self.get)
        on(("iq", "get", NS_VCARD, "bare"), self.get)
        on(("iq", "set", NS_VCARD, "self"), self.set)
        on(("iq", "set", NS_VCARD, "bare"), _forbidden)
        if server.pep is not None:
            server.account_features.add(NS_AVATAR_CONVERSION)
            on(("out", "presence", "available"), self.stamp_presence, priority=90)
            server.dispatcher.hook("session-bound", self.session_bound)
            server.dispatcher.hook("user-offline", self.user_offline)
            server.dispatcher.hook("pep-published", self.pep_published)

    # -- vcard-temp ----------------------------------------------------------------

    @defer.inlineCallbacks
    def get(self, event):
        if event.target == "bare" and not (
            yield self.store.user_exists(event.to.user, event.to.host)
        ):
            raise StanzaError("service-unavailable")
        xml = yield self.store.get_document(event.to.user, event.to.host, DOCUMENT)
        vcard = parse_stanza(xml) if xml else domish.Element((NS_VCARD, "vCard"))
        return event.answer(vcard)

    @defer.inlineCallbacks
    def set(self, event):
        vcard = event.stanza.firstChildElement()
        if vcard.name != "vCard":
            raise StanzaError("bad-request", text="expected <vCard xmlns='vcard-temp'/>")
        xml = payload_xml(vcard)
        if len(xml.encode("utf-8")) > self.max_bytes:
            raise StanzaError(
                "not-acceptable", text=f"vCards are limited to {self.max_bytes} bytes"
            )
        photo = _photo(vcard)
        image = None
        if photo is not None:
            image = _decode(photo[1])
            if len(image) > self.max_avatar_bytes:
                raise StanzaError(
                    "not-acceptable", text=f"avatars are limited to {self.max_avatar_bytes} bytes"
                )
        owner = event.to.userhostJID()
        yield self.store.put_document(owner.user, owner.host, DOCUMENT, xml)
        if self.server.pep is not None:
            try:
                yield self._to_pep(owner, photo[0] if photo else None, image)
            except StanzaError as e:
                # The vCard is stored; only its PEP copy failed (a full PEP quota, say).
                log.info("vCard avatar of {jid} not published: {e}", jid=owner.full(), e=e)
        return event.answer()

    # -- vCard PHOTO -> XEP-0084 ----------------------------------------------------------

    @defer.inlineCallbacks
    def _to_pep(self, owner, mime: str | None, image: bytes | None):
        """Publish the vCard's photo as the PEP avatar (or an empty metadata: no avatar)."""
        pep = self.server.pep
        service = yield pep.service(owner)
        metadata = service.nodes.get(NS_AVATAR_METADATA)
        current = metadata.last.id if metadata and metadata.last else None
        if image is None:
            if current is None or _avatar_id(metadata.last.payload) is None:
                return
            yield pep.publish(owner, NS_AVATAR_METADATA, new_item(None, _metadata(None)))
            return
        sha1 = hashlib.sha1(image).hexdigest()
        if current == sha1:
            return  # the vCard came from this very avatar
        data = domish.Element((NS_AVATAR_DATA, "data"))
        data.addContent(base64.b64encode(image).decode("ascii"))
        open_access = _open_if_new(service, NS_AVATAR_DATA)
        yield pep.publish(owner, NS_AVATAR_DATA, new_item(sha1, data), open_access)
        info = {"id": sha1, "bytes": str(len(image)), "type": mime or "image/png"}
        open_access = _open_if_new(service, NS_AVATAR_METADATA)
        yield pep.publish(owner, NS_AVATAR_METADATA, new_item(sha1, _metadata(info)), open_access)

    # -- XEP-0084 -> vCard PHOTO ------------------------------------------------------------

    @defer.inlineCallbacks
    def pep_published(self, owner, node: str, item):
        if node != NS_AVATAR_METADATA:
            return
        avatar = _avatar_id(item.payload)
        self.hashes[owner.userhost()] = avatar or ""
        xml = yield self.store.get_document(owner.user, owner.host, DOCUMENT)
        vcard = parse_stanza(xml) if xml else domish.Element((NS_VCARD, "vCard"))
        photo = _photo(vcard)
        if avatar is None:
            if photo is None:
                return
            new = None
        else:
            if photo is not None and _sha1_of(photo[1]) == avatar:
                return  # the avatar came from this very vCard
            service = yield self.server.pep.service(owner)
            data = service.nodes.get(NS_AVATAR_DATA)
            stored = data.item(avatar) if data else None
            if stored is None:
                return  # metadata pointing elsewhere (an http URL): nothing to embed
            info = next(item.payload.elements(NS_AVATAR_METADATA, "info"))
            new = (info.getAttribute("type", "image/png"), str(stored.payload).strip())
        _set_photo(vcard, new)
        yield self.store.put_document(owner.user, owner.host, DOCUMENT, payload_xml(vcard))

    # -- XEP-0153 presence hash (XEP-0398 §4) -------------------------------------------------

    @defer.inlineCallbacks
    def session_bound(self, session):
        owner = session.jid.userhostJID()
        service = yield self.server.pep.service(owner)
        metadata = service.nodes.get(NS_AVATAR_METADATA)
        last = metadata.last if metadata else None
        self.hashes[session.bare] = (_avatar_id(last.payload) if last else None) or ""

    def user_offline(self, user: str, host: str) -> None:
        self.hashes.pop(f"{user}@{host}", None)

    def stamp_presence(self, event) -> bool:
        """Add the avatar hash to a broadcast presence that has no XEP-0153 element."""
        if event.origin is None or event.stanza.getAttribute("to") is not None:
            return False
        avatar = self.hashes.get(event.origin.bare)
        if avatar is None or next(event.stanza.elements(NS_VCARD_UPDATE, "x"), None) is not None:
            return False
        x = event.stanza.addElement((NS_VCARD_UPDATE, "x"))
        x.addElement("photo", content=avatar or None)
        return False


def _forbidden(event):
    raise StanzaError("forbidden", text="only the owner may change a vCard")


def _photo(vcard: domish.Element) -> tuple[str | None, str] | None:
    """(TYPE, BINVAL) of the vCard's PHOTO, or None when it has no embedded photo."""
    photo = next(vcard.elements(NS_VCARD, "PHOTO"), None)
    if photo is None:
        return None
    binval = next(photo.elements(NS_VCARD, "BINVAL"), None)
    if binval is None or not str(binval).strip():
        return None
    mime = next(photo.elements(NS_VCARD, "TYPE"), None)
    return (str(mime).strip() if mime is not None else None), "".join(str(binval).split())


def _decode(binval: str) -> bytes:
    try:
        return base64.b64decode("".join(binval.split()), validate=True)
    except (binascii.Error, ValueError):
        raise StanzaError("bad-request", text="PHOTO BINVAL is not base64") from None


def _sha1_of(binval: str) -> str | None:
    try:
        return hashlib.sha1(base64.b64decode(binval, validate=True)).hexdigest()
    except (binascii.Error, ValueError):
        return None


def _set_photo(vcard: domish.Element, photo: tuple[str, str] | None) -> None:
    vcard.children = [
        c for c in vcard.children if not (isinstance(c, domish.Element) and c.name == "PHOTO")
    ]
    if photo is not None:
        element = vcard.addElement("PHOTO")
        element.addElement("TYPE", content=photo[0])
        element.addElement("BINVAL", content=photo[1])


def _metadata(info: dict[str, str] | None) -> domish.Element:
    metadata = domish.Element((NS_AVATAR_METADATA, "metadata"))
    if info is not None:
        element = metadata.addElement("info")
        for key, value in info.items():
            element[key] = value
    return metadata


def _avatar_id(metadata: domish.Element) -> str | None:
    """The id of the first <info/> in an avatar metadata payload; None means no avatar."""
    info = next(metadata.elements(NS_AVATAR_METADATA, "info"), None)
    return info.getAttribute("id") if info is not None else None


def _open_if_new(service, node: str) -> Form | None:
    """Avatars from vCards (which anyone may read) go to open nodes, unless set otherwise."""
    if node in service.nodes:
        return None
    form = Form("submit", formNamespace=NS_PUBSUB_PUBLISH_OPTIONS)
    form.addField(Field("text-single", "pubsub#access_model", value="open"))
    return form


feature = VCard()
