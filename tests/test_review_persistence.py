"""The review queue keeps its rules, persistence keeps the SQL (issue 16 item 2).

Every statement of the review queue is in :mod:`autolabel.persistence.reviews`, on the one transaction helper of
:mod:`autolabel.persistence.tx`; nothing under ``autolabel/review/`` imports SQLAlchemy, writes SQL, or reaches into
the store's private helpers, and the review persistence does not import the review package.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REVIEW = sorted((REPO / "autolabel" / "review").glob("*.py"))
PERSISTENCE = REPO / "autolabel" / "persistence" / "reviews.py"
SQL = re.compile(r"\bSELECT\b.+\bFROM\b|\bINSERT INTO\b|\bUPDATE \w+ SET\b|\bDELETE FROM\b|\bBEGIN IMMEDIATE\b",
                 re.IGNORECASE | re.DOTALL)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _strings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_the_review_package_has_no_sql_and_no_sqlalchemy() -> None:
    assert {p.name for p in REVIEW} >= {"queue.py", "adjudication.py", "reports.py", "rules.py", "web.py"}
    found = [f"{p.name} imports {m}" for p in REVIEW for m in _imports(p) if m.split(".")[0] == "sqlalchemy"]
    found += [f"{p.name}: {s[:60]!r}" for p in REVIEW for s in _strings(p) if SQL.search(s)]
    assert found == []


def test_the_sql_check_is_not_vacuous() -> None:
    assert any(SQL.search(s) for s in _strings(PERSISTENCE))
    assert "sqlalchemy" in _imports(PERSISTENCE)


def test_the_review_package_does_not_call_private_store_helpers() -> None:
    private = re.compile(r"\.(_rows|_write|_tx|_locked|_save|_audit)\(")
    calls = [f"{p.name}:{i}" for p in REVIEW for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if private.search(line) and "self._" not in line]
    assert calls == []


def test_review_persistence_uses_the_one_transaction_helper_and_not_the_review_package() -> None:
    imports = _imports(PERSISTENCE)
    assert "autolabel.persistence.tx" in imports
    assert not any(m.startswith(("autolabel.review", "autolabel.llm", "autolabel.graphs")) for m in imports)
    source = PERSISTENCE.read_text(encoding="utf-8")
    assert ".begin()" not in source and "exec_driver_sql" not in source  # no copy of the helper


def test_the_split_modules_stay_small() -> None:
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in [*REVIEW, PERSISTENCE]}
    assert {n: s for n, s in sizes.items() if s > 410} == {}
