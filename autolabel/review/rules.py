"""The review queue's rules that need no database: names and ids, who holds a lease, what makes a valid answer,
when reviews agree.

Each raises ``ReviewError`` (with a ``reason`` the web app maps to an HTTP status) or returns a new :class:`Item`;
:mod:`autolabel.review.queue` applies them inside its transactions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import unicodedata
from typing import Any

from autolabel.errors import ReviewError
from autolabel.persistence.reviews import Item, ItemStatus
from autolabel.records import record_problems
from autolabel.tasks import RoleFields, TaskSpec

MAX_NOTE_CHARS = 2000


def hash_token(token: str) -> str:
    """Tokens are 256-bit random strings, so plain SHA-256 is the right hash (no password stretching)."""
    return hashlib.sha256(token.encode()).hexdigest()


def check_id(item_id: int) -> None:
    """Ids are positive 64-bit integers: any other cannot name an item (and would overflow the database's)."""
    if not 0 < item_id < 2**63:
        raise ReviewError(f"no review item {item_id}", item_id=item_id, reason="unknown")


def check_name(name: str) -> None:
    """A reviewer's name: 1-100 printable characters, no surrounding spaces, no line breaks or control characters."""
    if not isinstance(name, str) or not name.strip() or len(name) > 100 or name != name.strip() \
            or any(unicodedata.category(c).startswith("C") for c in name):
        raise ReviewError(f"bad reviewer name {name!r}", reason="invalid")


def check_note(item_id: int, note: str | None) -> None:
    if note is not None and len(note) > MAX_NOTE_CHARS:
        raise ReviewError(f"note longer than {MAX_NOTE_CHARS} characters", item_id=item_id, reason="invalid")


def found(item: Item | None, item_id: int) -> Item:
    """The item, or ReviewError ``unknown``."""
    if item is None:
        raise ReviewError(f"no review item {item_id}", item_id=item_id, reason="unknown")
    return item


def held(item: Item, reviewer: str, version: int | None) -> Item:
    """The item, if this reviewer holds it (claimed by them) at this version (None: any); else ReviewError."""
    if item.status != ItemStatus.CLAIMED.value or item.lease_owner != reviewer:
        raise ReviewError(f"{reviewer} does not hold item {item.id} (lease lost or never claimed)",
                          item_id=item.id, reason="not_held")
    if version is not None and version != item.version:
        raise ReviewError(f"item {item.id} changed (version {item.version}, not {version}): reload it",
                          item_id=item.id, reason="stale")
    return item


def held_by_another(item: Item, reviewer: str, at: float) -> bool:
    """Whether someone else holds a live lease on the item at time ``at``."""
    return item.status == ItemStatus.CLAIMED.value and item.lease_owner != reviewer and (item.lease_expires or 0) >= at


def leased(item: Item, reviewer: str, until: float) -> Item:
    """The item claimed by this reviewer until ``until`` (a new version: older ones can no longer submit)."""
    return dataclasses.replace(item, status=ItemStatus.CLAIMED.value, version=item.version + 1,
                               lease_owner=reviewer, lease_expires=until)


def returned(item: Item) -> Item:
    """The item back in the queue, nobody's (a new version)."""
    return dataclasses.replace(item, status=ItemStatus.PENDING.value, version=item.version + 1,
                               lease_owner=None, lease_expires=None)


def answer_record(item: Item, labels: dict[str, Any], texts: dict[str, str] | None, reviewer: str,
                  task: TaskSpec, fields: RoleFields | None) -> dict[str, Any]:
    """The reviewed record these labels make, checked by ``record_problems`` (the check the model's records pass)
    against the record schema and the task's options; multi-label values in the task's option order."""
    proposal = item.proposal or {}
    record = {**proposal, "status": "reviewed", "labels": labels,
              "texts": {**proposal.get("texts", {}), **(texts or {})}, "reviewer": reviewer}
    problems = record_problems(record, task)
    if problems:
        raise ReviewError(f"labels refused: {'; '.join(problems[:3])}", item_id=item.id, reason="invalid",
                          problems=problems)
    return {**record, "labels": normalized(labels, fields)}


def decision(record: dict[str, Any], item: Item, fields: RoleFields | None) -> str:
    """``accept`` when the answer is the model's proposal, else ``correct``."""
    proposal = item.proposal or {}
    proposed = normalized(proposal.get("labels", {}), fields)
    return "accept" if (record["labels"], record["texts"]) == (proposed, proposal.get("texts", {})) else "correct"


def pairwise_agreement(answers: list[dict[str, Any]]) -> float:
    """Share of reviewer pairs whose labels are identical (1.0 for a single review)."""
    pairs = list(itertools.combinations(answers, 2))
    return sum(a == b for a, b in pairs) / len(pairs) if pairs else 1.0


def normalized(labels: dict[str, Any], fields: RoleFields | None) -> dict[str, Any]:
    """Valid labels with multi-label values in the task's option order, so equal choices compare equal."""
    ranks = {f.name: {o.name: i for i, o in enumerate(f.options)} for f in fields.labels} if fields else {}
    return {n: sorted(v, key=ranks[n].__getitem__) if isinstance(v, list) else v for n, v in labels.items()}
