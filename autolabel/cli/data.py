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
    """Evaluate a run against gold: label quality, coverage, confidence quality; JSON + HTML report."""
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
    from autolabel.quality.evaluate import calibrate

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


