"""``autolabel plan --cascade``: calls and cost per stage of a cascade run, estimated before it.

Each stage is planned as ``autolabel plan`` plans a run (``planning.plan``: the real prompts, the stage's model,
tokenizer and prices), then scaled by the share of turns that reach it: stage 1 gets every turn and the session
calls; stage k+1 gets stage k's share times stage k's escalation rate, and no session calls (the session is stage
1's). The escalation rates come from the latest earlier cascade run of the same task and stage-1 model in the store
(each stage's turns sent on over its turns labeled), or else from the file's ``assumed_escalation_rate``; the plan
says which. A knn stage makes no LLM calls.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from autolabel.cascade import KNN, Cascade, CascadeSpec
from autolabel.errors import ConfigError
from autolabel.persistence.store import Store, is_postgres
from autolabel.planning import PER_TURN, Plan, plan
from autolabel.settings import Settings
from autolabel.tasks import TaskSpec


@dataclass
class StagePlan:
    stage: int
    model: str
    share: float
    """Share of the input's turns that reach this stage."""
    turns: int
    plan: Plan | None
    """The stage's calls, scaled to the turns that reach it (None: a knn stage, no LLM calls)."""

    @property
    def calls(self) -> int:
        return self.plan.total_calls if self.plan else 0

    @property
    def cost_usd(self) -> float | None:
        return self.plan.cost_usd if self.plan else 0.0


@dataclass
class CascadePlan:
    input: str
    task: str
    turns: int
    stages: list[StagePlan]
    rate_source: str
    notes: list[str] = field(default_factory=list)

    @property
    def cost_usd(self) -> float | None:
        costs = [s.cost_usd for s in self.stages]
        return None if any(c is None for c in costs) else sum(c for c in costs if c is not None)


def stored_rates(db: str, task: TaskSpec, spec: CascadeSpec) -> tuple[list[float], str] | None:
    """The escalation rate of each stage but the last, measured by the latest finished cascade run of this task
    whose stage 1 is the same model; None when there is none."""
    if not is_postgres(db) and not Path(db).expanduser().exists():
        return None
    store = Store.open(db)
    try:
        for row in reversed(store.runs()):
            if row["task_name"] != task.name or not str(row["model"]).startswith("cascade:"):
                continue
            summary = json.loads(store.run(row["id"]).get("summary_json") or "{}")
            stages = summary.get("stages") or []
            if not stages or stages[0].get("model") != spec.stages[0].model or not stages[0].get("turns"):
                continue
            rates = [s["escalated"] / s["turns"] if s.get("turns") else 0.0 for s in stages[:-1]]
            return rates, f"escalation rates measured by run {row['id']} ({stages[0]['turns']} stage-1 turns)"
    finally:
        store.close()
    return None


def plan_cascade(input: str | Path, c: Cascade, sample_dialogues: int = 20) -> CascadePlan:
    """Estimate each stage's calls and cost over ``input`` (see the module docstring)."""
    spec = c.spec
    n = len(spec.stages)
    found = stored_rates(c.settings.db, c.task, spec)
    assumed = spec.assumed_escalation_rate
    if found is not None:
        rates, source = found
        if len(rates) < n - 1:
            if assumed is None:
                raise ConfigError(f"{spec.source}: the stored run measured {len(rates) + 1} stage(s); set "
                                  "assumed_escalation_rate for the others")
            rates = rates + [assumed] * (n - 1 - len(rates))
            source += f"; assumed_escalation_rate {assumed:g} for the later stages"
    elif assumed is not None:
        rates, source = [assumed] * (n - 1), f"assumed_escalation_rate {assumed:g} from {spec.source} (no earlier " \
                                              "cascade run of this task and stage-1 model in the store)"
    elif n == 1:
        rates, source = [], "one stage: nothing escalates"
    else:
        raise ConfigError(f"{spec.source}: no earlier cascade run of task {c.task.name!r} with stage 1 "
                          f"{spec.stages[0].model} in {c.settings.db}; set assumed_escalation_rate in the file")
    stages: list[StagePlan] = []
    share = 1.0
    turns = 0
    for k in range(1, n + 1):
        s: Settings = c.stage_settings(k)
        if spec.stages[k - 1].model == KNN:
            p = None
        else:
            p = _scaled(plan(input, c.task, s, sample_dialogues=sample_dialogues), share, first=k == 1)
            turns = p.turns
        stages.append(StagePlan(stage=k, model=spec.stages[k - 1].model, share=share,
                                turns=round(turns * share), plan=p))
        if k < n:
            share *= rates[k - 1]
    return CascadePlan(input=str(input), task=c.task.name, turns=turns, stages=stages, rate_source=source)


def _scaled(p: Plan, share: float, first: bool) -> Plan:
    """``p`` for the ``share`` of the turns that reach a stage (a later stage makes no session calls)."""
    if first:
        return p
    calls = []
    for row in p.calls:
        f = share if row.purpose in PER_TURN else 0.0
        calls.append(replace(row, calls=round(row.calls * f), prompt_tokens=round(row.prompt_tokens * f),
                             completion_tokens=round(row.completion_tokens * f),
                             cacheable_tokens=round(row.cacheable_tokens * f),
                             cost_usd=None if row.cost_usd is None else row.cost_usd * f))
    return replace(p, calls=calls)
