"""The ``autolabel`` command's root: the Typer app, global options, and the one place where library errors become one
line and an exit code."""

from __future__ import annotations

import logging
import sys
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from autolabel import __version__
from autolabel.errors import AutolabelError
from autolabel.settings import Settings

if TYPE_CHECKING:  # LangGraph, the openai client and the tokenizers load only in the commands that use them
    pass

app = typer.Typer(help="Annotate counseling dialogues with an LLM: explained, critiqued, validated, reviewed.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
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



def settings_from(**kw: Any) -> Settings:
    return Settings.model_validate({**Settings().model_dump(), **{k: v for k, v in kw.items() if v is not None}})



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
