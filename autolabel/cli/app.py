"""The ``autolabel`` command's root: the Typer app, global options, and the one place where library errors become one
line and an exit code."""

from __future__ import annotations

import logging
import sqlite3
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any

import typer
from rich.console import Console
from sqlalchemy.exc import SQLAlchemyError

from autolabel import __version__
from autolabel.errors import AutolabelError, Stopped, StoreError
from autolabel.settings import Settings

app = typer.Typer(help="Annotate counseling dialogues with an LLM: explained, critiqued, validated, reviewed.",
                  invoke_without_command=True, add_completion=False, pretty_exceptions_enable=False)
console = Console(stderr=True)
out = Console()


@dataclass
class CliState:
    """What the global options decide for one invocation; Typer's context carries it (``ctx.obj``) to main()."""

    debug: bool = False


class OnInvalid(str, Enum):
    skip = "skip"
    fail = "fail"


def _print_version(value: bool) -> None:
    if value:
        out.print(__version__, markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs (may include dialogue text).")]
    = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                          callback=_print_version)] = False,
) -> None:
    """autolabel: LLM annotation of counseling dialogues with self-critique, validation and human review."""
    ctx.ensure_object(CliState).debug = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not debug:  # third-party loggers may quote payloads; keep them quiet at the default level
        for name in ("instructor", "httpx", "openai", "langgraph", "aiosqlite"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    if ctx.invoked_subcommand is None and not ctx.resilient_parsing:  # bare `autolabel`: the help, exit 0
        help_text = ctx.get_help()  # with rich installed Typer prints it itself and returns ""
        if help_text:
            out.print(help_text, markup=False, highlight=False)
        raise typer.Exit()


def settings_from(**kw: Any) -> Settings:
    return Settings.model_validate({**Settings().model_dump(), **{k: v for k, v in kw.items() if v is not None}})


def end_of_run(stopped_reason: str | None, cost_usd: float, max_cost: float | None, errors: Sequence[object]) -> None:
    """After a run's summary: a budget stop says how to go on (exit 6), skipped input records are listed (exit 3)."""
    from autolabel.errors import BudgetExceeded

    if stopped_reason == "budget":
        console.print(f"cost budget reached: ${cost_usd:.4f} spent, --max-cost ${max_cost or 0:g}; finished "
                      "dialogues are stored, run again with a higher --max-cost to go on", style="yellow",
                      markup=False)
        raise typer.Exit(BudgetExceeded.exit_code)
    for e in errors[:20]:
        console.print(f"skipped: {e}", markup=False)
    if errors:
        console.print(f"{len(errors)} bad input record(s) skipped", style="yellow")
        raise typer.Exit(3)


def _fail(message: str, code: int) -> None:
    console.print(f"error: {message}", markup=False, style="red", soft_wrap=True)
    sys.exit(code)


OPTIONAL_VALUES = {"--ray": "local"}
"""Options whose value may be left out, and what they mean then (``--ray`` alone: a Ray instance on this machine).
Neither Typer nor the click it ships declares an option with an optional value, so ``main`` fills the value in."""


def with_optional_values(args: list[str]) -> list[str]:
    """``args`` with the value of an ``OPTIONAL_VALUES`` option filled in where it was left out: the option last, or
    followed by another option (``--ray --db x``), as click's options with an optional value read it."""
    out = list(args)
    for i in range(len(out) - 1, -1, -1):
        if out[i] in OPTIONAL_VALUES and (i + 1 == len(out) or out[i + 1].startswith("-")):
            out.insert(i + 1, OPTIONAL_VALUES[out[i]])
    return out


def main() -> None:
    """Console entry point: library errors become one line on stderr and an exit code.

    Typer runs in standalone mode, so its own usage errors (unknown command or option, a group without its
    subcommand) print click's message and exit 2, and ``typer.Exit(code)`` exits with that code. What comes out of
    the app is ours to map: an AutolabelError is one line and its exit code; a database or file error that got past
    the library is one line too (exit 4 / 1); anything else is a bug and says so."""
    state = CliState()
    try:
        app(args=with_optional_values(sys.argv[1:]), obj=state)
    except Stopped as e:  # not an error: the run is resumable
        console.print(str(e), style="yellow", markup=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except AutolabelError as e:
        if state.debug:
            raise
        _fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        console.print("stopped: run the same command again to resume", style="yellow", markup=False, soft_wrap=True)
        sys.exit(130)
    except (SQLAlchemyError, sqlite3.Error) as e:  # a safety net: the store maps these to StoreError itself
        if state.debug:
            raise
        reason = str(getattr(e, "orig", None) or e).splitlines()[0]
        _fail(f"database: {reason}", StoreError.exit_code)
    except OSError as e:
        if state.debug:
            raise
        _fail(f"{e.strerror or e}: {e.filename}" if e.filename else str(e), 1)
    except Exception as e:  # noqa: BLE001 - the one place where a bug becomes a message instead of a traceback
        if state.debug:
            raise
        _fail(f"internal error {type(e).__name__}: {e} - this is a bug in autolabel; please report it with the "
              "output of the same command run with --debug", 1)
