"""L{IStore} on SQLAlchemy Core, for SQLite and PostgreSQL.

Database calls block, so every public method hands its work to a thread pool of
its own and returns a Deferred; the reactor thread never waits on the database.
SQLite gets a single thread, which serialises all writes inside this process
and so avoids "database is locked" between our own connections. Each write is
one transaction, so a failure part-way leaves nothing of it behind.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Table,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    literal,
    make_url,
    null,
    or_,
    select,
    union_all,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from imserver.archive import (
    ArchivedMessage,
    ArchivePage,
    ArchivePrefs,
    ArchiveQuery,
    ArchiveRecord,
    UnknownArchiveId,
)
from imserver.credentials import Credentials, FastToken, ScramKeys
from imserver.errors import StoreError, UserExists, UserNotFound
from imserver.interfaces import IFastTokenStore, IStore
from imserver.privacy import PrivacyItem, PrivacySettings
from imserver.roster import Roster, RosterItem
from imserver.storage import schema
from imserver.storage.personal import PersonalStore
from imserver.storage.schema import (
    archive_counts,
    archive_messages,
    archive_prefs,
    credentials,
    fast_tokens,
    offline_messages,
    privacy_default,
    privacy_lists,
    roster_items,
    roster_pending_in,
    roster_versions,
    users,
)

T = TypeVar("T")

#: Milliseconds SQLite waits for another process's lock before giving up.
SQLITE_BUSY_TIMEOUT_MS = 5000
#: Ids per DELETE when popping offline messages, well under SQLite's bound-parameter cap.
DELETE_CHUNK = 500
#: Users remembered as having no offline messages before the memory starts over.
NO_OFFLINE_LIMIT = 100_000
#: Execution option marking a write transaction (SQLite then takes the write lock at BEGIN).
_WRITE_OPTION = "imserver_write"
#: Execution option for one lone SELECT: no BEGIN, as a single statement is consistent alone.
_SINGLE_OPTION = "imserver_single"


def _user_rows(table: Table) -> ColumnElement[bool]:
    """The rows of C{table} owned by the bound parameters 'user' and 'host'."""
    return (table.c.host == bindparam("host")) & (table.c.username == bindparam("user"))


# The reads of every login, built once so SQLAlchemy compiles each only once.
_CREDENTIALS = select(
    credentials.c.mechanism,
    credentials.c.salt,
    credentials.c.stored_key,
    credentials.c.server_key,
    credentials.c.iterations,
).where(_user_rows(credentials))
#: The whole roster in one statement: 'kind' 0 is the version, 1 an item, 2 a pending
#: request (its stanza in the 'name' column).
_ROSTER = union_all(
    select(
        literal(0).label("kind"),
        null().label("contact"),
        null().label("name"),
        null().label("subscription"),
        null().label("ask"),
        null().label("approved"),
        null().label("groups"),
        roster_versions.c.version,
    ).where(_user_rows(roster_versions)),
    select(
        literal(1),
        roster_items.c.contact,
        roster_items.c.name,
        roster_items.c.subscription,
        roster_items.c.ask,
        roster_items.c.approved,
        roster_items.c.groups,
        null(),
    ).where(_user_rows(roster_items)),
    select(
        literal(2),
        roster_pending_in.c.contact,
        roster_pending_in.c.stanza,
        null(),
        null(),
        null(),
        null(),
        null(),
    ).where(_user_rows(roster_pending_in)),
)
_ANY_OFFLINE = select(offline_messages.c.id).where(_user_rows(offline_messages)).limit(1)


@implementer(IStore, IFastTokenStore)
class SQLStore(PersonalStore):
    """Every store of L{IStore} in one SQL database named by a SQLAlchemy URL."""

    def __init__(self, url: str, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.url = url
        self._reactor = reactor
        self._sqlite = make_url(url).get_backend_name() == "sqlite"
        self._threads = 1 if self._sqlite else 4
        #: INSERT with ON CONFLICT, which each dialect spells in its own construct.
        self._insert = sqlite.insert if self._sqlite else postgresql.insert
        self._pool: ThreadPool | None = None
        self._engine: Engine | None = None
        #: Users known to have no stored offline messages, so a login's pop needs no query.
        #: Only this process stores offline messages (the CLI never does), and every
        #: store_offline() call removes its user before the write is even queued.
        self._no_offline: set[tuple[str, str]] = set()
        #: Counts store_offline() calls: a pop marks its user empty only if none came meanwhile.
        self._offline_stores = 0

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Open the database and migrate its schema; fire when ready."""
        if self._pool is not None:
            return fail(StoreError("store already started"))
        self._pool = ThreadPool(self._threads, self._threads, name="imserver-store")
        self._pool.start()
        d = self._run(self._open)

        def failed(failure):
            # Nobody calls stop() on a store that never started: release it here.
            self._stop_pool()
            return failure

        d.addErrback(failed)
        return d

    def stop(self) -> Deferred[None]:
        """Close every connection, then the threads; fire when done."""
        if self._pool is None:
            return succeed(None)
        d = deferToThreadPool(self._reactor, self._pool, self._close)

        def stopped(result):
            self._stop_pool()
            return result

        return d.addBoth(stopped)

    def _open(self) -> None:
        url = make_url(self.url)
        if self._sqlite:
            if url.database and url.database != ":memory:":
                Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, hide_parameters=True)
            _configure_sqlite(engine)
        else:
            engine = create_engine(
                url, hide_parameters=True, pool_size=self._threads, pool_pre_ping=True
            )
        try:
            with _writing(engine) as conn:
                schema.migrate(conn)
        except BaseException:
            engine.dispose()
            raise
        self._engine = engine

    def _close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def _stop_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()

    def _run(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        """Run C{fn} in the pool; SQLAlchemy and OS errors arrive as L{StoreError}."""
        if self._pool is None:
            return fail(StoreError("store is not started"))
        return deferToThreadPool(self._reactor, self._pool, _guarded, fn, *args)

    def _read_one(self, statement, user: str, host: str) -> list:
        """The rows of one prepared SELECT about user@host, run alone (no BEGIN on SQLite)."""
        with self._db.connect().execution_options(**{_SINGLE_OPTION: True}) as conn:
            return conn.execute(statement, {"user": user, "host": host}).all()

    @property
    def _db(self) -> Engine:
        if self._engine is None:
            raise StoreError("store is not started")
        return self._engine

    def _write(self):
        """One write transaction on this store's database (for the mixins)."""
        return _writing(self._db)

    # -- users -----------------------------------------------------------------

    def create_user(self, user: str, host: str, credentials: Credentials) -> Deferred[None]:
        return self._run(self._create_user, user, host, credentials)

    def get_credentials(self, user: str, host: str) -> Deferred[Credentials | None]:
        return self._run(self._get_credentials, user, host)

    def set_credentials(self, user: str, host: str, credentials: Credentials) -> Deferred[None]:
        return self._run(self._set_credentials, user, host, credentials)

    def delete_user(self, user: str, host: str) -> Deferred[None]:
        return self._run(self._delete_user, user, host)

    def user_exists(self, user: str, host: str) -> Deferred[bool]:
        return self._run(self._user_exists, user, host)

    def _create_user(self, user: str, host: str, creds: Credentials) -> None:
        with _writing(self._db) as conn:
            if _exists(conn, user, host):
                raise UserExists(f"{user}@{host} already exists")
            conn.execute(
                users.insert().values(host=host, username=user, created_at=datetime.now(UTC))
            )
            _insert_credentials(conn, user, host, creds)

    def _get_credentials(self, user: str, host: str) -> Credentials | None:
        rows = self._read_one(_CREDENTIALS, user, host)
        if not rows:
            return None
        return Credentials(
            {
                row.mechanism: ScramKeys(
                    bytes(row.salt), bytes(row.stored_key), bytes(row.server_key), row.iterations
                )
                for row in rows
            }
        )

    def _set_credentials(self, user: str, host: str, creds: Credentials) -> None:
        with _writing(self._db) as conn:
            if not _exists(conn, user, host):
                raise UserNotFound(f"{user}@{host} does not exist")
            conn.execute(delete(credentials).where(_owned(credentials, user, host)))
            _insert_credentials(conn, user, host, creds)

    def _delete_user(self, user: str, host: str) -> None:
        with _writing(self._db) as conn:
            if not _exists(conn, user, host):
                raise UserNotFound(f"{user}@{host} does not exist")
            for table in schema.USER_TABLES:
                conn.execute(delete(table).where(_owned(table, user, host)))

    def _user_exists(self, user: str, host: str) -> bool:
        with self._db.connect() as conn:
            return _exists(conn, user, host)

    # -- rosters ---------------------------------------------------------------

    def get_roster(self, user: str, host: str) -> Deferred[Roster]:
        return self._run(self._get_roster, user, host)

    def write_roster(
        self,
        user: str,
        host: str,
        version: int,
        items: Mapping[str, RosterItem | None],
        pending_in: Mapping[str, str | None],
    ) -> Deferred[None]:
        return self._run(self._write_roster, user, host, version, items, pending_in)

    def _get_roster(self, user: str, host: str) -> Roster:
        roster = Roster()
        for kind, contact, name, subscription, ask, approved, groups, version in self._read_one(
            _ROSTER, user, host
        ):
            if kind == 1:
                roster.items[contact] = RosterItem(
                    jid=contact,
                    name=name,
                    subscription=subscription,
                    ask=bool(ask),
                    approved=bool(approved),
                    groups=() if groups == "[]" else tuple(json.loads(groups)),
                )
            elif kind == 2:
                roster.pending_in[contact] = name  # the request as sent (see _ROSTER)
            else:
                roster.version = version
        return roster

    def _write_roster(
        self,
        user: str,
        host: str,
        version: int,
        items: Mapping[str, RosterItem | None],
        pending_in: Mapping[str, str | None],
    ) -> None:
        with _writing(self._db) as conn:
            for jid, item in items.items():
                conn.execute(
                    delete(roster_items).where(
                        _owned(roster_items, user, host), roster_items.c.contact == jid
                    )
                )
                if item is not None:
                    conn.execute(
                        roster_items.insert().values(
                            host=host,
                            username=user,
                            contact=jid,
                            name=item.name,
                            subscription=item.subscription,
                            ask=item.ask,
                            approved=item.approved,
                            groups=json.dumps(list(item.groups)),
                        )
                    )
            for jid, request in pending_in.items():
                conn.execute(
                    delete(roster_pending_in).where(
                        _owned(roster_pending_in, user, host), roster_pending_in.c.contact == jid
                    )
                )
                if request is not None:
                    conn.execute(
                        roster_pending_in.insert().values(
                            host=host, username=user, contact=jid, stanza=request
                        )
                    )
            updated = conn.execute(
                roster_versions.update()
                .where(_owned(roster_versions, user, host))
                .values(version=version)
            )
            if updated.rowcount == 0:
                conn.execute(
                    roster_versions.insert().values(host=host, username=user, version=version)
                )

    # -- offline messages --------------------------------------------------------

    # -- FAST tokens (XEP-0484) -----------------------------------------------------

    def get_fast_tokens(self, user: str, host: str, client: str) -> Deferred[list[FastToken]]:
        return self._run(self._get_fast_tokens, user, host, client)

    def replace_fast_tokens(
        self, user: str, host: str, client: str, keep: Sequence[str], add: FastToken | None
    ) -> Deferred[None]:
        return self._run(self._replace_fast_tokens, user, host, client, list(keep), add)

    def _get_fast_tokens(self, user: str, host: str, client: str) -> list[FastToken]:
        with self._db.connect() as conn:
            rows = conn.execute(
                select(fast_tokens).where(
                    _owned(fast_tokens, user, host) & (fast_tokens.c.client == client)
                )
            ).all()
        return [FastToken(row.token_hash, row.mechanism, row.expiry) for row in rows]

    def _replace_fast_tokens(
        self, user: str, host: str, client: str, keep: list[str], add: FastToken | None
    ) -> None:
        with _writing(self._db) as conn:
            mine = _owned(fast_tokens, user, host) & (fast_tokens.c.client == client)
            conn.execute(delete(fast_tokens).where(mine & fast_tokens.c.token_hash.not_in(keep)))
            if add is not None:
                conn.execute(
                    fast_tokens.insert().values(
                        host=host,
                        username=user,
                        client=client,
                        token_hash=add.token_hash,
                        mechanism=add.mechanism,
                        expiry=add.expiry,
                    )
                )

    def store_offline(self, user: str, host: str, stanza_xml: str, limit: int) -> Deferred[bool]:
        self._offline_stores += 1
        self._no_offline.discard((user, host))
        return self._run(self._store_offline, user, host, stanza_xml, limit)

    def pop_offline(self, user: str, host: str) -> Deferred[list[str]]:
        key = (user, host)
        if key in self._no_offline:
            return succeed([])
        stores_before = self._offline_stores

        def emptied(stanzas: list[str]) -> list[str]:
            # Whatever was there is popped now, unless a store raced with the pop.
            if self._offline_stores == stores_before:
                if len(self._no_offline) >= NO_OFFLINE_LIMIT:
                    self._no_offline.clear()
                self._no_offline.add(key)
            return stanzas

        return self._run(self._pop_offline, user, host).addCallback(emptied)

    def _store_offline(self, user: str, host: str, stanza_xml: str, limit: int) -> bool:
        with _writing(self._db) as conn:
            count = conn.execute(
                select(func.count())
                .select_from(offline_messages)
                .where(_owned(offline_messages, user, host))
            ).scalar_one()
            if count >= limit:
                return False
            conn.execute(
                offline_messages.insert().values(
                    host=host, username=user, stanza=stanza_xml, stored_at=datetime.now(UTC)
                )
            )
            return True

    def _pop_offline(self, user: str, host: str) -> list[str]:
        # Nearly every login finds nothing: look first, without a write transaction.
        if not self._read_one(_ANY_OFFLINE, user, host):
            return []
        with _writing(self._db) as conn:
            rows = conn.execute(
                select(offline_messages.c.id, offline_messages.c.stanza)
                .where(_owned(offline_messages, user, host))
                .order_by(offline_messages.c.id)
            ).all()
            # Delete by id, not by owner: a message stored meanwhile by another
            # connection (PostgreSQL) was not returned, so it must stay.
            ids = [row.id for row in rows]
            for start in range(0, len(ids), DELETE_CHUNK):
                chunk = ids[start : start + DELETE_CHUNK]
                conn.execute(delete(offline_messages).where(offline_messages.c.id.in_(chunk)))
        return [row.stanza for row in rows]

    # -- privacy lists -----------------------------------------------------------

    def get_privacy(self, user: str, host: str) -> Deferred[PrivacySettings]:
        return self._run(self._get_privacy, user, host)

    def write_privacy(
        self,
        user: str,
        host: str,
        lists: Mapping[str, Sequence[PrivacyItem]],
        default: str | None,
    ) -> Deferred[None]:
        return self._run(self._write_privacy, user, host, lists, default)

    def _get_privacy(self, user: str, host: str) -> PrivacySettings:
        with self._db.connect() as conn:
            default = conn.execute(
                select(privacy_default.c.name).where(_owned(privacy_default, user, host))
            ).scalar_one_or_none()
            rows = conn.execute(
                select(privacy_lists.c.name, privacy_lists.c.items_json).where(
                    _owned(privacy_lists, user, host)
                )
            ).all()
        return PrivacySettings(
            default=default,
            lists={row.name: _load_privacy_items(row.items_json) for row in rows},
        )

    def _write_privacy(
        self,
        user: str,
        host: str,
        lists: Mapping[str, Sequence[PrivacyItem]],
        default: str | None,
    ) -> None:
        # One transaction: a list and the default naming it are stored together or
        # not at all (a block creates its list and makes it the default at once).
        with _writing(self._db) as conn:
            for name, items in lists.items():
                conn.execute(
                    delete(privacy_lists).where(
                        _owned(privacy_lists, user, host), privacy_lists.c.name == name
                    )
                )
                if items:
                    conn.execute(
                        privacy_lists.insert().values(
                            host=host,
                            username=user,
                            name=name,
                            items_json=_dump_privacy_items(items),
                        )
                    )
            conn.execute(delete(privacy_default).where(_owned(privacy_default, user, host)))
            if default is not None:
                conn.execute(
                    privacy_default.insert().values(host=host, username=user, name=default)
                )

    # -- message archive -----------------------------------------------------------

    def append_archive(self, records: Sequence[ArchiveRecord]) -> Deferred[None]:
        return self._run(self._append_archive, list(records))

    def query_archive(self, user: str, host: str, query: ArchiveQuery) -> Deferred[ArchivePage]:
        return self._run(self._query_archive, user, host, query)

    def archive_bounds(
        self, user: str, host: str
    ) -> Deferred[tuple[ArchivedMessage | None, ArchivedMessage | None]]:
        return self._run(self._archive_bounds, user, host)

    def expire_archive(self, before: int) -> Deferred[int]:
        return self._run(self._expire_archive, before)

    def delete_archive(self, user: str, host: str) -> Deferred[None]:
        return self._run(self._delete_archive, user, host)

    def get_archive_prefs(self, user: str, host: str) -> Deferred[ArchivePrefs | None]:
        return self._run(self._get_archive_prefs, user, host)

    def set_archive_prefs(self, user: str, host: str, prefs: ArchivePrefs) -> Deferred[None]:
        return self._run(self._set_archive_prefs, user, host, prefs)

    def _append_archive(self, records: list[ArchiveRecord]) -> None:
        if not records:
            return
        rows = [
            {
                "host": r.host,
                "username": r.user,
                "archive_id": r.archive_id,
                "when_us": r.when,
                "with_bare": r.with_bare,
                "with_resource": r.with_jid.partition("/")[2] or None,
                "stanza": r.xml,
            }
            for r in records
        ]
        added = Counter((r.host, r.user) for r in records)
        upsert = self._insert(archive_counts)
        upsert = upsert.on_conflict_do_update(
            index_elements=[archive_counts.c.host, archive_counts.c.username],
            set_={"messages": archive_counts.c.messages + upsert.excluded.messages},
        )
        counts = [{"host": h, "username": u, "messages": n} for (h, u), n in added.items()]
        with _writing(self._db) as conn:
            conn.execute(archive_messages.insert(), rows)
            conn.execute(upsert, counts)

    def _query_archive(self, user: str, host: str, query: ArchiveQuery) -> ArchivePage:
        """One page, the size of the full result set and the page's index in it.

        All in one read transaction, so the three agree. Without filters the
        count is the archive's row in archive_counts; with them, an index-only
        COUNT on (owner, when_us, id) or (owner, with_bare, when_us, id) (a full
        JID in 'with' also reads the rows, for their resource). The index of a
        forward page costs nothing for the first and the last page, and one more
        COUNT, of the messages after the page, for a page in between: clients
        page forwards to catch up on recent messages, where that count is small.
        """
        t = archive_messages
        with self._db.connect() as conn:
            filters = [_owned(t, user, host)]
            if query.with_jid is not None:
                bare, _, resource = query.with_jid.partition("/")
                filters.append(t.c.with_bare == bare)
                if resource:
                    filters.append(t.c.with_resource == resource)
            if query.start is not None:
                filters.append(t.c.when_us >= query.start)
            if query.end is not None:
                filters.append(t.c.when_us <= query.end)
            if query.ids is not None:
                filters.append(t.c.archive_id.in_(query.ids))
            if query.after_id is not None:
                filters += _later_than(_archive_position(conn, user, host, query.after_id))
            if query.before_id is not None:
                filters += _earlier_than(_archive_position(conn, user, host, query.before_id))
            where = list(filters)
            if query.after is not None:
                where += _later_than(_archive_position(conn, user, host, query.after))
            if query.before is not None:
                where += _earlier_than(_archive_position(conn, user, host, query.before))
            order = (t.c.when_us, t.c.id)
            if query.reverse:
                order = (t.c.when_us.desc(), t.c.id.desc())
            rows = conn.execute(
                select(t.c.archive_id, t.c.when_us, t.c.id, t.c.stanza)
                .where(*where)
                .order_by(*order)
                .limit(query.limit + 1)
            ).all()
            complete = len(rows) <= query.limit
            rows = rows[: query.limit]
            if query.reverse:
                rows.reverse()
            # Only the owner term: the whole archive, whose size is kept as it changes.
            unfiltered = len(filters) == 1
            count = _archive_size(conn, user, host) if unfiltered else _count(conn, filters)
            index = None
            if rows:
                index = _page_index(conn, query, filters, rows, complete, count)
        found = [ArchivedMessage(r.archive_id, r.when_us, r.stanza) for r in rows]
        return ArchivePage(found, complete, count, index)

    def _archive_bounds(
        self, user: str, host: str
    ) -> tuple[ArchivedMessage | None, ArchivedMessage | None]:
        t = archive_messages
        bounds = []
        with self._db.connect() as conn:
            for order in ((t.c.when_us, t.c.id), (t.c.when_us.desc(), t.c.id.desc())):
                row = conn.execute(
                    select(t.c.archive_id, t.c.when_us, t.c.stanza)
                    .where(_owned(t, user, host))
                    .order_by(*order)
                    .limit(1)
                ).first()
                bounds.append(None if row is None else ArchivedMessage(*row))
        return bounds[0], bounds[1]

    def _expire_archive(self, before: int) -> int:
        t, counts = archive_messages, archive_counts
        with _writing(self._db) as conn:
            expired = conn.execute(
                select(t.c.host, t.c.username, func.count().label("messages"))
                .where(t.c.when_us < before)
                .group_by(t.c.host, t.c.username)
            ).all()
            if not expired:
                return 0
            conn.execute(
                counts.update()
                .where(counts.c.host == bindparam("b_host"))
                .where(counts.c.username == bindparam("b_user"))
                .values(messages=counts.c.messages - bindparam("b_messages")),
                [{"b_host": h, "b_user": u, "b_messages": n} for h, u, n in expired],
            )
            conn.execute(delete(t).where(t.c.when_us < before))
        return sum(row.messages for row in expired)

    def _delete_archive(self, user: str, host: str) -> None:
        with _writing(self._db) as conn:
            for table in (archive_messages, archive_counts, archive_prefs):
                conn.execute(delete(table).where(_owned(table, user, host)))

    def _get_archive_prefs(self, user: str, host: str) -> ArchivePrefs | None:
        with self._db.connect() as conn:
            row = conn.execute(
                select(archive_prefs).where(_owned(archive_prefs, user, host))
            ).first()
        if row is None:
            return None
        return ArchivePrefs(
            row.default_policy,
            frozenset(json.loads(row.always_json)),
            frozenset(json.loads(row.never_json)),
        )

    def _set_archive_prefs(self, user: str, host: str, prefs: ArchivePrefs) -> None:
        with _writing(self._db) as conn:
            conn.execute(delete(archive_prefs).where(_owned(archive_prefs, user, host)))
            conn.execute(
                archive_prefs.insert().values(
                    host=host,
                    username=user,
                    default_policy=prefs.default,
                    always_json=json.dumps(sorted(prefs.always)),
                    never_json=json.dumps(sorted(prefs.never)),
                )
            )


# -- helpers (all run in the pool thread) ---------------------------------------


def _archive_position(conn: Connection, user: str, host: str, archive_id: str) -> tuple[int, int]:
    """Where an archive id sorts: (when_us, id); L{UnknownArchiveId} if it is not there."""
    t = archive_messages
    row = conn.execute(
        select(t.c.when_us, t.c.id).where(_owned(t, user, host), t.c.archive_id == archive_id)
    ).first()
    if row is None:
        raise UnknownArchiveId(archive_id)
    return row.when_us, row.id


def _later_than(position: tuple[int, int]) -> list[ColumnElement[bool]]:
    """Rows after (when_us, id); the first term lets the owner index bound the scan."""
    t = archive_messages
    when, row_id = position
    return [t.c.when_us >= when, or_(t.c.when_us > when, t.c.id > row_id)]


def _earlier_than(position: tuple[int, int]) -> list[ColumnElement[bool]]:
    t = archive_messages
    when, row_id = position
    return [t.c.when_us <= when, or_(t.c.when_us < when, t.c.id < row_id)]


def _archive_size(conn: Connection, user: str, host: str) -> int:
    """How many messages the archive holds, as archive_counts keeps it."""
    size = conn.execute(
        select(archive_counts.c.messages).where(_owned(archive_counts, user, host))
    ).scalar_one_or_none()
    return size or 0


def _count(conn: Connection, where: list[ColumnElement[bool]]) -> int:
    return conn.execute(
        select(func.count()).select_from(archive_messages).where(*where)
    ).scalar_one()


def _page_index(
    conn: Connection,
    query: ArchiveQuery,
    filters: list[ColumnElement[bool]],
    rows: Sequence[Any],
    complete: bool,
    count: int,
) -> int | None:
    """Where a forward page's first row sits among the C{count} rows C{filters} match.

    None for a backward page (RSM <before/>): see L{imserver.archive.ArchivePage}.
    The full set is the rows before the page, the page and the rows after it
    (XEP-0059 §2.2): a page without RSM <after/> starts the set, a complete one
    ends it, and for a page in between the rows after it are counted.
    """
    if query.reverse:
        return None
    if query.after is None:
        return 0
    later = 0
    if not complete:
        t, last = archive_messages, rows[-1]
        # Two plain ranges: SQLite counts these index entries faster than one scan
        # testing _later_than's OR on each (2 ms against 3 for 50,000).
        later = _count(conn, [*filters, t.c.when_us > last.when_us])
        later += _count(conn, [*filters, t.c.when_us == last.when_us, t.c.id > last.id])
    return count - len(rows) - later


def _guarded(fn: Callable[..., T], *args: Any) -> T:
    """Call C{fn}, turning database and file-system failures into L{StoreError}."""
    try:
        return fn(*args)
    except (SQLAlchemyError, OSError) as e:
        raise StoreError(f"{fn.__name__.lstrip('_')} failed: {e}") from e


@contextmanager
def _writing(engine: Engine) -> Iterator[Connection]:
    """One write transaction: committed when the block ends, rolled back if it raises."""
    with engine.execution_options(**{_WRITE_OPTION: True}).begin() as conn:
        yield conn


def _configure_sqlite(engine: Engine) -> None:
    """Per-connection SQLite settings, and transactions SQLAlchemy really controls.

    Python's sqlite3 module (before 3.12's autocommit attribute) only opens a
    transaction before INSERT/UPDATE/DELETE, so DDL in a migration and the reads
    before a write would run outside it. Switching that off and emitting BEGIN
    ourselves makes every transaction span all of its statements. Writes use
    BEGIN IMMEDIATE: they take the write lock up front, so another process
    (an admin command) makes them wait for busy_timeout instead of failing when
    a read lock cannot be upgraded.
    """

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn):
        options = conn.get_execution_options()
        if options.get(_SINGLE_OPTION, False):
            return  # one statement: SQLite runs it in a transaction of its own
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get(_WRITE_OPTION, False) else "BEGIN")


def _owned(table: Table, user: str, host: str) -> ColumnElement[bool]:
    """The rows of C{table} that belong to user@host."""
    return (table.c.host == host) & (table.c.username == user)


def _exists(conn: Connection, user: str, host: str) -> bool:
    row = conn.execute(select(users.c.username).where(_owned(users, user, host))).first()
    return row is not None


def _insert_credentials(conn: Connection, user: str, host: str, creds: Credentials) -> None:
    rows = [
        {
            "host": host,
            "username": user,
            "mechanism": mechanism,
            "salt": keys.salt,
            "stored_key": keys.stored_key,
            "server_key": keys.server_key,
            "iterations": keys.iterations,
        }
        for mechanism, keys in creds.keys.items()
    ]
    if rows:
        conn.execute(credentials.insert(), rows)


def _dump_privacy_items(items: Sequence[PrivacyItem]) -> str:
    return json.dumps(
        [
            {
                "order": item.order,
                "action": item.action,
                "type": item.type,
                "value": item.value,
                "stanzas": sorted(item.stanzas),
            }
            for item in items
        ]
    )


def _load_privacy_items(text: str) -> list[PrivacyItem]:
    return [
        PrivacyItem(
            order=entry["order"],
            action=entry["action"],
            type=entry["type"],
            value=entry["value"],
            stanzas=frozenset(entry["stanzas"]),
        )
        for entry in json.loads(text)
    ]
