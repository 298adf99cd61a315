"""Cascades: stages of models in one run — a cheap (often local) model labels every turn, only the turns it cannot
certify go to a stronger (often remote, paid) model, and only what no stage can certify goes to people.

The cascade file (``schemas/cascade.schema.json``)::

    stages:
      - model: local:qwen2.5-0.5b
      - model: openai:gpt-4o-mini
        base_url: https://api.openai.com/v1
        redact: true
    risk_to_later_stages: false      # the default
    assumed_escalation_rate: 0.3     # for `autolabel plan` when no earlier run measured it

How a turn moves. Stage 1 labels every turn (and the session). A turn goes on to stage k+1 only when stage k's routing
flagged it for low confidence, critic disagreement (``critic_disagrees``, ``critic_unsure``) or sample disagreement;
that routing is the stage's own: its stored calibrator and certified thresholds for this task and model when
``autolabel calibrate`` stored them, otherwise today's uncalibrated rule (the mean of the signals against 0.5, said
in the summary's notes). A turn flagged for risk content or prompt injection stays with the stage that found it and
goes to a person (unless ``risk_to_later_stages: true``), and its text is withheld from the later stages' context
too; a failed turn stays failed at its stage. The last stage's flags go to the review queue.

How it is stored. Each stage is a normal run in the store (resume, cache, checkpoints work unchanged), with its own
id derived from the input and the stages up to it (editing stage 2 does not redo stage 1); a later stage labels only
the turns sent on, with their dialogue as context (``InputState.only``), and makes no review items. The cascade's own
run (``cascade_merge.py``) holds one final record per turn — the deciding stage's, with ``decided_by`` and the
earlier stages' answers in ``stages`` (also stored as non-final attempts, status ``escalated``) — and the review
queue. ``--max-cost`` is one budget for the whole cascade: each stage may spend what the earlier ones left.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autolabel.cascade_merge import merge_input
from autolabel.cascade_spec import (
    KNN,
    WITHHELD,
    CascadeSpec,
    CascadeSummary,
    Stage,
    StageSummary,
    load_cascade,
)
from autolabel.errors import BudgetExceeded, InputError
from autolabel.models import Dialogue, DialogueResult
from autolabel.readers import collect_errors, read_dialogues
from autolabel.settings import Settings
from autolabel.tasks import TaskSpec, load_task

log = logging.getLogger(__name__)

__all__ = ["KNN", "WITHHELD", "Cascade", "CascadeSpec", "CascadeSummary", "Stage", "StageProgress", "StageSummary",
           "load_cascade"]

StageProgress = Callable[[StageSummary, DialogueResult], None]
"""Called after each dialogue a stage finished, with that stage's live numbers."""


class Cascade:
    """Run a cascade file over an input: ``Cascade("psy-insight", "cascade.yaml", db="runs.db").run("in.jsonl")``.

    ``overrides`` are settings for every stage (``concurrency``, ``window``, ``few_shot``, ``max_cost``...); a stage's
    own keys in the file win for that stage."""

    def __init__(self, task: TaskSpec | str | Path, cascade: CascadeSpec | str | Path, *,
                 db: str | Path | None = None, settings: Settings | None = None, **overrides: Any) -> None:
        from autolabel import runs

        self.task = task if isinstance(task, TaskSpec) else load_task(task)
        self.spec = cascade if isinstance(cascade, CascadeSpec) else load_cascade(cascade)
        self.settings = runs.settings_with(settings, {"db": str(db) if db else None, **overrides})

    def stage_settings(self, k: int) -> Settings:
        """The settings stage ``k`` (1-based) runs with."""
        from autolabel import runs

        stage = self.spec.stages[k - 1]
        if stage.model == KNN:
            return self.settings
        return runs.settings_with(self.settings, stage.overrides())

    def run_id(self, input_name: str) -> str:
        """The cascade's own run: the task, the stages, the settings every stage shares and the input (other
        settings, e.g. another ``window``: other stage runs, so another cascade run)."""
        from autolabel import runs

        key = f"{self.task.spec_hash}|cascade:{self.spec.key()}|{runs.params_hash(self.settings)}|{input_name}"
        return hashlib.sha256(key.encode()).hexdigest()[:12]

    def stage_input(self, input_name: str, k: int) -> str:
        """The input name of stage ``k``'s run: the input and the stages up to ``k`` (so its run id is derived from
        the cascade and the stage's index, and editing a later stage leaves the earlier runs as they are)."""
        return f"{input_name}#cascade:{self.spec.key(k)}:stage{k}"

    def model_label(self) -> str:
        return "cascade:" + " > ".join(s.model for s in self.spec.stages)

    def run(self, path: str | Path, *, on_invalid: str = "skip", progress: StageProgress | None = None,
            errors: list[InputError] | None = None) -> CascadeSummary:
        import asyncio

        return asyncio.run(self.arun(path, on_invalid=on_invalid, progress=progress, errors=errors))

    async def arun(self, path: str | Path, *, on_invalid: str = "skip", progress: StageProgress | None = None,
                   errors: list[InputError] | None = None) -> CascadeSummary:
        """Run every stage in order over ``path``, then merge: one final record per turn in the cascade's run.

        A stage stopped by ``max_cost`` stops the cascade (``stopped_reason``): the dialogues whose every stage is
        done are merged, and running it again resumes the stopped stage (the earlier stages' runs are finished: no
        call of theirs is made again)."""
        errs = errors if errors is not None else []
        name = str(Path(path).resolve())
        if self.settings.max_cost is not None:  # a budget no stage can keep is refused before stage 1 spends it
            from autolabel.llm import pricing

            for k, stage in enumerate(self.spec.stages, 1):
                if stage.model != KNN:
                    pricing.pricer(self.stage_settings(k))
        summary = CascadeSummary(run_id=self.run_id(name), db=self.settings.db)
        sent: dict[str, list[int]] | None = None  # None: stage 1, every turn
        withheld: dict[str, set[int]] = {}
        done: list[set[str]] = []
        spent = 0.0
        for k in range(1, len(self.spec.stages) + 1):
            st = StageSummary(stage=k, model=self.spec.stages[k - 1].model)
            summary.stages.append(st)
            if sent is not None and not sent:
                done.append(set())
                continue  # nothing was sent on: the later stages have nothing to do
            left = None if self.settings.max_cost is None else self.settings.max_cost - spent
            if left is not None and left <= 0:
                st.stopped_reason = summary.stopped_reason = "budget"
                break
            on_error = collect_errors(on_invalid, errs) if k == 1 else collect_errors("skip", [])
            finished, nxt = await self._stage(k, path, name, st, sent, withheld, left, on_error, progress)
            done.append(finished)
            spent += st.cost_usd
            if st.stopped_reason:
                summary.stopped_reason = st.stopped_reason
                break
            sent = nxt
        summary.input_errors = len(errs)
        summary.cost_usd = round(spent, 6)
        await merge_input(self.settings.db, self.task, self.spec, self.model_label(), path, name, summary, done)
        return summary

    async def _stage(self, k: int, path: str | Path, name: str, st: StageSummary, sent: dict[str, list[int]] | None,
                     withheld: dict[str, set[int]], budget_left: float | None,
                     on_error: Callable[[InputError], None], progress: StageProgress | None
                     ) -> tuple[set[str], dict[str, list[int]]]:
        """Run stage ``k``; returns the dialogues it finished and the turns it sends on (dialogue id -> indices)."""
        from autolabel.annotator import Annotator, RunState
        from autolabel.models import RunSummary

        if self.spec.stages[k - 1].model == KNN:
            return await self._knn_stage(k, path, name, st, sent, withheld, on_error, progress)
        s = self.stage_settings(k)
        ann = Annotator(self.task, settings=s, review=False, max_cost=budget_left)
        st.run_id = ann.run_id(self.stage_input(name, k))
        await self._note_calibration(k, s.model, st)
        run_summary = RunSummary(run_id=st.run_id, db=s.db)
        finished: set[str] = set()
        nxt: dict[str, list[int]] = {}

        def seen(r: DialogueResult, run: RunState) -> None:
            st.dialogues = run.summary.dialogues
            st.turns += len(r.turns)
            st.calls, st.cache_hits, st.cost_usd = run.summary.calls, run.summary.cache_hits, run.summary.cost_usd
            if progress:
                progress(st, r)

        dialogues = _stage_dialogues(read_dialogues(path, on_error=on_error), sent, withheld)
        try:
            async for r in ann.aannotate_many(dialogues, input_name=self.stage_input(name, k), progress=seen,
                                              summary=run_summary, only=sent):
                finished.add(r.dialogue_id)
                self._route(k, r, withheld, nxt, st)
        except BudgetExceeded:
            pass  # run_summary.stopped_reason says so
        finally:
            dialogues.close()
        st.calls, st.cache_hits = run_summary.calls, run_summary.cache_hits
        st.cost_usd = run_summary.cost_usd
        st.stopped_reason = run_summary.stopped_reason
        return finished, nxt

    async def _note_calibration(self, k: int, model: str, st: StageSummary) -> None:
        """Does stage ``k`` route with a stored calibrator? Recorded in its summary (the run says which rule)."""
        import asyncio

        from autolabel.persistence.store import Store
        from autolabel.quality.evaluate import load_routing

        def look() -> bool:
            store = Store.open(self.settings.db)
            try:
                return bool(load_routing(store, self.task, model)[0])
            finally:
                store.close()

        st.calibrated = await asyncio.to_thread(look)

    async def _knn_stage(self, k: int, path: str | Path, name: str, st: StageSummary,
                         sent: dict[str, list[int]] | None, withheld: dict[str, set[int]],
                         on_error: Callable[[InputError], None], progress: StageProgress | None
                         ) -> tuple[set[str], dict[str, list[int]]]:
        """A ``model: knn`` stage (``cascade_knn.py``): no LLM call, no cost."""
        from autolabel.cascade_knn import aknn_stage_run

        finished: set[str] = set()
        nxt: dict[str, list[int]] = {}

        def seen(r: DialogueResult) -> None:
            finished.add(r.dialogue_id)
            st.dialogues += 1
            st.turns += len(r.turns)
            self._route(k, r, withheld, nxt, st)
            if progress:
                progress(st, r)

        dialogues = _stage_dialogues(read_dialogues(path, on_error=on_error), sent, withheld)
        try:
            await aknn_stage_run(self.task, self.settings, self.stage_input(name, k), dialogues, sent, st, seen)
        finally:
            dialogues.close()
        return finished, nxt

    def _route(self, k: int, r: DialogueResult, withheld: dict[str, set[int]], nxt: dict[str, list[int]],
               st: StageSummary) -> None:
        """Which of a dialogue's turns stage ``k`` sends on, and which are withheld from the later stages."""
        for t in r.turns:
            rec = {"status": t.status.value, "flags": t.flags}
            if self.spec.withheld(rec):
                withheld.setdefault(r.dialogue_id, set()).add(t.turn_index)
            if k < len(self.spec.stages) and self.spec.escalates(rec):
                nxt.setdefault(r.dialogue_id, []).append(t.turn_index)
                st.escalated += 1
            else:
                st.decided += 1


def _stage_dialogues(dialogues: Any, sent: dict[str, list[int]] | None, withheld: dict[str, set[int]]) -> Any:
    """The dialogues a stage gets: all for stage 1; for a later stage only those with turns sent on, each turn an
    earlier stage kept (risk content, prompt injection) shown as ``WITHHELD``."""
    try:
        for d in dialogues:
            if sent is None:
                yield d
            elif d.id in sent:
                yield _withhold(d, withheld.get(d.id, set()))
    finally:
        dialogues.close()


def _withhold(d: Dialogue, indices: set[int]) -> Dialogue:
    if not indices:
        return d
    turns = tuple(t.model_copy(update={"text": WITHHELD}) if t.index in indices else t for t in d.turns)
    return d.model_copy(update={"turns": turns})
