"""The Python API: ``Annotator(task=..., model=...)`` with ``annotate``/``annotate_many`` and async twins.

One ``Annotator`` is one configuration (task, model, parameters, database). Each call opens a run whose id is
derived from that configuration and the input's name, so annotating the same input again resumes the same run:
finished dialogues are not redone, an interrupted one continues from its LangGraph checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import queue
import threading
import time
import zlib
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.graph.state import CompiledStateGraph

from autolabel import runs
from autolabel.errors import BudgetExceeded, InputError, LeaseLost
from autolabel.examples import few_shot_picker
from autolabel.graphs.annotate.context import Context
from autolabel.graphs.annotate.excerpt import Excerpt
from autolabel.graphs.annotate.graph import build_graph
from autolabel.graphs.annotate.state import InputState
from autolabel.llm import pricing
from autolabel.llm.batch import batch_backend
from autolabel.llm.budget import Budget
from autolabel.llm.client import LLMClient, make_backend
from autolabel.llm.limits import AdaptiveLimit
from autolabel.models import (
    Dialogue,
    DialogueResult,
    FieldConfidence,
    RunSummary,
    SessionAnnotation,
    Status,
    Turn,
    TurnAnnotation,
)
from autolabel.persistence.checkpoints import checkpointer
from autolabel.persistence.store import Store
from autolabel.readers import collect_errors, read_dialogues
from autolabel.settings import Settings
from autolabel.tasks import TaskSpec, load_task

log = logging.getLogger(__name__)

Progress = Callable[[DialogueResult, "RunState"], None]
SharedLimits = Callable[[LLMClient], tuple[AdaptiveLimit, Budget]]
"""Makes the limit and budget a run shares with other processes (``Annotator.shared_limits``)."""


@dataclass
class RunState:
    """One run: its live numbers (what the progress bar shows) and everything it runs with — the graph compiled on
    its checkpointer and the context its nodes read. Made per call: an ``Annotator`` shared by concurrent calls
    (tasks or threads) keeps none of it."""

    run_id: str
    summary: RunSummary
    llm: LLMClient
    started: float
    ctx: Context
    graph: CompiledStateGraph[Any, Any, Any, Any]
    saver: BaseCheckpointSaver[Any]
    only: Mapping[str, list[int]] | None = field(default=None)
    """A later stage of a cascade: dialogue id -> the turns to label (the others are context)."""


class Annotator:
    """Annotate dialogues with a task spec and a model. See the module docstring."""

    def __init__(self, task: TaskSpec | str | Path, model: str | None = None, *, db: str | Path | None = None,
                 settings: Settings | None = None, shared_limits: SharedLimits | None = None,
                 review: bool = True, **overrides: Any) -> None:
        self.task = task if isinstance(task, TaskSpec) else load_task(task)
        self.review = review
        """False for a stage of a cascade (``autolabel/cascade.py``): its flagged turns get no review item."""
        self.shared_limits = shared_limits
        """For a run spread over processes (``autolabel.scale.ray``): called with each run's LLM client, returns the
        concurrency limit and the budget the whole run shares, used instead of the client's own."""
        self.settings = runs.settings_with(settings, {"model": model, "db": str(db) if db else None, **overrides})

    # -- identity ------------------------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        return runs.run_params(self.settings)

    def params_hash(self) -> str:
        return runs.params_hash(self.settings)

    def run_id(self, input_name: str) -> str:
        return runs.run_id(self.task, self.settings, input_name)

    # -- async API -----------------------------------------------------------------------------------------
    async def aannotate(self, dialogue: Dialogue) -> DialogueResult:
        results = [r async for r in self.aannotate_many([dialogue], input_name=f"api:{dialogue.id}")]
        return results[0]

    async def aannotate_many(self, dialogues: Iterable[Dialogue] | AsyncIterable[Dialogue], *,
                             input_name: str = "api", progress: Progress | None = None,
                             summary: RunSummary | None = None, lease_owner: str | None = None,
                             only: Mapping[str, list[int]] | None = None) -> AsyncIterator[DialogueResult]:
        """Annotate dialogues concurrently (at most ``concurrency`` in flight); yield results as they finish.

        ``lease_owner``: the job-queue worker that claimed the dialogues (``autolabel.scale.jobs``; ``dialogues`` is
        then its claims). A dialogue whose lease another worker took over is not stored and not yielded, and the
        run's status is left to the queue.

        ``only`` (a later stage of a cascade): dialogue id -> the turns to label; the dialogue's other turns are
        shown as context only, and it gets no session call."""
        async with self._run(input_name, lease_owner) as run:
            if summary is not None:
                run.summary = summary
            run.only = only
            results: asyncio.Queue[DialogueResult | BaseException | None] = asyncio.Queue()
            source = _aiter(dialogues)
            lock = asyncio.Lock()
            fetching: set[asyncio.Future[Dialogue | None]] = set()

            async def next_dialogue() -> Dialogue | None:
                """The source's next dialogue; None at its end, or once a call was refused — also while waiting
                for input (a feed still open), which would otherwise hold the run open for good."""
                if self._over_budget(run):
                    return None
                fetch = asyncio.ensure_future(anext(source, None))
                fetching.add(fetch)
                try:
                    return await fetch
                except asyncio.CancelledError:
                    outside = getattr(asyncio.current_task(), "cancelling", lambda: 0)()  # this worker cancelled
                    if fetch.cancelled() and self._over_budget(run) and not outside:
                        return None
                    raise
                finally:
                    fetching.discard(fetch)

            async def worker() -> None:
                while True:
                    async with lock:  # once a call was refused no new dialogue starts: a re-run reads it again
                        d = await next_dialogue()
                    if d is None:
                        return
                    try:
                        res = await self._one(run, d)
                    except BudgetExceeded:  # a call was refused: this dialogue stays resumable from its checkpoint
                        for fetch in fetching:  # and a worker waiting for the next dialogue stops waiting
                            fetch.cancel()
                        return  # (the others go on until their own next call is refused)
                    if res is not None:
                        await results.put(res)

            async def drive() -> None:
                try:
                    await asyncio.gather(*(worker() for _ in range(self.settings.concurrency)))
                    if self._over_budget(run):  # raised to the consumer after every finished result
                        budget = run.llm.budget
                        await results.put(BudgetExceeded(budget.spent, budget.limit or 0.0))
                except BaseException as e:  # handed to the consumer below, which re-raises it
                    await results.put(e)
                await results.put(None)

            driver = asyncio.create_task(drive())
            try:
                while (item := await results.get()) is not None:
                    if isinstance(item, BaseException):
                        if isinstance(item, BudgetExceeded):
                            run.summary.stopped_reason = "budget"
                            self._totals(run)  # the calls of the dialogues left unfinished cost too
                        raise item
                    self._count(run, item)
                    if progress:
                        progress(item, run)
                    yield item
            except asyncio.CancelledError:  # stopped from outside (Ctrl-C, SIGTERM): the run is left resumable
                run.summary.stopped_reason = run.summary.stopped_reason or "interrupted"
                self._totals(run)
                raise
            finally:
                driver.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await driver

    async def arun(self, path: str | Path, *, on_invalid: str = "skip", progress: Progress | None = None,
                   errors: list[InputError] | None = None) -> RunSummary:
        """Annotate every dialogue of an input file; bad records are reported (``errors``) and skipped."""
        errs = errors if errors is not None else []
        on_error = collect_errors(on_invalid, errs)

        dialogues = read_dialogues(path, on_error=on_error)
        summary = RunSummary(run_id=self.run_id(str(Path(path).resolve())), db=self.settings.db)
        try:
            async for _ in self.aannotate_many(dialogues, input_name=str(Path(path).resolve()),
                                               progress=progress, summary=summary):
                pass
        except BudgetExceeded:
            pass  # summary.stopped_reason says so; finished dialogues are stored and a re-run resumes
        finally:
            dialogues.close()  # a run that stopped early leaves the reader (and its open file) mid-way
        summary.input_errors = len(errs)
        return summary

    # -- sync twins ----------------------------------------------------------------------------------------
    def annotate(self, dialogue: Dialogue) -> DialogueResult:
        return asyncio.run(self.aannotate(dialogue))

    def annotate_many(self, dialogues: Iterable[Dialogue], *, input_name: str = "api") -> Iterator[DialogueResult]:
        """Like ``aannotate_many``, from synchronous code: results stream from a background event loop."""
        q: queue.Queue[Any] = queue.Queue(maxsize=self.settings.concurrency * 2)
        done = object()

        async def pump() -> None:
            try:
                async for r in self.aannotate_many(dialogues, input_name=input_name):
                    await asyncio.to_thread(q.put, r)
            except BaseException as e:  # re-raised in the caller's thread
                q.put(e)
            q.put(done)

        t = threading.Thread(target=asyncio.run, args=(pump(),), daemon=True)
        t.start()
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
        t.join()

    def run(self, path: str | Path, *, on_invalid: str = "skip", progress: Progress | None = None,
            errors: list[InputError] | None = None) -> RunSummary:
        return asyncio.run(self.arun(path, on_invalid=on_invalid, progress=progress, errors=errors))

    # -- internals -----------------------------------------------------------------------------------------
    @asynccontextmanager
    async def _run(self, input_name: str, lease_owner: str | None = None) -> AsyncIterator[RunState]:
        s = self.settings
        cost, _ = pricing.pricer(s)  # first: a budget without a known price is refused before anything opens
        if s.is_remote():
            log.warning("dialogue text will be sent to a remote endpoint (%s)%s", s.endpoint_host(),
                        " with personal details replaced (--redact)" if s.redact else
                        "; --redact replaces names, phone numbers, e-mail and street addresses first")
        store = Store.open(s.db)
        run_id = self.start_run(store, input_name)
        backend = batch_backend(s, store, run_id) if s.batch_api else make_backend(s)
        llm = LLMClient(s, backend, store, run_id=run_id, pricer=cost)
        if self.shared_limits is not None:
            llm.limit, llm.budget = self.shared_limits(llm)
        state: RunState | None = None
        picker = None
        try:
            async with checkpointer(s.db, _serde()) as saver:
                graph = build_graph().compile(checkpointer=saver)
                from autolabel.quality.evaluate import (  # scikit-learn loads when a run starts
                    calibration_mismatch,
                    load_routing,
                )

                thresholds, calibrate = load_routing(store, self.task, s.model)
                differs = calibration_mismatch(store, self.task, s.model, self.params()) if thresholds else []
                if differs:
                    log.warning("the stored calibration of %s was fitted on a run with other confidence settings "
                                "(%s): its certified error bounds were not measured for this run's signals; run "
                                "`autolabel calibrate` on a run with these settings", s.model, "; ".join(differs))
                picker = few_shot_picker(store, self.task, s)  # None without gold: no embedding model
                ctx = Context(task=self.task, settings=s, llm=llm, store=store, run_id=run_id, model=s.model,
                              thresholds=thresholds, calibrate=calibrate, examples=picker,
                              knn_agreement=picker.knn_agreement if picker else None, lease_owner=lease_owner,
                              review=self.review)
                with _frozen_heap():
                    state = RunState(run_id, RunSummary(run_id=run_id, db=s.db), llm, time.monotonic(), ctx, graph,
                                     saver)
                    yield state
        finally:
            try:
                await llm.flush()  # the call log's last rows
                if state is not None:  # after the checkpointer closed: none of its transactions can hold the lock
                    await asyncio.to_thread(self._finish, state)
            finally:
                await backend.aclose()
                if picker is not None:
                    picker.close()
                store.close()

    def start_run(self, store: Store, input_name: str) -> str:
        """Record the run of this configuration over ``input_name`` (or reopen it); returns its id."""
        return runs.start_run(store, self.task, self.settings, input_name)

    async def _one(self, run: RunState, d: Dialogue) -> DialogueResult | None:
        store = run.ctx.store
        # every store call from async code goes through a thread: the checkpointer's aiosqlite transactions must
        # be able to commit while we wait for SQLite's lock
        if await asyncio.to_thread(store.dialogue_status, run.run_id, d.id) == "done":
            run.summary.skipped_dialogues += 1
            return await asyncio.to_thread(stored_result, store, run.run_id, d.id)
        if run.ctx.lease_owner is None:  # a queued dialogue was marked running by its claim, under its lease
            await asyncio.to_thread(store.mark_running, run.run_id, d.id, language="", n_turns=len(d.turns),
                                    meta=d.meta, source=d.source)
        thread = f"{run.run_id}:{d.id}"
        config: RunnableConfig = {"configurable": {"thread_id": thread}, "max_concurrency": self.settings.concurrency,
                                  "recursion_limit": 50}
        snapshot = await run.graph.aget_state(config)
        inp: InputState | None = None
        if not snapshot.next:
            inp = {"dialogue": d} if run.only is None else {"dialogue": d, "only": list(run.only.get(d.id, []))}
        if snapshot.next:
            run.summary.resumed_dialogues += 1
        try:
            await run.graph.ainvoke(inp, config, context=run.ctx)
        except LeaseLost as e:  # another worker took the dialogue over and stores its own result
            log.warning("%s", e)
            return None
        await run.saver.adelete_thread(thread)
        return await asyncio.to_thread(stored_result, store, run.run_id, d.id)

    def _count(self, run: RunState, r: DialogueResult) -> None:
        s = run.summary
        s.dialogues += 1
        s.turns += len(r.turns)
        s.critic_inconsistent += sum(1 for t in r.turns if t.critique and t.critique.get("inconsistent"))
        for k, v in r.counts().items():
            setattr(s, k, getattr(s, k) + v)
        self._totals(run)

    def _totals(self, run: RunState) -> None:
        s = run.summary
        t = run.llm.totals
        s.calls, s.cache_hits = t.calls, t.cache_hits
        s.prompt_tokens, s.completion_tokens = t.prompt_tokens, t.completion_tokens
        s.cost_usd = run.llm.budget.spent  # every request answered, whether or not its turn finished
        s.seconds = round(time.monotonic() - run.started, 3)

    def _over_budget(self, run: RunState) -> bool:
        """Has ``max_cost`` refused a call? Each call is admitted only if its worst-case cost fits in what is
        left (``budget.py``); after a refusal no new dialogue starts."""
        return run.llm.budget.closed

    def _finish(self, run: RunState) -> None:
        if run.ctx.lease_owner is not None:
            return  # a queued run is finished by the job queue when its last dialogue is done
        status = "stopped" if run.summary.stopped_reason else "finished"
        run.ctx.store.finish_run(run.run_id, status, run.summary.model_dump())


RUN_GC_THRESHOLDS = (50_000, 20, 20)


class _GcTuning:
    """Python's cyclic garbage collector, tuned while any run is going (measured: about a quarter of the client's CPU
    per call went to it). The objects alive when the first run starts (modules, classes, the compiled graph: ~300k)
    are frozen out of its reach, and it runs less often (RUN_GC_THRESHOLDS): the turns in flight keep many objects
    alive, and each collection walked all of them again. The collector is the process's, so runs that overlap
    (threads, tasks) share one tuning, counted: the last run to end restores the thresholds it found and unfreezes
    (garbage frozen with them is collected then: no collection is needed before freezing)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs = 0
        self._saved = gc.get_threshold()

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if not self._runs:
                self._saved = gc.get_threshold()
                gc.freeze()
                gc.set_threshold(*RUN_GC_THRESHOLDS)
            self._runs += 1
        try:
            yield
        finally:
            with self._lock:
                self._runs -= 1
                if not self._runs:
                    gc.set_threshold(*self._saved)
                    gc.unfreeze()


_frozen_heap = _GcTuning()


COMPRESS_BYTES = 2048
"""Checkpoint payloads at least this long are stored zlib-compressed (a chunk's results, a long dialogue)."""


class _Serde(JsonPlusSerializer):
    """LangGraph's serializer, restricted to our records, compressing large payloads.

    Checkpoints hold our pydantic records; only these types may be rebuilt from a checkpoint. A chunk's results and
    the dialogue thread's state are msgpack with every record's class path and field names, which zlib shrinks about
    fivefold at level 1 (tens of microseconds per chunk): a long dialogue's checkpoints are most of its store while it
    runs."""

    def __init__(self) -> None:
        super().__init__(allowed_msgpack_modules=[
            Dialogue, Turn, Excerpt, TurnAnnotation, SessionAnnotation, FieldConfidence, Status])

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        kind, data = super().dumps_typed(obj)
        if len(data) >= COMPRESS_BYTES:
            return f"{kind}+zlib", zlib.compress(data, 1)
        return kind, data

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        kind, payload = data
        if kind.endswith("+zlib"):
            return super().loads_typed((kind.removesuffix("+zlib"), zlib.decompress(payload)))
        return super().loads_typed(data)


def _serde() -> JsonPlusSerializer:
    return _Serde()


async def _aiter(dialogues: Iterable[Dialogue] | AsyncIterable[Dialogue]) -> AsyncIterator[Dialogue]:
    if isinstance(dialogues, AsyncIterable):
        async for d in dialogues:
            yield d
    else:
        for d in dialogues:
            yield d


def stored_result(store: Store, run_id: str, dialogue_id: str) -> DialogueResult:
    """The dialogue's final annotations as stored."""
    return result_of(dialogue_id, store.final_records_of(run_id, dialogue_id))


def result_of(dialogue_id: str, records: Iterable[dict[str, Any]]) -> DialogueResult:
    """A dialogue's final records as annotations."""
    turns: list[TurnAnnotation] = []
    session = None
    language = "en"
    for rec in records:
        language = rec.get("language", language)
        conf = {k: FieldConfidence(**v) for k, v in rec["confidence"].items()}
        common = {"dialogue_id": dialogue_id, "status": Status(rec["status"]), "labels": rec["labels"],
                  "texts": rec["texts"], "confidence": conf, "flags": rec["flags"], "error": rec.get("error"),
                  "raw_output": rec.get("raw_output")}
        if rec["kind"] == "session":
            session = SessionAnnotation(**common)
        else:
            turns.append(TurnAnnotation(turn_index=rec["turn_index"], speaker=rec["speaker"], role=rec["role"],
                                        critique=rec.get("critique"), attempts=rec.get("attempts", 0),
                                        **common))
    return DialogueResult(dialogue_id=dialogue_id, language=language, turns=turns, session=session)
