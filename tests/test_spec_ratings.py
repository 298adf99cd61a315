"""Rating fields and sub-codes through the CLI (issue 19, items 1, 2 and 5): a spec written by a user, validated,
run against the scripted loopback server, exported, and evaluated against gold in both forms — gold keys inside
the input, and a separate labels file (JSONL and CSV).

The scripted model answers from a table, so every number of the report is known: the counselor's warmth rating
(turn scope, 1-5) is off by 0, +1 or -2 points in a fixed pattern, the session's empathy rating by 0 or 1, and the
client's talk (sub-codes under change / sustain) is right, a sibling leaf (right one level up) or wrong.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score
from typer.testing import CliRunner

from autolabel.cli import app
from autolabel.quality.agreement import krippendorff_alpha
from autolabel.quality.hierarchy import to_parent
from autolabel.quality.ordinal import icc_a1, krippendorff_alpha_ordinal, quadratic_weighted_kappa
from autolabel.tasks import load_task, meta_items
from tests.fake_openai import FakeOpenAIServer, is_critique

runner = CliRunner()

SPEC = """\
name: rated-talk
version: 2
roles:
  client: {speakers: [Client]}
  counselor: {speakers: [Counselor]}
context:
  window: 2
  dialogue_meta: [goal, {key: problem, label: presenting problem}]
labels:
  - name: talk
    scope: turn
    roles: [client]
    gold: talk_gold
    allow_parent: true
    options:
      - name: change
        code: C
        children:
          - {name: "change: reason", code: CR}
          - {name: "change: desire", code: CD}
      - name: sustain
        code: S
        children:
          - {name: "sustain: reason", code: SR}
          - {name: "sustain: desire", code: SD}
      - {name: neutral, code: "N"}
  - name: warmth
    scope: turn
    roles: [counselor]
    description: how warm the counselor's utterance is
    scale:
      1: cold or dismissive
      2: polite but distant
      3: friendly
      4: warm, attentive
      5: very warm, clearly caring
  - name: empathy
    scope: session
    scale: {1: none, 2: little, 3: some, 4: much, 5: deep}
"""

N_DIALOGUES, N_TURNS = 8, 6
LEAVES = ["change: reason", "change: desire", "sustain: reason", "sustain: desire", "neutral", "change"]
SIBLING = {"change: reason": "change: desire", "change: desire": "change: reason",
           "sustain: reason": "sustain: desire", "sustain: desire": "sustain: reason"}
OFFSETS = (0, 1, -2, 0)
MARK = re.compile(r"\[d(\d+)/(\d+)\]")


def warmth(d: int, i: int) -> tuple[int, int]:
    """(gold, answer) of a counselor turn's warmth."""
    gold = 1 + (d + i) % 5
    return gold, min(5, max(1, gold + OFFSETS[(d * 3 + i) % 4]))


def talk(d: int, i: int) -> tuple[str, str]:
    """(gold, answer) of a client turn's talk: right, a sibling leaf (right at the parent level), or wrong."""
    gold = LEAVES[(d + i) % len(LEAVES)]
    kind = (d + i) % 3
    if kind == 0 or gold not in SIBLING:
        answer = gold if kind != 2 else ("neutral" if gold != "neutral" else "change: reason")
    elif kind == 1:
        answer = SIBLING[gold]
    else:
        answer = "neutral"
    return gold, answer


def empathy(d: int) -> tuple[int, int]:
    gold = 1 + d % 5
    return gold, gold if d % 2 == 0 else min(5, gold + 1)


TASK_CODES: dict[str, str] = {}


def code(name: str) -> str:
    return TASK_CODES[name]


def replies(body: dict[str, Any]) -> str:
    system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
    if is_critique(body):
        return json.dumps({"reason": "Checked.", "verdict": "agree", "revised": None})
    if "annotator of counseling sessions" in system:
        d = int(MARK.search(user).group(1))  # type: ignore[union-attr]
        return json.dumps({"empathy": f"R{empathy(d)[1]}"})
    d, i = map(int, MARK.search(user.split("<target", 1)[1]).groups())  # type: ignore[union-attr]
    if i % 2 == 0:
        return json.dumps({"explanation": "The counselor's words.", "warmth": f"R{warmth(d, i)[1]}"})
    return json.dumps({"explanation": "The client's words.", "talk": code(talk(d, i)[1])})


def dialogues() -> list[dict[str, Any]]:
    out = []
    for d in range(N_DIALOGUES):
        turns = []
        for i in range(N_TURNS):
            if i % 2 == 0:
                turns.append({"speaker": "Counselor", "text": f"[d{d}/{i}] How are things going?",
                              "warmth": warmth(d, i)[0]})
            else:
                turns.append({"speaker": "Client", "text": f"[d{d}/{i}] I keep thinking about it.",
                              "talk_gold": talk(d, i)[0]})
        out.append({"id": f"d{d}", "goal": "drinking less", "problem": "poor sleep", "empathy": empathy(d)[0],
                    "turns": turns})
    return out


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    folder = tmp_path_factory.mktemp("rated")
    spec = folder / "rated.yaml"
    spec.write_text(SPEC)
    TASK_CODES.update({o.name: o.code for o in load_task(spec).label("talk").options})
    data = folder / "dialogues.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in dialogues()))
    db = folder / "runs.db"
    with FakeOpenAIServer(replies=replies) as srv:
        r = runner.invoke(app, ["run", str(data), "--task", str(spec), "--model", "openai:test", "--base-url",
                                srv.base_url, "--db", str(db)])
    assert r.exit_code == 0, r.output
    yield {"spec": spec, "data": data, "db": db, "folder": folder}


def test_the_spec_validates_and_shows_ratings_sub_codes_and_metadata(made: dict[str, Path]) -> None:
    r = runner.invoke(app, ["tasks", "validate", str(made["spec"])])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["tasks", "show", str(made["spec"])])
    assert r.exit_code == 0
    assert "warmth (turn, rating 1-5, roles: counselor)" in r.output and "[R4] 4: warm, attentive" in r.output
    assert "talk (turn, single, sub-codes (parent allowed), roles: client)" in r.output
    assert "dialogue metadata shown to the model: goal, problem (presenting problem)" in r.output
    t = load_task(made["spec"])
    assert t.version == "2"
    talk_field, rating = t.label("talk"), t.label("warmth")
    assert [o.name for o in talk_field.options] == ["change", "change: reason", "change: desire", "sustain",
                                                    "sustain: reason", "sustain: desire", "neutral"]
    assert [o.name for o in talk_field.parent_level().options] == ["change", "sustain", "neutral"]
    assert talk_field.parent_of("sustain: desire") == "sustain" and talk_field.parent_of("neutral") == "neutral"
    assert rating.scale == (1, 2, 3, 4, 5) and rating.ordinal and [o.code for o in rating.options] == [
        "R1", "R2", "R3", "R4", "R5"]
    assert t.output_schema(t.fields_for("counselor"))["properties"]["warmth"] == {  # type: ignore[arg-type]
        "type": "string", "enum": ["R1", "R2", "R3", "R4", "R5"]}
    assert rating.normalize(4) == rating.normalize("4") == rating.normalize(4.0) == "4"
    assert meta_items(t.context.dialogue_meta, {"goal": "drinking less", "other": "x"}, "en") == [
        ("goal", "drinking less")]


def test_run_and_export_carry_points_and_leaves(made: dict[str, Path]) -> None:
    out = made["folder"] / "labels.jsonl"
    r = runner.invoke(app, ["export", "--db", str(made["db"]), "--format", "jsonl", "--out", str(out)])
    assert r.exit_code == 0, r.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    turns = {(x["dialogue_id"], x["turn_index"]): x for x in records if x["kind"] == "turn"}
    sessions = {x["dialogue_id"]: x for x in records if x["kind"] == "session"}
    assert len(turns) == N_DIALOGUES * N_TURNS and len(sessions) == N_DIALOGUES
    for d in range(N_DIALOGUES):
        assert sessions[f"d{d}"]["labels"] == {"empathy": str(empathy(d)[1])}
        for i in range(N_TURNS):
            rec = turns[(f"d{d}", i)]
            expected = {"warmth": str(warmth(d, i)[1])} if i % 2 == 0 else {"talk": talk(d, i)[1]}
            assert rec["labels"] == expected, (d, i)
            field = "warmth" if i % 2 == 0 else "talk"
            assert 0 < rec["confidence"][field]["signals"]["logprob"] <= 1  # read from the point's code


def _expected() -> dict[str, Any]:
    w = np.array([warmth(d, i) for d in range(N_DIALOGUES) for i in range(0, N_TURNS, 2)], dtype=float)
    e = np.array([empathy(d) for d in range(N_DIALOGUES)], dtype=float)
    t = [talk(d, i) for d in range(N_DIALOGUES) for i in range(1, N_TURNS, 2)]
    field = load_task("mi-talk").label("client_talk")  # same parent naming: "change: reason" -> "change"
    return {"warmth": w, "empathy": e,
            "talk_leaf": float(np.mean([g == a for g, a in t])),
            "talk_parent": float(np.mean([to_parent(field, g) == to_parent(field, a) for g, a in t])),
            "n_labels": len(w) + len(e) + len(t)}


def _check(report: dict[str, Any]) -> None:
    exp = _expected()
    for name in ("warmth", "empathy"):
        gold, pred = exp[name][:, 0], exp[name][:, 1]
        o = report["fields"][name]["ordinal"]
        assert o["n"] == len(gold)
        assert o["exact"] == pytest.approx(float(np.mean(gold == pred)))
        assert o["within_one"] == pytest.approx(float(np.mean(np.abs(gold - pred) <= 1)))
        assert o["mae"] == pytest.approx(float(np.mean(np.abs(gold - pred))))
        assert o["qwk"] == pytest.approx(cohen_kappa_score(gold, pred, weights="quadratic", labels=[1, 2, 3, 4, 5]))
        assert o["icc"] == pytest.approx(icc_a1(np.column_stack([gold, pred])))
        for key in ("exact", "within_one", "mae", "qwk", "icc"):
            ci = o["intervals"][key]
            assert ci["low"] <= ci["value"] <= ci["high"], (name, key, ci)
        assert report["fields"][name]["quality"]["accuracy"] == pytest.approx(o["exact"])
    talk_report = report["fields"]["talk"]
    assert talk_report["quality"]["accuracy"] == pytest.approx(exp["talk_leaf"])
    assert talk_report["parent_level"]["accuracy"] == pytest.approx(exp["talk_parent"])
    assert exp["talk_parent"] > exp["talk_leaf"]
    assert talk_report["parent_level"]["confusion"]["labels"] == ["change", "sustain", "neutral"]


def test_eval_with_gold_keys_inside_the_input(made: dict[str, Path]) -> None:
    out = made["folder"] / "report-inside"
    r = runner.invoke(app, ["eval", "--db", str(made["db"]), "--gold", str(made["data"]), "--out", str(out),
                            "--n-boot", "50"])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    _check(report)
    assert report["gold"]["labels"] == _expected()["n_labels"] and report["gold"]["unmatched"] == 0


def _label_rows() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for d in range(N_DIALOGUES):
        rows.append({"dialogue_id": f"d{d}", "turn_index": None, "field": "empathy", "label": empathy(d)[0]})
        for i in range(N_TURNS):
            if i % 2 == 0:
                rows.append({"dialogue_id": f"d{d}", "turn_index": i, "field": "warmth", "label": warmth(d, i)[0]})
            else:  # the field by its gold key, the label in capitals: both match whatever their case
                rows.append({"dialogue_id": f"d{d}", "turn_index": i, "field": "Talk_Gold",
                             "label": talk(d, i)[0].upper()})
    rows.append({"dialogue_id": "d-not-run", "turn_index": 1, "field": "talk", "label": "neutral"})
    rows.append({"dialogue_id": "d0", "turn_index": 99, "field": "warmth", "label": 3})
    rows.append({"dialogue_id": "d0", "turn_index": 1, "field": "talk", "label": "not a code"})  # left out
    rows.append({"dialogue_id": "d0", "turn_index": 1, "field": "no_such_field", "label": "x"})  # left out
    return rows


@pytest.mark.parametrize("form", ["jsonl", "csv"])
def test_eval_with_a_separate_labels_file(made: dict[str, Path], form: str,
                                          caplog: pytest.LogCaptureFixture) -> None:
    path = made["folder"] / f"gold.{form}"
    rows = _label_rows()
    if form == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["Dialogue", "Turn", "Field", "Label"])  # synonyms, any case
            writer.writerows([[r["dialogue_id"], "" if r["turn_index"] is None else r["turn_index"], r["field"],
                               r["label"]] for r in rows])
    out = made["folder"] / f"report-{form}"
    r = runner.invoke(app, ["eval", "--db", str(made["db"]), "--gold", str(path), "--out", str(out),
                            "--n-boot", "50"])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    _check(report)
    assert report["gold"]["labels"] == _expected()["n_labels"] + 2
    assert report["gold"]["unmatched"] == 2  # a dialogue the run never saw, a turn it does not have
    assert f"gold: {_expected()['n_labels'] + 2} labels" in r.output and "; 2 matched no annotated turn" in r.output
    assert "2 of" in caplog.text and "1 not an option" in caplog.text and "1 no such field" in caplog.text


def test_ordinal_statistics_match_published_values() -> None:
    """Krippendorff (2011)'s reliability data: ordinal alpha 0.8154 (also what the ``krippendorff`` package 0.9.0
    gives), nominal 0.7434; Shrout & Fleiss (1979)'s six targets by four judges: ICC(2,1) = 0.29."""
    n = None
    data = [[1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n], [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
            [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n], [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n]]
    units = [list(u) for u in zip(*data, strict=True)]
    assert krippendorff_alpha_ordinal(units) == pytest.approx(0.8153875, abs=1e-6)
    assert krippendorff_alpha(units) == pytest.approx(0.7434211, abs=1e-6)
    sf = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]
    assert icc_a1(sf) == pytest.approx(0.29, abs=0.005)
    a, b = [1, 2, 3, 4, 5, 3, 2, 4, 1, 5], [1, 3, 3, 4, 4, 2, 2, 5, 2, 5]
    assert quadratic_weighted_kappa(a, b, [1, 2, 3, 4, 5]) == pytest.approx(
        cohen_kappa_score(a, b, weights="quadratic", labels=[1, 2, 3, 4, 5]))
    assert math.isnan(krippendorff_alpha_ordinal([[3, 3], [3, 3]]))  # no variation
    assert math.isnan(icc_a1([[2, 2]]))  # one item


def test_to_parent_maps_leaves_and_keeps_top_level_names() -> None:
    f = load_task("mi-talk").label("therapist_behaviour")
    assert to_parent(f, "open question") == "question" and to_parent(f, "affirm") == "affirm"
    assert to_parent(f, ("closed question", "open question", "affirm")) == ("affirm", "question")
    assert to_parent(f, None) is None


def test_reviewer_agreement_on_a_rating_is_krippendorff_alpha_at_the_ordinal_level() -> None:
    from autolabel.quality.evaluate import ordinal_agreement

    task = load_task("mi-talk")
    shared = [{"ann": "4", "bob": "5"}, {"ann": "2", "bob": "2"}, {"ann": "1", "bob": "2", "cy": "1"}]
    assert ordinal_agreement(task.label("empathy"), shared) == {
        "krippendorff_alpha_ordinal": krippendorff_alpha_ordinal([[4, 5], [2, 2], [1, 2, 1]])}
    assert ordinal_agreement(task.label("client_talk"), shared) == {}  # not ordinal: nominal alpha only
