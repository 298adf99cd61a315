"""A database that cannot be written: one clear line from the CLI (exit 4, no traceback), nothing committed lost.

What is emulated, and how:

- **read-only database**: as an ordinary user the file is made read-only (``chmod 0444``) in a read-only folder
  (``0555``). Root ignores file permissions, so as root the run opens the same file through SQLite's read-only URI
  (``file:runs.db?mode=ro``) — what SQLite itself falls back to when it cannot open a file for writing.
- **disk full**: the run's process may not grow any file past a limit (``RLIMIT_FSIZE``, which binds root too); the
  kernel refuses the write (EFBIG) as a full disk would (ENOSPC), and SQLite reports an I/O error mid-run.
"""

from __future__ import annotations

import os
import resource
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from autolabel import Annotator
from tests.conftest import dialogue, write_jsonl
from tests.fake_openai import FakeOpenAIServer


def _cli_run(input: Path, db: str, base_url: str,
             preexec_fn: Callable[[], None] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autolabel", "run", str(input), "--model", "openai:test",
                           "--base-url", base_url, "--db", db], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "CI": "1", "COLUMNS": "1000"}, preexec_fn=preexec_fn)  # no wrapping


def _one_line_store_error(r: subprocess.CompletedProcess[str], db: Path) -> str:
    assert r.returncode == 4, r.stderr
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and db.name in errors[0], r.stderr
    return errors[0]


def _dump(db: Path) -> list[str]:
    """Everything in the database, as SQL."""
    with sqlite3.connect(db) as conn:
        return list(conn.iterdump())


def _finished(db: Path) -> dict[str, int]:
    """Dialogues marked done, each with the number of its turns stored."""
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT d.dialogue_id, COUNT(t.turn_index) FROM dialogues d LEFT JOIN turns t ON"
                                 " t.run_id=d.run_id AND t.dialogue_id=d.dialogue_id WHERE d.status='done'"
                                 " GROUP BY d.dialogue_id").fetchall())


@contextmanager
def _read_only(db: Path) -> Iterator[str]:
    """The database as a read-only file (see the module docstring); yields what to pass as ``--db``."""
    if os.geteuid() == 0:
        yield f"file:{db}?mode=ro"
        return
    os.chmod(db, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    os.chmod(db.parent, stat.S_IRUSR | stat.S_IXUSR)
    try:
        yield str(db)
    finally:
        os.chmod(db.parent, stat.S_IRWXU)
        os.chmod(db, stat.S_IRUSR | stat.S_IWUSR)


def test_read_only_database_one_line_exit_4_and_nothing_lost(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    folder.mkdir()
    db = folder / "runs.db"
    first = write_jsonl(tmp_path / "first.jsonl", [dialogue(f"a{i}", 4) for i in range(3)])
    more = write_jsonl(tmp_path / "more.jsonl", [dialogue(f"b{i}", 4) for i in range(3)])
    with FakeOpenAIServer() as srv:
        annotator = Annotator("psy-insight", model="openai:test", base_url=srv.base_url, db=db)
        annotator.run(first)
        before = _dump(db)
        with _read_only(db) as target:
            r = _cli_run(more, target, srv.base_url)
        line = _one_line_store_error(r, db)
        assert "readonly" in line or "read-only" in line or "unable to open" in line, line
        assert _dump(db) == before  # not a byte of what was committed changed
        again = annotator.run(first)  # writable again: the finished run is all there
    assert again.skipped_dialogues == 3 and again.calls == 0 and again.turns == 12


def test_disk_full_mid_run_one_line_exit_4_and_nothing_committed_lost(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    first = write_jsonl(tmp_path / "first.jsonl", [dialogue(f"a{i}", 4) for i in range(3)])
    big = write_jsonl(tmp_path / "big.jsonl", [dialogue(f"b{i:02d}", 5) for i in range(12)])
    with FakeOpenAIServer() as srv:
        annotator = Annotator("psy-insight", model="openai:test", base_url=srv.base_url, db=db)
        annotator.run(first)
        before = _finished(db)
        limit = db.stat().st_size + 2_500_000  # room for a few dialogues, not for twelve

        def no_room() -> None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        r = _cli_run(big, str(db), srv.base_url, preexec_fn=no_room)
        line = _one_line_store_error(r, db)
        assert "cannot write to" in line and ("disk" in line or "full" in line), line
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        after = _finished(db)
        assert {k: v for k, v in after.items() if k in before} == before  # the first run is intact
        assert all(n == 5 for k, n in after.items() if k.startswith("b"))  # a dialogue is done whole or not at all
        resumed = annotator.run(big)  # room again: the run goes on from where the disk filled up
    done_in_failed_run = sum(k.startswith("b") for k in after)
    assert resumed.skipped_dialogues == done_in_failed_run and resumed.dialogues == 12 and resumed.turns == 60
    assert len(_finished(db)) == 15
