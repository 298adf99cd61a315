"""``autolabel/persistence/tables.py`` is the schema the migrations produce: a blank database migrated by
``Store.open`` and a blank database made from the table definitions alone have the same tables, columns (generic
type, nullability), keys and indexes — on SQLite and on the test run's PostgreSQL. A migration that changes the
schema without its change in ``tables.py`` (or the reverse) fails here."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine

from autolabel import Store
from autolabel.persistence import tables
from autolabel.persistence.store import engine_url
from tests.pg import cluster, engine_fixture, new_db_fixture, pg_fixture  # noqa: F401  (fixtures)


def _from_tables(db: str) -> Store:
    """A store on a blank database holding exactly ``tables.metadata`` (no migrations run)."""
    engine = create_engine(engine_url(db))
    tables.metadata.create_all(engine)
    return Store(engine, db)


def test_the_tables_are_the_migrated_schema(new_db: str, engine: str, tmp_path: Path) -> None:
    migrated = Store.open(new_db)
    defined = _from_tables(str(tmp_path / "tables.db") if engine == "sqlite" else cluster().database())
    try:
        outline = migrated.schema_outline()
        assert defined.schema_outline() == outline
        assert "gold.note text" in outline and "review_items INDEX ix_review_claim (priority, id)" in outline
        assert {t for line in outline if (t := line.split(".")[0].split(" ")[0])} == set(tables.metadata.tables)
    finally:
        migrated.close()
        defined.close()


def test_a_drift_would_be_seen(tmp_path: Path) -> None:
    """The comparison is not vacuous: a column the migrations never made shows up."""
    from sqlalchemy import Column, MetaData, Table, Text

    md = MetaData()
    for t in tables.metadata.tables.values():
        t.to_metadata(md)
    Table("gold", md, Column("extra", Text), extend_existing=True)
    db = str(tmp_path / "drift.db")
    engine = create_engine(engine_url(db))
    md.create_all(engine)
    drifted = Store(engine, db)
    migrated = Store.open(tmp_path / "migrated.db")
    try:
        assert set(drifted.schema_outline()) - set(migrated.schema_outline()) == {"gold.extra text"}
    finally:
        drifted.close()
        migrated.close()
