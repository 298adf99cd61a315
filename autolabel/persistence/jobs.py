"""The job queue's persistence: queued dialogues of a run, claimed one at a time under a lease.

A claim locks what it takes (PostgreSQL ``SELECT ... FOR UPDATE SKIP LOCKED``: workers never wait for each other;
SQLite ``BEGIN IMMEDIATE``: one writer at a time, several workers on one machine), through the one transaction helper
of :mod:`autolabel.persistence.tx`. Who claims and what is done with a claim is :mod:`autolabel.scale.jobs`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

from sqlalchemy import text

from autolabel.models import Dialogue
from autolabel.persistence.store import Store, now
from autolabel.persistence.tx import for_update, transaction

DEFAULT_LEASE = 60.0


class JobQueue:
    """The dialogues of queued runs in one store, with leases. ``clock`` is injectable for lease tests."""

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def enqueue(self, run_id: str, dialogues: Iterator[Dialogue] | list[Dialogue], *, chunk: int = 500
                ) -> tuple[int, int]:
        """Add dialogues to a run as ``pending`` (a dialogue already in the run is left as it is).
        Returns (added, existing)."""
        with self.store.engine.connect() as conn:
            known = {r[0] for r in conn.execute(text("SELECT dialogue_id FROM dialogues WHERE run_id=:r"),
                                                {"r": run_id})}
        added = existing = 0
        batch: list[Dialogue] = []

        def flush() -> None:
            t = now()
            with transaction(self.store.engine, self.store.db) as conn:
                conn.execute(text("INSERT INTO dialogues (run_id, dialogue_id, language, n_turns, status, meta_json,"
                                  " source, updated_at) VALUES (:r, :d, '', :n, 'pending', :m, :s, :t)"
                                  " ON CONFLICT (run_id, dialogue_id) DO NOTHING"),
                             [{"r": run_id, "d": d.id, "n": len(d.turns), "s": d.source, "t": t,
                               "m": json.dumps(d.meta, ensure_ascii=False, default=str)} for d in batch])
                conn.execute(text("INSERT INTO job_dialogues (run_id, dialogue_id, dialogue_json, created_at)"
                                  " VALUES (:r, :d, :j, :t) ON CONFLICT (run_id, dialogue_id) DO NOTHING"),
                             [{"r": run_id, "d": d.id, "j": d.model_dump_json(), "t": t} for d in batch])
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
        with transaction(self.store.engine, self.store.db) as conn:
            t = self.clock()
            lock = for_update(conn, skip_locked=True)
            row = None
            for where in ("d.status='running' AND d.lease_expires < :now", "d.status='pending'"):
                row = conn.execute(text(
                    "SELECT d.dialogue_id FROM dialogues d WHERE d.run_id=:r AND " + where
                    + " AND EXISTS (SELECT 1 FROM job_dialogues j WHERE j.run_id=d.run_id AND"
                    " j.dialogue_id=d.dialogue_id) LIMIT 1" + lock), {"r": run_id, "now": t}).first()
                if row is not None:
                    break
            if row is None:
                return None
            key = {"r": run_id, "d": row[0]}
            conn.execute(text("UPDATE dialogues SET status='running', worker=:w, lease_expires=:e, updated_at=:t"
                              " WHERE run_id=:r AND dialogue_id=:d"),
                         {**key, "w": worker, "e": t + lease_seconds, "t": now()})
            content = conn.execute(text("SELECT dialogue_json FROM job_dialogues WHERE run_id=:r AND"
                                        " dialogue_id=:d"), key).scalar_one()
        return Dialogue.model_validate_json(content)

    def heartbeat(self, worker: str, lease_seconds: float = DEFAULT_LEASE) -> int:
        """Renew the lease of every dialogue this worker holds. Returns how many it holds."""
        with transaction(self.store.engine, self.store.db) as conn:
            return conn.execute(text("UPDATE dialogues SET lease_expires=:e WHERE worker=:w AND status='running'"),
                                {"w": worker, "e": self.clock() + lease_seconds}).rowcount

    def release(self, worker: str) -> int:
        """Give back every dialogue this worker holds (it stops early): others may claim them at once."""
        with transaction(self.store.engine, self.store.db) as conn:
            return conn.execute(text("UPDATE dialogues SET status='pending', worker=NULL, lease_expires=NULL,"
                                     " updated_at=:t WHERE worker=:w AND status='running'"),
                                {"w": worker, "t": now()}).rowcount

    def counts(self, run_id: str) -> dict[str, int]:
        """Queued dialogues of the run by status (pending, running, done)."""
        with self.store.engine.connect() as conn:
            rows = conn.execute(text("SELECT d.status, COUNT(*) FROM dialogues d JOIN job_dialogues j ON"
                                     " j.run_id=d.run_id AND j.dialogue_id=d.dialogue_id WHERE d.run_id=:r"
                                     " GROUP BY d.status"), {"r": run_id}).all()
        return {"pending": 0, "running": 0, "done": 0, **{s: int(n) for s, n in rows}}

    def runs_with_work(self, *, task_hash: str | None = None, model: str | None = None) -> list[str]:
        """Runs with queued dialogues not done yet, oldest first; optionally only those of one task spec (by its
        hash) and one model."""
        only = "".join(f" AND r.{column}=:{column}" for column, v in (("task_hash", task_hash), ("model", model))
                       if v is not None)
        with self.store.engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT r.id FROM runs r WHERE EXISTS (SELECT 1 FROM dialogues d JOIN job_dialogues j ON"
                " j.run_id=d.run_id AND j.dialogue_id=d.dialogue_id WHERE d.run_id=r.id AND d.status IN"
                f" ('pending', 'running')){only} ORDER BY r.created_at, r.id"),
                {"task_hash": task_hash, "model": model}).all()
        return [r[0] for r in rows]
