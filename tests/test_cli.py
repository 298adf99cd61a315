"""Every CLI command end to end (Typer's CliRunner or a subprocess), its help text, and the README naming it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from autolabel.cli import app
from tests.conftest import REPO
from tests.fake_openai import FakeOpenAIServer

runner = CliRunner()


def all_commands(group: click.Group, prefix: str = "autolabel") -> dict[str, click.Command]:
    out: dict[str, click.Command] = {}
    for name, cmd in group.commands.items():
        path = f"{prefix} {name}"
        out[path] = cmd
        if hasattr(cmd, "commands"):  # typer's groups are not click.Group
            out.update(all_commands(cmd, path))
    return out


COMMANDS = all_commands(typer.main.get_command(app))  # type: ignore[arg-type]


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_command_has_help_and_is_in_the_readme(path: str) -> None:
    cmd = COMMANDS[path]
    assert (cmd.help or "").strip(), f"{path} has no help text"
    result = runner.invoke(app, [*path.split()[1:], "--help"])
    assert result.exit_code == 0 and "Usage" in result.output
    assert f"`{path}" in (REPO / "README.md").read_text(encoding="utf-8"), f"README does not document {path}"


def test_tasks_list_show_validate(tmp_path: Path) -> None:
    r = runner.invoke(app, ["tasks", "list"])
    assert r.exit_code == 0 and "psy-insight" in r.output and "support-strategy" in r.output
    r = runner.invoke(app, ["tasks", "show", "psy-insight", "--language", "zh"])
    assert r.exit_code == 0 and "[A] Anger" in r.output and "愤怒" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: Bad Name\nversion: 1\nroles: {}\nlabels:\n  - {name: x, scope: turn, options: [{name: a}]}\n")
    r = runner.invoke(app, ["tasks", "validate", str(bad)])
    assert r.exit_code == 2
    for path in ("$.name", "$.roles", "$.labels[0].options"):
        assert path in r.output
    assert "$.version" not in r.output  # a number is a version (issue 19)
    good = REPO / "schemas" / "tasks" / "support-strategy.yaml"
    r = runner.invoke(app, ["tasks", "validate", str(good)])
    assert r.exit_code == 0 and "valid" in r.output


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "autolabel", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_run_and_export_through_the_console_entry(small_input: Path, tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    with FakeOpenAIServer() as srv:
        r = cli("run", str(small_input), "--model", "openai:test", "--base-url", srv.base_url, "--db", str(db))
    assert r.returncode == 0, r.stderr
    assert "accepted" in r.stdout and "cache hits" in r.stdout and "turns/s" in r.stderr
    out = tmp_path / "labels.jsonl"
    r = cli("export", "--db", str(db), "--format", "jsonl", "--out", str(out))
    assert r.returncode == 0 and out.exists()
    assert all(json.loads(line)["run_id"] for line in out.read_text().splitlines())


def test_one_line_errors_without_tracebacks(tmp_path: Path) -> None:
    r = cli("run", str(tmp_path / "missing.jsonl"), "--model", "openai:x", "--base-url", "http://127.0.0.1:9/v1",
            "--db", str(tmp_path / "r.db"))
    assert r.returncode == 3 and "missing.jsonl" in r.stderr and "Traceback" not in r.stderr
    spec = tmp_path / "t.yaml"
    spec.write_text("name: x\n")
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": "a", "turns": [{"speaker": "Seeker", "text": "hi"}]}) + "\n")
    r = cli("run", str(inp), "--task", str(spec), "--model", "openai:x", "--db", str(tmp_path / "r.db"))
    assert r.returncode == 2 and "t.yaml" in r.stderr and "Traceback" not in r.stderr
    r = cli("run", str(inp), "--model", "openai:gpt-4o-mini", "--db", str(tmp_path / "r.db"),
            env={"OPENAI_API_KEY": ""})
    assert r.returncode == 2 and "OPENAI_API_KEY" in r.stderr and "Traceback" not in r.stderr
    r = cli("run", str(inp), "--model", "openai:x", "--base-url", "http://127.0.0.1:9/v1", "--db",
            str(tmp_path / "r.db"), env={"AUTOLABEL_MAX_RETRIES": "1", "AUTOLABEL_RETRY_DEADLINE": "2"})
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "cannot reach the endpoint" in r.stdout + r.stderr


def test_bad_records_are_reported_with_file_and_line_and_good_ones_go_through(tmp_path: Path) -> None:
    inp = tmp_path / "mixed.jsonl"
    good = {"id": "ok", "turns": [{"speaker": "Seeker", "text": "I feel fine today."}]}
    inp.write_text(json.dumps(good) + "\n{not json\n" + json.dumps({"id": "x", "turns": "nope"}) + "\n")
    db = tmp_path / "r.db"
    with FakeOpenAIServer() as srv:
        r = cli("run", str(inp), "--model", "openai:test", "--base-url", srv.base_url, "--db", str(db))
        assert r.returncode == 3
        assert "mixed.jsonl:2" in r.stderr and "mixed.jsonl:3" in r.stderr
        assert "1" in r.stdout  # the good dialogue was labeled
        r = cli("run", str(inp), "--model", "openai:test", "--base-url", srv.base_url, "--db", str(db),
                "--on-invalid", "fail")
        assert r.returncode == 3 and "mixed.jsonl:2" in r.stderr
