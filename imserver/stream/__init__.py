"""XML streams: the restricted parser every byte from a peer goes through, c2s streams,
and the names every kind of stream (c2s, s2s, WebSocket, BOSH) shares."""

NS_CLIENT = "jabber:client"
NS_STREAMS = "http://etherx.jabber.org/streams"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"

#: The top-level elements that are stanzas (RFC 6120 §8).
STANZAS = frozenset(("message", "presence", "iq"))
