"""``autolabel tasks``: list, show and validate task specs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from autolabel.tasks import (
    LabelField,
    builtin_demo,
    list_tasks,
    load_task,
    localize,
    task_file_problems,
    task_file_warnings,
)

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
        out.print(f"\n[bold]{f.name}[/] ({f.scope}, {_kind(f)}, roles: {roles}): "
                  f"{localize(f.description, language)}", soft_wrap=True)
        for o in f.options:
            parent = f"{o.parent} > " if o.parent and not o.name.startswith(o.parent) else ""
            out.print(f"  [{o.code}] {parent}{o.name}: {localize(o.description, language)}", markup=False,
                      soft_wrap=True)
    for x in t.texts:
        out.print(f"\n[bold]{x.name}[/] (text, {x.scope}): {localize(x.description, language)}", soft_wrap=True)
    if t.source.startswith("builtin:") and (demo := builtin_demo(t.name)) is not None:
        out.print(f"\ndemo dialogues: {demo}", soft_wrap=True)
    for which, keys in (("dialogue", t.context.dialogue_meta), ("turn", t.context.turn_meta)):
        if keys:
            out.print(f"\n{which} metadata shown to the model: "
                      + ", ".join(k.key + (f" ({localize(k.label, language)})" if k.label else "") for k in keys),
                      soft_wrap=True)


def _kind(f: LabelField) -> str:
    if f.scale:
        return f"rating {f.scale[0]}-{f.scale[-1]}"
    kind = "multi" if f.multi else "single"
    if f.has_children:
        kind += ", sub-codes" + (" (parent allowed)" if f.allow_parent else "")
    return kind + (", ordinal" if f.ordinal else "")


@tasks_app.command("validate")
def tasks_validate(path: Annotated[Path, typer.Argument(help="Task spec file (YAML or JSON).")]) -> None:
    """Validate a task spec file; print every problem with its line and JSON path."""
    problems = task_file_problems(path)
    for w in task_file_warnings(path) if not problems else []:  # a spec that loads, as it probably was not meant
        where = f"{path}:{w.line}" if w.line else f"{path}"
        out.print(f"{where}: {w.path}: warning: {w.message}", markup=False, soft_wrap=True)
    if problems:
        for p in problems:  # one line each, never wrapped: grep and editors read file:line
            where = f"{path}:{p.line}" if p.line else f"{path}"
            out.print(f"{where}: {p.path}: {p.message}", markup=False, soft_wrap=True)
        out.print(f"{len(problems)} problem{'s' * (len(problems) != 1)}", soft_wrap=True)
        raise typer.Exit(2)
    out.print(f"{path}: valid")


