"""twistd glue: Options and makeService, as Twisted's ServiceMaker expects."""

from __future__ import annotations

from twisted.python import usage

from imserver import config, service
from imserver.errors import ConfigError


class Options(usage.Options):
    optParameters = [["config", "c", "etc/imserver.toml", "The configuration file."]]


def makeService(options: Options):
    try:
        settings = config.load(options["config"])
    except ConfigError as e:
        raise SystemExit(f"imserver: {e}") from None
    return service.makeService(settings)
