"""Sub-codes one level up: a leaf answer mapped to its parent, for evaluation and export at both levels.

A field with sub-codes (``question -> open question / closed question``) is answered with a leaf (or, with
``allow_parent``, the parent itself). Graded at the leaf level, "open question" for gold "closed question" is
wrong; at the parent level both are "question" and it is right. ``to_parent`` maps a value (one name, or a list or
tuple of names for a multi-label field) to the upper level; ``LabelField.parent_level`` gives the field whose options
are the upper level, so the usual label metrics apply unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from autolabel.tasks import LabelField

__all__ = ["parent_labels", "to_parent"]


def to_parent(field: LabelField, value: Any) -> Any:
    """``value`` one level up: a name becomes its parent's name (a top-level name stays); a list or tuple of names
    becomes the sorted distinct parents, of the same type; None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        return field.parent_of(value)
    parents = sorted({field.parent_of(v) for v in value})
    return tuple(parents) if isinstance(value, tuple) else parents


def parent_labels(field: LabelField, values: Sequence[Any]) -> list[Any]:
    """``to_parent`` of each value."""
    return [to_parent(field, v) for v in values]
