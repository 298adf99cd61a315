"""Transport retries of the LLM and embeddings clients: which failures are worth another attempt, how long to
wait (Retry-After, else full-jitter exponential backoff), when to stop, and the one-line reason of a failure."""

from __future__ import annotations

import json
import random
import time

import httpx
import openai
from tenacity import RetryCallState
from tenacity.stop import stop_base


class GarbledReply(ValueError):
    """The endpoint answered 200 with JSON that is not a chat completion."""


def transient(exc: BaseException) -> bool:
    if isinstance(exc, openai.RateLimitError | openai.InternalServerError | openai.APIConnectionError):
        return True  # APITimeoutError is an APIConnectionError
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409, 425, 429) or exc.status_code >= 500
    if isinstance(exc, openai.APIResponseValidationError | json.JSONDecodeError | GarbledReply | httpx.TransportError):
        return True  # a garbled envelope or a dropped connection: the same request may well succeed
    return False


def retry_after(exc: BaseException | None) -> float | None:
    response = getattr(exc, "response", None)
    if response is None:
        return None
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class Backoff:
    """Retry-After when the server says it; otherwise full-jitter exponential backoff."""

    def __init__(self, rng_seed: int, base: float = 0.5, cap: float = 30.0) -> None:
        self._seed = rng_seed
        self._random: random.Random | None = None
        self.base, self.cap = base, cap

    @property
    def _rng(self) -> random.Random:
        if self._random is None:  # seeded on the first wait (~8 µs): most calls never wait
            self._random = random.Random(self._seed)
        return self._random

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hinted = retry_after(exc)
        if hinted is not None:
            return min(hinted, self.cap) + self._rng.uniform(0, 0.05)
        return self._rng.uniform(0, min(self.cap, self.base * 2 ** (state.attempt_number - 1)))


class StopAfterRetries(stop_base):
    """Stop after ``max_retries`` failed retries of one call. A 429 does not count: it asks the client to wait
    (Retry-After) and to send fewer requests (``AdaptiveLimit``); the retry deadline bounds those waits."""

    def __init__(self, max_retries: int) -> None:
        self.max_retries = max_retries
        self.failures = 0  # one instance per call (``_call_with_retries``); called once per failed attempt

    def __call__(self, state: RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome else None
        if not isinstance(exc, openai.RateLimitError):
            self.failures += 1
        return self.failures > self.max_retries


class Deadline(stop_base):
    """Stop once ``seconds`` have passed since the call's first attempt started (tenacity's ``stop_after_delay``,
    timed from before attempt 1, which runs before tenacity starts)."""

    def __init__(self, started: float, seconds: float) -> None:
        self.started, self.seconds = started, seconds

    def __call__(self, state: RetryCallState) -> bool:
        return time.monotonic() - self.started >= self.seconds


def first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else ""
