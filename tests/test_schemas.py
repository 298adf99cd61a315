"""Schemas are data: each a valid Draft 2020-12 schema, each shipped example valid, shipped inside the wheel."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest
import yaml

import autolabel
from autolabel.tasks import builtin_tasks, check_spec, load_schema, load_task
from tests.conftest import REPO

SCHEMAS = sorted((REPO / "schemas").glob("*.json"))


@pytest.mark.parametrize("path", SCHEMAS, ids=lambda p: p.name)
def test_each_schema_is_a_valid_2020_12_schema(path: Path) -> None:
    schema = json.loads(path.read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("name", sorted(builtin_tasks()))
def test_builtin_specs_validate_and_generate_valid_output_schemas(name: str) -> None:
    raw = yaml.safe_load(builtin_tasks()[name].read_text(encoding="utf-8"))
    assert check_spec(raw) == []
    task = load_task(name)
    for role in task.roles:
        fields = task.fields_for(role)
        if fields:
            jsonschema.Draft202012Validator.check_schema(task.output_schema(fields))
            jsonschema.Draft202012Validator.check_schema(task.critique_schema(fields))
    # the spec's own examples, encoded as the model would answer, validate against the generated schemas
    for ex in task.examples:
        fields = task.fields_for(ex.role)
        assert fields is not None
        answer = {**{t.name: ex.texts.get(t.name, "x") for t in fields.texts}, **task.encode(fields, ex.labels)}
        jsonschema.validate(answer, task.output_schema(fields), cls=jsonschema.Draft202012Validator)


def test_every_shipped_spec_and_its_examples_validate_against_the_json_schema() -> None:
    """The schema alone (no code) accepts each built-in spec, short forms included, and each of its examples."""
    assert len(builtin_tasks()) >= 3
    schema = load_schema("task.schema.json")
    validator = jsonschema.Draft202012Validator(schema)
    for name, path in sorted(builtin_tasks().items()):
        raw = _text_keys(yaml.safe_load(path.read_text(encoding="utf-8")))  # as in JSON: scale points as text
        assert list(validator.iter_errors(raw)) == [], name
        example_schema = {"$defs": schema["$defs"], "$ref": "#/$defs/example"}
        for ex in raw.get("examples", []):
            jsonschema.validate(ex, example_schema, cls=jsonschema.Draft202012Validator)


def _text_keys(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _text_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_text_keys(v) for v in value]
    return value


def test_mi_talk_demo_dialogues_carry_gold_for_every_field() -> None:
    from autolabel import read_dialogues
    from autolabel.tasks import builtin_demo

    task, demo = load_task("mi-talk"), builtin_demo("mi-talk")
    assert demo is not None
    dialogues = list(read_dialogues(Path(str(demo))))
    assert len(dialogues) >= 4
    for d in dialogues:
        assert d.meta["target_behaviour"]
        for f in task.labels:
            if f.scope == "session":
                assert f.normalize(d.meta[f.gold or f.name]) is not None, (d.id, f.name)
        for t in d.turns:
            fields = task.fields_for(task.role_of(t.speaker))
            assert fields is not None, t.speaker
            for f in fields.labels:
                assert f.normalize(t.meta[f.gold or f.name]) is not None, (d.id, t.index, f.name)


def test_psy_insight_carries_the_full_scheme() -> None:
    t = load_task("psy-insight")
    emotion, strategy = t.label("emotion"), t.label("strategy")
    assert emotion.multi and emotion.roles == ("seeker",) and len(emotion.options) == 11
    assert strategy.multi and strategy.roles == ("supporter",) and len(strategy.options) == 10
    assert {"Neutral", "Unknown", "Others"} <= {o.name for o in emotion.options}
    assert {"Role-play", "Unknown", "Others"} <= {o.name for o in strategy.options}
    assert {f.name for f in t.labels if f.scope == "session"} == {"psychotherapy", "topic"}
    assert {(x.name, x.scope) for x in t.texts} == {("observation", "turn"), ("reasoning", "turn"),
                                                    ("summary", "session"), ("guidance", "session")}
    assert set(t.languages) == {"en", "zh"}
    assert t.label("psychotherapy").normalize("Cognitive Behaviour Therapy") == "Cognitive Behavioral Therapy"


def test_annotation_schema_rejects_a_flagged_record_without_reasons() -> None:
    schema = load_schema("annotation.schema.json")
    rec = {"kind": "turn", "run_id": "r", "task": {"name": "t", "version": "1", "hash": "0" * 16}, "model": "m",
           "dialogue_id": "d", "turn_index": 0, "speaker": "Seeker", "role": "seeker", "status": "flagged",
           "labels": {}, "texts": {}, "confidence": {}, "flags": []}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(rec, schema, cls=jsonschema.Draft202012Validator)
    jsonschema.validate({**rec, "flags": ["low_confidence:emotion"]}, schema, cls=jsonschema.Draft202012Validator)


def test_public_api_is_pinned() -> None:
    assert sorted(autolabel.__all__) == sorted([
        "Annotator", "AutolabelError", "BudgetExceeded", "Cascade", "ConfigError", "Dialogue", "DialogueResult",
        "ExportFormat", "InputError", "InputFormat", "LLMError", "RequestRefused", "RetryExhausted", "ReviewError",
        "RunSummary", "SessionAnnotation", "Settings", "Plan", "ReviewQueue", "calibrate", "evaluate", "load_gold",
        "plan", "Status", "Store", "StoreError", "TaskSpec", "TaskSpecError",
        "Turn", "TurnAnnotation", "export", "list_tasks", "load_cascade", "load_task", "read_dialogues",
        "validate_task_file",
    ])
    for name in autolabel.__all__:
        assert getattr(autolabel, name) is not None


@pytest.mark.parametrize("config_dir", [".", "graphs"])
def test_langgraph_json_points_at_the_compiled_graph(config_dir: str) -> None:
    """The root file is what ``langgraph dev`` reads from the repository root (the README's command); the one in
    graphs/ ships in the wheel beside the graph."""
    config = json.loads((REPO / config_dir / "langgraph.json").read_text())
    target = config["graphs"]["annotate"]
    path, attr = target.split(":")
    assert (REPO / config_dir / path).exists()
    from autolabel.graphs.annotate import graph as module

    compiled = getattr(module, attr)
    assert {"prepare", "annotate_turns", "session", "finalize"} <= set(compiled.get_graph().nodes)


def test_wheel_ships_schemas_and_task_specs(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True, timeout=300)
    wheel = next(tmp_path.glob("autolabel-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("autolabel/schemas/task.schema.json", "autolabel/schemas/annotation.schema.json",
                     "autolabel/schemas/tasks/psy-insight.yaml", "autolabel/schemas/tasks/support-strategy.yaml",
                     "autolabel/schemas/tasks/mi-talk.yaml",
                     "autolabel/graphs/annotate/graph.py", "autolabel/graphs/langgraph.json", "autolabel/cli/app.py",
                     "autolabel/schemas/tasks/mi-talk.demo.jsonl",
                     "autolabel/review/templates/item.html"):
        assert required in names, required


def test_public_functions_stay_functions_after_their_modules_are_imported() -> None:
    """``from autolabel import evaluate`` is the function even when ``autolabel.quality.evaluate`` (the module) was
    imported first — by the CLI, a benchmark or the user's own code (fresh interpreter: nothing loaded yet)."""
    code = ("import autolabel.quality.evaluate, autolabel.planning, autolabel.review.queue\n"
            "from autolabel import calibrate, evaluate, plan, ReviewQueue\n"
            "import inspect\n"
            "assert inspect.isfunction(evaluate) and evaluate.__name__ == 'evaluate', evaluate\n"
            "assert inspect.isfunction(plan) and plan.__name__ == 'plan', plan\n"
            "assert inspect.isfunction(calibrate) and inspect.isclass(ReviewQueue)\n"
            "from autolabel.quality.evaluate import load_gold\n"
            "assert callable(load_gold)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
