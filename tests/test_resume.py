"""A run killed with SIGKILL mid-way, then run again: every turn exactly once, nothing half-written."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from autolabel import export, read_dialogues
from tests.conftest import dialogue, write_jsonl
from tests.fake_openai import FakeOpenAIServer


def _done(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM dialogues WHERE status='done'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _run(input: Path, db: Path, base_url: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "autolabel", "run", str(input), "--task", "psy-insight", "--model",
           "openai:test", "--base-url", base_url, "--db", str(db), "--concurrency", "4"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "CI": "1"})


def test_sigkill_then_resume_labels_every_turn_exactly_once(tmp_path: Path) -> None:
    dialogues = [dialogue(f"d{i:02d}", 4 + i % 3) for i in range(16)]
    input = write_jsonl(tmp_path / "in.jsonl", dialogues)
    db = tmp_path / "runs.db"
    with FakeOpenAIServer(latency=0.03) as srv:
        proc = _run(input, db, srv.base_url)
        deadline = time.monotonic() + 60
        while _done(db) < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at = _done(db)
        assert 3 <= killed_at < len(dialogues)
        calls_before = len(srv.requests)
        again = _run(input, db, srv.base_url)
        out, err = again.communicate(timeout=120)
        assert again.returncode == 0, err.decode()
        assert "16" in out.decode()  # the summary table
    n_turns = sum(len(d.turns) for d in read_dialogues(input))
    with sqlite3.connect(db) as conn:
        per_turn = conn.execute("SELECT COUNT(*) FROM annotations WHERE is_final=1 AND kind='turn'"
                                " GROUP BY dialogue_id, turn_index").fetchall()
        statuses = conn.execute("SELECT status, COUNT(*) FROM turns GROUP BY status").fetchall()
        hits = conn.execute("SELECT COUNT(*) FROM llm_calls").fetchone()[0]
    assert len(per_turn) == n_turns and {c for (c,) in per_turn} == {1}
    assert sum(n for _, n in statuses) == n_turns
    # the resumed run paid only for what was not done: fewer calls than a full second run. (Calls in flight at the
    # SIGKILL reached the server but were never logged, so the log can hold a few less than the server saw.)
    assert hits <= len(srv.requests) and len(srv.requests) - calls_before < calls_before + n_turns * 2
    out_file = tmp_path / "labels.jsonl"
    export(db, "jsonl", out_file)
    keys = [(r["dialogue_id"], r.get("turn_index")) for r in map(json.loads, out_file.read_text().splitlines())]
    assert len(keys) == len(set(keys)) == n_turns + len(dialogues)
