"""Exceptions the core and the stores share."""

from __future__ import annotations


class StoreError(Exception):
    """A storage operation failed; the stanza that needed it gets internal-server-error."""


class UserExists(StoreError):
    """create_user found the account already there."""


class UserNotFound(StoreError):
    """The account does not exist."""


class ConfigError(Exception):
    """The configuration is invalid; the message names the key and the reason."""
