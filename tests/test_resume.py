"""Runs killed with SIGKILL at random points, then run again: every turn exactly once, nothing half-written, and the
calls already paid for are not paid again."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from autolabel import Dialogue, export, read_dialogues
from autolabel.llm.client import cache_key
from tests.conftest import dialogue, write_jsonl
from tests.fake_openai import FakeOpenAIServer
from tests.test_faults import summary_rows

CONCURRENCY = 4
KILLS = 10


def _run(input: Path, db: Path, base_url: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "autolabel", "run", str(input), "--task", "psy-insight", "--model",
           "openai:test", "--base-url", base_url, "--db", str(db), "--concurrency", str(CONCURRENCY)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "CI": "1"})


def _assert_nothing_half_written(db: Path, dialogues: list[Dialogue]) -> int:
    """A dialogue marked done has all its turns and final records; any other has none. Returns how many are done."""
    with sqlite3.connect(db, timeout=30) as conn:
        done = {d for (d,) in conn.execute("SELECT dialogue_id FROM dialogues WHERE status='done'")}
        turns = dict(conn.execute("SELECT dialogue_id, COUNT(*) FROM turns GROUP BY dialogue_id").fetchall())
        finals = dict(conn.execute("SELECT dialogue_id, COUNT(*) FROM annotations WHERE is_final=1"
                                   " GROUP BY dialogue_id").fetchall())
        items = {d for (d,) in conn.execute("SELECT DISTINCT dialogue_id FROM review_items")}
    for d in dialogues:
        if d.id in done:
            assert turns.get(d.id) == len(d.turns) and finals.get(d.id) == len(d.turns) + 1, d.id
        else:
            assert d.id not in turns and d.id not in finals and d.id not in items, d.id
    return len(done)


def _keys(requests: list[dict]) -> list[str]:
    """The store's cache key of each request the server received (the model there is ``test``)."""
    return [cache_key("test", {k: v for k, v in body.items() if k != "model"}) for body in requests]


def _cached(db: Path) -> set[str]:
    with sqlite3.connect(db, timeout=30) as conn:
        return {k for (k,) in conn.execute("SELECT key FROM llm_cache")}


def test_ten_sigkills_at_random_points_then_resume_label_every_turn_exactly_once(tmp_path: Path) -> None:
    # every prompt differs (each dialogue's first turn names it and stays in every window): no cache hit can come
    # from another dialogue, only from a call made before a kill
    dialogues = [dialogue(f"d{i:02d}", 4 + i % 2) for i in range(30)]
    input = write_jsonl(tmp_path / "in.jsonl", dialogues)
    db = tmp_path / "runs.db"
    done_after_kill = []
    paid: set[str] = set()  # calls whose answers were in the store when a run was killed
    repaid: list[str] = []  # ... and were sent again by a later run
    with FakeOpenAIServer(latency=0.02) as srv:
        for seed in range(KILLS):
            rng = random.Random(seed)
            sent = len(srv.requests)
            target = sent + rng.randint(6, 24)  # killed after this many new calls and up to 50 ms
            proc = _run(input, db, srv.base_url)
            deadline = time.monotonic() + 60
            while len(srv.requests) < target and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.05))
            assert proc.poll() is None, proc.communicate()[1]  # still running: the kill lands mid-run
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            done_after_kill.append(_assert_nothing_half_written(db, dialogues))
            repaid += [k for k in _keys(srv.requests[sent:]) if k in paid]
            paid |= _cached(db)
        assert done_after_kill[-1] < len(dialogues)
        calls_before = len(srv.requests)
        final = _run(input, db, srv.base_url)
        out, err = final.communicate(timeout=180)
        assert final.returncode == 0 and "Traceback" not in err, err
        rows = summary_rows(out)
        repaid += [k for k in _keys(srv.requests[calls_before:]) if k in paid]
        sent_keys = _keys(srv.requests)
    assert done_after_kill == sorted(done_after_kill)  # a kill never undoes a finished dialogue
    assert _assert_nothing_half_written(db, dialogues) == len(dialogues)
    n_turns = sum(len(d.turns) for d in read_dialogues(input))
    assert rows["dialogues"] == len(dialogues) and rows["turns"] == n_turns
    # no call answered before a kill was paid again: the resumed runs took them from the cache or a checkpoint (how
    # many of each depends on where the kills landed); the only calls sent twice were in flight (or not yet cached)
    # at a SIGKILL
    assert repaid == []
    assert rows["calls"] == len(srv.requests) - calls_before
    sent_twice = len(sent_keys) - len(set(sent_keys))
    assert sent_twice <= KILLS * CONCURRENCY * 2
    # every call the job needs (label and critique per turn, session per dialogue) was paid for and is in the cache,
    # whatever the kills interrupted
    assert set(sent_keys) == _cached(db) and len(set(sent_keys)) == 2 * n_turns + len(dialogues)
    with sqlite3.connect(db) as conn:
        per_turn = conn.execute("SELECT COUNT(*) FROM annotations WHERE is_final=1 AND kind='turn'"
                                " GROUP BY dialogue_id, turn_index").fetchall()
        statuses = conn.execute("SELECT status, COUNT(*) FROM turns GROUP BY status").fetchall()
        logged = conn.execute("SELECT COUNT(*) FROM llm_calls").fetchone()[0]
    assert len(per_turn) == n_turns and {c for (c,) in per_turn} == {1}
    assert sum(n for _, n in statuses) == n_turns
    assert logged <= len(srv.requests)  # calls in flight at a SIGKILL reached the server but were never logged
    out_file = tmp_path / "labels.jsonl"
    export(db, "jsonl", out_file)
    keys = [(r["dialogue_id"], r.get("turn_index")) for r in map(json.loads, out_file.read_text().splitlines())]
    assert len(keys) == len(set(keys)) == n_turns + len(dialogues)
    # ...so a new run over the same dialogues (another run id, the same prompts; last, as it adds to the store) pays
    # nothing, and counts every hit
    copy = write_jsonl(tmp_path / "copy.jsonl", dialogues)
    with FakeOpenAIServer(latency=0.02) as fresh:
        again = _run(copy, db, fresh.base_url)
        out, err = again.communicate(timeout=180)
        assert again.returncode == 0 and "Traceback" not in err, err
        assert fresh.requests == []
    rows_again = summary_rows(out)
    assert (rows_again["calls"], rows_again["cache hits"]) == (0, 2 * n_turns + len(dialogues))
    print(f"\n{KILLS} kills: dialogues done after each {done_after_kill}; {len(sent_keys)} requests, {sent_twice} "
          f"sent twice (in flight at a kill); last resume: {rows['calls']} calls, {rows['cache hits']} cache hits "
          f"(the rest from checkpoints)")
