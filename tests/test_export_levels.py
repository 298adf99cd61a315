"""Exports to review tools keep both levels of a sub-code and show a rating's anchors (issue 19 items 1 and 2), and
say which stage of a cascade decided a record.

The built-in mi-talk spec (sub-coded client talk and therapist behaviour, 1-5 session ratings) runs on its demo
dialogues against the scripted loopback server; the Label Studio export is reviewed as a reviewer would there (a
different sub-code picked in the taxonomy, a different rating point) and imported back through the CLI. The
cascade's ``decided_by`` is checked on hand-made records.
"""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from autolabel.cli import app
from autolabel.interop.export import write_csv
from autolabel.interop.tools import Unit, argilla_record, label_studio_config, label_studio_task
from autolabel.review.queue import ReviewQueue
from autolabel.tasks import load_task
from tests.test_spec_export import TASK, db  # noqa: F401  (the module's run of mi-talk)

runner = CliRunner()


def export_to(db_path: Path, fmt: str, out: Path) -> None:
    r = runner.invoke(app, ["export", "--db", str(db_path), "--format", fmt, "--out", str(out)])
    assert r.exit_code == 0, r.output


def test_label_studio_config_has_a_taxonomy_for_sub_codes_and_anchored_points(tmp_path: Path,
                                                                              db: Path) -> None:  # noqa: F811
    export_to(db, "label-studio", tmp_path / "tasks.json")
    root = ET.fromstring((tmp_path / "tasks.label_config.xml").read_text(encoding="utf-8"))
    tax = root.find(".//Taxonomy[@name='therapist_behaviour']")
    assert tax is not None and tax.get("leafsOnly") == "true" and tax.get("maxUsages") == "1"
    tops = {c.get("value"): [g.get("value") for g in c.findall("Choice")] for c in tax.findall("Choice")}
    assert tops["question"] == ["open question", "closed question"]
    assert tops["reflection"] == ["simple reflection", "complex reflection"]
    talk = root.find(".//Taxonomy[@name='client_talk']")
    assert talk is not None and talk.get("leafsOnly") is None  # allow_parent: "change" itself may be chosen
    assert root.find(".//Choices[@name='therapist_behaviour']") is None
    rating = next(f for f in TASK.labels if f.scale is not None)
    points = root.findall(f".//Choices[@name='{rating.name}']/Choice")
    assert [p.get("value") for p in points] == [o.name for o in rating.options]
    for p, o in zip(points, rating.options, strict=True):
        assert p.get("html") == f"{o.name} — {o.description}"  # the anchor is visible text, the value the point


def test_label_studio_round_trip_keeps_the_leaf_and_the_rating(tmp_path: Path, db: Path) -> None:  # noqa: F811
    work = tmp_path / "review.db"
    work.write_bytes(db.read_bytes())
    out = tmp_path / "tasks.json"
    export_to(work, "label-studio", out)
    tasks = json.loads(out.read_text(encoding="utf-8"))
    turn = next(t for t in tasks if t["data"]["role"] == "therapist" and t["predictions"][0]["result"][0]["from_name"]
                == "therapist_behaviour")
    predicted = turn["predictions"][0]["result"][0]
    assert predicted["type"] == "taxonomy"
    (path,) = predicted["value"]["taxonomy"]
    assert len(path) == 2 and TASK.label("therapist_behaviour").parent_of(path[1]) == path[0]
    new_leaf = "complex reflection" if path[1] != "complex reflection" else "open question"
    new_path = [TASK.label("therapist_behaviour").parent_of(new_leaf), new_leaf]
    turn["annotations"] = [{"id": 1, "completed_by": 3, "result": [
        {"from_name": "therapist_behaviour", "to_name": "dialogue", "type": "taxonomy",
         "value": {"taxonomy": [new_path]}}]}]
    session = next(t for t in tasks if t["data"]["kind"] == "session")
    rating = next(f for f in TASK.labels if f.scale is not None)
    old = next(r for r in session["predictions"][0]["result"] if r["from_name"] == rating.name)
    point = "2" if old["value"]["choices"] != ["2"] else "4"
    session["annotations"] = [{"id": 2, "completed_by": 3, "result": [
        r if r["from_name"] != rating.name else {**r, "value": {"choices": [point]}}
        for r in session["predictions"][0]["result"] if r["from_name"] != "role"]}]
    reviewed = tmp_path / "reviewed.json"
    reviewed.write_text(json.dumps(tasks), encoding="utf-8")
    r = runner.invoke(app, ["import-reviews", str(reviewed), "--db", str(work)])
    assert r.exit_code == 0, r.output
    assert "2 of 2 answers applied" in r.output
    with ReviewQueue.open(work) as q:
        labels = {(g["dialogue_id"], g["turn_index"]): g["labels"] for g in q.gold_items()}
    assert labels[(turn["data"]["dialogue_id"], turn["data"]["turn_index"])] == {"therapist_behaviour": new_leaf}
    assert labels[(session["data"]["dialogue_id"], -1)][rating.name] == point
    # the reviewed record exports with both levels again
    export_to(work, "jsonl", tmp_path / "after.jsonl")
    recs = [json.loads(x) for x in (tmp_path / "after.jsonl").read_text(encoding="utf-8").splitlines()]
    rec = next(x for x in recs if x["dialogue_id"] == turn["data"]["dialogue_id"]
               and x.get("turn_index") == turn["data"]["turn_index"] and x["kind"] == "turn")
    assert rec["labels"]["therapist_behaviour"] == new_leaf and rec["parents"]["therapist_behaviour"] == new_path[0]


def test_argilla_records_keep_the_parent_as_metadata(tmp_path: Path, db: Path) -> None:  # noqa: F811
    out = tmp_path / "records.jsonl"
    export_to(db, "argilla", out)
    records = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    coded = [r for r in records if "therapist_behaviour" in r["suggestions"]]
    assert coded
    for r in coded:
        leaf = r["suggestions"]["therapist_behaviour"]["value"]
        assert r["metadata"]["therapist_behaviour_parent"] == TASK.label("therapist_behaviour").parent_of(leaf)
    plain = [r for r in records if r["metadata"]["kind"] == "session"]
    assert plain and not any(k.endswith("_parent") for r in plain for k in r["metadata"])
    assert not any("decided_by_stage" in r["metadata"] for r in records)  # not a cascade run


# -- a cascade's decided_by, on hand-made records --------------------------------------------------------------

def record(decided: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {"kind": "turn", "run_id": "r1", "dialogue_id": "d1", "turn_index": 1, "speaker": "T",
                           "role": "therapist", "status": "accepted", "flags": [], "model": "openai:big",
                           "labels": {"therapist_behaviour": "open question"}, "texts": {"explanation": "x"},
                           "confidence": {"therapist_behaviour": {"value": 0.9}}, "text": "What brings you?"}
    if decided is not None:
        rec["decided_by"] = decided
    return {**rec, **extra}


@pytest.mark.parametrize("decided", [{"stage": 1, "model": "local:qwen2.5-0.5b"}, None])
def test_decided_by_reaches_every_review_tool(decided: dict[str, Any] | None) -> None:
    task = load_task("mi-talk")
    unit = Unit(record(decided), [(0, "C", "Hi"), (1, "T", "What brings you?")])
    version = label_studio_task(unit, task)["predictions"][0]["model_version"]
    meta = argilla_record(unit, task)["metadata"]
    out = io.StringIO()
    write_csv([record(decided), record(decided, turn_index=2)], task, out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    if decided is None:
        assert version.startswith("openai:big|")
        assert "decided_by_stage" not in meta and "decided_by_stage" not in rows[0]
        return
    assert version.startswith("local:qwen2.5-0.5b|mi-talk@")
    assert (meta["decided_by_stage"], meta["decided_by_model"]) == (1, "local:qwen2.5-0.5b")
    assert [(r["decided_by_stage"], r["decided_by_model"]) for r in rows] == [("1", "local:qwen2.5-0.5b")] * 2
    header = out.getvalue().splitlines()[0].split(",")
    assert header.index("decided_by_stage") == header.index("flags") + 1
    assert label_studio_config(task)  # the config does not depend on the records
