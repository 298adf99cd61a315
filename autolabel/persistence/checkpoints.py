"""LangGraph's checkpointer on the store's database: the savers (keeping a dialogue thread's latest checkpoint only),
PostgreSQL's one-process-at-a-time table setup, and the SQLite saver that closes only after its last write.

The checkpoint tables are LangGraph's own (its schema, not ``tables.py``); this module is the one place outside
LangGraph that writes to them.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from autolabel.errors import StoreError
from autolabel.persistence.store import is_postgres

CHECKPOINT_SETUP_LOCK = 724514  # PostgreSQL advisory lock key: one process at a time sets up LangGraph's tables


class SqliteSaver(AsyncSqliteSaver):
    """LangGraph's SQLite checkpointer, closed only after every write it was handed has ended (``writes_done``).

    LangGraph runs checkpoint writes as background tasks and awaits them before ``ainvoke`` returns, except
    the writes of the branches it cancels on the way out when another branch of the step raised (e.g.
    BudgetExceeded): the cancelled tasks' done-callbacks submit those after the executor took the list of
    tasks it awaits (langgraph 1.2, ``AsyncBackgroundExecutor.__aexit__``), so they may still run after the
    run has ended. Closing the connection under one, between its INSERT and its COMMIT, makes sqlite3 close a
    "zombie": the write's cursor is still alive, so SQLite keeps the open transaction, and with it the
    database's write lock, until that cursor is collected, and every other write to the file fails with
    "database is locked". Counted from the moment LangGraph asks for a write (its task may wait on a semaphore
    before it starts)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._writes = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def aput(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Coroutine[Any, Any, Any]:
        if _in_subgraph(config):
            return _kept_in_memory(config, checkpoint)
        return self._counted(self._put_latest(config, checkpoint, metadata, new_versions))

    async def _put_latest(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
        """Save a checkpoint, then drop the thread's older ones and their writes: a run resumes from the latest
        checkpoint and its pending writes only, and SQLite stores each checkpoint whole, so a dialogue's history of
        checkpoints (the dialogue in each, its turns' results in the last ones) made its store grow several times
        over while it ran."""
        saved = await super().aput(config, checkpoint, metadata, new_versions)
        keep = saved["configurable"]
        where = "WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id != ?"
        args = (str(keep["thread_id"]), keep["checkpoint_ns"], keep["checkpoint_id"])
        async with self.lock, self.conn.cursor() as cur:
            await cur.execute(f"DELETE FROM checkpoints {where}", args)
            await cur.execute(f"DELETE FROM writes {where}", args)
            await self.conn.commit()
        return saved

    def aput_writes(self, config: Any, writes: Any, task_id: str,
                    task_path: str = "") -> Coroutine[Any, Any, Any]:  # its parameters: LangGraph inspects them
        if _in_subgraph(config):
            return _nothing()
        return self._counted(super().aput_writes(config, writes, task_id, task_path))

    def _counted(self, write: Coroutine[Any, Any, Any]) -> Coroutine[Any, Any, Any]:
        self._writes += 1
        self._idle.clear()
        return self._awaited(write)

    async def _awaited(self, write: Coroutine[Any, Any, Any]) -> Any:
        try:
            return await write
        finally:
            self._writes -= 1
            if not self._writes:
                self._idle.set()

    async def writes_done(self) -> None:
        await self._idle.wait()


def _in_subgraph(config: Any) -> bool:
    """Is this a checkpoint of the turns subgraph (a namespace under the dialogue thread)? A run keeps only the
    dialogue thread's: a chunk's steps are not worth a checkpoint each (its turns' states, serialised per step), and
    a chunk interrupted mid-way is redone, its calls from the cache."""
    return bool(config["configurable"].get("checkpoint_ns"))


async def _kept_in_memory(config: Any, checkpoint: Any) -> Any:
    c = config["configurable"]
    return {"configurable": {"thread_id": c["thread_id"], "checkpoint_ns": c["checkpoint_ns"],
                             "checkpoint_id": checkpoint["id"]}}


async def _nothing() -> None:
    return None


def _postgres_saver() -> Any:
    """PostgreSQL's checkpointer, keeping the dialogue thread's checkpoints only (see ``_in_subgraph``)."""
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    class PostgresSaver(AsyncPostgresSaver):
        async def aput(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
            if _in_subgraph(config):
                return await _kept_in_memory(config, checkpoint)
            return await super().aput(config, checkpoint, metadata, new_versions)

        async def aput_writes(self, config: Any, writes: Any, task_id: str, task_path: str = "") -> None:
            if not _in_subgraph(config):
                await super().aput_writes(config, writes, task_id, task_path)

    return PostgresSaver


@asynccontextmanager
async def checkpointer(db: str, serde: SerializerProtocol) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    """LangGraph's checkpointer for the same database as the store: SQLite (WAL) or PostgreSQL, writing with
    ``serde`` (the caller's: it knows which record types a checkpoint may hold)."""
    if is_postgres(db):
        from psycopg import AsyncConnection

        url = db.replace("+psycopg", "", 1)
        async with _postgres_saver().from_conn_string(url, serde=serde) as saver:
            # one process at a time creates LangGraph's tables (workers start together; its setup is not atomic).
            # A session lock, released when this connection closes, taken with try-lock: a session blocked in
            # pg_advisory_lock would hold a snapshot that the setup's CREATE INDEX CONCURRENTLY waits for forever
            async with await AsyncConnection.connect(url, autocommit=True) as lock:
                while not await _try_lock(lock, CHECKPOINT_SETUP_LOCK):
                    await asyncio.sleep(0.1)
                await saver.setup()
            yield saver
        return
    conn = await aiosqlite.connect(db if db.startswith("file:") else str(Path(db).expanduser()), timeout=30, uri=True)
    checkpoints = SqliteSaver(conn, serde=serde)
    try:
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA busy_timeout=30000")
        await checkpoints.setup()
        yield checkpoints
    except sqlite3.DatabaseError as e:  # from the checkpointer's own connection: a read-only file, a full disk
        raise StoreError(f"cannot write to {db}: {e}") from None
    finally:
        try:  # no write may be cut between its INSERT and its COMMIT (see SqliteSaver)
            await checkpoints.writes_done()
        finally:
            await conn.close()


async def _try_lock(conn: Any, key: int) -> bool:
    row = await (await conn.execute("SELECT pg_try_advisory_lock(%s)", (key,))).fetchone()
    return bool(row and row[0])
