"""The job queue's persistence: queued dialogues of a run, claimed one at a time under a lease.

A claim locks what it takes (PostgreSQL ``SELECT ... FOR UPDATE SKIP LOCKED``: workers never wait for each other;
SQLite ``BEGIN IMMEDIATE``: one writer at a time, several workers on one machine), through the one transaction helper
of :mod:`autolabel.persistence.tx` (``Store.transaction``); queries are built on :mod:`autolabel.persistence.tables`.
Who claims and what is done with a claim is :mod:`autolabel.scale.jobs`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

from sqlalchemy import and_, exists, func, select, update

from autolabel.models import Dialogue
from autolabel.persistence.store import Store, now
from autolabel.persistence.tables import dialogues as dialogues_table
from autolabel.persistence.tables import job_dialogues, runs
from autolabel.persistence.tx import insert_new

DEFAULT_LEASE = 60.0
OPEN = ("pending", "running")

_d, _j = dialogues_table.c, job_dialogues.c
_QUEUED = exists().where(_j.run_id == _d.run_id, _j.dialogue_id == _d.dialogue_id)  # a dialogue of the job queue
_WITH_CONTENT = dialogues_table.join(job_dialogues, and_(_j.run_id == _d.run_id, _j.dialogue_id == _d.dialogue_id))


class JobQueue:
    """The dialogues of queued runs in one store, with leases. ``clock`` is injectable for lease tests."""

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def enqueue(self, run_id: str, dialogues: Iterator[Dialogue] | list[Dialogue], *, chunk: int = 500
                ) -> tuple[int, int]:
        """Add dialogues to a run as ``pending`` (a dialogue already in the run is left as it is).
        Returns (added, existing)."""
        known = {r[0] for r in self.store.fetch(select(_d.dialogue_id).where(_d.run_id == run_id))}
        added = existing = 0
        batch: list[Dialogue] = []

        def flush() -> None:
            t = now()
            with self.store.transaction() as conn:
                conn.execute(insert_new(conn, dialogues_table), [
                    {"run_id": run_id, "dialogue_id": d.id, "language": "", "n_turns": len(d.turns),
                     "status": "pending", "meta_json": json.dumps(d.meta, ensure_ascii=False, default=str),
                     "source": d.source, "updated_at": t} for d in batch])
                conn.execute(insert_new(conn, job_dialogues), [
                    {"run_id": run_id, "dialogue_id": d.id, "dialogue_json": d.model_dump_json(), "created_at": t}
                    for d in batch])
            batch.clear()

        for d in dialogues:
            if d.id in known:
                existing += 1
                continue
            known.add(d.id)
            batch.append(d)
            added += 1
            if len(batch) >= chunk:
                flush()
        if batch:
            flush()
        return added, existing

    def claim(self, run_id: str, worker: str, lease_seconds: float = DEFAULT_LEASE) -> Dialogue | None:
        """Lease the next dialogue of the run: one whose lease expired first, else a pending one."""
        with self.store.transaction() as conn:
            t = self.clock()
            row = None
            for which in (and_(_d.status == "running", _d.lease_expires < t), _d.status == "pending"):
                row = conn.execute(select(_d.dialogue_id).where(_d.run_id == run_id, which, _QUEUED).limit(1)
                                   .with_for_update(skip_locked=True)).first()  # nothing added on SQLite
                if row is not None:
                    break
            if row is None:
                return None
            conn.execute(update(dialogues_table).where(_d.run_id == run_id, _d.dialogue_id == row[0])
                         .values(status="running", worker=worker, lease_expires=t + lease_seconds, updated_at=now()))
            content = conn.execute(select(_j.dialogue_json)
                                   .where(_j.run_id == run_id, _j.dialogue_id == row[0])).scalar_one()
        return Dialogue.model_validate_json(content)

    def heartbeat(self, worker: str, lease_seconds: float = DEFAULT_LEASE) -> int:
        """Renew the lease of every dialogue this worker holds. Returns how many it holds."""
        with self.store.transaction() as conn:
            return conn.execute(update(dialogues_table).where(_d.worker == worker, _d.status == "running")
                                .values(lease_expires=self.clock() + lease_seconds)).rowcount

    def release(self, worker: str) -> int:
        """Give back every dialogue this worker holds (it stops early): others may claim them at once."""
        with self.store.transaction() as conn:
            return conn.execute(update(dialogues_table).where(_d.worker == worker, _d.status == "running")
                                .values(status="pending", worker=None, lease_expires=None, updated_at=now())).rowcount

    def counts(self, run_id: str) -> dict[str, int]:
        """Queued dialogues of the run by status (pending, running, done)."""
        rows = self.store.fetch(select(_d.status, func.count()).select_from(_WITH_CONTENT)
                                .where(_d.run_id == run_id).group_by(_d.status))
        return {"pending": 0, "running": 0, "done": 0, **{s: int(n) for s, n in rows}}

    def runs_with_work(self, *, task_hash: str | None = None, model: str | None = None) -> list[str]:
        """Runs with queued dialogues not done yet, oldest first; optionally only those of one task spec (by its
        hash) and one model."""
        r = runs.c
        open_work = exists(select(_d.dialogue_id).select_from(_WITH_CONTENT)
                           .where(_d.run_id == r.id, _d.status.in_(OPEN)))
        query = select(r.id).where(open_work).order_by(r.created_at, r.id)
        if task_hash is not None:
            query = query.where(r.task_hash == task_hash)
        if model is not None:
            query = query.where(r.model == model)
        return [row[0] for row in self.store.fetch(query)]
