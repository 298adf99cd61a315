"""``LLMClient``'s short paths keep the behaviour of the long ones: instructor's re-ask loop is called with a request
prepared once per schema (the same request ``instructor.patch`` would send), and a call's first attempt runs before
tenacity is set up (the retry deadline still counts from it)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import instructor
import openai
import pytest
from openai.types.chat import ChatCompletion

from autolabel.errors import LLMError
from autolabel.llm import CallTrace, LLMClient, cache_key
from autolabel.settings import Settings
from autolabel.store import Store
from autolabel.structured import response_format, response_model, schema_digest
from autolabel.tasks import load_task

TASK = load_task("psy-insight")
FIELDS = TASK.fields_for("seeker")
assert FIELDS is not None
SCHEMA = TASK.output_schema(FIELDS)
VALID = {"observation": "worried about exams", "emotion": ["E"]}
MESSAGES = [{"role": "system", "content": "Label the turn."}, {"role": "user", "content": "I can't sleep."}]


def completion(content: str) -> ChatCompletion:
    return ChatCompletion.model_validate({
        "id": "c", "object": "chat.completion", "created": 0, "model": "test",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})


def server_error() -> openai.InternalServerError:
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    return openai.InternalServerError("boom", response=httpx.Response(500, request=request), body=None)


class Scripted:
    """A backend that answers each request with the next scripted reply (content, or an exception to raise) after
    ``delay`` seconds, and keeps the keyword arguments of every request."""

    supports_logprobs = False

    def __init__(self, *replies: str | BaseException, delay: float = 0.0) -> None:
        self.model = "test"
        self.replies = list(replies)
        self.delay = delay
        self.sent: list[dict[str, Any]] = []

    async def complete(self, kwargs: dict[str, Any]) -> ChatCompletion:
        self.sent.append(json.loads(json.dumps(kwargs)))  # as sent: later changes to the request do not show
        await asyncio.sleep(self.delay)
        reply = self.replies.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        return completion(reply)

    async def aclose(self) -> None:
        pass


def ask(tmp_path: Path, backend: Scripted, messages: list[dict[str, str]] | None = None, **settings: Any) -> Any:
    async def run() -> Any:
        store = Store.open(tmp_path / "runs.db")
        llm = LLMClient(Settings(model="openai:test", db=str(tmp_path / "runs.db"), cache=False, **settings), backend,
                        store, run_id="r")
        try:
            return await llm.structured(messages or MESSAGES, SCHEMA, name="label_seeker",
                                        trace=CallTrace(purpose="label"))
        finally:
            await llm.flush()
            store.close()

    return asyncio.run(run())


def test_the_request_is_the_one_instructor_patch_sends(tmp_path: Path) -> None:
    backend = Scripted(json.dumps(VALID))
    result = ask(tmp_path, backend)
    assert result.answer == VALID

    patched_sent: list[dict[str, Any]] = []

    async def create(**kwargs: Any) -> ChatCompletion:
        patched_sent.append(json.loads(json.dumps(kwargs)))
        return completion(json.dumps(VALID))

    model = response_model(f"label_seeker_{schema_digest(SCHEMA)}", SCHEMA)
    patched = instructor.patch(create=create, mode=instructor.Mode.JSON_SCHEMA)
    asyncio.run(patched(response_model=model, messages=MESSAGES, max_retries=2, temperature=0.0,  # type: ignore[misc]
                        max_tokens=512))
    assert backend.sent == patched_sent
    assert cache_key("test", backend.sent[0]) == cache_key("test", patched_sent[0])  # existing caches keep hitting


def test_a_reask_extends_a_copy_of_the_messages(tmp_path: Path) -> None:
    backend = Scripted('{"observation": "x", "emotion": ["ZZ"]}', json.dumps(VALID))
    messages = [dict(m) for m in MESSAGES]
    result = ask(tmp_path, backend, messages)
    assert result.answer == VALID and result.attempts == 2
    assert messages == MESSAGES  # the caller's list (the critique reuses it) is untouched
    first, reask = backend.sent
    assert first["messages"] == MESSAGES
    assert reask["messages"][:2] == MESSAGES and reask["messages"][2]["role"] == "assistant"
    assert "ZZ" in reask["messages"][3]["content"]  # the validation error went back to the model


def test_a_failed_first_attempt_is_retried_by_tenacity(tmp_path: Path) -> None:
    backend = Scripted(server_error(), json.dumps(VALID))
    assert ask(tmp_path, backend).answer == VALID
    assert len(backend.sent) == 2


@pytest.mark.parametrize("delay, deadline, sent", [(0.0, 60.0, 3), (0.3, 0.2, 1)])
def test_the_retry_deadline_counts_from_the_first_attempt(tmp_path: Path, delay: float, deadline: float,
                                                          sent: int) -> None:
    backend = Scripted(server_error(), server_error(), server_error(), delay=delay)
    started = time.monotonic()
    with pytest.raises(LLMError, match="HTTP 500"):
        ask(tmp_path, backend, max_retries=2, retry_deadline=deadline)
    assert len(backend.sent) == sent  # a first attempt that outlasted the deadline is not retried
    assert time.monotonic() - started < 30


def test_the_cache_key_is_the_sha256_of_the_sorted_request_json() -> None:
    # stores written by earlier versions keep hitting: the key of a request never changes
    task = load_task("psy-insight")
    schema = task.output_schema(task.fields_for("seeker"))
    fmt = response_format(response_model("label_seeker", schema))
    for kwargs in ({"messages": [{"role": "user", "content": "我很焦虑 — über"}], "temperature": 0.0,
                    "max_tokens": 512, "response_format": fmt, "logprobs": True, "top_logprobs": 5},
                   {"messages": [], "response_format": {"type": "json_object"}, "seed": 3}):
        for _ in range(2):  # the second time from the memo of the format's JSON
            blob = json.dumps({"model": "m", **kwargs}, sort_keys=True, ensure_ascii=False, default=str)
            assert cache_key("m", kwargs) == hashlib.sha256(blob.encode()).hexdigest()
