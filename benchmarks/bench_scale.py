"""Scale-out on PostgreSQL: labeling throughput of 1, 2 and 4 worker processes, and review-queue latency.

Both parts run against a throwaway PostgreSQL cluster started by this script (``tests/pg.py``; Debian's
``postgresql`` package must be installed) and, for labeling, the scripted OpenAI-compatible server
(``tests/fake_openai.py``) with a fixed ``--latency`` per call and an endpoint limit of ``--endpoint-limit``
requests in flight (more get HTTP 429 with Retry-After, as a real provider's rate limit would).

1. **Workers.** ``--dialogues`` dialogues (5–7 turns) are enqueued (``autolabel.scale.jobs.enqueue``); N worker
   processes (``autolabel.scale.jobs.work``, ``--worker-concurrency`` calls in flight each) import autolabel first and
   then start together, so the timing is labeling, not Python start-up. Reported: wall time from the start signal
   to the last worker's exit, turns/s and calls/s, speed-up over one worker, 429s from the endpoint.
2. **Review queue.** ``--items`` review items are bulk-loaded; ``--reviewers`` processes (each its own
   ``ReviewQueue`` and connections, like reviewers behind separate web workers) each claim and submit
   ``--per-reviewer`` items; the latency of ``claim`` and of ``claim + submit`` is recorded per item. Twice: back
   to back (``closed``: the queue's capacity; with zero think time the latency is mostly waiting for a CPU) and
   ``paced`` (each reviewer pauses ``--think-ms`` between items — still far faster than a person). Reported:
   p50, p90, p99, max, and the throughput. Goal: p99 of claim + submit ≤ 50 ms.

Prints markdown tables and writes ``benchmarks/results/scale.json`` (``--out``; with ``--skip-workers`` or
``--skip-review`` that part of the file is kept as it was). Usage::

    PYTHONPATH=. python benchmarks/bench_scale.py [--workers 1,2,4] [--dialogues 30] [--latency 1.0]
        [--endpoint-limit 12] [--worker-concurrency 4] [--items 100000] [--reviewers 10] [--per-reviewer 300]
        [--think-ms 500] [--skip-workers] [--skip-review] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import text  # noqa: E402

from autolabel import load_task  # noqa: E402
from autolabel.persistence.store import Store  # noqa: E402
from autolabel.review.queue import ReviewQueue  # noqa: E402
from autolabel.scale.jobs import enqueue, work  # noqa: E402
from tests.conftest import dialogue, write_jsonl  # noqa: E402
from tests.fake_openai import FakeOpenAIServer  # noqa: E402
from tests.pg import cluster  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "scale.json"


# -- 1. workers -----------------------------------------------------------------------------------------------------

def _worker(db: str, base_url: str, concurrency: int, go: Any, out: Any) -> None:
    """One worker process: everything imported, then wait for the start signal, then work until the run is done.
    Over the endpoint's limit it gets 429s and backs off as told, for as long as it takes (``max_retries``)."""
    go.wait()
    try:
        result = work(db, base_url=base_url, concurrency=concurrency, lease_seconds=30, max_retries=10_000,
                      retry_deadline=600)
    except BaseException as e:  # reported by the parent
        out.put({"error": f"{type(e).__name__}: {e}"})
        raise
    out.put({"worker": result.worker, "dialogues": result.dialogues, "turns": result.turns,
             "calls": sum(r.calls for r in result.runs)})


def bench_workers(counts: list[int], n_dialogues: int, latency: float, limit: int, concurrency: int,
                  tmp: Path) -> list[dict[str, Any]]:
    pg = cluster()
    dialogues = [dialogue(f"d{i:04d}", 5 + i % 3) for i in range(n_dialogues)]
    n_turns = sum(len(d.turns) for d in dialogues)
    rows = []
    ctx = mp.get_context("fork")
    for n in counts:
        # each run its own input name (and so its own run and cache): no answer is reused across runs
        input = write_jsonl(tmp / f"workers-{n}.jsonl", dialogues)
        db = pg.database()
        with FakeOpenAIServer(latency=latency, max_concurrency=limit, seed=n) as srv:
            enqueue(input, db=db, task="psy-insight", model="openai:bench")
            go, out = ctx.Event(), ctx.Queue()
            procs = [ctx.Process(target=_worker, args=(db, srv.base_url, concurrency, go, out)) for _ in range(n)]
            for p in procs:
                p.start()
            time.sleep(1.0)
            started = time.perf_counter()
            go.set()
            done = [out.get(timeout=1800) for _ in procs]
            seconds = time.perf_counter() - started
            for p in procs:
                p.join()
            stats = dict(srv.stats)
        failed = [d["error"] for d in done if "error" in d]
        if failed:
            raise SystemExit(f"a worker failed: {failed[0]}")
        assert sum(d["turns"] for d in done) == n_turns, done
        rows.append({"workers": n, "worker_concurrency": concurrency, "dialogues": n_dialogues, "turns": n_turns,
                     "calls": stats.get("ok", 0), "rate_limited": stats.get("rate_limited", 0),
                     "seconds": round(seconds, 2), "turns_per_s": round(n_turns / seconds, 2),
                     "calls_per_s": round(stats.get("ok", 0) / seconds, 2),
                     "per_worker_dialogues": sorted(d["dialogues"] for d in done),
                     "load_average": [round(x, 1) for x in os.getloadavg()]})
        print(f"  {n} worker(s): {seconds:.1f} s, {n_turns / seconds:.2f} turns/s", flush=True)
    base = rows[0]["turns_per_s"] / rows[0]["workers"]
    for r in rows:
        r["speedup"] = round(r["turns_per_s"] / rows[0]["turns_per_s"], 2)
        r["efficiency"] = round(r["turns_per_s"] / (base * r["workers"]), 2)
    return rows


# -- 2. review queue ------------------------------------------------------------------------------------------------

def load_items(db: str, n: int, seed: int = 0) -> None:
    """``n`` flagged seeker turns as review items of one run, bulk-inserted (turns, final records, items)."""
    task = load_task("psy-insight")
    store = Store.open(db)
    run_id = "bench"
    store.start_run(run_id, task_name=task.name, task_version=task.version, task_hash=task.spec_hash,
                    task_json=task.model_dump_json(), model="openai:bench", params={}, params_hash="0", input=None)
    rng = random.Random(seed)
    t = "2026-01-01T00:00:00.000+00:00"
    chunk = 5000
    with store.engine.begin() as conn:
        for start in range(0, n, chunk):
            turns, items = [], []
            for k in range(start, min(n, start + chunk)):
                did, i = f"s{k // 10:06d}", k % 10
                conf = round(rng.random(), 4)
                proposal = {"kind": "turn", "run_id": run_id,
                            "task": {"name": task.name, "version": task.version, "hash": task.spec_hash},
                            "model": "openai:bench", "dialogue_id": did, "turn_index": i, "speaker": "Seeker",
                            "role": "seeker", "language": "en", "status": "flagged",
                            "labels": {"emotion": ["Anxiety"]}, "texts": {"observation": "worry about exams"},
                            "confidence": {"emotion": {"value": conf}}, "flags": ["low_confidence:emotion"],
                            "critique": None, "error": None, "raw_output": None}
                turns.append({"r": run_id, "d": did, "i": i, "x": f"I feel anxious about tomorrow ({did}/{i})."})
                items.append({"r": run_id, "d": did, "i": i, "p": conf, "j": json.dumps(proposal), "t": t})
            conn.execute(text("INSERT INTO turns (run_id, dialogue_id, turn_index, speaker, role, text, meta_json,"
                              " status) VALUES (:r, :d, :i, 'Seeker', 'seeker', :x, '{}', 'flagged')"), turns)
            conn.execute(text("INSERT INTO review_items (run_id, dialogue_id, kind, turn_index, priority,"
                              " reasons_json, proposal_json, status, version, required_reviews, created_at,"
                              " updated_at) VALUES (:r, :d, 'turn', :i, :p, '[\"low_confidence:emotion\"]', :j,"
                              " 'pending', 1, 1, :t, :t)"), items)
        conn.execute(text("ANALYZE"))
    store.close()


def _reviewer(db: str, name: str, per: int, think_ms: float, go: Any, out: Any) -> None:
    queue = ReviewQueue.open(db)
    queue.task("bench")  # warm: the task spec is read once per queue
    claim_ms, total_ms = [], []
    rng = random.Random(name)
    go.wait()
    try:
        for _ in range(per):
            if think_ms:
                time.sleep(rng.uniform(0.5, 1.5) * think_ms / 1000)
            t0 = time.perf_counter()
            item = queue.claim(name)
            t1 = time.perf_counter()
            if item is None:
                break
            queue.submit(item.id, name, item.version, {"emotion": ["Sadness"]})
            t2 = time.perf_counter()
            claim_ms.append((t1 - t0) * 1000)
            total_ms.append((t2 - t0) * 1000)
    except BaseException as e:  # reported by the parent
        out.put({"error": f"{type(e).__name__}: {e}"})
        raise
    queue.close()
    out.put({"claim": claim_ms, "total": total_ms})


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 2)


def bench_review(n_items: int, reviewers: int, per: int, think_ms: float) -> dict[str, Any]:
    db = cluster().database()
    t = time.perf_counter()
    load_items(db, n_items)
    load_s = time.perf_counter() - t
    ctx = mp.get_context("fork")
    go, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_reviewer, args=(db, f"r{i}", per, think_ms, go, out)) for i in range(reviewers)]
    for p in procs:
        p.start()
    time.sleep(2.0)
    started = time.perf_counter()
    go.set()
    parts = [out.get(timeout=1800) for _ in procs]
    seconds = time.perf_counter() - started
    if any("error" in p for p in parts):
        raise SystemExit(f"a reviewer failed: {next(p['error'] for p in parts if 'error' in p)}")
    for p in procs:
        p.join()
    claim = [x for p in parts for x in p["claim"]]
    total = [x for p in parts for x in p["total"]]
    with Store.open(db).engine.connect() as conn:
        reviewed = conn.execute(text("SELECT COUNT(*), COUNT(DISTINCT item_id) FROM reviews")).one()
    assert reviewed[0] == reviewed[1] == len(total), "every item reviewed once"
    return {"items": n_items, "reviewers": reviewers, "think_ms": think_ms, "reviewed": len(total),
            "load_seconds": round(load_s, 1), "load_average": [round(x, 1) for x in os.getloadavg()],
            "seconds": round(seconds, 2), "reviews_per_s": round(len(total) / seconds, 1),
            "claim_ms": {"p50": _pct(claim, 0.5), "p90": _pct(claim, 0.9), "p99": _pct(claim, 0.99),
                         "max": round(max(claim), 2), "mean": round(statistics.fmean(claim), 2)},
            "claim_submit_ms": {"p50": _pct(total, 0.5), "p90": _pct(total, 0.9), "p99": _pct(total, 0.99),
                                "max": round(max(total), 2), "mean": round(statistics.fmean(total), 2)}}


# -- main -----------------------------------------------------------------------------------------------------------

def worker_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| workers | calls in flight | seconds | turns/s | calls/s | speed-up | efficiency | 429s |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['workers']} | {r['workers'] * r['worker_concurrency']} | {r['seconds']:.1f} |"
              f" {r['turns_per_s']:.2f} | {r['calls_per_s']:.2f} | {r['speedup']:.2f} | {r['efficiency']:.2f} |"
              f" {r['rate_limited']} |" for r in rows]
    return "\n".join(lines)


def review_table(review: dict[str, Any]) -> str:
    lines = ["| pass | think time | reviews/s | claim p50 / p99 ms | claim+submit p50 / p99 ms | p99 ≤ 50 ms |",
             "|---|---|---|---|---|---|"]
    for mode, r in review.items():
        c, t = r["claim_ms"], r["claim_submit_ms"]
        lines.append(f"| {mode} | {r['think_ms']:g} ms | {r['reviews_per_s']} | {c['p50']} / {c['p99']} |"
                     f" {t['p50']} / {t['p99']} | {'yes' if t['p99'] <= 50 else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--dialogues", type=int, default=30)
    ap.add_argument("--latency", type=float, default=1.0, help="seconds per call at the scripted endpoint")
    ap.add_argument("--endpoint-limit", type=int, default=12, help="requests in flight before HTTP 429")
    ap.add_argument("--worker-concurrency", type=int, default=4)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--reviewers", type=int, default=10)
    ap.add_argument("--per-reviewer", type=int, default=300)
    ap.add_argument("--think-ms", type=float, default=500, help="mean pause between items in the paced pass")
    ap.add_argument("--skip-workers", action="store_true", help="keep the workers part of --out as it is")
    ap.add_argument("--skip-review", action="store_true", help="keep the review part of --out as it is")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    args = ap.parse_args()
    tmp = Path(cluster().root)  # the cluster's folder (removed at exit) also holds the input files
    earlier = json.loads(args.out.read_text()) if args.out.exists() else {}
    results: dict[str, Any] = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                           "platform": platform.platform()}}
    if args.skip_workers and "workers" in earlier:
        results["workers"] = earlier["workers"]
    if args.skip_review and "review" in earlier:
        results["review"] = earlier["review"]
    if not args.skip_workers:
        print(f"workers: {args.dialogues} dialogues, {args.latency:g} s per call, endpoint limit "
              f"{args.endpoint_limit} in flight, {args.worker_concurrency} calls in flight per worker", flush=True)
        rows = bench_workers([int(x) for x in args.workers.split(",")], args.dialogues, args.latency,
                             args.endpoint_limit, args.worker_concurrency, tmp)
        results["workers"] = {"latency_s": args.latency, "endpoint_limit": args.endpoint_limit, "runs": rows}
        print("\n" + worker_table(rows))
    if not args.skip_review:
        results["review"] = {}
        for mode, think in (("closed", 0.0), ("paced", args.think_ms)):
            print(f"\nreview queue ({mode}): {args.items:,} items, {args.reviewers} reviewers × {args.per_reviewer}"
                  f" items, {think:g} ms between items", flush=True)
            r = results["review"][mode] = bench_review(args.items, args.reviewers, args.per_reviewer, think)
            print(f"loaded in {r['load_seconds']} s; {r['reviewed']} reviews in {r['seconds']} s "
                  f"({r['reviews_per_s']}/s); load average {r['load_average']}")
        print("\n" + review_table(results["review"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
