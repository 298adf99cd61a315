"""Reads of the gold labels that few-shot example selection needs beyond the review queue's own: whether a task has
any reviewed turn, and the language of each dialogue that holds gold."""

from __future__ import annotations

from sqlalchemy import and_, select

from autolabel.persistence.store import Store
from autolabel.persistence.tables import dialogues, gold


def has_turn_gold(store: Store, task_name: str) -> bool:
    """Does the task have at least one reviewed turn (in any run)?"""
    query = select(gold.c.id).where(gold.c.task_name == task_name, gold.c.kind == "turn").limit(1)
    return bool(store.fetch(query))


def gold_languages(store: Store, task_name: str) -> dict[tuple[str, str], str | None]:
    """(run id, dialogue id) -> the dialogue's language, for every dialogue holding gold of the task."""
    d = dialogues.c
    query = (select(d.run_id, d.dialogue_id, d.language).distinct()
             .select_from(dialogues.join(gold, and_(gold.c.run_id == d.run_id,
                                                    gold.c.dialogue_id == d.dialogue_id)))
             .where(gold.c.task_name == task_name))
    return {(run_id, dialogue_id): language for run_id, dialogue_id, language in store.fetch(query)}
