"""Explanations worth reading (issue 19 item 6): ``explain: {evidence: true, rule: true}`` asks each turn's answer
for a short quote of the turn and the option description it matches before its explanation and labels; specs that
do not say so keep their schema (and so their run ids and cache keys). The benchmark's measure is checked here on
fixed texts and end to end against the scripted loopback server, where a copying model must count as copying.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autolabel.cli import app
from autolabel.tasks import load_task, spec_problems

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import bench_explanations as bench  # noqa: E402

runner = CliRunner()

SPEC = """\
name: explained
version: 1
roles:
  client: {speakers: [Client]}
  counselor: {speakers: [Counselor]}
explain: {evidence: true, rule: true}
labels:
  - name: talk
    scope: turn
    roles: [client]
    options:
      - {name: change, description: talk in favour of changing}
      - {name: sustain, description: talk in favour of things as they are}
  - name: act
    scope: turn
    roles: [counselor]
    options: [question, reflection]
texts:
  - name: note
    scope: turn
    roles: [counselor]
    description: one sentence on what the counselor does
examples:
  - role: client
    text: "I could cut down, I suppose."
    texts: {evidence: "I could cut down", rule: "change: talk in favour of changing", explanation: "Considers less."}
    labels: {talk: change}
"""


@pytest.fixture()
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "explained.yaml"
    path.write_text(SPEC)
    return path


def test_evidence_and_rule_come_before_the_explanation_and_the_labels(spec: Path) -> None:
    r = runner.invoke(app, ["tasks", "validate", str(spec)])
    assert r.exit_code == 0, r.output
    task = load_task(spec)
    client, counselor = task.fields_for("client"), task.fields_for("counselor")
    assert client is not None and counselor is not None
    assert list(task.output_schema(client)["properties"]) == ["evidence", "rule", "explanation", "talk"]
    assert list(task.output_schema(counselor)["properties"]) == ["evidence", "rule", "note", "act"]
    assert task.output_schema(client)["required"] == ["evidence", "rule", "explanation", "talk"]
    assert "quoted exactly" in str(client.texts[0].description)


def test_only_what_is_asked_for_and_a_spec_field_of_that_name_wins(spec: Path, tmp_path: Path) -> None:
    only = tmp_path / "only.yaml"
    only.write_text(SPEC.replace("explain: {evidence: true, rule: true}", "explain: {evidence: true}")
                    .replace("  - name: note\n", "  - name: rule\n    max_chars: 50\n"))
    task = load_task(only)
    client, counselor = task.fields_for("client"), task.fields_for("counselor")
    assert client is not None and counselor is not None
    assert [t.name for t in client.texts] == ["evidence", "explanation"]
    assert [(t.name, t.max_chars) for t in counselor.texts] == [("evidence", 200), ("rule", 50)]


def test_example_texts_named_evidence_need_explain(spec: Path) -> None:
    import yaml

    raw = yaml.safe_load(SPEC)
    assert spec_problems(raw) == []
    del raw["explain"]
    problems = [str(p) for p in spec_problems(raw)]
    assert any("examples[0].texts.evidence" in p and "no text field is called 'evidence'" in p for p in problems)
    raw["explain"] = {"evidence": "yes"}
    assert any("explain.evidence" in str(p) for p in spec_problems(raw))


def test_built_in_specs_keep_their_schemas() -> None:
    for name in ("psy-insight", "support-strategy", "mi-talk"):
        task = load_task(name)
        for role in task.roles:
            fields = task.fields_for(role)
            if fields is not None:
                assert not {"evidence", "rule"} & set(task.output_schema(fields)["properties"]), (name, role)


def test_run_and_export_carry_evidence_and_rule(spec: Path, tmp_path: Path) -> None:
    from tests.fake_openai import FakeOpenAIServer

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "d1", "turns": [{"speaker": "Counselor", "text": "How is it going?"},
                                                       {"speaker": "Client", "text": "I could cut down."}]}) + "\n")
    db, out = tmp_path / "runs.db", tmp_path / "out.csv"
    with FakeOpenAIServer(seed=1) as srv:
        r = runner.invoke(app, ["run", str(data), "--task", str(spec), "--model", "openai:test", "--base-url",
                                srv.base_url, "--db", str(db), "--no-critique"])
    assert r.exit_code == 0, r.output
    assert runner.invoke(app, ["export", "--db", str(db), "--format", "csv", "--out", str(out)]).exit_code == 0
    with out.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(row["evidence"] and row["rule"] for row in rows)


def test_the_measure_on_fixed_texts() -> None:
    turn = "I feel like I'm letting everyone down and I can't sleep."
    assert bench.copied("I feel like I'm letting everyone down", turn)  # a quote of the turn
    assert bench.copied("Letting everyone down I feel like, and I can't sleep", turn)  # the same words
    assert not bench.copied("The seeker blames themself for disappointing others.", turn)
    assert bench.same("The client is anxious.", "the client is  anxious.")
    assert not bench.same("The client is anxious.", "The therapist asks an open question.")
    rows = [{"dialogue": "d", "index": i, "text": turn, "explanation": e}
            for i, e in enumerate(["The seeker feels guilty.", "The seeker feels guilty.", turn, "Asks a question."])]
    r = bench.rates(rows, window=1, examples=("Asks a question!",))
    assert (r["n"], r["copied"], r["same_in_window"], r["from_example"], r["either"]) == (4, 1, 1, 1, 3)


def test_the_benchmark_counts_a_copying_model_and_not_the_synthesizer(tmp_path: Path) -> None:
    out = tmp_path / "explanations.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_explanations.py"), "--backends",
                        "scripted,copy", "--variants", "before,after", "--turns", "6", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "|---|" in r.stdout
    entries = json.loads(out.read_text())["entries"]
    for variant in ("before", "after"):
        assert entries[f"copy:{variant}"]["rates"]["copied_rate"] == 1.0
        assert entries[f"scripted:{variant}"]["rates"]["copied_rate"] == 0.0
        assert entries[f"scripted:{variant}"]["rates"]["n"] == 6
    assert entries["copy:after"]["rates"]["evidence_quoted_rate"] == 1.0
    assert "evidence_n" not in entries["scripted:before"]["rates"]
