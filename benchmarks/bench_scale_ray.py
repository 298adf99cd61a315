"""Scale-out on Ray: one run over 1, 2 and 4 Ray labeler workers (processes of one local Ray instance) against the
simulated endpoint with a cap on requests in flight (HTTP 429 over it), as ``bench_scale.py`` measures the job-queue
workers: turns/s, speed-up over one worker, efficiency, and the 429s the endpoint sent.

    python benchmarks/bench_scale_ray.py                       # 1,2,4 workers, 30 dialogues, 1 s per call, cap 12
    python benchmarks/bench_scale_ray.py --workers 1,2 --dialogues 12

Each worker count is its own run (its own input name, so no answer comes from another run's cache) on a fresh
PostgreSQL database; ``--concurrency`` is the whole run's calls in flight (default 4 per worker, as bench_scale's
workers), held by the run's one limiter, whose back-off on 429 is cluster-wide. Writes
``benchmarks/results/scale_ray.json``. The machine is shared: note its load (``load_average``) beside any number.
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
from tests.pg import cluster  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "scale_ray.json"


def bench(counts: list[int], n_dialogues: int, latency: float, limit: int, per_worker: int, cpus: int,
          tmp: Path) -> list[dict[str, Any]]:
    pg = cluster()
    dialogues = [dialogue(f"d{i:04d}", 5 + i % 3) for i in range(n_dialogues)]
    n_turns = sum(len(d.turns) for d in dialogues)
    rows = []
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        for n in counts:
            input = write_jsonl(tmp / f"ray-{n}.jsonl", dialogues)
            db = pg.database()
            with FakeOpenAIServer(latency=latency, max_concurrency=limit, seed=n) as srv:
                annotator = RayAnnotator("psy-insight", model="openai:bench", base_url=srv.base_url, db=db,
                                         workers=n, concurrency=per_worker * n, cpus_per_worker=cpus / max(counts),
                                         max_retries=10_000, retry_deadline=600)
                started = time.perf_counter()
                summary = annotator.run(input)
                seconds = time.perf_counter() - started
                stats = dict(srv.stats)
            assert summary.turns == n_turns, summary
            rows.append({"workers": n, "concurrency": per_worker * n, "dialogues": n_dialogues, "turns": n_turns,
                         "calls": stats.get("ok", 0), "rate_limited": stats.get("rate_limited", 0),
                         "seconds": round(seconds, 2), "turns_per_s": round(n_turns / seconds, 2),
                         "calls_per_s": round(stats.get("ok", 0) / seconds, 2),
                         "load_average": [round(x, 1) for x in os.getloadavg()]})
            print(f"  {n} Ray worker(s): {seconds:.1f} s, {n_turns / seconds:.2f} turns/s, "
                  f"{stats.get('rate_limited', 0)} 429s", flush=True)
    finally:
        ray.shutdown()
    base = rows[0]["turns_per_s"] / rows[0]["workers"]
    for r in rows:
        r["speedup"] = round(r["turns_per_s"] / rows[0]["turns_per_s"], 2)
        r["efficiency"] = round(r["turns_per_s"] / (base * r["workers"]), 2)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| Ray workers | calls in flight (run) | seconds | turns/s | calls/s | speed-up | efficiency | 429s |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['workers']} | {r['concurrency']} | {r['seconds']:.1f} | {r['turns_per_s']:.2f} |"
              f" {r['calls_per_s']:.2f} | {r['speedup']:.2f} | {r['efficiency']:.2f} | {r['rate_limited']} |"
              for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--dialogues", type=int, default=30)
    ap.add_argument("--latency", type=float, default=1.0, help="seconds per call at the simulated endpoint")
    ap.add_argument("--endpoint-limit", type=int, default=12, help="requests in flight before HTTP 429")
    ap.add_argument("--per-worker", type=int, default=4, help="the run's --concurrency is this times the workers")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    counts = [int(x) for x in args.workers.split(",")]
    with TemporaryDirectory() as tmp:
        rows = bench(counts, args.dialogues, args.latency, args.endpoint_limit, args.per_worker, args.cpus,
                     Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"ray_workers": rows, "cpus": os.cpu_count(),
                                    "note": "shared machine: see load_average"}, indent=2) + "\n")
    print(table(rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
