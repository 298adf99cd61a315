"""Evaluation's SQL lives behind the store (issue 16 item 2): autolabel/quality/ writes no SQL and calls no private
store method; autolabel.persistence.quality does the reading and writing, on a real SQLite file."""

from __future__ import annotations

import ast
import sqlite3
from pathlib import Path

import pytest

from autolabel import Store
from autolabel.errors import StoreError
from autolabel.persistence.quality import QualityStore

QUALITY = Path(__file__).resolve().parents[1] / "autolabel" / "quality"


def _sql_uses(source: str) -> list[str]:
    """Imports of sqlalchemy, calls of ``text(...)``, and any call of a private method of another object."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
            found.append(f"line {node.lineno}: from {node.module} import")
        elif isinstance(node, ast.Import) and any(a.name.startswith("sqlalchemy") for a in node.names):
            found.append(f"line {node.lineno}: import sqlalchemy")
        elif isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id == "text":
                found.append(f"line {node.lineno}: text(...)")
            elif (isinstance(f, ast.Attribute) and f.attr.startswith("_") and not f.attr.startswith("__")
                  and not (isinstance(f.value, ast.Name) and f.value.id in ("self", "cls"))):
                found.append(f"line {node.lineno}: .{f.attr}(...)")
    return found


def test_the_rule_sees_raw_sql_and_private_store_calls() -> None:
    """The check below is not vacuous: the shapes evaluate.py used to have are found."""
    old = ("from sqlalchemy import text\n"
           "def f(store):\n"
           "    store._write('INSERT INTO calibrators VALUES (1)', {})\n"
           "    with store.engine.connect() as c:\n"
           "        c.execute(text('SELECT 1'))\n"
           "    return store._rows('SELECT 1')\n")
    assert len(_sql_uses(old)) == 4


def test_the_quality_package_writes_no_sql() -> None:
    modules = sorted(QUALITY.glob("*.py"))
    assert any(m.name == "evaluate.py" for m in modules)
    found = {m.name: _sql_uses(m.read_text(encoding="utf-8")) for m in modules}
    assert {name: uses for name, uses in found.items() if uses} == {}


def _row(threshold: float | None) -> dict[str, object]:
    return {"method": "isotonic", "threshold": threshold, "alpha": 0.1, "delta": 0.05, "n": 10, "k": 1,
            "upper_bound": 0.09, "coverage": 0.5, "reason": "certified"}


def test_calibrators_are_stored_and_read_back_in_order(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "q.db")
    q = QualityStore(store)
    key = {"task_name": "t", "task_hash": "h", "model": "m"}
    first = q.add_calibrator(**key, field="a", calibrator_json=None, signal_params_json="{}", row=_row(0.8))
    second = q.add_calibrator(**key, field="a", calibrator_json='{"x": 1}', signal_params_json='{"s": 1}',
                              row=_row(None))
    other = q.add_calibrator(**{**key, "model": "other"}, field="a", calibrator_json=None, signal_params_json="{}",
                             row=_row(0.5))
    assert first < second < other
    rows = q.calibrators("t", "h", "m")
    assert [(r.field, r.calibrator_json, r.threshold, r.signal_params_json) for r in rows] == [
        ("a", None, 0.8, "{}"), ("a", '{"x": 1}', None, '{"s": 1}')]
    assert q.calibrators("t", "other-hash", "m") == []
    assert q.gold("t") == [] and q.ratings() == [] and q.final_states("no-run") == []
    assert list(q.first_records("no-run")) == []
    store.close()


def test_a_broken_table_is_a_one_line_store_error(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    Store.open(db).close()
    store = Store.open(db)
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE calibrators")
    q = QualityStore(store)
    with pytest.raises(StoreError, match=r"^cannot read .*calibrators") as e:
        q.calibrators("t", "h", "m")
    assert "\n" not in str(e.value)
    with pytest.raises(StoreError, match=r"^cannot write to .*calibrators"):
        q.add_calibrator(task_name="t", task_hash="h", model="m", field="a", calibrator_json=None,
                         signal_params_json="{}", row=_row(0.5))
    store.close()
