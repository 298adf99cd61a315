"""Numbered schema migrations, in code, for SQLite and PostgreSQL alike (SQLAlchemy Core emits each dialect's DDL).

Each migration runs in one transaction together with the row that records it in ``migrations``. Opening a store
always migrates. An applied migration is never edited: change the schema by appending a new one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    inspect,
    text,
)

from autolabel.persistence.tx import BEGIN

Migration = Callable[[Connection], None]


def _id() -> Column[int]:
    return Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)


def m001_initial(conn: Connection) -> None:
    """Runs, dialogues, turns, annotations (every attempt), LLM calls and cache, review items."""
    md = MetaData()
    Table("runs", md,
          Column("id", Text, primary_key=True),
          Column("task_name", Text, nullable=False), Column("task_version", Text, nullable=False),
          Column("task_hash", Text, nullable=False), Column("task_json", Text, nullable=False),
          Column("model", Text, nullable=False), Column("params_json", Text, nullable=False),
          Column("params_hash", Text, nullable=False), Column("input", Text),
          Column("status", Text, nullable=False), Column("summary_json", Text),
          Column("created_at", Text, nullable=False), Column("updated_at", Text, nullable=False))
    Table("dialogues", md,
          Column("run_id", Text, nullable=False), Column("dialogue_id", Text, nullable=False),
          Column("language", Text), Column("n_turns", Integer, nullable=False),
          Column("status", Text, nullable=False), Column("meta_json", Text, nullable=False),
          Column("source", Text), Column("worker", Text), Column("lease_expires", Float),
          Column("updated_at", Text, nullable=False),
          PrimaryKeyConstraint("run_id", "dialogue_id"))
    Table("turns", md,
          Column("run_id", Text, nullable=False), Column("dialogue_id", Text, nullable=False),
          Column("turn_index", Integer, nullable=False), Column("speaker", Text, nullable=False),
          Column("role", Text), Column("text", Text, nullable=False), Column("meta_json", Text, nullable=False),
          Column("status", Text, nullable=False),
          PrimaryKeyConstraint("run_id", "dialogue_id", "turn_index"))
    Table("annotations", md, _id(),
          Column("run_id", Text, nullable=False), Column("dialogue_id", Text, nullable=False),
          Column("kind", Text, nullable=False), Column("turn_index", Integer, nullable=False),
          Column("attempt", Integer, nullable=False), Column("is_final", Integer, nullable=False),
          Column("valid", Integer, nullable=False), Column("status", Text, nullable=False),
          Column("record_json", Text, nullable=False), Column("created_at", Text, nullable=False),
          UniqueConstraint("run_id", "dialogue_id", "kind", "turn_index", "attempt", name="uq_annotation_attempt"))
    Table("llm_calls", md, _id(),
          Column("run_id", Text), Column("dialogue_id", Text), Column("turn_index", Integer),
          Column("purpose", Text, nullable=False), Column("model", Text, nullable=False),
          Column("params_hash", Text, nullable=False), Column("cache_key", Text, nullable=False),
          Column("attempt", Integer, nullable=False),
          Column("prompt_tokens", Integer, nullable=False), Column("completion_tokens", Integer, nullable=False),
          Column("latency_ms", Float, nullable=False), Column("outcome", Text, nullable=False),
          Column("cost_usd", Float, nullable=False), Column("created_at", Text, nullable=False))
    Table("llm_cache", md,
          Column("key", Text, primary_key=True), Column("model", Text, nullable=False),
          Column("response_json", Text, nullable=False), Column("created_at", Text, nullable=False))
    Table("review_items", md, _id(),
          Column("run_id", Text, nullable=False), Column("dialogue_id", Text, nullable=False),
          Column("kind", Text, nullable=False), Column("turn_index", Integer, nullable=False),
          Column("priority", Float, nullable=False), Column("reasons_json", Text, nullable=False),
          Column("proposal_json", Text, nullable=False), Column("status", Text, nullable=False),
          Column("version", Integer, nullable=False), Column("lease_owner", Text), Column("lease_expires", Float),
          Column("required_reviews", Integer, nullable=False),
          Column("created_at", Text, nullable=False), Column("updated_at", Text, nullable=False),
          UniqueConstraint("run_id", "dialogue_id", "kind", "turn_index", name="uq_review_item"))
    Index("ix_annotations_final", md.tables["annotations"].c.run_id, md.tables["annotations"].c.is_final)
    Index("ix_llm_calls_run", md.tables["llm_calls"].c.run_id)
    Index("ix_review_queue", md.tables["review_items"].c.status, md.tables["review_items"].c.priority)
    Index("ix_dialogues_status", md.tables["dialogues"].c.run_id, md.tables["dialogues"].c.status)
    md.create_all(conn)


def m002_review(conn: Connection) -> None:
    """The review queue's own state: reviewers, reviews, skips, the append-only audit log, and gold labels.

    ``review_audit`` refuses UPDATE and DELETE (a trigger per dialect). ``gold`` holds one reviewed answer per
    item (turn or session), with the turn's text and role so few-shot selection and calibration need no join.
    ``review_items`` gains ``agreement`` (share of agreeing reviewer pairs) and ``resolved_at``.
    """
    md = MetaData()
    ref = BigInteger().with_variant(Integer, "sqlite")
    Table("reviewers", md, _id(),
          Column("name", Text, nullable=False, unique=True), Column("token_hash", Text, nullable=False),
          Column("created_at", Text, nullable=False))
    Table("reviews", md, _id(),
          Column("item_id", ref, nullable=False), Column("reviewer", Text, nullable=False),
          Column("labels_json", Text, nullable=False), Column("texts_json", Text, nullable=False),
          Column("note", Text), Column("decision", Text, nullable=False),
          Column("created_at", Text, nullable=False),
          UniqueConstraint("item_id", "reviewer", name="uq_review_once"))
    Table("review_skips", md,
          Column("item_id", ref, nullable=False), Column("reviewer", Text, nullable=False),
          Column("at", Text, nullable=False), PrimaryKeyConstraint("item_id", "reviewer"))
    Table("review_audit", md, _id(),
          Column("item_id", ref), Column("reviewer", Text, nullable=False),
          Column("action", Text, nullable=False),
          Column("before_json", Text), Column("after_json", Text), Column("at", Text, nullable=False))
    Table("gold", md, _id(),
          Column("run_id", Text, nullable=False), Column("dialogue_id", Text, nullable=False),
          Column("kind", Text, nullable=False), Column("turn_index", Integer, nullable=False),
          Column("task_name", Text, nullable=False), Column("role", Text), Column("text", Text),
          Column("labels_json", Text, nullable=False), Column("texts_json", Text, nullable=False),
          Column("source", Text, nullable=False), Column("reviewer", Text), Column("item_id", ref),
          Column("created_at", Text, nullable=False),
          UniqueConstraint("run_id", "dialogue_id", "kind", "turn_index", name="uq_gold"))
    Index("ix_reviews_item", md.tables["reviews"].c.item_id)
    Index("ix_review_audit_item", md.tables["review_audit"].c.item_id)
    Index("ix_gold_task", md.tables["gold"].c.task_name)
    md.create_all(conn)
    for name, type_ in (("agreement", Float()), ("resolved_at", Text())):
        ddl = type_.compile(dialect=conn.dialect)
        conn.execute(text(f"ALTER TABLE review_items ADD COLUMN {name} {ddl}"))
    for sql in _APPEND_ONLY[conn.dialect.name]:
        conn.execute(text(sql))


_APPEND_ONLY: dict[str, tuple[str, ...]] = {
    "sqlite": tuple(
        f"CREATE TRIGGER review_audit_no_{op.lower()} BEFORE {op} ON review_audit"
        " BEGIN SELECT RAISE(ABORT, 'review_audit is append-only'); END"
        for op in ("UPDATE", "DELETE")),
    "postgresql": (
        "CREATE FUNCTION review_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN RAISE EXCEPTION 'review_audit is append-only'; END $$",
        "CREATE TRIGGER review_audit_append_only BEFORE UPDATE OR DELETE ON review_audit"
        " FOR EACH ROW EXECUTE FUNCTION review_audit_append_only()"),
}


def m003_calibration(conn: Connection) -> None:
    """Fitted calibrators and certified auto-accept thresholds, per (task, task hash, model, field).

    ``threshold`` is NULL when nothing could be certified (too little data, or no threshold meets alpha):
    routing then flags every label of that field. ``calibrator_json`` is NULL when no calibrator could be
    fitted and the raw score (the mean of the signals) was certified instead.
    """
    md = MetaData()
    Table("calibrators", md, _id(),
          Column("task_name", Text, nullable=False), Column("task_hash", Text, nullable=False),
          Column("model", Text, nullable=False), Column("field", Text, nullable=False),
          Column("method", Text, nullable=False), Column("calibrator_json", Text),
          Column("threshold", Float),
          Column("alpha", Float, nullable=False), Column("delta", Float, nullable=False),
          Column("n", Integer, nullable=False), Column("k", Integer, nullable=False),
          Column("upper_bound", Float, nullable=False), Column("coverage", Float, nullable=False),
          Column("reason", Text, nullable=False), Column("created_at", Text, nullable=False))
    t = md.tables["calibrators"]
    Index("ix_calibrators_lookup", t.c.task_name, t.c.task_hash, t.c.model, t.c.field)
    md.create_all(conn)


def m004_embeddings(conn: Connection) -> None:
    """Text embeddings, keyed by embedding model and the text's SHA-256, as little-endian float32 bytes.

    Few-shot example selection embeds the reviewed (gold) turns once and reuses them in later runs.
    """
    md = MetaData()
    Table("embeddings", md,
          Column("model", Text, nullable=False), Column("text_hash", Text, nullable=False),
          Column("dim", Integer, nullable=False), Column("vector", LargeBinary, nullable=False),
          Column("created_at", Text, nullable=False),
          PrimaryKeyConstraint("model", "text_hash"))
    md.create_all(conn)


def m005_jobs(conn: Connection) -> None:
    """The job queue and the provider batch API.

    ``job_dialogues`` holds each enqueued dialogue's content (``autolabel enqueue``); its state, worker and lease
    stay in ``dialogues`` (``status`` pending → running → done, ``worker``, ``lease_expires``). ``provider_batches``
    records every batch submitted to a provider (``run --batch-api``) and ``batch_requests`` the cache key behind
    each of its lines, so that a restarted run collects a batch it submitted before instead of paying again.
    """
    md = MetaData()
    Table("job_dialogues", md,
          Column("run_id", Text, nullable=False), Column("dialogue_id", Text, nullable=False),
          Column("dialogue_json", Text, nullable=False), Column("created_at", Text, nullable=False),
          PrimaryKeyConstraint("run_id", "dialogue_id"))
    Table("provider_batches", md,
          Column("id", Text, primary_key=True), Column("run_id", Text, nullable=False),
          Column("status", Text, nullable=False), Column("requests", Integer, nullable=False),
          Column("input_file_id", Text, nullable=False), Column("output_file_id", Text),
          Column("error_file_id", Text),
          Column("created_at", Text, nullable=False), Column("updated_at", Text, nullable=False))
    Table("batch_requests", md,
          Column("batch_id", Text, nullable=False), Column("custom_id", Text, nullable=False),
          Column("cache_key", Text, nullable=False),
          PrimaryKeyConstraint("batch_id", "custom_id"))
    Index("ix_provider_batches_run", md.tables["provider_batches"].c.run_id, md.tables["provider_batches"].c.status)
    md.create_all(conn)


def m006_review_claim_index(conn: Connection) -> None:
    """The review queue's claim order as a partial index over the open items (pending or claimed):
    ``ORDER BY priority, id LIMIT 1`` then reads the first rows of the index instead of sorting the queue
    (on PostgreSQL with 100,000 items, 0.1 ms instead of 150 ms per claim); done items leave the index."""
    conn.execute(text("CREATE INDEX ix_review_claim ON review_items (priority, id)"
                      " WHERE status IN ('pending', 'claimed')"))


def m007_compact_cache(conn: Connection) -> None:
    """``llm_cache.response``: a cached completion as zlib-compressed JSON of what a cache hit reads (message,
    finish reason, usage, each token's text and logprob; see ``llm.cached_reply``): ~0.5 KB a call where
    ``response_json`` held the whole completion, top-5 logprobs of every token included (~11 KB).
    ``response_json`` becomes nullable; the rows written before keep it and are read from it as they were.
    SQLite cannot drop a NOT NULL in place, so there the table is rebuilt with its rows."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("ALTER TABLE llm_cache ALTER COLUMN response_json DROP NOT NULL"))
        conn.execute(text(f"ALTER TABLE llm_cache ADD COLUMN response {LargeBinary().compile(dialect=conn.dialect)}"))
        return
    md = MetaData()
    Table("llm_cache_007", md,
          Column("key", Text, primary_key=True), Column("model", Text, nullable=False),
          Column("response_json", Text), Column("created_at", Text, nullable=False),
          Column("response", LargeBinary))
    md.create_all(conn)
    conn.execute(text('INSERT INTO llm_cache_007 ("key", model, response_json, created_at)'
                      ' SELECT "key", model, response_json, created_at FROM llm_cache'))
    conn.execute(text("DROP TABLE llm_cache"))
    conn.execute(text("ALTER TABLE llm_cache_007 RENAME TO llm_cache"))


def m008_calibration_settings(conn: Connection) -> None:
    """The settings of the run a calibrator was fitted on that shape the confidence signals (``evaluate.
    SIGNAL_PARAMS``), as JSON: a later run with other settings is told that the certified bound was not measured
    for signals like its own. NULL for calibrators stored before (not checked)."""
    conn.execute(text("ALTER TABLE calibrators ADD COLUMN signal_params_json TEXT"))


def m009_gold_note(conn: Connection) -> None:
    """The adjudicator's note, kept with the gold row it explains (NULL for gold settled by agreeing reviews)."""
    conn.execute(text("ALTER TABLE gold ADD COLUMN note TEXT"))


MIGRATIONS: list[tuple[str, Migration]] = [
    ("001_initial", m001_initial),
    ("002_review", m002_review),
    ("003_calibration", m003_calibration),
    ("004_embeddings", m004_embeddings),
    ("005_jobs", m005_jobs),
    ("006_review_claim_index", m006_review_claim_index),
    ("007_compact_cache", m007_compact_cache),
    ("008_calibration_settings", m008_calibration_settings),
    ("009_gold_note", m009_gold_note),
]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def applied(conn: Connection) -> set[str]:
    if not inspect(conn).has_table("migrations"):
        return set()
    return {r[0] for r in conn.execute(text("SELECT name FROM migrations"))}


@contextmanager
def _migrating(engine: Engine) -> Iterator[Connection]:
    """One migration transaction that holds the database against other migrators from its start: SQLite's
    ``BEGIN IMMEDIATE`` (the one write-transaction rule of :mod:`autolabel.persistence.tx`), PostgreSQL's advisory
    lock. Two processes opening a new database at once then migrate it one after the other."""
    with engine.connect() as conn, conn.begin():
        for sql in BEGIN.get(conn.dialect.name, ()):
            conn.exec_driver_sql(sql)
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(724513)"))  # one migrator at a time
        yield conn


def migrate(engine: Engine) -> list[str]:
    """Apply every pending migration, each in its own transaction with its record. Returns the names applied."""
    with _migrating(engine) as conn:
        if not inspect(conn).has_table("migrations"):
            md = MetaData()
            Table("migrations", md, Column("name", Text, primary_key=True),
                  Column("applied_at", Text, nullable=False))
            md.create_all(conn)
    done: list[str] = []
    for name, step in MIGRATIONS:
        with _migrating(engine) as conn:
            if name in applied(conn):
                continue
            step(conn)
            conn.execute(text("INSERT INTO migrations (name, applied_at) VALUES (:n, :t)"), {"n": name, "t": _now()})
            done.append(name)
    return done
