"""imserver: an XMPP instant-messaging and presence server on Twisted."""

__version__ = "0.1.0"
