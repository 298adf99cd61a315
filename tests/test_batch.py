"""``run --batch-api``: the calls go out as provider batches (the scripted server's Files and Batches endpoints),
come back through the same validation, re-asks and routing as direct calls, and a run killed while its first or
its second batch is running resumes that batch instead of paying for it again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from autolabel import Annotator, ConfigError, read_dialogues
from autolabel.cli import app
from autolabel.persistence.batches import batches
from autolabel.persistence.store import Store, engine_url
from tests.conftest import dialogue, write_jsonl
from tests.fake_openai import FakeOpenAIServer
from tests.test_annotate import purpose

FAST = {"batch_poll": 0.05, "batch_wait": 0.3}


def rows(db: str | Path, sql: str) -> list[tuple]:
    eng = create_engine(engine_url(str(db)))
    try:
        with eng.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql))]
    finally:
        eng.dispose()


def finals(db: Path) -> list[tuple]:
    """Every final record, without what differs between two runs (run id, timings)."""
    out = []
    for (rec,) in rows(db, "SELECT record_json FROM annotations WHERE is_final=1 ORDER BY dialogue_id, kind,"
                           " turn_index"):
        r = json.loads(rec)
        out.append((r["dialogue_id"], r.get("turn_index"), r["status"], r["labels"], r["flags"], r["confidence"]))
    return out


def lines(server: FakeOpenAIServer) -> list[list[dict[str, Any]]]:
    """The request lines of every submitted batch, in submission order."""
    return [[json.loads(x) for x in server.files[b["input_file_id"]]["content"].decode().splitlines()]
            for b in server.batches.values()]


def test_batch_results_take_the_same_path_as_direct_calls(tmp_path: Path) -> None:
    input = write_jsonl(tmp_path / "in.jsonl", [dialogue(f"d{i}", 4) for i in range(4)])
    first_label = {}

    def replies(body: dict[str, Any]) -> str | None:  # the first answer for one turn does not validate
        if purpose(body) == "label" and 'index="1"' in body["messages"][1]["content"] and "(session d2)" in \
                json.dumps(body["messages"]) and not first_label:
            first_label["sent"] = True
            return '{"not": "what the schema asks for"}'
        return None

    with FakeOpenAIServer(seed=3) as direct_srv:
        Annotator("psy-insight", model="openai:test", base_url=direct_srv.base_url, db=tmp_path / "direct.db").run(
            input)
    with FakeOpenAIServer(seed=3, batch_delay=0.2, replies=replies) as srv:
        annotator = Annotator("psy-insight", model="openai:test", base_url=srv.base_url, db=tmp_path / "batch.db",
                              concurrency=64, batch_api=True, **FAST)
        summary = annotator.run(input)
        assert srv.requests == [], "no direct call: everything went through batches"
        sent = lines(srv)
    assert summary.dialogues == 4 and summary.failed == 0
    n_turns = sum(len(d.turns) for d in read_dialogues(input))
    assert len(rows(tmp_path / "batch.db", "SELECT 1 FROM annotations WHERE is_final=1 AND kind='turn'")) == n_turns
    # the re-ask (the invalid answer and its error in the messages) went out in a later batch than the first ask
    reasks = [i for i, batch in enumerate(sent) for line in batch if len(line["body"]["messages"]) > 2]
    firsts = [i for i, batch in enumerate(sent) for line in batch
              if line["custom_id"].split("/")[1:4] == ["d2", "1", "label"] and len(line["body"]["messages"]) == 2]
    assert len(reasks) == 1 and firsts and reasks[0] > firsts[0]
    assert len(sent) >= 3, "labels, then critiques and re-asks, then sessions: follow-up batches"
    run_id = summary.run_id
    ids = [line["custom_id"] for batch in sent for line in batch]
    assert len(ids) == len(set(ids)) and all(i.startswith(f"{run_id}/") for i in ids)
    assert {i.split("/")[3] for i in ids} == {"label", "critique", "session"}
    with closing(Store.open(tmp_path / "batch.db")) as store:
        recorded = batches(store, run_id)
    assert [b["status"] for b in recorded] == ["collected"] * len(sent)
    # the same answers give the same labels, confidence and routing as direct calls (the re-asked turn aside)
    direct, batched = finals(tmp_path / "direct.db"), finals(tmp_path / "batch.db")
    assert [x for x in batched if x[:2] != ("d2", 1)] == [x for x in direct if x[:2] != ("d2", 1)]
    # batch results are cached like direct answers: trimmed and compressed, never as whole responses
    cache = rows(tmp_path / "batch.db", "SELECT response IS NOT NULL, response_json IS NULL FROM llm_cache")
    assert len(cache) == len(ids) and set(cache) == {(1, 1)}


def _run(input: Path, db: Path, base_url: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "autolabel", "run", str(input), "--task", "psy-insight", "--model", "openai:test",
           "--base-url", base_url, "--db", str(db), "--batch-api"]
    env = {**os.environ, "CI": "1", "AUTOLABEL_BATCH_POLL": "0.05", "AUTOLABEL_BATCH_WAIT": "0.5"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


@pytest.mark.parametrize("killed_in_round", [1, 2])
def test_a_killed_batch_run_resumes_its_submitted_batch(tmp_path: Path, killed_in_round: int) -> None:
    """The run is SIGKILLed while its first batch (labels), or its second (critiques and re-asks, after the first
    was collected), is running at the provider. Started again, it collects the batch it had submitted and finishes:
    no request is submitted twice, none goes out as a direct call, every turn is labeled once."""
    input = write_jsonl(tmp_path / "in.jsonl", [dialogue(f"d{i}", 5) for i in range(6)])
    db = tmp_path / "runs.db"
    with FakeOpenAIServer(seed=5, batch_delay=3.0 if killed_in_round == 1 else 0.2) as srv:
        proc = _run(input, db, srv.base_url)
        deadline = time.monotonic() + 90
        while len(srv.batches) < killed_in_round and time.monotonic() < deadline and proc.poll() is None:
            if srv.batches and next(iter(srv.batches.values()))["status"] == "completed":
                srv.batch_delay = 3.0  # the first batch is done at the provider: the next one takes long
            time.sleep(0.02)
        time.sleep(0.3)  # recorded in the store before it is first polled
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert len(srv.batches) == killed_in_round
        submitted = list(srv.batches)
        running = submitted[-1]
        expected = [(b, "collected") for b in submitted[:-1]] + [(running, "submitted")]
        assert sorted(rows(db, "SELECT id, status FROM provider_batches")) == sorted(expected)
        srv.batch_delay = 0.2  # the killed batch is done by now; the follow-up ones finish quickly
        again = _run(input, db, srv.base_url)
        out, err = again.communicate(timeout=120)
        assert again.returncode == 0, err.decode()[-2000:]
        sent = lines(srv)
        assert srv.requests == [], "no direct call"
    assert rows(db, f"SELECT status FROM provider_batches WHERE id='{running}'") == [("collected",)]
    keys = [line["custom_id"] for batch in sent for line in batch]
    assert len(keys) == len(set(keys)), "nothing was submitted twice: the restarted run waited for its batch"
    # the first batch: every turn's label and, as a branch of its own since the graph sends the session apart, each
    # dialogue's session call; then the critiques
    assert {k.split("/")[3] for k in keys[: len(sent[0])]} <= {"label", "session"}
    assert "label" in {k.split("/")[3] for k in keys[: len(sent[0])]}
    if killed_in_round == 2:
        assert "critique" in {k.split("/")[3] for k in keys[len(sent[0]): len(sent[0]) + len(sent[1])]}
    n_turns = sum(len(d.turns) for d in read_dialogues(input))
    per_turn = rows(db, "SELECT COUNT(*) FROM annotations WHERE is_final=1 AND kind='turn' GROUP BY dialogue_id,"
                        " turn_index")
    assert len(per_turn) == n_turns and {c for (c,) in per_turn} == {1}
    assert rows(db, "SELECT COUNT(*) FROM annotations WHERE is_final=1 AND kind='session'") == [(6,)]


def test_batch_api_needs_an_openai_model(tmp_path: Path) -> None:
    input = write_jsonl(tmp_path / "in.jsonl", [dialogue("d0", 2)])
    result = CliRunner().invoke(app, ["run", str(input), "--model", "local:smollm2-135m", "--db",
                                      str(tmp_path / "r.db"), "--batch-api"])
    assert isinstance(result.exception, ConfigError) and "--batch-api needs an openai: model" in str(result.exception)
