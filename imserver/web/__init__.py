"""XMPP for web clients: WebSocket (RFC 7395), BOSH (XEP-0124/0206), discovery (XEP-0156).

Both transports carry the same client streams as TCP: each is a subclass of
L{imserver.stream.c2s.C2SStream} that changes only the framing, so SASL,
binding, limits, timeouts, flow control and every plugin work unchanged.
L{imserver.web.site} puts the resources under one C{twisted.web} site.
"""
