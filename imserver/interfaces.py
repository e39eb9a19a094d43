"""Every zope.interface contract of imserver, in one place.

Plugins depend on these and on the core's shared models, never on each other.
Store methods return Deferreds: the SQL implementation runs them in a thread
pool so the reactor thread never blocks on I/O.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IFeature(Interface):
    """A feature plugin: the protocol face of one area (roster, presence, ...)."""

    name = Attribute("The name operators list in the config's `plugins`.")
    disco_features = Attribute("Namespaces this feature adds to the server's disco#info.")

    def attach(server):
        """Register handlers and hooks on C{server.dispatcher}; nothing else."""


class IUserStore(Interface):
    """Accounts and their SCRAM credentials (never a clear-text password)."""

    def create_user(user, host, credentials):
        """Create an account; fails with L{imserver.errors.UserExists}."""

    def get_credentials(user, host):
        """Fire with L{imserver.credentials.Credentials} or None when no such user."""

    def set_credentials(user, host, credentials):
        """Replace the credentials; fails with L{imserver.errors.UserNotFound}."""

    def delete_user(user, host):
        """Remove the account and everything stored for it, in one transaction."""

    def user_exists(user, host):
        """Fire with a bool."""


class IRosterStore(Interface):
    """Rosters: items plus the pending inbound subscription requests."""

    def get_roster(user, host):
        """Fire with an L{imserver.roster.Roster} (empty when none is stored)."""

    def write_roster(user, host, version, items, pending_in):
        """Apply one change atomically.

        C{items} maps a contact's bare JID to a L{imserver.roster.RosterItem}, or to
        None to delete it; C{pending_in} maps a contact's bare JID to True (store the
        pending request) or False (forget it); C{version} is the roster's new version.
        """


class IOfflineStore(Interface):
    """Messages kept for users with no available resource (XEP-0160)."""

    def store_offline(user, host, stanza_xml, limit):
        """Append one serialised message; fire with False when C{limit} is reached."""

    def pop_offline(user, host):
        """Fire with the stored messages, oldest first, removing them."""


class IPrivacyStore(Interface):
    """Privacy lists and the default list name, per user."""

    def get_privacy(user, host):
        """Fire with an L{imserver.privacy.PrivacySettings}."""

    def put_privacy_list(user, host, name, items):
        """Create or replace one list (an empty C{items} removes it)."""

    def set_default_list(user, host, name):
        """Set (or with None, decline) the default list."""


class IArchiveStore(Interface):
    """Per-user message archives (XEP-0313) and their preferences."""

    def append_archive(records):
        """Store L{imserver.archive.ArchiveRecord}s, in the given order, in one transaction."""

    def query_archive(user, host, query):
        """Fire with an L{imserver.archive.ArchivePage} for an L{imserver.archive.ArchiveQuery}.

        Fails with L{imserver.archive.UnknownArchiveId} when its after/before id
        is not in the archive.
        """

    def archive_bounds(user, host):
        """Fire with (first, last) L{imserver.archive.ArchivedMessage}s, or (None, None)."""

    def expire_archive(before):
        """Delete every user's messages archived before C{before} (microseconds); fire with
        how many."""

    def get_archive_prefs(user, host):
        """Fire with the user's L{imserver.archive.ArchivePrefs}, or None when never set."""

    def set_archive_prefs(user, host, prefs):
        """Replace the user's archiving preferences."""


class IStore(IUserStore, IRosterStore, IOfflineStore, IPrivacyStore, IArchiveStore):
    """One storage provider offering every store."""

    def start():
        """Open the database and migrate its schema; fire when ready."""

    def stop():
        """Release connections and threads; fire when done."""
