"""Attempts at a dialogue by processes that may die, stall or be declared dead while they still run (a Ray run).

Before an attempt starts labeling a dialogue it ``claim``\\s it with its own token (the ``worker`` of the dialogue's
row): the latest claim is the dialogue's one current attempt. Its final write (``Store.save_dialogue(...,
lease_owner=token)``) checks that token in the same transaction as the write, so an attempt that was superseded —
a labeler Ray restarted elsewhere while the old process still ran — writes nothing (``LeaseLost``), and a dialogue
already ``done`` is never claimed again: its stored result stands, ids and timestamps included. Unlike the job
queue's leases (``jobs.py``) a claim does not expire: the cluster (Ray) decides when an attempt is dead.
"""

from __future__ import annotations

import json

from sqlalchemy import bindparam, text

from autolabel.models import Dialogue
from autolabel.persistence.store import Store, now
from autolabel.persistence.tx import for_update, transaction


def claim(store: Store, run_id: str, d: Dialogue, token: str) -> bool:
    """Make ``token`` the current attempt at dialogue ``d`` of the run (its row is made if there is none).
    False when the dialogue is done already: nothing is changed."""
    key = {"r": run_id, "d": d.id}
    with transaction(store.engine, store.db) as conn:
        conn.execute(text("INSERT INTO dialogues (run_id, dialogue_id, language, n_turns, status, meta_json, source,"
                          " updated_at) VALUES (:r, :d, '', :n, 'pending', :m, :s, :t)"
                          " ON CONFLICT (run_id, dialogue_id) DO NOTHING"),
                     {**key, "n": len(d.turns), "s": d.source, "t": now(),
                      "m": json.dumps(d.meta, ensure_ascii=False, default=str)})
        status = conn.execute(text("SELECT status FROM dialogues WHERE run_id=:r AND dialogue_id=:d"
                                   + for_update(conn)), key).scalar_one()
        if status == "done":
            return False
        conn.execute(text("UPDATE dialogues SET status='running', worker=:w, lease_expires=NULL, updated_at=:t"
                          " WHERE run_id=:r AND dialogue_id=:d"), {**key, "w": token, "t": now()})
    return True


def superseded(store: Store, run_id: str, dialogue_ids: list[str], token: str) -> list[str]:
    """Those of ``dialogue_ids`` (claimed with ``token``) whose current attempt is another one now."""
    if not dialogue_ids:
        return []
    with store.engine.connect() as conn:
        rows = conn.execute(text("SELECT dialogue_id FROM dialogues WHERE run_id=:r AND dialogue_id IN :ids"
                                 " AND (worker IS NULL OR worker <> :w)").bindparams(bindparam("ids", expanding=True)),
                            {"r": run_id, "ids": dialogue_ids, "w": token}).all()
    return [r[0] for r in rows]
