"""Client CPU per LLM call: ``LLMClient.structured`` against the raw ``openai`` client sending the same requests.

The graph is left out: this isolates what ``autolabel/llm/client.py`` and ``autolabel/llm/structured.py`` add to a call
(instructor's re-ask loop, the cache, tenacity, budget admission, the call log, validation of the answer).

Requests are psy-insight label calls: the task's system prompt and output schema for the supporter role, and one
generated turn per call (every call distinct, so a fresh cache misses). A first pass with ``LLMClient`` (not timed,
also the warm-up) records each request's keyword arguments as the backend gets them. Then, per concurrency, against
the simulated endpoint (``benchmarks/_server.py``, its own process, so its CPU is not counted):

- **raw**: the recorded requests replayed with ``openai.AsyncOpenAI`` (no retries) under an ``asyncio.Semaphore``;
- **cache off**: ``LLMClient.structured`` for every turn, ``cache=False``;
- **cache miss**: the same with ``cache=True`` on a fresh SQLite store (a lookup and a write per call);
- **cache hit**: the same again on that store: every answer comes from the cache, no request is sent.

Client CPU by ``time.process_time()`` (every thread of this process: store work in worker threads counts), with
the heap frozen before each arm (``gc.freeze``), the same for every arm. Each configuration runs ``--repeat``
times; the least CPU is kept.

Usage::

    python benchmarks/bench_client.py [--calls 300] [--concurrency 1,8] [--latency-ms 0] [--repeat 3]

Results go to ``benchmarks/results/client.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import openai
from _common import SEEKER, SUPPORTER, Endpoint, table, write_result
from autolabel.graphs.annotate import prompts
from openai.types.chat import ChatCompletion

from autolabel.llm.client import CallTrace, LLMClient, OpenAIBackend
from autolabel.persistence.store import Store
from autolabel.settings import Settings
from autolabel.tasks import load_task

TASK = "psy-insight"
ROLE = "supporter"
MODEL = "openai:bench-model"


def label_requests(n: int, seed: int = 0) -> tuple[list[list[dict[str, str]]], dict[str, Any]]:
    """``n`` distinct label prompts (system and user message) for the task's supporter turns, and their schema."""
    task = load_task(TASK)
    fields = task.fields_for(ROLE)
    assert fields is not None
    system = prompts.label_system(task, fields, "en")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        context = [f"[{j}] {'Seeker' if j % 2 else 'Supporter'}: {rng.choice(SEEKER if j % 2 else SUPPORTER)}"
                   for j in range(4)]
        user = ("<context>\n" + "\n".join(context) + "\n</context>\n"
                f'<target index="4" speaker="Supporter" role="{ROLE}">\n{rng.choice(SUPPORTER)} (call {i})\n</target>'
                "\nLabel the target turn.")
        out.append([{"role": "system", "content": system}, {"role": "user", "content": user}])
    return out, task.output_schema(fields)


def settings(url: str, db: Path, concurrency: int, cache: bool) -> Settings:
    return Settings(model=MODEL, base_url=url, db=str(db), concurrency=concurrency, cache=cache)


class _Recording:
    """A backend that keeps the keyword arguments of every request it forwards (the recording pass only)."""

    def __init__(self, inner: OpenAIBackend) -> None:
        self.inner = inner
        self.model = inner.model
        self.supports_logprobs = inner.supports_logprobs
        self.sent: list[dict[str, Any]] = []

    async def complete(self, kwargs: dict[str, Any]) -> ChatCompletion:
        self.sent.append({"model": self.model, **kwargs})
        return await self.inner.complete(kwargs)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _gather(n: int, concurrency: int, one: Callable[[int], Awaitable[Any]]) -> None:
    sem = asyncio.Semaphore(concurrency)

    async def guarded(i: int) -> None:
        async with sem:
            await one(i)

    await asyncio.gather(*(guarded(i) for i in range(n)))


async def _run_client(url: str, db: Path, concurrency: int, cache: bool, messages: list[list[dict[str, str]]],
                      schema: dict[str, Any], record: list[dict[str, Any]] | None = None) -> dict[str, float]:
    s = settings(url, db, concurrency, cache)
    store = Store.open(db)
    backend: Any = OpenAIBackend(s)
    if record is not None:
        backend = _Recording(backend)
    llm = LLMClient(s, backend, store, run_id="bench")

    async def one(i: int) -> None:
        trace = CallTrace(purpose="label", dialogue_id=f"d{i}", turn_index=4)
        await llm.structured(messages[i], schema, name=f"label_{ROLE}", trace=trace)

    try:
        with _Clock() as clock:
            await _gather(len(messages), concurrency, one)
            await llm.flush()
    finally:
        await backend.aclose()
        store.close()
    if record is not None:
        record.extend(backend.sent)
    return clock.result(llm.totals.calls)


async def _run_raw(url: str, concurrency: int, bodies: list[dict[str, Any]]) -> dict[str, float]:
    per_pool = concurrency * 2
    client = openai.AsyncOpenAI(
        api_key="not-needed", base_url=url, max_retries=0, timeout=httpx.Timeout(60.0, connect=10.0),  # type: ignore[arg-type, unused-ignore]
        http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=per_pool,  # type: ignore[arg-type, unused-ignore]
                                                          max_keepalive_connections=per_pool)))

    async def one(i: int) -> None:
        await client.chat.completions.create(**bodies[i])

    try:
        with _Clock() as clock:
            await _gather(len(bodies), concurrency, one)
    finally:
        await client.close()
    return clock.result(len(bodies))


class _Clock:
    """CPU and wall time of the calls only: opening and closing clients and stores is not per-call work."""

    def __enter__(self) -> _Clock:
        self.cpu, self.wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def result(self, calls: int) -> dict[str, float]:
        return {"calls": calls, "seconds": self.wall, "cpu_seconds": self.cpu}


def _timed(run: Callable[[], Awaitable[dict[str, float]]]) -> dict[str, float]:
    gc.collect()
    gc.freeze()  # the same for every arm: the imports' objects are not scanned again and again
    try:
        return asyncio.run(run())  # type: ignore[arg-type]
    finally:
        gc.unfreeze()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--concurrency", default="1,8")
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--repeat", type=int, default=3, help="runs per configuration; the least CPU is kept")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    levels = [int(c) for c in a.concurrency.split(",")]
    messages, schema = label_requests(a.calls)
    arms = ["raw", "cache off", "cache miss", "cache hit"]
    results, rows = [], []
    with tempfile.TemporaryDirectory(prefix="bench-client-") as tmp, Endpoint(latency_ms=a.latency_ms) as ep:
        work = Path(tmp)
        bodies: list[dict[str, Any]] = []
        asyncio.run(_run_client(ep.base_url, work / "record.db", 8, False, messages, schema, record=bodies))
        if len(bodies) != a.calls:
            raise SystemExit(f"recording pass: {len(bodies)} requests for {a.calls} calls (re-asks or retries)")
        for c in levels:
            best: dict[str, dict[str, float]] = {}
            for r in range(a.repeat):
                db, off = work / f"c{c}-{r}.db", work / f"off-{c}-{r}.db"
                runs = {
                    "raw": partial(_run_raw, ep.base_url, c, bodies),
                    "cache off": partial(_run_client, ep.base_url, off, c, False, messages, schema),
                    "cache miss": partial(_run_client, ep.base_url, db, c, True, messages, schema),
                    "cache hit": partial(_run_client, ep.base_url, db, c, True, messages, schema),
                }
                for arm in arms:
                    res = _timed(runs[arm])
                    if arm == "cache hit":
                        res["calls"] = a.calls  # calls answered; none reached the endpoint
                    if arm not in best or res["cpu_seconds"] < best[arm]["cpu_seconds"]:
                        best[arm] = res
            raw_ms = 1000 * best["raw"]["cpu_seconds"] / best["raw"]["calls"]
            res_c: dict[str, Any] = {"concurrency": c, "calls": a.calls, "latency_ms": a.latency_ms}
            row: list[Any] = [c, a.calls]
            for arm in arms:
                ms = 1000 * best[arm]["cpu_seconds"] / best[arm]["calls"]
                res_c[arm] = {**best[arm], "cpu_ms_per_call": ms, "cpu_ratio": ms / raw_ms}
                row += [ms] if arm == "raw" else [ms, ms / raw_ms]
            results.append(res_c)
            rows.append(row)
    print(f"Client CPU per call at {a.latency_ms:g} ms simulated latency ({TASK} {ROLE} labels, best of {a.repeat})")
    print(table(["concurrency", "calls", "raw ms", "cache off ms", "× raw", "cache miss ms", "× raw",
                 "cache hit ms", "× raw"], rows))
    out = write_result("client", {"latency_ms": a.latency_ms, "repeat": a.repeat, "results": results}, a.out)
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
