"""``autolabel run --cascade`` and ``autolabel plan --cascade``: the cascade's progress, summary and plan tables
(the commands themselves are ``run`` and ``plan`` in ``cli/run.py``)."""

from __future__ import annotations

import time
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from autolabel.cascade import Cascade, CascadeSummary, StageSummary
from autolabel.cli.app import console, end_of_run, out
from autolabel.errors import ConfigError, InputError
from autolabel.models import DialogueResult
from autolabel.settings import Settings


def refuse_with_cascade(**given: object) -> None:
    """Options a cascade file decides (per stage) or that a cascade does not take."""
    bad = [f"--{k.replace('_', '-')}" for k, v in given.items() if v]
    if bad:
        raise ConfigError(f"{', '.join(bad)}: not with --cascade (the cascade file names each stage's model and "
                          "endpoint)")


def run_cascade(task: str, cascade: Path, settings: Settings, input: Path, on_invalid: str, total_turns: int,
                progress_every: float = 30.0) -> None:
    """Run the cascade with one progress bar per stage (turns, calls, cost), then print the stages' table."""
    from autolabel.cli.run import run_stoppable

    c = Cascade(task, cascade, settings=settings)
    errors: list[InputError] = []
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("turns"),
               TextColumn("calls {task.fields[calls]:,}"), TextColumn("${task.fields[cost]:.4f}"),
               TimeElapsedColumn()]
    last = [time.monotonic()]
    with Progress(*columns, console=console, transient=False) as progress:
        bars: dict[int, object] = {}

        def tick(st: StageSummary, r: DialogueResult) -> None:
            if st.stage not in bars:
                total = total_turns if st.stage == 1 else None
                bars[st.stage] = progress.add_task(f"stage {st.stage} {st.model}", total=total, calls=0, cost=0.0)
            progress.update(bars[st.stage], completed=st.turns, calls=st.calls, cost=st.cost_usd)  # type: ignore[arg-type]
            if not console.is_terminal and time.monotonic() - last[0] >= progress_every:  # a log: a line now and then
                last[0] = time.monotonic()
                console.print(f"progress: stage {st.stage} ({st.model}): {st.turns} turns, {st.escalated} sent on, "
                              f"{st.calls} calls, ${st.cost_usd:.4f}", markup=False, highlight=False)

        summary = run_stoppable(c.arun(input, on_invalid=on_invalid, progress=tick, errors=errors))
    print_cascade_summary(summary)
    end_of_run(summary.stopped_reason, summary.cost_usd, settings.max_cost, errors)


def print_cascade_summary(s: CascadeSummary) -> None:
    table = Table("stage", "model", title=f"cascade run {s.run_id}")
    for col in ("turns", "sent on", "decided", "calls", "cost (USD)"):
        table.add_column(col, justify="right")
    table.add_column("routing")
    for st in s.stages:
        table.add_row(str(st.stage), st.model, f"{st.turns:,}", f"{st.escalated:,}", f"{st.decided:,}",
                      f"{st.calls:,}", f"{st.cost_usd:.4f}", "calibrated" if st.calibrated else "uncalibrated rule")
    out.print(table)
    out.print(f"{s.dialogues} dialogue(s), {s.turns} turns: {s.accepted} accepted, {s.flagged} flagged for review, "
              f"{s.failed} failed; ${s.cost_usd:.4f}", markup=False)
    for note in s.notes:
        out.print(f"note: {note}", markup=False)
    if s.stopped_reason:
        out.print(f"stopped: {s.stopped_reason}")
    out.print(f"results: {s.db}; one record per turn: autolabel export --run {s.run_id} ...", markup=False)


def plan_cascade_cmd(task: str, cascade: Path, settings: Settings, input: Path, sample_dialogues: int) -> None:
    from autolabel.cascade_plan import plan_cascade

    p = plan_cascade(input, Cascade(task, cascade, settings=settings), sample_dialogues=sample_dialogues)
    table = Table("stage", "model", title=f"plan: {p.task}, cascade {cascade.name}")
    for col in ("share of turns", "turns", "calls", "cost (USD)"):
        table.add_column(col, justify="right")
    for st in p.stages:
        cost = "n/a" if st.cost_usd is None else f"{st.cost_usd:.4f}"
        table.add_row(str(st.stage), st.model, f"{st.share:.0%}", f"{st.turns:,}", f"{st.calls:,}", cost)
    total = "n/a" if p.cost_usd is None else f"{p.cost_usd:.4f}"
    table.add_row("total", "", "", "", f"{sum(s.calls for s in p.stages):,}", total, style="bold")
    out.print(table)
    out.print(f"escalation: {p.rate_source}", markup=False)
    for st in p.stages:
        if st.plan is not None:
            out.print(f"stage {st.stage}: {st.plan.price_source}", markup=False)
            for note in st.plan.notes:
                out.print(f"note (stage {st.stage}): {note}", markup=False)
