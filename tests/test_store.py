"""The store on real databases — a SQLite file and a PostgreSQL database of the test run's own cluster:
migrations, the same schema on both engines, refusing invalid records, the lease guard of queued dialogues."""

from __future__ import annotations

from pathlib import Path

import pytest

from autolabel import Store, StoreError, load_task
from autolabel.errors import LeaseLost
from autolabel.migrations import MIGRATIONS
from tests.pg import cluster, engine_fixture, new_db_fixture  # noqa: F401  (fixtures)

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


def test_unreachable_database_is_a_clear_error(engine: str, tmp_path: Path) -> None:
    if engine == "sqlite":
        with pytest.raises(StoreError, match="does not exist"):
            Store.open(tmp_path / "no" / "such" / "dir.db")
    else:
        with pytest.raises(StoreError, match='cannot open database .*"no_such_db" does not exist'):
            Store.open(cluster().url("no_such_db"))
