"""The store: runs, dialogues, turns, annotations, LLM calls and cache, review items — SQLite or PostgreSQL.

``Store.open(db)`` takes a file path (SQLite, WAL), an SQLite URI filename (``file:runs.db?mode=ro``) or a
``postgresql://`` URL, and always migrates. LangGraph's checkpoints live in the same database (their own tables,
written by LangGraph's checkpointer).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Executable,
    and_,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.exc import SQLAlchemyError
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from autolabel.errors import LeaseLost, StoreError
from autolabel.persistence import tables
from autolabel.persistence.migrations import migrate
from autolabel.persistence.tx import insert_new, transaction
from autolabel.records import record_problems
from autolabel.tasks import TaskSpec

ACTIVE = ("pending", "running")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def is_postgres(db: str) -> bool:
    return db.startswith(("postgresql://", "postgresql+psycopg://", "postgres://"))


def sqlite_file(db: str) -> Path:
    """The file of a SQLite database given as a path or as an SQLite URI filename (``file:runs.db?mode=ro``)."""
    return Path(db.removeprefix("file:").split("?", 1)[0] if db.startswith("file:") else db).expanduser()


def engine_url(db: str) -> str:
    if is_postgres(db):
        return "postgresql+psycopg://" + db.split("://", 1)[1]
    if db.startswith("file:"):  # an SQLite URI filename, e.g. file:runs.db?mode=ro (read-only)
        return f"sqlite:///{db}{'&' if '?' in db else '?'}uri=true"
    return f"sqlite:///{sqlite_file(db)}"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=30000")  # first: switching a new file to WAL waits for its lock too
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


OPEN_ATTEMPTS = 5  # migrating a database another process is creating at the same moment


class Store:
    """All persistent state of autolabel. Thin methods over SQL; one transaction per logical write."""

    def __init__(self, engine: Engine, db: str) -> None:
        self.engine = engine
        self.db = db

    @classmethod
    def open(cls, db: str | Path) -> Store:
        db = str(db)
        try:
            if not is_postgres(db):
                parent = sqlite_file(db).resolve().parent
                if not parent.is_dir():
                    raise StoreError(f"cannot open database {db}: folder {parent} does not exist")
            engine = create_engine(engine_url(db), connect_args={"timeout": 30} if not is_postgres(db) else {})
        except SQLAlchemyError as e:  # a URL SQLAlchemy cannot use
            raise StoreError(f"cannot open database {db}: {_reason(e)}") from None
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        # SQLite answers "database is locked" at once, without its busy wait, to connections that would deadlock
        # (e.g. a brand-new file being switched to WAL by another opener): a moment later it is free
        retrying = Retrying(retry=retry_if_exception(lambda e: "database is locked" in str(e)),
                            stop=stop_after_attempt(OPEN_ATTEMPTS), wait=wait_exponential(multiplier=0.05),
                            reraise=True)
        try:
            retrying(migrate, engine)
        except SQLAlchemyError as e:  # unreachable, locked, read-only, or not a database at all (a corrupt file)
            engine.dispose()
            raise StoreError(f"cannot open database {db}: {_reason(e)}") from None
        return cls(engine, db)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A transaction on the engine (SQLite's lock taken by its first write): commits at the end of the block,
        a database error becomes a one-line ``StoreError``."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as e:
            raise StoreError(f"cannot write to {self.db}: {_reason(e)}") from None

    def _write(self, statement: str | Executable, params: dict[str, Any] | list[dict[str, Any]] | None = None) -> None:
        """Run one statement (built on ``tables``, or SQL text with ``:name`` parameters) in its own transaction."""
        with self._writing() as conn:
            conn.execute(text(statement) if isinstance(statement, str) else statement, params)

    def _rows(self, sql: str | Executable, **params: Any) -> list[Any]:
        """The rows of a query: SQL text with ``:name`` parameters, or a statement built on ``tables``."""
        try:
            with self.engine.connect() as conn:
                return list(conn.execute(text(sql) if isinstance(sql, str) else sql, params))
        except SQLAlchemyError as e:  # e.g. a database damaged after it was opened
            raise StoreError(f"cannot read {self.db}: {_reason(e)}") from None

    # -- for the persistence package's modules: statements built on ``tables`` ---------------------------------
    def fetch(self, query: Executable) -> list[Any]:
        """The rows of a query built on :mod:`autolabel.persistence.tables` (a failing read is a ``StoreError``)."""
        return self._rows(query)

    def transaction(self) -> AbstractContextManager[Connection]:
        """One write transaction (:func:`autolabel.persistence.tx.transaction`): commits at the end of the block."""
        return transaction(self.engine, self.db)

    # -- runs ---------------------------------------------------------------------------------------------
    def start_run(self, run_id: str, *, task_name: str, task_version: str, task_hash: str, task_json: str,
                  model: str, params: dict[str, Any], params_hash: str, input: str | None) -> bool:
        """Create the run, or reopen it. True when it already existed (a resume)."""
        r = tables.runs
        t = now()
        if self._rows(select(r.c.id).where(r.c.id == run_id)):
            self._write(update(r).where(r.c.id == run_id).values(status="running", updated_at=t))
            return True
        self._write(insert(r).values(
            id=run_id, task_name=task_name, task_version=task_version, task_hash=task_hash, task_json=task_json,
            model=model, params_json=json.dumps(params, sort_keys=True), params_hash=params_hash, input=input,
            status="running", created_at=t, updated_at=t))
        return False

    def finish_run(self, run_id: str, status: str, summary: dict[str, Any]) -> None:
        r = tables.runs
        self._write(update(r).where(r.c.id == run_id).values(status=status, summary_json=json.dumps(summary),
                                                              updated_at=now()))

    def runs(self) -> list[dict[str, Any]]:
        r = tables.runs.c
        rows = self._rows(select(r.id, r.task_name, r.task_version, r.task_hash, r.model, r.params_json, r.status,
                                 r.created_at).order_by(r.created_at))
        return [dict(row._mapping) for row in rows]

    def run(self, run_id: str | None = None) -> dict[str, Any]:
        """The run with this id, or the latest run."""
        r = tables.runs
        query = select(r).where(r.c.id == run_id) if run_id else select(r).order_by(r.c.created_at.desc()).limit(1)
        rows = self._rows(query)
        if not rows:
            raise StoreError(f"no run {run_id!r} in {self.db}" if run_id else f"no runs in {self.db}")
        return dict(rows[0]._mapping)

    def run_task(self, run_id: str) -> TaskSpec:
        """The task spec a run was made with, as stored with the run."""
        return TaskSpec.model_validate(json.loads(self.run(run_id)["task_json"]))

    # -- dialogues -----------------------------------------------------------------------------------------
    def dialogue_status(self, run_id: str, dialogue_id: str) -> str | None:
        d = tables.dialogues.c
        rows = self._rows(select(d.status).where(d.run_id == run_id, d.dialogue_id == dialogue_id))
        return rows[0][0] if rows else None

    def mark_running(self, run_id: str, dialogue_id: str, *, language: str, n_turns: int, meta: dict[str, Any],
                     source: str | None) -> None:
        d = tables.dialogues
        with self._writing() as conn:
            updated = conn.execute(update(d).where(d.c.run_id == run_id, d.c.dialogue_id == dialogue_id)
                                   .values(status="running", updated_at=now())).rowcount
            if not updated:
                conn.execute(insert(d).values(
                    run_id=run_id, dialogue_id=dialogue_id, language=language, n_turns=n_turns, status="running",
                    meta_json=json.dumps(meta, ensure_ascii=False, default=str), source=source, updated_at=now()))

    def save_dialogue(self, run_id: str, dialogue_id: str, *, turns: list[dict[str, Any]],
                      annotations: list[dict[str, Any]], review_items: list[dict[str, Any]], task: Any,
                      language: str, lease_owner: str | None = None) -> None:
        """Write a finished dialogue in one transaction: turns, every annotation attempt, review items, status.

        Each annotation dict has kind, turn_index, attempt, is_final, valid, status, record. A record marked valid
        is checked against the annotation schema and the task here; one that fails is refused (StoreError).
        With ``lease_owner`` (a job-queue worker) the dialogue is written only while that worker still holds it
        (running, its lease not taken over): otherwise LeaseLost and nothing is written.
        """
        for a in annotations:
            if a["valid"]:
                problems = record_problems(a["record"], task)
                if problems:
                    raise StoreError(f"refusing an invalid record for {dialogue_id}: {problems[0]}")
        t = now()
        key = {"run_id": run_id, "dialogue_id": dialogue_id}
        d = tables.dialogues
        held = update(d).where(d.c.run_id == run_id, d.c.dialogue_id == dialogue_id)
        if lease_owner is not None:
            held = held.where(d.c.status == "running", d.c.worker == lease_owner)
        with self._writing() as conn:
            # first: the status row is locked (PostgreSQL) or the write lock taken (SQLite) before anything else
            if not conn.execute(held.values(status="done", language=language, lease_expires=None,
                                            updated_at=t)).rowcount and lease_owner is not None:
                raise LeaseLost(run_id, dialogue_id, lease_owner)
            for table in (tables.turns, tables.annotations, tables.review_items):
                conn.execute(delete(table).where(table.c.run_id == run_id, table.c.dialogue_id == dialogue_id))
            if turns:
                conn.execute(insert(tables.turns), [
                    {**key, "turn_index": x["turn_index"], "speaker": x["speaker"], "role": x["role"],
                     "text": x["text"], "meta_json": json.dumps(x["meta"], ensure_ascii=False, default=str),
                     "status": x["status"]} for x in turns])
            if annotations:
                conn.execute(insert(tables.annotations), [
                    {**key, "kind": a["kind"], "turn_index": a["turn_index"], "attempt": a["attempt"],
                     "is_final": int(a["is_final"]), "valid": int(a["valid"]), "status": a["status"],
                     "record_json": json.dumps(a["record"], ensure_ascii=False), "created_at": t}
                    for a in annotations])
            if review_items:
                conn.execute(insert(tables.review_items), [
                    {**key, "kind": x["kind"], "turn_index": x["turn_index"], "priority": x["priority"],
                     "reasons_json": json.dumps(x["reasons"]), "status": "pending", "version": 1,
                     "required_reviews": x.get("required_reviews", 1), "created_at": t, "updated_at": t,
                     "proposal_json": json.dumps(x["proposal"], ensure_ascii=False)} for x in review_items])

    def counts(self, run_id: str) -> dict[str, int]:
        tc = tables.turns.c
        rows = self._rows(select(tc.status, func.count()).where(tc.run_id == run_id).group_by(tc.status))
        out = {"accepted": 0, "flagged": 0, "reviewed": 0, "failed": 0}
        out.update({s: n for s, n in rows})
        return out

    def call_totals(self, run_id: str) -> dict[str, Any]:
        c = tables.llm_calls.c
        rows = self._rows(select(func.count(), *(func.coalesce(func.sum(col), 0)
                                                 for col in (c.prompt_tokens, c.completion_tokens, c.cost_usd)))
                          .where(c.run_id == run_id))
        n, p, comp, cost = rows[0]
        return {"calls": n, "prompt_tokens": int(p), "completion_tokens": int(comp), "cost_usd": float(cost)}

    def completions_by_purpose(self, task_name: str, model: str, turns_per_call: int = 1
                               ) -> dict[str, tuple[float, int]]:
        """purpose -> (mean completion tokens, calls) of the successful calls of this task and model, in runs that
        labeled ``turns_per_call`` turns per call (an answer for K turns is K answers long)."""
        c, r = tables.llm_calls.c, tables.runs.c
        # the run's params as stored (json.dumps, sorted keys): turns_per_call is there when it is not 1
        if turns_per_call == 1:
            same = r.params_json.not_like('%"turns_per_call": %')
        else:
            same = r.params_json.like(f'%"turns_per_call": {turns_per_call},%')  # "window" follows
        query = (select(c.purpose, func.avg(c.completion_tokens), func.count())
                 .select_from(tables.llm_calls.join(tables.runs, r.id == c.run_id))
                 .where(r.task_name == task_name, r.model == model, same, c.outcome == "ok",
                        c.completion_tokens > 0)
                 .group_by(c.purpose))
        return {purpose: (float(avg), int(n)) for purpose, avg, n in self._rows(query)}

    # -- records -------------------------------------------------------------------------------------------
    def final_records(self, run_id: str | None = None) -> Iterator[dict[str, Any]]:
        """Final annotation records, turn records in dialogue order then each dialogue's session record."""
        run_id = run_id or self.run()["id"]
        a, tc = tables.annotations.c, tables.turns.c
        query = (select(a.record_json, tc.text)
                 .select_from(tables.annotations.outerjoin(tables.turns, and_(
                     tc.run_id == a.run_id, tc.dialogue_id == a.dialogue_id, tc.turn_index == a.turn_index,
                     a.kind == "turn")))
                 .where(a.run_id == run_id, a.is_final == 1)
                 .order_by(a.dialogue_id, a.kind.desc(), a.turn_index))
        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=500).execute(query)
            for rec_json, turn_text in result:
                rec = json.loads(rec_json)
                if turn_text is not None:
                    rec["text"] = turn_text
                yield rec

    def final_records_of(self, run_id: str, dialogue_id: str) -> list[dict[str, Any]]:
        a = tables.annotations.c
        rows = self._rows(select(a.record_json)
                          .where(a.run_id == run_id, a.dialogue_id == dialogue_id, a.is_final == 1)
                          .order_by(a.kind.desc(), a.turn_index))
        return [json.loads(r[0]) for r in rows]

    def dialogue_meta(self, run_id: str) -> Iterator[tuple[str, dict[str, Any], str]]:
        d = tables.dialogues.c
        query = select(d.dialogue_id, d.meta_json, d.language).where(d.run_id == run_id).order_by(d.dialogue_id)
        with self.engine.connect() as conn:
            for dialogue_id, meta, lang in conn.execute(query):
                yield dialogue_id, json.loads(meta), lang

    def turn_rows(self, run_id: str, dialogue_id: str) -> list[dict[str, Any]]:
        tc = tables.turns.c
        rows = self._rows(select(tc.turn_index, tc.speaker, tc.role, tc.text, tc.meta_json, tc.status)
                          .where(tc.run_id == run_id, tc.dialogue_id == dialogue_id).order_by(tc.turn_index))
        return [{**dict(r._mapping), "meta": json.loads(r.meta_json)} for r in rows]

    # -- LLM calls and cache (the CallLog protocol) ----------------------------------------------------------
    def cache_get(self, key: str) -> dict[str, Any] | None:
        """The cached completion (a ``ChatCompletion`` dict) of the request with this cache key, or None."""
        k = tables.llm_cache.c
        rows = self._rows(select(k.response, k.response_json).where(k["key"] == key))
        if not rows:
            return None
        packed, plain = rows[0]
        return json.loads(zlib.decompress(packed) if packed is not None else plain)  # plain: rows of before 007

    def cache_put(self, key: str, model: str, response: dict[str, Any]) -> None:
        """Cache a completion (a ``ChatCompletion`` dict, as ``llm.cached_reply`` trims it), zlib-compressed."""
        self.cache_put_many(model, {key: response})

    def cache_put_many(self, model: str, responses: dict[str, dict[str, Any]]) -> None:
        """``cache_put`` for many completions (cache key → completion), in one transaction; a key cached already
        keeps its completion."""
        if not responses:
            return
        t = now()
        rows = [{"key": k, "model": model, "created_at": t,
                 "response": zlib.compress(json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode())}
                for k, r in responses.items()]
        with self._writing() as conn:
            conn.execute(insert_new(conn, tables.llm_cache), rows)

    def log_call(self, **f: Any) -> None:
        self.log_calls([f])

    def log_calls(self, rows: list[dict[str, Any]]) -> None:
        """Write call-log rows (``llm_calls`` columns but ``id`` and ``created_at``) in one transaction."""
        if not rows:
            return
        t = now()
        self._write(insert(tables.llm_calls), [{**f, "created_at": t} for f in rows])

    def schema_sql(self) -> list[str]:
        """The schema as SQL (SQLite), for the migration test."""
        rows = self._rows("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%'"
                          " AND name NOT IN ('checkpoints', 'writes') ORDER BY name")
        return [" ".join(r[0].split()) for r in rows]

    def schema_outline(self) -> list[str]:
        """The schema in dialect-neutral terms (tables, columns with a generic type and nullability, keys,
        indexes), read back from the database's catalog (information_schema/pg_catalog, SQLite pragmas) by
        SQLAlchemy's inspector: the migration test checks that both engines get the same schema."""
        insp = inspect(self.engine)
        out = []
        for table in sorted(set(insp.get_table_names()) - _FOREIGN_TABLES):
            for c in insp.get_columns(table):
                out.append(f"{table}.{c['name']} {_generic(c['type'])}{'' if c['nullable'] else ' NOT NULL'}")
            pk = insp.get_pk_constraint(table)["constrained_columns"]
            out.append(f"{table} PRIMARY KEY ({', '.join(pk)})")
            for u in insp.get_unique_constraints(table):
                out.append(f"{table} UNIQUE ({', '.join(u['column_names'])})")  # unnamed ones: names differ
            for ix in insp.get_indexes(table):
                if not ix.get("duplicates_constraint"):
                    out.append(f"{table} INDEX {ix['name']} ({', '.join(map(str, ix['column_names']))})")
        return sorted(out)


# LangGraph's checkpointer keeps its own tables in the same database (SQLite saver, Postgres saver)
_FOREIGN_TABLES = {"checkpoints", "writes", "checkpoint_blobs", "checkpoint_writes", "checkpoint_migrations"}


def _generic(type_: Any) -> str:
    """A column type as one of text, integer, float, binary (SQLite's and PostgreSQL's names differ)."""
    name = type(type_).__name__.upper()
    for generic, names in (("integer", ("INT",)), ("float", ("FLOAT", "REAL", "DOUBLE", "NUMERIC")),
                           ("binary", ("BLOB", "BYTEA", "BINARY")), ("text", ("TEXT", "CHAR", "STRING"))):
        if any(n in name for n in names):
            return generic
    return name.lower()


def _reason(e: Exception) -> str:
    orig = getattr(e, "orig", None)
    return str(orig or e).splitlines()[0]

