"""The one write-transaction helper: a connection whose transaction holds its locks from the start (and the
dialect-neutral insert-if-new).

Claims and leases (the review queue, the job queue) read rows and change them in one transaction. On PostgreSQL the
rows are locked by the statements themselves (``LOCK_ROW``, ``SKIP_LOCKED`` appended to a ``SELECT``); SQLite has no
row locks, so the transaction begins with ``BEGIN IMMEDIATE`` (one writer at a time). Per dialect, by dict dispatch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, Insert, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from autolabel.errors import StoreError

BEGIN: dict[str, tuple[str, ...]] = {"sqlite": ("BEGIN IMMEDIATE",)}
LOCK_ROW: dict[str, str] = {"postgresql": " FOR UPDATE"}
SKIP_LOCKED: dict[str, str] = {"postgresql": " FOR UPDATE SKIP LOCKED"}


@contextmanager
def transaction(engine: Engine, db: str) -> Iterator[Connection]:
    """One write transaction on ``engine`` (the database named ``db`` in errors): commits when the block ends,
    rolls back on any exception; a database error becomes a one-line ``StoreError``."""
    try:
        with engine.connect() as conn, conn.begin():
            for sql in BEGIN.get(conn.dialect.name, ()):
                conn.exec_driver_sql(sql)
            yield conn
    except SQLAlchemyError as e:
        detail = str(getattr(e, "orig", None) or e).splitlines()[0]
        raise StoreError(f"cannot write to {db}: {detail}") from None


def for_update(conn: Connection, *, skip_locked: bool = False) -> str:
    """The row-locking suffix of a ``SELECT`` in this transaction's dialect ("" where the transaction itself locks)."""
    return (SKIP_LOCKED if skip_locked else LOCK_ROW).get(conn.dialect.name, "")


_INSERT: dict[str, Callable[[Table], Any]] = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


def insert_new(conn: Connection, table: Table) -> Insert:
    """``INSERT`` into ``table`` that skips rows whose key is stored already (``ON CONFLICT DO NOTHING``)."""
    return _INSERT[conn.dialect.name](table).on_conflict_do_nothing()
