"""A fake OpenAI-compatible HTTP server on loopback, for tests and benchmarks.

A real starlette app served by uvicorn in a background thread (with its own event loop), speaking the
chat-completions protocol plus the Files and Batches subset::

    with FakeOpenAIServer(replies=lambda body: {"label": "Change"}) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="test")
        ...
        assert server.requests[0]["model"] == "gpt-test"

How one chat request is answered, in order:

1. Recorded in ``server.requests``; rejected with 429 when ``rate_limit_per_min`` (a token bucket holding
   a minute's worth of requests) or ``max_concurrency`` (requests in flight) is exceeded.
2. ``latency`` seconds of ``asyncio.sleep`` (a float, or a function of the server's seeded RNG).
3. ``replies(body)`` if given: a ``str`` is the content as-is, a ``dict`` is JSON-dumped, a ``Fault`` is
   injected, ``None`` falls through to the default.
4. Only when there is no scripted reply: a random fault from ``fault_kinds`` with probability ``fault_rate``.
5. Default content: a JSON object synthesized for the requested JSON Schema, or a short sentence; deterministic
   from ``seed`` and a hash of the messages. The schema is the one in ``response_format`` (``json_schema``, or
   ``json_object`` with a ``schema``), or of the forced function in ``tools`` (answered as a tool call), or else a
   JSON Schema that ends the system message (answered in a ```json fence, as a model told to would).

``structured`` names the structured output the server takes (default: all of ``STRUCTURED_KINDS``). A request
asking for another is refused before anything else, as servers do: ``response_format`` of a type not taken with
``refusal_status`` (default 500, llama-cpp-python's server's status and message), ``tools`` with 400.

``replies`` runs on the server's event-loop thread. Token counts use tiktoken's ``o200k_base``, built offline
by ``autolabel.llm.tokens`` (no download).

``POST /v1/embeddings`` answers with ``embed_text`` vectors: a hashed bag of words and character trigrams (CJK:
character bigrams), so texts sharing words are near; deterministic, not normalised (some servers do not normalise
either), base64 or float lists as ``encoding_format`` asks. Bodies are recorded in ``embedding_requests``; the first
``embedding_faults`` requests are answered with those faults, in order (content faults: an unreadable reply).
Run ``python -m tests.fake_openai --help`` for a standalone server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import hashlib
import itertools
import json
import logging
import math
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import numpy as np
import tiktoken
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from autolabel.llm import tokens

FAULT_429_RETRY_AFTER = "429_retry_after"
FAULT_429 = "429"
FAULT_500 = "500"
FAULT_502 = "502"
FAULT_503 = "503"
FAULT_TIMEOUT = "timeout"
FAULT_RESET = "reset"
FAULT_MALFORMED_JSON = "malformed_json"
FAULT_TRUNCATED_JSON = "truncated_json"
FAULT_BAD_LABELS = "bad_labels"
FAULT_WRONG_TYPES = "wrong_types"
FAULT_EMPTY = "empty"

HTTP_FAULTS = (FAULT_429_RETRY_AFTER, FAULT_429, FAULT_500, FAULT_502, FAULT_503, FAULT_TIMEOUT, FAULT_RESET)
CONTENT_FAULTS = (
    FAULT_MALFORMED_JSON, FAULT_TRUNCATED_JSON, FAULT_BAD_LABELS, FAULT_WRONG_TYPES, FAULT_EMPTY,
)
ALL_FAULTS = HTTP_FAULTS + CONTENT_FAULTS

STRUCTURED_KINDS = ("json_schema", "json_object", "tools")

BAD_LABEL = "NotAnOption"
DEFAULT_RETRY_AFTER = 0.05

_ERROR_STATUS = {FAULT_429: 429, FAULT_500: 500, FAULT_502: 502, FAULT_503: 503}
_ERROR_MESSAGES = {
    400: ("invalid_request_error", "Invalid request"),
    404: ("invalid_request_error", "Not found"),
    429: ("requests", "Rate limit reached for requests"),
    500: ("server_error", "The server had an error while processing your request."),
    502: ("server_error", "Bad gateway."),
    503: ("server_error", "The engine is currently overloaded, please try again later."),
}


@dataclass
class Fault:
    """A failure to inject: ``kind`` is one of ``ALL_FAULTS``; ``retry_after`` is for ``429_retry_after``."""

    kind: str
    retry_after: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ALL_FAULTS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {ALL_FAULTS}")


# --- tokens -----------------------------------------------------------------------------------------


@functools.cache
def _encoding() -> tiktoken.Encoding:
    return tokens.encoding("o200k_base")


def _tokens(text: str) -> list[int]:
    return _encoding().encode(text, disallowed_special=())


def _text(content: Any) -> str:
    """Message content as text: a string, or the text parts of a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def count_prompt_tokens(messages: Sequence[dict[str, Any]]) -> int:
    """Prompt tokens as OpenAI's cookbook counts them for o200k models.

    Per message 3 + tokens(role) + tokens(content), plus tokens(name) + 1 when it has a name; plus 3 for
    the primed assistant reply.
    """
    total = 3
    for message in messages:
        total += 3 + len(_tokens(message.get("role", ""))) + len(_tokens(_text(message.get("content"))))
        if message.get("name"):
            total += len(_tokens(message["name"])) + 1
    return total


def _logprobs(content: str, logprob: float | Callable[[str], float], top_n: int) -> dict[str, Any]:
    """One entry per token; each token string holds the characters completed by its bytes, so the
    strings concatenate exactly to ``content`` even where a character spans two tokens."""
    entries = []
    pending = b""
    for token in _tokens(content):
        raw = _encoding().decode_single_token_bytes(token)
        pending += raw
        text = ""
        for cut in range(len(pending), 0, -1):
            try:
                text = pending[:cut].decode("utf-8")
            except UnicodeDecodeError:
                continue
            pending = pending[cut:]
            break
        value = logprob(text) if callable(logprob) else logprob
        value = min(float(value), 0.0)
        rest = max(1.0 - math.exp(value), 1e-12)
        alternatives = (alt for alt in _ALTERNATIVE_TOKENS if alt != text)
        top = [{"token": text, "logprob": value, "bytes": list(raw)}]
        for i in range(1, top_n):
            alt = next(alternatives)
            alt_logprob = min(math.log(rest * 0.5**i), value - 0.5 * i)
            top.append({"token": alt, "logprob": alt_logprob, "bytes": list(alt.encode())})
        entries.append({"token": text, "logprob": value, "bytes": list(raw), "top_logprobs": top[:top_n]})
    return {"content": entries, "refusal": None}


_ALTERNATIVE_TOKENS = (" the", " a", " and", ",", ".", " to", " of", " is", " in", " that", " it", " not",
                       " for", " with", " as", " on", " be", " at", " by", " this", " an", " or")


# --- embeddings ------------------------------------------------------------------------------------

EMBEDDING_DIM = 256
_WORDS = re.compile(r"[\u3400-\u9fff]+|[^\W\d_]+|\d+")
_STOP = frozenset("a an and are at be but do for i i'm in is it me my of on or so that the to was with you".split())


def _features(text: str) -> list[str]:
    out = []
    for word in _WORDS.findall(text.lower()):
        if word in _STOP:
            continue
        if "\u3400" <= word[0] <= "\u9fff":
            out += [word[i:i + 2] for i in range(max(1, len(word) - 1))]
            continue
        padded = f"<{word}>"
        out += [word, *(padded[i:i + 3] for i in range(len(padded) - 2))]
    return out


def embed_text(text: str, dim: int = EMBEDDING_DIM) -> list[float]:
    """The fake endpoint's vector for ``text`` (see the module docstring): signed feature hashing, raw counts."""
    vec = [0.0] * dim
    for feature in _features(text):
        h = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "big")
        vec[h % dim] += 1.0 if (h >> 63) else -1.0
    return vec


# --- JSON Schema synthesis -------------------------------------------------------------------------

_SUBJECTS = ("The speaker", "The client", "The counselor")
_VERBS = ("expresses", "describes", "acknowledges", "reflects on", "questions")
_OBJECTS = ("ambivalence about change", "a wish to cut down", "frustration with past attempts",
            "confidence in the plan", "concern about their family", "uncertainty about next steps")


def _sentence(rng: random.Random) -> str:
    return f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}."


class _Synthesizer:
    """Builds a value valid for a Draft 2020-12 schema subset; ``bad_labels`` turns enum strings into
    ``BAD_LABEL``."""

    def __init__(self, root: dict[str, Any], rng: random.Random, *, bad_labels: bool = False) -> None:
        self.root, self.rng, self.bad_labels = root, rng, bad_labels

    def resolve(self, schema: Any) -> dict[str, Any]:
        for _ in range(64):
            if not isinstance(schema, dict):
                return {}
            if "$ref" in schema:
                target: Any = self.root
                for part in schema["$ref"].removeprefix("#").strip("/").split("/"):
                    if part:
                        target = target[part.replace("~1", "/").replace("~0", "~")]
                schema = {**{k: v for k, v in schema.items() if k != "$ref"}, **target}
            elif "anyOf" in schema or "oneOf" in schema:
                first = (schema.get("anyOf") or schema.get("oneOf"))[0]
                rest = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
                schema = {**rest, **self.resolve(first)}
            elif "allOf" in schema:
                merged = {k: v for k, v in schema.items() if k != "allOf"}
                for part in schema["allOf"]:
                    part = self.resolve(part)
                    merged["properties"] = {**merged.get("properties", {}), **part.get("properties", {})}
                    merged["required"] = [*merged.get("required", []), *part.get("required", [])]
                    merged.update({k: v for k, v in part.items() if k not in ("properties", "required")})
                schema = merged
            else:
                return schema
        raise ValueError("schema $ref nesting too deep")

    def value(self, schema: Any) -> Any:
        schema = self.resolve(schema)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            choice = self.rng.choice(schema["enum"])
            return BAD_LABEL if self.bad_labels and isinstance(choice, str) else choice
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
        if kind not in ("object", "array", "string", "integer", "number", "boolean", "null"):
            raise ValueError(f"cannot synthesize JSON Schema type {kind!r}")
        return getattr(self, f"_{kind}")(schema)

    def _object(self, schema: dict[str, Any]) -> dict[str, Any]:
        return {name: self.value(sub) for name, sub in schema.get("properties", {}).items()}

    def _array(self, schema: dict[str, Any]) -> list[Any]:
        low = schema.get("minItems", 1)
        high = max(low, min(schema.get("maxItems", low + 2), low + 2))
        count = self.rng.randint(low, high)
        items = self.resolve(schema.get("items", {}))
        if not schema.get("uniqueItems"):
            return [self.value(items) for _ in range(count)]
        if "enum" in items:
            pool = list(items["enum"])
            picked = self.rng.sample(pool, min(max(count, low), len(pool)))
            return [BAD_LABEL if self.bad_labels and isinstance(v, str) else v for v in picked]
        values: dict[str, Any] = {}
        for _ in range(count * 20):
            if len(values) >= count:
                break
            value = self.value(items)
            values.setdefault(json.dumps(value, sort_keys=True), value)
        return list(values.values())

    def _string(self, schema: dict[str, Any]) -> str:
        text = _sentence(self.rng)
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        while len(text) < low:
            text += " " + _sentence(self.rng)
        if high is not None and len(text) > high:
            text = text[:high].rstrip() if high else ""
            text = text.ljust(low, ".")
        return text

    def _bounds(self, schema: dict[str, Any], integer: bool) -> tuple[float, float]:
        step = 1 if integer else 0.001
        low = schema.get("minimum", -math.inf)
        high = schema.get("maximum", math.inf)
        if "exclusiveMinimum" in schema:
            low = max(low, schema["exclusiveMinimum"] + step)
        if "exclusiveMaximum" in schema:
            high = min(high, schema["exclusiveMaximum"] - step)
        if math.isinf(low):
            low = 0 if math.isinf(high) else min(0, high - 10)
        if math.isinf(high):
            high = low + 10
        return low, high

    def _integer(self, schema: dict[str, Any]) -> int:
        low, high = self._bounds(schema, integer=True)
        return self.rng.randint(math.ceil(low), math.floor(high))

    def _number(self, schema: dict[str, Any]) -> float:
        low, high = self._bounds(schema, integer=False)
        return min(max(round(self.rng.uniform(low, high), 3), low), high)

    def _boolean(self, schema: dict[str, Any]) -> bool:
        return self.rng.random() < 0.5

    def _null(self, schema: dict[str, Any]) -> None:
        return None


def synthesize(schema: dict[str, Any], rng: random.Random, *, bad_labels: bool = False) -> Any:
    """A value valid for ``schema`` (unless ``bad_labels``), drawn from ``rng``."""
    return _Synthesizer(schema, rng, bad_labels=bad_labels).value(schema)


def _wrong_types(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _wrong_types(item) for key, item in value.items()}
    if isinstance(value, list):
        return ", ".join(json.dumps(item) for item in value)
    if isinstance(value, str):
        return len(value)
    return value


def prompt_of(body: dict[str, Any]) -> str:
    """Every message of a chat request, joined: scripted replies tell the calls apart by it (the critic's call
    carries the label call's system message; its own instructions follow the proposal in the user message)."""
    return "\n".join(_text(m.get("content")) for m in body.get("messages", []))


def is_critique(body: dict[str, Any]) -> bool:
    """Whether a chat request is the critic's call (its instructions, English or Chinese, follow the proposal)."""
    prompt = prompt_of(body)
    return "review another annotator" in prompt or "复核" in prompt


def requested_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON Schema a chat request asks for: in ``response_format``, in the function ``tool_choice`` forces,
    or at the end of the system message (a prompt-only request); None if none."""
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return (fmt.get("json_schema") or {}).get("schema")
    if fmt.get("type") == "json_object":
        return fmt.get("schema")
    tool = forced_tool(body)
    if tool is not None:
        return tool.get("parameters")
    if not fmt and not body.get("tools"):
        return _schema_in_prompt(body.get("messages") or [])
    return None


def forced_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The function definition that ``tool_choice`` forces the answer to call, if any."""
    choice = body.get("tool_choice")
    name = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
    for tool in body.get("tools") or []:
        function = tool.get("function") or {} if isinstance(tool, dict) else {}
        if name is not None and function.get("name") == name:
            return function
    return None


def _schema_in_prompt(messages: list[Any]) -> dict[str, Any] | None:
    """A JSON Schema (an object with ``properties``) that ends the system message."""
    first = messages[0] if messages and isinstance(messages[0], dict) else {}
    text = _text(first.get("content")).rstrip() if first.get("role") == "system" else ""
    decoder = json.JSONDecoder()
    for start in (i for i, char in enumerate(text) if char == "{"):
        try:
            value, end = decoder.raw_decode(text, start)
        except ValueError:
            continue
        if end == len(text) and isinstance(value, dict) and "properties" in value:
            return value
    return None


def _refusal(body: dict[str, Any], taken: Sequence[str], status: int) -> JSONResponse | None:
    """The error a server that takes only ``taken`` structured output sends for ``body``, or None."""
    kind = (body.get("response_format") or {}).get("type")
    if kind not in (None, "text") and kind not in taken:
        allowed = " or ".join(repr(k) for k in ("text", *(k for k in taken if k != "tools")))
        detail = {"type": "literal_error", "loc": ("body", "response_format", "type"),
                  "msg": f"Input should be {allowed}", "input": kind}
        return _error(status, f"1 validation error:\n  {detail}\n")
    if body.get("tools") and "tools" not in taken:
        return _error(400, "tools are not supported by this server", param="tools")
    return None


# --- responses ---------------------------------------------------------------------------------------


def _error(status: int, message: str | None = None, *, param: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    kind, default = _ERROR_MESSAGES.get(status, ("server_error", "Error"))
    code = "rate_limit_exceeded" if status == 429 else None
    error = {"message": message or default, "type": kind, "param": param, "code": code}
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def _retry_headers(seconds: float) -> dict[str, str]:
    return {"retry-after": f"{seconds:g}", "retry-after-ms": f"{seconds * 1000:.0f}"}


class _ConnectionReset(Exception):
    """Raised after a partial body so that uvicorn closes the connection mid-response."""


class _ResetResponse:
    """A raw ASGI response: headers and half a body, then the connection is dropped."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = b'{"id": "chatcmpl-reset", "object": "chat.completion", "choices": [{"index": 0, '
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")]})
        await send({"type": "http.response.body", "body": body, "more_body": True})
        raise _ConnectionReset


class _QuietResets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        for _ in range(8):
            if error is None or isinstance(error, _ConnectionReset):
                break
            error = error.__cause__ or error.__context__
        return not isinstance(error, _ConnectionReset)


_QUIET_RESETS = _QuietResets()
_ids = itertools.count(1)


def _new_id(prefix: str) -> str:
    return f"{prefix}-{next(_ids):06d}{random.getrandbits(32):08x}"


class FakeOpenAIServer:
    """An OpenAI-compatible server on ``127.0.0.1``; see the module docstring for the reply rules.

    ``requests`` holds every chat request body received over HTTP, in order (batch lines are not in it;
    ``files`` holds uploads). ``stats`` counts ``requests``, ``ok``, ``rate_limited``, ``faults`` and
    ``fault_<kind>`` per kind.
    Batches advance one status per retrieve (validating, in_progress, completed), or with ``batch_delay``
    complete once that many seconds have passed.
    """

    def __init__(self, *, replies: Callable[[dict], str | dict | Fault | None] | None = None,
                 seed: int = 0, latency: Callable[[random.Random], float] | float = 0.0,
                 max_concurrency: int | None = None, rate_limit_per_min: float | None = None,
                 fault_rate: float = 0.0, fault_kinds: Sequence[str] = ALL_FAULTS,
                 logprob: float | Callable[[str], float] = -0.01, timeout_sleep: float = 30.0,
                 supports_logprobs: bool = True, batch_delay: float | None = None, port: int = 0,
                 embedding_faults: Sequence[str] = (), structured: Sequence[str] = STRUCTURED_KINDS,
                 refusal_status: int = 500) -> None:
        for kind in (*fault_kinds, *embedding_faults):
            Fault(kind)
        self.embedding_faults = list(embedding_faults)
        unknown = set(structured) - set(STRUCTURED_KINDS)
        if unknown:
            raise ValueError(f"unknown structured output kinds {sorted(unknown)}; expected some of {STRUCTURED_KINDS}")
        self.structured, self.refusal_status = tuple(structured), refusal_status
        self.embedding_requests: list[dict] = []
        self.replies, self.seed, self.latency = replies, seed, latency
        self.max_concurrency, self.rate_limit_per_min = max_concurrency, rate_limit_per_min
        self.fault_rate, self.fault_kinds = fault_rate, tuple(fault_kinds)
        self.logprob, self.timeout_sleep, self.supports_logprobs = logprob, timeout_sleep, supports_logprobs
        self.batch_delay, self.port = batch_delay, port
        self.base_url = ""
        self.requests: list[dict] = []
        self.stats: dict[str, int] = Counter()
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._in_flight = 0
        self._bucket = max(rate_limit_per_min or 0.0, 1.0)
        self._bucket_at = time.monotonic()
        self._closing = False
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---

    def start(self) -> FakeOpenAIServer:
        if self._thread is not None:
            raise RuntimeError("server already started")
        # IPPROTO_TCP (not 0) so that asyncio sets TCP_NODELAY on accepted sockets: without it every
        # keep-alive response waits ~40 ms for a delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        config = uvicorn.Config(self.app(), log_config=None, log_level="warning", access_log=False,
                                lifespan="off", limit_concurrency=None, backlog=2048,
                                timeout_keep_alive=60, timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        logging.getLogger("uvicorn.error").addFilter(_QUIET_RESETS)
        self._thread = threading.Thread(target=self._run, args=(sock,), name=f"fake-openai-{self.port}",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("fake OpenAI server did not start")
            time.sleep(0.005)
        return self

    def _run(self, sock: socket.socket) -> None:
        assert self._server is not None
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._server.serve(sockets=[sock]))
        finally:
            loop.close()

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._closing = True
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- app ---

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/embeddings", self._embeddings, methods=["POST"]),
            Route("/v1/files", self._create_file, methods=["POST"]),
            Route("/v1/files/{file_id}", self._get_file, methods=["GET"]),
            Route("/v1/files/{file_id}/content", self._file_content, methods=["GET"]),
            Route("/v1/batches", self._create_batch, methods=["POST"]),
            Route("/v1/batches/{batch_id}", self._get_batch, methods=["GET"]),
            Route("/v1/batches/{batch_id}/cancel", self._cancel_batch, methods=["POST"]),
        ])

    async def _models(self, request: Request) -> Response:
        model = {"id": "fake-model", "object": "model", "created": 0, "owned_by": "autolabel-tests"}
        return JSONResponse({"object": "list", "data": [model]})

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def _admit(self) -> float | None:
        """Seconds to wait when this request is over the rate or concurrency limit, else None."""
        if self.max_concurrency is not None and self._in_flight >= self.max_concurrency:
            return DEFAULT_RETRY_AFTER
        if self.rate_limit_per_min:
            now, per_second = time.monotonic(), self.rate_limit_per_min / 60
            capacity = max(self.rate_limit_per_min, 1.0)
            self._bucket = min(capacity, self._bucket + (now - self._bucket_at) * per_second)
            self._bucket_at = now
            if self._bucket < 1:
                return (1 - self._bucket) / per_second
            self._bucket -= 1
        return None

    async def _chat(self, request: Request) -> Any:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "request body is not valid JSON")
        with self._lock:
            self.requests.append(body)
            self.stats["requests"] += 1
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(400, "'messages' is a required property", param="messages")
        if body.get("stream"):
            return _error(400, "streaming is not supported by the fake server", param="stream")
        refused = _refusal(body, self.structured, self.refusal_status)
        if refused is not None:
            self._count("refused")
            return refused
        if body.get("logprobs") and not self.supports_logprobs:
            return _error(400, "logprobs is not supported", param="logprobs")
        wait = self._admit()
        if wait is not None:
            self._count("rate_limited")
            return _error(429, headers=_retry_headers(wait))
        self._in_flight += 1
        try:
            return await self._answer(request, body)
        finally:
            self._in_flight -= 1

    async def _answer(self, request: Request, body: dict[str, Any]) -> Any:
        delay = self.latency(self._rng) if callable(self.latency) else self.latency
        if delay > 0:
            await asyncio.sleep(delay)
        scripted = self.replies(body) if self.replies is not None else None
        fault = scripted if isinstance(scripted, Fault) else None
        if scripted is None and self.fault_rate and self.fault_kinds and self._rng.random() < self.fault_rate:
            fault = Fault(self._rng.choice(self.fault_kinds))
        if fault is None:
            self._count("ok")
            return JSONResponse(self.completion(body, scripted))
        self._count("faults")
        self._count(f"fault_{fault.kind}")
        if fault.kind == FAULT_429_RETRY_AFTER:
            seconds = DEFAULT_RETRY_AFTER if fault.retry_after is None else fault.retry_after
            return _error(429, headers=_retry_headers(seconds))
        if fault.kind in _ERROR_STATUS:
            return _error(_ERROR_STATUS[fault.kind])
        if fault.kind == FAULT_RESET:
            return _ResetResponse()
        if fault.kind == FAULT_MALFORMED_JSON:
            return Response('{"id": "chatcmpl-malformed", "choices": [ <html>502 Bad Gateway</html>',
                            media_type="application/json")
        if fault.kind == FAULT_TIMEOUT:
            deadline = time.monotonic() + self.timeout_sleep
            while time.monotonic() < deadline and not self._closing and not await request.is_disconnected():
                await asyncio.sleep(0.05)
            return JSONResponse(self.completion(body))
        return JSONResponse(self.completion(body, fault=fault.kind))

    # --- embeddings ---

    async def _embeddings(self, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "request body is not valid JSON")
        with self._lock:
            self.embedding_requests.append(body)
            self.stats["embedding_requests"] += 1
            fault = self.embedding_faults.pop(0) if self.embedding_faults else None
        if fault is not None:
            self._count(f"fault_{fault}")
            if fault in (FAULT_429, FAULT_429_RETRY_AFTER):
                return _error(429, headers=_retry_headers(DEFAULT_RETRY_AFTER) if fault == FAULT_429_RETRY_AFTER
                              else None)
            if fault in _ERROR_STATUS:
                return _error(_ERROR_STATUS[fault])
            if fault == FAULT_RESET:
                return _ResetResponse()
            if fault == FAULT_TIMEOUT:
                deadline = time.monotonic() + self.timeout_sleep
                while time.monotonic() < deadline and not self._closing and not await request.is_disconnected():
                    await asyncio.sleep(0.05)
            return Response('{"object": "list", "data": [ <html>502', media_type="application/json")
        inputs = body.get("input") if isinstance(body, dict) else None
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) and t for t in inputs):
            return _error(400, "'input' must be a non-empty string or a list of non-empty strings", param="input")
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(inputs):
            vec: Any = embed_text(text)
            if as_base64:
                vec = base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode()
            data.append({"object": "embedding", "index": index, "embedding": vec})
        used = sum(len(_tokens(t)) for t in inputs)
        return JSONResponse({"object": "list", "data": data, "model": body.get("model") or "fake-embedding",
                             "usage": {"prompt_tokens": used, "total_tokens": used}})

    # --- chat completions ---

    def _choice_rng(self, body: dict[str, Any], index: int) -> random.Random:
        messages = json.dumps(body.get("messages"), sort_keys=True, default=str)
        digest = hashlib.sha256(f"{self.seed}|{index}|{messages}".encode()).hexdigest()
        return random.Random(int(digest[:16], 16))

    def _content(self, body: dict[str, Any], index: int, fault: str | None) -> str:
        if fault == FAULT_EMPTY:
            return ""
        rng = self._choice_rng(body, index)
        schema = requested_schema(body)
        fmt = (body.get("response_format") or {}).get("type")
        if schema is not None:
            value: Any = synthesize(schema, rng, bad_labels=fault == FAULT_BAD_LABELS)
            if not fmt and forced_tool(body) is None and fault is None:  # told in the prompt: a fenced answer
                return f"```json\n{json.dumps(value)}\n```"
        elif fmt in ("json_object", "json_schema"):
            value = {"answer": BAD_LABEL if fault == FAULT_BAD_LABELS else _sentence(rng)}
        else:
            text = BAD_LABEL if fault == FAULT_BAD_LABELS else _sentence(rng)
            text = "42" if fault == FAULT_WRONG_TYPES else text
            return text[: len(text) // 2] if fault == FAULT_TRUNCATED_JSON else text
        content = json.dumps(_wrong_types(value) if fault == FAULT_WRONG_TYPES else value)
        return content[: len(content) // 2] if fault == FAULT_TRUNCATED_JSON else content

    def completion(self, body: dict[str, Any], scripted: str | dict | None = None,
                   fault: str | None = None) -> dict[str, Any]:
        """The chat.completion object answering ``body`` (no HTTP faults, no latency)."""
        choices, completion_tokens = [], 0
        top_n = int(body.get("top_logprobs") or 0)
        for index in range(int(body.get("n") or 1)):
            if isinstance(scripted, str):
                content = scripted
            elif isinstance(scripted, dict):
                content = json.dumps(scripted)
            else:
                content = self._content(body, index, fault)
            completion_tokens += len(_tokens(content))
            logprobs = None
            tool = forced_tool(body)
            if tool is not None:  # the answer is the forced function's arguments
                call = {"id": _new_id("call"), "type": "function",
                        "function": {"name": tool.get("name"), "arguments": content}}
                message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None,
                                           "tool_calls": [call]}
            else:
                if body.get("logprobs") and self.supports_logprobs:
                    logprobs = _logprobs(content, self.logprob, top_n)
                message = {"role": "assistant", "content": content, "refusal": None}
            choices.append({"index": index, "message": message, "logprobs": logprobs,
                            "finish_reason": "tool_calls" if tool is not None else "stop"})
        prompt_tokens = count_prompt_tokens(body.get("messages") or [])
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens,
                 "prompt_tokens_details": {"cached_tokens": 0}}
        return {"id": _new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model") or "fake-model", "choices": choices, "usage": usage,
                "system_fingerprint": "fp_fake"}

    # --- files ---

    def _store_file(self, content: bytes, filename: str, purpose: str) -> dict[str, Any]:
        file = {"id": _new_id("file"), "object": "file", "bytes": len(content),
                "created_at": int(time.time()), "filename": filename,
                "purpose": purpose, "status": "processed", "status_details": None}
        self.files[file["id"]] = {**file, "content": content}
        return file

    async def _create_file(self, request: Request) -> Response:
        head = f"Content-Type: {request.headers.get('content-type', '')}\r\n\r\n".encode()
        message = BytesParser(policy=HTTP).parsebytes(head + await request.body())
        fields: dict[str, tuple[str | None, bytes]] = {}
        for part in message.iter_parts() if message.is_multipart() else ():
            name = part.get_param("name", header="content-disposition")
            fields[str(name)] = (part.get_filename(), part.get_payload(decode=True) or b"")
        if "file" not in fields:
            return _error(400, "'file' is a required multipart field", param="file")
        filename, content = fields["file"]
        purpose = fields.get("purpose", (None, b"batch"))[1].decode()
        return JSONResponse(self._store_file(content, filename or "upload.jsonl", purpose))

    async def _get_file(self, request: Request) -> Response:
        file = self.files.get(request.path_params["file_id"])
        if file is None:
            return _error(404, "No such File object", param="id")
        return JSONResponse({k: v for k, v in file.items() if k != "content"})

    async def _file_content(self, request: Request) -> Response:
        file = self.files.get(request.path_params["file_id"])
        if file is None:
            return _error(404, "No such File object", param="id")
        return Response(file["content"], media_type="application/octet-stream")

    # --- batches ---

    async def _create_batch(self, request: Request) -> Response:
        body = await request.json()
        if body.get("input_file_id") not in self.files:
            return _error(400, "input_file_id does not name an uploaded file", param="input_file_id")
        if body.get("endpoint") != "/v1/chat/completions":
            return _error(400, "only /v1/chat/completions is supported", param="endpoint")
        now = int(time.time())
        batch = {"id": _new_id("batch"), "object": "batch", "endpoint": body["endpoint"], "errors": None,
                 "input_file_id": body["input_file_id"],
                 "completion_window": body.get("completion_window", "24h"), "status": "validating",
                 "output_file_id": None, "error_file_id": None, "created_at": now, "in_progress_at": None,
                 "expires_at": now + 86400, "finalizing_at": None, "completed_at": None, "failed_at": None,
                 "expired_at": None, "cancelling_at": None, "cancelled_at": None,
                 "request_counts": {"total": 0, "completed": 0, "failed": 0},
                 "metadata": body.get("metadata")}
        self.batches[batch["id"]] = batch
        batch["_started"] = time.monotonic()
        return JSONResponse(self._public(batch))

    @staticmethod
    def _public(batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in batch.items() if not k.startswith("_")}

    async def _get_batch(self, request: Request) -> Response:
        batch = self.batches.get(request.path_params["batch_id"])
        if batch is None:
            return _error(404, "No such Batch object", param="batch_id")
        now = int(time.time())
        if batch["status"] == "cancelling":
            batch.update(status="cancelled", cancelled_at=now)
        elif batch["status"] in ("validating", "in_progress"):
            if self.batch_delay is None:
                done = batch["status"] == "in_progress"
            else:
                done = time.monotonic() - batch["_started"] >= self.batch_delay
            batch.update(status="in_progress", in_progress_at=batch["in_progress_at"] or now)
            if done:
                self._complete(batch)
        return JSONResponse(self._public(batch))

    def _complete(self, batch: dict[str, Any]) -> None:
        outputs, errors = [], []
        lines = self.files[batch["input_file_id"]]["content"].decode().splitlines()
        for number, line in enumerate(filter(str.strip, lines), start=1):
            try:
                item = json.loads(line)
                body, custom_id = item["body"], item["custom_id"]
                if item.get("url") != batch["endpoint"]:
                    raise ValueError(f"url must be {batch['endpoint']}")
            except (ValueError, KeyError, TypeError) as exc:
                error = {"code": "invalid_request", "message": f"line {number}: {exc}"}
                errors.append({"id": _new_id("batch_req"), "custom_id": None, "response": None,
                               "error": error})
                continue
            scripted = self.replies(body) if self.replies is not None else None
            completion = self.completion(body, None if isinstance(scripted, Fault) else scripted)
            response = {"status_code": 200, "request_id": _new_id("req"), "body": completion}
            outputs.append({"id": _new_id("batch_req"), "custom_id": custom_id, "response": response,
                            "error": None})
        now = int(time.time())

        def jsonl(rows: list[dict[str, Any]]) -> bytes:
            return "".join(json.dumps(row) + "\n" for row in rows).encode()

        batch["output_file_id"] = self._store_file(jsonl(outputs), "output.jsonl", "batch_output")["id"]
        if errors:
            batch["error_file_id"] = self._store_file(jsonl(errors), "errors.jsonl", "batch_output")["id"]
        batch["request_counts"] = {"total": len(outputs) + len(errors), "completed": len(outputs),
                                   "failed": len(errors)}
        batch.update(status="completed", finalizing_at=now, completed_at=now)

    async def _cancel_batch(self, request: Request) -> Response:
        batch = self.batches.get(request.path_params["batch_id"])
        if batch is None:
            return _error(404, "No such Batch object", param="batch_id")
        if batch["status"] in ("validating", "in_progress"):
            batch.update(status="cancelling", cancelling_at=int(time.time()))
        return JSONResponse(self._public(batch))


def serve_forever_cli() -> None:
    """Run a fake server in the foreground until interrupted (for benchmarks and manual use)."""
    parser = argparse.ArgumentParser(prog="python -m tests.fake_openai",
                                     description=serve_forever_cli.__doc__)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="median latency per request")
    parser.add_argument("--latency-sigma", type=float, default=0.0,
                        help="sigma of a lognormal latency around the median (0: constant)")
    parser.add_argument("--max-concurrency", type=int, default=None)
    parser.add_argument("--rate-limit-per-min", type=float, default=None)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--fault-kinds", default=",".join(ALL_FAULTS), help="comma-separated fault kinds")
    parser.add_argument("--batch-delay", type=float, default=None)
    args = parser.parse_args()
    median, sigma = args.latency_ms / 1000, args.latency_sigma
    latency: Callable[[random.Random], float] | float = median
    if sigma > 0 and median > 0:
        def latency(rng: random.Random) -> float:
            return rng.lognormvariate(math.log(median), sigma)
    server = FakeOpenAIServer(seed=args.seed, latency=latency, max_concurrency=args.max_concurrency,
                              rate_limit_per_min=args.rate_limit_per_min, fault_rate=args.fault_rate,
                              fault_kinds=[k for k in args.fault_kinds.split(",") if k],
                              batch_delay=args.batch_delay, port=args.port)
    with server:
        print(f"fake OpenAI server listening on {server.base_url}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    serve_forever_cli()
