"""twistd glue: Options and makeService, as Twisted's ServiceMaker expects."""

from __future__ import annotations

from twisted.python import usage

from imserver import config, service
from imserver.errors import ConfigError


class Options(usage.Options):
    optParameters = [["config", "c", "etc/imserver.toml", "The configuration file."]]


def makeService(options: Options):
    """Build the service; a bad config or an unwritable data dir is one line, not a traceback."""
    try:
        return service.makeService(config.load(options["config"]))
    except ConfigError as e:
        raise SystemExit(f"imserver: {e}") from None
    except OSError as e:  # e.g. the certificate cannot be written
        raise SystemExit(f"imserver: {e.filename or 'startup'}: {e.strerror or e}") from None
