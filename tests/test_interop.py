"""Round trips through Label Studio and Argilla: export a real run, edit the export as a reviewer would there,
import the reviews back, and find them in the store exactly as if made in the web UI (reviews, audit, gold, turn
status). Plus the shape of what those tools read: the labeling config XML and the Argilla dataset settings."""

from __future__ import annotations

import json
import re
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from autolabel import ConfigError, export, load_task
from autolabel.cli import app
from autolabel.interop.tools import import_reviews
from autolabel.review.queue import ReviewQueue
from tests.test_review import annotate_into, copy_db

runner = CliRunner()
TASK = load_task("psy-insight")


@pytest.fixture(scope="module")
def annotated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("interop") / "base.db"
    annotate_into(db)
    return db


@pytest.fixture
def db(annotated: Path, tmp_path: Path) -> Path:
    return copy_db(annotated, tmp_path / "review.db")


def rows(db: Path, sql: str, *params: Any) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


def final_records(db: Path) -> list[dict[str, Any]]:
    return [json.loads(r[0]) for r in rows(db, "SELECT record_json FROM annotations WHERE is_final=1")]


def pick(records: list[dict[str, Any]], status: str, role: str | None = "seeker") -> dict[str, Any]:
    kind = "session" if role is None else "turn"
    return next(r for r in records if r["status"] == status and r["kind"] == kind and r.get("role") == role)


def key(rec: dict[str, Any]) -> tuple[str, int]:
    return rec["dialogue_id"], rec.get("turn_index", -1)


def other_option(field: str, current: list[str] | str) -> str:
    chosen = current if isinstance(current, list) else [current]
    return next(o.name for o in TASK.label(field).options if o.name not in chosen)


def assert_reviewed_like_the_ui(db: Path, rec: dict[str, Any], reviewer: str, labels: dict[str, Any],
                                decision: str, actions: list[str]) -> None:
    with ReviewQueue.open(db) as q:
        item = q.find(rec["run_id"], rec["dialogue_id"], rec["kind"], rec.get("turn_index", -1))
        assert item is not None and item.status == "done"
        (review,) = q.reviews(item.id)
        assert (review["reviewer"], review["labels"], review["decision"]) == (reviewer, labels, decision)
        assert [a["action"] for a in q.audit(item.id)] == actions
        assert all(a["reviewer"] == reviewer for a in q.audit(item.id))
        gold = [g for g in q.gold_items() if (g["dialogue_id"], g["turn_index"]) == key(rec)]
    assert len(gold) == 1 and gold[0]["labels"] == labels and gold[0]["reviewer"] == reviewer
    if rec["kind"] == "turn":
        assert rows(db, "SELECT status FROM turns WHERE dialogue_id=? AND turn_index=?", *key(rec)) == [("reviewed",)]
    final = [r for r in final_records(db) if key(r) == key(rec) and r["kind"] == rec["kind"]]
    assert final[0]["status"] == "reviewed" and final[0]["labels"] == labels


# -- Label Studio ------------------------------------------------------------------------------------------------

def test_label_studio_config_parses_and_names_every_label_field(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "tasks.json"
    export(db, "label-studio", out)
    root = ET.parse(tmp_path / "tasks.label_config.xml").getroot()
    assert root.tag == "View"
    (para,) = root.iter("Paragraphs")
    assert para.attrib | {} == {"name": "dialogue", "value": "$dialogue", "layout": "dialogue", "nameKey": "author",
                                "textKey": "text"}
    choices = {c.get("name"): c for c in root.iter("Choices") if c.get("name") != "role"}
    assert set(choices) == {f.name for f in TASK.labels}
    for f in TASK.labels:
        c = choices[f.name]
        assert c.get("toName") == "dialogue"
        assert c.get("choice") == ("multiple" if f.multi else "single-radio")
        assert [x.get("value") for x in c.iter("Choice")] == [o.name for o in f.options]
    names = [e.get("name") for e in root.iter() if e.get("name")]
    assert len(names) == len(set(names)), "tag names are unique"
    data_refs = {e.get("value")[1:] for e in root.iter() if (e.get("value") or "").startswith("$")}
    tasks = json.loads(out.read_text())
    assert data_refs <= set(tasks[0]["data"]), "every $variable of the config is in the tasks' data"


def test_label_studio_tasks_carry_the_dialogue_and_the_model_prediction(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "tasks.json"
    n = export(db, "label-studio", out)
    tasks = json.loads(out.read_text())
    records = final_records(db)
    assert n == len(tasks) == len(records), "one task per turn and per session"
    by_key = {(r["dialogue_id"], r["kind"], r.get("turn_index", -1)): r for r in records}
    for t in tasks:
        d = t["data"]
        rec = by_key[(d["dialogue_id"], d["kind"], d["turn_index"])]
        assert all(set(p) == {"author", "text"} for p in d["dialogue"])
        if d["kind"] == "turn":
            assert d["target"] == d["turn_index"] and d["dialogue"][d["target"]]["text"] == d["text"]
        else:
            assert d["target"] is None
        (pred,) = t["predictions"]
        assert pred["model_version"] == f"openai:test|psy-insight@{TASK.spec_hash[:12]}"
        assert pred["score"] == round(min(c["value"] for c in rec["confidence"].values()), 4)
        got = {r["from_name"]: r["value"]["choices"] for r in pred["result"] if r["from_name"] != "role"}
        want = {k: v if isinstance(v, list) else [v] for k, v in rec["labels"].items()}
        assert got == want
        assert all(r["to_name"] == "dialogue" and r["type"] == "choices" for r in pred["result"])
    risky = next(t for t in tasks if t["data"]["dialogue_id"] == "risk" and t["data"]["target"] == 1)
    assert "risk_content" in risky["data"]["flags"]


def test_label_studio_round_trip(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "tasks.json"
    export(db, "label-studio", out)
    tasks = json.loads(out.read_text())
    records = final_records(db)
    flagged, accepted, session = pick(records, "flagged"), pick(records, "accepted"), pick(records, "accepted", None)

    def task_of(rec: dict[str, Any]) -> dict[str, Any]:
        return next(t for t in tasks if (t["data"]["dialogue_id"], t["data"]["turn_index"]) == key(rec)
                    and t["data"]["kind"] == rec["kind"])

    corrected = [other_option("emotion", flagged["labels"]["emotion"])]
    t = task_of(flagged)  # a reviewer changes a choice and leaves a note
    t["annotations"] = [{"id": 1, "completed_by": 7, "was_cancelled": False, "result": [
        {"from_name": "emotion", "to_name": "dialogue", "type": "choices", "value": {"choices": corrected}},
        {"from_name": "note", "to_name": "dialogue", "type": "textarea", "value": {"text": ["not anxious, ashamed"]}},
    ]}, {"id": 2, "completed_by": 8, "was_cancelled": True, "result": []}]
    t = task_of(accepted)  # a turn the model had accepted: submitted as predicted
    t["annotations"] = [{"id": 3, "completed_by": {"id": 9, "email": "bo@example.org"},
                         "result": t["predictions"][0]["result"]}]
    t = task_of(session)  # the session: the therapy corrected
    therapy = other_option("psychotherapy", session["labels"]["psychotherapy"])
    t["annotations"] = [{"id": 4, "completed_by": 7, "result": [
        {"from_name": "psychotherapy", "to_name": "dialogue", "type": "choices", "value": {"choices": [therapy]}},
        {"from_name": "topic", "to_name": "dialogue", "type": "choices",
         "value": {"choices": [session["labels"]["topic"]]}}]}]
    reviewed = tmp_path / "reviewed.json"
    reviewed.write_text(json.dumps(tasks))

    r = runner.invoke(app, ["import-reviews", str(reviewed), "--db", str(db)])
    assert r.exit_code == 0, r.output
    assert "3 of 3 answers applied" in r.output and "2 for turns the model had accepted" in r.output

    assert_reviewed_like_the_ui(db, flagged, "label-studio:7", {"emotion": corrected}, "correct", ["claim", "submit"])
    with ReviewQueue.open(db) as q:
        item = q.find(flagged["run_id"], flagged["dialogue_id"], "turn", flagged["turn_index"])
        assert q.reviews(item.id)[0]["note"] == "not anxious, ashamed"
    assert_reviewed_like_the_ui(db, accepted, "label-studio:bo@example.org", accepted["labels"], "accept",
                                ["enqueue", "claim", "submit"])
    assert_reviewed_like_the_ui(db, session, "label-studio:7", {**session["labels"], "psychotherapy": therapy},
                                "correct", ["enqueue", "claim", "submit"])

    again = runner.invoke(app, ["import-reviews", str(reviewed), "--db", str(db), "--format", "label-studio"])
    assert again.exit_code == 0 and "0 of 3 answers applied" in again.output
    assert again.output.count("already done") == 3, "importing twice changes nothing"
    assert rows(db, "SELECT COUNT(*) FROM reviews") == [(3,)]


def test_refused_labels_change_nothing_and_fail_the_command(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "tasks.json"
    export(db, "label-studio", out)
    tasks = json.loads(out.read_text())
    accepted = pick(final_records(db), "accepted")
    t = next(t for t in tasks if (t["data"]["dialogue_id"], t["data"]["turn_index"]) == key(accepted))
    t["annotations"] = [{"completed_by": 1, "result": [
        {"from_name": "emotion", "to_name": "dialogue", "type": "choices", "value": {"choices": ["Bliss"]}}]}]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(tasks))
    before = rows(db, "SELECT COUNT(*) FROM review_items"), rows(db, "SELECT COUNT(*) FROM review_audit")
    r = runner.invoke(app, ["import-reviews", str(bad), "--db", str(db)])
    assert r.exit_code == 7 and "not an option" in r.output and "Bliss" in r.output
    after = rows(db, "SELECT COUNT(*) FROM review_items"), rows(db, "SELECT COUNT(*) FROM review_audit")
    assert after == before, "a refused answer queues nothing and writes no audit row"
    unknown = runner.invoke(app, ["import-reviews", str(bad), "--db", str(db), "--format", "prodigy"])
    assert isinstance(unknown.exception, ConfigError) and "label-studio or argilla" in str(unknown.exception)


# -- Argilla -----------------------------------------------------------------------------------------------------

def test_argilla_settings_and_records(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "records.jsonl"
    r = runner.invoke(app, ["export", "--db", str(db), "--format", "argilla", "--out", str(out)])
    assert r.exit_code == 0, r.output
    n = int(re.search(r"wrote (\d+) records", r.output).group(1))
    settings = json.loads((tmp_path / "records.settings.json").read_text())
    assert [f["name"] for f in settings["fields"]] == ["dialogue", "target"]
    assert all(f["settings"]["type"] == "text" and f["required"] for f in settings["fields"])
    questions = {q["name"]: q for q in settings["questions"]}
    for f in TASK.labels:
        q = questions[f.name]
        assert q["settings"]["type"] == ("multi_label_selection" if f.multi else "label_selection")
        assert [o["value"] for o in q["settings"]["options"]] == [o.name for o in f.options]
        assert q["required"] is False
    assert [q["name"] for q in settings["questions"] if q["required"]] == ["decision"], "Argilla needs one"
    assert settings["guidelines"] and settings["allow_extra_metadata"] is True

    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert n == len(records) == len(final_records(db))
    for rec in records:
        assert set(rec) == {"id", "fields", "metadata", "suggestions", "responses", "vectors", "status"}
        assert set(rec["fields"]) == {"dialogue", "target"} and rec["fields"]["target"]
        for s in rec["suggestions"].values():
            assert set(s) == {"value", "score", "agent", "type"} and s["type"] == "model"
            assert 0.0 <= s["score"] <= 1.0 and s["agent"].startswith("openai:test|psy-insight@")
    turn = next(r for r in records if r["metadata"]["kind"] == "turn" and r["metadata"]["turn_index"] == 2)
    assert "▶ [2] " in turn["fields"]["dialogue"] and turn["fields"]["target"].startswith("[2] ")


def test_argilla_round_trip(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "records.jsonl"
    export(db, "argilla", out)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    db_records = final_records(db)
    flagged, accepted = pick(db_records, "flagged", "supporter"), pick(db_records, "accepted")

    def record_of(rec: dict[str, Any]) -> dict[str, Any]:
        return next(r for r in records if (r["metadata"]["dialogue_id"], r["metadata"]["turn_index"]) == key(rec)
                    and r["metadata"]["kind"] == "turn")

    strategy = [other_option("strategy", flagged["labels"]["strategy"])]
    record_of(flagged)["responses"] = {
        "strategy": [{"value": strategy, "user_id": "u-1", "status": "submitted"}],
        "decision": [{"value": "correct", "user_id": "u-1", "status": "submitted"}],
        "note": [{"value": "a question, not advice", "user_id": "u-1", "status": "submitted"}]}
    record_of(accepted)["responses"] = {
        "emotion": [{"value": accepted["labels"]["emotion"], "user_id": "u-2"}],
        "decision": [{"value": "accept", "user_id": "u-2"}]}
    draft = next(r for r in records if r["metadata"]["kind"] == "turn" and r is not record_of(flagged)
                 and r is not record_of(accepted))
    draft["responses"] = {"emotion": [{"value": ["Fear"], "user_id": "u-3", "status": "draft"}]}
    reviewed = tmp_path / "reviewed.jsonl"
    reviewed.write_text("".join(json.dumps(r) + "\n" for r in records))

    result = import_reviews(db, reviewed, reviewer="carol")
    assert (result.answers, result.applied, result.queued, result.errors) == (2, 2, 1, [])
    assert_reviewed_like_the_ui(db, flagged, "carol", {"strategy": strategy}, "correct", ["claim", "submit"])
    assert_reviewed_like_the_ui(db, accepted, "carol", accepted["labels"], "accept", ["enqueue", "claim", "submit"])
    with ReviewQueue.open(db) as q:
        assert {r["reviewer"] for g in q.items() for r in q.reviews(g.id)} == {"carol"}, "the draft was not applied"

    by_user = import_reviews(copy_db(db, tmp_path / "again.db"), reviewed)
    assert by_user.applied == 0 and len(by_user.skipped) == 2


def test_an_import_applies_the_valid_answers_and_lists_the_refused_ones(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "tasks.json"
    export(db, "label-studio", out)
    tasks = json.loads(out.read_text())
    records = final_records(db)
    flagged, accepted = pick(records, "flagged"), pick(records, "accepted")
    by_key = {(t["data"]["dialogue_id"], t["data"]["turn_index"], t["data"]["kind"]): t for t in tasks}
    four = [o.name for o in TASK.label("emotion").options][:4]
    for rec, choices in ((flagged, four), (accepted, [])):  # more than "up to 3"; none at all
        by_key[(*key(rec), "turn")]["annotations"] = [{"completed_by": 1, "result": [
            {"from_name": "emotion", "to_name": "dialogue", "type": "choices", "value": {"choices": choices}}]}]
    good = next(r for r in records if r["kind"] == "turn" and r["role"] == "seeker" and key(r) not in
                (key(flagged), key(accepted)))
    by_key[(*key(good), "turn")]["annotations"] = [{"completed_by": 2, "result": [
        {"from_name": "emotion", "to_name": "dialogue", "type": "choices", "value": {"choices": ["Fear"]}}]}]
    reviewed = tmp_path / "reviewed.json"
    reviewed.write_text(json.dumps(tasks))
    result = import_reviews(db, reviewed)
    assert (result.answers, result.applied) == (3, 1)
    assert sorted(e.split(": ", 1)[1] for e in result.errors) == [
        "labels refused: $.labels.emotion: 4 options chosen, at most 3 allowed",
        "labels refused: $.labels.emotion: no option chosen"]
    r = runner.invoke(app, ["import-reviews", str(reviewed), "--db", str(db)])
    assert r.exit_code == 7, "refused answers fail the command"
    with ReviewQueue.open(db) as q:
        gold = {(g["dialogue_id"], g["turn_index"]): g["labels"] for g in q.gold_items()}
    assert gold == {key(good): {"emotion": ["Fear"]}}, "only the valid answer became gold"


def test_label_studio_shows_each_role_its_fields_and_applies_the_valid_part_of_an_answer(db: Path,
                                                                                        tmp_path: Path) -> None:
    out = tmp_path / "tasks.json"
    export(db, "label-studio", out)
    root = ET.parse(tmp_path / "tasks.label_config.xml").getroot()
    role = next(c for c in root.iter("Choices") if c.get("name") == "role")
    assert [c.get("value") for c in role.iter("Choice")] == ["seeker", "supporter", "session"]
    shown = {v.find("Choices").get("name"): v.get("whenChoiceValue") for v in root.iter("View")
             if v.get("visibleWhen") == "choice-selected" and v.get("whenTagName") == "role"}
    assert shown == {"emotion": "seeker", "strategy": "supporter", "psychotherapy": "session", "topic": "session"}
    tasks = json.loads(out.read_text())
    for t in tasks:  # every task pre-selects its role, which shows that role's fields only
        (pred,) = t["predictions"]
        roles = [r["value"]["choices"] for r in pred["result"] if r["from_name"] == "role"]
        assert roles == [[t["data"]["role"] if t["data"]["kind"] == "turn" else "session"]]

    records = final_records(db)
    flagged = pick(records, "flagged")
    t = next(t for t in tasks if (t["data"]["dialogue_id"], t["data"]["turn_index"]) == key(flagged)
             and t["data"]["kind"] == "turn")
    t["annotations"] = [  # a strategy ticked on a seeker turn beside a valid emotion; and a skipped task
        {"completed_by": 3, "result": [
            {"from_name": "role", "to_name": "dialogue", "type": "choices", "value": {"choices": ["seeker"]}},
            {"from_name": "emotion", "to_name": "dialogue", "type": "choices", "value": {"choices": ["Fear"]}},
            {"from_name": "strategy", "to_name": "dialogue", "type": "choices", "value": {"choices": ["Question"]}}]},
        {"completed_by": 4, "was_cancelled": True, "result": []}]
    reviewed = tmp_path / "reviewed.json"
    reviewed.write_text(json.dumps(tasks))
    result = import_reviews(db, reviewed)
    assert (result.answers, result.applied, result.partial, result.cancelled) == (1, 1, 1, 1)
    (error,) = result.errors
    assert "applied emotion; refused $.labels.strategy: not a turn label for role 'seeker'" in error
    assert any("label-studio:4 skipped (cancelled) it" in s for s in result.skipped)
    with ReviewQueue.open(db) as q:
        (gold,) = q.gold_items()
    assert gold["labels"] == {"emotion": ["Fear"]}
