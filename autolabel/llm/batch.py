"""The provider batch API as a backend (``autolabel run --batch-api``, ``Settings.batch_api``; ``openai:`` models).

The graph runs exactly as with direct calls; only the transport differs. ``BatchBackend.complete`` does not call the
endpoint: it queues the request and waits. Once no new request has come for ``batch_wait`` seconds, every queued
request becomes one line of a batch file (``custom_id`` = ``run/dialogue/turn/purpose/key``), which is uploaded
(``files.create``) and submitted (``batches.create``), then polled every ``batch_poll`` seconds. When the batch
ends, each result is written to the LLM cache under the key ``LLMClient`` gives that request and handed to the call
waiting for it, which validates it as usual.

So the work goes out in rounds, one batch per round, and re-asks and critiques are **follow-up batches**, never
direct calls: round 1 holds the label calls; round 2 the critiques and the re-asks of labels that failed validation;
round 3 the session calls (a dialogue's session step follows its turns) and further re-asks. Validation, re-asks,
confidence and routing are the graph's own. A failed line is sent again in the next round (twice at most), then
fails its item like a refused request (``RequestRefused``).

Resumable: a batch and the cache key of each of its lines are in the store (``provider_batches``,
``batch_requests``) before it is first polled. Run the same command again after a crash: dialogue threads resume
from their checkpoints, finished results come from the cache, and a request that is in a batch still running at
the provider waits for that batch instead of being sent again.

How many dialogues share a round is ``concurrency`` (the CLI uses 1024 with ``--batch-api``): every dialogue in
flight queues its calls into the same batch. Costs are logged at the direct-call price (providers charge less).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Final

import openai
from openai.types.chat import ChatCompletion

from autolabel.errors import AutolabelError, ConfigError, LLMError, RequestRefused
from autolabel.llm.client import BackendKind, NamedBackend, cache_key, cached_reply
from autolabel.persistence import batches as stored_batches
from autolabel.persistence.store import Store
from autolabel.settings import Settings

log = logging.getLogger(__name__)

ENDPOINT: Final = "/v1/chat/completions"
MAX_LINES = 50_000  # the provider's limit of requests per batch
LINE_ATTEMPTS = 3  # a line that fails is sent in this many batches at most
ENDED = ("completed", "expired", "cancelled", "failed")


@dataclass
class _Request:
    key: str
    custom_id: str
    body: dict[str, Any]
    waiters: list[asyncio.Future[ChatCompletion]] = field(default_factory=list)
    attempts: int = 0


def batch_backend(settings: Settings, store: Store, run_id: str) -> NamedBackend:
    if settings.family != BackendKind.OPENAI.value:
        raise ConfigError(f"--batch-api needs an openai: model (a provider's batch endpoint), not {settings.model}")
    return BatchBackend(settings, store, run_id)


class BatchBackend:
    """A ``Backend`` whose requests go out as provider batches; see the module docstring."""

    supports_logprobs = True
    max_in_flight = 1_000_000  # requests only wait in a queue here: ``concurrency`` must not cap a round

    def __init__(self, settings: Settings, store: Store, run_id: str) -> None:
        key = settings.api_key()
        if not key and settings.base_url is None:
            raise ConfigError(f"no API key: set {settings.api_key_env} (or --api-key-env NAME) for {settings.model}")
        self.model = settings.model_name
        self.store, self.run_id = store, run_id
        self.wait, self.poll = settings.batch_wait, settings.batch_poll
        self._client = openai.AsyncOpenAI(api_key=key or "not-needed", base_url=settings.base_url,
                                          max_retries=settings.max_retries,
                                          timeout=settings.request_timeout)
        self._requests: dict[str, _Request] = {}  # by cache key: queued, or in a batch
        self._queued: list[str] = []
        self._batches: dict[str, dict[str, str]] = {}  # batch id -> custom_id -> cache key
        self._last_queued = 0.0
        self._collected: set[str] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self.submitted = 0
        self._resume()

    # -- the Backend protocol ---------------------------------------------------------------------------------
    async def complete(self, kwargs: dict[str, Any]) -> ChatCompletion:
        return await self.complete_named(kwargs, name="-/-/call", key=cache_key(self.model, kwargs))

    async def complete_named(self, kwargs: dict[str, Any], *, name: str, key: str) -> ChatCompletion:
        """Queue the request ``kwargs`` (``name``: what it is for, ``dialogue/turn/purpose``; ``key``: its cache key,
        given by ``LLMClient``) and wait for its result."""
        req = self._requests.get(key)
        if req is None and key in self._collected:  # collected after the caller looked in the cache
            cached = await asyncio.to_thread(self.store.cache_get, key)
            if cached is not None:
                return ChatCompletion.model_validate(cached)
        if req is None:
            req = self._requests[key] = _Request(key, "", {})
            self._queue(req)
        if not req.body:  # new, or resumed from the store (which keeps keys, not bodies)
            req.custom_id = req.custom_id or f"{self.run_id}/{name}/{key[:12]}"
            req.body = {"model": self.model, **kwargs}
        future: asyncio.Future[ChatCompletion] = asyncio.get_running_loop().create_future()
        req.waiters.append(future)
        self._start()
        return await future

    async def aclose(self) -> None:
        """Stop polling. Batches still running stay recorded: the next run of the same command collects them."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        await self._client.close()

    # -- the loop: submit a round when the queue is quiet, poll what was submitted --------------------------------
    def _queue(self, req: _Request) -> None:
        self._queued.append(req.key)
        self._last_queued = time.monotonic()

    def _start(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.create_task(self._loop(), name="autolabel-batches")
            self._loop_task.add_done_callback(self._stopped)

    def _stopped(self, task: asyncio.Task[None]) -> None:
        """When the loop dies, every waiting call gets its error: the run stops, and resumes when run again."""
        error = None if task.cancelled() else task.exception()
        if error is None:
            return
        if not isinstance(error, AutolabelError):
            error = LLMError(f"batch API: {type(error).__name__}: {error}")
        for req in self._requests.values():
            _fail(req, error)

    async def _loop(self) -> None:
        next_poll = 0.0
        while self._queued or self._batches:
            quiet = time.monotonic() - self._last_queued >= self.wait
            if self._queued and (quiet or len(self._queued) >= MAX_LINES):
                await self._submit()
            if self._batches and time.monotonic() >= next_poll:
                for batch_id in list(self._batches):
                    await self._check(batch_id)
                next_poll = time.monotonic() + self.poll
            await asyncio.sleep(max(0.01, min(self.wait, self.poll) / 4))

    async def _submit(self) -> None:
        keys, self._queued = self._queued[:MAX_LINES], self._queued[MAX_LINES:]
        lines = [self._requests[k] for k in keys]
        payload = "".join(json.dumps({"custom_id": r.custom_id, "method": "POST", "url": ENDPOINT, "body": r.body},
                                     ensure_ascii=False) + "\n" for r in lines).encode()
        try:
            upload = await self._client.files.create(file=(f"autolabel-{self.run_id}.jsonl", payload),
                                                     purpose="batch")
            batch = await self._client.batches.create(input_file_id=upload.id, endpoint=ENDPOINT,
                                                      completion_window="24h",
                                                      metadata={"autolabel_run": self.run_id})
        except openai.APIError as e:
            raise LLMError(f"the provider did not take the batch: {e}") from None
        for r in lines:
            r.attempts += 1
        mapping = {r.custom_id: r.key for r in lines}
        await asyncio.to_thread(stored_batches.record_batch, self.store, self.run_id, batch.id, upload.id, mapping)
        self._batches[batch.id] = mapping
        self.submitted += 1
        log.info("submitted batch %s with %d requests", batch.id, len(lines))

    async def _check(self, batch_id: str) -> None:
        try:
            batch = await self._client.batches.retrieve(batch_id)
        except openai.NotFoundError:
            log.warning("batch %s is unknown to the provider: its requests are sent again", batch_id)
            await self._ended(batch_id, "lost", None, None)
            return
        except openai.APIError as e:  # the provider is flaky: ask again at the next poll
            log.warning("cannot poll batch %s: %s", batch_id, e)
            return
        if batch.status == "failed":
            reasons = "; ".join(e.message or e.code or "" for e in (batch.errors.data or [])) if batch.errors else ""
            await asyncio.to_thread(stored_batches.set_status, self.store, batch_id, "failed", None, None)
            raise LLMError(f"the provider refused batch {batch_id}: {reasons or 'no reason given'}")
        if batch.status in ENDED:
            await self._ended(batch_id, batch.status, batch.output_file_id, batch.error_file_id)

    async def _ended(self, batch_id: str, status: str, output_file_id: str | None, error_file_id: str | None) -> None:
        """Collect a finished batch: results into the cache and to their callers; the rest into the next round."""
        mapping = self._batches.pop(batch_id)
        results: dict[str, dict[str, Any]] = {}
        errors: dict[str, str] = {}
        for file_id in (output_file_id, error_file_id):
            if file_id is None:
                continue
            content = await self._client.files.content(file_id)
            for line in content.text.splitlines():
                if not line.strip():
                    continue
                row = json.loads(line)
                response = row.get("response") or {}
                if response.get("status_code") == 200 and row.get("custom_id") in mapping:
                    results[mapping[row["custom_id"]]] = response["body"]
                elif row.get("custom_id") in mapping:
                    error = row.get("error") or (response.get("body") or {}).get("error") or {}
                    errors[mapping[row["custom_id"]]] = str(error.get("message") or error or "failed")
        await asyncio.to_thread(_save_results, self.store, self.model, results)
        self._collected.update(results)
        collected = "collected" if status == "completed" else status
        await asyncio.to_thread(stored_batches.set_status, self.store, batch_id, collected, output_file_id,
                                error_file_id)
        for key in mapping.values():
            req = self._requests.get(key)
            if req is None:
                continue
            if key in results:
                del self._requests[key]
                _resolve(req, ChatCompletion.model_validate(results[key]))
            elif not req.waiters:
                del self._requests[key]  # from an earlier process; asked again (and queued) if still needed
            elif req.attempts >= LINE_ATTEMPTS:
                del self._requests[key]
                _fail(req, RequestRefused(f"the batch API failed this request {req.attempts} times: "
                                          f"{errors.get(key, status)}"))
            else:
                self._queue(req)

    def _resume(self) -> None:
        """Batches an earlier process submitted and did not collect: their requests wait for them, not resent."""
        for batch_id, custom_id, key in stored_batches.submitted_requests(self.store, self.run_id):
            self._batches.setdefault(batch_id, {})[custom_id] = key
            self._requests.setdefault(key, _Request(key, custom_id, {}, attempts=1))
        if self._batches:
            log.info("resuming %d batch(es) submitted earlier", len(self._batches))


def _resolve(req: _Request, completion: ChatCompletion) -> None:
    for w in req.waiters:
        if not w.done():
            w.set_result(completion)


def _fail(req: _Request, error: Exception) -> None:
    for w in req.waiters:
        if not w.done():
            w.set_exception(error)


# -- the store's side ---------------------------------------------------------------------------------------------

def _save_results(store: Store, model: str, results: dict[str, dict[str, Any]]) -> None:
    """Every result into the LLM cache (trimmed as any cached reply), in one transaction (the graph's calls then
    find them there)."""
    store.cache_put_many(model, {k: cached_reply(ChatCompletion.model_validate(body)) for k, body in results.items()})

