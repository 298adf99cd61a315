"""A worker of a Ray run (``autolabel.scale.ray``): the ``Labeler`` actor, one ``Annotator`` run open for its life.

The driver sends it batches of dialogues; each incarnation (a restart by Ray is another) claims each dialogue with its
own token as it starts it (``persistence.attempts``) and stores it only under that token, so an incarnation that was
superseded writes nothing and reports the dialogue as ``lost``.
"""

from __future__ import annotations

import asyncio
import collections
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from autolabel.annotator import Annotator
from autolabel.errors import BudgetExceeded, ConfigError
from autolabel.llm.budget import Budget
from autolabel.llm.limits import AdaptiveLimit
from autolabel.models import Dialogue, DialogueResult
from autolabel.persistence.attempts import claim, superseded
from autolabel.persistence.store import Store
from autolabel.scale.ray_limits import ClusterBudget, ClusterLimit
from autolabel.settings import Settings
from autolabel.tasks import TaskSpec

if TYPE_CHECKING:
    from autolabel.annotator import RunState
    from autolabel.llm.client import LLMClient

LOST_CHECK = 2.0
"""Seconds between a labeler's looks for dialogues of its batches that a later attempt took over."""
COUNTED = ("calls", "cache_hits", "prompt_tokens", "completion_tokens", "skipped_dialogues", "resumed_dialogues")
"""Labelers' summary fields the driver adds up (their cost comes from the shared budget when there is one)."""


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

    def __init__(self, task_json: str, settings_json: str, input_name: str, owner: str, limits: str) -> None:
        import ray

        self.settings = Settings.model_validate_json(settings_json)
        self.owner = f"{owner}@{uuid.uuid4().hex[:12]}"  # this incarnation: a restart is another
        self.limits = ray.get_actor(limits)  # by name: a handle among the arguments would keep them in Ray's object
        self.input_name = input_name  # store, and a restart could not find them again
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
