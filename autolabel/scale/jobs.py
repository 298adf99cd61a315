"""The job queue: ``autolabel enqueue`` loads a job, any number of ``autolabel worker`` processes label it.

    enqueue("sessions.jsonl", db="postgresql://host/labels", task="psy-insight", model="openai:gpt-4o-mini")
    work("postgresql://host/labels", base_url=...)       # on as many machines as you like
    work(db, task="psy-insight", model="openai:gpt-4o-mini", base_url=...)   # only runs of that task and model

``enqueue`` creates the run (the same id ``Annotator.run`` would give it) and stores every dialogue, with its
content, as ``pending``. A worker claims one dialogue at a time: it becomes ``running`` under the worker's lease
(``worker``, ``lease_expires``), and a heartbeat renews the leases of everything the worker holds while it works.
The claimed dialogues go through the same graph as ``Annotator.run`` (checkpoints in the same database), and the
result is stored only while the worker still holds the lease: a worker that stalled past its lease and was taken
over cannot overwrite the newer result (``LeaseLost``). A killed worker's dialogues are claimed again once their
lease has expired and resume from their last checkpoint. A worker exits when its run has nothing pending or
running left.

Claims lock what they take: PostgreSQL ``SELECT ... FOR UPDATE SKIP LOCKED`` (workers never wait for each other),
SQLite ``BEGIN IMMEDIATE`` (one writer at a time; several workers on one machine).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import SQLAlchemyError

from autolabel.annotator import Annotator
from autolabel.errors import BudgetExceeded, ConfigError, InputError, StoreError
from autolabel.models import Dialogue, RunSummary
from autolabel.persistence.store import Store, now
from autolabel.readers import read_dialogues
from autolabel.settings import Settings
from autolabel.tasks import TaskSpec, load_task

log = logging.getLogger(__name__)

DEFAULT_LEASE = 60.0

# Per dialect: how a claim transaction takes its locks (as in the review queue)
_BEGIN = {"sqlite": ("BEGIN IMMEDIATE",)}
_SKIP_LOCKED = {"postgresql": " FOR UPDATE SKIP LOCKED"}


@dataclass
class EnqueueResult:
    """What ``enqueue`` did: the run and how many dialogues it added (``existing`` were queued before)."""

    run_id: str
    added: int = 0
    existing: int = 0
    input_errors: list[InputError] = field(default_factory=list)


@dataclass
class WorkResult:
    """What one worker did: its id, and per run the summary of the dialogues it labeled."""

    worker: str
    runs: list[RunSummary] = field(default_factory=list)

    @property
    def dialogues(self) -> int:
        return sum(r.dialogues for r in self.runs)

    @property
    def turns(self) -> int:
        return sum(r.turns for r in self.runs)


class JobQueue:
    """The dialogues of queued runs in one store, with leases. ``clock`` is injectable for lease tests."""

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def enqueue(self, run_id: str, dialogues: Iterator[Dialogue] | list[Dialogue], *, chunk: int = 500
                ) -> tuple[int, int]:
        """Add dialogues to a run as ``pending`` (a dialogue already in the run is left as it is).
        Returns (added, existing)."""
        with self.store.engine.connect() as conn:
            known = {r[0] for r in conn.execute(text("SELECT dialogue_id FROM dialogues WHERE run_id=:r"),
                                                {"r": run_id})}
        added = existing = 0
        batch: list[Dialogue] = []

        def flush() -> None:
            t = now()
            with self._tx() as conn:
                conn.execute(text("INSERT INTO dialogues (run_id, dialogue_id, language, n_turns, status, meta_json,"
                                  " source, updated_at) VALUES (:r, :d, '', :n, 'pending', :m, :s, :t)"
                                  " ON CONFLICT (run_id, dialogue_id) DO NOTHING"),
                             [{"r": run_id, "d": d.id, "n": len(d.turns), "s": d.source, "t": t,
                               "m": json.dumps(d.meta, ensure_ascii=False, default=str)} for d in batch])
                conn.execute(text("INSERT INTO job_dialogues (run_id, dialogue_id, dialogue_json, created_at)"
                                  " VALUES (:r, :d, :j, :t) ON CONFLICT (run_id, dialogue_id) DO NOTHING"),
                             [{"r": run_id, "d": d.id, "j": d.model_dump_json(), "t": t} for d in batch])
            batch.clear()

        for d in dialogues:
            if d.id in known:
                existing += 1
                continue
            known.add(d.id)
            batch.append(d)
            added += 1
            if len(batch) >= chunk:
                flush()
        if batch:
            flush()
        return added, existing

    def claim(self, run_id: str, worker: str, lease_seconds: float = DEFAULT_LEASE) -> Dialogue | None:
        """Lease the next dialogue of the run: one whose lease expired first, else a pending one."""
        with self._tx() as conn:
            t = self.clock()
            lock = _SKIP_LOCKED.get(conn.dialect.name, "")
            row = None
            for where in ("d.status='running' AND d.lease_expires < :now", "d.status='pending'"):
                row = conn.execute(text(
                    "SELECT d.dialogue_id FROM dialogues d WHERE d.run_id=:r AND " + where
                    + " AND EXISTS (SELECT 1 FROM job_dialogues j WHERE j.run_id=d.run_id AND"
                    " j.dialogue_id=d.dialogue_id) LIMIT 1" + lock), {"r": run_id, "now": t}).first()
                if row is not None:
                    break
            if row is None:
                return None
            key = {"r": run_id, "d": row[0]}
            conn.execute(text("UPDATE dialogues SET status='running', worker=:w, lease_expires=:e, updated_at=:t"
                              " WHERE run_id=:r AND dialogue_id=:d"),
                         {**key, "w": worker, "e": t + lease_seconds, "t": now()})
            content = conn.execute(text("SELECT dialogue_json FROM job_dialogues WHERE run_id=:r AND"
                                        " dialogue_id=:d"), key).scalar_one()
        return Dialogue.model_validate_json(content)

    def heartbeat(self, worker: str, lease_seconds: float = DEFAULT_LEASE) -> int:
        """Renew the lease of every dialogue this worker holds. Returns how many it holds."""
        with self._tx() as conn:
            return conn.execute(text("UPDATE dialogues SET lease_expires=:e WHERE worker=:w AND status='running'"),
                                {"w": worker, "e": self.clock() + lease_seconds}).rowcount

    def release(self, worker: str) -> int:
        """Give back every dialogue this worker holds (it stops early): others may claim them at once."""
        with self._tx() as conn:
            return conn.execute(text("UPDATE dialogues SET status='pending', worker=NULL, lease_expires=NULL,"
                                     " updated_at=:t WHERE worker=:w AND status='running'"),
                                {"w": worker, "t": now()}).rowcount

    def counts(self, run_id: str) -> dict[str, int]:
        """Queued dialogues of the run by status (pending, running, done)."""
        with self.store.engine.connect() as conn:
            rows = conn.execute(text("SELECT d.status, COUNT(*) FROM dialogues d JOIN job_dialogues j ON"
                                     " j.run_id=d.run_id AND j.dialogue_id=d.dialogue_id WHERE d.run_id=:r"
                                     " GROUP BY d.status"), {"r": run_id}).all()
        return {"pending": 0, "running": 0, "done": 0, **{s: int(n) for s, n in rows}}

    def runs_with_work(self, *, task_hash: str | None = None, model: str | None = None) -> list[str]:
        """Runs with queued dialogues not done yet, oldest first; optionally only those of one task spec (by its
        hash) and one model."""
        only = "".join(f" AND r.{column}=:{column}" for column, v in (("task_hash", task_hash), ("model", model))
                       if v is not None)
        with self.store.engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT r.id FROM runs r WHERE EXISTS (SELECT 1 FROM dialogues d JOIN job_dialogues j ON"
                " j.run_id=d.run_id AND j.dialogue_id=d.dialogue_id WHERE d.run_id=r.id AND d.status IN"
                f" ('pending', 'running')){only} ORDER BY r.created_at, r.id"),
                {"task_hash": task_hash, "model": model}).all()
        return [r[0] for r in rows]

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        try:
            with self.store.engine.connect() as conn, conn.begin():
                for sql in _BEGIN.get(conn.dialect.name, ()):
                    conn.exec_driver_sql(sql)
                yield conn
        except SQLAlchemyError as e:
            detail = str(getattr(e, "orig", None) or e).splitlines()[0]
            raise StoreError(f"cannot write to {self.store.db}: {detail}") from None


# -- the API the CLI calls ------------------------------------------------------------------------------------------

def enqueue(input: str | Path, *, db: str, task: TaskSpec | str | Path, model: str | None = None,
            settings: Settings | None = None, on_invalid: str = "skip", **overrides: Any) -> EnqueueResult:
    """Create the run of this configuration over ``input`` and queue its dialogues for workers.

    The run id is the one ``Annotator(task, model, ...).run(input)`` would use, so output parameters given here
    (``critique``, ``samples``, ``window``...) are the run's: workers read them from the run."""
    annotator = Annotator(task, model, db=db, settings=settings, **overrides)
    input_name = str(Path(input).resolve())
    errors: list[InputError] = []

    def on_error(e: InputError) -> None:
        if on_invalid == "fail":
            raise e
        errors.append(e)

    with closing(Store.open(db)) as store:
        run_id = annotator.start_run(store, input_name)
        added, existing = JobQueue(store).enqueue(run_id, read_dialogues(input, on_error=on_error))
    return EnqueueResult(run_id, added, existing, errors)


def work(db: str, *, run_id: str | None = None, task: TaskSpec | str | Path | None = None, model: str | None = None,
         settings: Settings | None = None, lease_seconds: float = DEFAULT_LEASE, worker_id: str | None = None,
         **overrides: Any) -> WorkResult:
    """Label queued dialogues until the run (``run_id``; default every run with queued work) has none left.

    ``task`` (a built-in name or a spec file) and ``model`` restrict the worker to runs of that task spec and model
    (a ``run_id`` that is not is refused). ``settings``/``overrides`` say how to reach the model (``base_url``,
    ``api_key_env``, ``concurrency``...); the task, model and output parameters are the run's own."""
    return asyncio.run(awork(db, run_id=run_id, task=task, model=model, settings=settings,
                             lease_seconds=lease_seconds, worker_id=worker_id, **overrides))


async def awork(db: str, *, run_id: str | None = None, task: TaskSpec | str | Path | None = None,
                model: str | None = None, settings: Settings | None = None, lease_seconds: float = DEFAULT_LEASE,
                worker_id: str | None = None, **overrides: Any) -> WorkResult:
    """``work`` from async code."""
    worker = worker_id or f"{socket.gethostname()}:{os.getpid()}"
    result = WorkResult(worker)
    spec = task if isinstance(task, TaskSpec) else load_task(task) if task is not None else None
    task_hash = spec.spec_hash if spec is not None else None
    with closing(Store.open(db)) as store:
        queue = JobQueue(store)
        if run_id:
            _check_run(store.run(run_id), spec, model)
        runs = [run_id] if run_id else queue.runs_with_work(task_hash=task_hash, model=model)
        for rid in runs:
            result.runs.append(await _work_run(queue, store.run(rid), db, settings, lease_seconds, worker,
                                               overrides))
    return result


async def _work_run(queue: JobQueue, run: dict[str, Any], db: str, settings: Settings | None,
                    lease_seconds: float, worker: str, overrides: dict[str, Any]) -> RunSummary:
    annotator = _annotator_for(run, db, settings, overrides)
    summary = RunSummary(run_id=run["id"], db=db)
    beat = asyncio.create_task(_heartbeat(queue, worker, lease_seconds))
    try:
        claims = _claims(queue, run["id"], worker, lease_seconds)
        async for _ in annotator.aannotate_many(claims, input_name=run["input"], summary=summary,
                                                lease_owner=worker):
            pass
    except BudgetExceeded:
        pass  # summary.stopped_reason says so; what this worker holds goes back to the queue below
    finally:
        beat.cancel()
        await asyncio.gather(beat, return_exceptions=True)
        released = await asyncio.to_thread(queue.release, worker)  # only after an error or a budget stop
        if released:
            log.warning("%s gave back %d dialogue(s) of run %s", worker, released, run["id"])
    counts = await asyncio.to_thread(queue.counts, run["id"])
    if counts["pending"] == counts["running"] == 0:  # the last worker out finishes the run
        totals = await asyncio.to_thread(queue.store.counts, run["id"])
        await asyncio.to_thread(queue.store.finish_run, run["id"], "finished", {"queue": counts, **totals})
    return summary


def _check_run(run: dict[str, Any], task: TaskSpec | None, model: str | None) -> None:
    if task is not None and run["task_hash"] != task.spec_hash:
        raise ConfigError(f"run {run['id']} labels with task {run['task_name']} (spec {run['task_hash'][:12]}),"
                          f" not {task.name} (spec {task.spec_hash[:12]})")
    if model is not None and run["model"] != model:
        raise ConfigError(f"run {run['id']} labels with model {run['model']}, not {model}")


def _annotator_for(run: dict[str, Any], db: str, settings: Settings | None, overrides: dict[str, Any]) -> Annotator:
    """The run's own configuration (task, model, output parameters) with this worker's way to reach the model."""
    params = {"turns_per_call": 1, **json.loads(run["params_json"]), **overrides}  # not stored when 1
    annotator = Annotator(TaskSpec.model_validate_json(run["task_json"]), run["model"], db=db, settings=settings,
                          **params)
    if annotator.run_id(run["input"]) != run["id"]:
        raise ConfigError(f"run {run['id']} cannot be rebuilt from its stored configuration (task or parameters "
                          "differ): was it made by another autolabel version?")
    return annotator


async def _claims(queue: JobQueue, run_id: str, worker: str, lease_seconds: float) -> AsyncIterator[Dialogue]:
    """Dialogues claimed one at a time; while others hold the rest, wait for them to finish or for a lease to lapse."""
    poll = min(1.0, lease_seconds / 4)
    while True:
        d = await asyncio.to_thread(queue.claim, run_id, worker, lease_seconds)
        if d is not None:
            yield d
            continue
        counts = await asyncio.to_thread(queue.counts, run_id)
        if counts["pending"] == counts["running"] == 0:
            return
        await asyncio.sleep(poll)


async def _heartbeat(queue: JobQueue, worker: str, lease_seconds: float) -> None:
    while True:
        await asyncio.sleep(lease_seconds / 3)
        await asyncio.to_thread(queue.heartbeat, worker, lease_seconds)
