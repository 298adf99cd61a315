"""What is installed is what the project says: every dependency bounded below its next major version, the
installed versions are constraints.txt's (the file ``.ci/run`` and the README's install use), and the HTTP
clients autolabel builds on them — langchain-openai's embeddings and the chat backend, both on autolabel's own
``httpx`` clients — work over loopback HTTP with the ``openai`` that is installed (openai 3 is built on httpx2
and refused them: ``Invalid timeout ... got <class 'httpx.Timeout'>``)."""

from __future__ import annotations

import asyncio
import re
from importlib.metadata import PackageNotFoundError, distribution, version
from pathlib import Path

import numpy as np
import openai
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from autolabel.examples import OpenAIEmbedder
from autolabel.llm.client import CallTrace, LLMClient, OpenAIBackend
from autolabel.persistence.store import Store
from autolabel.settings import Settings
from autolabel.tasks import load_task
from tests.fake_openai import FakeOpenAIServer, embed_text

tomllib = pytest.importorskip("tomllib")  # Python 3.11+ (CI's)
REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PINS = {canonicalize_name(name): v for name, v in
        re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)$", (REPO / "constraints.txt").read_text(), re.M)}


def requirements() -> list[Requirement]:
    project = PYPROJECT["project"]
    specs = [*project["dependencies"], *(s for extra in project["optional-dependencies"].values() for s in extra)]
    return [Requirement(s) for s in specs]


def test_every_dependency_is_bounded_below_its_next_major_version() -> None:
    unbounded = [str(r) for r in requirements()
                 if not any(s.operator in ("<", "==", "~=") for s in r.specifier)]
    assert unbounded == []
    for r in requirements():  # the bound leaves the next major out, and the pinned version in
        assert r.specifier.contains(PINS[canonicalize_name(r.name)]), (str(r), PINS[canonicalize_name(r.name)])
    openai_spec = next(r.specifier for r in requirements() if r.name == "openai")
    assert not openai_spec.contains("3.0.0"), "openai 3 (httpx2) refuses autolabel's httpx clients"


def test_constraints_pin_every_dependency_and_their_dependencies() -> None:
    missing = [r.name for r in requirements() if canonicalize_name(r.name) not in PINS]
    assert missing == []
    # what openai, langchain-openai, langsmith and genai-prices need: both httpx generations, each pinned
    assert {"httpx", "httpx2", "httpcore", "langchain-core", "langsmith"} <= set(PINS)
    assert "-c constraints.txt" in (REPO / ".ci/run").read_text()  # CI installs what the README's command does


def test_the_installed_versions_are_the_pinned_ones() -> None:
    """CI tests what a user installs with the README's command (``pip install -c constraints.txt ...``)."""
    names = {canonicalize_name(r.name) for r in requirements()} | {"httpx", "httpx2", "httpcore", "langchain-core"}
    off = {}
    for name in sorted(names):
        try:
            installed = version(name)
        except PackageNotFoundError:
            continue  # an extra that this environment did not install
        if Version(installed) != Version(PINS[name]):
            off[name] = f"{installed} installed, {PINS[name]} pinned"
    assert off == {}, "reinstall with: pip install -c constraints.txt -e \".[local,postgres,dev]\""
    # the installed openai is built on httpx, the client library autolabel hands it
    assert any(Requirement(r).name == "httpx" for r in distribution("openai").requires or [])


def test_langchain_openai_embeddings_on_our_httpx_client_work_over_http(tmp_path: Path) -> None:
    texts = ["I can't sleep before my exams.", "我睡不着", "My parents are proud of me."]
    with FakeOpenAIServer(seed=1) as server:
        embedder = OpenAIEmbedder(Settings(model="openai:fake-model", base_url=server.base_url,
                                           embeddings="openai:fake-embed", embeddings_batch=2))
        try:
            vectors = embedder(texts)
        finally:
            embedder.close()
    assert [b["model"] for b in server.embedding_requests] == ["fake-embed", "fake-embed"]  # 2 + 1 texts
    expected = np.asarray([embed_text(t) for t in texts], dtype=np.float32)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(vectors, expected, atol=1e-6)


def test_the_chat_client_works_over_http(tmp_path: Path) -> None:
    task = load_task("psy-insight")
    fields = task.fields_for("seeker")
    assert fields is not None
    schema = task.output_schema(fields)

    async def call(base_url: str) -> tuple[dict[str, object], dict[str, object]]:
        s = Settings(model="openai:fake-model", base_url=base_url, cache=True)
        store = Store.open(tmp_path / "chat.db")
        client = LLMClient(s, OpenAIBackend(s), store, run_id="r1")
        try:
            messages = [{"role": "system", "content": "Label the turn."}, {"role": "user", "content": "Hi."}]
            first = await client.structured(messages, schema, name="label_seeker", trace=CallTrace(purpose="label"))
            again = await client.structured(messages, schema, name="label_seeker", trace=CallTrace(purpose="label"))
            await client.flush()
        finally:
            await client.backend.aclose()
            store.close()
        # and openai's own client, as a script would use it
        raw = openai.AsyncOpenAI(base_url=base_url, api_key="test", max_retries=0)
        reply = await raw.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "Hi"}])
        await raw.close()
        assert reply.choices[0].message.content
        return first.answer, again.answer

    with FakeOpenAIServer(seed=1) as server:
        first, again = asyncio.run(call(server.base_url))
    assert first == again and first["emotion"]
    assert len(server.requests) == 2  # the second structured call came from the cache
    assert server.requests[0]["response_format"]["type"] == "json_schema"
