"""Orchestration overhead: autolabel's full graph against the raw ``openai`` client sending the same requests.

For each input size, a first pass runs autolabel against a recording endpoint (no latency) and keeps every chat
request body it sent. Then, per concurrency, against the simulated endpoint at ``--latency-ms`` (a separate
process on 127.0.0.1, so its CPU is not counted):

- **autolabel**: ``Annotator("psy-insight", critique on, cache off, fresh database).arun(input)`` — reader,
  LangGraph graph with its SQLite checkpointer, instructor, tenacity, validation, scoring, routing, the store;
- **baseline**: the recorded bodies replayed with ``openai.AsyncOpenAI`` (same connection limits, no retries) under
  an ``asyncio.Semaphore(concurrency)``: the same requests, with nothing around them — ``chat.completions.create``,
  what a script would call;
- **raw post** (orientation): the same replay through the same client's ``post()`` with the body as JSON bytes and
  the reply parsed by ``ChatCompletion.model_validate_json`` — the transport autolabel's backend uses, with
  nothing around it. autolabel / raw post is the cost of the graph, instructor, validation and the store alone.

Both run in this process, one after the other; wall time by ``time.perf_counter()``, client CPU by
``time.process_time()`` (every thread of this process, so store writes in worker threads count).
Reported: calls per second of each, the throughput ratio (autolabel / baseline), and CPU milliseconds per LLM call
(the CPU ratio is autolabel / baseline; autolabel / raw post is reported beside it).

Usage::

    python benchmarks/bench_overhead.py [--turns 2000] [--turns-c1 200] [--concurrency 1,8,64] [--latency-ms 200]
                                        [--turns-per-call 1]

Concurrency 1 is serial (200 ms per call), so it labels ``--turns-c1`` turns instead of ``--turns``.
Results go to ``benchmarks/results/overhead.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import openai
from _common import Endpoint, table, write_jsonl, write_result
from openai.types.chat import ChatCompletion

from autolabel.annotator import Annotator

TASK = "psy-insight"
MODEL = "openai:bench-model"


TURNS_PER_CALL = 1  # --turns-per-call: the mode both passes run in


def annotator(url: str, db: Path, concurrency: int, critique: bool) -> Annotator:
    return Annotator(TASK, model=MODEL, base_url=url, db=db, cache=False, concurrency=concurrency,
                     critique=critique, turns_per_call=TURNS_PER_CALL)


def record_requests(path: Path, workdir: Path, critique: bool) -> list[dict[str, Any]]:
    """Every chat request body autolabel sends for ``path`` (one run against a recording endpoint)."""
    rec = workdir / f"{path.stem}.requests.jsonl"
    rec.unlink(missing_ok=True)
    with Endpoint(record=rec) as ep:
        summary = annotator(ep.base_url, workdir / f"{path.stem}.record.db", 64, critique).run(path)
    bodies = [json.loads(line) for line in rec.read_text(encoding="utf-8").splitlines()]
    if summary.failed or len(bodies) != summary.calls:
        raise SystemExit(f"recording pass: {summary.failed} failed turns, {len(bodies)} bodies, {summary.calls} calls")
    return bodies


def run_autolabel(path: Path, url: str, db: Path, concurrency: int, critique: bool) -> dict[str, Any]:
    gc.unfreeze()  # autolabel manages its own heap: no help from the harness
    ann = annotator(url, db, concurrency, critique)
    cpu, wall = time.process_time(), time.perf_counter()
    summary = ann.run(path)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if summary.failed:
        raise SystemExit(f"autolabel: {summary.failed} failed turns")
    return {"calls": summary.calls, "turns": summary.turns, "seconds": wall, "cpu_seconds": cpu}


async def _replay(bodies: list[dict[str, Any]], url: str, concurrency: int, post: bool = False) -> None:
    client = openai.AsyncOpenAI(
        api_key="not-needed", base_url=url, max_retries=0, timeout=httpx.Timeout(60.0, connect=10.0),
        http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency * 2,
                                                          max_keepalive_connections=concurrency * 2)))
    sem = asyncio.Semaphore(concurrency)

    async def one(body: dict[str, Any]) -> None:
        async with sem:
            await client.chat.completions.create(**body)

    async def one_post(body: dict[str, Any]) -> None:
        async with sem:
            content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
            raw = await client.post("/chat/completions", cast_to=bytes, content=content,
                                    options={"security": {"bearer_auth": True}})
            ChatCompletion.model_validate_json(raw)

    try:
        await asyncio.gather(*((one_post if post else one)(b) for b in bodies))
    finally:
        await client.close()


def run_baseline(bodies: list[dict[str, Any]], url: str, concurrency: int, post: bool = False) -> dict[str, Any]:
    # This process also imported autolabel (scikit-learn, LangGraph...): ~290k objects that Python's cyclic GC would
    # scan again and again, where a process with only ``openai`` holds ~125k. Frozen, they cost the baseline nothing,
    # so the baseline is at least as fast as the raw client in a process of its own.
    gc.collect()
    gc.freeze()
    cpu, wall = time.process_time(), time.perf_counter()
    asyncio.run(_replay(bodies, url, concurrency, post))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    gc.unfreeze()
    return {"calls": len(bodies), "seconds": wall, "cpu_seconds": cpu}


HEADERS = ["concurrency", "turns", "calls", "raw calls/s", "autolabel calls/s", "ratio (autolabel/raw)",
           "raw CPU ms/call", "autolabel CPU ms/call", "CPU ratio", "raw post CPU ms/call",
           "CPU ratio to raw post", "autolabel CPU ms/turn"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--turns", type=int, default=2000)
    p.add_argument("--turns-c1", type=int, default=200, help="turns at concurrency 1 (serial: 0.4 s per turn)")
    p.add_argument("--per-dialogue", type=int, default=20, help="turns per generated dialogue")
    p.add_argument("--concurrency", default="1,8,64")
    p.add_argument("--latency-ms", type=float, default=200.0)
    p.add_argument("--no-critique", action="store_true", help="one call per turn instead of two")
    p.add_argument("--repeat", type=int, default=1, help="runs per configuration; the fastest is kept")
    p.add_argument("--turns-per-call", type=int, default=1, help="autolabel's windowed mode (the baseline replays "
                   "the requests of that mode)")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    global TURNS_PER_CALL
    TURNS_PER_CALL = a.turns_per_call
    logging.basicConfig(level=logging.ERROR)
    critique = not a.no_critique
    levels = [int(c) for c in a.concurrency.split(",")]
    rows, results = [], []
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        work = Path(tmp)
        inputs: dict[int, tuple[Path, list[dict[str, Any]]]] = {}
        for c in levels:
            n = a.turns_c1 if c == 1 else a.turns
            if n not in inputs:
                path = write_jsonl(work / f"turns{n}.jsonl", n, a.per_dialogue)
                inputs[n] = (path, record_requests(path, work, critique))  # also warms up imports and caches
        with Endpoint(latency_ms=a.latency_ms) as ep:
            for c in levels:
                n = a.turns_c1 if c == 1 else a.turns
                path, bodies = inputs[n]
                best: dict[str, dict[str, Any]] = {}
                for r in range(a.repeat):
                    base = run_baseline(bodies, ep.base_url, c)
                    post = run_baseline(bodies, ep.base_url, c, post=True)
                    auto = run_autolabel(path, ep.base_url, work / f"c{c}-{r}.db", c, critique)
                    for name, res in (("baseline", base), ("raw_post", post), ("autolabel", auto)):
                        if name not in best or res["seconds"] < best[name]["seconds"]:
                            best[name] = res
                base, post, auto = best["baseline"], best["raw_post"], best["autolabel"]
                if auto["calls"] != base["calls"]:
                    raise SystemExit(f"autolabel made {auto['calls']} calls, the baseline {base['calls']}")
                res = {"concurrency": c, "turns": n, "calls": base["calls"], "latency_ms": a.latency_ms,
                       "baseline": base, "raw_post": post, "autolabel": auto,
                       "baseline_calls_per_s": base["calls"] / base["seconds"],
                       "autolabel_calls_per_s": auto["calls"] / auto["seconds"],
                       "throughput_ratio": base["seconds"] / auto["seconds"],
                       "baseline_cpu_ms_per_call": 1000 * base["cpu_seconds"] / base["calls"],
                       "raw_post_cpu_ms_per_call": 1000 * post["cpu_seconds"] / post["calls"],
                       "autolabel_cpu_ms_per_call": 1000 * auto["cpu_seconds"] / auto["calls"],
                       "baseline_cpu_ms_per_turn": 1000 * base["cpu_seconds"] / n,
                       "autolabel_cpu_ms_per_turn": 1000 * auto["cpu_seconds"] / n}
                res["cpu_ratio"] = res["autolabel_cpu_ms_per_call"] / res["baseline_cpu_ms_per_call"]
                res["cpu_ratio_raw_post"] = res["autolabel_cpu_ms_per_call"] / res["raw_post_cpu_ms_per_call"]
                results.append(res)
                rows.append([c, n, res["calls"], res["baseline_calls_per_s"], res["autolabel_calls_per_s"],
                             res["throughput_ratio"], res["baseline_cpu_ms_per_call"],
                             res["autolabel_cpu_ms_per_call"], res["cpu_ratio"], res["raw_post_cpu_ms_per_call"],
                             res["cpu_ratio_raw_post"], res["autolabel_cpu_ms_per_turn"]])
                print(table(HEADERS, rows[-1:]), flush=True)
    print()
    print(f"Overhead at {a.latency_ms:g} ms simulated latency, critique {'on' if critique else 'off'}, "
          f"{a.turns_per_call} turn(s) per call")
    print(table(HEADERS, rows))
    out = write_result("overhead", {"latency_ms": a.latency_ms, "critique": critique, "per_dialogue": a.per_dialogue,
                                    "turns_per_call": a.turns_per_call, "results": results}, a.out)
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
