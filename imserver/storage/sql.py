"""L{IStore} on SQLAlchemy Core, for SQLite and PostgreSQL.

Database calls block, so every public method hands its work to a thread pool of
its own and returns a Deferred; the reactor thread never waits on the database.
SQLite gets a single thread, which serialises all writes inside this process
and so avoids "database is locked" between our own connections. Each write is
one transaction, so a failure part-way leaves nothing of it behind.
"""

from __future__ import annotations

import json
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
    create_engine,
    delete,
    event,
    func,
    make_url,
    select,
)
from sqlalchemy.exc import SQLAlchemyError
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from imserver.credentials import Credentials, ScramKeys
from imserver.errors import StoreError, UserExists, UserNotFound
from imserver.interfaces import IStore
from imserver.privacy import PrivacyItem, PrivacySettings
from imserver.roster import Roster, RosterItem
from imserver.storage import schema
from imserver.storage.schema import (
    credentials,
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
#: Execution option marking a write transaction (SQLite then takes the write lock at BEGIN).
_WRITE_OPTION = "imserver_write"


@implementer(IStore)
class SQLStore:
    """Every store of L{IStore} in one SQL database named by a SQLAlchemy URL."""

    def __init__(self, url: str, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.url = url
        self._reactor = reactor
        self._sqlite = make_url(url).get_backend_name() == "sqlite"
        self._threads = 1 if self._sqlite else 4
        self._pool: ThreadPool | None = None
        self._engine: Engine | None = None

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

    @property
    def _db(self) -> Engine:
        if self._engine is None:
            raise StoreError("store is not started")
        return self._engine

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
        with self._db.connect() as conn:
            rows = conn.execute(select(credentials).where(_owned(credentials, user, host))).all()
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
        with self._db.connect() as conn:
            version = conn.execute(
                select(roster_versions.c.version).where(_owned(roster_versions, user, host))
            ).scalar_one_or_none()
            item_rows = conn.execute(
                select(roster_items).where(_owned(roster_items, user, host))
            ).all()
            pending = conn.execute(
                select(roster_pending_in.c.contact, roster_pending_in.c.stanza).where(
                    _owned(roster_pending_in, user, host)
                )
            ).all()
            roster = Roster(version=version or 0, pending_in=dict(pending))
        for row in item_rows:
            roster.items[row.contact] = RosterItem(
                jid=row.contact,
                name=row.name,
                subscription=row.subscription,
                ask=bool(row.ask),
                approved=bool(row.approved),
                groups=tuple(json.loads(row.groups)),
            )
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

    def store_offline(self, user: str, host: str, stanza_xml: str, limit: int) -> Deferred[bool]:
        return self._run(self._store_offline, user, host, stanza_xml, limit)

    def pop_offline(self, user: str, host: str) -> Deferred[list[str]]:
        return self._run(self._pop_offline, user, host)

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
        with self._db.connect() as conn:
            waiting = conn.execute(
                select(offline_messages.c.id).where(_owned(offline_messages, user, host)).limit(1)
            ).first()
        if waiting is None:
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


# -- helpers (all run in the pool thread) ---------------------------------------


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
        write = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


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
