"""RFC 3921 §3 session establishment, kept for old clients.

RFC 6121 dropped the step; we advertise it as <optional/> (RFC 6121 Appendix E)
and answer it, and a client that skips it is served all the same.
"""

from twisted.plugin import IPlugin
from twisted.words.xish import domish
from zope.interface import implementer

from imserver.interfaces import IFeature

NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"


def _stream_feature(stream) -> domish.Element:
    feature = domish.Element((NS_SESSION, "session"))
    feature.addElement("optional")
    return feature


@implementer(IPlugin, IFeature)
class Sessions:
    name = "sessions"
    disco_features = ()

    def attach(self, server) -> None:
        server.add_stream_feature("bound", _stream_feature)
        for target in ("host", "self"):
            server.dispatcher.on(("iq", "set", NS_SESSION, target), lambda event: event.answer())


feature = Sessions()
