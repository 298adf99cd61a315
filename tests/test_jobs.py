"""Scale-out: ``Annotator.run`` on PostgreSQL (LangGraph's Postgres checkpointer), the job queue's leases on both
engines, the heartbeat that keeps a slow dialogue's lease, workers restricted to a task and model,
``autolabel enqueue``/``autolabel worker`` end to end, and three worker processes against PostgreSQL and the scripted
server with one of them SIGKILLed mid-way."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from autolabel import Annotator, ConfigError, read_dialogues
from autolabel.cli import app
from autolabel.persistence.checkpoints import CHECKPOINT_SETUP_LOCK
from autolabel.persistence.store import Store, engine_url
from autolabel.scale.jobs import JobQueue, enqueue, work
from tests.conftest import dialogue, write_jsonl
from tests.fake_openai import FakeOpenAIServer
from tests.pg import Cluster, engine_fixture, free_port, new_db_fixture, pg_fixture  # noqa: F401  (fixtures)


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def rows(db: str, sql: str) -> list[tuple]:
    eng = create_engine(engine_url(db))
    try:
        with eng.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql))]
    finally:
        eng.dispose()


def assert_every_turn_once(db: str, input: Path) -> None:
    dialogues = list(read_dialogues(input))
    n_turns = sum(len(d.turns) for d in dialogues)
    per_turn = rows(db, "SELECT COUNT(*) FROM annotations WHERE is_final=1 AND kind='turn'"
                        " GROUP BY dialogue_id, turn_index")
    assert len(per_turn) == n_turns and {c for (c,) in per_turn} == {1}
    assert rows(db, "SELECT COUNT(*) FROM annotations WHERE is_final=1 AND kind='session'") == [(len(dialogues),)]
    assert rows(db, "SELECT COUNT(*) FROM turns") == [(n_turns,)]
    assert rows(db, "SELECT status, COUNT(*) FROM dialogues GROUP BY status") == [("done", len(dialogues))]


def test_annotator_runs_on_postgresql_with_its_checkpointer(pg: Cluster, server: FakeOpenAIServer,
                                                             small_input: Path) -> None:
    db = pg.database()
    annotator = Annotator("psy-insight", model="openai:test", base_url=server.base_url, db=db)
    summary = annotator.run(small_input)
    assert summary.dialogues == 5 and summary.calls > 0
    assert_every_turn_once(db, small_input)
    assert rows(db, "SELECT COUNT(*) FROM checkpoint_migrations")[0][0] > 0, "LangGraph's Postgres checkpointer"
    assert rows(db, "SELECT COUNT(*) FROM checkpoints") == [(0,)], "finished threads are deleted"
    sent = len(server.requests)
    again = annotator.run(small_input)
    assert again.skipped_dialogues == 5 and len(server.requests) == sent


def test_leases_claim_expire_renew_and_release(new_db: str, tmp_path: Path) -> None:
    store = Store.open(new_db)
    clock = Clock()
    queue = JobQueue(store, clock=clock)
    store.start_run("r", task_name="t", task_version="1", task_hash="h", task_json="{}", model="m", params={},
                    params_hash="p", input=None)
    assert queue.enqueue("r", [dialogue(f"d{i}", 2) for i in range(3)]) == (3, 0)
    assert queue.enqueue("r", [dialogue("d0", 2), dialogue("d3", 2)]) == (1, 1)
    a = queue.claim("r", "w1", lease_seconds=10)
    b = queue.claim("r", "w2", lease_seconds=10)
    assert a is not None and b is not None and a.id != b.id and a.turns == dialogue(a.id, 2).turns
    assert queue.counts("r") == {"pending": 2, "running": 2, "done": 0}
    clock.t += 8
    assert queue.heartbeat("w1", lease_seconds=10) == 1  # w1 renews, w2 does not
    clock.t += 5
    taken = [queue.claim("r", "w3", lease_seconds=10) for _ in range(3)]
    assert taken[0] is not None and taken[0].id == b.id, "a lapsed lease is taken over first"
    assert {d.id for d in taken if d} == {"d0", "d1", "d2", "d3"} - {a.id}
    assert queue.claim("r", "w3") is None, "a live lease is never taken"
    assert queue.release("w3") == 3 and queue.counts("r") == {"pending": 3, "running": 1, "done": 0}
    assert queue.runs_with_work() == ["r"]


def test_the_heartbeat_keeps_a_dialogue_that_outlasts_its_lease(new_db: str, tmp_path: Path) -> None:
    """One dialogue takes many times the worker's lease (slow endpoint, one call at a time); a second worker tries
    to take it every 50 ms all along and never gets it, because the heartbeat keeps pushing the lease ahead."""
    input = write_jsonl(tmp_path / "one.jsonl", [dialogue("slow", 4)])
    run_id = enqueue(input, db=new_db, task="psy-insight", model="openai:test").run_id
    lease = 0.9
    store = Store.open(new_db)
    thief = JobQueue(store)
    stolen, expiries, failures = [], [], []
    with FakeOpenAIServer(latency=0.4) as srv:
        def labeler() -> None:
            try:
                work(new_db, base_url=srv.base_url, concurrency=1, lease_seconds=lease, worker_id="slow-worker")
            except BaseException as e:  # reported below
                failures.append(e)

        worker = threading.Thread(target=labeler)
        worker.start()
        while worker.is_alive():
            row = store._rows("SELECT worker, lease_expires FROM dialogues WHERE status='running'")
            if row:  # the worker holds it: from now on, try to take it over
                expiries.append((row[0][0], row[0][1] - time.time(), row[0][1]))
                if (got := thief.claim(run_id, "thief", lease_seconds=lease)) is not None:
                    stolen.append(got.id)
            time.sleep(0.05)
        worker.join()
    store.close()
    assert not failures, failures
    assert stolen == [], "a live worker's dialogue was taken over"
    renewed = len({expires for _, _, expires in expiries}) - 1  # a count, not a clock: a busy machine samples less
    assert renewed >= 3, f"the lease was renewed {renewed} times: too short a hold to need a heartbeat"
    assert {w for w, _, _ in expiries} == {"slow-worker"} and all(left > 0 for _, left, _ in expiries), expiries
    assert_every_turn_once(new_db, input)


def test_a_worker_takes_only_runs_of_its_task_and_model(new_db: str, small_input: Path,
                                                         server: FakeOpenAIServer) -> None:
    mine = enqueue(small_input, db=new_db, task="psy-insight", model="openai:test").run_id
    other = enqueue(small_input, db=new_db, task="psy-insight", model="openai:other").run_id
    assert mine != other
    assert work(new_db, model="openai:nobody", base_url=server.base_url).runs == []
    assert work(new_db, task="support-strategy", base_url=server.base_url).runs == []
    did = work(new_db, task="psy-insight", model="openai:test", base_url=server.base_url)
    assert [r.run_id for r in did.runs] == [mine] and did.dialogues == 5
    with closing(Store.open(new_db)) as store:
        queue = JobQueue(store)
        assert queue.counts(mine) == {"pending": 0, "running": 0, "done": 5}
        assert queue.counts(other) == {"pending": 5, "running": 0, "done": 0}, "the other model's run is untouched"
    with pytest.raises(ConfigError, match="labels with model openai:other, not openai:test"):
        work(new_db, run_id=other, model="openai:test", base_url=server.base_url)
    with pytest.raises(ConfigError, match="labels with task psy-insight"):
        work(new_db, run_id=other, task="support-strategy", base_url=server.base_url)


def test_enqueue_and_worker_commands(new_db: str, small_input: Path, server: FakeOpenAIServer) -> None:
    runner = CliRunner()
    queued = runner.invoke(app, ["enqueue", str(small_input), "--db", new_db, "--task", "psy-insight", "--model",
                                 "openai:test"])
    assert queued.exit_code == 0, queued.output
    run_id = Annotator("psy-insight", model="openai:test").run_id(str(small_input.resolve()))
    assert f"run {run_id}: 5 dialogue(s) queued, 0 already in the run" in queued.output
    worked = runner.invoke(app, ["worker", "--db", new_db, "--base-url", server.base_url, "--lease-seconds", "5"])
    assert worked.exit_code == 0, worked.output
    assert "5 dialogue(s)" in worked.output and "dialogues" in worked.output
    assert_every_turn_once(new_db, small_input)
    assert rows(new_db, f"SELECT status FROM runs WHERE id='{run_id}'") == [("finished",)]
    again = runner.invoke(app, ["worker", "--db", new_db])
    assert again.exit_code == 0 and "no queued work" in again.output
    requeued = enqueue(small_input, db=new_db, task="psy-insight", model="openai:test")
    assert (requeued.run_id, requeued.added, requeued.existing) == (run_id, 0, 5)
    assert work(new_db, base_url=server.base_url).runs == []


def _worker(db: str, base_url: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "autolabel", "worker", "--db", db, "--base-url", base_url, "--lease-seconds", "2",
           "--concurrency", "2"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "CI": "1"})


def test_three_workers_one_killed_every_turn_exactly_once(pg: Cluster, tmp_path: Path) -> None:
    input = write_jsonl(tmp_path / "in.jsonl", [dialogue(f"d{i:02d}", 4 + i % 3) for i in range(20)])
    db = pg.database()
    assert enqueue(input, db=db, task="psy-insight", model="openai:test").added == 20
    with FakeOpenAIServer(latency=0.05) as srv:
        workers = [_worker(db, srv.base_url) for _ in range(3)]
        victim = workers[0]
        ids = [f"{socket.gethostname()}:{w.pid}" for w in workers]
        victim_id = ids[0]
        held: list[tuple] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and victim.poll() is None:
            # kill the victim once every worker has claimed work and the victim has finished one and holds another
            claimed = {w for (w,) in rows(db, "SELECT DISTINCT worker FROM dialogues WHERE worker IS NOT NULL")}
            finished = rows(db, f"SELECT COUNT(*) FROM dialogues WHERE status='done' AND worker='{victim_id}'")
            held = rows(db, f"SELECT dialogue_id FROM dialogues WHERE status='running' AND worker='{victim_id}'")
            if claimed == set(ids) and finished[0][0] >= 1 and held:
                break
            time.sleep(0.05)
        assert victim.poll() is None and held, "the victim was working when killed"
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        for w in workers[1:]:
            out, err = w.communicate(timeout=120)
            assert w.returncode == 0, err.decode()[-2000:]
    assert_every_turn_once(db, input)
    finishers = dict(rows(db, "SELECT dialogue_id, worker FROM dialogues"))
    assert all(finishers[d] != victim_id for (d,) in held), "the killed worker's dialogues were finished by others"
    assert len(set(finishers.values())) == 3, "all three workers labeled dialogues"
    assert rows(db, "SELECT status FROM runs") == [("finished",)]


def _work_when_told(db: str, base_url: str, go: Any, out: Any) -> None:
    go.wait()
    out.put(work(db, base_url=base_url, concurrency=2).dialogues)


def test_workers_starting_at_the_same_moment_on_a_fresh_database(pg: Cluster, tmp_path: Path) -> None:
    """Workers that wait for each other to set up LangGraph's tables (whose setup builds an index CONCURRENTLY,
    which waits for every older snapshot) do not wait forever: here all three are made to wait at once."""
    input = write_jsonl(tmp_path / "in.jsonl", [dialogue(f"d{i}", 2) for i in range(8)])
    db = pg.database()
    enqueue(input, db=db, task="psy-insight", model="openai:test")
    port = free_port()
    ctx = mp.get_context("fork")  # forked before the server's thread starts
    go, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_work_when_told, args=(db, f"http://127.0.0.1:{port}/v1", go, out))
             for _ in range(3)]
    for p in procs:
        p.start()
    with FakeOpenAIServer(port=port, latency=0.05), psycopg.connect(db, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (CHECKPOINT_SETUP_LOCK,))
        go.set()
        time.sleep(3)  # every worker is now waiting for the setup lock
        holder.execute("SELECT pg_advisory_unlock(%s)", (CHECKPOINT_SETUP_LOCK,))
        done = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert sum(done) == 8
    assert_every_turn_once(db, input)


def test_a_worker_that_joins_mid_run_takes_only_what_is_left(new_db: str, tmp_path: Path) -> None:
    """No head node and no registration: a worker started while another is mid-run claims only dialogues nobody
    holds, and the run finishes with every turn once (what the job queue keeps beside Ray: workers join freely)."""
    input = write_jsonl(tmp_path / "in.jsonl", [dialogue(f"d{i}", 4) for i in range(6)])
    run_id = enqueue(input, db=new_db, task="psy-insight", model="openai:test").run_id
    did: dict[str, Any] = {}
    with FakeOpenAIServer(latency=0.3) as srv:
        def first() -> None:
            did["first"] = work(new_db, base_url=srv.base_url, concurrency=1, worker_id="first")

        worker = threading.Thread(target=first)
        worker.start()
        while worker.is_alive() and not rows(new_db, "SELECT 1 FROM dialogues WHERE status='done'"):
            time.sleep(0.05)
        assert worker.is_alive(), "the first worker was still working when the second joined"
        did["late"] = work(new_db, base_url=srv.base_url, concurrency=1, worker_id="late")
        worker.join()
    assert did["late"].dialogues >= 1 and did["first"].dialogues + did["late"].dialogues == 6
    assert {w for (w,) in rows(new_db, "SELECT DISTINCT worker FROM dialogues")} == {"first", "late"}
    assert_every_turn_once(new_db, input)
    assert rows(new_db, f"SELECT status FROM runs WHERE id='{run_id}'") == [("finished",)]
