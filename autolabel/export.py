"""Export a run's final annotations. Every record is validated again on the way out.

Formats are registered in ``EXPORTERS`` keyed by ``ExportFormat``; each writes to an open text file and returns
the number of records written.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from enum import Enum
from itertools import groupby
from pathlib import Path
from typing import IO, Any

from .errors import StoreError
from .records import record_problems
from .store import Store
from .tasks import TaskSpec


class ExportFormat(str, Enum):
    JSONL = "jsonl"
    PSY_INSIGHT = "psy-insight"


Exporter = Callable[[Store, str, TaskSpec, IO[str], bool], int]


def run_task(store: Store, run_id: str) -> TaskSpec:
    """The task spec a run was made with, as stored with the run."""
    return TaskSpec.model_validate(json.loads(store.run(run_id)["task_json"]))


def checked_records(store: Store, run_id: str, task: TaskSpec, include_text: bool = True) -> Iterator[dict[str, Any]]:
    for rec in store.final_records(run_id):
        if not include_text:
            rec.pop("text", None)
        problems = record_problems(rec, task)
        if problems:
            raise StoreError(f"record {rec['dialogue_id']}/{rec.get('turn_index', 'session')} fails its schema: "
                             f"{problems[0]}")
        yield rec


def export_jsonl(store: Store, run_id: str, task: TaskSpec, out: IO[str], include_text: bool) -> int:
    n = 0
    for rec in checked_records(store, run_id, task, include_text):
        out.write(json.dumps(rec, ensure_ascii=False) + "\n")
        n += 1
    return n


def export_psy_insight(store: Store, run_id: str, task: TaskSpec, out: IO[str], include_text: bool) -> int:
    """The Psy-Insight native shape: a JSON list of sessions, labels under the spec's ``gold`` keys."""
    meta = {d: m for d, m, _ in store.dialogue_meta(run_id)}
    keys = {f.name: f.gold or f.name for f in [*task.labels, *task.texts]}
    out.write("[")
    n = 0
    for dialogue_id, recs in groupby(checked_records(store, run_id, task, True), key=lambda r: r["dialogue_id"]):
        session: dict[str, Any] = {"dialog_id": dialogue_id, **meta.get(dialogue_id, {})}
        dialog = []
        for rec in recs:
            values = {keys.get(k, k): v for k, v in {**rec["labels"], **rec["texts"]}.items()}
            if rec["kind"] == "session":
                session.update(values)
                session["autolabel"] = {"status": rec["status"], "flags": rec["flags"]}
                continue
            turn = {"speaker": rec["speaker"], "content": rec.get("text", "") if include_text else "",
                    "id": rec["turn_index"], **values,
                    "autolabel": {"status": rec["status"], "flags": rec["flags"],
                                  "confidence": {k: v["value"] for k, v in rec["confidence"].items()}}}
            dialog.append(turn)
        session["dialog"] = dialog
        out.write(("," if n else "") + "\n" + json.dumps(session, ensure_ascii=False))
        n += 1
    out.write("\n]\n")
    return n


EXPORTERS: dict[ExportFormat, Exporter] = {
    ExportFormat.JSONL: export_jsonl,
    ExportFormat.PSY_INSIGHT: export_psy_insight,
}


def export(db: str | Path, format: ExportFormat | str, out: str | Path, *, run_id: str | None = None,
           include_text: bool = True) -> int:
    """Write a run's final annotations (the latest run by default) to ``out``; returns the records written."""
    store = Store.open(db)
    try:
        run_id = run_id or store.run()["id"]
        task = run_task(store, run_id)
        with open(out, "w", encoding="utf-8", newline="") as f:
            return EXPORTERS[ExportFormat(format)](store, run_id, task, f, include_text)
    finally:
        store.close()
