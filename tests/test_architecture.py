"""The package's dependency rules, checked on its import graph (every import, function-level ones included).

- the library never imports the CLI or the review web app (only the CLI and ``__main__`` do);
- the graphs never import the CLI or the web app;
- persistence never imports the LLM seam, the graphs or instructor;
- readers import nothing of the project but errors and plain models;
- there is no import cycle between subpackages (top-level modules count as units of their own).
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _module(path: Path) -> str:
    rel = path.relative_to(REPO)
    parts = ["autolabel", "graphs", *rel.parts[1:]] if rel.parts[0] == "graphs" else list(rel.parts)
    parts[-1] = parts[-1].removesuffix(".py")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> Iterator[Path]:
    yield from sorted((REPO / "autolabel").rglob("*.py"))
    yield from sorted((REPO / "graphs").rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Every module name ``path`` imports, at any depth of its code (``from a import b`` counts as ``a`` and
    ``a.b``; relative imports are resolved)."""
    here = _module(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


GRAPH: dict[str, set[str]] = {_module(p): _imports(p) for p in _sources()}
MODULES = set(GRAPH)


def _project_imports(module: str) -> set[str]:
    return {m for m in GRAPH[module] if m in MODULES}


def _under(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _violations(importers: list[str], forbidden: tuple[str, ...]) -> list[str]:
    return [f"{m} imports {i}" for m in importers for i in sorted(GRAPH[m])
            if _under(i, *forbidden)]


def test_the_graph_is_read() -> None:
    """The rules below are only as good as the graph: it must see the modules and their imports."""
    assert {"autolabel.cli.app", "autolabel.persistence.store", "autolabel.graphs.annotate.graph",
            "autolabel.readers", "autolabel.review.web"} <= MODULES
    assert "autolabel.persistence.store" in _project_imports("autolabel.review.queue")


def test_the_library_never_imports_the_cli_or_the_web_app() -> None:
    library = [m for m in MODULES if not _under(m, "autolabel.cli", "autolabel.__main__", "autolabel.review.web")]
    assert _violations(library, ("autolabel.cli", "autolabel.review.web")) == []


def test_the_graphs_never_import_the_cli_or_the_web_app() -> None:
    graphs = [m for m in MODULES if _under(m, "autolabel.graphs")]
    assert graphs
    assert _violations(graphs, ("autolabel.cli", "autolabel.review.web")) == []


def test_persistence_never_imports_the_llm_seam_the_graphs_or_instructor() -> None:
    persistence = [m for m in MODULES if _under(m, "autolabel.persistence")]
    assert persistence
    assert _violations(persistence, ("autolabel.llm", "autolabel.graphs", "instructor", "openai")) == []
    # nor through the project modules it uses (the store once pulled in instructor through records.py)
    seen, todo = set(), list(persistence)
    while todo:
        m = todo.pop()
        for i in _project_imports(m):
            if i not in seen:
                seen.add(i)
                todo.append(i)
    assert sorted(m for m in seen if _under(m, "autolabel.llm", "autolabel.graphs")) == []
    assert [f"{m} imports {i}" for m in seen for i in GRAPH[m] if _under(i, "instructor", "openai")] == []


def test_readers_import_only_errors_and_plain_models() -> None:
    allowed = {"autolabel", "autolabel.errors", "autolabel.models"}
    assert _project_imports("autolabel.readers") <= allowed


def _unit(module: str) -> str:
    """The subpackage (``autolabel.llm``) or top-level module (``autolabel.tasks``) a module belongs to."""
    return ".".join(module.split(".")[:2])


def test_no_import_cycles_between_subpackages() -> None:
    edges: dict[str, set[str]] = defaultdict(set)
    for m in MODULES:
        for i in _project_imports(m):
            if _unit(i) != _unit(m) and i != "autolabel":
                edges[_unit(m)].add(_unit(i))

    def reaches(start: str, goal: str) -> bool:
        seen, todo = {start}, [start]
        while todo:
            for nxt in edges[todo.pop()]:
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    cycles = sorted(f"{a} -> {b} -> ... -> {a}" for a in list(edges) for b in edges[a] if reaches(b, a))
    assert cycles == []


def test_a_cycle_would_be_seen(tmp_path: Path) -> None:
    """The cycle rule is not vacuous: two modules importing each other are found by ``_imports``."""
    a = REPO / "autolabel" / "review" / "queue.py"
    assert any(_under(i, "autolabel.persistence") for i in _imports(a))
    assert _unit("autolabel.review.queue") == "autolabel.review" and _unit("autolabel.tasks") == "autolabel.tasks"


_SQL = re.compile(r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|INDEX|TRIGGER)"
                  r"|ALTER\s+TABLE|DROP\s+TABLE|PRAGMA\s+\w+|pg_\w*advisory)", re.S)


def _outside_persistence() -> Iterator[tuple[str, ast.AST]]:
    for path in _sources():
        module = _module(path)
        if not _under(module, "autolabel.persistence"):
            yield from ((module, node) for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))))


def _store_access(node: ast.AST) -> str | None:
    """The engine or a private attribute of something named like a store (``store.engine``, ``ctx.store._write``)."""
    if not isinstance(node, ast.Attribute):
        return None
    owner = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", "")
    private = node.attr.startswith("_") and not node.attr.startswith("__")
    if (node.attr == "engine" or private) and owner.lstrip("_").endswith("store"):
        return f"{owner}.{node.attr}"
    return None


def test_sql_and_the_stores_engine_stay_in_the_persistence_package() -> None:
    """Queries and transactions live in ``autolabel.persistence``: no other module holds an SQL statement, reaches
    for the store's engine or calls the store's private helpers."""
    sql = sorted({f"{m}: {n.value[:60]!r}" for m, n in _outside_persistence()
                  if isinstance(n, ast.Constant) and isinstance(n.value, str) and _SQL.search(n.value)})
    access = sorted({f"{m}: {a}" for m, n in _outside_persistence() if (a := _store_access(n))})
    assert sql == []
    assert access == []


def test_the_sql_rule_would_see_a_statement() -> None:
    """The rule above is not vacuous: it finds SQL in the persistence package, which may hold it."""
    code = ast.parse((REPO / "autolabel" / "persistence" / "store.py").read_text(encoding="utf-8"))
    assert any(isinstance(n, ast.Constant) and isinstance(n.value, str) and _SQL.search(n.value)
               for n in ast.walk(code))
    assert _store_access(ast.parse("store._rows('x')").body[0].value.func)  # type: ignore[attr-defined]
    assert _store_access(ast.parse("ctx.store.engine").body[0].value)  # type: ignore[attr-defined]
    assert not _store_access(ast.parse("self._store").body[0].value)  # type: ignore[attr-defined]
    assert not _store_access(ast.parse("llama.engine").body[0].value)  # type: ignore[attr-defined]
