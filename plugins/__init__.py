"""imserver's feature plugins, found through Twisted's plugin system.

Any installed distribution may add modules to this package (a `plugins/`
directory without `__init__.py` on sys.path), so third-party features load by
name exactly like the bundled ones.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__: list[str] = []
