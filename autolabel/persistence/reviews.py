"""The review queue's persistence: review items, reviews, skips, reviewers, gold and the audit log, as SQL.

Reads go through :meth:`ReviewStore` (a failing read is a one-line ``StoreError``); every write is one
:class:`ReviewTx`, a transaction of :func:`autolabel.persistence.tx.transaction` that locks what it reads first
(SQLite ``BEGIN IMMEDIATE``; PostgreSQL ``FOR UPDATE``, ``SKIP LOCKED`` when claiming). The rules — who may
claim, what a valid answer is, when reviews agree — are :mod:`autolabel.review.queue`'s: this module only reads
and writes rows, and turns them into :class:`Item` and plain dicts.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Any

from sqlalchemy import Connection, Select, func, select, text
from sqlalchemy.exc import SQLAlchemyError

from autolabel.errors import StoreError
from autolabel.persistence import tables
from autolabel.persistence.store import Store, now
from autolabel.persistence.tx import for_update

COLUMNS = ("id, run_id, dialogue_id, kind, turn_index, priority, reasons_json, proposal_json, status,"
           " version, lease_owner, lease_expires, required_reviews, agreement")
_UNIT = "run_id=:r AND dialogue_id=:d AND kind=:k AND turn_index=:i"  # one turn (or session) of a run
_OPEN = "i.status IN ('pending', 'claimed')"
_i = tables.review_items.c
_r, _w, _g, _a = tables.reviews.c, tables.reviewers.c, tables.gold.c, tables.review_audit.c
_ITEMS = select(*(_i[name.strip()] for name in COLUMNS.split(",")))  # an Item's columns, on the Core table


class ItemStatus(str, Enum):
    PENDING = "pending"
    CLAIMED = "claimed"
    DONE = "done"
    ADJUDICATION = "adjudication"


@dataclass(frozen=True)
class Item:
    """A review item as a reviewer sees it. ``proposal`` (the model's record) is None in blind mode."""

    id: int
    run_id: str
    dialogue_id: str
    kind: str
    turn_index: int
    priority: float
    reasons: list[str]
    proposal: dict[str, Any] | None
    status: str
    version: int
    lease_owner: str | None
    lease_expires: float | None
    required_reviews: int
    agreement: float | None = None

    def blind(self) -> Item:
        """The same item without the model's proposal (to avoid anchoring the reviewer)."""
        return dataclasses.replace(self, proposal=None)

    def state(self) -> dict[str, Any]:
        """What the audit log records as before/after."""
        return {"status": self.status, "version": self.version, "lease_owner": self.lease_owner,
                "lease_expires": self.lease_expires}

    def unit(self) -> dict[str, Any]:
        """The item's turn (or session) as query parameters of ``_UNIT``."""
        return {"r": self.run_id, "d": self.dialogue_id, "k": self.kind, "i": self.turn_index}


def _decoded(row: Any) -> dict[str, Any]:
    """A row as a dict, its ``x_json`` columns decoded into ``x`` (moved to the end, in order; NULL is None)."""
    d = dict(row._mapping)
    for name in [n for n in d if n.endswith("_json")]:
        value = d.pop(name)
        d[name.removesuffix("_json")] = None if value is None else json.loads(value)
    return d


def _item(row: Any) -> Item:
    return Item(**_decoded(row))


def _only(query: Select[Any], column: Any, value: Any) -> Select[Any]:
    """``query`` with ``column = value``, or unchanged when ``value`` is None (no filter)."""
    return query if value is None else query.where(column == value)


def dumps(value: Any) -> str:
    """JSON as the review tables store it (keys sorted, so equal answers are equal text)."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


class ReviewStore:
    """The review tables of one store: reads here, writes in :meth:`write`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @contextmanager
    def write(self) -> Iterator[ReviewTx]:
        """One write transaction (commits when the block ends, rolls back on any exception)."""
        with self.store.transaction() as conn:
            yield ReviewTx(conn)

    def _rows(self, sql: str, **params: Any) -> list[Any]:
        try:
            with self.store.engine.connect() as conn:
                return list(conn.execute(text(sql), params))
        except SQLAlchemyError as e:  # e.g. a table gone under a running server
            detail = str(getattr(e, "orig", None) or e).splitlines()[0]
            raise StoreError(f"cannot read {self.store.db}: {detail}") from None

    def item(self, item_id: int) -> Item | None:
        return next(map(_item, self.store.fetch(_ITEMS.where(_i.id == item_id))), None)

    def find(self, run_id: str, dialogue_id: str, kind: str, turn_index: int) -> Item | None:
        return next(map(_item, self.store.fetch(_ITEMS.where(_i.run_id == run_id, _i.dialogue_id == dialogue_id,
                                                             _i.kind == kind, _i.turn_index == turn_index))), None)

    def items(self, status: str | None, run_id: str | None) -> list[Item]:
        """Items in queue order (priority, then id), optionally of one status and one run."""
        query = _only(_only(_ITEMS, _i.status, status), _i.run_id, run_id)
        return [_item(r) for r in self.store.fetch(query.order_by(_i.priority, _i.id))]

    def held(self, reviewer: str, at: float) -> list[Item]:
        """Items whose lease this reviewer holds at time ``at``, in queue order."""
        rows = self.store.fetch(_ITEMS.where(_i.status == ItemStatus.CLAIMED.value, _i.lease_owner == reviewer,
                                             _i.lease_expires >= at).order_by(_i.priority, _i.id))
        return [_item(r) for r in rows]

    def reviews(self, item_id: int) -> list[dict[str, Any]]:
        rows = self.store.fetch(select(_r.reviewer, _r.labels_json, _r.texts_json, _r.note, _r.decision, _r.created_at)
                                .where(_r.item_id == item_id).order_by(_r.id))
        return [_decoded(row) for row in rows]

    def took_part(self, item_id: int, reviewer: str) -> bool:
        return bool(self.store.fetch(select(_r.id).where(_r.item_id == item_id, _r.reviewer == reviewer).limit(1)))

    def history(self, reviewer: str, limit: int) -> list[dict[str, Any]]:
        """This reviewer's reviews, newest first, with the item's state now and the source of its gold (if any)."""
        rows = self._rows(
            "SELECT r.item_id, i.run_id, i.dialogue_id, i.kind, i.turn_index, r.labels_json, r.texts_json, r.note,"
            " r.decision, r.created_at, i.status, i.lease_owner, i.lease_expires, g.source FROM reviews r"
            " JOIN review_items i ON i.id=r.item_id LEFT JOIN gold g ON g.run_id=i.run_id"
            " AND g.dialogue_id=i.dialogue_id AND g.kind=i.kind AND g.turn_index=i.turn_index"
            " WHERE r.reviewer=:w ORDER BY r.id DESC LIMIT :n", w=reviewer, n=limit)
        return [_decoded(r) for r in rows]

    def skipped(self, reviewer: str) -> list[dict[str, Any]]:
        """Open items this reviewer skipped, newest skip first."""
        rows = self._rows("SELECT s.item_id, i.dialogue_id, i.kind, i.turn_index, i.status, s.at FROM review_skips s"
                          f" JOIN review_items i ON i.id=s.item_id WHERE s.reviewer=:w AND {_OPEN}"
                          " ORDER BY s.at DESC", w=reviewer)
        return [dict(r._mapping) for r in rows]

    def token_hash(self, name: str) -> str | None:
        rows = self.store.fetch(select(_w.token_hash).where(_w.name == name))
        return rows[0][0] if rows else None

    def token_hashes(self) -> list[tuple[str, str]]:
        """Every reviewer's (name, token hash)."""
        return [(n, h) for n, h in self.store.fetch(select(_w.name, _w.token_hash))]

    def has_reviewers(self) -> bool:
        return bool(self.store.fetch(select(tables.reviewers.c.id).limit(1)))

    def counts(self, run_id: str | None, at: float) -> dict[str, int]:
        """Items by status (a lease lapsed at time ``at`` counts as pending)."""
        rows = self._rows("SELECT CASE WHEN status='claimed' AND lease_expires < :now THEN 'pending' ELSE status"
                          " END AS s, COUNT(*) FROM review_items" + (" WHERE run_id=:r" if run_id else "")
                          + " GROUP BY s", now=at, r=run_id)
        return {s: int(n) for s, n in rows}

    def reviews_per_reviewer(self, run_id: str | None) -> dict[str, int]:
        rows = self._rows("SELECT r.reviewer, COUNT(*) FROM reviews r JOIN review_items i ON i.id=r.item_id"
                          + (" WHERE i.run_id=:r" if run_id else "") + " GROUP BY r.reviewer ORDER BY r.reviewer",
                          r=run_id)
        return {w: int(n) for w, n in rows}

    def gold_count(self, run_id: str | None) -> int:
        query = select(func.count()).select_from(tables.gold)
        return int(self.store.fetch(_only(query, _g.run_id, run_id or None))[0][0])

    def stranded(self, run_id: str | None) -> dict[str, int]:
        """Open items every reviewer known so far (registered, or who reviewed or skipped anything) has reviewed
        (``stranded``), and open items someone skipped (``skipped``)."""
        run = " AND i.run_id=:r" if run_id else ""
        known = ("SELECT name FROM reviewers UNION SELECT reviewer FROM reviews"
                 " UNION SELECT reviewer FROM review_skips")
        stranded = self._rows(
            f"SELECT COUNT(*) FROM review_items i WHERE {_OPEN}{run}"
            f" AND EXISTS ({known}) AND NOT EXISTS (SELECT 1 FROM ({known}) k WHERE NOT EXISTS"
            " (SELECT 1 FROM reviews r WHERE r.item_id=i.id AND r.reviewer=k.name))", r=run_id)
        skipped = self._rows(f"SELECT COUNT(DISTINCT i.id) FROM review_items i JOIN review_skips s ON s.item_id=i.id"
                             f" WHERE {_OPEN}{run}", r=run_id)
        return {"stranded": int(stranded[0][0]), "skipped": int(skipped[0][0])}

    def progress(self, reviewer: str) -> dict[str, int]:
        """This reviewer's reviews (``done``) and the open items they have not reviewed (``left``)."""
        done = self._rows("SELECT COUNT(*) FROM reviews WHERE reviewer=:w", w=reviewer)[0][0]
        left = self._rows(f"SELECT COUNT(*) FROM review_items i WHERE {_OPEN}"
                          " AND NOT EXISTS (SELECT 1 FROM reviews r WHERE r.item_id=i.id AND r.reviewer=:w)",
                          w=reviewer)[0][0]
        return {"done": int(done), "left": int(left)}

    def answers(self, run_id: str | None) -> list[tuple[int, str, dict[str, Any]]]:
        """Every review's (item id, run id, labels), by item then review order: the units of agreement."""
        rows = self._rows("SELECT i.id, i.run_id, r.labels_json FROM reviews r JOIN review_items i ON"
                          " i.id=r.item_id" + (" WHERE i.run_id=:r" if run_id else "") + " ORDER BY i.id, r.id",
                          r=run_id)
        return [(int(i), run, json.loads(labels)) for i, run, labels in rows]

    def gold(self, task_name: str | None) -> list[dict[str, Any]]:
        query = select(*(c for c in tables.gold.c if c.name != "id")).order_by(_g.id)  # run_id ... note
        return [_decoded(r) for r in self.store.fetch(_only(query, _g.task_name, task_name or None))]

    def gold_with_records(self, run_id: str | None) -> list[dict[str, Any]]:
        """Gold rows (id, unit, item, labels, texts) with the final annotation record of their turn (``record``;
        None when there is none)."""
        rows = self._rows("SELECT g.id, g.run_id, g.dialogue_id, g.kind, g.turn_index, g.item_id, g.labels_json,"
                          " g.texts_json, a.record_json FROM gold g LEFT JOIN annotations a ON a.run_id=g.run_id"
                          " AND a.dialogue_id=g.dialogue_id AND a.kind=g.kind AND a.turn_index=g.turn_index"
                          " AND a.is_final=1" + (" WHERE g.run_id=:r" if run_id else "") + " ORDER BY g.id",
                          r=run_id)
        return [_decoded(r) for r in rows]

    def all_reviews(self) -> list[dict[str, Any]]:
        """Every review with its item's unit, oldest first (for export)."""
        rows = self._rows("SELECT r.id, r.item_id, i.run_id, i.dialogue_id, i.kind, i.turn_index, r.reviewer,"
                          " r.labels_json, r.texts_json, r.note, r.decision, r.created_at"
                          " FROM reviews r JOIN review_items i ON i.id=r.item_id ORDER BY r.id")
        return [_decoded(r) for r in rows]

    def audit(self, item_id: int | None) -> list[dict[str, Any]]:
        query = select(_a.id, _a.item_id, _a.reviewer, _a.action, _a.before_json, _a.after_json, _a.at).order_by(_a.id)
        return [_decoded(r) for r in self.store.fetch(_only(query, _a.item_id, item_id))]


class ReviewTx:
    """The statements of one write transaction. Items read here are locked until it ends."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def _one(self, sql: str, **params: Any) -> Any:
        return self.conn.execute(text(sql), params).first()

    def _run(self, sql: str, params: dict[str, Any] | None = None) -> int:
        return self.conn.execute(text(sql), params or {}).rowcount

    def _all(self, sql: str, **params: Any) -> list[Any]:
        return list(self.conn.execute(text(sql), params))

    def claimable(self, reviewer: str, at: float, *, skipped: bool, run_id: str | None,
                  item_id: int | None) -> Item | None:
        """The first open item in queue order (pending, or its lease lapsed at ``at``) this reviewer has not
        reviewed and nobody else is claiming — among those they skipped (``skipped``) or the others."""
        sql = (f"SELECT {COLUMNS} FROM review_items i"
               " WHERE (i.status='pending' OR (i.status='claimed' AND i.lease_expires < :now))"
               " AND NOT EXISTS (SELECT 1 FROM reviews r WHERE r.item_id=i.id AND r.reviewer=:w)"
               f" AND {'EXISTS' if skipped else 'NOT EXISTS'}"
               " (SELECT 1 FROM review_skips s WHERE s.item_id=i.id AND s.reviewer=:w)"
               + (" AND i.run_id=:r" if run_id else "") + (" AND i.id=:id" if item_id is not None else "")
               + " ORDER BY i.priority, i.id LIMIT 1" + for_update(self.conn, skip_locked=True))
        return next(map(_item, self._all(sql, now=at, w=reviewer, r=run_id, id=item_id)), None)

    def locked(self, item_id: int) -> Item | None:
        sql = f"SELECT {COLUMNS} FROM review_items WHERE id=:id" + for_update(self.conn)
        return next(map(_item, self._all(sql, id=item_id)), None)

    def held_by(self, reviewer: str) -> list[Item]:
        """Items claimed by this reviewer (lapsed or not), locked."""
        return [_item(r) for r in self._all(f"SELECT {COLUMNS} FROM review_items WHERE status='claimed'"
                                            " AND lease_owner=:n" + for_update(self.conn), n=reviewer)]

    def save(self, item: Item) -> None:
        """Write the item's state (status, version, lease, agreement)."""
        self._run("UPDATE review_items SET status=:s, version=:v, lease_owner=:o, lease_expires=:e, agreement=:a,"
                  " updated_at=:t WHERE id=:id",
                  {"s": item.status, "v": item.version, "o": item.lease_owner, "e": item.lease_expires,
                   "a": item.agreement, "t": now(), "id": item.id})

    def add_item(self, run_id: str, dialogue_id: str, kind: str, turn_index: int, reason: str
                 ) -> tuple[Item | None, bool]:
        """Queue a turn (or session) with its final annotation record as the proposal: (the item, True); the
        existing item if it is queued already: (it, False); (None, False) when the run has no final record of it."""
        unit = {"r": run_id, "d": dialogue_id, "k": kind, "i": turn_index}
        row = self._one(f"SELECT {COLUMNS} FROM review_items WHERE {_UNIT}", **unit)
        if row is not None:
            return _item(row), False
        record = self.conn.execute(text(f"SELECT record_json FROM annotations WHERE {_UNIT} AND is_final=1"),
                                   unit).scalar()
        if record is None:
            return None, False
        t = now()
        self._run("INSERT INTO review_items (run_id, dialogue_id, kind, turn_index, priority, reasons_json,"
                  " proposal_json, status, version, required_reviews, created_at, updated_at) VALUES"
                  " (:r, :d, :k, :i, 1.0, :reasons, :p, 'pending', 1, 1, :t, :t)",
                  {**unit, "reasons": json.dumps([reason]), "p": record, "t": t})
        return _item(self.conn.execute(text(f"SELECT {COLUMNS} FROM review_items WHERE {_UNIT}"), unit).one()), True

    def require_reviews(self, n: int, run_id: str | None) -> int:
        """Set ``n`` required reviews on open items (of one run) with fewer than ``n`` reviews; how many changed."""
        return self._run(
            "UPDATE review_items SET required_reviews=:n, updated_at=:t WHERE status IN ('pending', 'claimed')"
            " AND required_reviews <> :n AND (SELECT COUNT(*) FROM reviews r WHERE r.item_id=review_items.id)"
            " < :n" + (" AND run_id=:r" if run_id else ""), {"n": n, "t": now(), "r": run_id})

    def add_review(self, item_id: int, reviewer: str, labels: dict[str, Any], texts: dict[str, Any],
                   note: str | None, decision: str) -> None:
        self._run("INSERT INTO reviews (item_id, reviewer, labels_json, texts_json, note, decision, created_at)"
                  " VALUES (:i, :w, :l, :x, :n, :d, :t)",
                  {"i": item_id, "w": reviewer, "l": dumps(labels), "x": dumps(texts), "n": note, "d": decision,
                   "t": now()})

    def answers(self, item_id: int) -> list[tuple[str, dict[str, Any]]]:
        """The item's reviews as (reviewer, labels), oldest first."""
        rows = self._all("SELECT reviewer, labels_json FROM reviews WHERE item_id=:i ORDER BY id", i=item_id)
        return [(w, json.loads(labels)) for w, labels in rows]

    def took_part(self, item_id: int, reviewer: str) -> bool:
        return self._one("SELECT 1 FROM reviews WHERE item_id=:i AND reviewer=:w", i=item_id, w=reviewer) is not None

    def take_review(self, item_id: int, reviewer: str) -> dict[str, Any] | None:
        """Delete this reviewer's review of the item; returns it (labels, texts, note, decision), or None."""
        row = self._one("SELECT id, labels_json, texts_json, note, decision FROM reviews WHERE item_id=:i"
                        " AND reviewer=:w", i=item_id, w=reviewer)
        if row is None:
            return None
        self._run("DELETE FROM reviews WHERE id=:id", {"id": row.id})
        return {k: v for k, v in _decoded(row).items() if k != "id"}

    def skip(self, item_id: int, reviewer: str) -> None:
        self._run("INSERT INTO review_skips (item_id, reviewer, at) VALUES (:i, :w, :t) ON CONFLICT DO NOTHING",
                  {"i": item_id, "w": reviewer, "t": now()})

    def unskip(self, item_id: int, reviewer: str) -> bool:
        """Forget this reviewer's skip of the item; False when there was none."""
        return bool(self._run("DELETE FROM review_skips WHERE item_id=:i AND reviewer=:w",
                              {"i": item_id, "w": reviewer}))

    def gold_source(self, item: Item) -> str | None:
        """How the item's turn got its gold (``review``, ``adjudication``), None when it has none."""
        return self.conn.execute(text(f"SELECT source FROM gold WHERE {_UNIT}"), item.unit()).scalar()

    def settle(self, item: Item, record: dict[str, Any], source: str, note: str | None) -> None:
        """The item's outcome: ``record`` becomes the final annotation (the model's records are kept), the turn is
        reviewed, and its labels are gold (``source``, the record's reviewer, ``note``)."""
        unit, t = item.unit(), now()
        attempt = self.conn.execute(text(f"SELECT COALESCE(MAX(attempt), 0) + 1 FROM annotations WHERE {_UNIT}"),
                                    unit).scalar_one()
        self._run(f"UPDATE annotations SET is_final=0 WHERE {_UNIT} AND is_final=1", unit)
        self._run("INSERT INTO annotations (run_id, dialogue_id, kind, turn_index, attempt, is_final, valid, status,"
                  " record_json, created_at) VALUES (:r, :d, :k, :i, :a, 1, 1, 'reviewed', :j, :t)",
                  {**unit, "a": attempt, "j": dumps(record), "t": t})
        turn_text = None
        if item.kind == "turn":
            self._run("UPDATE turns SET status='reviewed' WHERE run_id=:r AND dialogue_id=:d AND turn_index=:i", unit)
            turn_text = self.conn.execute(text("SELECT text FROM turns WHERE run_id=:r AND dialogue_id=:d AND"
                                               " turn_index=:i"), unit).scalar()
        self._run(f"DELETE FROM gold WHERE {_UNIT}", unit)
        self._run("INSERT INTO gold (run_id, dialogue_id, kind, turn_index, task_name, role, text, labels_json,"
                  " texts_json, source, reviewer, item_id, created_at, note) VALUES (:r, :d, :k, :i, :task, :role,"
                  " :text, :l, :x, :src, :w, :item, :t, :note)",
                  {**unit, "task": record["task"]["name"], "role": record.get("role"), "text": turn_text,
                   "l": dumps(record["labels"]), "x": dumps(record["texts"]), "src": source,
                   "w": record["reviewer"], "item": item.id, "t": t, "note": note})
        self._run("UPDATE review_items SET resolved_at=:t WHERE id=:id", {"t": t, "id": item.id})

    def unsettle(self, item: Item) -> None:
        """Undo :meth:`settle`: no gold, the model's last valid record final again, the turn's status its status
        (the proposal's when the model has no valid record)."""
        unit = item.unit()
        self._run(f"DELETE FROM gold WHERE {_UNIT}", unit)
        self._run(f"UPDATE annotations SET is_final=0 WHERE {_UNIT} AND is_final=1", unit)
        model = self._one(f"SELECT attempt, status FROM annotations WHERE {_UNIT} AND status <> 'reviewed'"
                          " AND valid=1 ORDER BY attempt DESC LIMIT 1", **unit)
        if model is not None:
            self._run(f"UPDATE annotations SET is_final=1 WHERE {_UNIT} AND attempt=:a", {**unit, "a": model.attempt})
        status = model.status if model is not None else (item.proposal or {}).get("status")
        if item.kind == "turn" and status:
            self._run("UPDATE turns SET status=:s WHERE run_id=:r AND dialogue_id=:d AND turn_index=:i",
                      {**unit, "s": status})
        self._run("UPDATE review_items SET resolved_at=NULL WHERE id=:id", {"id": item.id})

    def reviewer_exists(self, name: str) -> bool:
        return self._one("SELECT 1 FROM reviewers WHERE name=:n", n=name) is not None

    def put_reviewer(self, name: str, token_hash: str) -> None:
        """Register a reviewer, or give them a new token hash."""
        self._run("INSERT INTO reviewers (name, token_hash, created_at) VALUES (:n, :h, :t)"
                  " ON CONFLICT (name) DO UPDATE SET token_hash=excluded.token_hash",
                  {"n": name, "h": token_hash, "t": now()})

    def delete_reviewer(self, name: str) -> bool:
        return bool(self._run("DELETE FROM reviewers WHERE name=:n", {"n": name}))

    def audit(self, item_id: int | None, reviewer: str, action: str, before: dict[str, Any] | None,
              after: dict[str, Any] | None) -> None:
        """Append a row to the audit log (the table refuses updates and deletes)."""
        self._run("INSERT INTO review_audit (item_id, reviewer, action, before_json, after_json, at)"
                  " VALUES (:i, :w, :a, :b, :f, :t)",
                  {"i": item_id, "w": reviewer, "a": action, "b": dumps(before), "f": dumps(after), "t": now()})
