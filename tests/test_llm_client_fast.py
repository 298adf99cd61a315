"""``LLMClient``'s short paths keep the behaviour of the long ones: instructor's re-ask loop is called with a request
prepared once per schema (the same request ``instructor.patch`` would send), and a call's first attempt runs before
tenacity is set up (the retry deadline still counts from it)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import instructor
import openai
import pytest
from openai.types.chat import ChatCompletion

from autolabel.errors import LLMError
from autolabel.llm.client import CallTrace, LLMClient, cache_key
from autolabel.llm.structured import response_format, response_model, schema_digest
from autolabel.persistence.store import Store
from autolabel.settings import Settings
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
    with pytest.raises(LLMError, match="HTTP 500"):
        ask(tmp_path, backend, max_retries=2, retry_deadline=deadline)
    assert len(backend.sent) == sent  # a first attempt that outlasted the deadline is not retried


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


# -- OpenAIBackend: the body goes out as JSON once, the reply is parsed in one pass ----------------------------------

class RawServer:
    """An HTTP server on 127.0.0.1 that answers each POST with the next scripted (status, body bytes) and keeps
    what it was sent (path, headers, JSON body)."""

    def __init__(self, *replies: tuple[int, bytes]) -> None:
        import http.server
        import threading

        self.replies = list(replies)
        self.seen: list[dict[str, Any]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.seen.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
                status, payload = outer.replies.pop(0) if outer.replies else (200, COMPLETION_JSON)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> RawServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


COMPLETION_JSON = completion(json.dumps(VALID)).model_dump_json().encode()
REQUEST = {"messages": [{"role": "system", "content": "Label the turn."},
                        {"role": "user", "content": "我睡不着 — I can't sleep."}],
           "temperature": 0.0, "max_tokens": 512, "logprobs": True, "top_logprobs": 5,
           "response_format": response_format(response_model(f"label_seeker_{schema_digest(SCHEMA)}", SCHEMA))}


def test_the_backend_sends_what_chat_completions_create_sends(monkeypatch: pytest.MonkeyPatch) -> None:
    from autolabel.llm.client import OpenAIBackend

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    with RawServer() as srv:
        backend = OpenAIBackend(Settings(model="openai:test-model", base_url=srv.base_url))

        async def both() -> tuple[ChatCompletion, ChatCompletion]:
            ours = await backend.complete(dict(REQUEST))
            await backend.aclose()
            client = openai.AsyncOpenAI(api_key="sk-test-key", base_url=srv.base_url, max_retries=0)
            theirs = await client.chat.completions.create(model="test-model", **REQUEST)
            await client.close()
            return ours, theirs

        ours, theirs = asyncio.run(both())
    mine, create = srv.seen
    assert mine["path"] == create["path"] == "/v1/chat/completions"
    assert mine["body"] == create["body"]
    assert list(mine["body"]["response_format"]["json_schema"]["schema"]["properties"]) == \
        list(SCHEMA["properties"])  # the schema's key order (explanation first) is kept
    mine_headers, create_headers = ({k.lower(): v for k, v in seen["headers"].items()} for seen in (mine, create))
    for header in ("authorization", "content-type", "accept", "user-agent", "content-length"):  # httpx keeps the case
        assert mine_headers[header] == create_headers[header], header
    assert ours == theirs


def test_a_reply_off_the_openai_types_is_read_leniently_as_the_openai_client_reads_it() -> None:
    from autolabel.llm.client import parse_completion

    reply = json.loads(COMPLETION_JSON)
    assert parse_completion(COMPLETION_JSON) == completion(json.dumps(VALID))
    # a local server's quirks: no "created", a finish reason of its own, an extra field
    del reply["created"]
    reply["choices"][0]["finish_reason"] = "eos"
    reply["timings"] = {"predicted_ms": 12.5}
    quirky = parse_completion(json.dumps(reply).encode())
    assert quirky.choices[0].message.content == json.dumps(VALID)
    assert quirky.choices[0].finish_reason == "eos" and quirky.usage is not None and quirky.usage.prompt_tokens == 10


@pytest.mark.parametrize("payload, error", [(b"[]", "GarbledReply"), (b'{"error": "busy"}', "GarbledReply"),
                                            (b'{"id": "\xff\xfe"}', "GarbledReply"),
                                            (b'{"id": "c", "choi', "JSONDecodeError")])
def test_a_garbled_envelope_is_retried_and_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, payload: bytes,
                                                  error: str) -> None:
    import sqlite3

    from autolabel.llm.client import OpenAIBackend

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    with RawServer((200, payload), (200, payload)) as srv:
        backend = OpenAIBackend(Settings(model="openai:test", base_url=srv.base_url))
        assert ask(tmp_path, backend).answer == VALID  # type: ignore[arg-type]
        assert len(srv.seen) == 3
    with sqlite3.connect(tmp_path / "runs.db") as conn:
        outcomes = [r[0] for r in conn.execute("SELECT outcome FROM llm_calls ORDER BY attempt")]
    assert outcomes == [f"error:{error}", f"error:{error}", "ok"]


def test_garbled_envelopes_to_the_end_fail_the_call_with_the_reason(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from autolabel.llm.client import OpenAIBackend

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    with RawServer(*[(200, b"[]")] * 3) as srv:
        backend = OpenAIBackend(Settings(model="openai:test", base_url=srv.base_url))
        with pytest.raises(LLMError, match="unreadable replies: GarbledReply"):
            ask(tmp_path, backend, max_retries=2)  # type: ignore[arg-type]
        assert len(srv.seen) == 3
