"""Annotation records: built from results, validated against ``annotation.schema.json`` and the task's options.

A record is what the store keeps as valid and what ``export`` writes. It is validated when written and again when
exported; a record that fails is never persisted as valid.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from autolabel.models import SessionAnnotation, TurnAnnotation
from autolabel.tasks import TaskSpec, load_schema
from autolabel.validation import Compiled, compile_schema


@lru_cache(maxsize=1)
def _schema() -> Compiled:
    return compile_schema(load_schema("annotation.schema.json"))


def record_problems(record: dict[str, Any], task: TaskSpec | None = None) -> list[str]:
    """Every reason ``record`` is not a valid annotation record (schema, then the task's options and roles)."""
    problems = [f"{e.json_path}: {e.message}" for e in _schema().iter_errors(record)]
    if problems or task is None:
        return problems
    fields = task.session_fields() if record["kind"] == "session" else task.fields_for(record.get("role"))
    allowed = {f.name: f for f in fields.labels} if fields else {}
    for name, value in record["labels"].items():
        f = allowed.get(name)
        if f is None:
            problems.append(f"$.labels.{name}: not a {record['kind']} label for role {record.get('role')!r}")
            continue
        values = value if isinstance(value, list) else [value]
        if f.multi != isinstance(value, list):
            problems.append(f"$.labels.{name}: expected {'a list' if f.multi else 'one option'}")
        names = {o.name for o in f.options}
        problems += [f"$.labels.{name}: {v!r} is not an option" for v in values if v not in names]
    if record["status"] in ("accepted", "reviewed"):
        problems += [f"$.labels.{n}: missing" for n in allowed if n not in record["labels"]]
    return problems


def turn_record(ann: TurnAnnotation, *, run_id: str, task: TaskSpec, model: str, language: str,
                text: str | None) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "kind": "turn", "run_id": run_id,
        "task": {"name": task.name, "version": task.version, "hash": task.spec_hash},
        "model": model, "dialogue_id": ann.dialogue_id, "turn_index": ann.turn_index,
        "speaker": ann.speaker, "role": ann.role, "language": language, "status": ann.status.value,
        "labels": ann.labels, "texts": ann.texts,
        "confidence": {k: v.model_dump() for k, v in ann.confidence.items()},
        "flags": list(dict.fromkeys(ann.flags)), "critique": ann.critique, "error": ann.error,
        "raw_output": ann.raw_output, "attempts": ann.attempts,
    }
    if text is not None:
        rec["text"] = text
    return rec


def session_record(ann: SessionAnnotation, *, run_id: str, task: TaskSpec, model: str,
                   language: str) -> dict[str, Any]:
    return {
        "kind": "session", "run_id": run_id,
        "task": {"name": task.name, "version": task.version, "hash": task.spec_hash},
        "model": model, "dialogue_id": ann.dialogue_id, "language": language, "status": ann.status.value,
        "labels": ann.labels, "texts": ann.texts,
        "confidence": {k: v.model_dump() for k, v in ann.confidence.items()},
        "flags": list(dict.fromkeys(ann.flags)), "error": ann.error, "raw_output": ann.raw_output,
    }
