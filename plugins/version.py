"""XEP-0092 Software Version of the server; [plugin.version] name/version/os override it."""

import platform

from twisted.plugin import IPlugin
from twisted.words.xish import domish
from zope.interface import implementer

import imserver
from imserver.interfaces import IFeature

NS_VERSION = "jabber:iq:version"


@implementer(IPlugin, IFeature)
class Version:
    name = "version"
    disco_features = (NS_VERSION,)

    def attach(self, server) -> None:
        options = server.options(self.name)
        query = domish.Element((NS_VERSION, "query"))
        query.addElement("name", content=options.str("name", "imserver"))
        query.addElement("version", content=options.str("version", imserver.__version__))
        if options.bool("os", True):
            query.addElement(
                "os", content=f"{platform.system()} / Python {platform.python_version()}"
            )
        server.dispatcher.on(("iq", "get", NS_VERSION, "host"), lambda event: event.answer(query))


feature = Version()
