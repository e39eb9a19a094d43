"""The SQL store against a real SQLite file: round trips, atomicity, restarts, migrations."""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

from sqlalchemy import create_engine, inspect
from sqlalchemy.exc import SQLAlchemyError
from twisted.internet import defer
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from imserver.archive import ArchiveQuery, ArchiveRecord
from imserver.credentials import check_password, make_credentials
from imserver.errors import StoreError, UserExists, UserNotFound
from imserver.interfaces import IStore
from imserver.privacy import PrivacyItem, PrivacySettings
from imserver.roster import Roster, RosterItem
from imserver.storage import SQLStore, open_store, schema
from imserver.stream.parser import parse_stanza

HOST = "example.org"
OTHER_HOST = "example.net"
#: The migration steps as released (tests patch schema.MIGRATIONS).
ALL_STEPS = list(schema.MIGRATIONS)


def request(contact: str, inner: str = "") -> str:
    """A stored subscription request from C{contact} to alice, as the server keeps it."""
    return (
        f"<presence type='subscribe' from='{contact}' to='alice@{HOST}' id='sub-1'>"
        f"{inner}</presence>"
    )


#: A request with status text and a XEP-0172 nick.
EVE = request(
    "eve@example.com",
    "<status>It is Eve</status><nick xmlns='http://jabber.org/protocol/nick'>Eve</nick>",
)


class StoreTestCase(unittest.TestCase):
    """A fresh SQLite file per test, and stores that are stopped when the test ends."""

    def setUp(self) -> None:
        # Like trial, work in a scratch directory: mktemp() paths are relative to it.
        scratch = tempfile.mkdtemp(prefix="imserver-test-")
        self.addCleanup(shutil.rmtree, scratch, ignore_errors=True)
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(scratch)
        self.db_path = (Path(self.mktemp()) / "data" / "store.sqlite").resolve()
        self.url = f"sqlite:///{self.db_path}"

    @defer.inlineCallbacks
    def open(self):
        """Start a store on this test's database (a second call is a restart)."""
        store = open_store(self.url)
        self.addCleanup(store.stop)
        yield store.start()
        return store

    def raw_sql(self, statement: str) -> list[tuple]:
        """Run one statement on the file directly, behind the store's back."""
        db = sqlite3.connect(self.db_path)
        try:
            with db:
                return db.execute(statement).fetchall()
        finally:
            db.close()

    def stored_version(self) -> int:
        return self.raw_sql("SELECT version FROM schema_version")[0][0]


class LifecycleTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_provides_istore(self):
        store = yield self.open()
        self.assertTrue(verifyObject(IStore, store))
        self.assertIsInstance(store, SQLStore)

    @defer.inlineCallbacks
    def test_creates_missing_directory_and_uses_wal(self):
        self.assertFalse(self.db_path.parent.exists())
        yield self.open()
        self.assertTrue(self.db_path.exists())
        self.assertEqual(self.raw_sql("PRAGMA journal_mode"), [("wal",)])

    @defer.inlineCallbacks
    def test_foreign_keys_enforced(self):
        store = yield self.open()
        with store._db.connect() as conn:
            self.assertEqual(conn.exec_driver_sql("PRAGMA foreign_keys").scalar(), 1)
            # A credentials row for an account that does not exist is refused.
            with self.assertRaises(SQLAlchemyError):
                conn.execute(
                    schema.credentials.insert().values(
                        host=HOST,
                        username="ghost",
                        mechanism="SCRAM-SHA-1",
                        salt=b"s",
                        stored_key=b"k",
                        server_key=b"k",
                        iterations=1,
                    )
                )

    def test_not_started(self):
        store = open_store(self.url)
        return self.assertFailure(store.user_exists("alice", HOST), StoreError)

    @defer.inlineCallbacks
    def test_stop_then_start_again(self):
        store = yield self.open()
        yield store.create_user("alice", HOST, make_credentials("pw"))
        yield store.stop()
        yield self.assertFailure(store.user_exists("alice", HOST), StoreError)
        yield store.start()
        self.assertTrue((yield store.user_exists("alice", HOST)))

    @defer.inlineCallbacks
    def test_data_survives_restart(self):
        store = yield self.open()
        yield store.create_user("alice", HOST, make_credentials("secret"))
        yield store.write_roster(
            "alice", HOST, 3, {"bob@example.net": RosterItem("bob@example.net", "Bob")}, {}
        )
        yield store.store_offline("alice", HOST, "<message>kept</message>", 10)
        yield store.write_privacy("alice", HOST, {"l": [PrivacyItem(1, "deny")]}, "l")
        yield store.stop()

        store = yield self.open()
        creds = yield store.get_credentials("alice", HOST)
        self.assertTrue(check_password(creds, "secret"))
        roster = yield store.get_roster("alice", HOST)
        self.assertEqual(roster.version, 3)
        self.assertEqual(roster.items["bob@example.net"].name, "Bob")
        self.assertEqual((yield store.pop_offline("alice", HOST)), ["<message>kept</message>"])
        privacy = yield store.get_privacy("alice", HOST)
        self.assertEqual(privacy, PrivacySettings("l", {"l": [PrivacyItem(1, "deny")]}))

    @defer.inlineCallbacks
    def test_failed_start_releases_threads(self):
        # A directory where the database file should be: SQLite cannot open it.
        self.db_path.mkdir(parents=True)
        store = open_store(self.url)
        yield self.assertFailure(store.start(), StoreError)
        self.assertIsNone(store._pool)


class UserTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_create_and_exists(self):
        store = yield self.open()
        self.assertFalse((yield store.user_exists("alice", HOST)))
        self.assertIsNone((yield store.get_credentials("alice", HOST)))
        yield store.create_user("alice", HOST, make_credentials("secret"))
        self.assertTrue((yield store.user_exists("alice", HOST)))

    @defer.inlineCallbacks
    def test_credentials_round_trip(self):
        store = yield self.open()
        original = make_credentials("pässwörd")
        yield store.create_user("alice", HOST, original)
        stored = yield store.get_credentials("alice", HOST)
        self.assertEqual(stored, original)
        self.assertEqual(set(stored.keys), {"SCRAM-SHA-1", "SCRAM-SHA-256"})
        self.assertTrue(check_password(stored, "pässwörd"))
        self.assertFalse(check_password(stored, "wrong"))

    @defer.inlineCallbacks
    def test_duplicate(self):
        store = yield self.open()
        yield store.create_user("alice", HOST, make_credentials("one"))
        yield self.assertFailure(
            store.create_user("alice", HOST, make_credentials("two")), UserExists
        )
        self.assertTrue(check_password((yield store.get_credentials("alice", HOST)), "one"))

    @defer.inlineCallbacks
    def test_set_credentials(self):
        store = yield self.open()
        yield store.create_user("alice", HOST, make_credentials("old"))
        yield store.set_credentials("alice", HOST, make_credentials("new"))
        creds = yield store.get_credentials("alice", HOST)
        self.assertTrue(check_password(creds, "new"))
        self.assertFalse(check_password(creds, "old"))

    @defer.inlineCallbacks
    def test_set_credentials_unknown_user(self):
        store = yield self.open()
        yield self.assertFailure(
            store.set_credentials("nobody", HOST, make_credentials("x")), UserNotFound
        )
        self.assertFalse((yield store.user_exists("nobody", HOST)))

    @defer.inlineCallbacks
    def test_delete_unknown_user(self):
        store = yield self.open()
        yield self.assertFailure(store.delete_user("nobody", HOST), UserNotFound)

    @defer.inlineCallbacks
    def test_delete_removes_everything(self):
        store = yield self.open()
        yield store.create_user("alice", HOST, make_credentials("secret"))
        yield store.write_roster(
            "alice", HOST, 2, {"bob@example.net": RosterItem("bob@example.net")}, {"c@x": True}
        )
        yield store.store_offline("alice", HOST, "<message/>", 10)
        yield store.write_privacy("alice", HOST, {"l": [PrivacyItem(1, "deny")]}, "l")

        yield store.delete_user("alice", HOST)

        self.assertFalse((yield store.user_exists("alice", HOST)))
        self.assertIsNone((yield store.get_credentials("alice", HOST)))
        self.assertEqual((yield store.get_roster("alice", HOST)), Roster())
        self.assertEqual((yield store.pop_offline("alice", HOST)), [])
        self.assertEqual((yield store.get_privacy("alice", HOST)), PrivacySettings())
        for table in schema.USER_TABLES:
            self.assertEqual(self.raw_sql(f"SELECT count(*) FROM {table.name}"), [(0,)], table.name)
        # The name is free again.
        yield store.create_user("alice", HOST, make_credentials("again"))

    @defer.inlineCallbacks
    def test_sql_errors_become_store_errors(self):
        store = yield self.open()
        self.raw_sql("DROP TABLE roster_versions")
        failure = yield self.assertFailure(store.get_roster("alice", HOST), StoreError)
        self.assertIsInstance(failure.__cause__, SQLAlchemyError)


class RosterTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_empty(self):
        store = yield self.open()
        roster = yield store.get_roster("alice", HOST)
        self.assertEqual(roster, Roster(version=0, items={}, pending_in={}))

    @defer.inlineCallbacks
    def test_round_trip(self):
        store = yield self.open()
        bob = RosterItem(
            "bob@example.net",
            name="Bob",
            subscription="both",
            groups=("Friends", "Work", "Ünïcode"),
        )
        carol = RosterItem("carol@example.com", subscription="none", ask=True, approved=True)
        yield store.write_roster(
            "alice",
            HOST,
            7,
            {bob.jid: bob, carol.jid: carol},
            {"dave@example.com": request("dave@example.com"), "eve@example.com": EVE},
        )
        roster = yield store.get_roster("alice", HOST)
        self.assertEqual(roster.version, 7)
        self.assertEqual(roster.items, {bob.jid: bob, carol.jid: carol})
        self.assertEqual(
            roster.pending_in,
            {"dave@example.com": request("dave@example.com"), "eve@example.com": EVE},
        )

    @defer.inlineCallbacks
    def test_update_and_remove(self):
        store = yield self.open()
        bob = RosterItem("bob@example.net", subscription="to", groups=("A",))
        carol = RosterItem("carol@example.com")
        yield store.write_roster(
            "alice", HOST, 1, {bob.jid: bob, carol.jid: carol}, {"dave@example.com": EVE}
        )
        changed = bob.evolve(subscription="both", groups=(), name="Robert")
        yield store.write_roster(
            "alice", HOST, 2, {bob.jid: changed, carol.jid: None}, {"dave@example.com": None}
        )
        roster = yield store.get_roster("alice", HOST)
        self.assertEqual(roster, Roster(version=2, items={bob.jid: changed}, pending_in={}))

    @defer.inlineCallbacks
    def test_repeated_pending_and_unknown_removal(self):
        store = yield self.open()
        yield store.write_roster("alice", HOST, 1, {"x@y": None}, {"d@e": request("d@e")})
        yield store.write_roster("alice", HOST, 2, {}, {"d@e": EVE, "f@g": None})
        roster = yield store.get_roster("alice", HOST)
        self.assertEqual(roster, Roster(version=2, pending_in={"d@e": EVE}))

    @defer.inlineCallbacks
    def test_failed_write_applies_nothing(self):
        store = yield self.open()
        bob = RosterItem("bob@example.net", subscription="both")
        yield store.write_roster("alice", HOST, 1, {bob.jid: bob}, {"dave@example.com": EVE})
        before = yield store.get_roster("alice", HOST)

        # The removal, the new item and the pending changes come before the bad
        # item, so they are executed and must be rolled back with it.
        bad = RosterItem("mallory@example.com", subscription="sometimes")
        write = store.write_roster(
            "alice",
            HOST,
            2,
            {
                bob.jid: None,
                "carol@example.com": RosterItem("carol@example.com"),
                bad.jid: bad,
            },
            {"dave@example.com": None, "eve@example.com": EVE},
        )
        failure = yield self.assertFailure(write, StoreError)
        self.assertIsInstance(failure.__cause__, SQLAlchemyError)
        self.assertEqual((yield store.get_roster("alice", HOST)), before)


class OfflineTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_order_and_pop(self):
        store = yield self.open()
        messages = [f"<message id='{i}'><body>{i}</body></message>" for i in range(5)]
        for message in messages:
            self.assertTrue((yield store.store_offline("alice", HOST, message, 100)))
        self.assertEqual((yield store.pop_offline("alice", HOST)), messages)
        self.assertEqual((yield store.pop_offline("alice", HOST)), [])

    @defer.inlineCallbacks
    def test_known_empty_is_forgotten_by_a_store(self):
        """A login's pop is answered from memory once empty, until a message is stored."""
        store = yield self.open()
        self.assertEqual((yield store.pop_offline("alice", HOST)), [])
        # Behind the store's back, so only a query would see it: memory answers.
        self.raw_sql(
            "INSERT INTO offline_messages (host, username, stanza, stored_at) "
            f"VALUES ('{HOST}', 'alice', '<message id=\"x\"/>', '2026-01-01')"
        )
        self.assertEqual((yield store.pop_offline("alice", HOST)), [])
        self.assertTrue((yield store.store_offline("alice", HOST, "<message id='1'/>", 10)))
        self.assertEqual(
            (yield store.pop_offline("alice", HOST)), ['<message id="x"/>', "<message id='1'/>"]
        )

    @defer.inlineCallbacks
    def test_a_store_racing_a_pop_is_not_lost(self):
        store = yield self.open()
        popping = store.pop_offline("alice", HOST)  # queued first: finds nothing
        stored = store.store_offline("alice", HOST, "<message id='1'/>", 10)
        self.assertEqual((yield popping), [])
        self.assertTrue((yield stored))
        self.assertEqual((yield store.pop_offline("alice", HOST)), ["<message id='1'/>"])

    @defer.inlineCallbacks
    def test_limit(self):
        store = yield self.open()
        self.assertTrue((yield store.store_offline("alice", HOST, "<message id='1'/>", 2)))
        self.assertTrue((yield store.store_offline("alice", HOST, "<message id='2'/>", 2)))
        self.assertFalse((yield store.store_offline("alice", HOST, "<message id='3'/>", 2)))
        # Other users have their own count.
        self.assertTrue((yield store.store_offline("bob", HOST, "<message id='b'/>", 2)))
        self.assertEqual(
            (yield store.pop_offline("alice", HOST)),
            ["<message id='1'/>", "<message id='2'/>"],
        )
        # Popping frees the space again.
        self.assertTrue((yield store.store_offline("alice", HOST, "<message id='4'/>", 2)))
        self.assertEqual((yield store.pop_offline("alice", HOST)), ["<message id='4'/>"])
        self.assertEqual((yield store.pop_offline("bob", HOST)), ["<message id='b'/>"])

    @defer.inlineCallbacks
    def test_pop_more_than_one_delete_chunk(self):
        store = yield self.open()
        count = 1200
        for i in range(count):
            yield store.store_offline("alice", HOST, f"<message id='{i}'/>", count)
        popped = yield store.pop_offline("alice", HOST)
        self.assertEqual(popped, [f"<message id='{i}'/>" for i in range(count)])
        self.assertEqual((yield store.pop_offline("alice", HOST)), [])


class PrivacyTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_empty(self):
        store = yield self.open()
        self.assertEqual((yield store.get_privacy("alice", HOST)), PrivacySettings())

    @defer.inlineCallbacks
    def test_round_trip_and_default(self):
        store = yield self.open()
        block = [
            PrivacyItem(1, "deny", "jid", "spam@example.com"),
            PrivacyItem(2, "deny", "group", "Blocked", frozenset({"message", "presence-in"})),
            PrivacyItem(3, "allow", "subscription", "both", frozenset({"iq"})),
            PrivacyItem(4, "allow"),
        ]
        quiet = [PrivacyItem(10, "deny", stanzas=frozenset({"presence-out"}))]
        yield store.write_privacy("alice", HOST, {"block": block, "quiet": quiet}, "block")
        privacy = yield store.get_privacy("alice", HOST)
        self.assertEqual(privacy, PrivacySettings("block", {"block": block, "quiet": quiet}))

    @defer.inlineCallbacks
    def test_replace_remove_and_decline_default(self):
        store = yield self.open()
        lists = {"l": [PrivacyItem(1, "deny")], "m": [PrivacyItem(1, "allow")]}
        yield store.write_privacy("alice", HOST, lists, "l")
        replaced = [PrivacyItem(5, "allow", "jid", "bob@example.net")]
        yield store.write_privacy("alice", HOST, {"l": replaced, "m": []}, "l")
        self.assertEqual(
            (yield store.get_privacy("alice", HOST)), PrivacySettings("l", {"l": replaced})
        )
        yield store.write_privacy("alice", HOST, {}, None)
        self.assertEqual(
            (yield store.get_privacy("alice", HOST)), PrivacySettings(None, {"l": replaced})
        )

    @defer.inlineCallbacks
    def test_failed_write_leaves_neither_list_nor_default(self):
        """A list and the default naming it are one transaction (a block makes both)."""
        store = yield self.open()
        yield store.write_privacy("alice", HOST, {"old": [PrivacyItem(1, "allow")]}, "old")
        # The database refuses the default's row, after the list's row was written.
        self.raw_sql(
            "CREATE TRIGGER refuse_default BEFORE INSERT ON privacy_default"
            " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )
        block = [PrivacyItem(0, "deny", "jid", "spam@example.com")]
        yield self.assertFailure(
            store.write_privacy("alice", HOST, {"blocklist": block}, "blocklist"), StoreError
        )
        self.assertEqual(
            (yield store.get_privacy("alice", HOST)),
            PrivacySettings("old", {"old": [PrivacyItem(1, "allow")]}),
        )


class VirtualHostTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_same_username_on_two_hosts(self):
        store = yield self.open()
        yield store.create_user("alice", HOST, make_credentials("first"))
        yield store.create_user("alice", OTHER_HOST, make_credentials("second"))
        item = RosterItem("bob@example.com")
        yield store.write_roster("alice", HOST, 4, {item.jid: item}, {"c@d": request("c@d")})
        yield store.store_offline("alice", HOST, "<message/>", 1)
        self.assertTrue((yield store.store_offline("alice", OTHER_HOST, "<message/>", 1)))
        yield store.write_privacy("alice", HOST, {"l": [PrivacyItem(1, "deny")]}, "l")

        self.assertTrue(check_password((yield store.get_credentials("alice", HOST)), "first"))
        other = yield store.get_credentials("alice", OTHER_HOST)
        self.assertTrue(check_password(other, "second"))
        self.assertEqual((yield store.get_roster("alice", OTHER_HOST)), Roster())
        self.assertEqual((yield store.get_privacy("alice", OTHER_HOST)), PrivacySettings())

        yield store.delete_user("alice", HOST)
        self.assertTrue((yield store.user_exists("alice", OTHER_HOST)))
        self.assertEqual((yield store.pop_offline("alice", OTHER_HOST)), ["<message/>"])


def _add_origin_column(connection) -> None:
    """A stand-in later version: a new column, filled in for existing rows."""
    connection.exec_driver_sql("ALTER TABLE offline_messages ADD COLUMN origin TEXT")
    connection.exec_driver_sql("UPDATE offline_messages SET origin = 'before-upgrade'")


def _broken_step(connection) -> None:
    _add_origin_column(connection)
    raise RuntimeError("step fails after changing the schema")


class MigrationTests(StoreTestCase):
    def test_fresh_database_has_every_table(self):
        engine = create_engine(self.url)
        self.db_path.parent.mkdir(parents=True)
        self.addCleanup(engine.dispose)
        with engine.begin() as conn:
            self.assertEqual(schema.migrate(conn), len(schema.MIGRATIONS))
        self.assertEqual(set(inspect(engine).get_table_names()), set(schema.metadata.tables))
        # Already current: nothing to do.
        with engine.begin() as conn:
            self.assertEqual(schema.migrate(conn), len(schema.MIGRATIONS))

    @defer.inlineCallbacks
    def _store_at_version_one(self):
        """A database built by the first step only, holding data of every kind.

        Version-1 rows are written as version 1 wrote them: a pending request
        was the contact's JID alone.
        """
        self.patch(schema, "MIGRATIONS", ALL_STEPS[:1])
        store = yield self.open()
        yield store.create_user("alice", HOST, make_credentials("secret"))
        bob = RosterItem("bob@example.net", subscription="both", groups=("G",))
        yield store.write_roster("alice", HOST, 5, {bob.jid: bob}, {})
        yield store.store_offline("alice", HOST, "<message id='1'/>", 10)
        yield store.stop()
        self.raw_sql(
            "INSERT INTO roster_pending_in (host, username, contact)"
            f" VALUES ('{HOST}', 'alice', 'c@d')"
        )
        self.assertEqual(self.stored_version(), 1)
        return bob

    @defer.inlineCallbacks
    def test_upgrade_on_start_keeps_rows(self):
        bob = yield self._store_at_version_one()
        self.patch(schema, "MIGRATIONS", [*ALL_STEPS, _add_origin_column])

        store = yield self.open()
        self.assertEqual(self.stored_version(), len(ALL_STEPS) + 1)
        origins = self.raw_sql("SELECT origin FROM offline_messages")
        self.assertEqual(origins, [("before-upgrade",)])
        self.assertTrue(check_password((yield store.get_credentials("alice", HOST)), "secret"))
        roster = yield store.get_roster("alice", HOST)
        self.assertEqual(roster.version, 5)
        self.assertEqual(roster.items, {bob.jid: bob})
        self.assertEqual(list(roster.pending_in), ["c@d"])
        self.assertEqual((yield store.pop_offline("alice", HOST)), ["<message id='1'/>"])

    @defer.inlineCallbacks
    def test_version_two_keeps_whole_subscription_requests(self):
        """Step 2: older pending requests become the bare request they were redelivered as."""
        yield self._store_at_version_one()
        self.patch(schema, "MIGRATIONS", ALL_STEPS)
        store = yield self.open()
        self.assertEqual(self.stored_version(), len(ALL_STEPS))
        roster = yield store.get_roster("alice", HOST)
        old = parse_stanza(roster.pending_in["c@d"])
        self.assertEqual(
            (old.name, dict(old.attributes), old.children),
            ("presence", {"type": "subscribe", "from": "c@d", "to": f"alice@{HOST}"}, []),
        )
        # New requests keep everything the contact sent.
        yield store.write_roster("alice", HOST, 6, {}, {"eve@example.com": EVE})
        roster = yield store.get_roster("alice", HOST)
        self.assertEqual(roster.pending_in["eve@example.com"], EVE)
        # An upgraded table is the table a fresh database gets.
        upgraded = self.raw_sql("PRAGMA table_info(roster_pending_in)")
        yield store.stop()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.db_path}{suffix}").unlink(missing_ok=True)
        yield self.open()
        self.assertEqual(self.raw_sql("PRAGMA table_info(roster_pending_in)"), upgraded)

    @defer.inlineCallbacks
    def test_failed_upgrade_changes_nothing(self):
        yield self._store_at_version_one()
        self.patch(schema, "MIGRATIONS", [*ALL_STEPS, _broken_step])

        store = open_store(self.url)
        self.addCleanup(store.stop)
        yield self.assertFailure(store.start(), RuntimeError)
        self.assertEqual(self.stored_version(), 1)
        columns = [row[1] for row in self.raw_sql("PRAGMA table_info(offline_messages)")]
        self.assertNotIn("origin", columns)
        columns = [row[1] for row in self.raw_sql("PRAGMA table_info(roster_pending_in)")]
        self.assertNotIn("stanza", columns)

    @defer.inlineCallbacks
    def test_newer_database_is_refused(self):
        yield self._store_at_version_one()
        self.raw_sql("UPDATE schema_version SET version = 99")
        store = open_store(self.url)
        self.addCleanup(store.stop)
        failure = yield self.assertFailure(store.start(), StoreError)
        self.assertIn("99", str(failure))


def _records(user: str, times: range) -> list[ArchiveRecord]:
    return [
        ArchiveRecord(user, HOST, f"{user}-{t}", t, f"c{t % 2}@{OTHER_HOST}/r", "<message/>")
        for t in times
    ]


class ArchiveCountTests(StoreTestCase):
    """archive_counts answers <count/> for a whole archive: it follows every change."""

    @defer.inlineCallbacks
    def counts(self, store) -> tuple[int, int]:
        alice = yield store.query_archive("alice", HOST, ArchiveQuery(limit=0))
        bob = yield store.query_archive("bob", HOST, ArchiveQuery(limit=0))
        return alice.count, bob.count

    @defer.inlineCallbacks
    def test_counts_follow_appends_expiry_and_deletion(self):
        store = yield self.open()
        yield store.create_user("bob", HOST, make_credentials("secret"))
        yield store.append_archive(_records("alice", range(1, 6)))
        yield store.append_archive([*_records("bob", range(1, 3)), *_records("alice", range(6, 8))])
        yield store.append_archive(_records("bob", range(3, 4)))
        self.assertEqual((yield self.counts(store)), (7, 3))
        filtered = yield store.query_archive(
            "alice", HOST, ArchiveQuery(with_jid=f"c1@{OTHER_HOST}")
        )
        self.assertEqual(filtered.count, 4)

        self.assertEqual((yield store.expire_archive(3)), 4)
        self.assertEqual((yield self.counts(store)), (5, 1))
        self.assertEqual((yield store.expire_archive(3)), 0)

        yield store.delete_archive("alice", HOST)
        self.assertEqual((yield self.counts(store)), (0, 1))
        yield store.delete_user("bob", HOST)
        self.assertEqual((yield self.counts(store)), (0, 0))
        self.assertEqual(self.raw_sql("SELECT * FROM archive_counts"), [])

    @defer.inlineCallbacks
    def test_version_six_counts_the_archives_already_stored(self):
        self.patch(schema, "MIGRATIONS", ALL_STEPS[:5])
        store = yield self.open()
        yield store.stop()
        rows = [("alice", n) for n in range(4)] + [("bob", n) for n in range(2)]
        for user, n in rows:
            self.raw_sql(
                "INSERT INTO archive_messages"
                " (host, username, archive_id, when_us, with_bare, stanza)"
                f" VALUES ('{HOST}', '{user}', '{user}{n}', {n}, 'c@d', '<message/>')"
            )
        self.patch(schema, "MIGRATIONS", ALL_STEPS)
        store = yield self.open()
        self.assertEqual(self.stored_version(), 6)
        self.assertEqual((yield self.counts(store)), (4, 2))
        yield store.append_archive(_records("bob", range(10, 12)))
        self.assertEqual((yield self.counts(store)), (4, 4))
