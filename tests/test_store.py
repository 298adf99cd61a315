"""The store on real databases — a SQLite file and a PostgreSQL database of the test run's own cluster:
migrations, the same schema on both engines, refusing invalid records, the lease guard of queued dialogues, and
every command that takes ``--db`` doing its work on a PostgreSQL URL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from autolabel import Store, StoreError, load_task
from autolabel.errors import LeaseLost
from autolabel.persistence.migrations import MIGRATIONS
from tests.pg import Cluster, cluster, engine_fixture, new_db_fixture, pg_fixture  # noqa: F401  (fixtures)

EXPECTED = Path(__file__).with_name("expected_schema.sql")


def test_blank_database_migrates_to_the_expected_schema(new_db: str, engine: str, tmp_path: Path) -> None:
    store = Store.open(new_db)
    applied = [r[0] for r in store._rows("SELECT name FROM migrations ORDER BY name")]
    assert applied == [name for name, _ in MIGRATIONS]
    if engine == "sqlite":
        got = "\n".join(store.schema_sql()) + "\n"
        assert got == EXPECTED.read_text(), "schema changed: add a migration and update tests/expected_schema.sql"
    else:  # the same tables, columns, types, keys and indexes as SQLite, read from PostgreSQL's catalog
        reference = Store.open(tmp_path / "reference.db")
        assert store.schema_outline() == reference.schema_outline()
        assert any(line.startswith("job_dialogues.dialogue_json text") for line in store.schema_outline())
    again = Store.open(new_db)  # opening again applies nothing
    assert again.schema_outline() == store.schema_outline()
    assert again._rows("SELECT COUNT(*) FROM migrations")[0][0] == len(MIGRATIONS)


def _record(task, status: str = "accepted", emotion: str = "Anxiety") -> dict:
    return {"kind": "turn", "run_id": "r", "task": {"name": task.name, "version": task.version,
                                                   "hash": task.spec_hash},
            "model": "m", "dialogue_id": "d", "turn_index": 0, "speaker": "Seeker", "role": "seeker",
            "status": status, "labels": {"emotion": [emotion]}, "texts": {}, "confidence": {}, "flags": []}


def _final(rec: dict) -> list[dict]:
    return [{"kind": "turn", "turn_index": 0, "attempt": 0, "is_final": True, "valid": True, "status": rec["status"],
             "record": rec}]


def test_invalid_records_are_never_persisted_as_valid(new_db: str) -> None:
    store = Store.open(new_db)
    task = load_task("psy-insight")
    store.mark_running("r", "d", language="en", n_turns=1, meta={}, source=None)
    with pytest.raises(StoreError, match="not an option"):
        store.save_dialogue("r", "d", turns=[], annotations=_final(_record(task, emotion="Joyful")), review_items=[],
                            task=task, language="en")
    assert store._rows("SELECT COUNT(*) FROM annotations")[0][0] == 0
    assert store.dialogue_status("r", "d") == "running"


def test_a_worker_whose_lease_was_taken_over_cannot_overwrite(new_db: str) -> None:
    store = Store.open(new_db)
    task = load_task("psy-insight")
    store._write("INSERT INTO dialogues (run_id, dialogue_id, n_turns, status, meta_json, worker, lease_expires,"
                 " updated_at) VALUES ('r', 'd', 1, 'running', '{}', 'w2', 1e12, 'now')", {})  # w2 took it over
    with pytest.raises(LeaseLost, match="w1 no longer holds dialogue d"):
        store.save_dialogue("r", "d", turns=[], annotations=_final(_record(task, emotion="Sadness")),
                            review_items=[], task=task, language="en", lease_owner="w1")
    assert store._rows("SELECT COUNT(*) FROM annotations")[0][0] == 0
    store.save_dialogue("r", "d", turns=[], annotations=_final(_record(task)), review_items=[], task=task,
                        language="en", lease_owner="w2")
    assert store.dialogue_status("r", "d") == "done"
    with pytest.raises(LeaseLost):  # done: not even the lease holder writes it twice
        store.save_dialogue("r", "d", turns=[], annotations=_final(_record(task, emotion="Sadness")),
                            review_items=[], task=task, language="en", lease_owner="w2")
    assert store.final_records_of("r", "d")[0]["labels"] == {"emotion": ["Anxiety"]}


def test_cached_completions_written_before_007_are_still_answered(new_db: str, monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    from autolabel.persistence import migrations

    with monkeypatch.context() as m:  # the store as it was before migration 007, with one cached completion
        m.setattr(migrations, "MIGRATIONS", [x for x in MIGRATIONS if x[0] < "007"])
        old = Store.open(new_db)
        reply = {"id": "c1", "object": "chat.completion", "created": 1, "model": "m", "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "{\"a\": \"b\"}"},
             "logprobs": {"content": [{"token": "{", "logprob": -0.5, "bytes": [123], "top_logprobs": []}]}}]}
        old._write("INSERT INTO llm_cache (key, model, response_json, created_at) VALUES ('k1', 'm', :j, 'now')",
                   {"j": json.dumps(reply)})
        old.close()
    store = Store.open(new_db)  # applies 007
    assert store.cache_get("k1") == reply
    store.cache_put("k2", "m", reply)
    assert store.cache_get("k2") == reply and store.cache_get("k3") is None
    assert store._rows("SELECT COUNT(*), COUNT(response_json), COUNT(response) FROM llm_cache")[0] == (2, 1, 1)


def test_unreachable_database_is_a_clear_error(engine: str, tmp_path: Path) -> None:
    if engine == "sqlite":
        with pytest.raises(StoreError, match="does not exist"):
            Store.open(tmp_path / "no" / "such" / "dir.db")
    else:
        with pytest.raises(StoreError, match='cannot open database .*"no_such_db" does not exist'):
            Store.open(cluster().url("no_such_db"))


# -- every command that takes --db, on a PostgreSQL URL ------------------------------------------------------------

def db_commands() -> set[str]:
    """Every CLI command with a ``--db`` option, as ``autolabel ...``."""
    import typer

    from autolabel.cli import app

    found: set[str] = set()

    def walk(group: Any, prefix: str) -> None:  # typer's groups are not click.Group subclasses (typer >= 0.17)
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                walk(cmd, f"{prefix} {name}")
            elif any("--db" in p.opts for p in cmd.params):
                found.add(f"{prefix} {name}")

    walk(typer.main.get_command(app), "autolabel")  # type: ignore[arg-type]
    return found


def test_every_command_that_takes_db_works_on_postgresql(pg: Cluster, tmp_path: Path) -> None:
    """Each command with ``--db``, given a ``postgresql://`` URL, does its work in that database (``review serve``
    on PostgreSQL: tests/test_web.py). A new command with ``--db`` fails this test until it is added here."""
    import json

    from typer.testing import CliRunner

    from autolabel.cli import app
    from tests.conftest import dialogue, write_jsonl
    from tests.fake_openai import FakeOpenAIServer

    db = pg.database()
    first = write_jsonl(tmp_path / "first.jsonl", [dialogue(f"a{i}", 4) for i in range(3)])
    queued = write_jsonl(tmp_path / "queued.jsonl", [dialogue(f"q{i}", 3) for i in range(3)])
    runner = CliRunner()
    done: set[str] = set()

    def ok(*args: str, env: dict[str, str] | None = None) -> str:
        r = runner.invoke(app, list(args), env=env)
        assert r.exit_code == 0, (args, r.output, r.exception)
        done.add("autolabel " + " ".join(a for a in args[:2] if not a.startswith(("-", "/"))))
        return r.output

    def count(sql: str) -> int:
        return int(Store.open(db)._rows(sql)[0][0])

    with FakeOpenAIServer() as srv:
        assert "calls" in ok("plan", str(first), "--model", "openai:test", "--db", db)
        ok("run", str(first), "--model", "openai:test", "--base-url", srv.base_url, "--db", db)
        assert count("SELECT COUNT(*) FROM turns") == 12
        assert "now need 1 review(s)" in ok("review", "require", "1", "--db", db)
        ok("enqueue", str(queued), "--db", db, "--model", "openai:test")
        ok("worker", "--db", db, "--base-url", srv.base_url)
        assert count("SELECT COUNT(*) FROM turns") == 12 + 9
        ok("demo", "--db", db, "--model", "openai:test", env={"AUTOLABEL_BASE_URL": srv.base_url})
        assert count("SELECT COUNT(*) FROM runs") == 3
    tasks = tmp_path / "tasks.json"
    ok("export", "--db", db, "--format", "label-studio", "--out", str(tasks), "--run",
       Store.open(db).runs()[0]["id"])
    exported = json.loads(tasks.read_text())
    assert len(exported) == 12 + 3
    for t in exported:  # a reviewer in Label Studio submits every turn as predicted
        if t["data"]["kind"] == "turn" and t.get("predictions"):
            t["annotations"] = [{"id": 1, "completed_by": 1, "result": t["predictions"][0]["result"]}]
    tasks.write_text(json.dumps(exported))
    assert "answers applied" in ok("import-reviews", str(tasks), "--db", db)
    gold = count("SELECT COUNT(*) FROM gold")
    assert gold >= 10
    assert f"{gold} gold" in ok("review", "export", "--db", db, "--out", str(tmp_path / "reviews.jsonl"))
    assert "done" in ok("review", "status", "--db", db)
    token = ok("review", "add-reviewer", "dana", "--db", db).strip()
    assert len(token) > 20 and count("SELECT COUNT(*) FROM reviewers") == 1
    assert "every gold row follows the task's rules" in ok("review", "doctor", "--db", db)
    ok("review", "remove-reviewer", "dana", "--db", db)
    assert count("SELECT COUNT(*) FROM reviewers WHERE name = 'dana'") == 0
    ok("eval", "--db", db, "--run", Store.open(db).runs()[0]["id"], "--out", str(tmp_path / "report"), "--n-boot",
       "20")
    assert (tmp_path / "report" / "report.json").exists()
    ok("calibrate", "--db", db, "--run", Store.open(db).runs()[0]["id"])
    assert count("SELECT COUNT(*) FROM calibrators") > 0
    assert done | {"autolabel review serve"} == db_commands()
