"""One long dialogue: peak RSS, store bytes per turn and wall time of ``autolabel run`` on a single dialogue of 1k, 5k
and 20k turns.

Each size is a JSONL file holding one generated counseling dialogue (alternating Supporter/Seeker turns, as
``bench_memory.py``), run by ``python -m autolabel run`` as a child process — the command a user runs — against the
simulated endpoint (another process, ~0 ms latency). Peak RSS is the kernel's high-water mark of the child
(``ru_maxrss`` from ``wait4``); the store is the database file and its write-ahead log after the run (the file keeps
its high-water mark: pages the dialogue's checkpoints used while it ran stay in it, free for reuse, so this is the
most the run needed on disk). Critique is off by default (one call per turn, as in ``bench_memory.py``); ``--critique``
turns it on.

Goal (issue 15): linear in the dialogue's length; 20k turns within 400 MB RSS and at most 3 KB of store per turn.
Before the fix each ``Send`` packet carried the whole dialogue: 1k / 2k / 4k turns made a store of 9.9 / 28 / 93 MB,
and 20k turns reached 2.9 GB RSS without finishing in 7 minutes.

Usage::

    python benchmarks/bench_long_dialogue.py [--sizes 1000,5000,20000] [--concurrency 64] [--critique]

Results go to ``benchmarks/results/long_dialogue.json`` (``--out`` to change) and a markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import REPO, Endpoint, dialogue_record, table, write_result

GOAL_RSS_MB = 400
GOAL_STORE_KB_PER_TURN = 3.0


def run_one(work: Path, turns: int, base_url: str, concurrency: int, critique: bool) -> dict[str, Any]:
    """``autolabel run`` on one dialogue of ``turns`` turns: wall and CPU seconds, peak RSS, store size."""
    data = work / f"dialogue-{turns}.jsonl"
    data.write_text(json.dumps(dialogue_record(0, turns, random.Random(turns)), ensure_ascii=False) + "\n",
                    encoding="utf-8")
    db = work / f"runs-{turns}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    args = [sys.executable, "-m", "autolabel", "run", str(data), "--model", "openai:bench-model", "--base-url",
            base_url, "--db", str(db), "--concurrency", str(concurrency),
            "--critique" if critique else "--no-critique"]
    log = work / f"run-{turns}.log"
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, "CI": "1", "COLUMNS": "200"})
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"autolabel run on {turns} turns failed; see {log}:\n{log.read_text()[-2000:]}")
    store = sum(Path(f"{db}{s}").stat().st_size for s in ("", "-wal") if Path(f"{db}{s}").exists())
    with sqlite3.connect(db) as conn:
        states = dict(conn.execute("SELECT status, COUNT(*) FROM turns GROUP BY status").fetchall())
        calls = conn.execute("SELECT COUNT(*) FROM llm_calls").fetchone()[0]
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    done = sum(states.values())
    if done != turns:
        raise SystemExit(f"{turns} turns in, {done} stored ({states}); see {log}")
    return {"turns": turns, "seconds": wall, "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": usage.ru_maxrss / 1024, "store_mb": store / 2**20, "store_kb_per_turn": store / 1024 / turns,
            "free_pages_mb": free * page / 2**20, "calls": calls, "turn_states": states,
            "turns_per_second": turns / wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,5000,20000", help="turns of the dialogue, one run each")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--critique", action="store_true", help="two calls per turn instead of one")
    p.add_argument("--workdir", type=Path, default=None, help="where the inputs and stores go (default: temp)")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    tmp = tempfile.TemporaryDirectory(prefix="bench-long-") if a.workdir is None else None
    work = Path(tmp.name) if tmp is not None else a.workdir
    work.mkdir(parents=True, exist_ok=True)
    try:
        with Endpoint(latency_ms=0.0) as ep:
            results = [run_one(work, n, ep.base_url, a.concurrency, a.critique) for n in sizes]
    finally:
        if tmp is not None:
            tmp.cleanup()
    first = results[0]
    for r in results:  # linear: per-turn costs against the smallest size of the same run
        r["store_per_turn_ratio"] = r["store_kb_per_turn"] / first["store_kb_per_turn"]
        r["seconds_per_turn_ratio"] = (r["seconds"] / r["turns"]) / (first["seconds"] / first["turns"])
    largest = results[-1]
    goals = {"rss_mb": GOAL_RSS_MB, "store_kb_per_turn": GOAL_STORE_KB_PER_TURN,
             "met": largest["peak_rss_mb"] <= GOAL_RSS_MB and largest["store_kb_per_turn"] <= GOAL_STORE_KB_PER_TURN}
    md = table(["turns", "peak RSS MB", "store MB", "store KB/turn", "wall s", "turns/s", "CPU s",
                "store/turn vs smallest", "s/turn vs smallest"],
               [[f"{r['turns']:,}", r["peak_rss_mb"], r["store_mb"], r["store_kb_per_turn"], r["seconds"],
                 r["turns_per_second"], r["cpu_seconds"], r["store_per_turn_ratio"], r["seconds_per_turn_ratio"]]
                for r in results])
    print(f"autolabel run: one dialogue per row, concurrency {a.concurrency}, critique "
          f"{'on' if a.critique else 'off'}, simulated endpoint at ~0 ms")
    print(md)
    print(f"goal at {largest['turns']:,} turns: <= {GOAL_RSS_MB} MB RSS and <= {GOAL_STORE_KB_PER_TURN} KB of store "
          f"per turn: {'met' if goals['met'] else 'NOT met'}")
    path = write_result("long_dialogue", {"concurrency": a.concurrency, "critique": a.critique, "goals": goals,
                                          "results": results, "table": md}, a.out)
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
