"""Stored text embeddings (the ``embeddings`` table): vectors keyed by embedding model and the text's SHA-256.

Few-shot example selection and the k-nearest-neighbour stage embed reviewed turns once and find them here in later
runs. Vectors are little-endian float32 bytes in the table and float32 arrays here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
from sqlalchemy import select

from autolabel.persistence.store import Store, now
from autolabel.persistence.tables import embeddings
from autolabel.persistence.tx import insert_new


def text_hash(text: str) -> str:
    """The key of a text's vector: its UTF-8 SHA-256, hex."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def stored(store: Store, model: str) -> dict[str, np.ndarray]:
    """Every vector stored for ``model``: text hash -> float32 vector."""
    rows = store.fetch(select(embeddings.c.text_hash, embeddings.c.vector).where(embeddings.c.model == model))
    return {h: np.frombuffer(v, dtype="<f4").astype(np.float32) for h, v in rows}


def add(store: Store, model: str, vectors: Mapping[str, np.ndarray]) -> None:
    """Store vectors (text hash -> vector) of ``model`` in one transaction; a hash stored already is kept."""
    if not vectors:
        return
    t = now()
    rows = [{"model": model, "text_hash": h, "dim": int(v.shape[0]), "vector": np.asarray(v, dtype="<f4").tobytes(),
             "created_at": t} for h, v in vectors.items()]
    with store.transaction() as conn:
        conn.execute(insert_new(conn, embeddings), rows)
