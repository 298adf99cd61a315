"""Certified per stage: ``calibrate`` and ``eval`` of a cascade run, stage by stage.

The cascade's run is written here through the store's public methods, in the merged records' shape
(``decided_by: {stage, model}``, ``stages: [{stage, model, labels, confidence, reasons}]`` for earlier stages), so
that every number is known: stage 1 (``knn``) answers every turn, right on three turns in four; it keeps the half
it is sure of (all right) and sends the other half on. Stage 2 (``openai:test``) answers only those: right on three
in four, accepts the right ones and leaves the wrong ones flagged. Gold comes from a labels file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from autolabel import Store, load_task
from autolabel.cli import app
from autolabel.quality.evaluate import calibrate, evaluate, load_routing, stage_answers
from autolabel.records import record_problems

TASK = load_task("psy-insight")
N_DIALOGUES = 160
FIELD = {0: "strategy", 1: "emotion"}
ROLE = {0: "supporter", 1: "seeker"}
SPEAKER = {0: "Supporter", 1: "Seeker"}
RIGHT = {"strategy": ["Question"], "emotion": ["Anxiety"]}
WRONG = {"strategy": ["Information"], "emotion": ["Anger"]}
COST = 0.002  # per stage-2 call


def stage1(d: int) -> tuple[bool, float, bool]:
    """(right, knn vote, kept) of stage 1 on dialogue d: kept when d % 4 in (2, 3), all right; sent on otherwise."""
    right = d % 4 != 0
    vote = 0.9 if d % 4 >= 2 else (0.45 if right else 0.3)
    return right, vote, d % 4 >= 2


def stage2(d: int) -> tuple[bool, float]:
    """(right, logprob signal) of stage 2 on a turn sent on: wrong when d % 8 == 0."""
    right = d % 8 != 0
    return right, 0.95 if right else 0.4


def record(run_id: str, d: int, i: int, model: str, labels: dict[str, Any], signal: str, value: float,
           status: str) -> dict[str, Any]:
    return {"kind": "turn", "run_id": run_id, "task": {"name": TASK.name, "version": TASK.version,
                                                       "hash": TASK.spec_hash},
            "model": model, "dialogue_id": f"d{d:03d}", "turn_index": i, "speaker": SPEAKER[i], "role": ROLE[i],
            "language": "en", "status": status, "labels": labels, "texts": {},
            "confidence": {name: {"value": value, "signals": {signal: value}} for name in labels},
            "flags": ["low_confidence"] if status == "flagged" else []}


def make_cascade(db: Path) -> str:
    """A stage-2 run (its calls logged with their cost) and the cascade's merged run; the cascade run's id."""
    store = Store.open(db)
    common = {"task_name": TASK.name, "task_version": TASK.version, "task_hash": TASK.spec_hash,
              "task_json": TASK.model_dump_json()}
    store.start_run("stage2", model="openai:test", params={"critique": False, "logprobs": True}, params_hash="s2",
                    input="cascade-stage-2", **common)
    store.start_run("cascade", model="cascade: knn > openai:test", params_hash="c", input="in.jsonl",
                    params={"cascade": "c", "stages": ["knn", "openai:test"], "stage_runs": [None, "stage2"]},
                    **common)
    calls = []
    for d in range(N_DIALOGUES):
        annotations, turns = [], []
        for i in (0, 1):
            field = FIELD[i]
            right, vote, kept = stage1(d)
            first = {field: RIGHT[field] if right else WRONG[field]}
            if kept:
                rec = record("cascade", d, i, "knn", first, "knn_vote", vote, "accepted")
                rec["decided_by"], rec["stages"] = {"stage": 1, "model": "knn"}, []
            else:
                right2, lp = stage2(d)
                rec = record("cascade", d, i, "openai:test", {field: RIGHT[field] if right2 else WRONG[field]},
                             "logprob", lp, "accepted" if right2 else "flagged")
                rec["decided_by"] = {"stage": 2, "model": "openai:test"}
                rec["stages"] = [{"stage": 1, "model": "knn", "labels": first, "reasons": ["low_confidence"],
                                  "confidence": {field: {"value": vote, "signals": {"knn_vote": vote}}}}]
                calls.append({"run_id": "stage2", "dialogue_id": f"d{d:03d}", "turn_index": i, "purpose": "label",
                              "model": "openai:test", "params_hash": "s2", "cache_key": f"{d}/{i}", "attempt": 0,
                              "prompt_tokens": 100, "completion_tokens": 10, "latency_ms": 1.0, "outcome": "ok",
                              "cost_usd": COST})
            annotations.append({"kind": "turn", "turn_index": i, "attempt": 0, "is_final": True,
                                "valid": not record_problems(rec, TASK), "status": rec["status"], "record": rec})
            turns.append({"turn_index": i, "speaker": SPEAKER[i], "role": ROLE[i], "text": f"turn {d}/{i}",
                          "meta": {}, "status": rec["status"]})
        store.mark_running("cascade", f"d{d:03d}", language="en", n_turns=2, meta={}, source=None)
        store.save_dialogue("cascade", f"d{d:03d}", turns=turns, annotations=annotations, review_items=[], task=TASK,
                            language="en")
    store.log_calls(calls)
    store.close()
    return "cascade"


def write_gold(path: Path) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for d in range(N_DIALOGUES):
            for i in (0, 1):
                f.write(json.dumps({"dialogue_id": f"d{d:03d}", "turn_index": i, "field": FIELD[i],
                                    "label": RIGHT[FIELD[i]]}) + "\n")
    return path


@pytest.fixture
def made(tmp_path: Path) -> tuple[Path, Path]:
    db = tmp_path / "cascade.db"
    make_cascade(db)
    return db, write_gold(tmp_path / "gold.jsonl")


def test_stage_answers_follow_the_merged_records(made: tuple[Path, Path]) -> None:
    db, gold_path = made
    store = Store.open(db)
    try:
        from autolabel.quality.evaluate import load_gold

        stages = stage_answers(store, "cascade", TASK, load_gold(gold_path, TASK))
    finally:
        store.close()
    turns = 2 * N_DIALOGUES
    assert sorted(stages) == [1, 2] and (stages[1].model, stages[2].model) == ("knn", "openai:test")
    assert (stages[1].reached, stages[1].decided, stages[1].escalated) == (turns, turns // 2, turns // 2)
    assert (stages[2].reached, stages[2].decided, stages[2].flagged) == (turns // 2, 3 * turns // 8, turns // 8)
    assert len(stages[1].items) == turns and len(stages[2].items) == turns // 2
    assert sum(i.correct for i in stages[1].items) == 3 * turns // 4


def test_calibrate_fits_each_stage_on_the_turns_that_reached_it(made: tuple[Path, Path]) -> None:
    db, gold = made
    rows = calibrate(db, gold, run_id="cascade", alpha=0.1, min_n=20)
    by = {(r["stage"], r["field"]): r for r in rows}
    assert set(by) == {(k, f) for k in (1, 2) for f in ("emotion", "strategy")}  # the fields each stage answered
    for f in ("emotion", "strategy"):
        assert by[1, f]["model"] == "knn" and by[2, f]["model"] == "openai:test"
        assert by[1, f]["n_fit"] + by[1, f]["n_held"] == N_DIALOGUES  # every turn reached stage 1
        assert by[2, f]["n_fit"] + by[2, f]["n_held"] == N_DIALOGUES // 2  # only those sent on reached stage 2
        assert by[1, f]["features"] == ["knn_vote"] and by[2, f]["features"] == ["logprob"]
        for k in (1, 2):  # the signal separates right from wrong: a threshold is certified, no error above it
            assert by[k, f]["threshold"] is not None and by[k, f]["k"] == 0
            assert by[k, f]["upper_bound"] <= 0.1
    store = Store.open(db)
    try:  # stored under each stage's model: a later cascade routes each stage with its own
        for model, wrong, right in (("knn", 0.3, 0.9), ("openai:test", 0.4, 0.95)):
            thresholds, score = load_routing(store, TASK, model)
            assert score is not None and set(thresholds) >= {"emotion", "strategy"}
            signal = "knn_vote" if model == "knn" else "logprob"
            assert score("emotion", {signal: right}) >= thresholds["emotion"] > score("emotion", {signal: wrong})
    finally:
        store.close()


def test_eval_reports_each_stage(made: tuple[Path, Path], tmp_path: Path) -> None:
    db, gold = made
    rows = calibrate(db, gold, run_id="cascade", alpha=0.1, min_n=20)
    report = evaluate(db, gold, run_id="cascade", n_boot=20)
    one, two = report["stages"]
    turns = 2 * N_DIALOGUES
    assert (one["stage"], one["model"], two["stage"], two["model"]) == (1, "knn", 2, "openai:test")
    assert one["coverage"] == pytest.approx(0.5) and two["coverage"] == pytest.approx(3 / 8)
    assert two["decided_of_reached"] == pytest.approx(0.75) and two["flagged"] == turns // 8
    for stage in (one, two):  # what each stage accepted was right
        assert stage["accepted_quality"]["emotion"]["accuracy"] == 1.0
        assert stage["accepted_quality"]["strategy"]["n"] == stage["decided"] // 2
    bound = {(r["stage"], r["field"]): r["upper_bound"] for r in rows}
    assert one["certified"]["emotion"]["upper_bound"] == pytest.approx(bound[1, "emotion"])
    assert two["certified"]["strategy"]["upper_bound"] == pytest.approx(bound[2, "strategy"])
    assert (one["calls"], one["cost_usd"], one["cost_per_accepted_label"]) == (0, 0.0, 0.0)
    assert two["calls"] == turns // 2 and two["cost_usd"] == pytest.approx(COST * turns / 2)
    assert two["cost_per_accepted_label"] == pytest.approx(COST * (turns / 2) / (3 * turns / 8))


def test_a_run_without_stages_is_calibrated_as_before(made: tuple[Path, Path]) -> None:
    db, gold = made
    rows = calibrate(db, gold, run_id="stage2", min_n=20)  # a plain run (no records here): no stage column
    assert rows and all("stage" not in r and r["model"] == "openai:test" for r in rows)
    with pytest.raises(Exception, match="no gold label"):
        evaluate(db, gold, run_id="stage2", n_boot=10)


def test_cli_calibrate_and_eval_show_the_stages(made: tuple[Path, Path], tmp_path: Path) -> None:
    db, gold = made
    runner = CliRunner()
    cal = runner.invoke(app, ["calibrate", "--db", str(db), "--gold", str(gold), "--run", "cascade", "--min-n", "20"])
    assert cal.exit_code == 0, cal.output
    assert "stage" in cal.output and "knn" in cal.output and "openai:test" in cal.output
    ev = runner.invoke(app, ["eval", "--db", str(db), "--gold", str(gold), "--run", "cascade", "--out",
                             str(tmp_path / "report"), "--n-boot", "10"])
    assert ev.exit_code == 0, ev.output
    assert "per stage" in ev.output and "0.375" in ev.output  # stage 2's coverage
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [s["model"] for s in saved["stages"]] == ["knn", "openai:test"]


def test_a_real_cascade_run_is_calibrated_and_evaluated_per_stage(tmp_path: Path) -> None:
    """Two loopback endpoints (tests/test_cascade.py's cascade): stage 2 gets the turns stage 1's critic was unsure
    of; calibrate fits stage 2 on exactly those, eval counts what each stage decided and the calls it made."""
    from autolabel.cascade import Cascade
    from tests.conftest import write_jsonl
    from tests.fake_openai import FakeOpenAIServer
    from tests.test_cascade import agree, cascade_file, dialogues, stage1_replies

    src = write_jsonl(tmp_path / "in.jsonl", dialogues())
    db = tmp_path / "runs.db"
    with FakeOpenAIServer(replies=stage1_replies, seed=1) as s1, FakeOpenAIServer(replies=agree, seed=2) as s2:
        summary = Cascade("psy-insight", cascade_file(tmp_path, s1, s2), db=db, few_shot=0).run(src)
    first, second = summary.stages
    gold = tmp_path / "gold.jsonl"
    with gold.open("w", encoding="utf-8") as f:
        for d in dialogues():
            for t in d.turns:
                field, label = ("strategy", "Question") if t.speaker == "Supporter" else ("emotion", "Sadness")
                f.write(json.dumps({"dialogue_id": d.id, "turn_index": t.index, "field": field, "label": label}) + "\n")
    rows = calibrate(db, gold, run_id=summary.run_id, min_n=1)
    reached = {(r["stage"], r["model"]): 0 for r in rows}
    for r in rows:
        reached[r["stage"], r["model"]] += r["n_fit"] + r["n_held"]
    assert second.turns == 4  # the turns stage 1's critic was unsure of (never the risk turns)
    assert reached == {(1, "openai:small"): first.turns, (2, "openai:strong"): second.turns}
    report = evaluate(db, gold, run_id=summary.run_id, n_boot=10)
    one, two = report["stages"]
    assert (one["reached"], two["reached"]) == (10, 4)
    assert one["escalated"] == 4 and two["decided"] + two["flagged"] + two["failed"] == 4
    assert one["decided"] + two["decided"] == report["coverage"]["turn"]["accepted"]
    assert one["calls"] == first.calls and two["calls"] == second.calls > 0
    assert set(one["certified"]) >= {"emotion", "strategy"} and set(two["certified"]) >= {"emotion", "strategy"}
