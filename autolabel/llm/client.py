"""The LLM seam: one ``Backend`` protocol, backends registered by kind, and the client the graph calls.

Layers, from the wire up:

- a **backend** turns OpenAI chat-completions keyword arguments into an ``openai`` ``ChatCompletion``
  (``openai:`` → any OpenAI-compatible HTTP endpoint; ``local:`` → an embedded llama.cpp model);
- **tenacity** retries transport faults (429 honouring Retry-After, 5xx, timeouts, resets, garbled envelopes) with
  jittered exponential backoff under a total deadline;
- the **cache** (in the store) answers a call seen before — a re-run of a finished job makes no calls;
- **instructor** asks for structured output against the task's generated schema and re-asks with the validation
  errors when the answer does not validate (``max_reasks``). Its re-ask loop (``instructor.core.retry_async``, what
  ``instructor.patch``'s wrapper calls for every request) is called directly with the request prepared once per
  schema (``structured.request_parts``): the wrapper would prepare the model and the request again on every call.
- the **structured-output mode** (``Settings.structured_mode``; ``structured.py``): json_schema, json_object, tools
  or prompt. With ``auto`` a request starts in json_schema; an endpoint that refuses a mode (an HTTP 4xx, or a 500,
  whose body names the field it did not take, e.g. ``response_format``) is not retried: the client steps down to
  the next mode and keeps it for the rest of the run (``LLMClient.mode``).

Every call that reaches a backend is written to the store's call log (model, parameter hash, tokens, latency,
outcome). Dialogue text is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import re
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from functools import cache, cached_property
from typing import Any, Protocol, cast

import httpx
import openai
import pydantic
from instructor.core import retry_async
from instructor.core.exceptions import IncompleteOutputException, InstructorRetryException
from openai.types.chat import ChatCompletion
from tenacity import AsyncRetrying, retry_if_exception

from autolabel.errors import BudgetExceeded, ConfigError, LLMError, RequestRefused, RetryExhausted, StoreError
from autolabel.llm.budget import Budget
from autolabel.llm.limits import AdaptiveLimit
from autolabel.llm.retry import Backoff, Deadline, GarbledReply, StopAfterRetries, first_line, transient
from autolabel.llm.structured import (
    FALLBACK,
    INSTRUCTOR_MODES,
    RequestParts,
    SchemaAnswer,
    request_parts,
    response_model,
    schema_digest,
    with_instruction,
)
from autolabel.settings import Settings, StructuredMode

log = logging.getLogger(__name__)


class _PayloadsToDebug(logging.Filter):
    """instructor logs failed attempts at ERROR with the model's output, which can quote dialogue text.
    Those records are demoted to DEBUG so that nothing of the dialogue shows at the default level, and dropped
    unless DEBUG is on (the logger's level was checked before the demotion; handlers do not check it again)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


for _name in ("instructor", "instructor.v2", "instructor.v2.retry", "instructor.v2.core.retry",
              "instructor.v2.core.patch"):
    logging.getLogger(_name).addFilter(_PayloadsToDebug())


class BackendKind(str, Enum):
    OPENAI = "openai"
    LOCAL = "local"


class Backend(Protocol):
    """Anything that answers OpenAI chat-completions keyword arguments with a ``ChatCompletion``."""

    model: str
    supports_logprobs: bool

    async def complete(self, kwargs: dict[str, Any]) -> ChatCompletion: ...

    async def aclose(self) -> None: ...


class NamedBackend(Backend, Protocol):
    """A backend that wants to know what each request is for and its cache key (the batch API names its lines by
    them): ``LLMClient`` calls ``complete_named`` instead of ``complete``."""

    async def complete_named(self, kwargs: dict[str, Any], *, name: str, key: str) -> ChatCompletion: ...


class CallLog(Protocol):
    """Where calls are cached and recorded (the store implements it)."""

    def cache_get(self, key: str) -> dict[str, Any] | None: ...

    def cache_put(self, key: str, model: str, response: dict[str, Any]) -> None: ...

    def log_calls(self, rows: list[dict[str, Any]]) -> None: ...


POOL_REQUESTS = 8
"""Requests in flight per HTTP connection pool of ``OpenAIBackend``."""
LOG_BATCH_SECONDS = 0.5
"""How long call-log rows gather before they are written together (one thread hop and one commit, ~0.2 ms of CPU,
per batch: at 0.05 s a serial run wrote every row alone)."""


class OpenAIBackend:
    """Any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp server, Ollama) through the ``openai`` client."""

    supports_logprobs = True

    def __init__(self, settings: Settings) -> None:
        key = settings.api_key()
        if not key:
            if settings.base_url is None:
                raise ConfigError(f"no API key: set {settings.api_key_env} (or --api-key-env NAME) "
                                  f"for {settings.model}")
            key = "not-needed"  # local servers (vLLM, llama.cpp, Ollama) accept any key
        self.model = settings.model_name
        # httpcore scans every connection of its pool for each request (a readability syscall per idle one): at
        # 64 requests in flight that doubles the client's CPU per call. Pools of at most POOL_REQUESTS in flight
        # keep the scan short; each request goes to the least busy pool.
        pools = math.ceil(settings.concurrency / POOL_REQUESTS)
        per_pool = math.ceil(settings.concurrency / pools) * 2
        tls = _ssl_context()  # one for every pool and run: each costs ~1.4 MB and ~20 ms to load the CA bundle
        self._clients = [openai.AsyncOpenAI(
            api_key=key, base_url=settings.base_url, max_retries=0,
            # openai>=3 annotates httpx2's Timeout and AsyncClient only, but takes (and converts) httpx's too
            timeout=httpx.Timeout(settings.request_timeout, connect=min(10.0, settings.request_timeout)),  # type: ignore[arg-type, unused-ignore]
            http_client=httpx.AsyncClient(verify=tls, limits=httpx.Limits(max_connections=per_pool,  # type: ignore[arg-type, unused-ignore]
                                                                          max_keepalive_connections=per_pool)),
        ) for _ in range(pools)]
        self._in_flight = [0] * pools

    async def complete(self, kwargs: dict[str, Any]) -> ChatCompletion:
        """POST ``/chat/completions`` through the client's ``post`` (auth, headers, timeouts, the status errors of
        ``chat.completions.create``), with the body already JSON: the arguments are plain JSON, which ``create``
        would walk against its parameter types (about 0.35 ms per request with a schema in ``response_format``,
        a sixth of the raw client's CPU per call) only to hand back the same values."""
        body = json.dumps({"model": self.model, **kwargs}, ensure_ascii=False, separators=(",", ":")).encode()
        i = self._in_flight.index(min(self._in_flight))
        self._in_flight[i] += 1
        try:
            raw = await self._clients[i].post("/chat/completions", cast_to=bytes, content=body,
                                              options=_CHAT_OPTIONS)
        finally:
            self._in_flight[i] -= 1
        return parse_completion(raw)

    async def aclose(self) -> None:
        for client in self._clients:
            await client.close()


@cache
def _ssl_context() -> ssl.SSLContext:
    """httpx's default TLS context (certifi's CA bundle, verification on), made once per process."""
    return httpx.create_ssl_context()


_CHAT_OPTIONS: openai.RequestOptions = {"security": {"bearer_auth": True}}  # as chat.completions.create


def parse_completion(raw: bytes) -> ChatCompletion:
    """A chat completion from the endpoint's JSON: validated by pydantic-core in one pass (about a third of the
    CPU of the ``openai`` client's parse), or, when a server leaves out or misshapes a field, built leniently the
    way the ``openai`` client builds every reply. Not JSON: ``json.JSONDecodeError``; JSON but no completion (no
    ``choices`` list): ``GarbledReply`` (both retried as a garbled envelope)."""
    try:
        return ChatCompletion.model_validate_json(raw)
    except pydantic.ValidationError:
        try:
            data = json.loads(raw)
        except UnicodeDecodeError:
            raise GarbledReply("the reply is not UTF-8 text") from None
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise GarbledReply(f"the reply is not a chat completion (a JSON {type(data).__name__}"
                           f"{' without a choices list' if isinstance(data, dict) else ''})")
    return ChatCompletion.model_construct(**data)  # openai's models construct nested fields too


def _openai_backend(settings: Settings) -> Backend:
    return OpenAIBackend(settings)


def _local_backend(settings: Settings) -> Backend:
    from autolabel.llm.local import LocalBackend  # imported only when used: needs the [local] extra

    return LocalBackend(settings)


BACKENDS: dict[BackendKind, Callable[[Settings], Backend]] = {
    BackendKind.OPENAI: _openai_backend,
    BackendKind.LOCAL: _local_backend,
}


def make_backend(settings: Settings) -> Backend:
    try:
        kind = BackendKind(settings.family)
    except ValueError:
        families = ", ".join(k.value for k in BackendKind)
        raise ConfigError(f"unknown model family {settings.family!r} in {settings.model!r} (use {families})") from None
    return BACKENDS[kind](settings)


# -- results ------------------------------------------------------------------------------------------------

@dataclass
class CallTrace:
    """What one structured request cost: every attempt's raw output, tokens, cache hits."""

    purpose: str
    dialogue_id: str | None = None
    turn_index: int | None = None
    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    outputs: list[str] = field(default_factory=list)
    last: ChatCompletion | None = None

    @property
    def name(self) -> str:
        """What the request is for: ``dialogue/turn/purpose`` (``session`` for a dialogue's session call)."""
        return f"{self.dialogue_id}/{'session' if self.turn_index is None else self.turn_index}/{self.purpose}"


@dataclass
class Structured:
    """A validated answer with its raw text, the probability of each token, and its trace."""

    answer: dict[str, Any]
    raw: str
    completion: ChatCompletion | None = field(repr=False)
    trace: CallTrace

    @cached_property
    def tokens(self) -> list[tuple[str, float]] | None:
        """Each token of the answer with its logprob (None without logprobs): read when asked for, as only some
        calls' confidence uses them."""
        return _token_logprobs(self.completion)

    @property
    def attempts(self) -> int:
        return len(self.trace.outputs)


def cached_reply(completion: ChatCompletion) -> dict[str, Any]:
    """What the cache keeps of a completion: what a cache hit reads, as a ``ChatCompletion`` dict.

    The message, finish reason and usage (instructor), and each token's text and logprob (``option_probabilities``).
    Each token's ``top_logprobs`` and ``bytes`` are left out: with ``top_logprobs=5`` they were nine tenths of the
    completion (~11 KB of JSON per call), and nothing reads them back.
    """
    choices = []
    for choice in completion.choices:
        logprobs = None
        if choice.logprobs is not None:
            tokens = choice.logprobs.content
            logprobs = {"content": None if tokens is None else
                        [{"token": t.token, "logprob": t.logprob, "top_logprobs": []} for t in tokens]}
        choices.append({"index": choice.index, "finish_reason": choice.finish_reason, "logprobs": logprobs,
                        "message": choice.message.model_dump(mode="json", exclude_none=True)})
    return {"id": completion.id, "object": "chat.completion", "created": completion.created, "model": completion.model,
            "choices": choices,
            "usage": completion.usage.model_dump(mode="json", exclude_unset=True) if completion.usage else None}


def cache_key(model: str, kwargs: dict[str, Any], parts: RequestParts | None = None) -> str:
    """sha256 of the request as sorted JSON (``json.dumps(..., sort_keys=True, ensure_ascii=False, default=str)``).
    ``parts``: the structured-output fields the request carries, whose JSON is already made."""
    return hashlib.sha256(_request_json({"model": model, **kwargs}, parts).encode()).hexdigest()


def _sorted_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def _request_json(fields: dict[str, Any], parts: RequestParts | None) -> str:
    """Exactly ``_sorted_json(fields)``; a field that is the very object ``parts`` holds (the schema, the largest
    part of a request) takes the JSON ``parts`` made once per schema instead of being serialised again."""
    if parts is None:
        return _sorted_json(fields)
    out = []
    for k in sorted(fields):
        v = fields[k]
        text = parts.fields_json[k] if k in parts.fields_json and parts.fields[k] is v else _sorted_json(v)
        out.append(f"{_sorted_json(k)}: {text}")
    return "{" + ", ".join(out) + "}"


class _ModeRefused(Exception):
    """The endpoint refused the request's structured-output mode (caught by ``LLMClient.structured``)."""

    def __init__(self, mode: StructuredMode, status: int, detail: str) -> None:
        super().__init__(detail)
        self.mode, self.status, self.detail = mode, status, detail


def refuses_mode(exc: BaseException, parts: RequestParts | None) -> bool:
    """True when ``exc`` is the endpoint's refusal of the structured-output mode of ``parts``: an HTTP 4xx (not
    408/409/425/429) or 500 whose body names a field the mode added (llama-cpp-python's server answers 500 with
    ``response_format.type: Input should be 'text' or 'json_object'``). Not a transient fault: not retried."""
    if parts is None or not isinstance(exc, openai.APIStatusError):
        return False
    if not (400 <= exc.status_code < 500 and exc.status_code not in (408, 409, 425, 429) or exc.status_code == 500):
        return False
    text = f"{exc.message} {exc.body}"
    return any(name in text for name in parts.refused_by)


class LLMClient:
    """Structured calls for the graph: cache → retries → backend, validated and re-asked by instructor."""

    def __init__(self, settings: Settings, backend: Backend, calls: CallLog, *, run_id: str,
                 pricer: Callable[[int, int], float] | None = None) -> None:
        self.settings = settings
        self.backend = backend
        self.calls = calls
        self.run_id = run_id
        self.pricer = pricer or (lambda p, c: 0.0)
        self.budget = Budget.of(settings, self.pricer)  # --max-cost: admits each request (``budget.py``)
        # a backend that only queues requests (the batch API) may allow more in flight than ``concurrency``;
        # fewer are let through while the endpoint answers 429 (see ``limits.py``)
        self.limit = AdaptiveLimit(getattr(backend, "max_in_flight", None) or settings.concurrency)
        self.logprobs = settings.logprobs and backend.supports_logprobs
        self.totals = CallTrace(purpose="total")
        self.cost_usd = 0.0
        self._log_rows: list[dict[str, Any]] = []
        self._log_writer: asyncio.Task[None] | None = None
        self._log_error: StoreError | None = None
        self._log_now = asyncio.Event()  # set by flush(): write what has gathered without waiting
        self.mode = settings.structured_mode
        """The structured-output mode requests use now: ``auto`` starts as json_schema and steps down when the
        endpoint refuses a mode (``_step_down``); kept for the run, as the client serves one endpoint."""
        if self.mode is StructuredMode.AUTO:
            self.mode = StructuredMode.JSON_SCHEMA
        named = cast(NamedBackend, backend)
        self._named = named.complete_named if hasattr(backend, "complete_named") else None

    async def structured(self, messages: list[dict[str, str]], schema: dict[str, Any], *, name: str,
                         trace: CallTrace, temperature: float | None = None, seed: int | None = None,
                         max_tokens: int | None = None) -> Structured:
        """Ask for a JSON answer valid for ``schema``; raises RetryExhausted or LLMError. ``max_tokens`` overrides
        the setting (an answer for several turns gets the setting's allowance per turn)."""
        model_cls = response_model(f"{name}_{schema_digest(schema)}", schema)
        while True:
            parts = request_parts(model_cls, self.mode)
            # the request as instructor.patch would prepare it in this mode; a list of our own, which re-asks extend
            kwargs: dict[str, Any] = {
                "messages": list(messages) if parts.instruction is None else with_instruction(messages,
                                                                                              parts.instruction),
                "temperature": self.settings.temperature if temperature is None else temperature,
                "max_tokens": max_tokens or self.settings.max_tokens,
            }
            if seed is not None:
                kwargs["seed"] = seed
            kwargs.update(parts.fields)
            kwargs["_trace"], kwargs["_parts"] = trace, parts
            try:
                parsed = cast(SchemaAnswer, await retry_async(
                    func=self._complete, response_model=model_cls, args=(), kwargs=kwargs,
                    max_retries=self.settings.max_reasks, strict=True, mode=INSTRUCTOR_MODES[parts.mode]))
                break
            except IncompleteOutputException:  # the answer hit max_tokens: an invalid output, not a crash
                raise RetryExhausted(attempts=len(trace.outputs),
                                     last_output=trace.outputs[-1] if trace.outputs else None,
                                     usage={"prompt_tokens": trace.prompt_tokens,
                                            "completion_tokens": trace.completion_tokens},
                                     detail=f"output cut at max_tokens={kwargs['max_tokens']}") from None
            except InstructorRetryException as e:
                if isinstance(e.__cause__, _ModeRefused):
                    self._step_down(e.__cause__)  # or RequestRefused; then the same request in the next mode
                    continue
                if isinstance(e.__cause__, LLMError | BudgetExceeded | StoreError):  # not the output's fault
                    raise e.__cause__ from None
                raise RetryExhausted(attempts=len(trace.outputs),
                                     last_output=trace.outputs[-1] if trace.outputs else None,
                                     usage={"prompt_tokens": trace.prompt_tokens,
                                            "completion_tokens": trace.completion_tokens},
                                     detail=_validation_detail(e)) from None
        completion = trace.last
        raw = trace.outputs[-1] if trace.outputs else ""
        return Structured(parsed.answer(), raw, completion, trace)

    def _step_down(self, refused: _ModeRefused) -> None:
        """After the endpoint refused ``refused.mode``: with ``auto``, use the next mode of ``FALLBACK`` for the
        rest of the run (once for concurrent refusals of the same mode); otherwise, or with no mode left, the
        request is refused (RequestRefused)."""
        detail = f"HTTP {refused.status}: {refused.detail[:200]}"
        if self.settings.structured_mode is not StructuredMode.AUTO:
            raise RequestRefused(f"the endpoint refused --structured-mode {refused.mode.value} ({detail}); try "
                                 "another (auto finds one)")
        if refused.mode is not self.mode:
            return  # another call has stepped down already
        later = FALLBACK[FALLBACK.index(refused.mode) + 1:]
        if not later:
            raise RequestRefused(f"the endpoint refused every structured-output mode ({detail})")
        log.warning("the endpoint does not take structured output as %s (%s): using %s for this run "
                    "(--structured-mode %s skips this probe)", refused.mode.value, detail, later[0].value,
                    later[0].value)
        self.mode = later[0]

    async def _complete(self, _trace: CallTrace, _parts: RequestParts, **kwargs: Any) -> ChatCompletion:
        if self.logprobs:
            kwargs.setdefault("logprobs", True)
            kwargs.setdefault("top_logprobs", 5)
        key = cache_key(self.backend.model, kwargs, _parts)
        cached = await asyncio.to_thread(self.calls.cache_get, key) if self.settings.cache else None
        if cached is not None:
            completion = ChatCompletion.model_validate(cached)
            _trace.cache_hits += 1
            self.totals.cache_hits += 1
            self._record(_trace, completion, counted=False)
            return completion
        completion = await self._call_with_retries(kwargs, key, _trace, _parts)
        if self.settings.cache:
            await asyncio.to_thread(self.calls.cache_put, key, self.backend.model, cached_reply(completion))
        self._record(_trace, completion, counted=True)
        return completion

    def _record(self, trace: CallTrace, completion: ChatCompletion, *, counted: bool) -> None:
        trace.outputs.append(_answer_text(completion))
        trace.last = completion
        if counted and completion.usage is not None:
            p, c = completion.usage.prompt_tokens, completion.usage.completion_tokens
            for t in (trace, self.totals):
                t.prompt_tokens += p
                t.completion_tokens += c
            self.cost_usd += self.pricer(p, c)

    async def _call_with_retries(self, kwargs: dict[str, Any], key: str, trace: CallTrace,
                                 parts: RequestParts | None) -> ChatCompletion:
        s = self.settings
        started = time.monotonic()
        try:
            try:  # the first attempt without tenacity: most calls succeed at once, and need no retry state
                return await self._one_call(kwargs, key, trace, 1, parts)
            except Exception as e:
                failed: Exception | None = e
            retrying = AsyncRetrying(
                retry=retry_if_exception(lambda e: transient(e) and not refuses_mode(e, parts)),
                stop=StopAfterRetries(s.max_retries) | Deadline(started, s.retry_deadline),
                wait=Backoff(rng_seed=int(key[:8], 16)),
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    if failed is not None:  # attempt 1's outcome: tenacity decides whether and when to retry it
                        first, failed = failed, None
                        raise first
                    return await self._one_call(kwargs, key, trace, attempt.retry_state.attempt_number, parts)
        except openai.APIStatusError as e:
            if isinstance(e, openai.BadRequestError) and "logprobs" in kwargs and "logprob" in str(e).lower():
                log.warning("the endpoint does not return logprobs; confidence will use the other signals")
                self.logprobs = False
                kwargs = {k: v for k, v in kwargs.items() if k not in ("logprobs", "top_logprobs")}
                return await self._call_with_retries(kwargs, cache_key(self.backend.model, kwargs, parts), trace,
                                                     parts)
            if parts is not None and refuses_mode(e, parts):
                message = e.body.get("message") if isinstance(e.body, dict) else None
                raise _ModeRefused(parts.mode, e.status_code, " ".join(str(message or e.message).split())) from None
            raise _status_error(e, self.backend.model) from None
        except openai.APIConnectionError as e:
            raise LLMError(f"cannot reach the endpoint after retries: {first_line(str(e))}") from None
        except (openai.APIResponseValidationError, json.JSONDecodeError, GarbledReply, httpx.TransportError) as e:
            raise LLMError(f"the endpoint kept sending unreadable replies: {type(e).__name__}") from None
        raise LLMError("unreachable")  # pragma: no cover - AsyncRetrying either returns or raises

    async def _one_call(self, kwargs: dict[str, Any], key: str, trace: CallTrace, attempt: int,
                        parts: RequestParts | None) -> ChatCompletion:
        if self._log_error is not None:  # the call log could not be written: stop, as on any store failure
            raise self._log_error
        started_round = await self.limit.acquire()
        try:  # refused (BudgetExceeded): raised once the calls in flight have ended; no request is sent
            reserved = await self.budget.admit(kwargs)
        except BaseException:
            self.limit.release(started_round)
            raise
        started = time.perf_counter()
        outcome = "ok"
        completion: ChatCompletion | None = None
        try:
            if self._named is not None:  # the batch API names its lines by what each request is for
                completion = await self._named(kwargs, name=trace.name, key=key)
            else:
                completion = await self.backend.complete(kwargs)
            return completion
        finally:
            failed = sys.exc_info()[0] if completion is None else None
            self.limit.release(started_round, rate_limited=failed is openai.RateLimitError)
            if completion is None:  # a call abandoned when the run was stopped (CancelledError) is not an error
                outcome = ("cancelled" if failed is None or issubclass(failed, asyncio.CancelledError)
                           else f"error:{failed.__name__}")
            usage = completion.usage if completion is not None else None
            p = usage.prompt_tokens if usage else 0
            c = usage.completion_tokens if usage else 0
            cost = self.pricer(p, c)
            self.budget.settle(reserved, cost)
            trace.calls += 1
            self.totals.calls += 1
            self._log(dict(
                run_id=self.run_id, dialogue_id=trace.dialogue_id, turn_index=trace.turn_index,
                purpose=trace.purpose, model=self.backend.model, params_hash=_params_hash(kwargs, parts),
                cache_key=key, attempt=attempt, prompt_tokens=p, completion_tokens=c,
                latency_ms=round((time.perf_counter() - started) * 1000, 2), outcome=outcome,
                cost_usd=cost,
            ))

    def _log(self, row: dict[str, Any]) -> None:
        """Queue a call-log row. One writer task writes whatever has queued up, in one transaction in a thread:
        a call neither waits for the store nor holds its concurrency slot while the row is written."""
        self._log_rows.append(row)
        if self._log_writer is None or self._log_writer.done():
            self._log_writer = asyncio.get_running_loop().create_task(self._write_log())

    async def _write_log(self) -> None:
        while self._log_rows and self._log_error is None:
            if not self._log_now.is_set():  # let rows gather: one thread hop and one commit for all of them
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._log_now.wait(), LOG_BATCH_SECONDS)
            rows, self._log_rows = self._log_rows, []
            try:
                await asyncio.to_thread(self.calls.log_calls, rows)
            except StoreError as e:  # raised by the next call and by flush()
                self._log_error = e

    async def flush(self) -> None:
        """Wait until every call so far is in the call log; raises StoreError when it could not be written."""
        if self._log_writer is not None:
            self._log_now.set()
            try:
                await asyncio.shield(self._log_writer)
            finally:
                self._log_now.clear()
        if self._log_error is not None:
            raise self._log_error


def _params_hash(kwargs: dict[str, Any], parts: RequestParts | None = None) -> str:
    """What the call asked for besides the messages (sampling parameters, response format), for the call log."""
    fields = {k: v for k, v in kwargs.items() if k != "messages"}
    return hashlib.sha256(_request_json(fields, parts).encode()).hexdigest()[:16]


def _status_error(e: openai.APIStatusError, model: str) -> LLMError:
    """The one-line error for an HTTP error status that retries did not cure (or that is not retried)."""
    if isinstance(e, openai.BadRequestError):
        return RequestRefused(f"the endpoint refused the request: {first_line(str(e))}")
    if isinstance(e, openai.AuthenticationError):
        return LLMError(f"the endpoint refused the API key ({e.status_code})")
    if isinstance(e, openai.NotFoundError):
        return LLMError(f"model {model!r} or endpoint not found ({e.status_code})")
    return LLMError(f"the endpoint kept failing (HTTP {e.status_code}) after retries")


def _answer_text(completion: ChatCompletion) -> str:
    """The answer's text: the message content, or the arguments of its first tool call (tools mode)."""
    if not completion.choices:
        return ""
    message = completion.choices[0].message
    if message.content:
        return message.content
    calls = message.tool_calls or []
    function = getattr(calls[0], "function", None) if calls else None
    return str(getattr(function, "arguments", None) or "")


def _validation_detail(e: InstructorRetryException) -> str:
    """The last attempt's validation messages (our jsonschema paths), without pydantic's boilerplate."""
    attempts = getattr(e, "failed_attempts", None) or []
    exc = attempts[-1].exception if attempts else e
    errors = getattr(exc, "errors", None)
    if callable(errors):
        msgs = [str(err.get("msg", "")).removeprefix("Value error, ") for err in errors()]
        return "; ".join(m for m in msgs if m)[:500] or type(exc).__name__
    return first_line(str(exc)) or type(exc).__name__


def _token_logprobs(completion: ChatCompletion | None) -> list[tuple[str, float]] | None:
    if completion is None or not completion.choices:
        return None
    lp = completion.choices[0].logprobs
    if lp is None or not lp.content:
        return None
    return [(t.token, t.logprob) for t in lp.content]


def option_probabilities(raw: str, tokens: list[tuple[str, float]] | None, field_name: str,
                         multi: bool, scope: str | None = None) -> dict[str, float] | None:
    """Probability of each chosen option code of ``field_name``, read from the tokens that spell it.

    The answer's text is rebuilt from the tokens; the code's characters are located after the field's key (inside
    the object under key ``scope`` when given: one turn's answer in a multi-turn answer); the probability is
    exp(sum of the logprobs of every token overlapping the code). None when tokens are missing or do not spell the
    raw text.
    """
    if not tokens or "".join(t for t, _ in tokens) != raw:
        return None
    after = 0
    if scope is not None:
        outer = re.search(r'"' + re.escape(scope) + r'"\s*:\s*\{', raw)
        if outer is None:
            return None
        after = outer.end()
    key = re.compile(r'"' + re.escape(field_name) + r'"\s*:\s*').search(raw, after)
    if key is None:
        return None
    start = key.end()
    end = raw.index("]", start) + 1 if multi and "]" in raw[start:] else start + 64
    spans = [(m.group(1), m.start(1), m.end(1)) for m in re.finditer(r'"([A-Z][A-Z0-9]{0,3})"', raw[start:end])]
    if not spans:
        return None
    if not multi:
        spans = spans[:1]
    offsets: list[tuple[int, int, float]] = []
    pos = 0
    for tok, lp in tokens:
        offsets.append((pos, pos + len(tok), lp))
        pos += len(tok)
    out: dict[str, float] = {}
    for code, s, e in spans:
        s, e = s + start, e + start
        total = sum(lp for a, b, lp in offsets if a < e and b > s)
        out[code] = math.exp(total)
    return out

