"""Specs that are easy to write: short forms, every problem at once in plain words with path and line, one matching
rule for option names (issue 19, item 4)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autolabel.cli import app
from autolabel.errors import TaskSpecError
from autolabel.tasks import check_spec, load_task, option_key

runner = CliRunner()

SHORT = """\
name: client-talk
version: 1
roles:
  client: {speakers: [Client]}
  counselor: {speakers: [Counselor]}
labels:
  - name: talk
    scope: turn
    roles: [client]
    options: [change, neutral, sustain]
examples:
  - role: client
    text: "I really want to cut down."
    labels: {talk: CHANGE}
"""

BAD = """\
name: Bad Name
version: 1
roles:
  client: {speakers: [Client]}
  Counselor: {speakers: [Counselor]}
labels:
  - name: talk
    scope: turn
    roles: [clinet]
    options: [change, Change, sustain]
  - name: behaviour
    scope: turn
    optoins: [a, b]
examples:
  - role: cleint
    text: "I want to stop."
    labels: {talk: chnage}
"""


def test_short_forms_load_options_by_name_and_a_numeric_version(tmp_path: Path) -> None:
    spec = tmp_path / "talk.yaml"
    spec.write_text(SHORT)
    r = runner.invoke(app, ["tasks", "validate", str(spec)])
    assert r.exit_code == 0 and "valid" in r.output, r.output
    t = load_task(spec)
    assert t.version == "1"
    talk = t.label("talk")
    assert [(o.name, o.code, o.description) for o in talk.options] == [
        ("change", "A", None), ("neutral", "B", None), ("sustain", "C", None)]
    assert t.examples[0].labels == {"talk": "change"}  # matched whatever its case


def test_validate_prints_every_problem_in_plain_words_with_path_and_line(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(BAD)
    r = runner.invoke(app, ["tasks", "validate", str(spec)])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    expected = [  # (line, path, words), schema and meaning problems together, in file order
        (1, "$.name", "'Bad Name' is not allowed: use lowercase letters"),
        (5, "$.roles.Counselor", "the name 'Counselor' is not allowed"),
        (9, "$.labels[0].roles[0]", "unknown role 'clinet' (did you mean 'client'?"),
        (10, "$.labels[0].options[1].name", "option 'Change' is the same name as 'change'"),
        (11, "$.labels[1]", "needs either options (a list of choices) or scale"),
        (13, "$.labels[1].optoins", "unknown key 'optoins' (did you mean 'options'?"),
        (15, "$.examples[0].role", "unknown role 'cleint'"),
        (17, "$.examples[0].labels.talk", "'chnage' is not an option of 'talk' (did you mean 'change'?"),
    ]
    for line, path, words in expected:
        assert any(x.startswith(f"{spec}:{line}: {path}: ") and words in x for x in lines), (line, path, r.output)
    assert lines[-1] == f"{len(expected)} problems"
    assert "does not match" not in r.output and "^[" not in r.output  # no raw regular expressions


def test_validate_reports_a_syntax_error_with_its_line(tmp_path: Path) -> None:
    spec = tmp_path / "broken.yaml"
    spec.write_text("name: x\nversion: 1\nroles:\n  client: {speakers: [Client]\n")
    r = runner.invoke(app, ["tasks", "validate", str(spec)])
    assert r.exit_code == 2 and f"{spec}:5: $: not valid YAML" in r.output, r.output


def test_problem_lines_are_not_wrapped_when_output_is_not_a_terminal(tmp_path: Path) -> None:
    spec = tmp_path / "a-rather-long-file-name-for-a-task-specification.yaml"
    spec.write_text(BAD)
    r = subprocess.run([sys.executable, "-m", "autolabel", "tasks", "validate", str(spec)], capture_output=True,
                       text=True, timeout=60, env={**os.environ, "COLUMNS": "40"})
    assert r.returncode == 2
    for line in r.stdout.splitlines()[:-1]:
        assert line.startswith(f"{spec}:"), line  # every problem is one whole line


def test_a_spec_with_problems_does_not_load_and_names_them_all(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(BAD)
    with pytest.raises(TaskSpecError) as e:
        load_task(spec)
    assert len(e.value.problems) == 8 and "(line 17)" in e.value.problems[-1]


def test_meaning_problems_come_with_schema_problems_at_once() -> None:
    raw = {"name": "x", "version": "1", "roles": {"client": {"speakers": ["C"]}},
           "labels": [{"name": "talk", "scope": "turn", "roles": ["nobody"], "options": ["a", "b"], "multi": "yes"}],
           "examples": [{"role": "client", "text": "t", "labels": {"talk": "c"}}]}
    problems = check_spec(raw)
    assert any("$.labels[0].multi" in p and "expected true or false" in p for p in problems), problems
    assert any("unknown role 'nobody'" in p for p in problems), problems
    assert any("'c' is not an option of 'talk'" in p for p in problems), problems


def test_option_names_match_whatever_their_case_everywhere() -> None:
    t = load_task("psy-insight")
    emotion = t.label("emotion")
    assert emotion.normalize(" guilty ") == ["Guilty"] and emotion.normalize(["SADNESS", "anger"]) == ["Anger",
                                                                                                      "Sadness"]
    assert t.label("psychotherapy").normalize("cbt") == "Cognitive Behavioral Therapy"  # an alias, any case
    assert option_key("  Change ") == option_key("change") == "change"
    assert option_key(4) == option_key("4") == option_key(4.0) == option_key(" 4.0 ") == "4"
    assert option_key(True) is None and option_key(None) is None
