"""``autolabel tasks``: list, show and validate task specs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from autolabel.tasks import list_tasks, load_task, localize, validate_task_file

if TYPE_CHECKING:  # LangGraph, the openai client and the tokenizers load only in the commands that use them
    pass
from autolabel.cli.app import OnInvalid, app, console, out, settings_from  # noqa: F401

tasks_app = typer.Typer(help="List, show and validate task specs.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")

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


