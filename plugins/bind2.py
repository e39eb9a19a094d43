"""XEP-0386 Bind2: bind a resource inside the SASL2 request, with inline requests.

<bind xmlns='urn:xmpp:bind:0'><tag>AwesomeXMPP</tag>...</bind> in a SASL2
<authenticate/> binds "tag.<random>" (just random without a tag) once the
client has authenticated. Each other child is an inline request for the new
session, handled as an C{("inline", ns, name)} event (XEP-0198 <enable/>,
XEP-0352 <inactive/>, ...); the answers go into <bound/> in the SASL2 <success/>.
Unknown requests are ignored, as the XEP says. Plugins list what they take
inline with C{server.add_stream_feature("bind2", factory)}.
"""

from __future__ import annotations

import secrets

from twisted.plugin import IPlugin
from twisted.words.protocols.jabber.xmpp_stringprep import resourceprep
from twisted.words.xish import domish
from zope.interface import implementer

from imserver.interfaces import IFeature

NS_BIND2 = "urn:xmpp:bind:0"
#: Room for the random suffix within a resource's 1023 bytes.
MAX_TAG = 512


def _tag(request: domish.Element) -> str | None:
    """The client's tag, prepared as a resource; None when absent or unusable."""
    element = next(request.elements(NS_BIND2, "tag"), None)
    text = str(element).strip() if element is not None else ""
    try:
        tag = resourceprep.prepare(text) if text else ""
    except UnicodeError:
        return None
    return tag if tag and len(tag.encode()) <= MAX_TAG else None


@implementer(IPlugin, IFeature)
class Bind2:
    name = "bind2"
    disco_features = ()
    requires = ("sasl2",)  # its requests arrive inside SASL2's

    def attach(self, server) -> None:
        self.server = server
        server.add_stream_feature("sasl2", self.feature)
        server.dispatcher.on(("inline", NS_BIND2, "bind"), self.bind)

    def feature(self, stream) -> domish.Element:
        bind = domish.Element((NS_BIND2, "bind"))
        inline = bind.addElement("inline")
        for factory in self.server.stream_features["bind2"]:
            element = factory(stream)
            if element is not None:
                inline.addChild(element)
        return bind

    def bind(self, event) -> bool:
        stream, request = event.stream, event.stanza
        tag = _tag(request)
        resource = f"{tag}.{secrets.token_hex(4)}" if tag else secrets.token_hex(6)
        session = stream.authenticator.bind_resource(resource)
        bound = domish.Element((NS_BIND2, "bound"))
        for child in request.elements():
            if child.uri == NS_BIND2 and child.name == "tag":
                continue
            answer = self.server.dispatcher.dispatch_inline(child, stream, session)
            if isinstance(answer, domish.Element):
                bound.addChild(answer)
        event.result = bound
        return True


feature = Bind2()
