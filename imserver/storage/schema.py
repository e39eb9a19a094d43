"""The database schema and the migrations that bring any older database up to it.

Every table is keyed by (host, username) so that all virtual hosts share one
database. Lists that are only ever read and replaced whole (a contact's groups,
a privacy list's items) are stored as JSON text rather than child tables: no
query ever looks inside them, and one row per owner keeps each replacement a
single statement on every dialect.

The database records its version in C{schema_version}. L{MIGRATIONS} is the
ordered list of steps; step N (1-based) turns a version N-1 database into a
version N one. L{migrate} runs the missing steps in the caller's transaction,
so an upgrade either completes or leaves the database as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    DateTime,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    func,
    inspect,
    select,
)
from twisted.words.xish import domish

from imserver.errors import StoreError
from imserver.roster import SUBSCRIPTIONS
from imserver.serialize import stanza_bytes

#: RFC 7622 caps each JID part at 1023 bytes; a bare JID is at most 2047.
PART_LENGTH = 1023
BARE_JID_LENGTH = 2047

metadata = MetaData()


def _owner(primary_key: bool = True) -> list[Column]:
    """The (host, username) pair that owns a row; fresh Column objects per table."""
    return [
        Column("host", String(PART_LENGTH), primary_key=primary_key, nullable=False),
        Column("username", String(PART_LENGTH), primary_key=primary_key, nullable=False),
    ]


schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, nullable=False),
)

users = Table(
    "users",
    metadata,
    *_owner(),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

credentials = Table(
    "credentials",
    metadata,
    *_owner(),
    #: A SCRAM family name, "SCRAM-SHA-1" or "SCRAM-SHA-256"; no CHECK, so adding
    #: a family later needs no table rebuild.
    Column("mechanism", String(32), primary_key=True),
    Column("salt", LargeBinary, nullable=False),
    Column("stored_key", LargeBinary, nullable=False),
    Column("server_key", LargeBinary, nullable=False),
    Column("iterations", Integer, nullable=False),
    ForeignKeyConstraint(
        ["host", "username"],
        ["users.host", "users.username"],
        ondelete="CASCADE",
        name="fk_credentials_user",
    ),
)

roster_items = Table(
    "roster_items",
    metadata,
    *_owner(),
    Column("contact", String(BARE_JID_LENGTH), primary_key=True),
    Column("name", Text),
    Column("subscription", String(4), nullable=False),
    Column("ask", Boolean(create_constraint=False), nullable=False),
    Column("approved", Boolean(create_constraint=False), nullable=False),
    #: JSON array of group names, in the order the client sent them.
    Column("groups", Text, nullable=False),
    CheckConstraint(
        "subscription IN (" + ", ".join(f"'{s}'" for s in SUBSCRIPTIONS) + ")",
        name="ck_roster_items_subscription",
    ),
)

roster_pending_in = Table(
    "roster_pending_in",
    metadata,
    *_owner(),
    Column("contact", String(BARE_JID_LENGTH), primary_key=True),
    #: The contact's request as received (serialised <presence type='subscribe'/>, with
    #: its id, status, nick...), redelivered as is at login. Added by step 2, which fills
    #: it for older rows; nullable only because ALTER TABLE cannot add NOT NULL without
    #: a default. Nothing writes NULL.
    Column("stanza", Text),
)

roster_versions = Table(
    "roster_versions",
    metadata,
    *_owner(),
    Column("version", Integer, nullable=False),
)

offline_messages = Table(
    "offline_messages",
    metadata,
    #: Increases with every insert: the delivery order.
    Column("id", Integer, primary_key=True, autoincrement=True),
    *_owner(primary_key=False),
    Column("stanza", Text, nullable=False),
    Column("stored_at", DateTime(timezone=True), nullable=False),
    Index("ix_offline_messages_owner", "host", "username", "id"),
    # Never reuse the id of a delivered message, even the highest one.
    sqlite_autoincrement=True,
)

privacy_lists = Table(
    "privacy_lists",
    metadata,
    *_owner(),
    Column("name", String(PART_LENGTH), primary_key=True),
    #: JSON array of the items, each {order, action, type, value, stanzas}; "items"
    #: itself would clash with the Python name of a column collection method.
    Column("items_json", Text, nullable=False),
)

privacy_default = Table(
    "privacy_default",
    metadata,
    *_owner(),
    Column("name", String(PART_LENGTH), nullable=False),
)

pep_nodes = Table(
    "pep_nodes",
    metadata,
    *_owner(),
    Column("node", String(PART_LENGTH), primary_key=True),
    #: The node configuration as JSON {field var: wire value}.
    Column("config_json", Text, nullable=False),
)

pep_items = Table(
    "pep_items",
    metadata,
    #: Increases with every insert: a node's items in publish order.
    Column("seq", Integer, primary_key=True, autoincrement=True),
    *_owner(primary_key=False),
    Column("node", String(PART_LENGTH), nullable=False),
    Column("item_id", String(PART_LENGTH), nullable=False),
    Column("payload", Text, nullable=False),
    Index("ix_pep_items_owner", "host", "username", "node", "seq"),
    sqlite_autoincrement=True,
)

#: XEP-0049 private XML and the XEP-0054 vCard: one XML document per (owner, key).
documents = Table(
    "documents",
    metadata,
    *_owner(),
    Column("key", String(BARE_JID_LENGTH), primary_key=True),
    Column("xml", Text, nullable=False),
)

archive_messages = Table(
    "archive_messages",
    metadata,
    #: Breaks ties between equal timestamps; never reused (XEP-0313 §7.2).
    Column(
        "id",
        BigInteger().with_variant(Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    *_owner(primary_key=False),
    #: The archive UID clients see (XEP-0313 result id, XEP-0359 stanza-id).
    Column("archive_id", String(32), nullable=False),
    #: Microseconds since the epoch when the server handled the message: the archive order.
    Column("when_us", BigInteger, nullable=False),
    #: The other party: the recipient of an outgoing message, the sender of an incoming one.
    Column("with_bare", String(BARE_JID_LENGTH), nullable=False),
    Column("with_resource", String(PART_LENGTH)),
    #: The message as handled, serialised with its xmlns='jabber:client'.
    Column("stanza", Text, nullable=False),
    Index("ux_archive_messages_archive_id", "host", "username", "archive_id", unique=True),
    Index("ix_archive_messages_owner_when", "host", "username", "when_us", "id"),
    Index("ix_archive_messages_owner_with", "host", "username", "with_bare", "when_us", "id"),
    #: Retention deletes by age across all users.
    Index("ix_archive_messages_when", "when_us"),
    sqlite_autoincrement=True,
)

#: How many messages each archive holds, kept in the same transaction as every write
#: to archive_messages: RSM <count/> of an unfiltered query (XEP-0059 §2.2) without
#: counting a large archive row by row.
archive_counts = Table(
    "archive_counts",
    metadata,
    *_owner(),
    Column("messages", BigInteger, nullable=False),
)

archive_prefs = Table(
    "archive_prefs",
    metadata,
    *_owner(),
    Column("default_policy", String(8), nullable=False),
    #: JSON arrays of bare JIDs.
    Column("always_json", Text, nullable=False),
    Column("never_json", Text, nullable=False),
)

fast_tokens = Table(
    "fast_tokens",
    metadata,
    *_owner(primary_key=False),
    #: The client's SASL2 user-agent id: tokens are issued per client (XEP-0484).
    Column("client", String(PART_LENGTH), nullable=False),
    #: SHA-256 of the token, in hex: the token itself is never stored.
    Column("token_hash", String(64), primary_key=True),
    Column("mechanism", String(64), nullable=False),
    #: Seconds since the epoch.
    Column("expiry", Integer, nullable=False),
    Index("ix_fast_tokens_client", "host", "username", "client"),
)

#: The tables of schema version 1, as first released.
VERSION_1_TABLES = (
    credentials,
    roster_items,
    roster_pending_in,
    roster_versions,
    offline_messages,
    privacy_lists,
    privacy_default,
    users,
)
#: Version 3: PEP and per-account documents.
_PERSONAL_TABLES = (pep_nodes, pep_items, documents)
#: Version 4: the message archive.
_ARCHIVE_TABLES = (archive_messages, archive_prefs)

#: The tables every user's data lives in, children before parents, for deletion.
USER_TABLES = (
    archive_counts,
    fast_tokens,
    *_ARCHIVE_TABLES,
    *_PERSONAL_TABLES,
    *VERSION_1_TABLES,
)


#: Version-1 tables that a later step changed, as version 1 created them.
_version_1 = MetaData()
_roster_pending_in_v1 = Table(
    "roster_pending_in",
    _version_1,
    *_owner(),
    Column("contact", String(BARE_JID_LENGTH), primary_key=True),
)


def _create_initial_tables(connection: Connection) -> None:
    """Version 1: every table as first released.

    This creates the tables from L{metadata} as it stands, except those a later
    step alters: their version-1 definitions are in L{_version_1}, so that this
    step keeps producing the schema the later steps expect.
    """
    changed = {table.name for table in _version_1.tables.values()}
    metadata.create_all(
        connection, tables=[t for t in VERSION_1_TABLES if t.name not in changed], checkfirst=False
    )
    _version_1.create_all(connection, checkfirst=False)


def _keep_subscription_requests(connection: Connection) -> None:
    """Version 2: a pending subscription request keeps the stanza the contact sent.

    Requests stored before kept only the contact's JID: they get the bare
    request that used to be redelivered, so every row has a stanza.
    """
    connection.exec_driver_sql("ALTER TABLE roster_pending_in ADD COLUMN stanza TEXT")
    rows = connection.execute(
        select(roster_pending_in.c.host, roster_pending_in.c.username, roster_pending_in.c.contact)
    ).all()
    for row in rows:
        request = domish.Element((None, "presence"))
        request["type"] = "subscribe"
        request["from"] = row.contact
        request["to"] = f"{row.username}@{row.host}"
        connection.execute(
            roster_pending_in.update()
            .where(
                (roster_pending_in.c.host == row.host)
                & (roster_pending_in.c.username == row.username)
                & (roster_pending_in.c.contact == row.contact)
            )
            .values(stanza=stanza_bytes(request).decode("utf-8"))
        )


def _create_personal_tables(connection: Connection) -> None:
    """Version 3: PEP nodes and items, private XML and vCards."""
    metadata.create_all(connection, tables=list(_PERSONAL_TABLES), checkfirst=False)


def _create_archive_tables(connection: Connection) -> None:
    """Version 4: the message archive (XEP-0313) and its per-user preferences."""
    metadata.create_all(connection, tables=list(_ARCHIVE_TABLES), checkfirst=False)


def _create_fast_tokens(connection: Connection) -> None:
    """Version 5: hashed XEP-0484 FAST tokens, per account and client."""
    metadata.create_all(connection, tables=[fast_tokens], checkfirst=False)


def _count_archives(connection: Connection) -> None:
    """Version 6: each archive's message count, filled from the messages already stored."""
    metadata.create_all(connection, tables=[archive_counts], checkfirst=False)
    t = archive_messages
    connection.execute(
        archive_counts.insert().from_select(
            ["host", "username", "messages"],
            select(t.c.host, t.c.username, func.count()).group_by(t.c.host, t.c.username),
        )
    )


Migration = Callable[[Connection], None]

#: Step N turns a version N-1 database into version N. Append, never edit.
MIGRATIONS: list[Migration] = [
    _create_initial_tables,
    _keep_subscription_requests,
    _create_personal_tables,
    _create_archive_tables,
    _create_fast_tokens,
    _count_archives,
]


def current_version(connection: Connection) -> int:
    """The version recorded in the database; 0 for a database we never touched."""
    if not inspect(connection).has_table(schema_version.name):
        return 0
    return connection.execute(select(schema_version.c.version)).scalar_one_or_none() or 0


def migrate(
    connection: Connection,
    steps: Sequence[Migration] | None = None,
    target: int | None = None,
) -> int:
    """Run the missing steps inside the caller's transaction; return the new version.

    C{steps} defaults to L{MIGRATIONS} and C{target} to the last of them; both
    exist so that tests can build a database at an older version.
    """
    steps = MIGRATIONS if steps is None else steps
    target = len(steps) if target is None else target
    version = current_version(connection)
    if version > len(steps):
        raise StoreError(
            f"database schema version {version} is newer than this server knows"
            f" ({len(steps)}); upgrade the server"
        )
    if version >= target:
        return version
    if version == 0:
        schema_version.create(connection, checkfirst=True)
        connection.execute(schema_version.insert().values(version=0))
    for number in range(version + 1, target + 1):
        steps[number - 1](connection)
    connection.execute(schema_version.update().values(version=target))
    return target
