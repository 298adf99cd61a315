"""Opening a brand-new database from several threads (or processes) at once migrates it once, without errors."""

from __future__ import annotations

import threading
from pathlib import Path

from autolabel import Store


def test_threads_opening_a_new_sqlite_database_at_once_all_succeed(tmp_path: Path) -> None:
    for attempt in range(5):  # the race needs two migrators inside the same few milliseconds: try a few databases
        db = tmp_path / f"new-{attempt}.db"
        errors: list[BaseException] = []
        start = threading.Barrier(4)

        def open_store(db: Path = db, errors: list[BaseException] = errors, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                Store.open(db).close()
            except BaseException as e:  # noqa: BLE001 - the test collects whatever a thread raised
                errors.append(e)

        threads = [threading.Thread(target=open_store) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        store = Store.open(db)
        try:
            with store.engine.connect() as conn:
                names = [r[0] for r in conn.exec_driver_sql("SELECT name FROM migrations")]
        finally:
            store.close()
        assert len(names) == len(set(names)) > 0
