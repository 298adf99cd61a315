"""Evaluation, calibration and certified routing, end to end over runs made through the scripted server.

The scripted server answers every label call from a table, so which labels are right is known: right answers
use the option codes B–E, wrong ones H and I, and the logprob function makes H and I improbable. Every wrong
label therefore has a lower confidence than every right one (AUROC exactly 1), and every number below can be
computed from the table.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from autolabel import Annotator, ConfigError, Store, load_task
from autolabel.cli import app
from autolabel.quality.calibration import Calibrator
from autolabel.quality.evaluate import (
    NEVER,
    _multi_stats,
    _single_stats,
    calibrate,
    calibration_mismatch,
    evaluate,
    load_gold,
    load_routing,
    run_items,
)
from autolabel.quality.metrics import classification_report, multilabel_report
from autolabel.review.queue import ReviewQueue
from tests.conftest import shared_file
from tests.fake_openai import FakeOpenAIServer, is_critique

TASK = load_task("psy-insight")
N_DIALOGUES, N_TURNS = 48, 6
MARK = re.compile(r"\[(d\d+)/(\d+)\]")
LOGPROB = {"B": math.log(0.97), "C": math.log(0.97), "D": math.log(0.97), "E": math.log(0.5),
           "H": math.log(0.25), "I": math.log(0.25)}


@dataclass(frozen=True)
class Case:
    """What the scripted model answers for one turn or session field, and the gold it is scored against."""

    gold: list[str] | str
    codes: list[str] | str  # the option codes the model answers
    correct: bool


def _options(field: str) -> dict[str, str]:
    return {o.code: o.name for o in TASK.label(field).options}


def _case(field: str, n: int) -> Case:
    """Gold among options B–E; every fourth answer wrong: H instead, or gold plus I (Jaccard 1/2)."""
    names, multi = _options(field), TASK.label(field).multi
    gold_code = "BCDE"[n % 4]
    wrong = n % 4 == 1
    codes = (["H"] if n % 8 == 1 else [gold_code, "I"]) if wrong else [gold_code]
    if not multi:
        return Case(names[gold_code], "H" if wrong else gold_code, not wrong)
    return Case([names[gold_code]], codes, not wrong)


def _turn_case(d: int, i: int) -> tuple[str, Case]:
    field = "emotion" if i % 2 else "strategy"
    return field, _case(field, d * N_TURNS // 2 + i // 2)


def _session_case(d: int, field: str) -> Case:
    return _case(field, d + 2 * (field == "topic"))


def write_input(path: Path) -> Path:
    """Dialogues with gold in the turn meta (the field's gold key) and session gold in the dialogue meta."""
    with path.open("w", encoding="utf-8") as f:
        for d in range(N_DIALOGUES):
            turns = []
            for i in range(N_TURNS):
                field, case = _turn_case(d, i)
                speaker = "Seeker" if i % 2 else "Supporter"
                text = f"[d{d}/{i}] " + ("I had a long week at school." if i % 2 else "How was your week?")
                turns.append({"speaker": speaker, "text": text, TASK.label(field).gold: case.gold})
            sessions = {field: _session_case(d, field).gold for field in ("psychotherapy", "topic")}
            f.write(json.dumps({"id": f"d{d}", "turns": turns, **sessions}) + "\n")
    return path


def _purpose(body: dict[str, Any]) -> str:
    system = body["messages"][0]["content"]
    if is_critique(body):
        return "critique"
    return "session" if "annotator of counseling sessions" in system else "label"


def replies(body: dict[str, Any]) -> str:
    user = body["messages"][1]["content"]
    purpose = _purpose(body)
    if purpose == "session":
        d = int(MARK.search(user).group(1)[1:])  # type: ignore[union-attr]
        codes = {f: _session_case(d, f).codes for f in ("psychotherapy", "topic")}
        return json.dumps({"summary": "A short session.", "guidance": "The counselor listens.", **codes})
    target = user.split("<target", 1)[1]
    d_id, i = MARK.search(target).groups()  # type: ignore[union-attr]
    field, case = _turn_case(int(d_id[1:]), int(i))
    if purpose == "critique":  # the critic is unsure of half the wrong answers, agrees otherwise
        verdict = "unsure" if not case.correct and int(d_id[1:]) % 2 else "agree"
        return json.dumps({"reason": "Checked against the guidelines.", "verdict": verdict, "revised": None})
    text = "reasoning" if field == "strategy" else "observation"
    # an explanation of each turn's own: one sentence for all would be flagged as repeated (explanation_copied)
    return json.dumps({text: f"Turn {i} of {d_id} gives evidence {int(i) * 7 + 3}.", field: case.codes})


def expected(field: str) -> list[Case]:
    if field in ("psychotherapy", "topic"):
        return [_session_case(d, field) for d in range(N_DIALOGUES)]
    cases = [_turn_case(d, i) for d in range(N_DIALOGUES) for i in range(N_TURNS)]
    return [c for f, c in cases if f == field]


def copy_db(src: Path, dst: Path) -> Path:
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    return dst


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(replies=replies, logprob=lambda token: LOGPROB.get(token, -0.001)) as srv:
        yield srv


@pytest.fixture(scope="module")
def made(server: FakeOpenAIServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(database, input) of one run over the scripted dialogues; tests that write copy the database first."""
    folder = tmp_path_factory.mktemp("run")
    path = write_input(folder / "dialogues&<x>.jsonl")
    db = folder / "runs.db"
    annotator(server, db).run(path)
    return db, path


def annotator(server: FakeOpenAIServer, db: Path) -> Annotator:
    return Annotator("psy-insight", model="openai:test", base_url=server.base_url, db=db)


# ------------------------------------------------------------------------------------------------- gold

def test_gold_from_jsonl_psy_insight_and_csv(made: tuple[Path, Path], tmp_path: Path) -> None:
    gold = load_gold(made[1], TASK)
    assert len(gold) == N_DIALOGUES * (N_TURNS + 1)
    assert gold[("d2", 1)] == {"emotion": _turn_case(2, 1)[1].gold} == {"emotion": ["Happiness"]}
    assert gold[("d1", -1)] == {"psychotherapy": "Psychoanalytic Therapy", "topic": "Academic Pressure"}

    native = load_gold(shared_file("en_dev.json"), "psy-insight")  # the real files carry the labels
    assert native[("000433", 1)] == {"emotion": ["Guilty", "Others"]}
    assert native[("000433", 0)] == {"strategy": ["Question"]}
    assert native[("000433", -1)]["psychotherapy"] == "Cognitive Behavioral Therapy"  # via its alias

    csv = tmp_path / "gold.csv"
    csv.write_text("dialogue_id,turn_index,speaker,text,emotional label,strategy\n"
                   "a,0,Supporter,Hi,,question\na,1,Seeker,Hello,Sadness; anxiety,\n"
                   'a,2,Seeker,Hm,"[""Fear""]",\na,3,Seeker,So,Nonsense,\n', encoding="utf-8")
    assert load_gold(csv, TASK) == {("a", 0): {"strategy": ["Question"]}, ("a", 2): {"emotion": ["Fear"]},
                                    ("a", 1): {"emotion": ["Anxiety", "Sadness"]}}


def _insert(conn: sqlite3.Connection, table: str, row: dict[str, Any]) -> None:
    """Insert ``row``, filling any other NOT NULL column the table has (whatever its final schema)."""
    for _, name, kind, notnull, default, pk in conn.execute(f"PRAGMA table_info({table})"):
        if notnull and default is None and not pk and name not in row:
            row[name] = 0 if "INT" in kind.upper() or "REAL" in kind.upper() else "x"
    marks = ", ".join("?" * len(row))
    conn.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({marks})", list(row.values()))


def test_reviewed_gold_in_the_store_replaces_a_gold_file(made: tuple[Path, Path], tmp_path: Path) -> None:
    db = copy_db(made[0], tmp_path / "runs.db")
    store = Store.open(db)
    run_id = store.run()["id"]
    store.close()
    with sqlite3.connect(db) as conn:  # rows as the review queue writes them
        for d in range(3):
            _insert(conn, "gold", {"run_id": run_id, "dialogue_id": f"d{d}", "kind": "turn", "turn_index": 1,
                                   "task_name": "psy-insight", "labels_json": '{"emotion": ["sadness"]}'})
        _insert(conn, "gold", {"run_id": run_id, "dialogue_id": "d0", "kind": "session", "turn_index": -1,
                               "task_name": "psy-insight", "labels_json": '{"topic": "Others", "x": 1}'})
        _insert(conn, "gold", {"run_id": run_id, "dialogue_id": "d5", "kind": "session", "turn_index": -1,
                               "task_name": "other-task", "labels_json": json.dumps({"topic": "Others"})})
    assert load_gold(db, TASK) == {("d0", 1): {"emotion": ["Sadness"]}, ("d1", 1): {"emotion": ["Sadness"]},
                                   ("d2", 1): {"emotion": ["Sadness"]}, ("d0", -1): {"topic": "Others"}}
    report = evaluate(db, None, n_boot=20)  # no gold file: the reviewed items are the gold
    assert report["gold"]["matched"] == 4 and set(report["fields"]) == {"emotion", "topic"}
    answers = [sorted(_options("emotion")[c] for c in _turn_case(d, 1)[1].codes) for d in range(3)]
    right = sum(a == ["Sadness"] for a in answers)
    assert report["fields"]["emotion"]["quality"]["exact_match"] == pytest.approx(right / 3)
    topic = report["fields"]["topic"]["quality"]
    assert topic["accuracy"] == float(_session_case(0, "topic").gold == "Others")


def test_a_review_does_not_grade_itself(made: tuple[Path, Path], tmp_path: Path) -> None:
    db = copy_db(made[0], tmp_path / "runs.db")
    gold = load_gold(made[1], TASK)
    with ReviewQueue.open(db) as queue:  # the first item by priority has the lowest confidence: a wrong label
        item = queue.claim("ann")
        assert item is not None and item.proposal is not None
        truth = gold[item.dialogue_id, item.turn_index]
        right = {k: float(item.proposal["labels"][k] == v) for k, v in truth.items()}
        assert 0.0 in right.values()
        queue.submit(item.id, "ann", item.version, truth)
    report = evaluate(db, None, n_boot=10)  # the store's gold: the one reviewed item
    assert report["gold"]["matched"] == len(truth) and report["coverage"][item.kind]["reviewed"] == 1
    assert {k: f["quality"]["accuracy"] for k, f in report["fields"].items()} == right  # the model's answer


# ------------------------------------------------------------------------------------------- evaluation

def test_fast_bootstrap_statistics_match_the_metrics_module() -> None:
    rng = np.random.default_rng(3)
    truth, pred = rng.integers(0, 5, 200), np.where(rng.random(200) < 0.6, rng.integers(0, 5, 200), 0)
    truth[:3] = 0
    names = [str(v) for v in range(7)]
    ref = classification_report([names[v] for v in truth], [names[v] for v in pred], labels=names)
    fast = _single_stats(truth, pred, 7)(np.arange(200))
    assert fast == pytest.approx({k: ref[k] for k in ("accuracy", "macro_f1", "cohen_kappa")})
    t, p = rng.random((150, 6)) < 0.3, rng.random((150, 6)) < 0.3
    t[:5] = p[:5] = False  # empty sets on both sides
    ref = multilabel_report([{names[j] for j in np.flatnonzero(r)} for r in t],
                            [{names[j] for j in np.flatnonzero(r)} for r in p], labels=names[:6])
    fast = _multi_stats(t, p)(np.arange(150))
    assert fast == pytest.approx({k: ref[k] for k in ("exact_match", "jaccard", "macro_f1", "micro_f1")})


def test_evaluate_reports_known_quality_confidence_coverage(made: tuple[Path, Path], tmp_path: Path) -> None:
    db, path = made
    report = evaluate(db, path, out_dir=tmp_path / "report", n_boot=200)
    fields = report["fields"]
    assert set(fields) == {"emotion", "strategy", "psychotherapy", "topic"}
    for name, f in fields.items():
        cases = expected(name)
        errors = sum(not c.correct for c in cases)
        assert f["n_gold"] == f["n_labeled"] == len(cases) and f["n_missing"] == 0
        q, c = f["quality"], f["confidence"]
        assert q["accuracy"] == pytest.approx(1 - errors / len(cases))
        iv = q["intervals"]["accuracy" if not f["multi"] else "exact_match"]
        assert iv["low"] <= iv["value"] <= iv["high"] and iv["low"] < iv["high"]
        assert c["auroc"]["value"] == 1.0  # every wrong label is less confident than every right one
        at20 = next(b for b in c["budgets"] if b["budget"] == 0.2)
        assert at20["n_flagged"] == int(0.2 * len(cases))
        assert at20["error_recall"]["value"] == pytest.approx(min(at20["n_flagged"], errors) / errors)
        assert c["ece"]["value"] > 0.05  # mean-of-signals scores are not probabilities
    emotion = fields["emotion"]["quality"]
    half = sum(not c.correct and len(c.codes) == 2 for c in expected("emotion"))  # gold + a spare: 1/2
    assert emotion["jaccard"] == pytest.approx(emotion["exact_match"] + 0.5 * half / len(expected("emotion")))
    assert emotion["confusion"]["kind"] == "co-occurrence"
    shame = emotion["per_option"]["Shame"]  # only ever a wrong answer
    assert shame["precision"] == 0.0 and shame["support"] == 0 and shame["confusion"]["fp"] > 0
    topic = fields["topic"]["quality"]
    assert topic["confusion"]["labels"][1] == "Partner Relationship Issues" and "cohen_kappa" in topic
    turns = report["coverage"]["turn"]
    assert turns["total"] == N_DIALOGUES * N_TURNS == turns["accepted"] + turns["flagged"] + turns["failed"]
    assert report["coverage"]["session"]["total"] == N_DIALOGUES

    saved = json.loads((tmp_path / "report" / "report.json").read_text(encoding="utf-8"))
    assert saved["fields"]["emotion"]["quality"]["accuracy"] == emotion["accuracy"]
    html = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    images = re.findall(r"src='data:image/png;base64,([^']+)'", html)
    assert len(images) == 3 * 4  # reliability, risk–coverage, confusion per field
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert "dialogues&amp;&lt;x&gt;.jsonl" in html and "<x>" not in html  # the input path, escaped
    assert "http" not in html.replace("http-equiv", "")  # nothing fetched from elsewhere


def test_failed_turns_count_as_missing_not_as_labels(tmp_path: Path) -> None:
    lines = write_input(tmp_path / "all.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    path = tmp_path / "two.jsonl"
    path.write_text("".join(lines[:2]), encoding="utf-8")

    def broken(body: dict[str, Any]) -> str:  # d0's turn 1 never gets a valid answer
        invalid = _purpose(body) == "label" and "[d0/1]" in body["messages"][1]["content"].split("<target")[1]
        return '{"observation": "x", "emotion": "not a list"}' if invalid else replies(body)

    with FakeOpenAIServer(replies=broken, logprob=lambda token: LOGPROB.get(token, -0.001)) as srv:
        Annotator("psy-insight", model="openai:test", base_url=srv.base_url, db=tmp_path / "r.db",
                  max_reasks=0).run(path)
    report = evaluate(tmp_path / "r.db", path, n_boot=10)
    emotion = report["fields"]["emotion"]
    assert (emotion["n_gold"], emotion["n_labeled"], emotion["n_missing"]) == (6, 5, 1)
    assert report["coverage"]["turn"]["failed"] == 1


def test_reviewer_agreement_from_several_reviews(made: tuple[Path, Path], tmp_path: Path) -> None:
    db = copy_db(made[0], tmp_path / "runs.db")
    Store.open(db).close()
    with sqlite3.connect(db) as conn:
        items = conn.execute("SELECT id FROM review_items WHERE kind='turn' AND turn_index % 2 = 1"
                             " ORDER BY id LIMIT 4").fetchall()
        assert len(items) == 4
        ratings = {"ann": ["Sadness", "Fear", "Anger", "Fear"], "bob": ["Sadness", "Fear", "Anger", "Anger"],
                   "cy": ["Sadness", "Fear", "Fear", "Fear"]}
        for who, values in ratings.items():
            for item, value in zip(items, values, strict=True):  # as the review queue records them
                _insert(conn, "reviews", {"item_id": item[0], "reviewer": who,
                                          "labels_json": json.dumps({"emotion": [value]})})
    agreement = evaluate(db, made[1], n_boot=10)["agreement"]["emotion"]
    assert agreement["n_items"] == 4 and agreement["reviewers"] == ["ann", "bob", "cy"]
    pairs = {(p["a"], p["b"]): p["kappa"] for p in agreement["cohen_pairs"]}
    assert pairs[("ann", "bob")] == pytest.approx(0.636, abs=1e-3)  # 3 of 4 agree; chance 5/16
    assert agreement["distance"] == "masi" and -1 <= agreement["krippendorff_alpha"] <= 1
    assert agreement["fleiss_items"] == 4 and agreement["fleiss_kappa"] < 1


# ------------------------------------------------------------------------------------------ calibration

def test_calibrate_certifies_and_later_runs_route_with_it(made: tuple[Path, Path], server: FakeOpenAIServer,
                                                          tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = copy_db(made[0], tmp_path / "runs.db")
    results = {r["field"]: r for r in calibrate(db, made[1], alpha=0.1, delta=0.05)}
    for name in ("emotion", "strategy"):
        r = results[name]
        assert r["threshold"] is not None and r["method"] == "logistic"
        assert r["features"] == ["critic", "logprob"] and r["n"] >= 30 and r["upper_bound"] <= 0.1
        assert 0 < r["coverage"] <= 1 and r["k"] <= r["n"]
    for name in ("psychotherapy", "topic"):  # 48 sessions: about 24 to certify on, fewer than 30
        r = results[name]
        assert r["threshold"] is None and r["n"] < 30
        assert r["reason"].startswith("too little calibration data")

    store = Store.open(db)
    thresholds, score = load_routing(store, TASK, "openai:test")
    assert thresholds["psychotherapy"] == thresholds["topic"] == NEVER
    assert thresholds["emotion"] == results["emotion"]["threshold"] and score is not None
    assert load_routing(store, TASK, "openai:other") == ({}, None)
    calibrator = Calibrator.from_dict(json.loads(store._rows(
        "SELECT calibrator_json FROM calibrators WHERE field='emotion' ORDER BY id DESC LIMIT 1")[0][0]))
    # the thresholds hold for runs whose signals come about as the calibrated run's did
    params = annotator(server, db).params()
    assert calibration_mismatch(store, TASK, "openai:test", params) == []
    assert calibration_mismatch(store, TASK, "openai:test", {**params, "samples": 3, "critique": False}) == \
        ["critique: True → False", "samples: 1 → 3"]
    store.close()

    sent = len(server.requests)
    again = write_input(tmp_path / "again.jsonl")  # same dialogues, a new run: answers come from the cache
    with caplog.at_level(logging.WARNING, logger="autolabel"):
        annotator(server, db).run(again)
    assert len(server.requests) == sent
    assert "calibration" not in caplog.text, "the same settings: no warning"
    store = Store.open(db)
    records = list(store.final_records())  # the latest run: the second one
    store.close()
    sessions = [r for r in records if r["kind"] == "session"]
    assert len(sessions) == N_DIALOGUES
    assert all({"low_confidence:psychotherapy", "low_confidence:topic"} <= set(r["flags"]) for r in sessions)
    emotions = [r for r in records if "emotion" in r["labels"]]
    for r in emotions:
        conf = r["confidence"]["emotion"]
        assert conf["value"] == pytest.approx(float(calibrator.predict(conf["signals"])[0]))
        low = conf["value"] < thresholds["emotion"]
        assert ("low_confidence:emotion" in r["flags"]) == low
    # every accepted emotion label is right: the certified threshold sits above the wrong ones
    accepted = [r for r in emotions if r["status"] == "accepted"]
    gold = load_gold(again, TASK)
    assert accepted
    assert all(r["labels"]["emotion"] == gold[r["dialogue_id"], r["turn_index"]]["emotion"] for r in accepted)

    # calibrated scores are better calibrated than the raw mean of the signals
    raw = evaluate(made[0], made[1], n_boot=10)["fields"]["emotion"]["confidence"]["ece"]["value"]
    calibrated = evaluate(db, again, n_boot=10)["fields"]["emotion"]["confidence"]["ece"]["value"]
    assert calibrated < raw

    # a run with other confidence settings is told that the certified bounds were not measured for it
    one = tmp_path / "one.jsonl"
    one.write_text(again.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="autolabel"):
        Annotator("psy-insight", model="openai:test", base_url=server.base_url, db=db, critique=False).run(one)
    assert "its certified error bounds were not measured for this run's signals" in caplog.text
    assert "critique: True → False" in caplog.text


def test_too_little_gold_certifies_nothing(made: tuple[Path, Path], tmp_path: Path) -> None:
    db = copy_db(made[0], tmp_path / "runs.db")
    few = {k: v for k, v in load_gold(made[1], TASK).items() if k[0] in ("d0", "d1", "d2", "d3")}
    results = calibrate(db, few)
    assert [r["threshold"] for r in results] == [None] * 4
    assert all(r["reason"].startswith("too little calibration data") for r in results)
    store = Store.open(db)
    assert load_routing(store, TASK, "openai:test")[0] == {r["field"]: NEVER for r in results}
    store.close()
    with pytest.raises(ConfigError, match="unknown calibration method"):
        calibrate(db, few, method="magic")
    with pytest.raises(ConfigError, match="isotonic calibration takes one signal"):
        calibrate(db, few, method="isotonic")
    items = run_items(db, few)
    assert {i.dialogue_id for i in items} == {"d0", "d1", "d2", "d3"}


# ---------------------------------------------------------------------------------------------------- CLI

def test_cli_eval_and_calibrate(made: tuple[Path, Path], tmp_path: Path) -> None:
    db = copy_db(made[0], tmp_path / "runs.db")
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "--db", str(db), "--gold", str(made[1]), "--out",
                                 str(tmp_path / "r"), "--n-boot", "30"])
    assert result.exit_code == 0, result.output
    for word in ("emotion", "strategy", "psychotherapy", "topic", "AUROC", "ECE", "report.html"):
        assert word in result.output
    assert (tmp_path / "r" / "report.html").exists() and (tmp_path / "r" / "report.json").exists()

    result = runner.invoke(app, ["calibrate", "--db", str(db), "--gold", str(made[1]), "--alpha", "0.1",
                                 "--delta", "0.05"])
    assert result.exit_code == 0, result.output
    assert "logistic" in result.output and "psychotherapy: too little calibration data" in result.output
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM calibrators").fetchone()[0] == 4
