"""The fake OpenAI server, seen from the real openai client."""

from __future__ import annotations

import asyncio
import json
import math
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from autolabel.llm import tokens
from tests.fake_openai import (
    ALL_FAULTS,
    BAD_LABEL,
    CONTENT_FAULTS,
    FAULT_429,
    FAULT_429_RETRY_AFTER,
    FAULT_500,
    FAULT_502,
    FAULT_503,
    FAULT_BAD_LABELS,
    FAULT_EMPTY,
    FAULT_MALFORMED_JSON,
    FAULT_RESET,
    FAULT_TIMEOUT,
    FAULT_TRUNCATED_JSON,
    FAULT_WRONG_TYPES,
    HTTP_FAULTS,
    FakeOpenAIServer,
    Fault,
    count_prompt_tokens,
    synthesize,
)

ENC = tokens.encoding("o200k_base")

LABEL_SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["Change", "Sustain", "Neutral", "Question", "Reflection"]},
        "rationale": {"type": "string", "minLength": 10, "maxLength": 80},
    },
    "required": ["label", "rationale"],
    "additionalProperties": False,
}
MULTI_LABEL_SCHEMA = {
    "type": "object",
    "properties": {
        "labels": {"type": "array", "items": {"enum": ["a", "b", "c", "d"]}, "uniqueItems": True,
                   "minItems": 2, "maxItems": 4},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "severity": {"type": "integer", "minimum": 1, "exclusiveMaximum": 4},
        "flagged": {"type": "boolean"},
    },
    "required": ["labels", "confidence", "severity", "flagged"],
    "additionalProperties": False,
}
NESTED_REF_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$defs": {
        "Code": {"type": "string", "enum": ["MI-consistent", "MI-inconsistent", "Other"]},
        "Utterance": {
            "type": "object",
            "properties": {
                "turn": {"type": "integer", "minimum": 0},
                "code": {"$ref": "#/$defs/Code"},
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "uniqueItems": True,
                         "maxItems": 3},
                "note": {"anyOf": [{"type": "string", "maxLength": 40}, {"type": "null"}]},
            },
            "required": ["turn", "code", "tags", "note"],
            "additionalProperties": False,
        },
    },
    "type": "object",
    "properties": {
        "version": {"const": 2},
        "utterances": {"type": "array", "items": {"$ref": "#/$defs/Utterance"}, "minItems": 1},
        "summary": {
            "type": "object",
            "properties": {"kind": {"oneOf": [{"enum": ["x", "y"]}, {"type": "integer"}]}},
            "required": ["kind"],
            "additionalProperties": False,
        },
    },
    "required": ["version", "utterances", "summary"],
    "additionalProperties": False,
}
SCHEMAS = {"label": LABEL_SCHEMA, "multi_label": MULTI_LABEL_SCHEMA, "nested_ref": NESTED_REF_SCHEMA}


def json_schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "annotation", "schema": schema, "strict": True}}


def ask(client: openai.OpenAI, text: str = "I want to drink less.", **kwargs: Any) -> Any:
    return client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": text}],
                                          **kwargs)


def client_for(server: FakeOpenAIServer, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="test", **{"max_retries": 0, **kwargs})


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(seed=7) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: FakeOpenAIServer) -> openai.OpenAI:
    return client_for(server)


def test_serves_models_on_loopback(server: FakeOpenAIServer, client: openai.OpenAI) -> None:
    assert server.base_url.startswith("http://127.0.0.1:") and server.base_url.endswith("/v1")
    assert [model.id for model in client.models.list()] == ["fake-model"]


@pytest.mark.parametrize("name", SCHEMAS)
def test_synthesized_replies_validate_against_the_requested_schema(client: openai.OpenAI, name: str) -> None:
    schema = SCHEMAS[name]
    for i in range(5):
        reply = ask(client, f"utterance {i}", response_format=json_schema_format(schema))
        jsonschema.Draft202012Validator(schema).validate(json.loads(reply.choices[0].message.content))


def test_json_object_with_schema_and_plain_text(client: openai.OpenAI) -> None:
    reply = ask(client, response_format={"type": "json_object", "schema": LABEL_SCHEMA})
    jsonschema.validate(json.loads(reply.choices[0].message.content), LABEL_SCHEMA)
    text = ask(client).choices[0].message.content
    assert text and not text.startswith("{")


@pytest.mark.parametrize("name", SCHEMAS)
def test_synthesize_is_valid_for_many_seeds(name: str) -> None:
    validator = jsonschema.Draft202012Validator(SCHEMAS[name])
    for seed in range(200):
        validator.validate(synthesize(SCHEMAS[name], random.Random(seed)))


def test_replies_are_deterministic_and_labels_vary_with_the_messages(client: openai.OpenAI) -> None:
    fmt = json_schema_format(LABEL_SCHEMA)
    first = ask(client, "same words", response_format=fmt).choices[0].message.content
    assert ask(client, "same words", response_format=fmt).choices[0].message.content == first
    labels = {json.loads(ask(client, f"turn {i}", response_format=fmt).choices[0].message.content)["label"]
              for i in range(20)}
    assert len(labels) >= 3


def test_seed_changes_the_replies() -> None:
    contents = []
    for seed in (1, 2):
        with FakeOpenAIServer(seed=seed) as other:
            client = client_for(other)
            contents.append([ask(client, f"turn {i}").choices[0].message.content for i in range(5)])
    assert contents[0] != contents[1]


def test_n_choices_differ(client: openai.OpenAI) -> None:
    reply = ask(client, n=4)
    assert [choice.index for choice in reply.choices] == [0, 1, 2, 3]
    assert len({choice.message.content for choice in reply.choices}) > 1
    assert reply.usage.completion_tokens == sum(len(ENC.encode(c.message.content)) for c in reply.choices)


def test_envelope_looks_like_openai(server: FakeOpenAIServer) -> None:
    response = httpx.post(f"{server.base_url}/chat/completions",
                          json={"model": "gpt-echo", "messages": [{"role": "user", "content": "hello"}]})
    body = response.json()
    assert response.status_code == 200
    assert body["object"] == "chat.completion" and body["model"] == "gpt-echo" and body["id"]
    assert isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "stop"
    assert choice["logprobs"] is None
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}


def test_scripted_replies_and_request_recording() -> None:
    script = iter(["plain text", {"label": "Change", "rationale": "wants to stop"}, None])
    with FakeOpenAIServer(replies=lambda body: next(script)) as fake:
        client = client_for(fake)
        assert ask(client, "one").choices[0].message.content == "plain text"
        second = ask(client, "two", response_format=json_schema_format(LABEL_SCHEMA), temperature=0)
        assert json.loads(second.choices[0].message.content)["rationale"] == "wants to stop"
        third = ask(client, "three", response_format=json_schema_format(LABEL_SCHEMA))
        jsonschema.validate(json.loads(third.choices[0].message.content), LABEL_SCHEMA)
    assert [r["messages"][0]["content"] for r in fake.requests] == ["one", "two", "three"]
    assert fake.requests[1]["temperature"] == 0 and fake.requests[1]["model"] == "gpt-test"
    assert fake.requests[1]["response_format"]["json_schema"]["schema"] == LABEL_SCHEMA
    assert fake.stats["requests"] == 3 and fake.stats["ok"] == 3


@pytest.fixture(scope="module")
def faulty() -> Iterator[FakeOpenAIServer]:
    """Answers with the fault named by the user message, if any; the timeout fault sleeps 5 s."""

    def replies(body: dict[str, Any]) -> Fault | None:
        kind = body["messages"][-1]["content"]
        if kind == "slow 429":
            return Fault(FAULT_429_RETRY_AFTER, retry_after=2.5)
        return Fault(kind) if kind in ALL_FAULTS else None

    with FakeOpenAIServer(replies=replies, timeout_sleep=5.0) as fake:
        yield fake


@pytest.fixture(scope="module")
def faulty_client(faulty: FakeOpenAIServer) -> openai.OpenAI:
    return client_for(faulty, timeout=0.5)


@pytest.mark.parametrize(("kind", "error", "status"), [
    (FAULT_429_RETRY_AFTER, openai.RateLimitError, 429),
    (FAULT_429, openai.RateLimitError, 429),
    (FAULT_500, openai.InternalServerError, 500),
    (FAULT_502, openai.InternalServerError, 502),
    (FAULT_503, openai.InternalServerError, 503),
])
def test_http_faults(faulty_client: openai.OpenAI, kind: str, error: type[openai.APIStatusError],
                     status: int) -> None:
    with pytest.raises(error) as caught:
        ask(faulty_client, kind)
    assert caught.value.status_code == status
    assert caught.value.body["message"]
    retry_after = caught.value.response.headers.get("retry-after")
    assert retry_after == ("0.05" if kind == FAULT_429_RETRY_AFTER else None)


def test_fault_retry_after_is_sent(faulty_client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        ask(faulty_client, "slow 429")
    assert caught.value.response.headers["retry-after"] == "2.5"


def test_timeout_fires_the_client_read_timeout(faulty_client: openai.OpenAI) -> None:
    with pytest.raises(openai.APITimeoutError):  # the server sleeps 5 s: only the client's 0.5 s timeout raises this
        ask(faulty_client, FAULT_TIMEOUT)


def test_reset_drops_the_connection_mid_body(faulty: FakeOpenAIServer, faulty_client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIConnectionError) as caught:
        ask(faulty_client, FAULT_RESET)
    assert not isinstance(caught.value, openai.APITimeoutError)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(f"{faulty.base_url}/chat/completions",
                   json={"model": "m", "messages": [{"role": "user", "content": FAULT_RESET}]})


def test_malformed_json_is_a_200_that_is_not_json(faulty_client: openai.OpenAI) -> None:
    raw = faulty_client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": FAULT_MALFORMED_JSON}])
    assert raw.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw.http_response.text)


def faulted_content(client: openai.OpenAI, kind: str) -> str:
    properties = {**MULTI_LABEL_SCHEMA["properties"], "label": LABEL_SCHEMA["properties"]["label"]}
    fmt = json_schema_format(MULTI_LABEL_SCHEMA | {"properties": properties})
    return ask(client, kind, response_format=fmt).choices[0].message.content


def test_content_faults(faulty_client: openai.OpenAI) -> None:
    validator = jsonschema.Draft202012Validator(MULTI_LABEL_SCHEMA)
    with pytest.raises(json.JSONDecodeError):
        json.loads(faulted_content(faulty_client, FAULT_TRUNCATED_JSON))
    assert faulted_content(faulty_client, FAULT_EMPTY) == ""

    bad = json.loads(faulted_content(faulty_client, FAULT_BAD_LABELS))
    assert bad["label"] == BAD_LABEL and set(bad["labels"]) == {BAD_LABEL}
    assert not validator.is_valid(bad)

    wrong = json.loads(faulted_content(faulty_client, FAULT_WRONG_TYPES))
    assert isinstance(wrong["label"], int) and isinstance(wrong["labels"], str)
    assert not validator.is_valid(wrong)


def test_client_retries_through_transport_faults() -> None:
    script = iter([Fault(FAULT_429_RETRY_AFTER, retry_after=0.01), Fault(FAULT_503), "finally"])
    with FakeOpenAIServer(replies=lambda body: next(script)) as fake:
        reply = ask(client_for(fake, max_retries=2))
    assert reply.choices[0].message.content == "finally"
    assert len(fake.requests) == 3
    assert fake.stats["fault_429_retry_after"] == 1 and fake.stats["fault_503"] == 1 and fake.stats["ok"] == 1


def test_fault_rate_is_seeded_and_counted() -> None:
    outcomes = []
    for _ in range(2):
        with FakeOpenAIServer(seed=3, fault_rate=0.5, fault_kinds=(FAULT_500, FAULT_EMPTY)) as fake:
            client = client_for(fake)
            run = []
            for i in range(30):
                try:
                    run.append(ask(client, f"turn {i}").choices[0].message.content or "empty")
                except openai.InternalServerError:
                    run.append("500")
            outcomes.append(run)
    assert outcomes[0] == outcomes[1]
    assert {"500", "empty"} <= set(outcomes[0]) and len(set(outcomes[0])) > 2
    assert fake.stats["faults"] == fake.stats["fault_500"] + fake.stats["fault_empty"]
    assert fake.stats["faults"] + fake.stats["ok"] == fake.stats["requests"] == 30


def test_fault_kinds_are_validated() -> None:
    assert set(ALL_FAULTS) == set(HTTP_FAULTS) | set(CONTENT_FAULTS) and len(ALL_FAULTS) == 12
    with pytest.raises(ValueError):
        Fault("bogus")
    with pytest.raises(ValueError):
        FakeOpenAIServer(fault_kinds=("bogus",))


def test_logprob_tokens_concatenate_to_the_content() -> None:
    content = 'Café ☕ naïve — 日本語 {"label": "Change", "score": 0.75}'
    with FakeOpenAIServer(replies=lambda body: content,
                          logprob=lambda token: -2.0 if any(c.isdigit() for c in token) else -0.01) as fake:
        reply = ask(client_for(fake), logprobs=True, top_logprobs=3)
    entries = reply.choices[0].logprobs.content
    assert "".join(entry.token for entry in entries) == content
    assert len(entries) == len(ENC.encode(content))
    assert b"".join(bytes(entry.bytes) for entry in entries) == content.encode()
    assert {entry.logprob for entry in entries if any(c.isdigit() for c in entry.token)} == {-2.0}
    assert {entry.logprob for entry in entries if entry.token == "Change"} == {-0.01}
    for entry in entries:
        top = entry.top_logprobs
        assert len(top) == 3 and top[0].token == entry.token and top[0].logprob == entry.logprob
        assert [t.logprob for t in top] == sorted((t.logprob for t in top), reverse=True)
        assert top[1].logprob < entry.logprob and len({t.token for t in top}) == 3
        assert sum(math.exp(t.logprob) for t in top) <= 1.0 + 1e-9


def test_logprobs_without_top_logprobs(client: openai.OpenAI) -> None:
    reply = ask(client, response_format=json_schema_format(LABEL_SCHEMA), logprobs=True)
    entries = reply.choices[0].logprobs.content
    assert "".join(e.token for e in entries) == reply.choices[0].message.content
    assert all(e.top_logprobs == [] and e.logprob == -0.01 for e in entries)


def test_logprobs_unsupported_is_a_400() -> None:
    with FakeOpenAIServer(supports_logprobs=False) as fake:
        client = client_for(fake)
        with pytest.raises(openai.BadRequestError) as caught:
            ask(client, logprobs=True)
        assert caught.value.status_code == 400
        assert caught.value.body == {"message": "logprobs is not supported", "type": "invalid_request_error",
                                     "param": "logprobs", "code": None}
        assert ask(client).choices[0].logprobs is None


def test_usage_counts_tokens_like_the_cookbook(client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "You label counseling utterances."},
                {"role": "user", "name": "client", "content": "I guess I could try cutting down."},
                {"role": "assistant", "content": [{"type": "text", "text": "Change"}]}]
    cookbook = 3 + sum(3 + len(ENC.encode(m["role"])) for m in messages)
    cookbook += len(ENC.encode(messages[0]["content"])) + len(ENC.encode(messages[1]["content"]))
    cookbook += len(ENC.encode("client")) + 1 + len(ENC.encode("Change"))
    assert count_prompt_tokens(messages) == cookbook
    reply = client.chat.completions.create(model="gpt-test", messages=messages)
    assert reply.usage.prompt_tokens == cookbook
    assert reply.usage.completion_tokens == len(ENC.encode(reply.choices[0].message.content))
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_rate_limit_returns_429_above_the_limit() -> None:
    with FakeOpenAIServer(rate_limit_per_min=3) as fake:
        client = client_for(fake)
        for i in range(3):
            ask(client, f"turn {i}")
        with pytest.raises(openai.RateLimitError) as caught:
            ask(client, "one too many")
    assert 0 < float(caught.value.response.headers["retry-after"]) <= 20
    assert fake.stats["rate_limited"] == 1 and fake.stats["ok"] == 3


async def gather_asks(fake: FakeOpenAIServer, count: int) -> list[Any]:
    async with openai.AsyncOpenAI(base_url=fake.base_url, api_key="test", max_retries=0) as client:
        calls = (client.chat.completions.create(model="m", messages=[{"role": "user", "content": str(i)}])
                 for i in range(count))
        return await asyncio.gather(*calls, return_exceptions=True)


def test_max_concurrency_rejects_requests_over_the_limit() -> None:
    with FakeOpenAIServer(max_concurrency=2, latency=0.5) as fake:
        results = asyncio.run(gather_asks(fake, 6))
    assert sum(isinstance(r, openai.RateLimitError) for r in results) == 4
    assert fake.stats["rate_limited"] == 4 and fake.stats["ok"] == 2


def test_serves_64_concurrent_requests_with_seeded_latency() -> None:
    draws: list[float] = []

    def latency(rng: random.Random) -> float:
        draws.append(rng.uniform(0.15, 0.25))
        return draws[-1]

    with FakeOpenAIServer(latency=latency) as fake:
        started = time.monotonic()
        results = asyncio.run(gather_asks(fake, 64))
        elapsed = time.monotonic() - started
    assert all(not isinstance(r, BaseException) for r in results)
    assert fake.stats["ok"] == 64 and len(draws) == 64
    seeded = random.Random(0)
    assert draws == [seeded.uniform(0.15, 0.25) for _ in range(64)]
    assert 0.15 <= elapsed < 64 * 0.15  # one at a time they would take at least 64 x 0.15 s, on any machine


def test_files_and_batches_round_trip() -> None:
    lines = [{"custom_id": f"utt-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "gpt-test", "messages": [{"role": "user", "content": f"turn {i}"}],
                       "response_format": json_schema_format(LABEL_SCHEMA)}} for i in range(3)]
    jsonl = "".join(json.dumps(line) + "\n" for line in lines).encode()
    with FakeOpenAIServer(fault_rate=1.0) as fake:
        client = client_for(fake)
        uploaded = client.files.create(file=("requests.jsonl", jsonl), purpose="batch")
        assert uploaded.id and uploaded.bytes == len(jsonl) and uploaded.purpose == "batch"
        assert client.files.content(uploaded.id).content == jsonl

        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        statuses = [batch.status]
        while statuses[-1] not in ("completed", "failed") and len(statuses) < 10:
            statuses.append(client.batches.retrieve(batch.id).status)
        assert statuses == ["validating", "in_progress", "completed"]
        done = client.batches.retrieve(batch.id)
        counts = done.request_counts
        assert (counts.total, counts.completed, counts.failed) == (3, 3, 0)
        assert done.error_file_id is None
        output = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    assert [row["custom_id"] for row in output] == ["utt-0", "utt-1", "utt-2"]
    for row in output:
        assert row["error"] is None and row["response"]["request_id"]
        assert row["response"]["status_code"] == 200
        completion = row["response"]["body"]
        assert completion["object"] == "chat.completion" and completion["model"] == "gpt-test"
        jsonschema.validate(json.loads(completion["choices"][0]["message"]["content"]), LABEL_SCHEMA)
    assert fake.requests == [] and fake.stats["faults"] == 0


def test_batch_delay_and_cancel() -> None:
    jsonl = json.dumps({"custom_id": "x", "method": "POST", "url": "/v1/chat/completions",
                        "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}}).encode()
    with FakeOpenAIServer(batch_delay=0.3) as fake:
        client = client_for(fake)
        file_id = client.files.create(file=("in.jsonl", jsonl), purpose="batch").id
        batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        assert [client.batches.retrieve(batch.id).status for _ in range(3)] == ["in_progress"] * 3
        time.sleep(0.35)
        assert client.batches.retrieve(batch.id).status == "completed"

        other = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        assert client.batches.cancel(other.id).status == "cancelling"
        cancelled = client.batches.retrieve(other.id)
        assert cancelled.status == "cancelled" and cancelled.output_file_id is None


def test_stop_releases_the_port() -> None:
    fake = FakeOpenAIServer().start()
    port = fake.port
    fake.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_cli_serves_until_interrupted() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "tests.fake_openai", "--port", str(port), "--latency-ms", "5",
               "--max-concurrency", "64", "--rate-limit-per-min", "600", "--fault-rate", "0"]
    root = Path(__file__).parent.parent
    with subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            assert f"http://127.0.0.1:{port}/v1" in process.stdout.readline()
            reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                               json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
            assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"]
        finally:
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=10) == 0
