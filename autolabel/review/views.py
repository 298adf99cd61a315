"""What the review pages show, built from the queue: the item view, adjudication, history, the browse list, and
each flag reason in words."""

from __future__ import annotations

from typing import Any

from autolabel.review.queue import Item, ItemStatus, ReviewQueue
from autolabel.tasks import LabelField, localize

_REASONS = {
    "risk_content": "risk content: may express self-harm, suicidal intent, harm to others or abuse",
    "critic_disagrees": "the model's critic disagreed with its first answer",
    "critic_unsure": "the model's critic was unsure of its answer",
    "sample_disagreement": "repeated model answers disagreed",
    "prompt_injection": "the turn reads like instructions to the model (prompt injection)",
    "truncated_input": "the turn was too long and was cut for the model",
    "external_review": "reviewed in another tool (Label Studio or Argilla)",
}


def reason_text(reason: str) -> str:
    """A flag reason in words (``low_confidence:emotion`` → "low model confidence in emotion")."""
    kind, _, detail = reason.partition(":")
    if kind == "low_confidence":
        return f"low model confidence in {detail}"
    if kind == "explanation_copied":
        return f"the model's {detail} repeats the turn or an example's answer instead of explaining"
    if kind == "failed":
        return f"labeling failed ({detail.replace('_', ' ')}): the model gave no valid answer"
    return _REASONS.get(reason, reason.replace("_", " "))


def most(field: LabelField) -> int:
    """How many options a reviewer may choose in this field."""
    return field.max_selected or (len(field.options) if field.multi else 1)


def rule(field: LabelField) -> str:
    """The field's rule in words: "choose one", "choose 1 to 3", "rate 0 to 4"."""
    if field.scale:
        return f"rate {field.scale[0]} to {field.scale[-1]}"
    return f"choose 1 to {most(field)}" if field.multi else "choose one"


def keys(field: LabelField) -> list[str]:
    """The key of each option, as shown and as pressed (``⇧`` for Shift): a rating's points by their number when
    they are 0-19 (``0`` is point 0, ``⇧2`` point 12); other options by position (1-9, 0 for the 10th, Shift for
    11-20)."""
    if field.scale and all(0 <= p <= 19 for p in field.scale):
        return [("⇧" if p >= 10 else "") + str(p % 10) for p in field.scale]
    return [("⇧" if n > 10 else "") + str(n % 10) for n in range(1, len(field.options) + 1)]


def item_view(queue: ReviewQueue, item: Item, blind: bool, lease_seconds: float) -> dict[str, Any]:
    """Everything the item page shows: dialogue with the target turn and its context, fields with their
    descriptions and rules, the reasons in words, the guidelines, the proposal (None in blind mode)."""
    task = queue.task(item.run_id)
    fields = queue.fields(item)
    proposal = item.proposal or {}
    language = proposal.get("language", "en")
    window = task.context.window
    lo, hi = item.turn_index - window, item.turn_index + 1
    turns = [{**t, "target": item.kind == "turn" and t["turn_index"] == item.turn_index,
              "context": item.kind == "session" or lo <= t["turn_index"] <= hi}
             for t in queue.dialogue(item)]
    labels = fields.labels if fields else ()
    field_views: list[dict[str, Any]] = [
        {"name": f.name, "multi": f.multi, "max": most(f), "rule": rule(f), "scale": bool(f.scale),
         "description": localize(f.description, language),
         "options": [{"name": o.name, "description": localize(o.description, language), "key": k}
                     for o, k in zip(f.options, keys(f), strict=True)],
         "anchors": {o.name: localize(o.description, language) for o in f.options} if f.scale else {}}
        for f in labels]
    shown = None if blind else proposal
    data = {"id": item.id, "version": item.version, "blind": blind, "lease_seconds": lease_seconds,
            "fields": [{"name": f["name"], "multi": f["multi"], "max": f["max"], "rule": f["rule"],
                        "description": f["description"], "options": [o["name"] for o in f["options"]],
                        "hints": [o["description"] for o in f["options"]],
                        "keys": [o["key"] for o in f["options"]]} for f in field_views],
            "proposed": None if shown is None else shown.get("labels", {})}
    return {"item": item, "turns": turns, "fields": field_views, "proposal": shown, "data": data,
            "task": task, "risk": "risk_content" in item.reasons,
            "reasons": [{"code": r, "text": reason_text(r)} for r in item.reasons],
            "guidelines": localize(task.guidelines, language)}


def adjudication_view(queue: ReviewQueue, item: Item, lease_seconds: float, me: str) -> dict[str, Any]:
    """The item page's view plus every reviewer's answer, and a start: what all reviewers agree on, per field.
    ``took_part``: the adjudicator reviewed the item themselves (settling needs a second, forced, press)."""
    view = item_view(queue, item, False, lease_seconds)
    reviews = queue.reviews(item.id)
    start: dict[str, Any] = {}
    for f in view["data"]["fields"]:
        answers = [set(v if isinstance(v, list) else [v]) for r in reviews if (v := r["labels"].get(f["name"]))]
        common = set.intersection(*answers) if answers else set()
        start[f["name"]] = [o for o in f["options"] if o in common]
    waiting = [i.id for i in queue.items(ItemStatus.ADJUDICATION)]
    later = [i for i in waiting if i > item.id] or [i for i in waiting if i != item.id]
    took_part = any(r["reviewer"] == me for r in reviews)
    data = {"id": item.id, "version": item.version, "fields": view["data"]["fields"], "start": start,
            "proposed": (item.proposal or {}).get("labels", {}),
            "reviews": [{"reviewer": r["reviewer"], "labels": r["labels"]} for r in reviews],
            "next": later[0] if later else None, "took_part": took_part}
    return {**view, "reviews": reviews, "data": data, "took_part": took_part}


def history_view(queue: ReviewQueue, reviewer: str) -> dict[str, Any]:
    """The reviewer's recent reviews (newest first, each reopenable or not) and the open items they skipped."""
    return {"history": queue.history(reviewer), "skipped": queue.skipped(reviewer)}


BROWSE_FILTERS = ("status", "reason", "label", "language", "dialogue")


def browse_view(queue: ReviewQueue, filters: dict[str, str]) -> dict[str, Any]:
    """Items by status, reason, proposed label, language and dialogue (each filter optional), for the list view."""
    wanted = {k: v.strip() for k, v in filters.items() if k in BROWSE_FILTERS and v and v.strip()}
    status = wanted.get("status")
    items = queue.items(status if status in {s.value for s in ItemStatus} else None)
    rows = []
    for i in items:
        p = i.proposal or {}
        chosen = {x for v in p.get("labels", {}).values() for x in (v if isinstance(v, list) else [v])}
        if ("reason" in wanted and not any(r.startswith(wanted["reason"]) for r in i.reasons)) \
                or ("label" in wanted and wanted["label"] not in chosen) \
                or ("language" in wanted and p.get("language") != wanted["language"]) \
                or ("dialogue" in wanted and i.dialogue_id != wanted["dialogue"]):
            continue
        rows.append({"item": i, "labels": sorted(chosen), "language": p.get("language"),
                     "reasons": [{"code": r, "text": reason_text(r)} for r in i.reasons]})
    reasons = sorted({r.split(":")[0] + (":" + r.split(":")[1] if ":" in r else "") for i in items
                      for r in i.reasons})
    return {"rows": rows[:500], "shown": min(len(rows), 500), "matched": len(rows), "filters": wanted,
            "statuses": [s.value for s in ItemStatus], "reason_options": reasons}
