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

This module holds the rules (who may claim, what is checked, when an item is settled); the statements and the
transactions are :mod:`autolabel.persistence.reviews`'s, settling is :mod:`autolabel.review.adjudication`'s and
the reports :mod:`autolabel.review.reports`'.
"""

from __future__ import annotations

import dataclasses
import hmac
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autolabel.errors import ReviewError
from autolabel.persistence.reviews import Item, ItemStatus, ReviewStore
from autolabel.persistence.store import Store
from autolabel.review import adjudication, reports, rules
from autolabel.review.rules import MAX_NOTE_CHARS, hash_token, pairwise_agreement
from autolabel.tasks import RoleFields, TaskSpec

__all__ = ["DEFAULT_LEASE", "MAX_NOTE_CHARS", "Item", "ItemStatus", "ReviewQueue", "hash_token",
           "pairwise_agreement"]

DEFAULT_LEASE = 600.0


class ReviewQueue:
    """The review queue of one store. ``clock`` (seconds since the epoch) is injectable for lease tests."""

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.rows = ReviewStore(store)
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
        rules.check_id(item_id)
        item = rules.found(self.rows.item(item_id), item_id)
        return item if include_proposal else item.blind()

    def find(self, run_id: str, dialogue_id: str, kind: str, turn_index: int) -> Item | None:
        """The item of one turn (``kind`` ``turn``) or session (``kind`` ``session``, ``turn_index`` -1), if any."""
        return self.rows.find(run_id, dialogue_id, kind, turn_index)

    def reviews(self, item_id: int) -> list[dict[str, Any]]:
        """Every review of an item, oldest first: reviewer, labels, texts, note, decision, created_at."""
        return self.rows.reviews(item_id)

    def items(self, status: ItemStatus | str | None = None, *, run_id: str | None = None) -> list[Item]:
        """Items in queue order, optionally of one status (e.g. ``adjudication``) and one run."""
        return self.rows.items(ItemStatus(status).value if status is not None else None, run_id)

    def held(self, reviewer: str) -> list[Item]:
        """Items this reviewer holds now (live leases), in queue order."""
        return self.rows.held(reviewer, self.clock())

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

    def answer(self, item: Item, labels: dict[str, Any], texts: dict[str, str] | None, reviewer: str
               ) -> dict[str, Any]:
        """The reviewed record these labels make, checked like the model's records (ReviewError ``invalid``)."""
        return rules.answer_record(item, labels, texts, reviewer, self.task(item.run_id), self.fields(item))

    # -- lease actions ---------------------------------------------------------------------------------------
    def claim(self, reviewer: str, lease_seconds: float = DEFAULT_LEASE, *, run_id: str | None = None,
              include_proposal: bool = True, item_id: int | None = None) -> Item | None:
        """Lease the next item by priority that this reviewer has not reviewed and nobody holds (``item_id``: that
        item only, e.g. when applying reviews made in another tool). Items this reviewer skipped come last: only
        when nothing else is left for them, so that a skip never strands an item."""
        rules.check_name(reviewer)
        with self.rows.write() as tx:
            t = self.clock()
            before = None
            for skipped in (False, True):  # two index-ordered scans rather than one sort by skip
                before = tx.claimable(reviewer, t, skipped=skipped, run_id=run_id, item_id=item_id)
                if before is not None:
                    break
            if before is None:
                return None
            after = rules.leased(before, reviewer, t + lease_seconds)
            tx.save(after)
            tx.audit(after.id, reviewer, "claim", before.state(), after.state())
        return after if include_proposal else after.blind()

    def renew(self, item_id: int, reviewer: str, lease_seconds: float = DEFAULT_LEASE) -> Item:
        """Extend the lease this reviewer holds. The version does not change."""
        rules.check_id(item_id)
        with self.rows.write() as tx:
            before = rules.held(rules.found(tx.locked(item_id), item_id), reviewer, None)
            after = dataclasses.replace(before, lease_expires=self.clock() + lease_seconds)
            tx.save(after)
            tx.audit(item_id, reviewer, "renew", before.state(), after.state())
        return after

    def release(self, item_id: int, reviewer: str, version: int) -> Item:
        """Give the item back to the queue (this reviewer may get it again)."""
        return self._unlease(item_id, reviewer, version, "release")

    def skip(self, item_id: int, reviewer: str, version: int) -> Item:
        """Give the item back; it is offered to this reviewer again only when nothing else is left for them."""
        return self._unlease(item_id, reviewer, version, "skip")

    def _unlease(self, item_id: int, reviewer: str, version: int, action: str) -> Item:
        rules.check_id(item_id)
        with self.rows.write() as tx:
            before = rules.held(rules.found(tx.locked(item_id), item_id), reviewer, version)
            after = rules.returned(before)
            tx.save(after)
            if action == "skip":
                tx.skip(item_id, reviewer)
            tx.audit(item_id, reviewer, action, before.state(), after.state())
        return after

    def unskip(self, item_id: int, reviewer: str) -> None:
        """Take a skip back: the item is offered to this reviewer in its turn again (audit ``unskip``)."""
        rules.check_name(reviewer)
        rules.check_id(item_id)
        with self.rows.write() as tx:
            item = rules.found(tx.locked(item_id), item_id)
            if not tx.unskip(item_id, reviewer):
                raise ReviewError(f"{reviewer} did not skip item {item_id}", item_id=item_id, reason="state")
            tx.audit(item_id, reviewer, "unskip", item.state(), item.state())

    def reopen(self, item_id: int, reviewer: str, lease_seconds: float = DEFAULT_LEASE) -> Item:
        """Take back this reviewer's review of an item, to answer again: the item is leased to them, and what the
        review made is undone — its gold row, the reviewed record (the model's is final again), the turn's status,
        the agreement. Refused when the item was settled by adjudication or someone else holds it now. Audited
        (``reopen``, with the review taken back); the new answer is a ``submit`` like any other."""
        return adjudication.reopen(self, item_id, reviewer, lease_seconds)

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
        return adjudication.history(self, reviewer, limit)

    def skipped(self, reviewer: str) -> list[dict[str, Any]]:
        """Items this reviewer skipped that are still open, newest skip first."""
        return self.rows.skipped(reviewer)

    def enqueue(self, run_id: str, dialogue_id: str, kind: str, turn_index: int, reviewer: str,
                reason: str = "external_review") -> Item:
        """Put a turn (or session) the model settled without review into the queue, its final record as the
        proposal, so that a review made elsewhere goes through ``claim`` and ``submit`` like any other.
        Returns the existing item when there is one."""
        rules.check_name(reviewer)
        with self.rows.write() as tx:
            item, added = tx.add_item(run_id, dialogue_id, kind, turn_index, reason)
            if item is None:
                raise ReviewError(f"no annotation of {dialogue_id}/{turn_index} in run {run_id}", reason="unknown")
            if added:
                tx.audit(item.id, reviewer, "enqueue", None, {**item.state(), "reason": reason})
        return item

    def require_reviews(self, n: int, *, run_id: str | None = None, by: str = "admin") -> int:
        """Ask for ``n`` independent reviews of every open item (pending or claimed; of one run, or all) that has
        fewer than ``n`` reviews so far. Returns how many items changed; one audit row (``require_reviews``).

        An item that already has ``n`` or more reviews keeps its number (lowering it below the reviews made would
        settle the item with no one deciding), and settled items stay as they are."""
        rules.check_name(by)
        if not isinstance(n, int) or n < 1:
            raise ReviewError(f"required reviews must be a whole number of at least 1, not {n!r}", reason="invalid")
        with self.rows.write() as tx:
            changed = tx.require_reviews(n, run_id)
            tx.audit(None, by, "require_reviews", None, {"required_reviews": n, "run_id": run_id, "items": changed})
        return changed

    def reveal(self, item_id: int, reviewer: str, version: int, labels: dict[str, Any]) -> Item:
        """Blind mode: record the reviewer's own labels (audit ``reveal``), then hand over the proposal."""
        self.answer(self.get(item_id), labels, None, reviewer)
        with self.rows.write() as tx:
            item = rules.held(rules.found(tx.locked(item_id), item_id), reviewer, version)
            tx.audit(item_id, reviewer, "reveal", item.state(), {**item.state(), "labels": labels})
        return item

    # -- decisions -------------------------------------------------------------------------------------------
    def submit(self, item_id: int, reviewer: str, version: int, labels: dict[str, Any],
               texts: dict[str, str] | None = None, note: str | None = None) -> Item:
        """Record this reviewer's labels.

        Refused (ReviewError) if the version is stale, the lease is not held or the labels are not the task's
        options. When the item has all its required reviews it becomes ``done`` (all agree: gold and a final
        reviewed record are written) or goes to ``adjudication``."""
        rules.check_note(item_id, note)
        record = self.answer(self.get(item_id), labels, texts, reviewer)
        with self.rows.write() as tx:
            before = rules.held(rules.found(tx.locked(item_id), item_id), reviewer, version)
            decision = rules.decision(record, before, self.fields(before))
            tx.add_review(item_id, reviewer, record["labels"], record["texts"], note, decision)
            reviews = tx.answers(item_id)
            after = rules.returned(before)
            if len(reviews) >= before.required_reviews:
                agreement = pairwise_agreement([labels for _, labels in reviews])
                after = dataclasses.replace(after, agreement=agreement, status=ItemStatus.ADJUDICATION.value)
                if agreement == 1.0:
                    names = ",".join(w for w, _ in reviews)
                    after = adjudication.settle(tx, after, record, names, "review")
            tx.save(after)
            tx.audit(item_id, reviewer, "submit", before.state(),
                     {**after.state(), "labels": record["labels"], "texts": record["texts"], "note": note,
                      "decision": decision, "agreement": after.agreement})
        return after

    def adjudicate(self, item_id: int, reviewer: str, labels: dict[str, Any],
                   texts: dict[str, str] | None = None, note: str | None = None,
                   version: int | None = None, *, force: bool = False) -> Item:
        """Settle an item whose reviews disagree: these labels become gold (source ``adjudication``), with the
        adjudicator's ``note``. An adjudicator who reviewed the item themselves is refused unless ``force``
        (then the audit row says ``forced``): settling one's own disagreement is not an independent decision."""
        return adjudication.adjudicate(self, item_id, reviewer, labels, texts, note, version, force)

    def took_part(self, item_id: int, reviewer: str) -> bool:
        """Whether this reviewer reviewed the item (an adjudicator who did must force the decision)."""
        return self.rows.took_part(item_id, reviewer)

    # -- reviewers -------------------------------------------------------------------------------------------
    def add_reviewer(self, name: str, *, replace: bool = False) -> str:
        """Register a reviewer; returns their token (shown once: only its hash is stored)."""
        rules.check_name(name)
        token = "alr_" + secrets.token_urlsafe(32)
        with self.rows.write() as tx:
            exists = tx.reviewer_exists(name)
            if exists and not replace:
                raise ReviewError(f"reviewer {name!r} exists (replace it to issue a new token)", reason="state")
            tx.put_reviewer(name, hash_token(token))
            tx.audit(None, name, "replace_token" if exists else "add_reviewer", None, {"name": name})
        return token

    def remove_reviewer(self, name: str, *, by: str = "admin") -> int:
        """Remove a reviewer: their token stops working (and with it every session it started), and the items they
        hold go back to the queue. Their reviews stay. Audited (``remove_reviewer``, one ``release`` per item).
        Returns how many items they held."""
        rules.check_name(name)
        rules.check_name(by)
        with self.rows.write() as tx:
            if not tx.delete_reviewer(name):
                raise ReviewError(f"no reviewer {name!r}", reason="unknown")
            held = tx.held_by(name)
            for before in held:
                after = rules.returned(before)
                tx.save(after)
                tx.audit(before.id, by, "release", before.state(), {**after.state(), "removed": name})
            tx.audit(None, by, "remove_reviewer", None, {"name": name, "released": len(held)})
        return len(held)

    def token_hash_of(self, name: str) -> str | None:
        """The hash of the reviewer's current token (None: not a registered reviewer)."""
        return self.rows.token_hash(name)

    def reviewer_for_token(self, token: str) -> str | None:
        """The reviewer whose token this is; every stored hash is compared in constant time, no early exit."""
        digest = hash_token(token)
        found = None
        for name, stored in self.rows.token_hashes():
            if hmac.compare_digest(digest, stored):
                found = name
        return found

    def has_reviewers(self) -> bool:
        return self.rows.has_reviewers()

    # -- reports ---------------------------------------------------------------------------------------------
    def status(self, run_id: str | None = None, *, agreement: bool = True, audit_gold: bool = True) -> dict[str, Any]:
        """Counts by state (a lapsed lease counts as pending), reviews per reviewer, gold, agreement, and
        (``audit_gold``) ``invalid_gold``: gold rows that break the task's rules (see :meth:`gold_problems`).

        Agreement is Krippendorff's alpha over items with two or more reviews (MASI distance for multi-label
        fields, nominal otherwise); None when undefined (nothing pairable, or no variation)."""
        return reports.status(self, run_id, agreement=agreement, audit_gold=audit_gold)

    def progress(self, reviewer: str) -> dict[str, int]:
        """This reviewer's own progress: ``done`` (their reviews of items still open or settled) and ``left``
        (open items they have not reviewed: what they may still be given, skipped ones included)."""
        return self.rows.progress(reviewer)

    def gold_items(self, task_name: str | None = None) -> list[dict[str, Any]]:
        """Reviewed labels (gold), optionally of one task: for calibration and few-shot examples."""
        return self.rows.gold(task_name)

    def gold_problems(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Gold rows that break their task's rules, each with its problems — checked by ``record_problems``, the
        check every answer now passes before it is stored; rows written before that (or past the API) may not."""
        return reports.gold_problems(self, run_id)

    def export_reviews(self, out: str | Path) -> dict[str, int]:
        """Write every review and gold item as JSONL (``{"type": "review"|"gold", ...}``); returns counts."""
        return reports.export_reviews(self, out)

    def audit(self, item_id: int | None = None) -> list[dict[str, Any]]:
        """The audit log (of one item), oldest first."""
        return self.rows.audit(item_id)
