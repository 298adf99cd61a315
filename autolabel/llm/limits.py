"""How many LLM calls may be in flight: the configured concurrency, lowered while the endpoint rate-limits.

An endpoint that answers 429 is asking for fewer requests. Retrying each call on its own after Retry-After keeps
the whole concurrency knocking: most retries are refused again, and a call can run out of attempts while the
endpoint is busy answering others. ``AdaptiveLimit`` does what TCP does with its congestion window (AIMD):

- a rate-limited call halves the limit — once per round: a 429 of a call that started before the last cut says
  nothing new, so a burst of 429s from one round of calls counts once;
- each answered call raises it by 1/limit (about one per round of answered calls), up to the configured ceiling.

So the calls in flight settle where the endpoint's rate is used fully and few requests are refused. Waiters are
served in arrival order, each woken once (a semaphore's behaviour, with a moving capacity).
"""

from __future__ import annotations

import asyncio
from collections import deque


class AdaptiveLimit:
    """At most ``limit`` holders at a time; ``ceiling`` at first. See the module docstring."""

    def __init__(self, ceiling: int) -> None:
        self.ceiling = ceiling
        self.limit = float(ceiling)
        self.in_flight = 0
        self.round = 0
        """Bumped by each cut; a holder notes the round it started in."""
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> int:
        """Wait for a slot; returns the round the holder starts in (pass it to ``release``)."""
        if self.in_flight < self._capacity() and not self._waiters:
            self.in_flight += 1
            return self.round
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # woken and cancelled at once: hand the slot on
                self.in_flight -= 1
                self._wake()
            else:
                self._waiters.remove(waiter)
            raise
        return self.round

    def release(self, started_round: int, *, rate_limited: bool = False) -> None:
        self.in_flight -= 1
        if rate_limited:
            if started_round == self.round:
                self.limit = max(1.0, self.limit / 2)
                self.round += 1
        else:
            self.limit = min(float(self.ceiling), self.limit + 1 / self.limit)
        self._wake()

    def _capacity(self) -> int:
        return max(1, int(self.limit))

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self._capacity():
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)
