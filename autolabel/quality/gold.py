"""Gold labels from a separate labels file, the form datasets often come in: one record per label.

Each record (a JSONL object or a CSV row) names a dialogue, a turn, a field and a label::

    {"dialogue_id": "mi-demo-drinking", "turn_index": 3, "field": "client_talk", "label": "sustain: reason"}
    {"dialogue_id": "mi-demo-drinking", "field": "empathy", "label": 4}

    dialogue_id,turn_index,field,label
    mi-demo-drinking,3,client_talk,sustain: reason
    mi-demo-drinking,,empathy,4

``turn_index`` is the 0-based index of the turn in its dialogue (as in exported records); empty or absent for a
session field. Column names are matched case-insensitively, with common synonyms (``dialogue``/``conversation_id``,
``turn``/``utterance_index``, ``code``/``value``). A field is named by its spec name or its ``gold`` key, in any
case; a label by ``option_key`` (any case, aliases, rating points as numbers). A multi-label field takes several
records for one turn, or one record with a JSON list or names separated by ``;`` or ``|``. Records that name no
field or no option are left out and counted (``GoldFile.skipped``), with the first few quoted.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autolabel.errors import InputError
from autolabel.tasks import LabelField, TaskSpec

__all__ = ["SESSION", "GoldFile", "is_labels_file", "read_labels_file"]

log = logging.getLogger(__name__)

SESSION = -1
"""The turn index of a session-level gold label (the same key ``quality.evaluate`` uses)."""

COLUMNS = {
    "dialogue": ("dialogue_id", "dialogue", "conversation_id", "conversation", "session_id", "session", "id"),
    "turn": ("turn_index", "turn", "utterance_index", "utterance", "index"),
    "field": ("field", "label_field", "scheme", "dimension"),
    "label": ("label", "value", "code", "gold"),
}
SUFFIXES = (".jsonl", ".ndjson", ".csv", ".tsv")
_SPLIT = re.compile(r"[;|]")


@dataclass
class GoldFile:
    """The gold a labels file holds, and what it left out."""

    gold: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    records: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    """Reason -> count: ``no such field``, ``not an option``, ``no dialogue id``, ``bad turn index``."""
    examples: list[str] = field(default_factory=list)
    """The first few skipped records, as ``line N: reason``."""

    @property
    def labels(self) -> int:
        return sum(len(v) for v in self.gold.values())


def _columns(keys: list[str]) -> dict[str, str] | None:
    """Our role -> the record's key, for the keys of one record or CSV header; None when not a labels file."""
    folded = {k.strip().casefold(): k for k in keys if isinstance(k, str)}
    out = {}
    for role, names in COLUMNS.items():
        found = next((folded[n] for n in names if n in folded), None)
        if found is not None:
            out[role] = found
    if "turns" in folded or not {"dialogue", "field", "label"} <= set(out):
        return None
    return out


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, record) of a JSONL or CSV/TSV labels file."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            if path.suffix.lower() in (".csv", ".tsv"):
                reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
                for row in reader:
                    yield reader.line_num, dict(row)
                return
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as e:
                    raise InputError(str(path), n, f"not a JSON object: {e}") from e
                if not isinstance(record, dict):
                    raise InputError(str(path), n, "not a JSON object")
                yield n, record
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(str(path), None, f"cannot read: {e}") from e


def is_labels_file(path: str | Path) -> bool:
    """Whether ``path`` is a labels file (JSONL or CSV records with a dialogue, a field and a label, no turns)
    rather than dialogues with gold keys inside them."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES or not path.is_file():
        return False
    try:
        first = next(_records(path), None)
    except InputError:
        return False
    return first is not None and _columns(list(first[1])) is not None


def _turn(value: Any) -> int | None:
    """A turn index (None: session level); raises ValueError for one that is not a whole number >= 0."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    number = float(value) if isinstance(value, str) else value
    if isinstance(number, bool) or not float(number).is_integer() or number < 0:
        raise ValueError(value)
    return int(number)


def _values(raw: Any) -> list[Any]:
    if isinstance(raw, list):
        return raw
    if isinstance(raw, str) and raw.strip().startswith("["):
        try:
            parsed = json.loads(raw)
            return parsed if isinstance(parsed, list) else [parsed]
        except ValueError:
            pass
    if isinstance(raw, str):
        return [v for v in _SPLIT.split(raw) if v.strip()]
    return [raw]


def read_labels_file(path: str | Path, task: TaskSpec) -> GoldFile:
    """The gold of a labels file, keyed like ``quality.evaluate.Gold``: ``(dialogue_id, turn_index)`` with
    ``SESSION`` for session fields, values as option names (a sorted list for a multi-label field)."""
    path = Path(path)
    fields: dict[str, LabelField] = {}
    for spec_field in task.labels:
        for name_or_key in (spec_field.name, spec_field.gold):
            if name_or_key:
                fields.setdefault(name_or_key.strip().casefold(), spec_field)
    out = GoldFile()
    multi: dict[tuple[str, int, str], set[str]] = {}
    columns: dict[str, str] | None = None

    def skip(line: int, reason: str, detail: str) -> None:
        out.skipped[reason] += 1
        if len(out.examples) < 5:
            out.examples.append(f"line {line}: {reason} ({detail})")

    for line, record in _records(path):
        columns = columns or _columns(list(record))
        if columns is None:
            raise InputError(str(path), line, "not a labels file: each record needs a dialogue id, a field and a "
                                              "label (e.g. dialogue_id, turn_index, field, label)")
        out.records += 1
        dialogue = record.get(columns["dialogue"])
        name = str(record.get(columns["field"]) or "")
        f = fields.get(name.strip().casefold())
        if dialogue is None or str(dialogue).strip() == "":
            skip(line, "no dialogue id", repr(record))
            continue
        if f is None:
            skip(line, "no such field", repr(name))
            continue
        try:
            turn = _turn(record.get(columns["turn"])) if "turn" in columns else None
        except ValueError:
            skip(line, "bad turn index", repr(record.get(columns["turn"])))
            continue
        if f.scope == "session":
            turn = SESSION
        elif turn is None:
            skip(line, "bad turn index", f"{f.name} is a turn field: the record needs a turn index")
            continue
        names = [n for v in _values(record.get(columns["label"])) if (n := f.option_name(v)) is not None]
        if not names:
            skip(line, "not an option", f"{record.get(columns['label'])!r} of {f.name}")
            continue
        key = (str(dialogue).strip(), turn)
        if f.multi:
            chosen = multi.setdefault((*key, f.name), set())
            chosen.update(names)
            out.gold.setdefault(key, {})[f.name] = sorted(chosen)
        else:
            out.gold.setdefault(key, {})[f.name] = names[0]
    if out.skipped:
        log.warning("%s: %d of %d gold records left out (%s); first: %s", path, sum(out.skipped.values()),
                    out.records, ", ".join(f"{n} {r}" for r, n in out.skipped.items()), "; ".join(out.examples[:2]))
    return out
