"""The embedded backend through a real local model (SmolLM2-135M, the smallest), and the model-file plumbing.

Nothing here is skipped: without the ``[local]`` extra these tests fail, naming the pip command to run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from autolabel.annotator import Annotator
from autolabel.errors import ConfigError, LLMError
from autolabel.llm import local
from autolabel.models import Dialogue, Status, Turn
from autolabel.settings import Settings

MODEL = "smollm2-135m"

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "observation": {"type": "string", "minLength": 1, "maxLength": 1200},
        "emotion": {"type": "array", "items": {"type": "string", "enum": ["A", "B", "C", "D"]},
                    "minItems": 1, "maxItems": 2},
    },
    "required": ["observation", "emotion"],
    "additionalProperties": False,
}


def _request(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": "Label the emotion of the quoted turn. Options: A anger, "
                                          "B sadness, C fear, D happiness. Answer with JSON: observation, "
                                          "then emotion."},
            {"role": "user", "content": f"Turn: {text}"},
        ],
        "temperature": 0.0, "max_tokens": 120,
        "response_format": {"type": "json_schema", "json_schema": {"name": "label", "schema": SCHEMA}},
        **extra,
    }


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    s = Settings(model=f"local:{MODEL}", model_dir=tmp_path_factory.mktemp("models"), local_threads=1)
    try:
        local.load_model(MODEL, s)
    except ConfigError as e:  # a clear failure, never a skip: CI installs the [local] extra
        pytest.fail(f"the [local] extra is not installed: {e}")
    return s


@pytest.fixture(scope="module")
def backend(settings: Settings) -> local.LocalBackend:
    return local.LocalBackend(settings)


def _complete(backend: local.LocalBackend, kwargs: dict[str, Any]) -> Any:
    return asyncio.run(backend.complete(kwargs))


def test_schema_constrained_answer_is_valid_json_with_usage(backend: local.LocalBackend,
                                                            settings: Settings) -> None:
    request = _request("I can't stop crying since my dog died.")
    completion = _complete(backend, request)
    answer = json.loads(completion.choices[0].message.content)
    assert list(Draft202012Validator(SCHEMA).iter_errors(answer)) == []
    assert list(answer) == ["observation", "emotion"]  # the schema's order: explanation first, then labels
    assert completion.model == MODEL
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage is not None and usage.completion_tokens > 0
    assert usage.prompt_tokens == local.count_tokens(MODEL, request["messages"], settings)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@pytest.mark.parametrize("text", ["My boss yelled at me again and I wanted to scream.",
                                  "最近每天晚上都睡不着，一想到考试就心慌。"])
def test_logprob_tokens_spell_the_content(backend: local.LocalBackend, text: str) -> None:
    completion = _complete(backend, _request(text, logprobs=True, top_logprobs=3))
    content = completion.choices[0].message.content
    tokens = completion.choices[0].logprobs.content
    assert "".join(t.token for t in tokens) == content
    assert b"".join(bytes(t.bytes) for t in tokens) == content.encode("utf-8")
    for t in tokens:
        assert t.logprob <= 1e-6
        alts = [a.logprob for a in t.top_logprobs]
        assert 1 <= len(alts) <= 3 and alts == sorted(alts, reverse=True)
    # renormalised over what the grammar allows: the forced key spelling has probability 1, and the chosen
    # emotion code's alternatives are the other codes only
    letters = {"A", "B", "C", "D"}
    after_key, start = [], content.index('"emotion"') + len('"emotion"')
    for t in tokens:
        start -= len(t.token)
        if start < 0:
            after_key.append(t)
    codes = [t for t in after_key if t.token.strip(' "[],') in letters]
    assert codes and all({a.token.strip(' "[],') for a in t.top_logprobs} <= letters | {""} for t in codes)
    assert any(t.logprob == 0.0 for t in tokens)


def test_without_logprobs_none_are_returned(backend: local.LocalBackend) -> None:
    completion = _complete(backend, _request("I passed my exam!"))
    assert completion.choices[0].logprobs is None


def test_the_model_is_loaded_once_per_process(backend: local.LocalBackend, settings: Settings) -> None:
    second = local.LocalBackend(settings)
    assert second.engine is backend.engine
    assert local.load_model(MODEL, settings).engine is backend.engine


def test_a_prompt_longer_than_the_context_is_an_llm_error(backend: local.LocalBackend) -> None:
    request = _request("word " * (local.N_CTX + 100))
    with pytest.raises(LLMError, match="does not fit"):
        _complete(backend, request)


def test_annotator_labels_every_turn_with_critique(settings: Settings, tmp_path: Path) -> None:
    dialogue = Dialogue(id="d1", turns=(
        Turn(index=0, speaker="Seeker", text="I failed my driving test again and I feel like an idiot."),
        Turn(index=1, speaker="Supporter", text="That sounds discouraging. What happened during the test?"),
    ))
    annotator = Annotator(task="psy-insight", model=f"local:{MODEL}", db=tmp_path / "run.db",
                          settings=settings, max_tokens=200, critique=True)
    result = annotator.annotate(dialogue)
    assert [t.turn_index for t in result.turns] == [0, 1]
    for turn in result.turns:
        assert turn.status in (Status.ACCEPTED, Status.FLAGGED, Status.FAILED)
        if turn.status is Status.FLAGGED:
            assert turn.flags, "a flagged turn says why"
        if turn.status is Status.FAILED:
            assert turn.error, "a failed turn says why"
        else:
            field = "emotion" if turn.role == "seeker" else "strategy"
            assert turn.labels[field] and turn.critique is not None
            assert 0.0 <= turn.confidence[field].value <= 1.0


# -- model files ---------------------------------------------------------------------------------------------

def _fake_parts(root: Path, prefix: str, chunks: list[bytes]) -> None:
    for i, chunk in enumerate(chunks, start=1):
        pkg = root / f"{prefix}{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('part packages must not be imported')\n")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(chunk)


def _register(monkeypatch: pytest.MonkeyPatch, name: str, prefix: str, n: int, data: bytes,
              sha256: str | None = None) -> None:
    digest = sha256 or hashlib.sha256(data).hexdigest()
    spec = local.split_model(name, "test", prefix, "1", n, len(data), digest, ("en",))
    monkeypatch.setitem(local.MODELS, name, spec)


def test_parts_are_joined_in_numeric_order_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chunks = [f"<{i}>".encode() * 3 for i in range(1, 12)]  # 11 parts: part10 and part11 come after part9
    _fake_parts(tmp_path / "site", "alfakepart_", chunks)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    _register(monkeypatch, "fake-model", "alfakepart_", 11, b"".join(chunks))
    s = Settings(model="local:fake-model", model_dir=tmp_path / "cache")
    path = local.model_path("fake-model", s)
    assert path == tmp_path / "cache" / "models" / "fake-model.gguf"
    assert path.read_bytes() == b"".join(chunks)
    assert [p.name for p in path.parent.iterdir()] == ["fake-model.gguf"]  # no temp file left behind
    stamp = path.stat().st_mtime_ns
    assert local.model_path("fake-model", s) == path
    assert path.stat().st_mtime_ns == stamp  # trusted, not joined again


def test_a_checksum_mismatch_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chunks = [b"abc", b"def"]
    _fake_parts(tmp_path / "site", "alfakebad_", chunks)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    _register(monkeypatch, "bad-model", "alfakebad_", 2, b"abcdef", sha256="0" * 64)
    with pytest.raises(ConfigError, match="checksum"):
        local.model_path("bad-model", Settings(model="local:bad-model", model_dir=tmp_path / "cache"))
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_a_missing_package_names_the_pip_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, "absent-model", "alnosuchpart_", 2, b"xy")
    with pytest.raises(ConfigError) as err:
        local.LocalBackend(Settings(model="local:absent-model", model_dir=tmp_path))
    assert 'pip install "alnosuchpart_1==1" "alnosuchpart_2==1"' in str(err.value)
    assert "alnosuchpart_1==1, alnosuchpart_2==1" in str(err.value)


def test_an_unknown_local_model_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="smollm2-135m, qwen2.5-0.5b, qwen2.5-1.5b"):
        local.LocalBackend(Settings(model="local:nope", model_dir=tmp_path))


def test_long_string_limits_become_bounded_repetitions() -> None:
    grammar = local._schema_to_gbnf(SCHEMA)
    assert "char{1,1200}" in grammar and grammar.count("(") < 20
