"""Settling review items and taking a settlement back: the outcome of agreeing reviews, an adjudicator's decision
on reviews that disagree, and a reviewer reopening their review.

Settled means: the reviewed record is the final annotation (the model's records are kept), the turn is
``reviewed``, and its labels are gold. An adjudicator who reviewed the item themselves is refused unless they force
it (settling one's own disagreement is not an independent decision); a review settled by adjudication cannot be
reopened. The statements are :class:`autolabel.persistence.reviews.ReviewTx`'s.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from autolabel.errors import ReviewError
from autolabel.persistence.reviews import Item, ItemStatus, ReviewTx
from autolabel.review import rules

if TYPE_CHECKING:
    from autolabel.review.queue import ReviewQueue


def settle(tx: ReviewTx, item: Item, record: dict[str, Any], reviewer: str, source: str,
           note: str | None = None) -> Item:
    """Write the outcome of ``item`` (``record``, decided by ``reviewer``: gold ``source`` ``review`` or
    ``adjudication``); returns the item ``done`` and nobody's."""
    tx.settle(item, {**record, "reviewer": reviewer}, source, note)
    return dataclasses.replace(item, status=ItemStatus.DONE.value, lease_owner=None, lease_expires=None)


def adjudicate(queue: ReviewQueue, item_id: int, reviewer: str, labels: dict[str, Any],
               texts: dict[str, str] | None, note: str | None, version: int | None, force: bool) -> Item:
    """See :meth:`ReviewQueue.adjudicate`."""
    rules.check_note(item_id, note)
    record = queue.answer(queue.get(item_id), labels, texts, reviewer)
    with queue.rows.write() as tx:
        rules.check_id(item_id)
        before = rules.found(tx.locked(item_id), item_id)
        if before.status != ItemStatus.ADJUDICATION.value:
            raise ReviewError(f"item {item_id} is {before.status}, not awaiting adjudication",
                              item_id=item_id, reason="state")
        if version is not None and version != before.version:
            raise ReviewError(f"item {item_id} changed (version {before.version}, not {version})",
                              item_id=item_id, reason="stale")
        took_part = tx.took_part(item_id, reviewer)
        if took_part and not force:
            raise ReviewError(f"{reviewer} reviewed item {item_id} and so took part in the disagreement:"
                              " let another adjudicator settle it, or force it", item_id=item_id,
                              reason="own_review")
        bumped = dataclasses.replace(before, version=before.version + 1)
        after = settle(tx, bumped, record, reviewer, "adjudication", note=note)
        tx.save(after)
        tx.audit(item_id, reviewer, "adjudicate", before.state(),
                 {**after.state(), "labels": record["labels"], "texts": record["texts"], "note": note,
                  "forced": took_part})
    return after


def reopen(queue: ReviewQueue, item_id: int, reviewer: str, lease_seconds: float) -> Item:
    """See :meth:`ReviewQueue.reopen`."""
    rules.check_name(reviewer)
    rules.check_id(item_id)
    with queue.rows.write() as tx:
        t = queue.clock()
        before = rules.found(tx.locked(item_id), item_id)
        source = tx.gold_source(before)
        if not tx.took_part(item_id, reviewer):
            raise ReviewError(f"{reviewer} has not reviewed item {item_id}", item_id=item_id, reason="state")
        if source == "adjudication":
            raise ReviewError(f"item {item_id} was settled by adjudication: it cannot be reopened",
                              item_id=item_id, reason="state")
        if rules.held_by_another(before, reviewer, t):
            raise ReviewError(f"{before.lease_owner} holds item {item_id} now: reopen it when they are done",
                              item_id=item_id, reason="state")
        mine = tx.take_review(item_id, reviewer) or {}
        if source is not None:
            tx.unsettle(before)
        after = dataclasses.replace(rules.leased(before, reviewer, t + lease_seconds), agreement=None)
        tx.save(after)
        tx.audit(item_id, reviewer, "reopen", {**before.state(), **mine, "gold": source}, after.state())
    return after


def history(queue: ReviewQueue, reviewer: str, limit: int) -> list[dict[str, Any]]:
    """See :meth:`ReviewQueue.history`."""
    t = queue.clock()
    out = []
    for d in queue.rows.history(reviewer, limit):
        held = d["status"] == ItemStatus.CLAIMED.value and d["lease_owner"] != reviewer \
            and (d["lease_expires"] or 0) >= t
        d["reopenable"] = d.pop("source") != "adjudication" and not held
        out.append(d)
    return out
