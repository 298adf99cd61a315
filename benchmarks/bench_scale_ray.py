"""Scale-out on Ray: one run over 1, 2 and 4 Ray labeler workers (processes of one local Ray instance).

Two modes, each printing a markdown table and writing its part of ``benchmarks/results/scale_ray.json`` (the other
part is kept as it was):

    python benchmarks/bench_scale_ray.py           # the simulated endpoint: 1,2,4 workers, 30 dialogues, 1 s a call
    python benchmarks/bench_scale_ray.py --local   # the embedded model (local:smollm2-135m): 1 and 2 workers

**Endpoint** (default). The scripted OpenAI-compatible server answers each call after ``--latency`` seconds and
refuses more than ``--endpoint-limit`` requests in flight with HTTP 429, as ``bench_scale.py`` measures the
job-queue workers; ``--concurrency`` is the whole run's calls in flight (``--per-worker`` × workers), held by the
run's one limiter, whose back-off on 429 is cluster-wide. Store and checkpoints on a throwaway PostgreSQL.

**Local** (``--local``). The embedded model on every worker, one model per worker process, ``--threads`` CPU
threads each (default 1: a worker stands for one CPU node), ``--per-worker`` dialogues in flight per worker
(default 1), on ``--dialogues`` short dialogues (default 4 of 3 turns), SQLite store. Turns per minute.

Each worker count is its own run (its own input name: no answer comes from another run's cache). Reported apart:
``ready`` (seconds from the run's start until every worker's run was open: Ray actors started, autolabel and
LangGraph imported, client, store and graph opened) and ``labeling`` (seconds from then to the last dialogue); the
rates, speed-up and efficiency are on labeling time. The machine may be shared: ``load_average`` is beside each
number.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import ray  # noqa: E402

from autolabel.scale.ray import RayAnnotator  # noqa: E402
from tests.conftest import dialogue, write_jsonl  # noqa: E402
from tests.fake_openai import FakeOpenAIServer  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "scale_ray.json"
LOCAL_MODEL = "local:smollm2-135m"


def measure(annotator: RayAnnotator, input: Path, n: int, n_turns: int) -> dict[str, Any]:
    started = time.perf_counter()
    summary = annotator.run(input)
    seconds = time.perf_counter() - started
    assert summary.turns == n_turns, summary
    t = annotator.timings
    labeling = t["labeling"]
    return {"workers": n, "turns": n_turns, "seconds": round(seconds, 2), "connect_s": t["connect"],
            "ready_s": t["ready"], "labeling_s": labeling, "turns_per_s": round(n_turns / labeling, 3),
            "turns_per_min": round(60 * n_turns / labeling, 2), "calls": summary.calls,
            "load_average": [round(x, 1) for x in os.getloadavg()]}


def speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Speed-up and efficiency against the first row, on labeling time (unrounded rates)."""
    rate = [r["turns"] / r["labeling_s"] for r in rows]
    for r, x in zip(rows, rate, strict=True):
        r["speedup"] = round(x / rate[0], 2)
        r["efficiency"] = round(x / (rate[0] / rows[0]["workers"] * r["workers"]), 2)
    return rows


def bench_endpoint(counts: list[int], n_dialogues: int, latency: float, limit: int, per_worker: int, cpus: int,
                   tmp: Path) -> list[dict[str, Any]]:
    from tests.pg import cluster

    pg = cluster()
    dialogues = [dialogue(f"d{i:04d}", 5 + i % 3) for i in range(n_dialogues)]
    n_turns = sum(len(d.turns) for d in dialogues)
    rows = []
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        for n in counts:
            input = write_jsonl(tmp / f"ray-{n}.jsonl", dialogues)
            with FakeOpenAIServer(latency=latency, max_concurrency=limit, seed=n) as srv:
                annotator = RayAnnotator("psy-insight", model="openai:bench", base_url=srv.base_url,
                                         db=pg.database(), workers=n, concurrency=per_worker * n,
                                         cpus_per_worker=cpus / max(counts), max_retries=10_000, retry_deadline=600)
                row = measure(annotator, input, n, n_turns)
                stats = dict(srv.stats)
            row.update(concurrency=per_worker * n, dialogues=n_dialogues, rate_limited=stats.get("rate_limited", 0),
                       calls_per_s=round(stats.get("ok", 0) / row["labeling_s"], 2))
            rows.append(row)
            print(f"  {n} Ray worker(s): ready {row['ready_s']:.1f} s, labeling {row['labeling_s']:.1f} s, "
                  f"{row['turns_per_s']:.2f} turns/s, {row['rate_limited']} 429s", flush=True)
    finally:
        ray.shutdown()
    return speedups(rows)


def bench_local(counts: list[int], n_dialogues: int, turns: int, threads: int, per_worker: int, cpus: int,
                model: str, tmp: Path) -> list[dict[str, Any]]:
    dialogues = [dialogue(f"d{i:04d}", turns) for i in range(n_dialogues)]
    n_turns = sum(len(d.turns) for d in dialogues)
    rows = []
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        for n in counts:
            input = write_jsonl(tmp / f"local-{n}.jsonl", dialogues)
            annotator = RayAnnotator("psy-insight", model=model, db=tmp / f"local-{n}.db", workers=n,
                                     concurrency=per_worker * n, cpus_per_worker=cpus / max(counts),
                                     local_threads=threads)
            row = measure(annotator, input, n, n_turns)
            row.update(model=model, dialogues=n_dialogues, threads_per_worker=threads, concurrency=per_worker * n)
            rows.append(row)
            print(f"  {n} Ray worker(s): ready {row['ready_s']:.1f} s, labeling {row['labeling_s']:.1f} s, "
                  f"{row['turns_per_min']:.1f} turns/min", flush=True)
    finally:
        ray.shutdown()
    return speedups(rows)


def endpoint_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| Ray workers | calls in flight (run) | ready s | labeling s | turns/s | calls/s | speed-up | efficiency"
             " | 429s |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['workers']} | {r['concurrency']} | {r['ready_s']:.1f} | {r['labeling_s']:.1f} |"
              f" {r['turns_per_s']:.2f} | {r['calls_per_s']:.2f} | {r['speedup']:.2f} | {r['efficiency']:.2f} |"
              f" {r['rate_limited']} |" for r in rows]
    return "\n".join(lines)


def local_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| Ray workers | threads each | ready s | labeling s | turns | turns/min | speed-up | efficiency |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['workers']} | {r['threads_per_worker']} | {r['ready_s']:.1f} | {r['labeling_s']:.1f} |"
              f" {r['turns']} | {r['turns_per_min']:.1f} | {r['speedup']:.2f} | {r['efficiency']:.2f} |"
              for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--local", action="store_true", help="the embedded model instead of the simulated endpoint")
    ap.add_argument("--workers", help="worker counts (default 1,2,4; with --local 1,2)")
    ap.add_argument("--dialogues", type=int, help="dialogues (default 30; with --local 4)")
    ap.add_argument("--turns", type=int, default=3, help="--local: turns per dialogue")
    ap.add_argument("--latency", type=float, default=1.0, help="seconds per call at the simulated endpoint")
    ap.add_argument("--endpoint-limit", type=int, default=12, help="requests in flight before HTTP 429")
    ap.add_argument("--per-worker", type=int, help="the run's --concurrency is this times the workers "
                                                    "(default 4; with --local 1)")
    ap.add_argument("--threads", type=int, default=1, help="--local: CPU threads of each worker's model")
    ap.add_argument("--model", default=LOCAL_MODEL, help="--local: the embedded model")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    counts = [int(x) for x in (args.workers or ("1,2" if args.local else "1,2,4")).split(",")]
    with TemporaryDirectory() as tmp:
        if args.local:
            rows = bench_local(counts, args.dialogues or 4, args.turns, args.threads, args.per_worker or 1,
                               args.cpus, args.model, Path(tmp))
        else:
            rows = bench_endpoint(counts, args.dialogues or 30, args.latency, args.endpoint_limit,
                                  args.per_worker or 4, args.cpus, Path(tmp))
    data = json.loads(args.out.read_text()) if args.out.exists() else {}
    data.update({"ray_local" if args.local else "ray_workers": rows, "cpus": os.cpu_count(),
                 "note": "shared machine: see load_average; rates on labeling time (ready_s apart)"})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    print(local_table(rows) if args.local else endpoint_table(rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
