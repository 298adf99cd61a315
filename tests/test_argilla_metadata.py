"""The Argilla settings declare the record metadata people filter on: ``<field>_parent`` (the upper level of a
sub-coded answer) and a cascade's ``decided_by_stage`` / ``decided_by_model``, as terms metadata properties in the
shape of Argilla 2.x ``TermsMetadataProperty.serialize()`` (``name``, ``title``, ``type``,
``visible_for_annotators``, ``settings: {type, values}``), so the dataset filters by them with no setup there.

The built-in mi-talk spec (sub-coded client talk and therapist behaviour) gives the parents; its run against the
scripted loopback server checks that every such key of every exported record is declared and its value allowed. A
cascade run's stages come from the run as stored.
"""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path
from typing import Any

from autolabel.interop.tools import Unit, argilla_record, argilla_settings, export_argilla
from autolabel.persistence.store import Store
from autolabel.tasks import load_task
from tests.test_export_levels import export_to, record
from tests.test_spec_export import TASK, db  # noqa: F401  (the module's run of mi-talk)

STAGES = ["local:qwen2.5-0.5b", "openai:gpt-4o-mini"]


def declared(settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in settings["metadata"]}


def allowed(prop: dict[str, Any], value: Any) -> bool:
    """Argilla's own check of a terms value: every element of a list value is one of the values (if listed)."""
    values = prop["settings"]["values"]
    return values is None or all(v in values for v in (value if isinstance(value, list) else [value]))


def test_parent_of_each_sub_coded_field_is_a_terms_property_with_its_top_options() -> None:
    meta = declared(argilla_settings(TASK))
    coded = [f for f in TASK.labels if f.has_children]
    assert coded, "mi-talk has sub-codes"
    for f in coded:
        name = f"{f.name}_parent"
        assert meta[name] == {"name": name, "title": meta[name]["title"], "type": "terms",
                              "visible_for_annotators": True,
                              "settings": {"type": "terms", "values": [o.name for o in f.top]}}
        assert meta[name]["title"]
    plain = [f for f in TASK.labels if not f.has_children]
    assert plain and not any(f"{f.name}_parent" in meta for f in plain)
    names = [m["name"] for m in argilla_settings(TASK)["metadata"]]
    assert len(names) == len(set(names))


def test_decided_by_is_declared_with_the_stages_when_known() -> None:
    known = declared(argilla_settings(TASK, stages=STAGES))
    assert known["decided_by_stage"]["type"] == "terms"
    assert known["decided_by_stage"]["settings"] == {"type": "terms", "values": [1, 2]}
    assert known["decided_by_model"]["settings"] == {"type": "terms", "values": STAGES}
    unknown = declared(argilla_settings(TASK))
    assert unknown["decided_by_stage"]["settings"] == {"type": "terms", "values": None}
    assert unknown["decided_by_model"]["settings"] == {"type": "terms", "values": None}


def test_a_cascade_records_metadata_is_allowed_by_its_settings() -> None:
    task = load_task("mi-talk")
    meta = declared(argilla_settings(task, stages=STAGES))
    unit = Unit(record({"stage": 1, "model": STAGES[0]}), [(0, "C", "Hi"), (1, "T", "What brings you?")])
    rec = argilla_record(unit, task)["metadata"]
    keys = [k for k in rec if k.endswith("_parent") or k.startswith("decided_by_")]
    assert {"decided_by_stage", "decided_by_model", "therapist_behaviour_parent"} <= set(keys)
    for k in keys:
        assert allowed(meta[k], rec[k]), (k, rec[k], meta[k])


def test_export_takes_the_stages_from_a_cascade_run(tmp_path: Path) -> None:
    path = tmp_path / "cascade.db"
    with closing(Store.open(path)) as store:
        store.start_run("c1", task_name=TASK.name, task_version=str(TASK.version), task_hash=TASK.spec_hash,
                        task_json=TASK.model_dump_json(), model=STAGES[-1], params={"cascade": "k", "stages": STAGES},
                        params_hash="h", input=None)
        with open(tmp_path / "records.jsonl", "w", encoding="utf-8") as out:
            assert export_argilla(store, "c1", TASK, out, True) == 0
    meta = declared(json.loads((tmp_path / "records.settings.json").read_text(encoding="utf-8")))
    assert meta["decided_by_model"]["settings"]["values"] == STAGES
    assert meta["decided_by_stage"]["settings"]["values"] == [1, 2]


def test_every_exported_parent_is_declared_and_allowed(tmp_path: Path, db: Path) -> None:  # noqa: F811
    out = tmp_path / "records.jsonl"
    export_to(db, "argilla", out)
    meta = declared(json.loads((tmp_path / "records.settings.json").read_text(encoding="utf-8")))
    records = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    seen = 0
    for r in records:
        for k, v in r["metadata"].items():
            if k.endswith("_parent"):
                seen += 1
                assert k in meta and allowed(meta[k], v), (k, v)
    assert seen
