"""Provider batches (``provider_batches``) and the cache key behind each of their lines (``batch_requests``).

The batch backend (:mod:`autolabel.llm.batch`) records a batch when it submits it and its status when it collects
it, so that a restarted run collects a batch it submitted before instead of paying for its requests again.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select, update

from autolabel.persistence.store import Store, now
from autolabel.persistence.tables import batch_requests, provider_batches

SUBMITTED = "submitted"


def record_batch(store: Store, run_id: str, batch_id: str, file_id: str, mapping: dict[str, str]) -> None:
    """A batch just submitted for ``run_id``: its input file and each line's custom id -> cache key."""
    t = now()
    with store.transaction() as conn:
        conn.execute(insert(provider_batches).values(
            id=batch_id, run_id=run_id, status=SUBMITTED, requests=len(mapping), input_file_id=file_id,
            created_at=t, updated_at=t))
        conn.execute(insert(batch_requests),
                     [{"batch_id": batch_id, "custom_id": c, "cache_key": k} for c, k in mapping.items()])


def set_status(store: Store, batch_id: str, status: str, output_file_id: str | None,
               error_file_id: str | None) -> None:
    with store.transaction() as conn:
        conn.execute(update(provider_batches).where(provider_batches.c.id == batch_id).values(
            status=status, output_file_id=output_file_id, error_file_id=error_file_id, updated_at=now()))


def submitted_requests(store: Store, run_id: str) -> list[tuple[str, str, str]]:
    """(batch id, custom id, cache key) of every line of the run's batches still waiting to be collected, oldest
    batch first."""
    b, r = provider_batches.c, batch_requests.c
    query = (select(b.id, r.custom_id, r.cache_key)
             .select_from(provider_batches.join(batch_requests, r.batch_id == b.id))
             .where(b.run_id == run_id, b.status == SUBMITTED)
             .order_by(b.created_at))
    return [(batch_id, custom_id, key) for batch_id, custom_id, key in store.fetch(query)]


def batches(store: Store, run_id: str) -> list[dict[str, Any]]:
    """The provider batches of a run, oldest first (id, status, requests, file ids, times)."""
    b = provider_batches.c
    query = (select(b.id, b.status, b.requests, b.input_file_id, b.output_file_id, b.error_file_id, b.created_at,
                    b.updated_at)
             .where(b.run_id == run_id).order_by(b.created_at, b.id))
    return [dict(row._mapping) for row in store.fetch(query)]
