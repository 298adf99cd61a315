"""One run spread over a Ray cluster: ``RayAnnotator(...).run(input)`` and ``autolabel run INPUT --ray [ADDRESS]``.

    RayAnnotator("psy-insight", model="openai:gpt-4o-mini", db="postgresql://db/labels",
                 address="10.0.0.1:6379").run("sessions.jsonl")      # address None: a local Ray instance

The driver streams the input (``read_dialogues``) in batches to labeler actors and shows the whole run's progress.
The primitives, and why:

- **One long-lived actor per worker (``Labeler``), not a task per batch.** An actor holds one ``Annotator`` run
  open for its whole life: one LLM client (its HTTP pools), one store and checkpointer connection, and for
  ``local:`` models one loaded model, loaded once per actor (default: one actor per node, ``SPREAD``). A task per
  batch would load the model and open the connections again for every batch. The actor is an asyncio actor: the
  batches it was given share its ``concurrency`` dialogue slots in one ``aannotate_many``.
- **Backpressure by bounding the batches in flight** (``DEPTH`` per actor, ``ray.wait``-style on the driver): the
  reader is pulled only when a batch comes back, so the driver holds at most ``workers × DEPTH`` batches, whatever
  the input's size. Ray Data would stream too, but it needs pyarrow and pandas on every node, owns retries per
  block rather than per dialogue, and has no place for a run-wide limiter; the run's unit is a dialogue with a
  checkpoint, which plain actors serve directly.
- **A shared limits actor (``Limits``)** holds the run's one ``AdaptiveLimit`` (``--concurrency`` LLM calls in
  flight across the cluster, halved by any worker's 429: back-off is cluster-wide) and its one ``Budget``
  (``--max-cost`` for the whole run). Each labeler's client uses it instead of its own (``Annotator.shared_limits``).
  What a dead labeler held is given back when Ray restarts it (``reset``; a reservation it held counts as spent at
  its worst case: the budget never passes ``--max-cost``).

Exactly once under Ray's failure model: a labeler is restarted by Ray when its process or node dies
(``max_restarts``) and the batch it held is sent again (``max_task_retries``). The retried batch goes through the
same ``Annotator`` path as any resume: a dialogue already ``done`` in the store is read back, not redone (nothing is
written again); one that was running resumes from its LangGraph checkpoint in the shared database; every call already
answered comes from the call cache. Only calls that were in flight when the worker died are sent again. The final
write is guarded: each incarnation of a labeler claims a dialogue with its own token as it starts it
(``persistence.attempts``) and stores it only while that token is still the dialogue's (checked in the write's own
transaction), so an incarnation Ray declared dead that still finishes later (a stalled process, a node cut off) writes
nothing over the result of the one that took its batch over, and a dialogue already done is never claimed again. The
store and checkpointer must be PostgreSQL on a cluster (SQLite only with a local instance, whose workers share the
machine).

Modules: this one is the driver (``RayAnnotator``); ``ray_labeler`` the worker actor, ``ray_limits`` the shared
limits actor, ``ray_cluster`` joining the cluster and the checks made before anything is written.

Failures a user meets are one-line ``ConfigError`` (exit 2), raised before anything is written: no Ray installed, an
unreachable or wrong address, a node without autolabel (or another version), a node without the embedded model's
packages, SQLite with a cluster address.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from autolabel.annotator import Annotator, Progress
from autolabel.errors import AutolabelError, ConfigError, InputError
from autolabel.models import Dialogue, RunSummary
from autolabel.persistence.store import Store, is_postgres
from autolabel.readers import collect_errors, read_dialogues
from autolabel.scale.ray_cluster import check_nodes, connect, first_line, import_ray
from autolabel.scale.ray_labeler import BatchDone, Labeler
from autolabel.scale.ray_limits import Limits
from autolabel.settings import Settings
from autolabel.tasks import TaskSpec

if TYPE_CHECKING:
    from autolabel.annotator import RunState

LOCAL = "local"
"""``--ray`` without an address: a Ray instance on this machine, started for the run and stopped after it."""
DEPTH = 2
"""Batches in flight per labeler: one being labeled, one waiting, so a labeler never idles on the driver."""
RESTARTS = 3
"""Restarts of a labeler whose process or node died (each resumes from the checkpoints); then the run stops."""


@dataclass
class _DriverView:
    """What a ``progress`` callback of a Ray run gets as its state: the whole run's summary (the driver has no
    graph or client of its own)."""

    run_id: str
    summary: RunSummary
    started: float


class RayAnnotator(Annotator):
    """An ``Annotator`` whose ``run``/``arun`` spread the run over a Ray cluster (see the module docstring).

    ``address``: ``None`` (or ``"local"``) starts a Ray instance on this machine for the run; ``"auto"`` joins the one
    running here (``ray start``); ``host:port`` a cluster's head (GCS, port 6379); ``ray://host:10001`` through Ray
    Client. ``workers``: labeler actors (default one per node). ``num_cpus``: CPUs of a local instance.
    ``runtime_env``: Ray's runtime environment for the run's job. The other arguments are ``Annotator``'s."""

    def __init__(self, task: TaskSpec | str | Path, model: str | None = None, *, db: str | Path | None = None,
                 settings: Settings | None = None, address: str | None = None, workers: int | None = None,
                 batch_size: int | None = None, num_cpus: int | None = None, cpus_per_worker: float = 1.0,
                 runtime_env: dict[str, Any] | None = None, **overrides: Any) -> None:
        super().__init__(task, model, db=db, settings=settings, **overrides)
        self.timings: dict[str, float] = {}
        """The last run's seconds: ``connect`` (Ray and the node checks), ``ready`` (until every worker's run was
        open: actors started, imports, client, store, graph), ``labeling`` (from then to the last dialogue)."""
        self.address = None if address in (None, "", LOCAL) else address
        self.workers, self.batch_size = workers, batch_size
        self.num_cpus, self.cpus_per_worker, self.runtime_env = num_cpus, cpus_per_worker, runtime_env
        if self.address is not None and not is_postgres(self.settings.db):
            raise ConfigError(f"--ray {self.address}: the cluster's workers need one shared database; give --db "
                              "postgresql://... (SQLite only with a local Ray instance: --ray without an address)")
        if not is_postgres(self.settings.db):  # a worker's current folder is not the driver's
            self.settings = self.settings.model_copy(update={"db": str(Path(self.settings.db).expanduser()
                                                                      .resolve())})

    async def arun(self, path: str | Path, *, on_invalid: str = "skip", progress: Progress | None = None,
                   errors: list[InputError] | None = None) -> RunSummary:
        errs = errors if errors is not None else []
        on_error = collect_errors(on_invalid, errs)

        input_name = str(Path(path).resolve())
        started = time.monotonic()
        ray = import_ray()
        ours = connect(ray, self.address, self.num_cpus, self.runtime_env)
        try:
            nodes = check_nodes(ray, self.runtime_env)
            run_id = self.run_id(input_name)  # recorded once every worker is known to run it: nothing written before
            view = _DriverView(run_id, RunSummary(run_id=run_id, db=self.settings.db), started)
            self.timings = {"connect": round(time.monotonic() - started, 3)}
            dialogues = read_dialogues(path, on_error=on_error)
            try:
                await self._drive(ray, dialogues, input_name, nodes, view, progress)
            finally:
                dialogues.close()
            view.summary.input_errors = len(errs)
            return view.summary
        finally:
            if ours:
                ray.shutdown()

    async def _drive(self, ray: Any, dialogues: Iterator[Dialogue], input_name: str, nodes: int,
                     view: _DriverView, progress: Progress | None) -> None:
        s, summary = self.settings, view.summary
        n = self.workers or nodes
        limits_name = f"autolabel-limits-{view.run_id}"
        limits = ray.remote(Limits).options(name=limits_name, num_cpus=0,
                                            max_concurrency=10_000).remote(s.concurrency, s.max_cost)
        labeler = ray.remote(Labeler)
        options = {"num_cpus": self.cpus_per_worker, "max_restarts": RESTARTS, "max_task_retries": -1,
                   "max_concurrency": 1000, "scheduling_strategy": "SPREAD",
                   "runtime_env": _worker_env(s, self.runtime_env)}
        settings_json = s.model_dump_json(exclude={"review_token"})
        actors = [labeler.options(name=f"autolabel-{view.run_id}-labeler-{i}", **options).remote(
            self.task.model_dump_json(), settings_json, input_name, f"labeler-{i}", limits_name) for i in range(n)]
        recorded = False
        try:
            try:
                problems = [w["problem"] for w in await asyncio.gather(*(a.where.remote() for a in actors))
                            if w["problem"]]
            except RuntimeError as e:  # Ray's "failed to import on the worker": autolabel there cannot load
                raise ConfigError(f"a Ray worker cannot load autolabel ({first_line(e)}): install the same "
                                  "autolabel on every node, with its extras") from None
            if problems:
                raise ConfigError(f"a Ray worker cannot run {s.model}: {problems[0]} (on every node of the cluster)")
            with closing(Store.open(s.db)) as store:
                self.start_run(store, input_name)
            recorded = True
            try:
                await asyncio.gather(*(a.open.remote() for a in actors))
            except ray.exceptions.RayTaskError as e:
                raise e.cause if isinstance(e.cause, AutolabelError) else e from None
            ready = time.monotonic()
            self.timings["ready"] = round(ready - view.started - self.timings["connect"], 3)
            size = self.batch_size or max(1, -(-s.concurrency // n))
            batches = _chunks(dialogues, size)
            running: dict[asyncio.Future[BatchDone], int] = {}
            load = [0] * n
            stopped = False
            while True:
                while not stopped and min(load) < DEPTH and (batch := next(batches, None)) is not None:
                    i = load.index(min(load))
                    running[asyncio.wrap_future(actors[i].label.remote(batch).future())] = i
                    load[i] += 1
                if not running:
                    break
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for f in done:
                    load[running.pop(f)] -= 1
                    result = _unwrap(ray, f)
                    stopped = stopped or bool(result.stopped)
                    self._add(view, result, progress)
            for counted in await asyncio.gather(*(a.close.remote() for a in actors)):
                _add_counted(summary, counted)
            status = await limits.status.remote()
            if s.max_cost is not None:
                summary.cost_usd = status["spent"]
            if stopped:
                summary.stopped_reason = "budget"
            summary.seconds = round(time.monotonic() - view.started, 3)
            self.timings["labeling"] = round(time.monotonic() - ready, 3)
        finally:
            for a in actors:
                ray.kill(a, no_restart=True)
            ray.kill(limits, no_restart=True)
            if recorded:
                with closing(Store.open(s.db)) as store:  # after every labeler: a run left open is "stopped"
                    store.finish_run(view.run_id, "stopped" if summary.stopped_reason or not summary.seconds
                                     else "finished", summary.model_dump())

    def _add(self, view: _DriverView, done: BatchDone, progress: Progress | None) -> None:
        s = view.summary
        _add_counted(s, done.counted)
        s.seconds = round(time.monotonic() - view.started, 3)
        for r in done.results:
            s.dialogues += 1
            s.turns += len(r.turns)
            for k, v in r.counts().items():
                setattr(s, k, getattr(s, k) + v)
            if progress:
                progress(r, cast("RunState", view))  # the whole run's numbers: ``view.summary``


def _add_counted(summary: RunSummary, counted: dict[str, float]) -> None:
    for k, v in counted.items():
        setattr(summary, k, type(getattr(summary, k))(getattr(summary, k) + v))


def _unwrap(ray: Any, f: asyncio.Future[BatchDone]) -> BatchDone:
    """A batch's answer; a labeler's error as the error it raised (one line), a labeler that kept dying as one."""
    try:
        return f.result()
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, AutolabelError):
            raise e.cause from None
        raise
    except ray.exceptions.RayActorError as e:
        raise ConfigError(f"a Ray worker died {RESTARTS + 1} times on the same batch ({first_line(e)}): the run is "
                          "stopped, finished dialogues are stored; see `ray logs` on its node, then run again to "
                          "resume") from None


def _chunks(dialogues: Iterator[Dialogue], size: int) -> Iterator[list[Dialogue]]:
    while batch := list(itertools.islice(dialogues, size)):
        yield batch


def _worker_env(s: Settings, runtime_env: dict[str, Any] | None) -> dict[str, Any] | None:
    """The labelers' runtime environment: the caller's, with the API keys the run needs from the driver's
    environment (a cluster's nodes do not have them)."""
    names = {s.api_key_env, s.embeddings_api_key_env or s.api_key_env}
    keys = {n: os.environ[n] for n in names if n in os.environ}
    env = dict(runtime_env or {})
    if keys:
        env["env_vars"] = {**env.get("env_vars", {}), **keys}
    return env or None


def on_ray(annotator: Annotator, address: str | None) -> RayAnnotator:
    """The same configuration as ``annotator``, run on Ray at ``address`` (None: a local instance): what
    ``autolabel run --ray`` calls."""
    return RayAnnotator(annotator.task, settings=annotator.settings, address=address)


__all__ = ["LOCAL", "RayAnnotator", "on_ray"]
