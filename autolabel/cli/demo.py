"""``autolabel demo``: the bundled demo dialogues on the embedded model, offline, then a few labeled turns."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from autolabel.cli.app import app, out, settings_from
from autolabel.cli.run import print_summary, run_with_progress
from autolabel.settings import Settings

LOCAL_TURNS_PER_CALL = 10
"""Turns per call of the demo on an embedded model: a demo dialogue (7-9 turns) in one label call and one critique,
instead of one of each per turn. On 2 cores prompt evaluation is much of an embedded call's time, and windows send the
system prompt and the dialogue once per window, not once per turn (benchmarks/bench_local.py compares both on the
same sample); with windows of 8 the 9-turn dialogue took a second label call and critique for its last turn."""


def demo_settings(model: str | None, db: str) -> Settings:
    """The demo's settings: the user's (flags, ``AUTOLABEL_*``), with windows of ``LOCAL_TURNS_PER_CALL`` turns on
    an embedded model unless ``AUTOLABEL_TURNS_PER_CALL`` says otherwise."""
    settings = settings_from(model=model, db=db)
    if settings.family == "local" and "turns_per_call" not in Settings().model_fields_set:
        settings = settings_from(model=model, db=db, turns_per_call=LOCAL_TURNS_PER_CALL)
    return settings


@app.command("demo")
def demo_cmd(
    db: Annotated[str, typer.Option(help="Where to keep the results.")] = "autolabel-demo.db",
    model: Annotated[str | None, typer.Option(help="Model (default: the embedded local model).")] = None,
) -> None:
    """Label the bundled demo dialogues (English and Chinese) offline on the embedded model."""
    from autolabel.annotator import Annotator
    from autolabel.demo import demo_path, review_command, showcase

    annotator = Annotator("psy-insight", settings=demo_settings(model, db))
    summary, _ = run_with_progress(annotator, demo_path(), "skip")
    print_summary(summary)
    table = Table("turn", "label", "confidence", "result", title="a few labeled turns")
    for t in showcase(db, summary.run_id):
        result = t.status if not t.reasons else f"{t.status}: {', '.join(t.reasons)}"
        conf = f"{t.confidence:.2f}" if t.confidence is not None else "-"
        table.add_row(f"{t.dialogue_id} #{t.turn_index} {t.speaker}\n{t.text}", t.labels or "-", conf, result)
    out.print(table)
    out.print(f"review the flagged turns:  {review_command(db)}")
    out.print(f"export: autolabel export --db {db} --format jsonl --out demo-labels.jsonl")
