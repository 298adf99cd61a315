"""The store on a real SQLite file: migrations, and refusing invalid records."""

from __future__ import annotations

from pathlib import Path

import pytest

from autolabel import Store, StoreError, load_task
from autolabel.migrations import MIGRATIONS

EXPECTED = Path(__file__).with_name("expected_schema.sql")


def test_blank_database_migrates_to_the_expected_schema(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "blank.db")
    got = "\n".join(store.schema_sql()) + "\n"
    applied = [r[0] for r in store._rows("SELECT name FROM migrations ORDER BY name")]
    assert applied == [name for name, _ in MIGRATIONS]
    assert got == EXPECTED.read_text(), "schema changed: add a migration and update tests/expected_schema.sql"
    again = Store.open(tmp_path / "blank.db")  # opening again applies nothing
    assert "\n".join(again.schema_sql()) + "\n" == got


def test_invalid_records_are_never_persisted_as_valid(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.db")
    task = load_task("psy-insight")
    store.mark_running("r", "d", language="en", n_turns=1, meta={}, source=None)
    rec = {"kind": "turn", "run_id": "r", "task": {"name": task.name, "version": task.version,
                                                   "hash": task.spec_hash},
           "model": "m", "dialogue_id": "d", "turn_index": 0, "speaker": "Seeker", "role": "seeker",
           "status": "accepted", "labels": {"emotion": ["Joyful"]}, "texts": {}, "confidence": {}, "flags": []}
    with pytest.raises(StoreError, match="not an option"):
        store.save_dialogue("r", "d", turns=[], annotations=[{"kind": "turn", "turn_index": 0, "attempt": 0,
                                                              "is_final": True, "valid": True, "status": "accepted",
                                                              "record": rec}], review_items=[], task=task,
                            language="en")
    assert store._rows("SELECT COUNT(*) FROM annotations")[0][0] == 0


def test_unwritable_location_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        Store.open(tmp_path / "no" / "such" / "dir.db")
