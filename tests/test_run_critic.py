"""Critic consistency: a "revise" verdict must carry valid revised labels. The critique schema says so (if verdict is
revise then revised is required and valid), so such an answer is re-asked; one that still gets through is treated as
"unsure", marked on the stored critique and counted in the run summary."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import jsonschema

from autolabel import Annotator, load_task
from autolabel.validation import validation_errors
from tests.conftest import dialogue
from tests.fake_openai import FakeOpenAIServer, is_critique

REVISE_NULL = {"reason": "I would change these labels.", "verdict": "revise", "revised": None}


def annotator(server: FakeOpenAIServer, db: Path, **kw: Any) -> Annotator:
    return Annotator("psy-insight", model="openai:test-model", base_url=server.base_url, db=db, **kw)


def test_the_critique_schema_requires_labels_with_a_revise() -> None:
    task = load_task("psy-insight")
    fields = task.fields_for("seeker")
    assert fields is not None
    schema = task.critique_schema(fields)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert validation_errors(schema, REVISE_NULL)  # refused by the one validator (and by jsonschema itself)
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(REVISE_NULL))
    assert validation_errors(schema, {**REVISE_NULL, "revised": {"emotion": ["ZZ"]}})  # not a valid label either
    assert not validation_errors(schema, {**REVISE_NULL, "revised": {"emotion": ["A"]}})
    assert not validation_errors(schema, {"reason": "fine", "verdict": "agree", "revised": None})


def test_a_revise_without_labels_is_reasked(tmp_path: Path) -> None:
    seen: dict[str, int] = {}

    def replies(body: dict[str, Any]) -> dict[str, Any] | None:
        if not is_critique(body):
            return None
        key = body["messages"][1]["content"]
        seen[key] = seen.get(key, 0) + 1
        return REVISE_NULL if seen[key] == 1 else {"reason": "Right after all.", "verdict": "agree", "revised": None}

    with FakeOpenAIServer(replies=replies) as srv:
        result = annotator(srv, tmp_path / "r.db").annotate(dialogue("d", 2))
        critiques = [b for b in srv.requests if is_critique(b)]
    schema = critiques[0]["response_format"]["json_schema"]["schema"]
    assert schema["if"]["properties"]["verdict"] == {"const": "revise"} and "revised" in schema["then"]["required"]
    assert len(critiques) == 4  # each turn's critique asked again once
    assert all(t.critique is not None and t.critique["verdict"] == "agree" for t in result.turns)


def test_a_revise_without_labels_that_gets_through_is_unsure_counted_and_stored(tmp_path: Path) -> None:
    def replies(body: dict[str, Any]) -> dict[str, Any] | None:
        return REVISE_NULL if is_critique(body) else None

    db = tmp_path / "r.db"
    with FakeOpenAIServer(replies=replies) as srv:
        a = annotator(srv, db, max_reasks=1)
        result = a.annotate(dialogue("d", 2))
    for t in result.turns:
        assert t.critique is not None and t.critique["verdict"] == "unsure", t.critique
        assert t.critique["inconsistent"] == "revise without valid revised labels"
        assert "critic_unsure" in t.flags and "critic_disagrees" not in t.flags
        assert t.labels  # the label call's labels stand
    with sqlite3.connect(db) as conn:
        (summary,) = conn.execute("SELECT summary_json FROM runs").fetchone()
        records = [json.loads(r) for (r,) in conn.execute(
            "SELECT record_json FROM annotations WHERE is_final=1 AND kind='turn'")]
    assert json.loads(summary)["critic_inconsistent"] == 2
    assert all(r["critique"]["inconsistent"] for r in records)


def test_the_windowed_critic_is_held_to_the_same_rule(tmp_path: Path) -> None:
    def replies(body: dict[str, Any]) -> dict[str, Any] | None:
        if not is_critique(body):
            return None
        keys = body["response_format"]["json_schema"]["schema"]["properties"]
        return {k: REVISE_NULL for k in keys}

    db = tmp_path / "r.db"
    with FakeOpenAIServer(replies=replies) as srv:
        result = annotator(srv, db, max_reasks=1, turns_per_call=2).annotate(dialogue("d", 4))
    assert all(t.critique is not None and t.critique["verdict"] == "unsure" and t.critique.get("inconsistent")
               for t in result.turns)
