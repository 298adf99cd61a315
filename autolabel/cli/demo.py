"""``autolabel demo``: the bundled demo dialogues on the embedded model, offline."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:  # LangGraph, the openai client and the tokenizers load only in the commands that use them
    pass
from autolabel.cli.app import OnInvalid, app, console, out, settings_from  # noqa: F401
from autolabel.cli.run import print_summary, run_with_progress


@app.command("demo")
def demo_cmd(
    db: Annotated[str, typer.Option(help="Where to keep the results.")] = "autolabel-demo.db",
    model: Annotated[str | None, typer.Option(help="Model (default: the embedded local model).")] = None,
) -> None:
    """Label the bundled demo dialogues (English and Chinese) offline on the embedded model."""
    from autolabel.annotator import Annotator
    from autolabel.demo import demo_path

    annotator = Annotator("psy-insight", settings=settings_from(model=model, db=db))
    summary, _ = run_with_progress(annotator, demo_path(), "skip")
    print_summary(summary)
    out.print(f"export: autolabel export --db {db} --format jsonl --out demo-labels.jsonl")


