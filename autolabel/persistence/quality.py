"""Evaluation and calibration persistence: the rows ``autolabel eval`` reads and the calibrators it stores, as SQL.

:class:`QualityStore` reads a run's first answers, its final states, the review queue's gold and reviews, and
reads and writes the ``calibrators`` table. It returns plain rows and decoded records; what they mean — matching
gold, metrics, agreement, routing — is :mod:`autolabel.quality.evaluate`'s. A failing read or write is a one-line
``StoreError``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, NamedTuple

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from autolabel.errors import StoreError
from autolabel.persistence.store import Store, now
from autolabel.persistence.tx import transaction

CALIBRATOR_COLUMNS = ("method", "threshold", "alpha", "delta", "n", "k", "upper_bound", "coverage", "reason")


class GoldRow(NamedTuple):
    """One reviewed label set of the review queue's ``gold`` table (``turn_index`` None for a session)."""

    dialogue_id: str
    kind: str
    turn_index: int | None
    labels_json: str | None


class Rating(NamedTuple):
    """One reviewer's answer to one review item."""

    run_id: str
    dialogue_id: str
    kind: str
    turn_index: int | None
    reviewer: str
    labels_json: str | None


class CalibratorRow(NamedTuple):
    """One stored calibrator of a field (``calibrator_json`` None: scored without calibration)."""

    field: str
    calibrator_json: str | None
    threshold: float | None
    signal_params_json: str | None


class QualityStore:
    """Evaluation's reads and the calibrators' reads and writes on one :class:`Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _read(self, sql: str, **params: Any) -> list[Any]:
        try:
            with self.store.engine.connect() as conn:
                return list(conn.execute(text(sql), params))
        except SQLAlchemyError as e:
            raise StoreError(f"cannot read {self.store.db}: {_detail(e)}") from None

    def first_records(self, run_id: str, *, batch: int = 500) -> Iterator[dict[str, Any]]:
        """The records a run wrote itself (attempt 0; a reviewer's later record is not one of them), decoded, in
        dialogue and turn order, streamed ``batch`` rows at a time."""
        sql = "SELECT record_json FROM annotations WHERE run_id=:r AND attempt=0 ORDER BY dialogue_id, turn_index"
        try:
            with self.store.engine.connect() as conn:
                for (rec_json,) in conn.execution_options(yield_per=batch).execute(text(sql), {"r": run_id}):
                    yield json.loads(rec_json)
        except SQLAlchemyError as e:
            raise StoreError(f"cannot read {self.store.db}: {_detail(e)}") from None

    def final_states(self, run_id: str) -> list[tuple[str, str, int]]:
        """(kind, status, count) of a run's final records."""
        rows = self._read("SELECT kind, status, COUNT(*) FROM annotations WHERE run_id=:r AND is_final=1"
                          " GROUP BY kind, status", r=run_id)
        return [(str(kind), str(status), int(n)) for kind, status, n in rows]

    def gold(self, task_name: str) -> list[GoldRow]:
        """The review queue's reviewed labels of a task, oldest first (a later row overrides an earlier one)."""
        rows = self._read("SELECT dialogue_id, kind, turn_index, labels_json FROM gold WHERE task_name = :t"
                          " ORDER BY id", t=task_name)
        return [GoldRow(*r) for r in rows]

    def ratings(self, run_id: str | None = None) -> list[Rating]:
        """Every reviewer's answer to the review items of a run (of every run when ``run_id`` is None)."""
        sql = ("SELECT i.run_id, i.dialogue_id, i.kind, i.turn_index, v.reviewer, v.labels_json FROM reviews v"
               " JOIN review_items i ON i.id = v.item_id" + (" WHERE i.run_id = :r" if run_id else ""))
        return [Rating(run, d, k, t, str(reviewer), labels) for run, d, k, t, reviewer, labels
                in self._read(sql, r=run_id)]

    def add_calibrator(self, *, task_name: str, task_hash: str, model: str, field: str,
                       calibrator_json: str | None, signal_params_json: str, row: dict[str, Any]) -> int:
        """Store a field's calibrator and certified threshold (``row`` holds ``CALIBRATOR_COLUMNS``); its id."""
        key = {"tn": task_name, "th": task_hash, "m": model, "f": field}
        values = {**key, **{k: row[k] for k in CALIBRATOR_COLUMNS}, "t": now(), "sp": signal_params_json,
                  "cj": calibrator_json}
        with transaction(self.store.engine, self.store.db) as conn:
            conn.execute(text("INSERT INTO calibrators (task_name, task_hash, model, field, method, calibrator_json,"
                              " threshold, alpha, delta, n, k, upper_bound, coverage, reason, created_at,"
                              " signal_params_json) VALUES (:tn, :th, :m, :f, :method, :cj, :threshold, :alpha,"
                              " :delta, :n, :k, :upper_bound, :coverage, :reason, :t, :sp)"), values)
            new_id = conn.execute(text("SELECT MAX(id) FROM calibrators WHERE task_name=:tn AND task_hash=:th"
                                       " AND model=:m AND field=:f"), key).scalar_one()
        return int(new_id)

    def calibrators(self, task_name: str, task_hash: str, model: str) -> list[CalibratorRow]:
        """The stored calibrators of a task version and model, oldest first (per field, the last one is current)."""
        rows = self._read("SELECT field, calibrator_json, threshold, signal_params_json FROM calibrators"
                          " WHERE task_name=:t AND task_hash=:h AND model=:m ORDER BY id",
                          t=task_name, h=task_hash, m=model)
        return [CalibratorRow(*r) for r in rows]

    def certified(self, task_name: str, task_hash: str, model: str) -> dict[str, dict[str, Any]]:
        """Per field, the current (latest) stored calibrator's ``CALIBRATOR_COLUMNS``: what ``eval`` reports as a
        model's certified bound."""
        cols = ", ".join(CALIBRATOR_COLUMNS)
        rows = self._read(f"SELECT field, {cols} FROM calibrators WHERE task_name=:t AND task_hash=:h AND model=:m"
                          " ORDER BY id", t=task_name, h=task_hash, m=model)
        return {r[0]: dict(zip(CALIBRATOR_COLUMNS, r[1:], strict=True)) for r in rows}


def _detail(e: Exception) -> str:
    return str(getattr(e, "orig", None) or e).splitlines()[0]
