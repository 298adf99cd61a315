"""``autolabel tasks validate`` warns, without failing, when a spec asks for evidence and rule (``explain``) and an
example lacks them (issue 19 item 6: the prompt would show the example's grounds empty)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from autolabel.cli import app

runner = CliRunner()

SPEC = """\
name: explained
version: 1
roles:
  client: {speakers: [Client]}
explain: {evidence: true, rule: true}
labels:
  - name: talk
    scope: turn
    options: [change, sustain, neutral]
examples:
  - role: client
    text: I want to drink less.
    labels: {talk: change}
    texts: {evidence: "drink less", rule: "wanting to change"}
  - role: client
    text: Beer helps me relax.
    labels: {talk: sustain}
    texts: {evidence: "helps me relax"}
  - role: client
    text: It rained today.
    labels: {talk: neutral}
"""


def test_validate_warns_about_examples_without_evidence_or_rule(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC, encoding="utf-8")
    r = runner.invoke(app, ["tasks", "validate", str(spec)])
    assert r.exit_code == 0, r.output  # a warning, not a problem: the spec loads and runs
    lines = [x for x in r.output.splitlines() if "warning:" in x]
    assert len(lines) == 2, r.output
    assert lines[0].startswith(f"{spec}:18: $.examples[1].texts: warning: ") and "'rule'" in lines[0]
    assert "'evidence'" not in lines[0]
    assert lines[1].startswith(f"{spec}:19: $.examples[2]: warning: ") and "'evidence' and 'rule'" in lines[1]
    assert r.output.rstrip().endswith("valid")


def test_no_warning_without_explain(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.replace("explain: {evidence: true, rule: true}\n", "").replace(
        '    texts: {evidence: "drink less", rule: "wanting to change"}\n', "").replace(
        '    texts: {evidence: "helps me relax"}\n', ""), encoding="utf-8")
    r = runner.invoke(app, ["tasks", "validate", str(spec)])
    assert r.exit_code == 0 and "warning:" not in r.output, r.output
