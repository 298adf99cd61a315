"""The workflow in LangGraph's own tooling: the per-turn steps are nodes of a subgraph (``get_graph(xray=True)``), and
the module-level graph runs a dialogue end to end from a plain configuration (task, model, base URL, database), as
``langgraph dev`` and the server API hand it; then ``langgraph dev`` itself, when its in-memory server is installed."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from autolabel.graphs.annotate.graph import graph

from tests.conftest import dialogue
from tests.fake_openai import FakeOpenAIServer

REPO = Path(__file__).resolve().parents[1]
STEPS = {"label", "critique", "validate", "score", "route", "label_windows", "critique_windows"}


def as_json(n: int, did: str) -> dict[str, Any]:
    d = dialogue(did, n)
    return {"id": d.id, "turns": [{"speaker": t.speaker, "text": t.text} for t in d.turns]}


def final_records(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        return [json.loads(r) for (r,) in conn.execute("SELECT record_json FROM annotations WHERE is_final=1")]


def test_xray_shows_each_step_of_a_turn_and_the_windowed_path() -> None:
    nodes = set(graph.get_graph(xray=True).nodes)
    assert {f"annotate_turns:{s}" for s in STEPS} <= nodes
    assert {"prepare", "session", "finalize"} <= nodes


def test_the_graph_runs_a_dialogue_from_a_configuration(server: FakeOpenAIServer, tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    configuration = {"task": "psy-insight", "model": "openai:test-model", "base_url": server.base_url, "db": str(db)}
    out = asyncio.run(graph.ainvoke({"dialogue": as_json(4, "cfg")}, context=configuration))
    assert out["language"] == "en" and out["session"] is not None
    records = final_records(db)
    assert sorted(r.get("turn_index", -1) for r in records) == [-1, 0, 1, 2, 3]  # four turns and the session
    assert {r["model"] for r in records} == {"openai:test-model"}
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT status FROM runs").fetchall() == [("finished",)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _langgraph() -> str:
    exe = shutil.which("langgraph") or str(Path(sys.executable).with_name("langgraph"))
    try:
        import langgraph_api  # noqa: F401
        import langgraph_runtime_inmem  # noqa: F401
    except ImportError:
        pytest.skip("langgraph dev needs langgraph-cli[inmem]")
    return exe


def test_langgraph_dev_runs_a_dialogue_with_the_assistants_configuration(server: FakeOpenAIServer,
                                                                          tmp_path: Path) -> None:
    exe = _langgraph()
    db = tmp_path / "runs.db"
    port = _free_port()
    log = (tmp_path / "dev.log").open("w")
    proc = subprocess.Popen([exe, "dev", "--allow-blocking", "--port", str(port), "--no-browser",
                             "--no-reload"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "LANGSMITH_TRACING": "false", "LANGGRAPH_CLI_NO_ANALYTICS": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=120) as client:
            for _ in range(240):
                try:
                    if client.get("/ok").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
            else:
                pytest.fail(f"langgraph dev did not start:\n{(tmp_path / 'dev.log').read_text()[-3000:]}")
            context = {"task": "psy-insight", "model": "openai:test-model", "base_url": server.base_url,
                       "db": str(db)}
            assistant = client.post("/assistants", json={"graph_id": "annotate", "context": context}).json()
            thread = client.post("/threads", json={}).json()
            run = client.post(f"/threads/{thread['thread_id']}/runs/wait",
                              json={"assistant_id": assistant["assistant_id"],
                                    "input": {"dialogue": as_json(4, "dev")}})
            assert run.status_code == 200, run.text
            assert run.json().get("language") == "en", run.text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    records = final_records(db)
    assert sorted(r.get("turn_index", -1) for r in records) == [-1, 0, 1, 2, 3]
