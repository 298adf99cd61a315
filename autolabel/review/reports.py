"""What the review queue reports: counts by state, reviews per reviewer, agreement per field, gold that breaks
the task's rules, and the export of every review and gold row.

Agreement is Krippendorff's alpha over items with two or more reviews (MASI distance for multi-label fields,
nominal otherwise). The rows are :class:`autolabel.persistence.reviews.ReviewStore`'s.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autolabel.persistence.reviews import ItemStatus
from autolabel.quality.agreement import Distance, krippendorff_alpha
from autolabel.records import record_problems

if TYPE_CHECKING:
    from autolabel.review.queue import ReviewQueue


def status(queue: ReviewQueue, run_id: str | None, *, agreement: bool, audit_gold: bool) -> dict[str, Any]:
    """See :meth:`ReviewQueue.status`."""
    out: dict[str, Any] = {s.value: 0 for s in ItemStatus}
    out.update(queue.rows.counts(run_id, queue.clock()))
    out["total"] = sum(out[s.value] for s in ItemStatus)
    out["remaining"] = out["pending"] + out["claimed"]
    out["reviewers"] = queue.rows.reviews_per_reviewer(run_id)
    out["gold"] = queue.rows.gold_count(run_id)
    out["agreement"] = alphas(queue, run_id) if agreement else {}
    out.update(queue.rows.stranded(run_id))
    if audit_gold:
        out["invalid_gold"] = len(gold_problems(queue, run_id))
    return out


def alphas(queue: ReviewQueue, run_id: str | None) -> dict[str, float | None]:
    """Krippendorff's alpha per label field over the items with two or more reviews; None when undefined
    (nothing pairable, or no variation)."""
    units: dict[str, list[list[Any]]] = defaultdict(list)
    multi: dict[str, bool] = {}
    for (_, run), group in itertools.groupby(queue.rows.answers(run_id), key=lambda a: (a[0], a[1])):
        answers = [labels for _, _, labels in group]
        if len(answers) < 2:
            continue
        for name in sorted({n for a in answers for n in a}):
            multi[name] = any(f.multi for f in queue.task(run).labels if f.name == name)
            units[name].append([_hashable(a.get(name)) for a in answers])
    out = {n: krippendorff_alpha(u, Distance.MASI if multi[n] else Distance.NOMINAL) for n, u in units.items()}
    return {n: None if math.isnan(a) else round(a, 4) for n, a in out.items()}


def gold_problems(queue: ReviewQueue, run_id: str | None) -> list[dict[str, Any]]:
    """See :meth:`ReviewQueue.gold_problems`."""
    out = []
    for g in queue.rows.gold_with_records(run_id):
        if g["record"] is None:
            problems = ["no final annotation record of this turn"]
        else:
            record = {**g["record"], "status": "reviewed", "labels": g["labels"], "texts": g["texts"]}
            problems = record_problems(record, queue.task(g["run_id"]))
        if problems:
            out.append({"gold_id": g["id"], "run_id": g["run_id"], "dialogue_id": g["dialogue_id"],
                        "kind": g["kind"], "turn_index": g["turn_index"], "item_id": g["item_id"],
                        "problems": problems})
    return out


def export_reviews(queue: ReviewQueue, out: str | Path) -> dict[str, int]:
    """See :meth:`ReviewQueue.export_reviews`."""
    reviews = [{"type": "review", **r} for r in queue.rows.all_reviews()]
    gold = [{"type": "gold", **g} for g in queue.rows.gold(None)]
    with open(out, "w", encoding="utf-8", newline="") as f:
        f.writelines(json.dumps(x, ensure_ascii=False) + "\n" for x in [*reviews, *gold])
    return {"reviews": len(reviews), "gold": len(gold)}


def _hashable(value: Any) -> Any:
    return frozenset(value) if isinstance(value, list) else value
