"""Review in Label Studio or Argilla: export a run as their tasks or records, import the reviews back.

Export (``autolabel export --format label-studio|argilla``): one unit per turn — every turn, whatever its status,
so that a team can also spot-check accepted ones — with the whole dialogue as context, and one per session.
Each carries the run, dialogue, kind and turn index, which is how its review finds its way back, plus the model's
status and flags to filter on. The model's labels are pre-filled: as a prediction (Label Studio) or suggestions
(Argilla) with the model as agent (``<model>|<task>@<spec hash>``) and its confidence as score; a turn already
reviewed here carries the reviewer's labels instead (agent ``reviewed:<name>``, no score). Failed turns come
without labels. The dialogue text is the point, so ``--no-text`` is refused.

- **Label Studio**: a JSON list of tasks. ``data.dialogue`` is ``Paragraphs`` data (``[{"author", "text"}]``),
  ``data.target`` the turn index (null for a session), ``data.text`` the turn itself. Beside the file,
  ``<name>.label_config.xml`` is the matching labeling config: the dialogue (``layout="dialogue"``), the target
  turn, a read-only ``role`` choice that each task's prediction pre-selects (the turn's role, or ``session``),
  one ``Choices`` per label field (``choice="multiple"`` for multi-label fields) inside a ``View`` shown only
  when ``role`` is one the field applies to (Label Studio's ``visibleWhen="choice-selected"``), and a ``note``.
  A field with sub-codes is a ``Taxonomy`` instead — parents as top nodes, their sub-codes under them
  (``leafsOnly`` unless the spec allows the parent); its prediction is the path (``[["question", "open
  question"]]``) and the import reads the path's last element, the option. A rating field is ``Choices`` whose
  points show their anchors as visible text (``html="3 — friendly"``; the value stays the point): Label Studio's
  ``Rating`` tag draws 1..n stars with no anchors and cannot start a scale at 0.
- **Argilla** (2.x): JSONL, one record per line in the shape of ``Record.to_dict()``: ``fields`` (the dialogue as
  text, the target turn marked ``▶``, and the target turn), ``metadata``, ``suggestions`` per question with
  ``value``, ``score``, ``agent`` and ``type``. Beside it ``<name>.settings.json`` in the shape of
  ``Settings.serialize()``: one ``label_selection`` / ``multi_label_selection`` question per label field with its
  options (not required: each applies to some roles only), an optional ``note`` and a required ``decision``
  (accept / correct), because Argilla publishes no dataset without a required question. Load both with
  ``rg.Settings.from_json`` and ``rg.Record.from_dict``. A sub-coded field's question lists the answerable
  options; each record keeps the upper level as metadata ``<field>_parent``, to filter on. The settings declare
  ``<field>_parent`` (values: the field's top-level options) and ``decided_by_stage`` / ``decided_by_model`` (values:
  a cascade run's stages and their models; unlisted otherwise) as ``terms`` metadata properties, so Argilla's UI
  filters by them without setup.

A cascade run's records say which stage decided (``decided_by: {stage, model}``): the Label Studio prediction's
``model_version`` is that model, the Argilla record's metadata has ``decided_by_stage`` and ``decided_by_model``.

Import (``autolabel import-reviews``): every submitted answer becomes a review through ``ReviewQueue`` — claim,
then submit with the labels — so the audit log, agreement, adjudication, gold and the turn's status change exactly
as in the web UI. A turn the model had accepted (or failed) is not in the queue: it is queued first (reason
``external_review``, audit ``enqueue``) and then reviewed like any other, so it becomes gold too. Label Studio:
each annotation that is not cancelled, by ``completed_by``. Argilla: each user's responses, unless draft or
discarded; ``decision`` is not read (the labels say whether the model was corrected). The reviewer is
``label-studio:<user>`` / ``argilla:<user id>`` unless a name is given for all. Re-importing is harmless: a
reviewer's second answer to the same item, and items already settled, are skipped and reported. Every answer passes
``record_problems``, the model's check: an answer with some refused fields (e.g. a strategy ticked on a seeker
turn) is applied with its valid fields when they make a whole answer, and the refused ones are listed; skipped
(cancelled) Label Studio tasks and discarded Argilla responses are counted, not applied.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from itertools import groupby
from pathlib import Path
from typing import IO, Any

from autolabel.errors import AutolabelError, ConfigError, InputError, ReviewError
from autolabel.interop.export import checked_records, parents
from autolabel.persistence.store import Store
from autolabel.records import record_problems
from autolabel.review.queue import ItemStatus, ReviewQueue
from autolabel.tasks import LabelField, Option, RoleFields, TaskSpec, localize

SESSION_TEXT = "(the whole session)"
NOTE = "note"
DECISION = "decision"
ROLE = "role"
LS_RESERVED = ("dialogue", "turn", NOTE, ROLE)
SESSION_ROLE = "session"
ARGILLA_RESERVED = ("dialogue", "target", NOTE, DECISION)


class ImportFormat(str, Enum):
    LABEL_STUDIO = "label-studio"
    ARGILLA = "argilla"


# -- what is exported ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Unit:
    """One exported turn or session: its final record and its dialogue's turns ``(index, speaker, text)``."""

    record: dict[str, Any]
    dialogue: list[tuple[int, str, str]]

    @property
    def target(self) -> int | None:
        return self.record["turn_index"] if self.record["kind"] == "turn" else None

    def key(self) -> dict[str, Any]:
        r = self.record
        return {"run_id": r["run_id"], "dialogue_id": r["dialogue_id"], "kind": r["kind"],
                "turn_index": r.get("turn_index", -1)}


def units(store: Store, run_id: str, task: TaskSpec, include_text: bool) -> Iterator[Unit]:
    if not include_text:
        raise ConfigError("reviewing in another tool needs the dialogue text: drop --no-text")
    for _, recs in groupby(checked_records(store, run_id, task, True), key=lambda r: r["dialogue_id"]):
        group = list(recs)
        dialogue = [(r["turn_index"], r["speaker"], r.get("text", "")) for r in group if r["kind"] == "turn"]
        for r in group:
            yield Unit(r, dialogue)


def label_fields(task: TaskSpec) -> list[tuple[LabelField, str]]:
    """Every label field once, with who it is for (``seeker turns``, ``the whole session``)."""
    out: dict[str, tuple[LabelField, str]] = {}
    for f in task.labels:
        if f.scope == "session":
            out[f.name] = (f, "the whole session")
        else:
            roles = f.roles or tuple(task.roles)
            out[f.name] = (f, " and ".join(roles) + " turns")
    return list(out.values())


def unit_fields(task: TaskSpec, record: dict[str, Any]) -> RoleFields | None:
    return task.session_fields() if record["kind"] == "session" else task.fields_for(record.get("role"))


def _agent(record: dict[str, Any], task: TaskSpec) -> tuple[str, float | None, str]:
    """Who proposed the record's labels: (agent, score, Argilla suggestion type); in a cascade run, the model of the
    stage that decided."""
    if record["status"] == "reviewed":
        return f"reviewed:{record.get('reviewer') or 'unknown'}", None, "human"
    values = [c["value"] for c in record.get("confidence", {}).values()]
    model = (record.get("decided_by") or {}).get("model") or record["model"]
    return f"{model}|{task.name}@{task.spec_hash[:12]}", min(values) if values else None, "model"


def _decided_by(record: dict[str, Any]) -> dict[str, Any]:
    """``decided_by_stage`` and ``decided_by_model`` of a cascade run's record (empty otherwise)."""
    d = record.get("decided_by")
    return {"decided_by_stage": d["stage"], "decided_by_model": d["model"]} if d else {}


def _check_names(task: TaskSpec, reserved: tuple[str, ...], tool: str) -> None:
    clash = sorted({f.name for f in task.labels} & set(reserved))
    if clash:
        raise ConfigError(f"label field(s) {', '.join(clash)} clash with names the {tool} export uses")


def sidecar(out: IO[str], suffix: str) -> Path | None:
    """The file written beside the export (its stem plus ``suffix``), when the export is a named file."""
    name = getattr(out, "name", None)
    if not isinstance(name, str):
        return None
    path = Path(name)
    return path.with_name(path.stem + suffix)


# -- Label Studio ------------------------------------------------------------------------------------------------

def label_studio_config(task: TaskSpec) -> str:
    """The labeling config (XML) matching ``label_studio_task``'s data and predictions."""
    _check_names(task, LS_RESERVED, "Label Studio")
    view = ET.Element("View")
    ET.SubElement(view, "Header", value="$header")
    ET.SubElement(view, "Paragraphs", name="dialogue", value="$dialogue", layout="dialogue", nameKey="author",
                  textKey="text")
    ET.SubElement(view, "Header", value="Target")
    ET.SubElement(view, "Text", name="turn", value="$text")
    # who the unit is for, pre-selected by each task's prediction: each field shows only for its roles
    roles = ET.SubElement(view, "Choices", name=ROLE, toName="dialogue", choice="single-radio", showInline="true",
                          readonly="true")
    for r in [*task.roles, SESSION_ROLE]:
        ET.SubElement(roles, "Choice", value=r)
    for f, who in label_fields(task):
        how = f"choose up to {f.max_selected or len(f.options)}" if f.multi else "choose one"
        shown_for = [SESSION_ROLE] if f.scope == "session" else list(f.roles or task.roles)
        group = ET.SubElement(view, "View", visibleWhen="choice-selected", whenTagName=ROLE,
                              whenChoiceValue=",".join(shown_for))
        ET.SubElement(group, "Header", value=f"{f.name}: for {who}, {how}")
        if f.has_children:
            _taxonomy(group, f)
            continue
        choices = ET.SubElement(group, "Choices", name=f.name, toName="dialogue",
                                choice="multiple" if f.multi else "single-radio", showInline="true")
        for o in f.options:
            ET.SubElement(choices, "Choice", _choice(o, rating=f.scale is not None))
    ET.SubElement(view, "TextArea", name=NOTE, toName="dialogue", rows="2", maxSubmissions="1",
                  placeholder="optional note: why you corrected it, what was unclear")
    ET.indent(view)
    return ET.tostring(view, encoding="unicode") + "\n"


def _choice(o: Option, rating: bool = False) -> dict[str, str]:
    """A ``Choice``'s attributes: its value (the option name), the description as hint and, for a rating point, the
    anchor as visible text."""
    attrs = {"value": o.name}
    hint = localize(o.description, "en")
    if hint:
        attrs["hint"] = hint
        if rating:
            attrs["html"] = f"{o.name} — {hint}"
    return attrs


def _taxonomy(parent: ET.Element, f: LabelField) -> None:
    """A sub-coded field as a ``Taxonomy``: each top-level option, its sub-codes nested under it."""
    attrs = {"name": f.name, "toName": "dialogue", "maxUsages": str(f.max_selected or len(f.options)) if f.multi
             else "1"}
    if not f.allow_parent:
        attrs["leafsOnly"] = "true"
    tree = ET.SubElement(parent, "Taxonomy", attrs)
    for top in f.top:
        node = ET.SubElement(tree, "Choice", _choice(top))
        for o in f.options:
            if o.parent == top.name:
                ET.SubElement(node, "Choice", _choice(o))


def _ls_result(f: LabelField, value: Any) -> dict[str, Any]:
    """A prediction's result for one field: choices, or taxonomy paths for a sub-coded field."""
    values = value if isinstance(value, list) else [value]
    if f.has_children:
        paths = [[f.parent_of(v), v] if f.parent_of(v) != v else [v] for v in values]
        return {"id": f.name, "from_name": f.name, "to_name": "dialogue", "type": "taxonomy",
                "value": {"taxonomy": paths}}
    return {"id": f.name, "from_name": f.name, "to_name": "dialogue", "type": "choices",
            "value": {"choices": values}}


def label_studio_task(unit: Unit, task: TaskSpec) -> dict[str, Any]:
    r = unit.record
    text = next((t for i, _, t in unit.dialogue if i == unit.target), SESSION_TEXT)
    where = f"turn {unit.target} ({r.get('speaker')}, {r.get('role')})" if unit.target is not None else "session"
    flags = ", ".join(r["flags"])
    data = {"dialogue": [{"author": s, "text": t} for _, s, t in unit.dialogue], "target": unit.target,
            "text": text, **unit.key(), "speaker": r.get("speaker"), "role": r.get("role"),
            "language": r.get("language"), "status": r["status"], "flags": flags,
            "header": f"{r['dialogue_id']} · {where} · model: {r['status']}" + (f" ({flags})" if flags else "")}
    out: dict[str, Any] = {"data": data}
    fields = unit_fields(task, r)
    result = [_ls_result(f, v) for f in (fields.labels if fields else ()) if (v := r["labels"].get(f.name)) is not None]
    role = SESSION_ROLE if r["kind"] == "session" else r.get("role")
    agent, score, _ = _agent(r, task)
    prediction: dict[str, Any] = {"model_version": agent, "result": [
        *result, {"id": ROLE, "from_name": ROLE, "to_name": "dialogue", "type": "choices",
                  "value": {"choices": [role]}}]}
    if result and score is not None:
        prediction["score"] = round(score, 4)
    out["predictions"] = [prediction]
    return out


def export_label_studio(store: Store, run_id: str, task: TaskSpec, out: IO[str], include_text: bool) -> int:
    """A JSON list of Label Studio tasks, and ``<name>.label_config.xml`` beside it (module docstring)."""
    config = label_studio_config(task)
    out.write("[")
    n = 0
    for unit in units(store, run_id, task, include_text):
        out.write(("," if n else "") + "\n" + json.dumps(label_studio_task(unit, task), ensure_ascii=False))
        n += 1
    out.write("\n]\n")
    path = sidecar(out, ".label_config.xml")
    if path is not None:
        path.write_text(config, encoding="utf-8")
    return n


# -- Argilla -----------------------------------------------------------------------------------------------------

def terms_property(name: str, title: str, values: list[Any] | None) -> dict[str, Any]:
    """A metadata property in the shape of Argilla 2.x ``TermsMetadataProperty.serialize()``; ``values`` None: any."""
    return {"name": name, "title": title, "type": "terms", "visible_for_annotators": True,
            "settings": {"type": "terms", "values": values}}


def argilla_metadata(task: TaskSpec, stages: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The record metadata to filter on, declared: ``<field>_parent`` for each sub-coded field (its top-level
    options), and ``decided_by_stage`` / ``decided_by_model`` (a cascade's stages, 1-based, and their models when
    ``stages`` are known; any value otherwise)."""
    out = [terms_property(f"{f.name}_parent", f"{f.name} (upper level)", [o.name for o in f.top])
           for f, _ in label_fields(task) if f.has_children]
    out.append(terms_property("decided_by_stage", "Cascade stage that decided",
                              list(range(1, len(stages) + 1)) if stages else None))
    out.append(terms_property("decided_by_model", "Model of the stage that decided", list(stages) if stages else None))
    return out


def argilla_settings(task: TaskSpec, stages: Sequence[str] | None = None) -> dict[str, Any]:
    """Dataset settings in the shape of Argilla 2.x ``Settings.serialize()``; ``stages``: a cascade run's stage
    models, in order (``argilla_metadata``)."""
    metadata = argilla_metadata(task, stages)
    _check_names(task, ARGILLA_RESERVED + tuple(m["name"] for m in metadata), "Argilla")

    def text_field(name: str, title: str) -> dict[str, Any]:
        return {"name": name, "title": title, "required": True, "description": None,
                "settings": {"type": "text", "use_markdown": False}}

    questions = []
    for f, who in label_fields(task):
        kind = "multi_label_selection" if f.multi else "label_selection"
        settings: dict[str, Any] = {"type": kind, "options": [{"value": o.name, "text": o.name} for o in f.options],
                                    "visible_options": None}
        if f.multi:
            settings["options_order"] = "natural"
        options = "; ".join(f"{o.name}: {d}" for o in f.options if (d := localize(o.description, "en")))
        description = " ".join(x for x in (localize(f.description, "en"), f"For {who} only.", options) if x)
        questions.append({"name": f.name, "title": f"{f.name} ({who})", "description": description,
                          "required": False, "settings": settings})
    questions.append({"name": DECISION, "title": "Were the suggested labels right?", "required": True,
                      "description": "accept: as suggested; correct: you changed them",
                      "settings": {"type": "label_selection", "visible_options": None,
                                   "options": [{"value": "accept", "text": "accept"},
                                               {"value": "correct", "text": "correct"}]}})
    questions.append({"name": NOTE, "title": "Note (optional)", "required": False, "description": None,
                      "settings": {"type": "text", "use_markdown": False}})
    guidelines = localize(task.guidelines, "en")
    how = ("Each record is one turn of a counseling dialogue (marked ▶ in the dialogue) or a whole session. "
           "Answer the label questions that apply to it — their titles say for which turns — correcting the "
           "suggested labels where they are wrong.")
    return {"guidelines": f"{guidelines}\n\n{how}".strip(),
            "fields": [text_field("dialogue", "Dialogue"), text_field("target", "Target")],
            "questions": questions, "metadata": metadata, "vectors": [],
            "allow_extra_metadata": True, "distribution": {"strategy": "overlap", "min_submitted": 1}, "mapping": None}


def argilla_record(unit: Unit, task: TaskSpec) -> dict[str, Any]:
    """A record in the shape of Argilla 2.x ``Record.to_dict()``."""
    r = unit.record
    lines = [("▶ " if i == unit.target else "") + f"[{i}] {s}: {t}" for i, s, t in unit.dialogue]
    target = next((f"[{i}] {s}: {t}" for i, s, t in unit.dialogue if i == unit.target), SESSION_TEXT)
    agent, _, kind = _agent(r, task)
    fields = unit_fields(task, r)
    suggestions = {}
    for f in fields.labels if fields else ():
        value = r["labels"].get(f.name)
        if value is not None:
            conf = r.get("confidence", {}).get(f.name)
            score = round(conf["value"], 4) if conf and kind == "model" else None
            suggestions[f.name] = {"value": value, "score": score, "agent": agent, "type": kind}
    key = unit.key()
    metadata = {**key, "speaker": r.get("speaker"), "role": r.get("role"), "language": r.get("language"),
                "status": r["status"], "flags": r["flags"], **_decided_by(r),
                **{f"{name}_parent": v for name, v in (r.get("parents") or parents(task, r["labels"])).items()}}
    return {"id": "/".join(str(key[k]) for k in ("run_id", "dialogue_id", "kind", "turn_index")),
            "fields": {"dialogue": "\n".join(lines), "target": target},
            "metadata": {k: v for k, v in metadata.items() if v is not None}, "suggestions": suggestions,
            "responses": {}, "vectors": {}, "status": "pending"}


def export_argilla(store: Store, run_id: str, task: TaskSpec, out: IO[str], include_text: bool) -> int:
    """Argilla records as JSONL, and ``<name>.settings.json`` beside them (module docstring)."""
    stages = json.loads(store.run(run_id).get("params_json") or "{}").get("stages")
    settings = argilla_settings(task, stages)
    n = 0
    for unit in units(store, run_id, task, include_text):
        out.write(json.dumps(argilla_record(unit, task), ensure_ascii=False) + "\n")
        n += 1
    path = sidecar(out, ".settings.json")
    if path is not None:
        path.write_text(json.dumps(settings, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return n


# -- import --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Answer:
    """One reviewer's answer to one exported unit, as read from a reviewed export."""

    where: str
    run_id: str
    dialogue_id: str
    kind: str
    turn_index: int
    reviewer: str
    labels: dict[str, Any]
    note: str | None = None
    cancelled: bool = False
    """Skipped in the tool (Label Studio ``was_cancelled``, an Argilla ``discarded`` response): counted only."""


@dataclass
class ImportResult:
    """What ``import_reviews`` did. ``skipped`` and ``errors`` are one line each: ``where: why``."""

    answers: int = 0
    applied: int = 0
    queued: int = 0
    """Of the applied: turns that were not in the review queue (the model had accepted them)."""
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """Answers refused whole, and the refused fields of answers applied in part (``where: applied ...;
    refused ...``)."""
    reviewers: set[str] = field(default_factory=set)
    cancelled: int = 0
    """Skipped (cancelled) Label Studio annotations, and discarded Argilla responses: not answers."""
    partial: int = 0
    """Of the applied: answers whose valid fields were applied and the others refused."""


def read_answers(path: str | Path, format: ImportFormat | str | None = None,
                 reviewer: str | None = None) -> list[Answer]:
    """The answers in a reviewed Label Studio export (JSON) or Argilla records (JSONL or a JSON list)."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(str(path), None, e.strerror or str(e)) from None
    try:
        items = json.loads(raw) if raw.lstrip().startswith("[") else \
            [json.loads(line) for line in raw.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise InputError(str(path), e.lineno, f"not JSON: {e.msg}") from None
    if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
        raise InputError(str(path), None, "expected a list of Label Studio tasks or Argilla records")
    if format is not None and format not in {f.value for f in ImportFormat}:
        raise ConfigError(f"unknown review format {format!r}: label-studio or argilla")
    fmt = ImportFormat(format) if format else _detect(items, path)
    reader = _ls_answers if fmt == ImportFormat.LABEL_STUDIO else _argilla_answers
    out: list[Answer] = []
    for n, item in enumerate(items, 1):
        out += reader(item, f"{path.name}#{n}", reviewer)
    return out


def import_reviews(db: str | Path, path: str | Path, *, format: ImportFormat | str | None = None,
                   reviewer: str | None = None) -> ImportResult:
    """Apply the reviews of a reviewed Label Studio or Argilla export as reviews (module docstring)."""
    read = read_answers(path, format, reviewer)
    answers = [a for a in read if not a.cancelled]
    result = ImportResult(answers=len(answers), cancelled=len(read) - len(answers))
    result.skipped += [f"{a.where}: {a.reviewer} skipped (cancelled) it" for a in read if a.cancelled]
    with ReviewQueue.open(db) as queue:
        for a in answers:
            try:
                _apply(queue, a, result)
            except AutolabelError as e:
                result.errors.append(f"{a.where}: {e}")
    return result


def _apply(queue: ReviewQueue, a: Answer, result: ImportResult) -> None:
    task = queue.task(a.run_id)
    item = queue.find(a.run_id, a.dialogue_id, a.kind, a.turn_index)
    proposal = item.proposal if item is not None else _final_record(queue.store, a)
    if proposal is None:
        raise ReviewError(f"no {a.kind} {a.dialogue_id}/{a.turn_index} in run {a.run_id}")
    fields = unit_fields(task, proposal)
    labels = _shaped(a.labels, fields)
    problems = record_problems({**proposal, "status": "reviewed", "labels": labels}, task)
    if problems:  # keep the valid fields when they make a whole answer without the refused ones
        refused = {n for n in labels for p in problems if p.startswith(f"$.labels.{n}:")}
        kept = {n: v for n, v in labels.items() if n not in refused}
        if not refused or not kept or record_problems({**proposal, "status": "reviewed", "labels": kept}, task):
            raise ReviewError(f"labels refused: {'; '.join(problems[:3])}")
        labels = kept
    if item is not None and item.status in (ItemStatus.DONE.value, ItemStatus.ADJUDICATION.value):
        result.skipped.append(f"{a.where}: already {item.status} ({a.dialogue_id}/{a.turn_index})")
        return
    if item is not None and any(r["reviewer"] == a.reviewer for r in queue.reviews(item.id)):
        result.skipped.append(f"{a.where}: {a.reviewer} already reviewed {a.dialogue_id}/{a.turn_index}")
        return
    queued = item is None
    if item is None:
        item = queue.enqueue(a.run_id, a.dialogue_id, a.kind, a.turn_index, a.reviewer)
    claimed = queue.claim(a.reviewer, item_id=item.id)
    if claimed is None:
        result.skipped.append(f"{a.where}: another reviewer holds {a.dialogue_id}/{a.turn_index} now")
        return
    try:
        queue.submit(claimed.id, a.reviewer, claimed.version, labels, note=a.note)
    except ReviewError:
        queue.release(claimed.id, a.reviewer, claimed.version)
        raise
    if problems:
        result.partial += 1
        result.errors.append(f"{a.where}: applied {', '.join(labels)}; refused {'; '.join(problems)}")
    result.applied += 1
    result.queued += queued
    result.reviewers.add(a.reviewer)


def _final_record(store: Store, a: Answer) -> dict[str, Any] | None:
    for rec in store.final_records_of(a.run_id, a.dialogue_id):
        if rec["kind"] == a.kind and rec.get("turn_index", -1) == a.turn_index:
            return rec
    return None


def _shaped(labels: dict[str, Any], fields: RoleFields | None) -> dict[str, Any]:
    """Labels as the task expects them: one name for single-label fields, a list for multi-label ones."""
    multi = {f.name: f.multi for f in fields.labels} if fields else {}
    out = {}
    for name, value in labels.items():
        if multi.get(name) is False and isinstance(value, list) and len(value) == 1:
            value = value[0]
        elif multi.get(name) and isinstance(value, str):
            value = [value]
        out[name] = value
    return out


def _detect(items: list[dict[str, Any]], path: Path) -> ImportFormat:
    first = items[0] if items else {}
    if "data" in first:
        return ImportFormat.LABEL_STUDIO
    if "fields" in first:
        return ImportFormat.ARGILLA
    raise InputError(str(path), None, "neither Label Studio tasks nor Argilla records: pass --format")


def _key(where: str, values: dict[str, Any]) -> dict[str, Any]:
    try:
        return {"run_id": str(values["run_id"]), "dialogue_id": str(values["dialogue_id"]),
                "kind": str(values["kind"]), "turn_index": int(values["turn_index"])}
    except (KeyError, TypeError, ValueError):
        raise InputError(where, None, "not exported by autolabel (no run_id, dialogue_id, kind, turn_index)") from None


def _ls_answers(task: dict[str, Any], where: str, reviewer: str | None) -> list[Answer]:
    key = _key(where, task.get("data") or {})
    out = []
    for a in task.get("annotations") or []:
        user = a.get("completed_by")
        if isinstance(user, dict):
            user = user.get("email") or user.get("id")
        who = reviewer or f"label-studio:{user}"
        if a.get("was_cancelled"):
            out.append(Answer(where, **key, reviewer=who, labels={}, cancelled=True))
            continue
        if not a.get("result"):
            continue
        labels: dict[str, Any] = {}
        note = None
        for r in a["result"]:
            value = r.get("value") or {}
            if r.get("type") == "choices" and r.get("from_name") != ROLE:
                labels[r["from_name"]] = list(value.get("choices", []))
            elif r.get("type") == "taxonomy":  # a path from the top: its last element is the option
                labels[r["from_name"]] = [path[-1] for path in value.get("taxonomy", []) if path]
            elif r.get("type") == "textarea" and r.get("from_name") == NOTE:
                note = "\n".join(value.get("text", [])) or None
        if labels:
            out.append(Answer(where, **key, reviewer=who, labels=labels, note=note))
    return out


def _argilla_answers(record: dict[str, Any], where: str, reviewer: str | None) -> list[Answer]:
    meta = record.get("metadata") or {}
    if "run_id" not in meta and isinstance(record.get("id"), str) and record["id"].count("/") >= 3:
        head, kind, index = record["id"].rsplit("/", 2)
        run_id, dialogue_id = head.split("/", 1)
        meta = {"run_id": run_id, "dialogue_id": dialogue_id, "kind": kind, "turn_index": index}
    key = _key(where, meta)
    by_user: dict[str, dict[str, Any]] = defaultdict(dict)
    discarded: set[str] = set()
    for question, responses in (record.get("responses") or {}).items():
        for resp in responses or []:
            if resp.get("status") == "discarded":
                discarded.add(str(resp.get("user_id")))
            if resp.get("status") in ("draft", "discarded") or resp.get("value") is None:
                continue
            by_user[str(resp.get("user_id"))][question] = resp["value"]
    out = [Answer(where, **key, reviewer=reviewer or f"argilla:{user}", labels={}, cancelled=True)
           for user in sorted(discarded - set(by_user))]
    for user, values in by_user.items():
        note = values.pop(NOTE, None)
        values.pop(DECISION, None)
        if values:
            out.append(Answer(where, **key, reviewer=reviewer or f"argilla:{user}", labels=values,
                              note=str(note) if note else None))
    return out
