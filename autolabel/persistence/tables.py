"""The schema as it stands after every migration, defined once as SQLAlchemy Core tables: what queries are built on.

``migrations.py`` says how a database got here (numbered steps, never edited); this module says where "here" is.
``tests/test_persistence_tables.py`` migrates blank SQLite and PostgreSQL databases and checks that they have exactly
these tables, columns, keys and indexes, so the two cannot drift: a new migration comes with its change here.
LangGraph's checkpoint tables (its own schema, made by its checkpointer) are not described here.
"""

# no `from __future__ import annotations` here: it would shadow the `annotations` table
from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData()

_KEY = BigInteger().with_variant(Integer, "sqlite")  # row ids: 64-bit on PostgreSQL, SQLite's rowid there


def _id() -> Column[int]:
    return Column("id", _KEY, primary_key=True, autoincrement=True)


migrations = Table(
    "migrations", metadata,
    Column("name", Text, primary_key=True), Column("applied_at", Text, nullable=False))

runs = Table(
    "runs", metadata,
    Column("id", Text, primary_key=True),
    Column("task_name", Text, nullable=False), Column("task_version", Text, nullable=False),
    Column("task_hash", Text, nullable=False), Column("task_json", Text, nullable=False),
    Column("model", Text, nullable=False), Column("params_json", Text, nullable=False),
    Column("params_hash", Text, nullable=False), Column("input", Text),
    Column("status", Text, nullable=False), Column("summary_json", Text),
    Column("created_at", Text, nullable=False), Column("updated_at", Text, nullable=False))

dialogues = Table(
    "dialogues", metadata,
    Column("run_id", Text, nullable=False), Column("dialogue_id", Text, nullable=False),
    Column("language", Text), Column("n_turns", Integer, nullable=False),
    Column("status", Text, nullable=False), Column("meta_json", Text, nullable=False),
    Column("source", Text), Column("worker", Text), Column("lease_expires", Float),
    Column("updated_at", Text, nullable=False),
    PrimaryKeyConstraint("run_id", "dialogue_id"),
    Index("ix_dialogues_status", "run_id", "status"))

turns = Table(
    "turns", metadata,
    Column("run_id", Text, nullable=False), Column("dialogue_id", Text, nullable=False),
    Column("turn_index", Integer, nullable=False), Column("speaker", Text, nullable=False),
    Column("role", Text), Column("text", Text, nullable=False), Column("meta_json", Text, nullable=False),
    Column("status", Text, nullable=False),
    PrimaryKeyConstraint("run_id", "dialogue_id", "turn_index"))

annotations = Table(
    "annotations", metadata, _id(),
    Column("run_id", Text, nullable=False), Column("dialogue_id", Text, nullable=False),
    Column("kind", Text, nullable=False), Column("turn_index", Integer, nullable=False),
    Column("attempt", Integer, nullable=False), Column("is_final", Integer, nullable=False),
    Column("valid", Integer, nullable=False), Column("status", Text, nullable=False),
    Column("record_json", Text, nullable=False), Column("created_at", Text, nullable=False),
    UniqueConstraint("run_id", "dialogue_id", "kind", "turn_index", "attempt", name="uq_annotation_attempt"),
    Index("ix_annotations_final", "run_id", "is_final"))

llm_calls = Table(
    "llm_calls", metadata, _id(),
    Column("run_id", Text), Column("dialogue_id", Text), Column("turn_index", Integer),
    Column("purpose", Text, nullable=False), Column("model", Text, nullable=False),
    Column("params_hash", Text, nullable=False), Column("cache_key", Text, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("prompt_tokens", Integer, nullable=False), Column("completion_tokens", Integer, nullable=False),
    Column("latency_ms", Float, nullable=False), Column("outcome", Text, nullable=False),
    Column("cost_usd", Float, nullable=False), Column("created_at", Text, nullable=False),
    Index("ix_llm_calls_run", "run_id"))

llm_cache = Table(  # response: zlib JSON (007); response_json: rows written before 007
    "llm_cache", metadata,
    Column("key", Text, primary_key=True), Column("model", Text, nullable=False),
    Column("response_json", Text), Column("created_at", Text, nullable=False),
    Column("response", LargeBinary))

review_items = Table(
    "review_items", metadata, _id(),
    Column("run_id", Text, nullable=False), Column("dialogue_id", Text, nullable=False),
    Column("kind", Text, nullable=False), Column("turn_index", Integer, nullable=False),
    Column("priority", Float, nullable=False), Column("reasons_json", Text, nullable=False),
    Column("proposal_json", Text, nullable=False), Column("status", Text, nullable=False),
    Column("version", Integer, nullable=False), Column("lease_owner", Text), Column("lease_expires", Float),
    Column("required_reviews", Integer, nullable=False),
    Column("created_at", Text, nullable=False), Column("updated_at", Text, nullable=False),
    Column("agreement", Float), Column("resolved_at", Text),
    UniqueConstraint("run_id", "dialogue_id", "kind", "turn_index", name="uq_review_item"),
    Index("ix_review_queue", "status", "priority"),
    Index("ix_review_claim", "priority", "id",  # the open items only (006)
          sqlite_where=text("status IN ('pending', 'claimed')"),
          postgresql_where=text("status IN ('pending', 'claimed')")))

reviewers = Table(
    "reviewers", metadata, _id(),
    Column("name", Text, nullable=False, unique=True), Column("token_hash", Text, nullable=False),
    Column("created_at", Text, nullable=False))

reviews = Table(
    "reviews", metadata, _id(),
    Column("item_id", _KEY, nullable=False), Column("reviewer", Text, nullable=False),
    Column("labels_json", Text, nullable=False), Column("texts_json", Text, nullable=False),
    Column("note", Text), Column("decision", Text, nullable=False),
    Column("created_at", Text, nullable=False),
    UniqueConstraint("item_id", "reviewer", name="uq_review_once"),
    Index("ix_reviews_item", "item_id"))

review_skips = Table(
    "review_skips", metadata,
    Column("item_id", _KEY, nullable=False), Column("reviewer", Text, nullable=False),
    Column("at", Text, nullable=False), PrimaryKeyConstraint("item_id", "reviewer"))

review_audit = Table(  # append-only: a trigger per dialect refuses UPDATE and DELETE (002)
    "review_audit", metadata, _id(),
    Column("item_id", _KEY), Column("reviewer", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("before_json", Text), Column("after_json", Text), Column("at", Text, nullable=False),
    Index("ix_review_audit_item", "item_id"))

gold = Table(
    "gold", metadata, _id(),
    Column("run_id", Text, nullable=False), Column("dialogue_id", Text, nullable=False),
    Column("kind", Text, nullable=False), Column("turn_index", Integer, nullable=False),
    Column("task_name", Text, nullable=False), Column("role", Text), Column("text", Text),
    Column("labels_json", Text, nullable=False), Column("texts_json", Text, nullable=False),
    Column("source", Text, nullable=False), Column("reviewer", Text), Column("item_id", _KEY),
    Column("created_at", Text, nullable=False), Column("note", Text),
    UniqueConstraint("run_id", "dialogue_id", "kind", "turn_index", name="uq_gold"),
    Index("ix_gold_task", "task_name"))

calibrators = Table(
    "calibrators", metadata, _id(),
    Column("task_name", Text, nullable=False), Column("task_hash", Text, nullable=False),
    Column("model", Text, nullable=False), Column("field", Text, nullable=False),
    Column("method", Text, nullable=False), Column("calibrator_json", Text),
    Column("threshold", Float),
    Column("alpha", Float, nullable=False), Column("delta", Float, nullable=False),
    Column("n", Integer, nullable=False), Column("k", Integer, nullable=False),
    Column("upper_bound", Float, nullable=False), Column("coverage", Float, nullable=False),
    Column("reason", Text, nullable=False), Column("created_at", Text, nullable=False),
    Column("signal_params_json", Text),
    Index("ix_calibrators_lookup", "task_name", "task_hash", "model", "field"))

embeddings = Table(
    "embeddings", metadata,
    Column("model", Text, nullable=False), Column("text_hash", Text, nullable=False),
    Column("dim", Integer, nullable=False), Column("vector", LargeBinary, nullable=False),
    Column("created_at", Text, nullable=False),
    PrimaryKeyConstraint("model", "text_hash"))

job_dialogues = Table(
    "job_dialogues", metadata,
    Column("run_id", Text, nullable=False), Column("dialogue_id", Text, nullable=False),
    Column("dialogue_json", Text, nullable=False), Column("created_at", Text, nullable=False),
    PrimaryKeyConstraint("run_id", "dialogue_id"))

provider_batches = Table(
    "provider_batches", metadata,
    Column("id", Text, primary_key=True), Column("run_id", Text, nullable=False),
    Column("status", Text, nullable=False), Column("requests", Integer, nullable=False),
    Column("input_file_id", Text, nullable=False), Column("output_file_id", Text),
    Column("error_file_id", Text),
    Column("created_at", Text, nullable=False), Column("updated_at", Text, nullable=False),
    Index("ix_provider_batches_run", "run_id", "status"))

batch_requests = Table(
    "batch_requests", metadata,
    Column("batch_id", Text, nullable=False), Column("custom_id", Text, nullable=False),
    Column("cache_key", Text, nullable=False),
    PrimaryKeyConstraint("batch_id", "custom_id"))
