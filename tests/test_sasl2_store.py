"""The FAST token store (XEP-0484): hashes only, per client, replaced in one transaction."""

from __future__ import annotations

from test_storage import ALL_STEPS, HOST, StoreTestCase
from twisted.internet import defer

from imserver.credentials import FastToken, make_credentials
from imserver.storage import schema


class FastTokenTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_tokens_per_client_replaced_and_deleted_with_the_user(self):
        store = yield self.open()
        yield store.create_user("alice", HOST, make_credentials("secret"))
        one = FastToken("a" * 64, "HT-SHA-256-NONE", 1000)
        two = FastToken("b" * 64, "HT-SHA-256-NONE", 2000)
        other = FastToken("c" * 64, "HT-SHA-256-NONE", 3000)
        yield store.replace_fast_tokens("alice", HOST, "phone", [], one)
        yield store.replace_fast_tokens("alice", HOST, "laptop", [], other)
        yield store.replace_fast_tokens("alice", HOST, "phone", [one.token_hash], two)
        self.assertEqual(
            sorted((yield store.get_fast_tokens("alice", HOST, "phone")), key=lambda t: t.expiry),
            [one, two],
        )
        yield store.replace_fast_tokens("alice", HOST, "phone", [two.token_hash], None)
        self.assertEqual((yield store.get_fast_tokens("alice", HOST, "phone")), [two])
        self.assertEqual((yield store.get_fast_tokens("alice", HOST, "laptop")), [other])
        yield store.delete_user("alice", HOST)
        self.assertEqual(self.raw_sql("SELECT count(*) FROM fast_tokens"), [(0,)])

    @defer.inlineCallbacks
    def test_step_five_adds_the_table_to_an_older_database(self):
        self.patch(schema, "MIGRATIONS", ALL_STEPS[:4])
        store = yield self.open()
        yield store.stop()
        self.assertEqual(self.stored_version(), 4)
        self.patch(schema, "MIGRATIONS", ALL_STEPS[:5])
        store = yield self.open()
        self.assertEqual(self.stored_version(), 5)
        self.assertEqual((yield store.get_fast_tokens("alice", HOST, "x")), [])
