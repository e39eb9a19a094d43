"""`twistd -n imserver -c etc/imserver.toml`: the same service `imserver run` starts."""

from twisted.application.service import ServiceMaker

imserver = ServiceMaker(
    "imserver",
    "imserver.tap",
    "An XMPP instant-messaging and presence server",
    "imserver",
)
