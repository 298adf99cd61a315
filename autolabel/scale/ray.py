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

Failures a user meets are one-line ``ConfigError`` (exit 2), raised before anything is written: no Ray installed, an
unreachable or wrong address, a node without autolabel (or another version), a node without the embedded model's
packages, SQLite with a cluster address.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from autolabel import __version__
from autolabel.annotator import Annotator, Progress
from autolabel.errors import AutolabelError, BudgetExceeded, ConfigError, InputError
from autolabel.llm.budget import Budget
from autolabel.llm.limits import AdaptiveLimit
from autolabel.models import Dialogue, DialogueResult, RunSummary
from autolabel.persistence.attempts import claim, superseded
from autolabel.persistence.store import Store, is_postgres
from autolabel.readers import collect_errors, read_dialogues
from autolabel.settings import Settings
from autolabel.tasks import TaskSpec

if TYPE_CHECKING:
    from autolabel.annotator import RunState
    from autolabel.llm.client import LLMClient

LOCAL = "local"
"""``--ray`` without an address: a Ray instance on this machine, started for the run and stopped after it."""
DEPTH = 2
"""Batches in flight per labeler: one being labeled, one waiting, so a labeler never idles on the driver."""
RESTARTS = 3
"""Restarts of a labeler whose process or node died (each resumes from the checkpoints); then the run stops."""
CONNECT_TIMEOUT = 5.0
LOST_CHECK = 2.0
"""Seconds between a labeler's looks for dialogues of its batches that a later attempt took over."""
COUNTED = ("calls", "cache_hits", "prompt_tokens", "completion_tokens", "skipped_dialogues", "resumed_dialogues")
"""Labelers' summary fields the driver adds up (their cost comes from the shared budget when there is one)."""


# -- the shared limits (one actor per run) ----------------------------------------------------------------------

class _WorstCaseBudget(Budget):
    """The run's budget inside the limits actor: each labeler prices its own request (it has the tokenizer) and
    asks with the worst case in USD."""

    def __init__(self, limit: float | None) -> None:
        super().__init__(limit, lambda p, c: 0.0, lambda kwargs: 0, 1)

    def worst_case(self, kwargs: dict[str, Any]) -> float:
        return float(kwargs["worst"])


class Limits:
    """The run's one concurrency limit and one budget, for every labeler (a Ray asyncio actor). What each labeler
    holds is counted by owner: one incarnation of a labeler (``name@id``), so a restarted labeler gives back what its
    dead incarnations held, and what they were still waiting for is given back as soon as it is granted."""

    def __init__(self, concurrency: int, max_cost: float | None) -> None:
        self.limit = AdaptiveLimit(concurrency)
        self.budget = _WorstCaseBudget(max_cost)
        self.slots: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
        self.reservations: dict[str, collections.Counter[float]] = collections.defaultdict(collections.Counter)
        self.rate_limited = 0
        self.peak = 0
        self.dead: set[str] = set()

    async def acquire(self, owner: str) -> int:
        started_round = await self.limit.acquire()
        if owner in self.dead:  # its process died while it waited
            self.limit.release(started_round)
            return started_round
        self.slots[owner][started_round] += 1
        self.peak = max(self.peak, self.limit.in_flight)
        return started_round

    def release(self, owner: str, started_round: int, rate_limited: bool) -> None:
        if self.slots[owner][started_round] <= 0:
            return  # given back by ``reset`` already
        self.slots[owner][started_round] -= 1
        self.rate_limited += rate_limited
        self.limit.release(started_round, rate_limited=rate_limited)

    async def admit(self, owner: str, worst: float) -> tuple[bool, float]:
        """(admitted, spent so far): refused once the run's budget cannot pay ``worst`` (see ``budget.py``)."""
        try:
            await self.budget.admit({"worst": worst})
        except BudgetExceeded:
            return False, self.budget.spent
        if owner in self.dead:  # its process died while it waited: no request was sent
            self.budget.settle(worst, 0.0)
            return False, self.budget.spent
        self.reservations[owner][worst] += 1
        return True, self.budget.spent

    def settle(self, owner: str, reservation: float, cost: float) -> None:
        if self.reservations[owner][reservation] <= 0:
            return
        self.reservations[owner][reservation] -= 1
        self.budget.settle(reservation, cost)

    def reset(self, owner: str) -> None:
        """``owner`` is a new incarnation of its labeler: give back what the earlier ones held (they died): their
        slots, and their reservations as spent at their worst (a call in flight may have been billed)."""
        name = owner.split("@", 1)[0]
        for old in {o for o in (*self.slots, *self.reservations) if o.split("@", 1)[0] == name and o != owner}:
            self.dead.add(old)
            for started_round, n in self.slots.pop(old, collections.Counter()).items():
                for _ in range(n):
                    self.limit.release(started_round)
            for reservation, n in self.reservations.pop(old, collections.Counter()).items():
                for _ in range(n):
                    self.budget.settle(reservation, reservation)

    def status(self) -> dict[str, Any]:
        return {"spent": self.budget.spent, "closed": self.budget.closed, "in_flight": self.limit.in_flight,
                "limit": self.limit.limit, "peak": self.peak, "rate_limited": self.rate_limited}


class ClusterLimit(AdaptiveLimit):
    """A labeler's view of the run's limit: every slot is taken from the ``Limits`` actor."""

    def __init__(self, limits: Any, owner: str, ceiling: int) -> None:
        super().__init__(ceiling)
        self.limits, self.owner = limits, owner

    async def acquire(self) -> int:
        ref = self.limits.acquire.remote(self.owner)
        try:
            return int(await ref)
        except asyncio.CancelledError:  # the slot is granted all the same: give it back when it is
            ref.future().add_done_callback(self._give_back)
            raise

    def _give_back(self, granted: Any) -> None:
        if not granted.cancelled() and granted.exception() is None:
            self.limits.release.remote(self.owner, granted.result(), False)

    def release(self, started_round: int, *, rate_limited: bool = False) -> None:
        self.limits.release.remote(self.owner, started_round, rate_limited)


class ClusterBudget(Budget):
    """A labeler's view of the run's budget: each call's worst case is priced here and admitted by ``Limits``."""

    def __init__(self, local: Budget, limits: Any, owner: str) -> None:
        super().__init__(local.limit, local.price, local.count, local.max_tokens)
        self.limits, self.owner = limits, owner

    async def admit(self, kwargs: dict[str, Any]) -> float:
        worst = self.worst_case(kwargs)
        ref = self.limits.admit.remote(self.owner, worst)
        try:
            admitted, spent = await ref
        except asyncio.CancelledError:
            ref.future().add_done_callback(lambda f: self._unreserve(f, worst))
            raise
        if not admitted:  # Limits waited for every call in flight to end; their cache writes have started here too
            self.closed = True
            await asyncio.to_thread(_nothing)  # see budget.py: the answers' cache writes were taken up by threads
            raise BudgetExceeded(spent, self.limit or 0.0)
        self.reserved += worst
        self.in_flight += 1
        return worst

    def _unreserve(self, answer: Any, worst: float) -> None:
        if not answer.cancelled() and answer.exception() is None and answer.result()[0]:
            self.limits.settle.remote(self.owner, worst, 0.0)

    def settle(self, reservation: float, cost: float) -> None:
        super().settle(reservation, cost)
        self.limits.settle.remote(self.owner, reservation, cost)


def _nothing() -> None:
    """A thread job that does nothing (see ``Budget.admit``)."""


# -- labelers (one actor per worker) ----------------------------------------------------------------------------

@dataclass
class BatchDone:
    """What a labeler sends back for one batch: the finished dialogues, the ids it stopped before finishing (the
    budget closed), and what its client did since its last report."""

    results: list[DialogueResult]
    stopped: list[str] = field(default_factory=list)
    counted: dict[str, float] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    """Dialogues another attempt took over (this labeler was superseded): that attempt stores them."""


class Labeler:
    """One worker of the run (a Ray asyncio actor): one ``Annotator`` run open for the actor's life, fed with the
    batches the driver sends. See the module docstring."""

    def __init__(self, task_json: str, settings_json: str, input_name: str, owner: str, limits: Any) -> None:
        self.settings = Settings.model_validate_json(settings_json)
        self.owner = f"{owner}@{uuid.uuid4().hex[:12]}"  # this incarnation: a restart is another
        self.limits, self.input_name = limits, input_name
        self.annotator = Annotator(TaskSpec.model_validate_json(task_json), settings=self.settings,
                                   shared_limits=self._shared)
        self.feed: asyncio.Queue[Dialogue | None] | None = None
        self.waiting: dict[str, list[asyncio.Future[DialogueResult | None]]] = collections.defaultdict(list)
        self.runner: asyncio.Task[None] | None = None
        self.state: RunState | None = None
        self.reported: dict[str, float] = dict.fromkeys(COUNTED, 0)
        self.run_id = self.annotator.run_id(input_name)
        self.store: Store | None = None  # for the claims: this incarnation's token on each dialogue it starts
        self.claimed: set[str] = set()
        self.lost: set[str] = set()
        self.opened = asyncio.Event()
        self.failure: BaseException | None = None

    def where(self) -> dict[str, Any]:
        """This worker's node and process, and whether it can run the run's model (None, or what is missing)."""
        import ray

        problem = None
        if self.settings.family == "local":
            import importlib.util

            from autolabel.llm.local import model_path

            try:
                model_path(self.settings.model_name, self.settings)
                if importlib.util.find_spec("llama_cpp") is None:
                    problem = "the local model needs llama-cpp-python: pip install 'autolabel[local]'"
            except ConfigError as e:
                problem = str(e)
        return {"node": ray.util.get_node_ip_address(), "pid": os.getpid(), "problem": problem}

    def _shared(self, llm: LLMClient) -> tuple[AdaptiveLimit, Budget]:
        budget = ClusterBudget(llm.budget, self.limits, self.owner) if llm.budget.limit is not None else llm.budget
        return ClusterLimit(self.limits, self.owner, llm.limit.ceiling), budget

    async def open(self) -> None:
        """Open this worker's run (client, store, checkpointer, graph) and wait until it takes dialogues."""
        runner = self._start()
        opened = asyncio.create_task(self.opened.wait())
        await asyncio.wait({opened, runner}, return_when=asyncio.FIRST_COMPLETED)
        opened.cancel()
        if not self.opened.is_set() and self.failure is not None:
            raise self.failure

    def _start(self) -> asyncio.Task[None]:
        if self.runner is None:  # set before any await: batches arrive concurrently
            self.feed = asyncio.Queue()
            self.runner = asyncio.create_task(self._run())
        return self.runner

    async def label(self, batch: list[Dialogue]) -> BatchDone:
        self._start()
        assert self.feed is not None and self.runner is not None
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[DialogueResult | None]] = []
        for d in batch:
            f: asyncio.Future[DialogueResult | None] = loop.create_future()
            if self.runner.done():
                f.set_result(None)  # the run stopped (the budget): the dialogue stays for a later run
            else:
                self.waiting[d.id].append(f)
                self.feed.put_nowait(d)
            futures.append(f)
        pending = set(futures)
        while pending:  # a dialogue another attempt took over is never answered here: look for those now and then
            _, pending = await asyncio.wait(pending, timeout=LOST_CHECK)
            if pending and self.store is not None:
                mine = [d.id for d, f in zip(batch, futures, strict=True) if f in pending and d.id in self.claimed]
                for dialogue_id in await asyncio.to_thread(superseded, self.store, self.run_id, mine, self.owner):
                    self.lost.add(dialogue_id)
                    for f in self.waiting.pop(dialogue_id, []):
                        f.set_result(None)
        answers = [f.result() for f in futures]
        return BatchDone([r for r in answers if r is not None],
                         [d.id for d, r in zip(batch, answers, strict=True) if r is None and d.id not in self.lost],
                         self._counted(),
                         [d.id for d, r in zip(batch, answers, strict=True) if r is None and d.id in self.lost])

    async def close(self) -> dict[str, float]:
        """End the run's stream (the client's call log is flushed); returns what was not reported yet."""
        if self.runner is not None and self.feed is not None:
            self.feed.put_nowait(None)
            await self.runner
        return self._counted()

    def pid(self) -> int:
        return os.getpid()

    def holding(self) -> dict[str, Any]:
        """What this worker holds now (for a look at a stuck run)."""
        return {"pid": os.getpid(), "running": self.runner is not None and not self.runner.done(),
                "queued": self.feed.qsize() if self.feed is not None else 0,
                "waiting": sum(len(w) for w in self.waiting.values())}

    async def _dialogues(self) -> AsyncIterator[Dialogue]:
        """The dialogues fed to the run, each claimed with this incarnation's token as it starts (see
        ``persistence.attempts``): only the latest attempt at a dialogue can store it; a done one is read back."""
        assert self.feed is not None and self.store is not None
        self.opened.set()  # the run is open: its workers ask for dialogues
        while (d := await self.feed.get()) is not None:
            self.lost.discard(d.id)
            if await asyncio.to_thread(claim, self.store, self.run_id, d, self.owner):
                self.claimed.add(d.id)
            yield d

    def _seen(self, result: DialogueResult, state: RunState) -> None:
        self.state = state

    async def _run(self) -> None:
        stop: BaseException | None = None
        try:
            self.store = await asyncio.to_thread(Store.open, self.settings.db)
            await self.limits.reset.remote(self.owner)  # what an earlier incarnation held (it died) goes back
            async for r in self.annotator.aannotate_many(self._dialogues(), input_name=self.input_name,
                                                         progress=self._seen, lease_owner=self.owner):
                waiting = self.waiting.get(r.dialogue_id)
                if waiting:
                    waiting.pop(0).set_result(r)
        except BudgetExceeded:
            pass  # every dialogue not finished is answered None: it stays resumable
        except BaseException as e:  # handed to every batch waiting, which raise it to the driver
            stop = self.failure = e
        for waiting in self.waiting.values():
            for f in waiting:
                if stop is None:
                    f.set_result(None)
                else:
                    f.set_exception(stop)
        self.waiting.clear()
        if self.store is not None:
            self.store.close()

    def _counted(self) -> dict[str, float]:
        if self.state is None:
            return {}
        s = self.state.summary
        now = {k: float(getattr(s, k)) for k in COUNTED}
        now["cost_usd"] = self.state.llm.budget.spent
        delta = {k: v - self.reported.get(k, 0.0) for k, v in now.items()}
        self.reported = now
        return delta


# -- the driver ---------------------------------------------------------------------------------------------------

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
        ray = _ray()
        ours = _connect(ray, self.address, self.num_cpus, self.runtime_env)
        try:
            nodes = _check_nodes(ray, self.runtime_env)
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
        limits = ray.remote(Limits).options(name=f"autolabel-limits-{view.run_id}", num_cpus=0,
                                            max_concurrency=10_000).remote(s.concurrency, s.max_cost)
        labeler = ray.remote(Labeler)
        options = {"num_cpus": self.cpus_per_worker, "max_restarts": RESTARTS, "max_task_retries": -1,
                   "max_concurrency": 1000, "scheduling_strategy": "SPREAD",
                   "runtime_env": _worker_env(s, self.runtime_env)}
        settings_json = s.model_dump_json(exclude={"review_token"})
        actors = [labeler.options(name=f"autolabel-{view.run_id}-labeler-{i}", **options).remote(
            self.task.model_dump_json(), settings_json, input_name, f"labeler-{i}", limits) for i in range(n)]
        recorded = False
        try:
            try:
                problems = [w["problem"] for w in await asyncio.gather(*(a.where.remote() for a in actors))
                            if w["problem"]]
            except RuntimeError as e:  # Ray's "failed to import on the worker": autolabel there cannot load
                raise ConfigError(f"a Ray worker cannot load autolabel ({_first_line(e)}): install the same "
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
        raise ConfigError(f"a Ray worker died {RESTARTS + 1} times on the same batch ({_first_line(e)}): the run is "
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


# -- connecting -----------------------------------------------------------------------------------------------------

def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray on this machine and on the cluster: pip install 'autolabel[ray]'") from None
    return ray


def _connect(ray: Any, address: str | None, num_cpus: int | None, runtime_env: dict[str, Any] | None) -> bool:
    """Join the cluster at ``address`` (None: start a local instance). True when this call started Ray (the run
    shuts it down after)."""
    if address not in (None, "auto"):
        _preflight(address)
    if ray.is_initialized():
        return False  # the caller's own Ray session (a script that called ray.init)
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "runtime_env": runtime_env,
                               "configure_logging": False}
    if address is None:
        ray.init(num_cpus=num_cpus, **options)
        return True
    try:
        ray.init(address=address, **options)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise ConfigError(f"cannot join the Ray cluster at {address}: {_first_line(e)}") from None
    return True


def _preflight(address: str) -> None:
    """Fail in seconds, in one line, where ``ray.init`` would retry for minutes: a host that does not resolve, a
    port nobody listens on, or a server that is not a Ray head (the GCS speaks gRPC: HTTP/2)."""
    client = address.startswith("ray://")
    hostport = address.removeprefix("ray://").rsplit("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray {address}: give host:port of the cluster's head (port 6379), ray://host:10001, "
                          "auto, or nothing for a local instance")
    hint = "start one with `ray start --head` and give the address it prints, or --ray without an address"
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT) as conn:
            conn.settimeout(CONNECT_TIMEOUT)
            conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            head = conn.recv(9)
    except OSError as e:
        raise ConfigError(f"cannot reach a Ray cluster at {address} ({e.strerror or type(e).__name__}): "
                          f"{hint}") from None
    if len(head) < 4 or head[3] != 0x04:  # an HTTP/2 server answers with its SETTINGS frame
        port_hint = "10001 (Ray Client)" if client else "6379 (the GCS; 8265 is the dashboard)"
        raise ConfigError(f"{hostport} answers, but not as a Ray cluster: use the head's port {port_hint}")


def _check_nodes(ray: Any, runtime_env: dict[str, Any] | None) -> int:
    """Every alive node has this autolabel (a probe task sent by value: it runs where autolabel is missing).
    Returns the number of alive nodes."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    def probe() -> str | None:  # nested: cloudpickle sends it by value, so it runs where autolabel is missing
        import importlib
        import importlib.metadata

        try:
            importlib.import_module("autolabel")
            return importlib.metadata.version("autolabel")
        except (ImportError, importlib.metadata.PackageNotFoundError):
            return None

    task = ray.remote(num_cpus=0, max_retries=0, runtime_env=runtime_env)(probe)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    found = ray.get([task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                     .remote() for n in nodes])
    for node, version in zip(nodes, found, strict=True):
        where = node.get("NodeManagerAddress", "?")
        if version is None:
            raise ConfigError(f"Ray node {where} has no autolabel: install the project on every node (pip install "
                              "'autolabel[ray]' into the cluster's image) or give a runtime_env that does")
        if version != __version__:
            raise ConfigError(f"Ray node {where} has autolabel {version}, this driver {__version__}: install the "
                              "same version on every node")
    return len(nodes)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def on_ray(annotator: Annotator, address: str | None) -> RayAnnotator:
    """The same configuration as ``annotator``, run on Ray at ``address`` (None: a local instance): what
    ``autolabel run --ray`` calls."""
    return RayAnnotator(annotator.task, settings=annotator.settings, address=address)


__all__ = ["LOCAL", "RayAnnotator", "on_ray"]
