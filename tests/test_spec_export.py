"""Exports keep both levels of a sub-code (issue 19 item 2): the built-in mi-talk spec run on its demo dialogues
against the scripted loopback server, exported through the CLI as JSONL and CSV.

A field with sub-codes carries its leaf in ``labels`` and the parent beside it: ``parents`` in a JSONL record, a
``<field>_parent`` column in CSV. Fields without sub-codes get neither, so other specs' exports are unchanged.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from autolabel.cli import app
from autolabel.records import record_problems
from autolabel.tasks import builtin_demo, load_task
from tests.fake_openai import FakeOpenAIServer

runner = CliRunner()
TASK = load_task("mi-talk")
SUB_CODED = ("client_talk", "therapist_behaviour")


def leaf_codes(body: dict[str, Any]) -> str | None:
    """Answer every sub-coded field with a leaf (never the parent itself); the rest from the synthesizer."""
    schema = body.get("response_format", {}).get("json_schema", {}).get("schema", {})
    props = schema.get("properties", {})
    if not any(name in props for name in SUB_CODED):
        return None
    out: dict[str, Any] = {}
    for name, sub in props.items():
        if name in SUB_CODED:
            f = TASK.label(name)
            leaves = [o.code for o in f.options if o.parent]
            out[name] = leaves[len(json.dumps(body)) % len(leaves)]
        elif "enum" in sub:
            out[name] = sub["enum"][0]
        else:
            out[name] = "The speaker's words."
    return json.dumps(out)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("mi-export")
    demo = folder / "demo.jsonl"
    demo.write_text(builtin_demo("mi-talk").read_text(encoding="utf-8"), encoding="utf-8")
    path = folder / "runs.db"
    with FakeOpenAIServer(replies=leaf_codes, seed=5) as srv:
        r = runner.invoke(app, ["run", str(demo), "--task", "mi-talk", "--model", "openai:test", "--base-url",
                                srv.base_url, "--db", str(path), "--no-critique"])
    assert r.exit_code == 0, r.output
    yield path


def test_jsonl_records_carry_the_parent_beside_the_leaf(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels.jsonl"
    r = runner.invoke(app, ["export", "--db", str(db), "--format", "jsonl", "--out", str(out)])
    assert r.exit_code == 0, r.output
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    coded = [x for x in records if set(SUB_CODED) & set(x["labels"])]
    assert len(coded) >= 10
    for rec in coded:
        for name in set(SUB_CODED) & set(rec["labels"]):
            leaf = rec["labels"][name]
            parent = TASK.label(name).parent_of(leaf)
            assert parent != leaf  # a leaf was answered: two levels
            assert rec["parents"][name] == parent, rec
        assert record_problems(rec, TASK) == []  # the record stays valid with its parents
    others = [x for x in records if not set(SUB_CODED) & set(x["labels"])]
    assert others and all("parents" not in x for x in others)  # session ratings: no sub-codes, no parents


def test_csv_has_a_parent_column_beside_each_sub_coded_field(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels.csv"
    r = runner.invoke(app, ["export", "--db", str(db), "--format", "csv", "--out", str(out)])
    assert r.exit_code == 0, r.output
    with out.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    header = list(rows[0])
    for name in SUB_CODED:
        assert header[header.index(name) + 1] == f"{name}_parent"
    assert "empathy_parent" not in header and "client_talk_parent_confidence" not in header
    seen = 0
    for row in rows:
        for name in SUB_CODED:
            if row[name]:
                seen += 1
                assert row[f"{name}_parent"] == TASK.label(name).parent_of(row[name]) != row[name]
            else:
                assert row[f"{name}_parent"] == ""
    assert seen >= 10
