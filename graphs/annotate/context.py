"""Run-time context of the ``annotate`` graph (LangGraph's ``context_schema``): what every node may use.

A run (``autolabel.annotator``) builds it with the open store, LLM client and run id. LangGraph's own tooling
(``langgraph dev``, LangGraph Studio, the server API) hands the graph a plain configuration instead — the assistant's
``context``, e.g. ``{"task": "psy-insight", "model": "openai:gpt-4o-mini", "base_url": "...", "db": "runs.db"}`` —
and LangGraph calls ``Context(**configuration)``: the context then opens that run itself (:func:`open_run`) and
``finalize`` closes it (:meth:`Context.close`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autolabel.graphs.annotate.requests import RequestBuilder

from autolabel.llm.client import LLMClient
from autolabel.persistence.store import Store
from autolabel.settings import Settings
from autolabel.tasks import TaskSpec, load_task

SERVER_INPUT = "langgraph"
"""The input name of runs opened from a configuration (one run per configuration, as ``autolabel run``'s runs are
one per configuration and input file)."""


@dataclass(init=False)
class Context:
    """Shared by every dialogue of a run. Nothing here is global: the run builds it and passes it in."""

    task: TaskSpec
    settings: Settings
    llm: LLMClient
    store: Store
    run_id: str
    model: str
    thresholds: dict[str, float]
    """Per-field auto-accept thresholds (certified by ``autolabel calibrate``); default 0.5 when absent."""
    calibrate: Callable[[str, dict[str, float]], float] | None
    """Calibrated confidence of a field from its signals, when a calibrator is stored for this task and model."""
    examples: Callable[[str, str, str], list[dict[str, Any]]] | None
    """(role, language, text) -> reviewed examples similar to the turn, for few-shot prompts."""
    lease_owner: str | None
    """The job-queue worker running this run (``autolabel worker``): a dialogue is stored only while it holds it."""
    knn_agreement: Callable[[str, str, str, str, Any], float | None] | None
    """(role, language, text, field, proposed value) -> agreement with the majority label of the nearest reviewed
    turns: the ``knn_agreement`` confidence signal (None when no neighbour has the field)."""
    requests: RequestBuilder
    """The run's request builder (prompts and schemas built once per run)."""
    review: bool
    """False for a stage of a cascade: the stage's flagged turns get no review item here (the cascade's own run holds
    the review queue of the turns it decided, ``autolabel/cascade.py``)."""
    owned: bool
    """Opened from a configuration: ``finalize`` closes the store and the client (:meth:`close`)."""

    def __init__(self, task: TaskSpec | str | Path = "psy-insight", settings: Settings | None = None,
                 llm: LLMClient | None = None, store: Store | None = None, run_id: str = "", model: str = "",
                 thresholds: dict[str, float] | None = None,
                 calibrate: Callable[[str, dict[str, float]], float] | None = None,
                 examples: Callable[[str, str, str], list[dict[str, Any]]] | None = None,
                 lease_owner: str | None = None,
                 knn_agreement: Callable[[str, str, str, str, Any], float | None] | None = None,
                 review: bool = True, **configuration: Any) -> None:
        self.task = task if isinstance(task, TaskSpec) else load_task(task)
        self.thresholds, self.calibrate = thresholds or {}, calibrate
        self.examples, self.lease_owner, self.knn_agreement = examples, lease_owner, knn_agreement
        self.review = review
        self.owned = llm is None or store is None or settings is None
        if self.owned:  # a configuration (LangGraph's tooling): open the run it describes
            settings, llm, store, run_id = open_run(self.task, settings, {"model": model or None, **configuration})
        assert settings is not None and llm is not None and store is not None
        self.settings, self.llm, self.store, self.run_id = settings, llm, store, run_id
        self.model = model or settings.model
        self.requests = RequestBuilder(self.task, self.settings)

    async def close(self) -> None:
        """Close what a context opened from a configuration (its run is then finished)."""
        if not self.owned:
            return
        try:
            await self.llm.flush()
            self.store.finish_run(self.run_id, "finished", {"run_id": self.run_id, "db": self.settings.db})
        finally:
            await self.llm.backend.aclose()
            self.store.close()


def open_run(task: TaskSpec, settings: Settings | None, configuration: dict[str, Any]
             ) -> tuple[Settings, LLMClient, Store, str]:
    """The settings, LLM client, open store and run id of a configuration (``model``, ``base_url``, ``db`` and any
    other setting; unset ones come from ``AUTOLABEL_*`` and the defaults, as for ``autolabel run``)."""
    from autolabel import runs
    from autolabel.llm import pricing
    from autolabel.llm.client import make_backend

    s = runs.settings_with(settings, configuration)
    cost, _ = pricing.pricer(s)
    store = Store.open(s.db)
    run_id = runs.start_run(store, task, s, SERVER_INPUT)
    return s, LLMClient(s, make_backend(s), store, run_id=run_id, pricer=cost), store, run_id
