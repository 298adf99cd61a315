"""Export a run's final annotations. Every record is validated again on the way out.

Formats are registered in ``EXPORTERS`` keyed by ``ExportFormat``; each writes to an open text file and returns
the number of records written.

Sub-codes keep both levels: a label field whose options have children carries the leaf in ``labels`` and its
parent beside it — ``parents: {field: parent}`` in a JSONL record (a list of parents, in the leaves' order, for a
multi-label field), a ``<field>_parent`` column after the field's column in CSV, under ``autolabel.parents`` in
the Psy-Insight shape. A parent answered as such (``allow_parent``) is its own parent. Fields without sub-codes get
neither, so their exports are as before.

CSV (for spreadsheets): one row per turn — ``dialogue_id, turn_index, speaker, role, text, status, flags``,
then one column per label field (several options joined with ``|``; a sub-coded field followed by
``<field>_parent``), one per text field, and ``<field>_confidence`` per label field. Each dialogue's
session-level record follows its turns as a row with an empty ``turn_index`` and the role ``session``. A cascade
run adds ``decided_by_stage, decided_by_model`` after ``flags`` (the stage whose answer it is, 1-based). UTF-8;
``bom=True`` starts the file with a byte order mark so that Excel reads Chinese text correctly.

Label Studio tasks and Argilla records (for reviewing there, and importing the reviews back): see ``interop``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator
from enum import Enum
from itertools import chain, groupby
from pathlib import Path
from typing import IO, Any

from autolabel.errors import ConfigError, StoreError
from autolabel.persistence.store import Store
from autolabel.records import record_problems
from autolabel.tasks import LabelField, TaskSpec, TextField


class ExportFormat(str, Enum):
    JSONL = "jsonl"
    PSY_INSIGHT = "psy-insight"
    CSV = "csv"
    LABEL_STUDIO = "label-studio"
    ARGILLA = "argilla"


Exporter = Callable[[Store, str, TaskSpec, IO[str], bool], int]


def parents(task: TaskSpec, labels: dict[str, Any]) -> dict[str, str | list[str]]:
    """The upper level of each sub-coded label: field -> parent (multi-label: the distinct parents in order)."""
    out: dict[str, str | list[str]] = {}
    for name, value in labels.items():
        f = next((f for f in task.labels if f.name == name), None)
        if f is None or not f.has_children:
            continue
        if isinstance(value, list):
            out[name] = list(dict.fromkeys(f.parent_of(v) for v in value))
        else:
            out[name] = f.parent_of(value)
    return out


def checked_records(store: Store, run_id: str, task: TaskSpec, include_text: bool = True) -> Iterator[dict[str, Any]]:
    """The run's final records, each with ``parents`` where it has sub-coded labels, validated on the way out."""
    for rec in store.final_records(run_id):
        if not include_text:
            rec.pop("text", None)
        upper = parents(task, rec["labels"])
        if upper:
            rec["parents"] = upper
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
    fields: list[LabelField | TextField] = [*task.labels, *task.texts]
    keys = {f.name: f.gold or f.name for f in fields}
    out.write("[")
    n = 0
    for dialogue_id, recs in groupby(checked_records(store, run_id, task, True), key=lambda r: r["dialogue_id"]):
        session: dict[str, Any] = {"dialog_id": dialogue_id, **meta.get(dialogue_id, {})}
        dialog = []
        for rec in recs:
            values = {keys.get(k, k): v for k, v in {**rec["labels"], **rec["texts"]}.items()}
            if rec["kind"] == "session":
                session.update(values)
                session["autolabel"] = {"status": rec["status"], "flags": rec["flags"],
                                        **({"parents": rec["parents"]} if "parents" in rec else {})}
                continue
            turn = {"speaker": rec["speaker"], "content": rec.get("text", "") if include_text else "",
                    "id": rec["turn_index"], **values,
                    "autolabel": {"status": rec["status"], "flags": rec["flags"],
                                  "confidence": {k: v["value"] for k, v in rec["confidence"].items()},
                                  **({"parents": rec["parents"]} if "parents" in rec else {})}}
            dialog.append(turn)
        session["dialog"] = dialog
        out.write(("," if n else "") + "\n" + json.dumps(session, ensure_ascii=False))
        n += 1
    out.write("\n]\n")
    return n


CSV_BASE = ("dialogue_id", "turn_index", "speaker", "role", "text", "status", "flags")
DECIDED_BY = ("decided_by_stage", "decided_by_model")
MULTI_SEPARATOR = "|"


def csv_fields(task: TaskSpec) -> tuple[list[LabelField], list[TextField]]:
    """The label and text fields that get a column: every role's turn fields, then the session's."""
    roles = [task.fields_for(role) for role in task.roles]
    groups = [g for g in [*roles, task.session_fields()] if g is not None]
    labels = {f.name: f for g in groups for f in g.labels}
    texts = {t.name: t for g in groups for t in g.texts}
    return list(labels.values()), list(texts.values())


def csv_header(task: TaskSpec) -> list[str]:
    labels, texts = csv_fields(task)
    columns = [c for f in labels for c in ((f.name, f"{f.name}_parent") if f.has_children else (f.name,))]
    return [*CSV_BASE, *columns, *(t.name for t in texts), *(f"{f.name}_confidence" for f in labels)]


def _cell(value: Any) -> Any:
    return MULTI_SEPARATOR.join(value) if isinstance(value, list) else value


def export_csv(store: Store, run_id: str, task: TaskSpec, out: IO[str], include_text: bool) -> int:
    return write_csv(checked_records(store, run_id, task, include_text), task, out)


def write_csv(records: Iterable[dict[str, Any]], task: TaskSpec, out: IO[str]) -> int:
    """``records`` as CSV rows (module docstring); a cascade run's records (the first has ``decided_by``) add
    ``decided_by_stage`` and ``decided_by_model`` after ``flags``."""
    labels, texts = csv_fields(task)
    rest = iter(records)
    first = next(rest, None)
    cascade = first is not None and "decided_by" in first
    header = csv_header(task)
    if cascade:
        header[len(CSV_BASE):len(CSV_BASE)] = DECIDED_BY
    writer = csv.writer(out)
    writer.writerow(header)
    n = 0
    for rec in chain([first] if first is not None else [], rest):
        session = rec["kind"] == "session"
        row: list[Any] = [rec["dialogue_id"], "" if session else rec["turn_index"], rec.get("speaker", ""),
                          "session" if session else rec.get("role") or "", rec.get("text", ""), rec["status"],
                          MULTI_SEPARATOR.join(rec["flags"])]
        if cascade:
            decided = rec.get("decided_by") or {}
            row += [decided.get("stage", ""), decided.get("model", "")]
        for f in labels:
            row.append(_cell(rec["labels"].get(f.name, "")))
            if f.has_children:
                row.append(_cell(rec.get("parents", {}).get(f.name, "")))
        row += [rec["texts"].get(t.name, "") for t in texts]
        for f in labels:
            conf = rec["confidence"].get(f.name)
            row.append("" if conf is None else round(conf["value"], 4))
        writer.writerow(row)
        n += 1
    return n


def _interop(name: str) -> Exporter:
    """The Label Studio and Argilla writers live in ``interop``, which imports this module: looked up on use."""
    def write(store: Store, run_id: str, task: TaskSpec, out: IO[str], include_text: bool) -> int:
        from autolabel.interop import tools as interop

        exporter: Exporter = getattr(interop, name)
        return exporter(store, run_id, task, out, include_text)
    return write


EXPORTERS: dict[ExportFormat, Exporter] = {
    ExportFormat.JSONL: export_jsonl,
    ExportFormat.PSY_INSIGHT: export_psy_insight,
    ExportFormat.CSV: export_csv,
    ExportFormat.LABEL_STUDIO: _interop("export_label_studio"),
    ExportFormat.ARGILLA: _interop("export_argilla"),
}


def export(db: str | Path, format: ExportFormat | str, out: str | Path, *, run_id: str | None = None,
           include_text: bool = True, bom: bool = False) -> int:
    """Write a run's final annotations (the latest run by default) to ``out``; returns the records written.

    ``bom`` (CSV only) starts the file with a UTF-8 byte order mark, for spreadsheet tools.
    """
    fmt = ExportFormat(format)
    if bom and fmt != ExportFormat.CSV:
        raise ConfigError(f"a byte order mark is for CSV files only, not {fmt.value}")
    store = Store.open(db)
    try:
        run_id = run_id or store.run()["id"]
        task = store.run_task(run_id)
        with open(out, "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as f:
            return EXPORTERS[fmt](store, run_id, task, f, include_text)
    finally:
        store.close()
