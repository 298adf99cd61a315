"""Structured-output modes: every mode against a loopback server that takes it; ``auto`` steps down, once per run,
when a server refuses a mode (llama-cpp-python's server refuses ``json_schema`` with an HTTP 500 that names
``response_format``), without retrying the refusal; and llama-cpp-python's own OpenAI server, run on loopback with
the SmolLM2 GGUF of the ``[local]`` extra, labels a dialogue end to end."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from autolabel.cli import app
from autolabel.errors import RequestRefused
from autolabel.llm.client import CallTrace, LLMClient, OpenAIBackend, Structured
from autolabel.llm.pricing import price
from autolabel.persistence.store import Store
from autolabel.settings import Settings, StructuredMode
from autolabel.tasks import load_task
from tests.conftest import dialogue, write_jsonl
from tests.fake_openai import FakeOpenAIServer

TASK = load_task("psy-insight")
FIELDS = TASK.fields_for("seeker")
assert FIELDS is not None
SCHEMA = TASK.output_schema(FIELDS)
MESSAGES = [{"role": "system", "content": "Label the turn."}, {"role": "user", "content": "I can't sleep."}]


def kind(body: dict[str, Any]) -> str:
    """The structured-output mode a request was sent in."""
    if body.get("tools"):
        return "tools"
    return (body.get("response_format") or {}).get("type") or "prompt"


async def ask(settings: Settings, tmp_path: Path, n: int = 1, *, concurrent: bool = False) -> tuple[
        list[Structured], LLMClient]:
    """``n`` structured calls (distinct requests) through one client (one run) against ``settings.base_url``."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    store = Store.open(tmp_path / "modes.db")
    client = LLMClient(settings, OpenAIBackend(settings), store, run_id="r1")

    async def one(i: int) -> Structured:
        messages = [MESSAGES[0], {"role": "user", "content": f"I can't sleep (turn {i})."}]
        return await client.structured(messages, SCHEMA, name="label_seeker", trace=CallTrace(purpose="label"))

    try:
        if concurrent:
            results = list(await asyncio.gather(*(one(i) for i in range(n))))
        else:
            results = [await one(i) for i in range(n)]
        await client.flush()
    finally:
        await client.backend.aclose()
        store.close()
    return results, client


def settings(server: FakeOpenAIServer, **kw: Any) -> Settings:
    return Settings(model="openai:fake-model", base_url=server.base_url, logprobs=False, cache=False,
                    max_retries=3, **kw)


@pytest.mark.parametrize("mode", ["json_schema", "json_object", "tools", "prompt"])
def test_each_mode_gets_a_valid_answer_from_a_server_that_takes_it(mode: str, tmp_path: Path) -> None:
    with FakeOpenAIServer(seed=3) as server:
        results, client = asyncio.run(ask(settings(server, structured_mode=mode), tmp_path, 2))
    assert [kind(b) for b in server.requests] == [mode, mode]
    body = server.requests[0]
    system = body["messages"][0]["content"]
    schema_in_prompt = json.dumps(SCHEMA) in system
    assert schema_in_prompt is (mode in ("json_object", "prompt"))  # where the server does not enforce it
    if mode == "json_object":  # llama-cpp-python's server cannot make a grammar of long maxLength strings
        assert "maxLength" in json.dumps(SCHEMA) and "maxLength" not in json.dumps(body["response_format"])
    if mode == "tools":
        assert body["tool_choice"]["function"]["name"] == body["tools"][0]["function"]["name"]
        assert body["tools"][0]["function"]["parameters"] == SCHEMA
    for r in results:
        assert set(r.answer) == set(SCHEMA["properties"]) and r.answer["emotion"]
        assert json.loads(r.raw.strip().removeprefix("```json").removesuffix("```")) == r.answer
    assert client.mode is StructuredMode(mode)


@pytest.mark.parametrize("status", [500, 400, 422])
def test_auto_steps_down_once_from_a_refused_mode_and_keeps_the_next_for_the_run(
        status: int, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with FakeOpenAIServer(seed=3, structured=("json_object",), refusal_status=status) as server, \
            caplog.at_level(logging.WARNING, logger="autolabel"):
        results, client = asyncio.run(ask(settings(server), tmp_path, 4))
    # one refused json_schema request, not retried (max_retries=3 would have sent it 4 times); then json_object only
    assert [kind(b) for b in server.requests] == ["json_schema"] + ["json_object"] * 4
    assert server.stats["refused"] == 1
    assert len(results) == 4 and client.mode is StructuredMode.JSON_OBJECT
    steps = [r.getMessage() for r in caplog.records if "structured output" in r.getMessage()]
    assert len(steps) == 1 and "json_object" in steps[0] and f"HTTP {status}" in steps[0]


def test_concurrent_calls_refused_together_step_down_once(tmp_path: Path) -> None:
    with FakeOpenAIServer(seed=3, structured=("tools",), latency=0.05) as server:
        results, client = asyncio.run(ask(settings(server, concurrency=8), tmp_path, 8, concurrent=True))
    kinds = [kind(b) for b in server.requests]
    assert len(results) == 8 and client.mode is StructuredMode.TOOLS  # json_schema → json_object → tools, no skip
    assert kinds.count("tools") == 8 and set(kinds) == {"json_schema", "json_object", "tools"}
    assert server.stats["refused"] == kinds.count("json_schema") + kinds.count("json_object") <= 16


def test_a_server_that_takes_no_structured_output_is_asked_in_the_prompt(tmp_path: Path) -> None:
    with FakeOpenAIServer(seed=3, structured=()) as server:
        results, client = asyncio.run(ask(settings(server), tmp_path, 2))
    assert [kind(b) for b in server.requests] == ["json_schema", "json_object", "tools", "prompt", "prompt"]
    assert client.mode is StructuredMode.PROMPT and all(r.answer["emotion"] for r in results)


def test_a_refused_explicit_mode_is_one_refusal_that_says_what_to_do(tmp_path: Path) -> None:
    with FakeOpenAIServer(seed=3, structured=("json_object",)) as server:
        with pytest.raises(RequestRefused, match=r"refused --structured-mode json_schema \(HTTP 500: .*response_format"
                                                 r".*\); try another"):
            asyncio.run(ask(settings(server, structured_mode="json_schema"), tmp_path))
    assert len(server.requests) == 1  # not retried, no other mode tried


def test_a_500_that_names_no_structured_field_is_still_retried(tmp_path: Path) -> None:
    from tests.fake_openai import Fault

    replies: list[Fault | None] = [Fault("500"), Fault("500")]
    with FakeOpenAIServer(seed=3, replies=lambda body: replies.pop(0) if replies else None) as server:
        results, client = asyncio.run(ask(settings(server), tmp_path))
    assert [kind(b) for b in server.requests] == ["json_schema"] * 3 and client.mode is StructuredMode.JSON_SCHEMA


def test_the_mode_found_is_kept_by_the_run_not_the_process(tmp_path: Path) -> None:
    with FakeOpenAIServer(seed=3, structured=("json_object",)) as server:
        asyncio.run(ask(settings(server), tmp_path / "a"))
        asyncio.run(ask(settings(server), tmp_path / "b"))  # a second run probes again
    assert [kind(b) for b in server.requests] == ["json_schema", "json_object"] * 2


def test_autolabel_run_takes_structured_mode_and_a_loopback_server_costs_nothing(tmp_path: Path) -> None:
    with FakeOpenAIServer(seed=3, structured=("json_object",)) as server:
        data = write_jsonl(tmp_path / "d.jsonl", [dialogue("d1", 2)])
        result = CliRunner().invoke(app, ["run", str(data), "--model", "openai:fake-model", "--base-url",
                                          server.base_url, "--db", str(tmp_path / "r.db"), "--no-critique",
                                          "--structured-mode", "json_object"], env={"AUTOLABEL_FEW_SHOT": "0"})
    assert result.exit_code == 0, result.output
    assert {kind(b) for b in server.requests} == {"json_object"}
    assert "no price known" not in result.output and "cost n/a" not in result.output
    assert "on this machine" in result.output


def test_prices_of_loopback_and_remote_endpoints_without_known_prices() -> None:
    local = price(Settings(model="openai:my-finetune", base_url="http://127.0.0.1:8080/v1"))
    assert local.known and local.cost(1000, 1000) == 0.0 and "on this machine" in local.source
    remote = price(Settings(model="openai:my-finetune", base_url="https://llm.example.org/v1"))
    assert not remote.known and "no price known" in remote.source
    known = price(Settings(model="openai:gpt-4o-mini"))
    assert known.known and (known.cost(1_000_000, 0) or 0) > 0


# -- llama-cpp-python's own OpenAI server ----------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m llama_cpp.server`` with the SmolLM2 GGUF of the [local] extra, on a free loopback port."""
    pytest.importorskip("llama_cpp", reason="needs the [local] extra")
    from autolabel.llm.local import model_path

    gguf = model_path("smollm2-135m", Settings(model_dir=tmp_path_factory.mktemp("models")))
    port = _free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host",
                                 "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_threads", "2",
                                 "--verbose", "False"], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        base = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited ({proc.returncode}): {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{base}/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not start in 120 s: {log.read_text()[-2000:]}")
            time.sleep(0.25)
        yield base
        assert proc.poll() is None, f"llama_cpp.server died ({proc.returncode}): {log.read_text()[-2000:]}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_llama_cpp_server_refuses_json_schema_and_auto_labels_with_json_object(llama_server: str,
                                                                             tmp_path: Path) -> None:
    s = Settings(model="openai:smollm2", base_url=llama_server, cache=False, max_tokens=200, max_reasks=2,
                 request_timeout=120)
    results, client = asyncio.run(ask(s, tmp_path, 2))
    assert client.mode is StructuredMode.JSON_OBJECT  # json_schema refused: HTTP 500 naming response_format
    for r in results:  # llama.cpp's grammar holds the answer to the schema
        assert set(r.answer) == set(SCHEMA["properties"]) and r.answer["emotion"]


def test_autolabel_run_against_llama_cpp_server(llama_server: str, tmp_path: Path) -> None:
    """The issue's repro: every call was refused with HTTP 500 and the run stopped with exit 5. One turn (a label
    call and the session call): each takes minutes of grammar-constrained sampling on 2 busy cores."""
    data = write_jsonl(tmp_path / "d.jsonl", [dialogue("d1", 1)])
    result = CliRunner().invoke(app, ["run", str(data), "--model", "openai:smollm2", "--base-url", llama_server,
                                      "--db", str(tmp_path / "r.db"), "--no-critique", "--concurrency", "1"],
                                env={"AUTOLABEL_FEW_SHOT": "0", "AUTOLABEL_MAX_TOKENS": "200",
                                     # grammar-constrained sampling over a 49k vocabulary on 2 busy cores: minutes
                                     "AUTOLABEL_REQUEST_TIMEOUT": "900"})
    assert result.exit_code == 0, result.output
    assert "kept failing" not in result.output and "no price known" not in result.output
