"""Stopping a run by Ctrl-C (SIGINT) or SIGTERM, by subprocess against the loopback fake with replies that never
come in time: the run ends at once with one line and exit 130 / 143, the abandoned calls are not errors, and the
same command resumes it."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import dialogue, write_jsonl
from tests.fake_openai import FakeOpenAIServer

# -- stopping: Ctrl-C and SIGTERM ----------------------------------------------------------------------------

SLOW_REPLY = 600.0  # seconds: far longer than the test waits, so a stop that waited for a reply would time out


def _wait_for(predicate: Callable[[], bool], proc: subprocess.Popen[str], what: str, limit: float = 90) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {what}: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} within {limit} s")
        time.sleep(0.05)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_run_at_once_with_a_message_and_the_run_resumes(tmp_path: Path, signum: int,
                                                                           code: int) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [dialogue(f"d{i}", 4) for i in range(3)])
    db = tmp_path / "runs.db"
    args = [sys.executable, "-m", "autolabel", "run", str(inp), "--model", "openai:test", "--db", str(db),
            "--concurrency", "2"]
    env = {**os.environ, "COLUMNS": "1000", "OPENAI_API_KEY": "k"}
    with FakeOpenAIServer(latency=SLOW_REPLY) as srv:
        proc = subprocess.Popen([*args, "--base-url", srv.base_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
        _wait_for(lambda: len(srv.requests) >= 2, proc, "request in flight")
        proc.send_signal(signum)
        try:  # the replies are 600 s away: ending now means the calls in flight were abandoned, not awaited
            stdout, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"still running 30 s after {signal.Signals(signum).name}: {proc.communicate()}")
    assert proc.returncode == code, (proc.returncode, stderr)
    assert "stopped: run the same command again to resume" in stderr
    assert "Traceback" not in stderr and "error" not in stderr.lower(), stderr
    with sqlite3.connect(db) as conn:  # the abandoned calls are in the call log, not as errors
        outcomes = [r[0] for r in conn.execute("SELECT outcome FROM llm_calls")]
        status = conn.execute("SELECT status FROM runs").fetchone()[0]
    assert not [o for o in outcomes if o.startswith("error")], outcomes
    assert status == "stopped"
    with FakeOpenAIServer() as srv:  # the same command again finishes the run
        r = subprocess.run([*args, "--base-url", srv.base_url], capture_output=True, text=True, env=env, timeout=180)
    assert r.returncode == 0, r.stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM dialogues WHERE status='done'").fetchone()[0] == 3
