"""Rate limits: the simulated endpoint answers 429 with Retry-After above R requests per minute.

The endpoint (a separate process on 127.0.0.1) admits requests through a token bucket refilled at R per minute;
the bucket starts empty, so R is the limit from the first second (the fake server's default full bucket would let
the first minute burst to 2 R). Every request above the rate gets a 429 whose Retry-After says when the next one
would be admitted. autolabel runs the full graph (critique on) at a concurrency whose demand is several times R.

Reported: failed turns (the goal is none), the achieved rate of answered calls — over the run's wall time and in
steady state (first to last answered call) — against R, and how many 429s the run drew per answered call.

Usage::

    python benchmarks/bench_ratelimit.py [--rate 600] [--seconds 120] [--concurrency 16] [--latency-ms 200]

Results go to ``benchmarks/results/ratelimit.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import logging
import sqlite3
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from _common import Endpoint, table, write_jsonl, write_result

from autolabel.annotator import Annotator
from autolabel.errors import LLMError

TASK = "psy-insight"
CALLS_PER_TURN = 2 + 1 / 20  # label + critique, a session call per 20-turn dialogue


def measure(rate: float, seconds: float, concurrency: int, latency_ms: float, per_dialogue: int,
            work: Path) -> dict[str, Any]:
    turns = max(per_dialogue, round(rate * seconds / 60 / CALLS_PER_TURN / per_dialogue) * per_dialogue)
    path = write_jsonl(work / "in.jsonl", turns, per_dialogue)
    db, stats = work / "runs.db", work / "server-stats.json"
    with Endpoint(latency_ms=latency_ms, rate_limit_per_min=rate, bucket_start=0.0, stats=stats) as ep:
        ann = Annotator(TASK, model="openai:bench-model", base_url=ep.base_url, db=db, cache=False,
                        concurrency=concurrency)
        started = time.perf_counter()
        error = None
        try:
            ann.run(path)
        except LLMError as e:  # the run stopped (resumable); what it finished is in the store
            error = str(e)
        wall = time.perf_counter() - started
    server = json.loads(stats.read_text())
    with sqlite3.connect(db) as conn:
        outcomes = dict(conn.execute("SELECT outcome, COUNT(*) FROM llm_calls GROUP BY outcome").fetchall())
        done = dict(conn.execute("SELECT status, COUNT(*) FROM turns GROUP BY status").fetchall())
        first, last = conn.execute("SELECT MIN(created_at), MAX(created_at) FROM llm_calls WHERE outcome='ok'"
                                   ).fetchone()
    ok = outcomes.get("ok", 0)
    span = (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()
    return {
        "rate_limit_per_min": rate, "concurrency": concurrency, "latency_ms": latency_ms, "input_turns": turns,
        "turns": sum(done.values()), "failed_turns": done.get("failed", 0) + turns - sum(done.values()),
        "error": error,
        "seconds": wall, "answered_calls": ok, "rate_limited_calls": outcomes.get("error:RateLimitError", 0),
        "call_outcomes": outcomes, "server": server,
        "achieved_per_min": 60 * ok / wall,
        "steady_per_min": 60 * (ok - 1) / span if span > 0 else None,
        "demand_per_min": 60 * concurrency / (latency_ms / 1000) if latency_ms else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=600.0, help="R: requests per minute the endpoint admits")
    p.add_argument("--seconds", type=float, default=120.0, help="planned length of the run at rate R")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--latency-ms", type=float, default=200.0)
    p.add_argument("--per-dialogue", type=int, default=20)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="bench-ratelimit-") as tmp:
        r = measure(a.rate, a.seconds, a.concurrency, a.latency_ms, a.per_dialogue, Path(tmp))
    print(f"Rate limit R = {a.rate:g} requests/min (429 + Retry-After above it), {a.latency_ms:g} ms latency")
    if r["error"]:
        print(f"the run stopped: {r['error']}")
    print(table(["concurrency", "demand/min", "turns", "failed turns", "seconds", "answered calls",
                 "achieved/min (wall)", "steady/min", "vs R", "429s per answered call"],
                [[r["concurrency"], r["demand_per_min"], r["turns"], r["failed_turns"], r["seconds"],
                  r["answered_calls"], r["achieved_per_min"], r["steady_per_min"],
                  f"{100 * (r['steady_per_min'] or 0) / a.rate:.1f}%",
                  r["rate_limited_calls"] / max(1, r["answered_calls"])]]))
    out = write_result("ratelimit", r, a.out)
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
