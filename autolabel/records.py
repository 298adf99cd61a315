"""Annotation records: built from results, validated against ``annotation.schema.json`` and the task's options.

A record is what the store keeps as valid and what ``export`` writes. It is validated when written and again when
exported; a record that fails is never persisted as valid.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from autolabel.models import SessionAnnotation, TurnAnnotation
from autolabel.tasks import LabelField, TaskSpec, load_schema
from autolabel.validation import Compiled, compile_schema


@lru_cache(maxsize=1)
def _schema() -> Compiled:
    return compile_schema(load_schema("annotation.schema.json"))


def record_problems(record: dict[str, Any], task: TaskSpec | None = None) -> list[str]:
    """Every reason ``record`` is not a valid annotation record: the record schema, then the task's rules — each
    label a field of the record's role (or the session), one option or a list as the field says, only the field's
    options, at least one and at most ``max_selected`` of them, every field present when accepted or reviewed;
    each text a text field of the role, not empty, within ``max_chars``.

    The one check for labels whoever made them: the model's records when stored and exported, and every answer a
    person gives (web UI, adjudication, Label Studio and Argilla imports) before anything of it is stored."""
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
        problems += _label_problems(f, value)
    if record["status"] in ("accepted", "reviewed"):
        problems += [f"$.labels.{n}: missing" for n in allowed if n not in record["labels"]]
    if fields is not None:
        texts = {t.name: t for t in fields.texts}
        for name, value in record["texts"].items():
            t = texts.get(name)
            if t is None:
                problems.append(f"$.texts.{name}: not a {record['kind']} text for role {record.get('role')!r}")
            elif not value.strip():
                problems.append(f"$.texts.{name}: empty")
            elif len(value) > t.max_chars:
                problems.append(f"$.texts.{name}: {len(value)} characters, at most {t.max_chars} allowed")
    return problems


def _label_problems(f: LabelField, value: Any) -> list[str]:
    where = f"$.labels.{f.name}"
    if f.multi != isinstance(value, list):
        return [f"{where}: expected {'a list' if f.multi else 'one option'}"]
    values = value if isinstance(value, list) else [value]
    names = {o.name for o in f.options}
    problems = [f"{where}: {v!r} is not an option" for v in values if v not in names]
    most = f.max_selected or len(f.options)
    if not values:
        problems.append(f"{where}: no option chosen")
    elif len(values) > most:
        problems.append(f"{where}: {len(values)} options chosen, at most {most} allowed")
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
