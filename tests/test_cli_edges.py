"""The CLI at its edges, by subprocess: first contact (bare command, --version, usage errors) and a corrupt
database."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from autolabel import __version__
from tests.conftest import dialogue, write_jsonl
from tests.fake_openai import FakeOpenAIServer


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



def test_a_long_error_is_one_line_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    """A task spec error names the file and every problem: hundreds of characters, still exactly one line on a
    pipe (rich would wrap it at 80 columns), so grep and log readers see the whole error."""
    folder = tmp_path / ("specs-" + "x" * 80)
    folder.mkdir()
    spec = folder / "a_spec_with_a_long_name.yaml"
    spec.write_text("name: broken\nversion: '1'\nlabels:\n  - name: first_field_with_a_rather_long_name\n"
                    "    type: nonsense\n  - name: second_field_with_a_rather_long_name\n    options: 42\n",
                    encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}  # what a pipe or a log gets
    r = subprocess.run([sys.executable, "-m", "autolabel", "tasks", "show", str(spec)], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: {spec}: 6 problem(s): ") and len(lines[0]) > 400, lines[0]
    assert lines[0].endswith("$.labels[1].options (line 7): expected a list, got a whole number 42"), lines[0]


# -- input edge cases ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "content"), [("e.jsonl", b""), ("e.jsonl", b"\n\n"), ("e.json", b""),
                                               ("e.csv", b"")])
def test_an_empty_input_file_is_one_error_line_and_exit_3_in_every_format(tmp_path: Path, name: str,
                                                                          content: bytes) -> None:
    inp = tmp_path / name
    inp.write_bytes(content)
    db = tmp_path / "r.db"
    r = cli("run", str(inp), "--model", "openai:x", "--base-url", "http://127.0.0.1:9/v1", "--db", str(db),
            env={"OPENAI_API_KEY": "k"})
    assert r.returncode == 3, (r.stdout, r.stderr)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {inp}: the file is empty: no dialogues" + (" (not even a header)" if name ==
                                                                           "e.csv" else "")], r.stderr
    assert "0 dialogues" not in r.stdout


def test_a_json_record_nested_too_deeply_is_skipped_and_the_run_goes_on(tmp_path: Path) -> None:
    good = [json.dumps({"id": f"d{i}", "turns": [{"speaker": "Seeker", "text": f"I feel tired {i}."}]})
            for i in range(3)]
    deep = ('{"id": "deep", "turns": [{"speaker": "Seeker", "text": "x"}], "meta": ' + "[" * 100_000
            + "]" * 100_000 + "}")
    inp = tmp_path / "in.json"
    inp.write_text("[" + ",".join([good[0], deep, good[1], good[2]]) + "]", encoding="utf-8")
    db = tmp_path / "r.db"
    with FakeOpenAIServer() as srv:
        r = cli("run", str(inp), "--model", "openai:test", "--base-url", srv.base_url, "--db", str(db),
                "--no-critique", env={"OPENAI_API_KEY": "k"})
    assert r.returncode == 3, r.stderr
    assert f"{inp}:2: invalid JSON: nested too deeply; record skipped" in r.stderr
    with sqlite3.connect(db) as conn:
        done = sorted(d for (d,) in conn.execute("SELECT dialogue_id FROM dialogues WHERE status='done'"))
    assert done == ["d0", "d1", "d2"]


# -- progress you can read ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("turns", "seconds", "shown"), [
    (12, 4.0, "3.0 turns/s"), (3, 60.0, "3.0 turns/min"), (1, 50.0, "1.2 turns/min"), (2, 300.0, "150 s/turn"),
    (0, 10.0, "– turns/s"),
])
def test_a_slow_rate_is_shown_per_minute_or_as_seconds_per_turn(turns: int, seconds: float, shown: str) -> None:
    from autolabel.cli.run import rate_text

    assert rate_text(turns, seconds) == shown


def test_without_a_terminal_progress_lines_come_at_a_steady_interval(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [dialogue(f"d{i}", 4) for i in range(2)])
    with FakeOpenAIServer(latency=0.4) as srv:  # 8 calls one after another: ~3 s, against lines every 0.25 s
        r = cli("run", str(inp), "--model", "openai:test", "--base-url", srv.base_url, "--db", str(tmp_path / "r.db"),
                "--no-critique", "--concurrency", "1", "--progress-every", "0.25", env={"OPENAI_API_KEY": "k"})
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("progress:")]
    assert len(lines) >= 4, r.stderr  # not only one line per finished dialogue (there are 2)
    assert lines[0].startswith("progress: 0/8 turns (0%)"), lines
    assert any(line.startswith("progress: 4/8 turns (50%)") for line in lines), lines
    assert all("elapsed" in line for line in lines)
