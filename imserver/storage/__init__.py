"""Persistent storage: one SQL database holds every virtual host's data."""

from __future__ import annotations

from imserver.storage.sql import SQLStore

__all__ = ["SQLStore", "open_store"]


def open_store(url: str) -> SQLStore:
    """The store for a SQLAlchemy URL (C{Settings.storage_url}); call C{start()} before use."""
    return SQLStore(url)
