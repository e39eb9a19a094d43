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
    requires = Attribute(
        "Optional: names of plugins that must be loaded too (those firing the hooks it needs)."
    )

    def attach(server):
        """Register handlers and hooks on C{server.dispatcher}; nothing else."""


class ISessionStream(Interface):
    """What a L{imserver.session.Session} needs from the transport that carries it.

    C2S streams implement it; WebSocket and BOSH streams do too, and a plugin
    may wrap a session's stream (stream management counts what it sends).
    """

    closed = Attribute("True once the stream can send nothing more.")
    secure = Attribute("True when the transport is encrypted (or counts as such).")
    peer_address = Attribute("The client's address, for logs and limits.")

    def send_stanza(stanza):
        """Serialise and send one top-level element."""

    def send_bytes(data):
        """Send an element serialised once for many recipients (no per-recipient work)."""

    def drained():
        """A Deferred firing once the client has read what was sent so far."""

    def fail(condition, text=None, app_condition=None):
        """Close with a stream error (RFC 6120 §4.9), optionally with an application condition.

        The transport then ends the session it carries (its C{session}
        attribute) through C{server.stream_gone}; a feature that moves a
        session to another transport sets that attribute on both.
        """


class ISessionRegistry(Interface):
    """The bound resources a server can reach, by bare JID then resource.

    In memory for one process today; a shared registry (Redis) can stand in
    for several processes serving the same domains.
    """

    def add(session):
        """Register C{session}; return the session it replaced (same full JID), if any."""

    def remove(session):
        """Forget C{session}; True when it was the account's last one."""

    def get(bare, resource):
        """The session of one full JID, or None."""

    def of(bare):
        """All sessions of an account, as a list safe to iterate while they change."""

    def all():
        """Every session."""

    def __len__():
        """How many sessions there are."""


class IRoute(Interface):
    """A destination for stanzas addressed to the domains it serves.

    The local hosts are one route; a server-to-server connection manager (the
    default route for every other domain) and a cluster peer are others.
    """

    def route(event):
        """Take a stanza (C{event.stanza}, addressed to C{event.to}) for delivery.

        Return None, or a Deferred that fires once the stanza is handed on, to
        hold the sender's next stanzas. Undeliverable stanzas are answered with
        the server's one bounce function (C{server.router.bounce}).
        """


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
        None to delete it; C{pending_in} maps a contact's bare JID to its pending
        request (the serialised stanza, to store) or None (forget it); C{version}
        is the roster's new version.
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

    def write_privacy(user, host, lists, default):
        """Apply one change atomically: replace lists and set the default together.

        C{lists} maps a list name to its items (an empty sequence removes the
        list); C{default} is the default list's name, or None to decline one.
        A failure leaves the stored lists and default as they were.
        """


class IFastTokenStore(Interface):
    """XEP-0484 FAST tokens per account and client, kept only as hashes.

    Optional: a store without it means the sasl2 plugin offers no FAST.
    """

    def get_fast_tokens(user, host, client):
        """Fire with the L{imserver.credentials.FastToken}s of one client of an account."""

    def replace_fast_tokens(user, host, client, keep, add):
        """In one transaction: drop the client's tokens whose hash is not in C{keep}, add C{add}.

        C{add} is a L{imserver.credentials.FastToken} or None.
        """


class IPersonalStore(Interface):
    """Per-account documents: PEP nodes and items (XEP-0163), private XML and vCards.

    PEP writes are small and each is one transaction; the caller (the PEP
    plugin) has already checked quotas against its cached picture of the account.
    """

    def load_pep(user, host):
        """Fire with {node: (config_json, [(item_id, payload_xml), ...] oldest first)}."""

    def save_pep_node(user, host, node, config_json, dropped):
        """Create or reconfigure a node, deleting the items listed in C{dropped}."""

    def put_pep_item(user, host, node, config_json, item_id, payload_xml, dropped):
        """Store an item (replacing one with its id) as the node's newest.

        C{config_json} is not None when the publish created the node; the items
        in C{dropped} (trimmed by max_items) go in the same transaction.
        """

    def delete_pep_items(user, host, node, item_ids):
        """Delete those items of a node (all of them when C{item_ids} is None)."""

    def delete_pep_node(user, host, node):
        """Delete a node and its items."""

    def get_document(user, host, key):
        """Fire with the stored XML under C{key} (private storage, vCard) or None."""

    def put_document(user, host, key, xml, limit=None):
        """Store C{xml} under C{key} (None deletes it); fire with False, storing nothing,
        when that would be a new key beyond C{limit} documents of the account."""


class IArchiveStore(Interface):
    """Per-user message archives (XEP-0313) and their preferences."""

    def append_archive(records):
        """Store L{imserver.archive.ArchiveRecord}s, in the given order, in one transaction."""

    def query_archive(user, host, query):
        """Fire with an L{imserver.archive.ArchivePage} for an L{imserver.archive.ArchiveQuery}.

        The page comes with the number of messages the query's filters match
        and, for a forward page, its position among them. Fails with
        L{imserver.archive.UnknownArchiveId} when an id it names (after/before,
        after_id/before_id) is not in the archive.
        """

    def archive_bounds(user, host):
        """Fire with (first, last) L{imserver.archive.ArchivedMessage}s, or (None, None)."""

    def expire_archive(before):
        """Delete every user's messages archived before C{before} (microseconds); fire with
        how many."""

    def delete_archive(user, host):
        """Remove the user's archive and preferences (the account is gone)."""

    def get_archive_prefs(user, host):
        """Fire with the user's L{imserver.archive.ArchivePrefs}, or None when never set."""

    def set_archive_prefs(user, host, prefs):
        """Replace the user's archiving preferences."""


class IStore(IUserStore, IRosterStore, IOfflineStore, IPrivacyStore, IPersonalStore, IArchiveStore):
    """One storage provider offering every store."""

    def start():
        """Open the database and migrate its schema; fire when ready."""

    def stop():
        """Release connections and threads; fire when done."""
