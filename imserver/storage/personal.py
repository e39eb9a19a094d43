"""L{IPersonalStore} in SQL: PEP nodes and items, and per-account XML documents.

A mixin of L{imserver.storage.sql.SQLStore}: it uses the store's thread pool
(C{_run}) and engine (C{_db}) and adds nothing else, so one database holds it all.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, delete, func, select
from twisted.internet.defer import Deferred

from imserver.storage.schema import documents, pep_items, pep_nodes

#: Item ids per DELETE, well under SQLite's bound-parameter cap.
_CHUNK = 500


class PersonalStore:
    """PEP and document methods; the host class provides C{_run}, C{_db} and C{_write}."""

    # -- PEP ------------------------------------------------------------------------

    def load_pep(self, user: str, host: str) -> Deferred[dict]:
        return self._run(self._load_pep, user, host)

    def save_pep_node(
        self, user: str, host: str, node: str, config_json: str, dropped: Sequence[str]
    ) -> Deferred[None]:
        return self._run(self._save_pep_node, user, host, node, config_json, dropped)

    def put_pep_item(
        self,
        user: str,
        host: str,
        node: str,
        config_json: str | None,
        item_id: str,
        payload_xml: str,
        dropped: Sequence[str],
    ) -> Deferred[None]:
        return self._run(
            self._put_pep_item, user, host, node, config_json, item_id, payload_xml, dropped
        )

    def delete_pep_items(
        self, user: str, host: str, node: str, item_ids: Sequence[str] | None
    ) -> Deferred[None]:
        return self._run(self._delete_pep_items, user, host, node, item_ids)

    def delete_pep_node(self, user: str, host: str, node: str) -> Deferred[None]:
        return self._run(self._delete_pep_node, user, host, node)

    def _load_pep(self, user: str, host: str) -> dict:
        with self._db.connect() as conn:
            configs = conn.execute(
                select(pep_nodes.c.node, pep_nodes.c.config_json).where(
                    _owned(pep_nodes, user, host)
                )
            ).all()
            items = conn.execute(
                select(pep_items.c.node, pep_items.c.item_id, pep_items.c.payload)
                .where(_owned(pep_items, user, host))
                .order_by(pep_items.c.seq)
            ).all()
        nodes: dict = {row.node: (row.config_json, []) for row in configs}
        for row in items:
            if row.node in nodes:
                nodes[row.node][1].append((row.item_id, row.payload))
        return nodes

    def _save_pep_node(
        self, user: str, host: str, node: str, config_json: str, dropped: Sequence[str]
    ) -> None:
        with self._write() as conn:
            updated = conn.execute(
                pep_nodes.update()
                .where(_owned(pep_nodes, user, host), pep_nodes.c.node == node)
                .values(config_json=config_json)
            )
            if updated.rowcount == 0:
                conn.execute(
                    pep_nodes.insert().values(
                        host=host, username=user, node=node, config_json=config_json
                    )
                )
            _delete_items(conn, user, host, node, dropped)

    def _put_pep_item(
        self,
        user: str,
        host: str,
        node: str,
        config_json: str | None,
        item_id: str,
        payload_xml: str,
        dropped: Sequence[str],
    ) -> None:
        with self._write() as conn:
            if config_json is not None:
                conn.execute(
                    pep_nodes.insert().values(
                        host=host, username=user, node=node, config_json=config_json
                    )
                )
            _delete_items(conn, user, host, node, [*dropped, item_id])
            conn.execute(
                pep_items.insert().values(
                    host=host, username=user, node=node, item_id=item_id, payload=payload_xml
                )
            )

    def _delete_pep_items(
        self, user: str, host: str, node: str, item_ids: Sequence[str] | None
    ) -> None:
        with self._write() as conn:
            if item_ids is None:
                conn.execute(
                    delete(pep_items).where(_owned(pep_items, user, host), pep_items.c.node == node)
                )
            else:
                _delete_items(conn, user, host, node, item_ids)

    def _delete_pep_node(self, user: str, host: str, node: str) -> None:
        with self._write() as conn:
            conn.execute(
                delete(pep_items).where(_owned(pep_items, user, host), pep_items.c.node == node)
            )
            conn.execute(
                delete(pep_nodes).where(_owned(pep_nodes, user, host), pep_nodes.c.node == node)
            )

    # -- documents ------------------------------------------------------------------

    def get_document(self, user: str, host: str, key: str) -> Deferred[str | None]:
        return self._run(self._get_document, user, host, key)

    def put_document(
        self, user: str, host: str, key: str, xml: str | None, limit: int | None = None
    ) -> Deferred[bool]:
        return self._run(self._put_document, user, host, key, xml, limit)

    def _get_document(self, user: str, host: str, key: str) -> str | None:
        with self._db.connect() as conn:
            return conn.execute(
                select(documents.c.xml).where(_owned(documents, user, host), documents.c.key == key)
            ).scalar_one_or_none()

    def _put_document(
        self, user: str, host: str, key: str, xml: str | None, limit: int | None
    ) -> bool:
        with self._write() as conn:
            replaced = conn.execute(
                delete(documents).where(_owned(documents, user, host), documents.c.key == key)
            ).rowcount
            if xml is None:
                return True
            if limit is not None and not replaced:
                count = conn.execute(
                    select(func.count()).select_from(documents).where(_owned(documents, user, host))
                ).scalar_one()
                if count >= limit:
                    return False
            conn.execute(documents.insert().values(host=host, username=user, key=key, xml=xml))
            return True


def _owned(table, user: str, host: str):
    return (table.c.host == host) & (table.c.username == user)


def _delete_items(
    conn: Connection, user: str, host: str, node: str, item_ids: Sequence[str]
) -> None:
    ids = list(item_ids)
    for start in range(0, len(ids), _CHUNK):
        conn.execute(
            delete(pep_items).where(
                _owned(pep_items, user, host),
                pep_items.c.node == node,
                pep_items.c.item_id.in_(ids[start : start + _CHUNK]),
            )
        )
