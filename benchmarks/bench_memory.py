"""Memory and scale: a generated multi-million-line JSONL streamed through ``autolabel run`` and ``autolabel export``.

1. Writes ``--turns`` turns of generated counseling dialogues (``--per-dialogue`` turns each) to a temporary JSONL.
2. Runs ``python -m autolabel run`` on it as a child process — the command a user runs: streaming reader, the
   ``annotate`` graph with its SQLite checkpointer, the store — against the simulated endpoint (another process,
   ~0 latency) at high concurrency. Every second this process samples the child's RSS (``/proc/<pid>/status``) and,
   every few seconds, how many turns are finished (from the store, read-only). Peak RSS is the kernel's high-water
   mark of the child (``ru_maxrss`` from ``wait4``).
3. Reports RSS at progress marks (turns done), its growth between the first mark and the end, the store's size,
   and the same measurements for ``python -m autolabel export --format jsonl`` of that store.

Critique is off by default (one call per turn, plus one session call per dialogue) so that more turns fit in the
time; ``--critique`` turns it on. Goal: RSS flat (no growth with turns done) and at most 300 MB.

Usage::

    python benchmarks/bench_memory.py [--turns 1000000] [--concurrency 64] [--critique]

Results go to ``benchmarks/results/memory.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import REPO, Endpoint, rss_mb, table, write_jsonl, write_result

MARKS = (10_000, 50_000, 100_000, 200_000, 500_000, 1_000_000)


def _turns_done(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            row = conn.execute("SELECT COALESCE(SUM(n_turns), 0) FROM dialogues WHERE status='done'").fetchone()
        return int(row[0])
    except sqlite3.Error:
        return -1  # busy or not yet created: this sample has no count


def _table_mb(conn: sqlite3.Connection) -> dict[str, float]:
    """MB per table and index (SQLite's dbstat), and ``(free pages)``: pages the file holds for reuse (the
    checkpoints of finished dialogues are deleted; their pages serve the next ones)."""
    try:
        rows = conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC").fetchall()
    except sqlite3.OperationalError:  # an SQLite built without dbstat
        return {}
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return {name: round(size / 2**20, 2) for name, size in rows} | {"(free pages)": round(free * page / 2**20, 2)}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def watch(args: list[str], *, db: Path | None = None, interval: float = 1.0, count_every: float = 5.0,
          log: Path) -> dict[str, Any]:
    """Run ``args``; sample its RSS (and turns done in ``db``); return samples, peak RSS, wall and CPU time."""
    env = {**os.environ, "CI": "1", "COLUMNS": "200"}
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    samples: list[dict[str, Any]] = []
    state = {"cpu": 0.0}
    trail = log.with_suffix(".samples.jsonl").open("w")  # the samples as they come, for a run cut short
    stop = threading.Event()

    def sample() -> None:
        last_count, done = 0.0, 0
        while not stop.is_set():
            try:
                rss, _ = rss_mb(proc.pid)
                state["cpu"] = _cpu_seconds(proc.pid)
            except (FileNotFoundError, ProcessLookupError):
                break
            now = time.monotonic() - started
            if db is not None and now - last_count >= count_every:
                counted = _turns_done(db)
                if counted >= 0:
                    done, last_count = counted, now
            samples.append({"t": round(now, 1), "rss_mb": round(rss, 1), "turns_done": done})
            trail.write(json.dumps(samples[-1]) + "\n")
            trail.flush()
            stop.wait(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    stop.set()
    thread.join()
    trail.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args[:4])} failed ({proc.returncode}); see {log}:\n{log.read_text()[-2000:]}")
    return {"seconds": wall, "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024,
            "samples": samples}


def rss_at_marks(samples: list[dict[str, Any]], total: int) -> list[dict[str, Any]]:
    """The RSS sampled when each progress mark was first reached (and at the end)."""
    out = []
    marks = [m for m in MARKS if m < total] + [total]
    for m in marks:
        hit = next((s for s in samples if s["turns_done"] >= m), samples[-1] if m == total and samples else None)
        if hit is not None:
            window = [s["rss_mb"] for s in samples if s["t"] <= hit["t"]]
            out.append({"turns_done": m, "t": hit["t"], "rss_mb": hit["rss_mb"], "max_rss_so_far_mb": max(window)})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--turns", type=int, default=1_000_000)
    p.add_argument("--per-dialogue", type=int, default=20)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--critique", action="store_true", help="two calls per turn instead of one")
    p.add_argument("--workdir", type=Path, default=None, help="where the input, store and export go (default: temp)")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="bench-memory-") if a.workdir is None else None
    work = Path(tmp.name) if tmp is not None else a.workdir
    work.mkdir(parents=True, exist_ok=True)
    try:
        t = time.monotonic()
        data = write_jsonl(work / "dialogues.jsonl", a.turns, a.per_dialogue)
        generated = time.monotonic() - t
        input_mb = data.stat().st_size / 2**20
        db = work / "runs.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        with Endpoint(latency_ms=0.0) as ep:
            run = watch([sys.executable, "-m", "autolabel", "run", str(data), "--model", "openai:bench-model",
                         "--base-url", ep.base_url, "--db", str(db), "--concurrency", str(a.concurrency),
                         "--critique" if a.critique else "--no-critique"], db=db, log=work / "run.log")
            server_cpu = ep.cpu_seconds()
        with sqlite3.connect(db) as conn:
            turns = dict(conn.execute("SELECT status, COUNT(*) FROM turns GROUP BY status").fetchall())
            calls = conn.execute("SELECT COUNT(*) FROM llm_calls").fetchone()[0]
            tables = _table_mb(conn)
        store_mb = sum(Path(f"{db}{s}").stat().st_size for s in ("", "-wal") if Path(f"{db}{s}").exists()) / 2**20
        out_file = work / "labels.jsonl"
        export = watch([sys.executable, "-m", "autolabel", "export", "--db", str(db), "--format", "jsonl",
                        "--out", str(out_file)], log=work / "export.log")
        with out_file.open("rb") as f:
            records = sum(1 for _ in f)
        export.update(records=records, output_mb=out_file.stat().st_size / 2**20)
    finally:
        if tmp is not None:
            tmp.cleanup()
    done = sum(turns.values())
    marks = rss_at_marks(run["samples"], done)
    first = marks[0]["rss_mb"] if marks else 0.0
    result = {
        "turns": a.turns, "per_dialogue": a.per_dialogue, "concurrency": a.concurrency, "critique": a.critique,
        "input_mb": input_mb, "generate_seconds": generated,
        "turn_states": turns, "calls": calls, "store_mb": store_mb,
        "store_kb_per_turn": 1024 * store_mb / max(1, sum(turns.values())), "store_tables_mb": tables,
        "run": {k: v for k, v in run.items() if k != "samples"} | {
            "turns_per_second": done / run["seconds"], "client_cpu_ms_per_turn": 1000 * run["cpu_seconds"] / done,
            "server_cpu_seconds": server_cpu, "rss_at_marks": marks,
            "rss_growth_mb": (marks[-1]["rss_mb"] - first) if marks else None},
        "export": {k: v for k, v in export.items() if k != "samples"},
        "samples": run["samples"],
    }
    print(f"autolabel run: {done:,} turns ({a.per_dialogue} per dialogue), concurrency {a.concurrency}, critique "
          f"{'on' if a.critique else 'off'}, {calls:,} calls, simulated endpoint at ~0 ms")
    print(table(["turns done", "minutes", "RSS MB", "max RSS so far MB"],
                [[f"{m['turns_done']:,}", m["t"] / 60, m["rss_mb"], m["max_rss_so_far_mb"]] for m in marks]))
    print()
    print(table(["step", "seconds", "records/s", "CPU s", "peak RSS MB", "size MB"], [
        ["run", run["seconds"], done / run["seconds"], run["cpu_seconds"], run["peak_rss_mb"], f"store {store_mb:.0f}"],
        ["export (jsonl)", export["seconds"], records / export["seconds"], export["cpu_seconds"],
         export["peak_rss_mb"], f"output {export['output_mb']:.0f}"],
    ]))
    print(f"turn states: {turns}")
    largest = ", ".join(f"{name} {mb:.1f}" for name, mb in list(tables.items())[:4])
    print(f"store: {store_mb:.1f} MB, {result['store_kb_per_turn']:.2f} KB per turn (MB: {largest}; "
          f"free pages {tables.get('(free pages)', 0.0):.1f})")
    path = write_result("memory", result, a.out)
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
