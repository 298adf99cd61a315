"""Label-only answers for models too small to write text (issues 18 and 19).

The embedded default (qwen2.5-0.5b) copied a spec example's explanation in a third of the turns measured
(benchmarks/results/explanations.json): what it writes is not an explanation, and generating it is most of the
demo's generated tokens. ``texts`` decides whether a run asks for the spec's text fields — turn explanations and
session texts: ``auto`` (a model's own default: off for the embedded models too small to explain, on for any
other), ``on`` or ``off``. Checked on the requests a real run sends to the loopback server and on what it stores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from autolabel import Annotator
from autolabel.cli import app
from autolabel.llm.local import model_info
from autolabel.persistence.store import Store
from autolabel.runs import run_params, writes_texts
from autolabel.settings import Settings
from tests.conftest import dialogue
from tests.fake_openai import FakeOpenAIServer, is_critique

runner = CliRunner()


@pytest.mark.parametrize(("model", "texts", "expected"), [
    ("local:qwen2.5-0.5b", "auto", False), ("local:smollm2-135m", "auto", False),
    ("local:qwen2.5-1.5b", "auto", True), ("openai:gpt-4o-mini", "auto", True),
    ("local:qwen2.5-0.5b", "on", True), ("openai:gpt-4o-mini", "off", False)])
def test_texts_follow_the_model_unless_set(model: str, texts: str, expected: bool) -> None:
    assert writes_texts(Settings(model=model, texts=texts)) is expected


def test_the_small_embedded_models_are_registered_as_not_explaining() -> None:
    assert not model_info("qwen2.5-0.5b").writes_text and model_info("qwen2.5-1.5b").writes_text


def test_texts_off_is_another_run_and_on_keeps_existing_run_ids() -> None:
    on = run_params(Settings(model="openai:x"))
    assert "texts" not in on  # existing runs (texts on) keep their ids and cache keys
    assert run_params(Settings(model="openai:x", texts="off")) == {**on, "texts": "off"}
    assert run_params(Settings(model="local:qwen2.5-0.5b"))["texts"] == "off"
    assert run_params(Settings(model="local:qwen2.5-0.5b", texts="on"))["texts"] == "on"  # a worker rebuilds it


def _text_keys(schema: dict[str, Any]) -> set[str]:
    """The free-text properties of an answer schema (a window's answer: of each turn's object), the critic's
    reason aside."""
    props = schema["properties"]
    if all(k.isdigit() for k in props):
        return set().union(*(_text_keys(p) for p in props.values()))
    return {k for k, p in props.items() if p.get("type") == "string" and "enum" not in p and k != "reason"}


@pytest.mark.parametrize("turns_per_call", [1, 4])
def test_texts_off_asks_and_stores_labels_only(tmp_path: Path, turns_per_call: int) -> None:
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps(dialogue("d1", 4).model_dump()) + "\n", encoding="utf-8")
    db = tmp_path / "r.db"
    with FakeOpenAIServer() as srv:
        result = runner.invoke(app, ["run", str(data), "--model", "openai:test", "--base-url", srv.base_url,
                                     "--db", str(db), "--texts", "off", "--turns-per-call", str(turns_per_call)])
        bodies = list(srv.requests)
    assert result.exit_code == 0, result.output
    schemas = [b["response_format"]["json_schema"]["schema"] for b in bodies]
    assert bodies and all(not _text_keys(s) for s in schemas)  # no explanation, no session text
    assert any(is_critique(b) for b in bodies)  # the critique is still asked, with its reason (its chain of thought)
    store = Store.open(str(db))
    try:
        run = store.run()
        records = list(store.final_records(run["id"]))
    finally:
        store.close()
    assert json.loads(run["params_json"])["texts"] == "off"
    turns = [r for r in records if r["kind"] == "turn"]
    assert len(turns) == 4 and all(r["labels"] and r["texts"] == {} for r in turns)
    assert all(r["critique"]["reason"] for r in turns)
    session = [r for r in records if r["kind"] == "session"]
    assert session and session[0]["labels"] and session[0]["texts"] == {}


def test_texts_on_still_asks_for_explanations(tmp_path: Path) -> None:
    with FakeOpenAIServer() as srv:
        Annotator("psy-insight", model="openai:test", base_url=srv.base_url, db=tmp_path / "r.db",
                  critique=False).annotate(dialogue("d1", 2))
        schemas = [b["response_format"]["json_schema"]["schema"] for b in srv.requests]
    assert any(_text_keys(s) for s in schemas)
