"""A run through a storm of endpoint faults: every turn ends in one state, nothing invalid is kept, nothing leaks.

The fake server fails ≥ 30% of the calls in every way ``tests/fake_openai.py`` knows (429 with and without
Retry-After, 500/502/503, read timeouts, connection resets mid-body, malformed and truncated JSON, out-of-taxonomy
labels, wrong types, empty content). Read timeouts are real: the client waits ``request_timeout`` (1 s) for a
server that sleeps 3 s.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from autolabel import Annotator, Dialogue, Turn, export, load_task, read_dialogues
from autolabel.records import record_problems
from autolabel.tasks import load_schema
from tests.conftest import dialogue, write_jsonl
from tests.fake_openai import ALL_FAULTS, FakeOpenAIServer
from tests.test_annotate import purpose

SECRET_KEY = "sk-test-SECRET-6f1d0c2a9b8e4d7f"
FAULT_RATE = 0.4
def quoting(dialogue_id: str) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
    """Replies that, for turn 1 of one dialogue, quote the turn at length (past the field's 400 characters, so the
    answer never validates): the validation errors, which instructor logs, carry dialogue text, as a real model's
    would."""

    def replies(body: dict[str, Any]) -> dict[str, Any] | None:
        user = body["messages"][1]["content"]
        if purpose(body) == "label" and f"(session {dialogue_id})" in user and '<target index="1"' in user:
            turn = re.search(r"<target[^>]*>\n(.*)\n</target>", user, re.S).group(1)
            return {"observation": " ".join([turn] * 6), "emotion": ["NotAnOption"]}
        return None

    return replies


def summary_rows(stdout: str) -> dict[str, int]:
    """The integer rows of the summary table ``autolabel run`` prints (dialogues, turns, calls, cache hits...)."""
    rows = (re.match(r"│ (.+?)\s+│ ([\d,]+)\s+│$", line) for line in stdout.splitlines())
    return {m.group(1): int(m.group(2).replace(",", "")) for m in rows if m}


def _final_records(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT record_json, valid FROM annotations WHERE is_final=1").fetchall()
    return [{**json.loads(r), "_valid": bool(v)} for r, v in rows]


def test_fault_storm_every_turn_ends_accepted_flagged_or_failed_with_reason(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET_KEY)
    # the default level, as an application's logging.basicConfig() sets it up: the root logger at WARNING, a
    # handler that takes whatever reaches it
    caplog.set_level(logging.WARNING)
    caplog.handler.setLevel(logging.NOTSET)
    dialogues = [dialogue(f"d{i:02d}", 5) for i in range(40)]
    input = write_jsonl(tmp_path / "in.jsonl", dialogues)
    n_turns = sum(len(d.turns) for d in dialogues)
    db = tmp_path / "runs.db"
    started = time.monotonic()
    with FakeOpenAIServer(seed=11, fault_rate=FAULT_RATE, fault_kinds=ALL_FAULTS, timeout_sleep=3,
                          replies=quoting("d00")) as srv:
        summary = Annotator("psy-insight", model="openai:test", base_url=srv.base_url, db=db, request_timeout=1.0,
                            max_reasks=1).run(input)
    seconds = time.monotonic() - started

    # the storm was real: ≥ 30% of the requests failed, in every way there is
    assert n_turns >= 200
    assert srv.stats["faults"] >= 0.3 * srv.stats["requests"], dict(srv.stats)
    assert all(srv.stats[f"fault_{kind}"] > 0 for kind in ALL_FAULTS), dict(srv.stats)
    with sqlite3.connect(db) as conn:
        outcomes = Counter(dict(conn.execute("SELECT outcome, COUNT(*) FROM llm_calls GROUP BY outcome")))
        turn_statuses = Counter(dict(conn.execute("SELECT status, COUNT(*) FROM turns GROUP BY status")))
        flagged_items = conn.execute("SELECT COUNT(*) FROM review_items WHERE kind='turn'").fetchone()[0]
    for outcome in ("error:RateLimitError", "error:InternalServerError", "error:APITimeoutError",
                    "error:APIConnectionError", "error:JSONDecodeError"):
        assert outcomes[outcome] > 0, outcomes
    assert summary.calls == sum(outcomes.values())  # every attempt that reached the endpoint is in the call log

    # every turn ends in exactly one state, and the counts add up to the input
    assert summary.turns == n_turns == summary.accepted + summary.flagged + summary.failed
    assert turn_statuses == Counter({k: v for k, v in (("accepted", summary.accepted), ("flagged", summary.flagged),
                                                       ("failed", summary.failed)) if v})
    assert summary.accepted > 0 and summary.flagged > 0 and summary.failed > 0
    assert flagged_items == summary.flagged

    # nothing invalid is kept as valid; a failure says why
    task = load_task("psy-insight")
    schema = load_schema("annotation.schema.json")
    records = _final_records(db)
    assert sum(r["kind"] == "turn" for r in records) == n_turns
    for r in records:
        valid = r.pop("_valid")
        jsonschema.validate(r, schema, cls=jsonschema.Draft202012Validator)
        if valid:
            assert record_problems(r, task) == [], r
        if r["status"] == "failed":
            assert not valid and r["error"].startswith(("invalid_output: ", "llm_error: ")), r["error"]
        if r["status"] == "flagged":
            assert r["flags"]
    bad = next(r for r in records if r["dialogue_id"] == "d00" and r.get("turn_index") == 1)
    assert bad["status"] == "failed" and "NotAnOption" in bad["raw_output"]
    out = tmp_path / "labels.jsonl"
    assert export(db, "jsonl", out) == n_turns + len(dialogues)

    # nothing of the dialogues and no API key in the logs at the default level
    logged = "\n".join(f"{r.getMessage()}\n{r.exc_text or ''}" for r in caplog.records
                       if not r.name.startswith("uvicorn"))  # the fake server's own logs are not autolabel's
    assert SECRET_KEY not in logged
    assert not [t.text for d in dialogues for t in d.turns if t.text in logged]
    print(f"\nfault storm: {n_turns} turns, {srv.stats['requests']} requests, {srv.stats['faults']} faults "
          f"({srv.stats['faults'] / srv.stats['requests']:.0%}), {dict(outcomes)}; accepted {summary.accepted}, "
          f"flagged {summary.flagged}, failed {summary.failed}; {seconds:.1f} s")


def _marked(i: int) -> Dialogue:
    """A dialogue whose every turn carries a marker that must never show up in a log."""
    base = dialogue(f"m{i}", 5)
    return base.model_copy(update={"turns": tuple(
        Turn(index=t.index, speaker=t.speaker, text=f"{t.text} [marker-quokka-{i}-{t.index}]") for t in base.turns)})


def test_cli_under_faults_exits_with_a_summary_and_logs_no_text_and_no_key(tmp_path: Path) -> None:
    dialogues = [_marked(i) for i in range(10)]
    input = write_jsonl(tmp_path / "in.jsonl", dialogues)
    env = {**os.environ, "CI": "1", "OPENAI_API_KEY": SECRET_KEY, "AUTOLABEL_REQUEST_TIMEOUT": "1",
           "AUTOLABEL_MAX_REASKS": "1"}
    with FakeOpenAIServer(seed=3, fault_rate=FAULT_RATE, fault_kinds=ALL_FAULTS, timeout_sleep=3,
                          replies=quoting("m0")) as srv:
        r = subprocess.run([sys.executable, "-m", "autolabel", "run", str(input), "--model", "openai:test",
                            "--base-url", srv.base_url, "--db", str(tmp_path / "runs.db")],
                           capture_output=True, text=True, timeout=120, env=env)
    assert srv.stats["faults"] > 0
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    rows = summary_rows(r.stdout)
    n_turns = sum(len(d.turns) for d in read_dialogues(input))
    assert rows["turns"] == n_turns == rows["accepted"] + rows["flagged"] + rows["failed"]
    assert rows["failed"] >= 1  # m0's turn 1, whose rejected answers quoted it
    everything = r.stdout + r.stderr
    assert SECRET_KEY not in everything and "marker-quokka" not in everything
    assert not [t.text for d in dialogues for t in d.turns if t.text[:40] in everything]
