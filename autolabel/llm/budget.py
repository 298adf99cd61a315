"""``--max-cost``: each LLM call is admitted only if the budget can pay for it at its worst.

``LLMClient`` asks its ``Budget`` before every request it sends (each transport retry is a request of its own):

- **Admission.** A call is admitted when ``spent + reserved + worst ≤ max_cost``: ``spent`` is the actual cost of
  the calls that ended, ``reserved`` the worst-case cost of the calls in flight, ``worst`` this call's worst-case
  cost: its prompt tokens at the prompt price plus ``max_tokens`` (times ``n``) at the completion price. The
  admitted call's ``worst`` is reserved. When only the reservations stand in the way (``spent + worst`` fits),
  the call waits for a call in flight to end: reservations are worst cases, most calls cost far less.
- **Settling.** When the call ends, its reservation is replaced by its actual cost, priced from the ``usage`` the
  endpoint reported (0 for a call that failed without usage: endpoints do not bill refused requests).
- **Cache hits** never reach the budget: they cost nothing.
- **Refusal.** A call that would not fit even if the calls in flight cost nothing raises ``BudgetExceeded``, and
  the budget closes: every later call is refused too (the run is stopping; no new dialogue starts). What is
  left unspent is then less than that call's worst case. A refused call first waits until the calls in
  flight have ended: LangGraph cancels the other branches of a dialogue's step as soon as one raises, and a
  branch cancelled mid-request would lose an answer the endpoint has already sent and billed (it would be
  asked again on resume instead of coming from the cache). Once nothing is in flight, every answer has been
  handed to the cache, as a store write in a thread job (``asyncio.to_thread``, like every store call from async
  code). A job not yet taken up by a thread when its branch is cancelled is dropped with it, so the refused call
  also waits for a job of its own, which does nothing, queued behind them: the default executor's threads take
  jobs in order, so once it has run the cache writes have been taken up, and a running job runs to its end.
  Only then is BudgetExceeded raised, and no answer already paid for is lost.

So the spend never passes ``max_cost`` as long as the prompt-token estimate is not below what the endpoint
counts. The estimate (:func:`prompt_counter`):

- **OpenAI models** that tiktoken knows: OpenAI's cookbook formula over the model's encoding
  (``autolabel.llm.tokens``), plus the tokens of the JSON of ``response_format`` (and ``tools``), which OpenAI bills as
  prompt tokens too; counted as plain JSON text, which is longer than the schema OpenAI renders from it.
- **Any other model** (self-hosted, a tokenizer we do not have): the same formula with every text counted as
  its UTF-8 bytes. Byte-level BPE tokenizers (GPT, Llama 3, Qwen) and SentencePiece with byte fallback (Llama 2,
  Mistral) never make more tokens than bytes, so this bounds the content; the per-message allowance (3 tokens
  plus the role's bytes) is about what the chat templates of those families add, and the content's overcount
  leaves a wide margin for the rest. A documented approximation, not a proof: an endpoint that adds a long
  hidden prompt of its own could count more. It overestimates several times over, so near its limit a run
  admits calls one at a time and stops a little early rather than late.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from typing import Any

from autolabel.errors import BudgetExceeded
from autolabel.llm.tokens import count_chat_tokens, encoding, encoding_for_model
from autolabel.settings import Settings

Pricer = Callable[[int, int], float]
"""(prompt tokens, completion tokens) -> USD, as ``pricing.pricer`` makes it."""
PRICED_PARAMS = ("response_format", "tools")
"""Request parameters besides the messages that endpoints bill as prompt tokens."""


class Budget:
    """Admits LLM calls under ``limit`` USD (None: no limit); see the module docstring."""

    def __init__(self, limit: float | None, price: Pricer, count: Callable[[dict[str, Any]], int],
                 max_tokens: int) -> None:
        self.limit = limit
        self.price = price
        self.count = count
        """Request keyword arguments -> prompt tokens (an estimate not below the endpoint's count)."""
        self.max_tokens = max_tokens
        self.spent = 0.0
        """Actual cost of the calls settled so far (USD)."""
        self.reserved = 0.0
        """Worst-case cost of the calls in flight (USD)."""
        self.closed = False
        """True once a call was refused: every later call is refused too."""
        self.in_flight = 0
        self._settled: asyncio.Event | None = None
        """Set (and dropped) when a call settles: what waiting admissions wait for."""

    @classmethod
    def of(cls, settings: Settings, price: Pricer) -> Budget:
        """The budget of a run with ``settings`` (``max_cost``, ``model``, ``max_tokens``)."""
        return cls(settings.max_cost, price, prompt_counter(settings.family, settings.model_name), settings.max_tokens)

    def worst_case(self, kwargs: dict[str, Any]) -> float:
        """The most the request ``kwargs`` (chat-completions keyword arguments) can cost."""
        completion = kwargs.get("max_completion_tokens") or kwargs.get("max_tokens") or self.max_tokens
        return self.price(self.count(kwargs), completion * (kwargs.get("n") or 1))

    async def admit(self, kwargs: dict[str, Any]) -> float:
        """Reserve the worst-case cost of the request ``kwargs``; returns the reservation, to pass to ``settle``.

        Waits while only the reservations in flight stand in the way; raises BudgetExceeded (after the calls in
        flight have ended) when the call would not fit even if they cost nothing, or the budget is closed."""
        if self.limit is None:
            return 0.0
        worst = 0.0 if self.closed else self.worst_case(kwargs)
        while not self.closed and self.spent + self.reserved + worst > self.limit:
            if self.spent + worst > self.limit:
                self.closed = True
            else:
                await self._next_settle()
        if self.closed:
            while self.in_flight:
                await self._next_settle()
            await asyncio.to_thread(_nothing)  # the answers' cache writes have started: see the module docstring
            raise BudgetExceeded(self.spent, self.limit)
        self.reserved += worst
        self.in_flight += 1
        return worst

    def settle(self, reservation: float, cost: float) -> None:
        """The call that reserved ``reservation`` ended and cost ``cost`` (USD; 0 when it failed)."""
        self.spent += cost
        if self.limit is None:
            return
        self.in_flight -= 1
        self.reserved = self.reserved - reservation if self.in_flight else 0.0  # no float residue left waiting
        if self._settled is not None:
            self._settled.set()
            self._settled = None

    async def _next_settle(self) -> None:
        if self._settled is None:
            self._settled = asyncio.Event()
        await self._settled.wait()


def _nothing() -> None:
    """A thread job that does nothing: queued behind the jobs already submitted, it runs once threads took them up."""


def prompt_counter(family: str, name: str) -> Callable[[dict[str, Any]], int]:
    """The prompt-token estimate for requests to model ``name`` of ``family``; see the module docstring. The
    tokenizer is loaded by the first count (a run without ``--max-cost`` never loads it)."""

    @functools.cache
    def tokens() -> Callable[[str], int]:
        if family == "openai":
            enc, exact = encoding_for_model(name)
            if exact:  # cached per counter (one per run's client): the long system prompts repeat call to call;
                # the texts (dialogue turns among them) go with the run, never kept for the life of the process
                return functools.lru_cache(maxsize=256)(functools.partial(_tiktoken_count, enc.name))
        return _utf8_bytes

    return lambda kwargs: _count(kwargs, tokens=tokens())


def _count(kwargs: dict[str, Any], *, tokens: Callable[[str], int]) -> int:
    """OpenAI's cookbook formula (``tokens.count_chat_tokens``) with ``tokens`` counting each text, plus the
    request's priced parameters as JSON text."""
    total = count_chat_tokens(kwargs.get("messages") or (), tokens)
    for param in PRICED_PARAMS:
        if kwargs.get(param):
            total += tokens(json.dumps(kwargs[param], ensure_ascii=False, default=str))
    return total


def _tiktoken_count(encoding_name: str, text: str) -> int:
    """Tokens of ``text``."""
    return len(encoding(encoding_name).encode(text, disallowed_special=()))


def _utf8_bytes(text: str) -> int:
    return len(text.encode("utf-8"))
