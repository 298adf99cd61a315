"""``autolabel export``, ``import-reviews``, ``eval`` and ``calibrate``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from autolabel.errors import ReviewError
from autolabel.interop.export import ExportFormat, export

if TYPE_CHECKING:  # LangGraph, the openai client and the tokenizers load only in the commands that use them
    pass
from autolabel.cli.app import OnInvalid, app, console, out, settings_from  # noqa: F401

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
    from autolabel.interop.tools import import_reviews

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
    n_boot: Annotated[int | None, typer.Option(help="Bootstrap resamples (by dialogue) for 95% intervals "
                                                    "(default 1000; 200 under 40 dialogues).")] = None,
) -> None:
    """Evaluate a run against gold: label quality, coverage, confidence quality; per stage for a cascade's run;
    JSON + HTML report."""
    from autolabel.quality.evaluate import evaluate
    from autolabel.quality.report import summary_rows

    report = evaluate(db, gold, run_id=run_id, out_dir=out_dir, n_boot=n_boot)
    table = Table(title=f"run {report['run']['id']} against {report['gold']['source']}")
    for col in ("field", "n", "accuracy*", "macro-F1", "κ*", "AUROC", "ECE", "error recall@20%"):
        table.add_column(col, justify="left" if col == "field" else "right", no_wrap=col == "field")
    for r in summary_rows(report):
        table.add_row(r["field"], str(r["n"]), *(_fmt(r[k]) for k in ("accuracy", "macro_f1", "kappa", "auroc",
                                                                        "ece", "error_recall_20")))
    out.print(table)
    out.print("* multi-label fields: accuracy is exact match, κ the mean of the options' Cohen's κ", style="dim")
    for kind, c in report["coverage"].items():
        if c["total"]:
            out.print(f"{kind}s: {c['accepted']} accepted, {c['flagged']} flagged, {c['reviewed']} reviewed, "
                      f"{c['failed']} failed of {c['total']}")
    g = report["gold"]
    out.print(f"gold: {g['labels']} labels, {g['matched']} matched; {g['unmatched']} matched no annotated turn "
              "(or name a field not asked of its turn)", soft_wrap=True)
    if report.get("stages"):
        _print_stages(report["stages"])
    out.print(f"report: {report['files']['html']}\n        {report['files']['json']}", markup=False)


def _print_stages(stages: list[dict[str, Any]]) -> None:
    """A cascade run's stages: coverage and cost, then the quality of what each accepted and its certified bound."""
    table = Table(title="per stage (a stage's bound holds for the turns that reach it)")
    for col in ("stage", "model", "reached", "decided", "coverage", "calls", "cost/label"):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=col != "model")
    for st in stages:
        table.add_row(str(st["stage"]), st["model"], str(st["reached"]), str(st["decided"]), _fmt(st["coverage"]),
                      str(st["calls"]), _fmt(st["cost_per_accepted_label"], 5))
    out.print(table)
    fields = Table(title="accepted by each stage, against gold; its certified bound")
    for col in ("stage", "field", "n", "accuracy*", "κ*", "U", "α"):
        fields.add_column(col, justify="left" if col == "field" else "right", no_wrap=True)
    for st in stages:
        for name in sorted(set(st["accepted_quality"]) | set(st["certified"])):
            q, c = st["accepted_quality"].get(name, {}), st["certified"].get(name, {})
            fields.add_row(str(st["stage"]), name, _fmt(q.get("n")), _fmt(q.get("accuracy")), _fmt(q.get("kappa")),
                           _fmt(c.get("upper_bound")), _fmt(c.get("alpha"), 2))
    out.print(fields)
    out.print("coverage: share of all the run's turns the stage decided; cost/label: its cost per label it accepted; "
              "U: the bound `autolabel calibrate` certified for the stage's model (– when not calibrated)",
              style="dim", soft_wrap=True)


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
    """Fit a calibrator per field and certify its auto-accept threshold; later runs route with them. A cascade's
    run: per stage, on the turns that reached it, stored under the stage's model."""
    from autolabel.quality.evaluate import calibrate

    results = calibrate(db, gold, run_id=run_id, alpha=alpha, delta=delta, method=method, min_n=min_n)
    staged = any("stage" in r for r in results)  # a cascade's run: one table per stage, on the turns that reached it
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(f"stage {r['stage']} ({r['model']}): " if staged else "", []).append(r)
    for where, rows in groups.items():
        table = Table(title=f"{where}certified auto-accept thresholds (fixed-sequence Clopper–Pearson)",
                      show_edge=False)
        for col in ("field", "method", "α", "δ", "n", "k", "U", "threshold", "coverage"):
            table.add_column(col, justify="left" if col in ("field", "method") else "right",
                             no_wrap=col in ("field", "method"))
        for r in rows:
            threshold = "none" if r["threshold"] is None else _fmt(r["threshold"])
            table.add_row(r["field"], r["method"], _fmt(r["alpha"], 2), _fmt(r["delta"], 2), str(r["n"]),
                          str(r["k"]), _fmt(r["upper_bound"]), threshold, _fmt(r["coverage"]))
        out.print(table)
    for r in results:
        flag_all = " -> every label of this field will be flagged" if r["threshold"] is None else ""
        where = f"stage {r['stage']} ({r['model']}) " if staged else ""
        out.print(f"{where}{r['field']}: {r['reason']}{flag_all}", markup=False, soft_wrap=True)


