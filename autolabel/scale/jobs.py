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
from collections.abc import AsyncIterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autolabel.annotator import Annotator
from autolabel.errors import BudgetExceeded, ConfigError, InputError
from autolabel.models import Dialogue, RunSummary
from autolabel.persistence.jobs import DEFAULT_LEASE, JobQueue
from autolabel.persistence.store import Store
from autolabel.readers import collect_errors, read_dialogues
from autolabel.settings import Settings
from autolabel.tasks import TaskSpec, load_task

log = logging.getLogger(__name__)




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


# -- the API the CLI calls ------------------------------------------------------------------------------------------

def enqueue(input: str | Path, *, db: str, task: TaskSpec | str | Path, model: str | None = None,
            settings: Settings | None = None, on_invalid: str = "skip", **overrides: Any) -> EnqueueResult:
    """Create the run of this configuration over ``input`` and queue its dialogues for workers.

    The run id is the one ``Annotator(task, model, ...).run(input)`` would use, so output parameters given here
    (``critique``, ``samples``, ``window``...) are the run's: workers read them from the run."""
    annotator = Annotator(task, model, db=db, settings=settings, **overrides)
    input_name = str(Path(input).resolve())
    errors: list[InputError] = []
    on_error = collect_errors(on_invalid, errors)

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
