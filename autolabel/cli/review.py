"""``autolabel review``: queue status, the web UI, reviewers, required reviews, export."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from autolabel.settings import Settings

if TYPE_CHECKING:  # LangGraph, the openai client and the tokenizers load only in the commands that use them
    pass
from autolabel.cli.app import OnInvalid, app, console, out, settings_from  # noqa: F401

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
    from autolabel.review.queue import ReviewQueue

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
    if s["stranded"]:
        out.print(f"{s['stranded']} item(s) no reviewer can take: every reviewer so far has reviewed them, and"
                  " they need more reviews (add a reviewer, or lower `review require`)", markup=False, soft_wrap=True)
    if s["skipped"]:
        out.print(f"{s['skipped']} open item(s) were skipped: they come back to those who skipped them last",
                  markup=False, soft_wrap=True)
    if s["invalid_gold"]:
        out.print(f"{s['invalid_gold']} gold row(s) break the task's rules: see `autolabel review doctor`",
                  markup=False)


@review_app.command("doctor")
def review_doctor(
    db: ReviewDb = "autolabel.db",
    run_id: Annotated[str | None, typer.Option("--run", help="Only this run's gold.")] = None,
) -> None:
    """List gold rows that break the task's rules (options, roles, how many, required fields); exit 7 if any."""
    from autolabel.errors import ReviewError
    from autolabel.review.queue import ReviewQueue

    with ReviewQueue.open(db) as queue:
        found = queue.gold_problems(run_id)
    for g in found:
        where = f"{g['dialogue_id']}/{g['turn_index']}" if g["kind"] == "turn" else f"{g['dialogue_id']}/session"
        out.print(f"gold {g['gold_id']} (item {g['item_id']}, {g['run_id']} {where}): {'; '.join(g['problems'])}",
                  markup=False, soft_wrap=True)
    if found:
        out.print(f"{len(found)} gold row(s) break the task's rules", markup=False)
        raise typer.Exit(ReviewError.exit_code)
    out.print("every gold row follows the task's rules", markup=False)


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
    from autolabel.review.web import serve

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
    from autolabel.review.queue import ReviewQueue

    with ReviewQueue.open(db) as queue:
        token = queue.add_reviewer(name, replace=replace)
    out.print(token, markup=False)


@review_app.command("remove-reviewer")
def review_remove_reviewer(
    name: Annotated[str, typer.Argument(help="The reviewer to remove.")],
    db: ReviewDb = "autolabel.db",
    by: Annotated[str, typer.Option(help="Who removes them (audit log).")] = "admin",
) -> None:
    """Remove a reviewer: their token and browser sessions stop working, their held items go back (audited)."""
    from autolabel.review.queue import ReviewQueue

    with ReviewQueue.open(db) as queue:
        held = queue.remove_reviewer(name, by=by)
    out.print(f"removed {name}: their token no longer works; {held} item(s) they held went back to the queue",
              markup=False, soft_wrap=True)


@review_app.command("require")
def review_require(
    n: Annotated[int, typer.Argument(help="Independent reviews each open item needs.")],
    db: ReviewDb = "autolabel.db",
    run_id: Annotated[str | None, typer.Option("--run", help="Only this run's items.")] = None,
    by: Annotated[str, typer.Option(help="Who asks (audit log).")] = "admin",
) -> None:
    """Ask for N independent reviews of every open item; disagreements go to adjudication."""
    from autolabel.review.queue import ReviewQueue

    with ReviewQueue.open(db) as queue:
        changed = queue.require_reviews(n, run_id=run_id, by=by)
    out.print(f"{changed} open item(s) now need {n} review(s)", markup=False)


@review_app.command("export")
def review_export(
    db: ReviewDb = "autolabel.db",
    out_path: Annotated[Path, typer.Option("--out", help="Output JSONL file.")] = Path("reviews.jsonl"),
) -> None:
    """Export every review and the gold labels as JSONL."""
    from autolabel.review.queue import ReviewQueue

    with ReviewQueue.open(db) as queue:
        counts = queue.export_reviews(out_path)
    out.print(f"wrote {counts['reviews']} reviews and {counts['gold']} gold items to {out_path}")


