"""The CLI at its edges, by subprocess: first contact (bare command, --version, usage errors) and a corrupt
database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from autolabel import __version__


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autolabel", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "1000", **(env or {})})


# -- first contact ------------------------------------------------------------------------------------------

def test_version_prints_the_version_and_exits_0() -> None:
    r = cli("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == __version__
    assert "error" not in r.stderr.lower()


def test_bare_command_prints_the_help_and_exits_0() -> None:
    r = cli()
    assert r.returncode == 0, r.stderr
    assert "Usage" in r.stdout and "run" in r.stdout and "export" in r.stdout
    assert "error" not in (r.stdout + r.stderr).lower()


def test_a_usage_error_is_clicks_message_and_exit_2_never_unexpected() -> None:
    r = cli("no-such-command")
    assert r.returncode == 2
    assert "unexpected" not in r.stderr and "No such command" in r.stderr
    r = cli("review")  # a group without its subcommand: its help
    assert r.returncode in (0, 2) and "Usage" in r.stdout and "unexpected" not in r.stderr


# -- a corrupt database ---------------------------------------------------------------------------------------

@pytest.fixture
def corrupt_db(tmp_path: Path) -> Path:
    db = tmp_path / "c.db"
    db.write_bytes(os.urandom(100_000))
    return db


def _one_store_line(r: subprocess.CompletedProcess[str], db: Path) -> str:
    assert r.returncode == 4, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "unexpected" not in r.stderr and "sqlalche.me" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr
    assert str(db) in errors[0] and "not a database" in errors[0], errors[0]
    return errors[0]


def test_a_corrupt_database_is_one_line_and_exit_4_for_every_command(corrupt_db: Path, tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": "a", "turns": [{"speaker": "Seeker", "text": "hi"}]}\n', encoding="utf-8")
    db = str(corrupt_db)
    _one_store_line(cli("run", str(inp), "--model", "openai:x", "--base-url", "http://127.0.0.1:9/v1",
                        "--db", db, env={"OPENAI_API_KEY": "k"}), corrupt_db)
    _one_store_line(cli("export", "--db", db, "--out", str(tmp_path / "o.jsonl")), corrupt_db)
    _one_store_line(cli("review", "status", "--db", db), corrupt_db)
    _one_store_line(cli("review", "serve", "--db", db, "--port", "0", "--token", "t" * 32, timeout=60),
                    corrupt_db)
    assert corrupt_db.stat().st_size == 100_000  # not overwritten

