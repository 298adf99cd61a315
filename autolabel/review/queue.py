"""The human review queue over the store: leases, versions, N-review agreement, adjudication, gold, audit.

    queue = ReviewQueue(store)
    item = queue.claim("alice")      # next by priority (risk first, then lowest confidence), leased
    queue.submit(item.id, "alice", item.version, {"emotion": ["Anxiety"]})

An item moves ``pending → claimed → pending`` (release, skip, lease expiry, more reviews needed) ``→ done``
(reviews agree: gold, a final ``reviewed`` record, turn reviewed) or ``→ adjudication`` ``→ done``. An item needs
one review unless ``require_reviews(n)`` asks for ``n`` independent ones (a reviewer never reviews an item twice).

Concurrency: every write is one transaction that first locks what it reads — SQLite ``BEGIN IMMEDIATE``
(one writer at a time), PostgreSQL row locks (``FOR UPDATE``; ``SKIP LOCKED`` when claiming) — then checks
the item's version and lease. Two reviewers never hold the same item, and a stale submit is refused, never
merged. Every claim, release and skip bumps the version, so a reviewer whose lapsed lease was taken over
cannot submit; a lapsed lease that nobody took over still counts. Every action appends a row to
``review_audit`` (who, when, before, after); the table refuses updates and deletes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import itertools
import json
import math
import secrets
import time
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import SQLAlchemyError

from autolabel.errors import ReviewError, StoreError
from autolabel.persistence.store import Store, now
from autolabel.quality.agreement import Distance, krippendorff_alpha
from autolabel.records import record_problems
from autolabel.tasks import RoleFields, TaskSpec

DEFAULT_LEASE = 600.0
MAX_NOTE_CHARS = 2000

# Per dialect: how a write transaction takes its locks (dict dispatch, no if-chains on the dialect).
_BEGIN = {"sqlite": ("BEGIN IMMEDIATE",)}
_LOCK_ROW = {"postgresql": " FOR UPDATE"}
_SKIP_LOCKED = {"postgresql": " FOR UPDATE SKIP LOCKED"}

_COLUMNS = ("id, run_id, dialogue_id, kind, turn_index, priority, reasons_json, proposal_json, status,"
            " version, lease_owner, lease_expires, required_reviews, agreement")


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


def _item(row: Any) -> Item:
    m = dict(row._mapping)
    reasons, proposal = json.loads(m.pop("reasons_json")), json.loads(m.pop("proposal_json"))
    return Item(**m, reasons=reasons, proposal=proposal)


def _decoded(row: Any) -> dict[str, Any]:
    """A row as a dict, with ``labels_json``/``texts_json`` decoded into ``labels``/``texts``."""
    d = dict(row._mapping)
    d["labels"], d["texts"] = json.loads(d.pop("labels_json")), json.loads(d.pop("texts_json"))
    return d


def hash_token(token: str) -> str:
    """Tokens are 256-bit random strings, so plain SHA-256 is the right hash (no password stretching)."""
    return hashlib.sha256(token.encode()).hexdigest()


class ReviewQueue:
    """The review queue of one store. ``clock`` (seconds since the epoch) is injectable for lease tests."""

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self._tasks: dict[str, TaskSpec] = {}

    @classmethod
    def open(cls, db: str | Path) -> ReviewQueue:
        """A queue over its own store (closed by ``close`` or by leaving a ``with`` block)."""
        return cls(Store.open(db))

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> ReviewQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------------------------
    def get(self, item_id: int, *, include_proposal: bool = True) -> Item:
        _check_id(item_id)
        rows = self._rows(f"SELECT {_COLUMNS} FROM review_items WHERE id=:id", id=item_id)
        if not rows:
            raise ReviewError(f"no review item {item_id}", item_id=item_id, reason="unknown")
        item = _item(rows[0])
        return item if include_proposal else item.blind()

    def find(self, run_id: str, dialogue_id: str, kind: str, turn_index: int) -> Item | None:
        """The item of one turn (``kind`` ``turn``) or session (``kind`` ``session``, ``turn_index`` -1), if any."""
        rows = self._rows(f"SELECT {_COLUMNS} FROM review_items WHERE run_id=:r AND dialogue_id=:d AND kind=:k"
                          " AND turn_index=:i", r=run_id, d=dialogue_id, k=kind, i=turn_index)
        return _item(rows[0]) if rows else None

    def reviews(self, item_id: int) -> list[dict[str, Any]]:
        """Every review of an item, oldest first: reviewer, labels, texts, note, decision, created_at."""
        rows = self._rows("SELECT reviewer, labels_json, texts_json, note, decision, created_at FROM reviews"
                          " WHERE item_id=:i ORDER BY id", i=item_id)
        return [_decoded(r) for r in rows]

    def items(self, status: ItemStatus | str | None = None, *, run_id: str | None = None) -> list[Item]:
        """Items in queue order, optionally of one status (e.g. ``adjudication``) and one run."""
        where = [c for c, v in (("status=:s", status), ("run_id=:r", run_id)) if v is not None]
        sql = f"SELECT {_COLUMNS} FROM review_items" + (" WHERE " + " AND ".join(where) if where else "")
        s = ItemStatus(status).value if status is not None else None
        return [_item(r) for r in self._rows(sql + " ORDER BY priority, id", s=s, r=run_id)]

    def held(self, reviewer: str) -> list[Item]:
        """Items this reviewer holds now (live leases), in queue order."""
        rows = self._rows(f"SELECT {_COLUMNS} FROM review_items WHERE status='claimed' AND lease_owner=:w"
                          " AND lease_expires >= :now ORDER BY priority, id", w=reviewer, now=self.clock())
        return [_item(r) for r in rows]

    def task(self, run_id: str) -> TaskSpec:
        if run_id not in self._tasks:
            self._tasks[run_id] = self.store.run_task(run_id)
        return self._tasks[run_id]

    def fields(self, item: Item) -> RoleFields | None:
        """The label fields a reviewer answers for this item (the role's turn fields, or session fields)."""
        task = self.task(item.run_id)
        if item.kind == "session":
            return task.session_fields()
        role = (item.proposal or self.get(item.id).proposal or {}).get("role")
        return task.fields_for(role)

    def dialogue(self, item: Item) -> list[dict[str, Any]]:
        """Every turn of the item's dialogue (index, speaker, role, text, status), for context."""
        return self.store.turn_rows(item.run_id, item.dialogue_id)

    # -- lease actions ---------------------------------------------------------------------------------------
    def claim(self, reviewer: str, lease_seconds: float = DEFAULT_LEASE, *, run_id: str | None = None,
              include_proposal: bool = True, item_id: int | None = None) -> Item | None:
        """Lease the next item by priority that this reviewer has not reviewed and nobody holds (``item_id``: that
        item only, e.g. when applying reviews made in another tool). Items this reviewer skipped come last: only
        when nothing else is left for them, so that a skip never strands an item."""
        _check_name(reviewer)
        with self._tx() as conn:
            t = self.clock()
            row = None
            for skipped in ("NOT EXISTS", "EXISTS"):  # two index-ordered scans rather than one sort by skip
                sql = (f"SELECT {_COLUMNS} FROM review_items i"
                       " WHERE (i.status='pending' OR (i.status='claimed' AND i.lease_expires < :now))"
                       " AND NOT EXISTS (SELECT 1 FROM reviews r WHERE r.item_id=i.id AND r.reviewer=:w)"
                       f" AND {skipped} (SELECT 1 FROM review_skips s WHERE s.item_id=i.id AND s.reviewer=:w)"
                       + (" AND i.run_id=:r" if run_id else "") + (" AND i.id=:id" if item_id is not None else "")
                       + " ORDER BY i.priority, i.id LIMIT 1" + _SKIP_LOCKED.get(conn.dialect.name, ""))
                row = conn.execute(text(sql), {"now": t, "w": reviewer, "r": run_id, "id": item_id}).first()
                if row is not None:
                    break
            if row is None:
                return None
            before = _item(row)
            after = dataclasses.replace(before, status=ItemStatus.CLAIMED.value, version=before.version + 1,
                                        lease_owner=reviewer, lease_expires=t + lease_seconds)
            self._save(conn, after)
            self._audit(conn, after.id, reviewer, "claim", before.state(), after.state())
        return after if include_proposal else after.blind()

    def renew(self, item_id: int, reviewer: str, lease_seconds: float = DEFAULT_LEASE) -> Item:
        """Extend the lease this reviewer holds. The version does not change."""
        with self._tx() as conn:
            before = self._held(conn, item_id, reviewer, None)
            after = dataclasses.replace(before, lease_expires=self.clock() + lease_seconds)
            self._save(conn, after)
            self._audit(conn, item_id, reviewer, "renew", before.state(), after.state())
        return after

    def release(self, item_id: int, reviewer: str, version: int) -> Item:
        """Give the item back to the queue (this reviewer may get it again)."""
        return self._unlease(item_id, reviewer, version, "release")

    def skip(self, item_id: int, reviewer: str, version: int) -> Item:
        """Give the item back; it is offered to this reviewer again only when nothing else is left for them."""
        return self._unlease(item_id, reviewer, version, "skip")

    def unskip(self, item_id: int, reviewer: str) -> None:
        """Take a skip back: the item is offered to this reviewer in its turn again (audit ``unskip``)."""
        _check_name(reviewer)
        with self._tx() as conn:
            item = self._locked(conn, item_id)
            gone = conn.execute(text("DELETE FROM review_skips WHERE item_id=:i AND reviewer=:w"),
                                {"i": item_id, "w": reviewer}).rowcount
            if not gone:
                raise ReviewError(f"{reviewer} did not skip item {item_id}", item_id=item_id, reason="state")
            self._audit(conn, item_id, reviewer, "unskip", item.state(), item.state())

    def reopen(self, item_id: int, reviewer: str, lease_seconds: float = DEFAULT_LEASE) -> Item:
        """Take back this reviewer's review of an item, to answer again: the item is leased to them, and what the
        review made is undone — its gold row, the reviewed record (the model's is final again), the turn's status,
        the agreement. Refused when the item was settled by adjudication or someone else holds it now. Audited
        (``reopen``, with the review taken back); the new answer is a ``submit`` like any other."""
        _check_name(reviewer)
        with self._tx() as conn:
            t = self.clock()
            before = self._locked(conn, item_id)
            mine = conn.execute(text("SELECT id, labels_json, texts_json, note, decision FROM reviews"
                                     " WHERE item_id=:i AND reviewer=:w"), {"i": item_id, "w": reviewer}).first()
            if mine is None:
                raise ReviewError(f"{reviewer} has not reviewed item {item_id}", item_id=item_id, reason="state")
            key = {"r": before.run_id, "d": before.dialogue_id, "k": before.kind, "i": before.turn_index}
            where = "run_id=:r AND dialogue_id=:d AND kind=:k AND turn_index=:i"
            source = conn.execute(text(f"SELECT source FROM gold WHERE {where}"), key).scalar()
            if source == "adjudication":
                raise ReviewError(f"item {item_id} was settled by adjudication: it cannot be reopened",
                                  item_id=item_id, reason="state")
            if before.status == ItemStatus.CLAIMED.value and before.lease_owner != reviewer \
                    and (before.lease_expires or 0) >= t:
                raise ReviewError(f"{before.lease_owner} holds item {item_id} now: reopen it when they are done",
                                  item_id=item_id, reason="state")
            conn.execute(text("DELETE FROM reviews WHERE id=:id"), {"id": mine.id})
            if source is not None:
                self._unresolve(conn, before, key, where)
            after = dataclasses.replace(before, status=ItemStatus.CLAIMED.value, version=before.version + 1,
                                        lease_owner=reviewer, lease_expires=t + lease_seconds, agreement=None)
            self._save(conn, after)
            self._audit(conn, item_id, reviewer, "reopen",
                        {**before.state(), "labels": json.loads(mine.labels_json),
                         "texts": json.loads(mine.texts_json), "note": mine.note, "decision": mine.decision,
                         "gold": source}, after.state())
        return after

    def undo(self, reviewer: str, *, current: tuple[int, int] | None = None,
             lease_seconds: float = DEFAULT_LEASE) -> Item:
        """Reopen this reviewer's last review (see :meth:`reopen`), first giving back ``current`` (id, version),
        the item they hold now, if any."""
        last = self.history(reviewer, limit=1)
        if not last:
            raise ReviewError(f"nothing to undo: {reviewer} has no review", reason="state")
        if current is not None and current[0] != last[0]["item_id"]:
            self.release(current[0], reviewer, current[1])
        return self.reopen(last[0]["item_id"], reviewer, lease_seconds)

    def history(self, reviewer: str, limit: int = 50) -> list[dict[str, Any]]:
        """This reviewer's reviews, newest first: item, dialogue, turn, labels, decision, note, when, the item's
        status now, and whether it can be reopened (not settled by adjudication, nobody else holds it)."""
        rows = self._rows(
            "SELECT r.item_id, i.run_id, i.dialogue_id, i.kind, i.turn_index, r.labels_json, r.texts_json, r.note,"
            " r.decision, r.created_at, i.status, i.lease_owner, i.lease_expires, g.source FROM reviews r"
            " JOIN review_items i ON i.id=r.item_id LEFT JOIN gold g ON g.run_id=i.run_id"
            " AND g.dialogue_id=i.dialogue_id AND g.kind=i.kind AND g.turn_index=i.turn_index"
            " WHERE r.reviewer=:w ORDER BY r.id DESC LIMIT :n", w=reviewer, n=limit)
        t = self.clock()
        out = []
        for r in rows:
            d = _decoded(r)
            held = d["status"] == ItemStatus.CLAIMED.value and d["lease_owner"] != reviewer \
                and (d["lease_expires"] or 0) >= t
            d["reopenable"] = d.pop("source") != "adjudication" and not held
            out.append(d)
        return out

    def skipped(self, reviewer: str) -> list[dict[str, Any]]:
        """Items this reviewer skipped that are still open, newest skip first."""
        rows = self._rows("SELECT s.item_id, i.dialogue_id, i.kind, i.turn_index, i.status, s.at FROM review_skips s"
                          " JOIN review_items i ON i.id=s.item_id WHERE s.reviewer=:w AND i.status IN"
                          " ('pending', 'claimed') ORDER BY s.at DESC", w=reviewer)
        return [dict(r._mapping) for r in rows]

    def _unlease(self, item_id: int, reviewer: str, version: int, action: str) -> Item:
        with self._tx() as conn:
            before = self._held(conn, item_id, reviewer, version)
            after = _returned(before)
            self._save(conn, after)
            if action == "skip":
                conn.execute(text("INSERT INTO review_skips (item_id, reviewer, at) VALUES (:i, :w, :t)"
                                  " ON CONFLICT DO NOTHING"), {"i": item_id, "w": reviewer, "t": now()})
            self._audit(conn, item_id, reviewer, action, before.state(), after.state())
        return after

    def enqueue(self, run_id: str, dialogue_id: str, kind: str, turn_index: int, reviewer: str,
                reason: str = "external_review") -> Item:
        """Put a turn (or session) the model settled without review into the queue, its final record as the
        proposal, so that a review made elsewhere goes through ``claim`` and ``submit`` like any other.
        Returns the existing item when there is one."""
        _check_name(reviewer)
        key = {"r": run_id, "d": dialogue_id, "k": kind, "i": turn_index}
        with self._tx() as conn:
            where = "run_id=:r AND dialogue_id=:d AND kind=:k AND turn_index=:i"
            row = conn.execute(text(f"SELECT {_COLUMNS} FROM review_items WHERE {where}"), key).first()
            if row is not None:
                return _item(row)
            record = conn.execute(text(f"SELECT record_json FROM annotations WHERE {where} AND is_final=1"),
                                  key).scalar()
            if record is None:
                raise ReviewError(f"no annotation of {dialogue_id}/{turn_index} in run {run_id}", reason="unknown")
            t = now()
            conn.execute(text("INSERT INTO review_items (run_id, dialogue_id, kind, turn_index, priority,"
                              " reasons_json, proposal_json, status, version, required_reviews, created_at,"
                              " updated_at) VALUES (:r, :d, :k, :i, 1.0, :reasons, :p, 'pending', 1, 1, :t, :t)"),
                         {**key, "reasons": json.dumps([reason]), "p": record, "t": t})
            item = _item(conn.execute(text(f"SELECT {_COLUMNS} FROM review_items WHERE {where}"), key).one())
            self._audit(conn, item.id, reviewer, "enqueue", None, {**item.state(), "reason": reason})
        return item

    def require_reviews(self, n: int, *, run_id: str | None = None, by: str = "admin") -> int:
        """Ask for ``n`` independent reviews of every open item (pending or claimed; of one run, or all) that has
        fewer than ``n`` reviews so far. Returns how many items changed; one audit row (``require_reviews``).

        An item that already has ``n`` or more reviews keeps its number (lowering it below the reviews made would
        settle the item with no one deciding), and settled items stay as they are."""
        _check_name(by)
        if not isinstance(n, int) or n < 1:
            raise ReviewError(f"required reviews must be a whole number of at least 1, not {n!r}", reason="invalid")
        with self._tx() as conn:
            changed = conn.execute(text(
                "UPDATE review_items SET required_reviews=:n, updated_at=:t WHERE status IN ('pending', 'claimed')"
                " AND required_reviews <> :n AND (SELECT COUNT(*) FROM reviews r WHERE r.item_id=review_items.id)"
                " < :n" + (" AND run_id=:r" if run_id else "")), {"n": n, "t": now(), "r": run_id}).rowcount
            self._audit(conn, None, by, "require_reviews", None, {"required_reviews": n, "run_id": run_id,
                                                                  "items": changed})
        return changed

    def reveal(self, item_id: int, reviewer: str, version: int, labels: dict[str, Any]) -> Item:
        """Blind mode: record the reviewer's own labels (audit ``reveal``), then hand over the proposal."""
        self._validated(self.get(item_id), labels, None, reviewer)
        with self._tx() as conn:
            item = self._held(conn, item_id, reviewer, version)
            self._audit(conn, item_id, reviewer, "reveal", item.state(), {**item.state(), "labels": labels})
        return item

    # -- decisions -------------------------------------------------------------------------------------------
    def submit(self, item_id: int, reviewer: str, version: int, labels: dict[str, Any],
               texts: dict[str, str] | None = None, note: str | None = None) -> Item:
        """Record this reviewer's labels.

        Refused (ReviewError) if the version is stale, the lease is not held or the labels are not the task's
        options. When the item has all its required reviews it becomes ``done`` (all agree: gold and a final
        reviewed record are written) or goes to ``adjudication``."""
        if note is not None and len(note) > MAX_NOTE_CHARS:
            raise ReviewError(f"note longer than {MAX_NOTE_CHARS} characters", item_id=item_id,
                              reason="invalid")
        record = self._validated(self.get(item_id), labels, texts, reviewer)
        with self._tx() as conn:
            before = self._held(conn, item_id, reviewer, version)
            proposal = before.proposal or {}
            proposed = _normalized(proposal.get("labels", {}), self.fields(before))
            same = (record["labels"], record["texts"]) == (proposed, proposal.get("texts", {}))
            decision = "accept" if same else "correct"
            conn.execute(text("INSERT INTO reviews (item_id, reviewer, labels_json, texts_json, note,"
                              " decision, created_at) VALUES (:i, :w, :l, :x, :n, :d, :t)"),
                         {"i": item_id, "w": reviewer, "l": _dumps(record["labels"]),
                          "x": _dumps(record["texts"]), "n": note, "d": decision, "t": now()})
            reviews = conn.execute(text("SELECT reviewer, labels_json FROM reviews WHERE item_id=:i"
                                        " ORDER BY id"), {"i": item_id}).all()
            after = _returned(before)
            if len(reviews) >= before.required_reviews:
                answers = [json.loads(r.labels_json) for r in reviews]
                agreement = pairwise_agreement(answers)
                after = dataclasses.replace(after, agreement=agreement, status=ItemStatus.ADJUDICATION.value)
                if agreement == 1.0:
                    names = ",".join(r.reviewer for r in reviews)
                    after = self._resolve(conn, after, record, names, "review")
            self._save(conn, after)
            self._audit(conn, item_id, reviewer, "submit", before.state(),
                        {**after.state(), "labels": record["labels"], "texts": record["texts"], "note": note,
                         "decision": decision, "agreement": after.agreement})
        return after

    def adjudicate(self, item_id: int, reviewer: str, labels: dict[str, Any],
                   texts: dict[str, str] | None = None, note: str | None = None,
                   version: int | None = None, *, force: bool = False) -> Item:
        """Settle an item whose reviews disagree: these labels become gold (source ``adjudication``), with the
        adjudicator's ``note``. An adjudicator who reviewed the item themselves is refused unless ``force``
        (then the audit row says ``forced``): settling one's own disagreement is not an independent decision."""
        if note is not None and len(note) > MAX_NOTE_CHARS:
            raise ReviewError(f"note longer than {MAX_NOTE_CHARS} characters", item_id=item_id, reason="invalid")
        record = self._validated(self.get(item_id), labels, texts, reviewer)
        with self._tx() as conn:
            before = self._locked(conn, item_id)
            if before.status != ItemStatus.ADJUDICATION.value:
                raise ReviewError(f"item {item_id} is {before.status}, not awaiting adjudication",
                                  item_id=item_id, reason="state")
            if version is not None and version != before.version:
                raise ReviewError(f"item {item_id} changed (version {before.version}, not {version})",
                                  item_id=item_id, reason="stale")
            took_part = conn.execute(text("SELECT 1 FROM reviews WHERE item_id=:i AND reviewer=:w"),
                                     {"i": item_id, "w": reviewer}).first() is not None
            if took_part and not force:
                raise ReviewError(f"{reviewer} reviewed item {item_id} and so took part in the disagreement:"
                                  " let another adjudicator settle it, or force it", item_id=item_id,
                                  reason="own_review")
            bumped = dataclasses.replace(before, version=before.version + 1)
            after = self._resolve(conn, bumped, record, reviewer, "adjudication", note=note)
            self._save(conn, after)
            self._audit(conn, item_id, reviewer, "adjudicate", before.state(),
                        {**after.state(), "labels": record["labels"], "texts": record["texts"], "note": note,
                         "forced": took_part})
        return after

    def took_part(self, item_id: int, reviewer: str) -> bool:
        """Whether this reviewer reviewed the item (an adjudicator who did must force the decision)."""
        return bool(self._rows("SELECT 1 FROM reviews WHERE item_id=:i AND reviewer=:w", i=item_id, w=reviewer))

    def _resolve(self, conn: Connection, item: Item, record: dict[str, Any], reviewer: str,
                 source: str, note: str | None = None) -> Item:
        """The outcome: the reviewed record becomes final (the model's is kept), the turn reviewed, gold."""
        record = {**record, "reviewer": reviewer}
        key = {"r": item.run_id, "d": item.dialogue_id, "k": item.kind, "i": item.turn_index}
        where = "run_id=:r AND dialogue_id=:d AND kind=:k AND turn_index=:i"
        t = now()
        attempt = conn.execute(text(f"SELECT COALESCE(MAX(attempt), 0) + 1 FROM annotations WHERE {where}"),
                               key).scalar_one()
        conn.execute(text(f"UPDATE annotations SET is_final=0 WHERE {where} AND is_final=1"), key)
        conn.execute(text("INSERT INTO annotations (run_id, dialogue_id, kind, turn_index, attempt, is_final,"
                          " valid, status, record_json, created_at)"
                          " VALUES (:r, :d, :k, :i, :a, 1, 1, 'reviewed', :j, :t)"),
                     {**key, "a": attempt, "j": _dumps(record), "t": t})
        turn_text = None
        if item.kind == "turn":
            conn.execute(text("UPDATE turns SET status='reviewed' WHERE run_id=:r AND dialogue_id=:d"
                              " AND turn_index=:i"), key)
            turn_text = conn.execute(text("SELECT text FROM turns WHERE run_id=:r AND dialogue_id=:d AND"
                                          " turn_index=:i"), key).scalar()
        conn.execute(text(f"DELETE FROM gold WHERE {where}"), key)
        conn.execute(text("INSERT INTO gold (run_id, dialogue_id, kind, turn_index, task_name, role, text,"
                          " labels_json, texts_json, source, reviewer, item_id, created_at, note) VALUES"
                          " (:r, :d, :k, :i, :task, :role, :text, :l, :x, :src, :w, :item, :t, :note)"),
                     {**key, "task": record["task"]["name"], "role": record.get("role"), "text": turn_text,
                      "l": _dumps(record["labels"]), "x": _dumps(record["texts"]), "src": source,
                      "w": reviewer, "item": item.id, "t": t, "note": note})
        conn.execute(text("UPDATE review_items SET resolved_at=:t WHERE id=:id"), {"t": t, "id": item.id})
        return dataclasses.replace(item, status=ItemStatus.DONE.value, lease_owner=None, lease_expires=None)

    def _unresolve(self, conn: Connection, item: Item, key: dict[str, Any], where: str) -> None:
        """Undo ``_resolve``: no gold, the model's last valid record final again, the turn's status its status."""
        conn.execute(text(f"DELETE FROM gold WHERE {where}"), key)
        conn.execute(text(f"UPDATE annotations SET is_final=0 WHERE {where} AND is_final=1"), key)
        model = conn.execute(text(f"SELECT attempt, status FROM annotations WHERE {where} AND status <> 'reviewed'"
                                  " AND valid=1 ORDER BY attempt DESC LIMIT 1"), key).first()
        if model is not None:
            conn.execute(text(f"UPDATE annotations SET is_final=1 WHERE {where} AND attempt=:a"),
                         {**key, "a": model.attempt})
        status = model.status if model is not None else (item.proposal or {}).get("status")
        if item.kind == "turn" and status:
            conn.execute(text("UPDATE turns SET status=:s WHERE run_id=:r AND dialogue_id=:d AND turn_index=:i"),
                         {**key, "s": status})
        conn.execute(text("UPDATE review_items SET resolved_at=NULL WHERE id=:id"), {"id": item.id})

    # -- reviewers -------------------------------------------------------------------------------------------
    def add_reviewer(self, name: str, *, replace: bool = False) -> str:
        """Register a reviewer; returns their token (shown once: only its hash is stored)."""
        _check_name(name)
        token = "alr_" + secrets.token_urlsafe(32)
        with self._tx() as conn:
            exists = conn.execute(text("SELECT 1 FROM reviewers WHERE name=:n"), {"n": name}).first()
            if exists and not replace:
                raise ReviewError(f"reviewer {name!r} exists (replace it to issue a new token)",
                                  reason="state")
            conn.execute(text("INSERT INTO reviewers (name, token_hash, created_at) VALUES (:n, :h, :t)"
                              " ON CONFLICT (name) DO UPDATE SET token_hash=excluded.token_hash"),
                         {"n": name, "h": hash_token(token), "t": now()})
            self._audit(conn, None, name, "replace_token" if exists else "add_reviewer", None, {"name": name})
        return token

    def remove_reviewer(self, name: str, *, by: str = "admin") -> int:
        """Remove a reviewer: their token stops working (and with it every session it started), and the items they
        hold go back to the queue. Their reviews stay. Audited (``remove_reviewer``, one ``release`` per item).
        Returns how many items they held."""
        _check_name(name)
        _check_name(by)
        with self._tx() as conn:
            if conn.execute(text("DELETE FROM reviewers WHERE name=:n"), {"n": name}).rowcount == 0:
                raise ReviewError(f"no reviewer {name!r}", reason="unknown")
            held = conn.execute(text(f"SELECT {_COLUMNS} FROM review_items WHERE status='claimed'"
                                     " AND lease_owner=:n" + _LOCK_ROW.get(conn.dialect.name, "")),
                                {"n": name}).all()
            for row in held:
                before = _item(row)
                after = _returned(before)
                self._save(conn, after)
                self._audit(conn, before.id, by, "release", before.state(), {**after.state(), "removed": name})
            self._audit(conn, None, by, "remove_reviewer", None, {"name": name, "released": len(held)})
        return len(held)

    def token_hash_of(self, name: str) -> str | None:
        """The hash of the reviewer's current token (None: not a registered reviewer)."""
        rows = self._rows("SELECT token_hash FROM reviewers WHERE name=:n", n=name)
        return rows[0][0] if rows else None

    def reviewer_for_token(self, token: str) -> str | None:
        """The reviewer whose token this is; every stored hash is compared in constant time, no early exit."""
        digest = hash_token(token)
        found = None
        for name, stored in self._rows("SELECT name, token_hash FROM reviewers"):
            if hmac.compare_digest(digest, stored):
                found = name
        return found

    def has_reviewers(self) -> bool:
        return bool(self._rows("SELECT 1 FROM reviewers LIMIT 1"))

    # -- reports ---------------------------------------------------------------------------------------------
    def status(self, run_id: str | None = None, *, agreement: bool = True, audit_gold: bool = True) -> dict[str, Any]:
        """Counts by state (a lapsed lease counts as pending), reviews per reviewer, gold, agreement, and
        (``audit_gold``) ``invalid_gold``: gold rows that break the task's rules (see :meth:`gold_problems`).

        Agreement is Krippendorff's alpha over items with two or more reviews (MASI distance for multi-label
        fields, nominal otherwise); None when undefined (nothing pairable, or no variation)."""
        run = " AND run_id=:r" if run_id else ""
        rows = self._rows(
            "SELECT CASE WHEN status='claimed' AND lease_expires < :now THEN 'pending' ELSE status END AS s,"
            f" COUNT(*) FROM review_items WHERE 1=1{run} GROUP BY s", now=self.clock(), r=run_id)
        out: dict[str, Any] = {s.value: 0 for s in ItemStatus}
        out.update({s: int(n) for s, n in rows})
        out["total"] = sum(out[s.value] for s in ItemStatus)
        out["remaining"] = out["pending"] + out["claimed"]
        run_i = " AND i.run_id=:r" if run_id else ""
        per = self._rows("SELECT r.reviewer, COUNT(*) FROM reviews r JOIN review_items i ON i.id=r.item_id"
                         f" WHERE 1=1{run_i} GROUP BY r.reviewer ORDER BY r.reviewer", r=run_id)
        out["reviewers"] = {w: int(n) for w, n in per}
        out["gold"] = int(self._rows(f"SELECT COUNT(*) FROM gold WHERE 1=1{run}", r=run_id)[0][0])
        out["agreement"] = self._agreement(run_i, run_id) if agreement else {}
        out.update(self._stranded(run_i, run_id))
        if audit_gold:
            out["invalid_gold"] = len(self.gold_problems(run_id))
        return out

    def progress(self, reviewer: str) -> dict[str, int]:
        """This reviewer's own progress: ``done`` (their reviews of items still open or settled) and ``left``
        (open items they have not reviewed: what they may still be given, skipped ones included)."""
        done = self._rows("SELECT COUNT(*) FROM reviews WHERE reviewer=:w", w=reviewer)[0][0]
        left = self._rows("SELECT COUNT(*) FROM review_items i WHERE i.status IN ('pending', 'claimed')"
                          " AND NOT EXISTS (SELECT 1 FROM reviews r WHERE r.item_id=i.id AND r.reviewer=:w)",
                          w=reviewer)[0][0]
        return {"done": int(done), "left": int(left)}

    def _stranded(self, run_i: str, run_id: str | None) -> dict[str, int]:
        """Open items that every reviewer known so far (registered, or who reviewed or skipped anything) has
        reviewed — ``stranded``: only a new reviewer can take them — and open items someone skipped."""
        known = ("SELECT name FROM reviewers UNION SELECT reviewer FROM reviews"
                 " UNION SELECT reviewer FROM review_skips")
        stranded = self._rows(
            f"SELECT COUNT(*) FROM review_items i WHERE i.status IN ('pending', 'claimed'){run_i}"
            f" AND EXISTS ({known}) AND NOT EXISTS (SELECT 1 FROM ({known}) k WHERE NOT EXISTS"
            " (SELECT 1 FROM reviews r WHERE r.item_id=i.id AND r.reviewer=k.name))", r=run_id)
        skipped = self._rows(
            f"SELECT COUNT(DISTINCT i.id) FROM review_items i JOIN review_skips s ON s.item_id=i.id"
            f" WHERE i.status IN ('pending', 'claimed'){run_i}", r=run_id)
        return {"stranded": int(stranded[0][0]), "skipped": int(skipped[0][0])}

    def _agreement(self, run_i: str, run_id: str | None) -> dict[str, float | None]:
        rows = self._rows("SELECT i.id, i.run_id, r.labels_json FROM reviews r JOIN review_items i ON"
                          f" i.id=r.item_id WHERE 1=1{run_i} ORDER BY i.id, r.id", r=run_id)
        units: dict[str, list[list[Any]]] = defaultdict(list)
        multi: dict[str, bool] = {}
        for (_, run), group in itertools.groupby(rows, key=lambda r: (r[0], r[1])):
            answers = [json.loads(r[2]) for r in group]
            if len(answers) < 2:
                continue
            for name in sorted({n for a in answers for n in a}):
                multi[name] = any(f.multi for f in self.task(run).labels if f.name == name)
                units[name].append([_hashable(a.get(name)) for a in answers])
        alphas = {n: krippendorff_alpha(u, Distance.MASI if multi[n] else Distance.NOMINAL)
                  for n, u in units.items()}
        return {n: None if math.isnan(a) else round(a, 4) for n, a in alphas.items()}

    def gold_items(self, task_name: str | None = None) -> list[dict[str, Any]]:
        """Reviewed labels (gold), optionally of one task: for calibration and few-shot examples."""
        rows = self._rows("SELECT run_id, dialogue_id, kind, turn_index, task_name, role, text, labels_json,"
                          " texts_json, source, reviewer, item_id, created_at, note FROM gold"
                          + (" WHERE task_name=:n" if task_name else "") + " ORDER BY id", n=task_name)
        return [_decoded(r) for r in rows]

    def gold_problems(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Gold rows that break their task's rules, each with its problems — checked by ``record_problems``, the
        check every answer now passes before it is stored; rows written before that (or past the API) may not."""
        rows = self._rows("SELECT g.id, g.run_id, g.dialogue_id, g.kind, g.turn_index, g.item_id, g.labels_json,"
                          " g.texts_json, a.record_json FROM gold g LEFT JOIN annotations a ON a.run_id=g.run_id"
                          " AND a.dialogue_id=g.dialogue_id AND a.kind=g.kind AND a.turn_index=g.turn_index"
                          " AND a.is_final=1" + (" WHERE g.run_id=:r" if run_id else "") + " ORDER BY g.id",
                          r=run_id)
        out = []
        for r in rows:
            if r.record_json is None:
                problems = ["no final annotation record of this turn"]
            else:
                record = {**json.loads(r.record_json), "status": "reviewed", "labels": json.loads(r.labels_json),
                          "texts": json.loads(r.texts_json)}
                problems = record_problems(record, self.task(r.run_id))
            if problems:
                out.append({"gold_id": r.id, "run_id": r.run_id, "dialogue_id": r.dialogue_id, "kind": r.kind,
                            "turn_index": r.turn_index, "item_id": r.item_id, "problems": problems})
        return out

    def export_reviews(self, out: str | Path) -> dict[str, int]:
        """Write every review and gold item as JSONL (``{"type": "review"|"gold", ...}``); returns counts."""
        rows = self._rows("SELECT r.id, r.item_id, i.run_id, i.dialogue_id, i.kind, i.turn_index, r.reviewer,"
                          " r.labels_json, r.texts_json, r.note, r.decision, r.created_at"
                          " FROM reviews r JOIN review_items i ON i.id=r.item_id ORDER BY r.id")
        reviews = [{"type": "review", **_decoded(r)} for r in rows]
        gold = [{"type": "gold", **g} for g in self.gold_items()]
        with open(out, "w", encoding="utf-8", newline="") as f:
            f.writelines(json.dumps(x, ensure_ascii=False) + "\n" for x in [*reviews, *gold])
        return {"reviews": len(reviews), "gold": len(gold)}

    def audit(self, item_id: int | None = None) -> list[dict[str, Any]]:
        """The audit log (of one item), oldest first."""
        where = " WHERE item_id=:i" if item_id is not None else ""
        rows = self._rows("SELECT id, item_id, reviewer, action, before_json, after_json, at"
                          f" FROM review_audit{where} ORDER BY id", i=item_id)
        return [{"id": r.id, "item_id": r.item_id, "reviewer": r.reviewer, "action": r.action, "at": r.at,
                 "before": json.loads(r.before_json), "after": json.loads(r.after_json)} for r in rows]

    # -- internals -------------------------------------------------------------------------------------------
    def _rows(self, sql: str, **params: Any) -> list[Any]:
        try:
            with self.store.engine.connect() as conn:
                return list(conn.execute(text(sql), params))
        except SQLAlchemyError as e:
            detail = str(getattr(e, "orig", None) or e).splitlines()[0]
            raise StoreError(f"cannot read {self.store.db}: {detail}") from None

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        """One write transaction holding its locks from the start (see the module docstring)."""
        try:
            with self.store.engine.connect() as conn, conn.begin():  # commits, or rolls back on any exception
                for sql in _BEGIN.get(conn.dialect.name, ()):
                    conn.exec_driver_sql(sql)
                yield conn
        except SQLAlchemyError as e:
            detail = str(getattr(e, "orig", None) or e).splitlines()[0]
            raise StoreError(f"cannot write to {self.store.db}: {detail}") from None

    def _locked(self, conn: Connection, item_id: int) -> Item:
        _check_id(item_id)
        row = conn.execute(text(f"SELECT {_COLUMNS} FROM review_items WHERE id=:id"
                                + _LOCK_ROW.get(conn.dialect.name, "")), {"id": item_id}).first()
        if row is None:
            raise ReviewError(f"no review item {item_id}", item_id=item_id, reason="unknown")
        return _item(row)

    def _held(self, conn: Connection, item_id: int, reviewer: str, version: int | None) -> Item:
        item = self._locked(conn, item_id)
        if item.status != ItemStatus.CLAIMED.value or item.lease_owner != reviewer:
            raise ReviewError(f"{reviewer} does not hold item {item_id} (lease lost or never claimed)",
                              item_id=item_id, reason="not_held")
        if version is not None and version != item.version:
            raise ReviewError(f"item {item_id} changed (version {item.version}, not {version}): reload it",
                              item_id=item_id, reason="stale")
        return item

    def _save(self, conn: Connection, item: Item) -> None:
        conn.execute(text("UPDATE review_items SET status=:s, version=:v, lease_owner=:o, lease_expires=:e,"
                          " agreement=:a, updated_at=:t WHERE id=:id"),
                     {"s": item.status, "v": item.version, "o": item.lease_owner, "e": item.lease_expires,
                      "a": item.agreement, "t": now(), "id": item.id})

    def _audit(self, conn: Connection, item_id: int | None, reviewer: str, action: str,
               before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
        conn.execute(text("INSERT INTO review_audit (item_id, reviewer, action, before_json, after_json, at)"
                          " VALUES (:i, :w, :a, :b, :f, :t)"),
                     {"i": item_id, "w": reviewer, "a": action, "b": _dumps(before), "f": _dumps(after),
                      "t": now()})

    def _validated(self, item: Item, labels: dict[str, Any], texts: dict[str, str] | None,
                   reviewer: str) -> dict[str, Any]:
        """The reviewed record these labels make, checked against the record schema and the task's options."""
        proposal = item.proposal or {}
        record = {**proposal, "status": "reviewed", "labels": labels,
                  "texts": {**proposal.get("texts", {}), **(texts or {})}, "reviewer": reviewer}
        problems = record_problems(record, self.task(item.run_id))
        if problems:
            raise ReviewError(f"labels refused: {'; '.join(problems[:3])}", item_id=item.id, reason="invalid",
                              problems=problems)
        return {**record, "labels": _normalized(labels, self.fields(item))}


def pairwise_agreement(answers: list[dict[str, Any]]) -> float:
    """Share of reviewer pairs whose labels are identical (1.0 for a single review)."""
    pairs = list(itertools.combinations(answers, 2))
    return sum(a == b for a, b in pairs) / len(pairs) if pairs else 1.0


def _returned(item: Item) -> Item:
    return dataclasses.replace(item, status=ItemStatus.PENDING.value, version=item.version + 1,
                               lease_owner=None, lease_expires=None)


def _normalized(labels: dict[str, Any], fields: RoleFields | None) -> dict[str, Any]:
    """Valid labels with multi-label values in the task's option order, so equal choices compare equal."""
    ranks = {f.name: {o.name: i for i, o in enumerate(f.options)} for f in fields.labels} if fields else {}
    return {n: sorted(v, key=ranks[n].__getitem__) if isinstance(v, list) else v for n, v in labels.items()}


def _hashable(value: Any) -> Any:
    return frozenset(value) if isinstance(value, list) else value


def _check_id(item_id: int) -> None:
    """Ids are positive 64-bit integers: any other cannot name an item (and would overflow the database's)."""
    if not 0 < item_id < 2**63:
        raise ReviewError(f"no review item {item_id}", item_id=item_id, reason="unknown")


def _check_name(name: str) -> None:
    """A reviewer's name: 1-100 printable characters, no surrounding spaces, no line breaks or control characters."""
    if not isinstance(name, str) or not name.strip() or len(name) > 100 or name != name.strip() \
            or any(unicodedata.category(c).startswith("C") for c in name):
        raise ReviewError(f"bad reviewer name {name!r}", reason="invalid")


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)
