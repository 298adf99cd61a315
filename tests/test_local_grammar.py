"""The embedded model's grammar says what the schema says: a critique's ``if``/``then`` rule (a "revise" carries
revised labels), which llama.cpp's converter would drop, is spelled as branches the grammar enforces."""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp
import pytest
from jsonschema import Draft202012Validator

from autolabel.llm import local
from autolabel.settings import Settings
from autolabel.tasks import load_task

MODEL = "smollm2-135m"


def critique_schemas() -> list[tuple[str, dict[str, Any]]]:
    task = load_task("psy-insight")
    out = [(role, task.critique_schema(f)) for role in task.roles if (f := task.fields_for(role)) is not None]
    window = {"type": "object", "properties": {str(i): s for i, (_, s) in enumerate(out)},
              "required": [str(i) for i in range(len(out))], "additionalProperties": False}
    return [*out, ("window", window)]


def answers(schema: dict[str, Any]) -> list[Any]:
    """Critique answers around the rule: each verdict with null, valid revised labels and broken ones."""
    if "reason" not in schema["properties"]:  # a window: each turn's answer in turn, the others agreeing
        parts = {k: answers(s) for k, s in schema["properties"].items()}
        agree = {k: a[0] for k, a in parts.items()}
        return [{**agree, k: a} for k, options in parts.items() for a in options]
    labels = schema["properties"]["revised"]["anyOf"][0]
    valid = {name: ([p["items"]["enum"][0]] if p.get("type") == "array" else p["enum"][0])
             for name, p in labels["properties"].items()}
    broken = {name: "not an option" for name in labels["properties"]}
    return [{"reason": "r", "verdict": v, "revised": r} for v in ("agree", "unsure", "revise")
            for r in (None, valid, broken)]


@pytest.mark.parametrize(("role", "schema"), critique_schemas())
def test_branches_accept_exactly_what_the_schema_accepts(role: str, schema: dict[str, Any]) -> None:
    before, after = Draft202012Validator(schema), Draft202012Validator(local.if_then_as_branches(schema))
    checked = answers(schema)
    assert any(not before.is_valid(a) for a in checked) and any(before.is_valid(a) for a in checked)
    for a in checked:
        assert before.is_valid(a) == after.is_valid(a), a


def accepts(vocab: Any, gbnf: str, text: str, model: Any) -> bool:
    """Does the grammar let the model's tokens of ``text`` through, one after the other (then end)?"""
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    try:
        for token in model.tokenize(text.encode(), add_bos=False, special=False):
            data = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(token, 0.0, 0.0))
            arr = llama_cpp.llama_token_data_array(data=data, size=1, selected=-1, sorted=False)
            llama_cpp.llama_sampler_apply(sampler, ctypes.byref(arr))
            if data[0].logit == float("-inf"):
                return False
            llama_cpp.llama_sampler_accept(sampler, token)
        return True
    finally:
        llama_cpp.llama_sampler_free(sampler)


def test_the_grammar_refuses_a_revise_without_revised_labels(tmp_path_factory: pytest.TempPathFactory) -> None:
    settings = Settings(model=f"local:{MODEL}", model_dir=tmp_path_factory.mktemp("models"), local_threads=1)
    model = local.load_model(MODEL, settings).engine.model
    role, schema = critique_schemas()[0]
    gbnf = local.grammar_of(schema)
    labels = schema["properties"]["revised"]["anyOf"][0]
    valid = ", ".join(f'"{name}": ' + (f'["{p["items"]["enum"][0]}"]' if p.get("type") == "array"
                                       else f'"{p["enum"][0]}"') for name, p in labels["properties"].items())
    vocab = model.vocab
    assert accepts(vocab, gbnf, '{"reason": "ok", "verdict": "agree", "revised": null}', model)
    assert accepts(vocab, gbnf, '{"reason": "no", "verdict": "revise", "revised": {' + valid + '}}', model)
    assert not accepts(vocab, gbnf, '{"reason": "no", "verdict": "revise", "revised": null}', model), \
        "a revise without labels fails validation and, at temperature 0, every re-ask"
