"""People's labels pass the same checks as the model's (issue 15, item 1): one validator, ``record_problems``, for
every way a person's answer enters the store — the web UI (submit, reveal), adjudication, the queue's API — and an
audit of gold rows already stored (``autolabel review doctor``, counted by ``review status``)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from autolabel import ReviewError, load_task
from autolabel.cli import app
from autolabel.records import record_problems
from autolabel.review.queue import ReviewQueue
from autolabel.review.web import create_app
from tests.test_review import rows, synthetic_queue

TOKEN = "validation-token"
TASK = load_task("psy-insight")
ALL_EMOTIONS = [o.name for o in TASK.label("emotion").options]
runner = CliRunner()


def seeker_record(**labels: Any) -> dict[str, Any]:
    return {"kind": "turn", "run_id": "r", "model": "openai:test", "dialogue_id": "d", "turn_index": 1,
            "task": {"name": TASK.name, "version": TASK.version, "hash": TASK.spec_hash},
            "speaker": "Seeker", "role": "seeker", "language": "en", "status": "reviewed",
            "labels": labels, "texts": {"observation": "worry"}, "confidence": {}, "flags": []}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    db = tmp_path / "v.db"
    synthetic_queue(db, 3)
    return db


@pytest.fixture
def client(db: Path) -> Iterator[TestClient]:
    with TestClient(create_app(db, token=TOKEN)) as c:
        yield c


def login(client: TestClient, reviewer: str = "alice") -> dict[str, str]:
    assert client.get(f"/?token={TOKEN}&reviewer={reviewer}", follow_redirects=False).status_code == 303
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/").text).group(1)
    return {"X-CSRF-Token": csrf}


# -- the one validator ---------------------------------------------------------------------------------------

def test_record_problems_checks_how_many_options_a_field_allows() -> None:
    assert record_problems(seeker_record(emotion=["Anxiety", "Fear"]), TASK) == []
    too_many = record_problems(seeker_record(emotion=ALL_EMOTIONS), TASK)
    assert too_many == ["$.labels.emotion: 11 options chosen, at most 3 allowed"]
    assert record_problems(seeker_record(emotion=[]), TASK) == ["$.labels.emotion: no option chosen"]
    assert record_problems(seeker_record(), TASK) == ["$.labels.emotion: missing"]
    assert record_problems(seeker_record(emotion=["Anxiety"], strategy=["Question"]), TASK) == \
        ["$.labels.strategy: not a turn label for role 'seeker'"]
    empty_text = {**seeker_record(emotion=["Fear"]), "texts": {"observation": ""}}
    assert record_problems(empty_text, TASK) == ["$.texts.observation: empty"]
    long_text = {**seeker_record(emotion=["Fear"]), "texts": {"observation": "x" * 401}}
    assert record_problems(long_text, TASK) == ["$.texts.observation: 401 characters, at most 400 allowed"]


def test_the_queue_refuses_what_the_model_could_not_answer(db: Path) -> None:
    with ReviewQueue.open(db) as q:
        item = q.claim("alice")
        for bad, said in (({"emotion": ALL_EMOTIONS}, "at most 3"), ({"emotion": []}, "no option chosen")):
            with pytest.raises(ReviewError, match=said) as refused:
                q.submit(item.id, "alice", item.version, bad)
            assert refused.value.fields["reason"] == "invalid" and "emotion" in refused.value.detail
        assert q.reviews(item.id) == [] and q.gold_items() == []
        assert [a["action"] for a in q.audit(item.id)] == ["claim"]


# -- the web UI ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("labels, said", [({"emotion": ALL_EMOTIONS}, "at most 3"),
                                          ({"emotion": []}, "no option chosen"),
                                          ({"emotion": 5}, "labels.emotion"),
                                          ({}, "emotion: missing")])
def test_submit_refuses_labels_the_task_does_not_allow_and_stores_nothing(client: TestClient, db: Path,
                                                                         labels: dict[str, Any], said: str) -> None:
    h = login(client)
    item_id = client.post("/api/claim", headers=h).json()["item"]
    with ReviewQueue.open(db) as q:
        version = q.get(item_id).version
    r = client.post(f"/api/items/{item_id}/submit", headers=h, json={"version": version, "labels": labels})
    assert r.status_code == 422, r.text
    assert said in r.json()["error"] and "emotion" in r.json()["error"]
    assert rows(db, "SELECT COUNT(*) FROM reviews") == [(0,)]
    assert rows(db, "SELECT COUNT(*) FROM gold") == [(0,)]
    assert [a for (a,) in rows(db, "SELECT action FROM review_audit WHERE item_id=:i", i=item_id)] == ["claim"]
    ok = client.post(f"/api/items/{item_id}/submit", headers=h,
                     json={"version": version, "labels": {"emotion": ["Fear", "Anxiety"]}})
    assert ok.status_code == 200 and ok.json()["status"] == "done", "the lease was kept"


def test_reveal_refuses_too_many_options_in_blind_mode(db: Path) -> None:
    with TestClient(create_app(db, token=TOKEN, blind=True)) as client:
        h = login(client)
        item_id = client.post("/api/claim", headers=h).json()["item"]
        with ReviewQueue.open(db) as q:
            version = q.get(item_id).version
        r = client.post(f"/api/items/{item_id}/reveal", headers=h,
                        json={"version": version, "labels": {"emotion": ALL_EMOTIONS}})
        assert r.status_code == 422 and "at most 3" in r.json()["error"]
        assert "Anxiety" not in json.dumps(r.json()), "nothing of the proposal is handed over"
    assert [a for (a,) in rows(db, "SELECT action FROM review_audit WHERE item_id=:i", i=item_id)] == ["claim"]


def test_adjudication_refuses_too_many_options(db: Path) -> None:
    with ReviewQueue.open(db) as q:
        q.require_reviews(2)
        for reviewer, labels in (("alice", ["Anxiety"]), ("bob", ["Fear"])):
            item = q.claim(reviewer)
            q.submit(item.id, reviewer, item.version, {"emotion": labels})
        (waiting,) = q.items("adjudication")
        with pytest.raises(ReviewError, match="at most 3"):
            q.adjudicate(waiting.id, "carol", {"emotion": ALL_EMOTIONS})
        with pytest.raises(ReviewError, match="no option chosen"):
            q.adjudicate(waiting.id, "carol", {"emotion": []})
        assert q.get(waiting.id).status == "adjudication" and q.gold_items() == []


# -- the store's audit ---------------------------------------------------------------------------------------

def test_doctor_reports_gold_rows_that_break_the_tasks_rules(db: Path) -> None:
    with ReviewQueue.open(db) as q:
        item = q.claim("alice")
        q.submit(item.id, "alice", item.version, {"emotion": ["Fear"]})
        assert q.gold_problems() == []
    # gold written the old way, before labels were checked like the model's
    rows(db, "UPDATE gold SET labels_json=:l WHERE item_id=:i", l=json.dumps({"emotion": ALL_EMOTIONS}), i=item.id)
    with ReviewQueue.open(db) as q:
        (problem,) = q.gold_problems()
        assert problem["item_id"] == item.id and "at most 3" in problem["problems"][0]
        assert q.status()["invalid_gold"] == 1
    status = runner.invoke(app, ["review", "status", "--db", str(db)])
    assert status.exit_code == 0 and "1 gold row(s) break the task's rules" in status.output
    doctor = runner.invoke(app, ["review", "doctor", "--db", str(db)])
    assert doctor.exit_code == 7, doctor.output
    assert f"item {item.id}" in doctor.output and "11 options chosen, at most 3 allowed" in doctor.output
