"""The run's one concurrency limit and one budget, shared by every Ray labeler of a run (``autolabel.scale.ray``).

``Limits`` is a Ray asyncio actor, one per run: ``--concurrency`` LLM calls in flight across the cluster (halved by any
worker's 429: back-off is cluster-wide) and ``--max-cost`` for the whole run. Each labeler's client uses
``ClusterLimit`` and ``ClusterBudget``, its views of that actor, instead of its own (``Annotator.shared_limits``).
What a dead labeler held is given back when Ray restarts it (``reset``; a reservation it held counts as spent at its
worst case: the budget never passes ``--max-cost``).
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from autolabel.errors import BudgetExceeded
from autolabel.llm.budget import Budget
from autolabel.llm.limits import AdaptiveLimit


class WorstCaseBudget(Budget):
    """The run's budget inside the limits actor: each labeler prices its own request (it has the tokenizer) and
    asks with the worst case in USD."""

    def __init__(self, limit: float | None) -> None:
        super().__init__(limit, lambda p, c: 0.0, lambda kwargs: 0, 1)

    def worst_case(self, kwargs: dict[str, Any]) -> float:
        return float(kwargs["worst"])


class Limits:
    """The run's one concurrency limit and one budget, for every labeler (a Ray asyncio actor). What each labeler
    holds is counted by owner: one incarnation of a labeler (``name@id``), so a restarted labeler gives back what its
    dead incarnations held, and what they were still waiting for is given back as soon as it is granted."""

    def __init__(self, concurrency: int, max_cost: float | None) -> None:
        self.limit = AdaptiveLimit(concurrency)
        self.budget = WorstCaseBudget(max_cost)
        self.slots: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
        self.reservations: dict[str, collections.Counter[float]] = collections.defaultdict(collections.Counter)
        self.rate_limited = 0
        self.peak = 0
        self.dead: set[str] = set()

    async def acquire(self, owner: str) -> int:
        started_round = await self.limit.acquire()
        if owner in self.dead:  # its process died while it waited
            self.limit.release(started_round)
            return started_round
        self.slots[owner][started_round] += 1
        self.peak = max(self.peak, self.limit.in_flight)
        return started_round

    def release(self, owner: str, started_round: int, rate_limited: bool) -> None:
        if self.slots[owner][started_round] <= 0:
            return  # given back by ``reset`` already
        self.slots[owner][started_round] -= 1
        self.rate_limited += rate_limited
        self.limit.release(started_round, rate_limited=rate_limited)

    async def admit(self, owner: str, worst: float) -> tuple[bool, float]:
        """(admitted, spent so far): refused once the run's budget cannot pay ``worst`` (see ``budget.py``)."""
        try:
            await self.budget.admit({"worst": worst})
        except BudgetExceeded:
            return False, self.budget.spent
        if owner in self.dead:  # its process died while it waited: no request was sent
            self.budget.settle(worst, 0.0)
            return False, self.budget.spent
        self.reservations[owner][worst] += 1
        return True, self.budget.spent

    def settle(self, owner: str, reservation: float, cost: float) -> None:
        if self.reservations[owner][reservation] <= 0:
            return
        self.reservations[owner][reservation] -= 1
        self.budget.settle(reservation, cost)

    def reset(self, owner: str) -> None:
        """``owner`` is a new incarnation of its labeler: give back what the earlier ones held (they died): their
        slots, and their reservations as spent at their worst (a call in flight may have been billed)."""
        name = owner.split("@", 1)[0]
        for old in {o for o in (*self.slots, *self.reservations) if o.split("@", 1)[0] == name and o != owner}:
            self.dead.add(old)
            for started_round, n in self.slots.pop(old, collections.Counter()).items():
                for _ in range(n):
                    self.limit.release(started_round)
            for reservation, n in self.reservations.pop(old, collections.Counter()).items():
                for _ in range(n):
                    self.budget.settle(reservation, reservation)

    def status(self) -> dict[str, Any]:
        return {"spent": self.budget.spent, "closed": self.budget.closed, "in_flight": self.limit.in_flight,
                "limit": self.limit.limit, "peak": self.peak, "rate_limited": self.rate_limited}


class ClusterLimit(AdaptiveLimit):
    """A labeler's view of the run's limit: every slot is taken from the ``Limits`` actor."""

    def __init__(self, limits: Any, owner: str, ceiling: int) -> None:
        super().__init__(ceiling)
        self.limits, self.owner = limits, owner

    async def acquire(self) -> int:
        ref = self.limits.acquire.remote(self.owner)
        try:
            return int(await ref)
        except asyncio.CancelledError:  # the slot is granted all the same: give it back when it is
            ref.future().add_done_callback(self._give_back)
            raise

    def _give_back(self, granted: Any) -> None:
        if not granted.cancelled() and granted.exception() is None:
            self.limits.release.remote(self.owner, granted.result(), False)

    def release(self, started_round: int, *, rate_limited: bool = False) -> None:
        self.limits.release.remote(self.owner, started_round, rate_limited)


class ClusterBudget(Budget):
    """A labeler's view of the run's budget: each call's worst case is priced here and admitted by ``Limits``."""

    def __init__(self, local: Budget, limits: Any, owner: str) -> None:
        super().__init__(local.limit, local.price, local.count, local.max_tokens)
        self.limits, self.owner = limits, owner

    async def admit(self, kwargs: dict[str, Any]) -> float:
        worst = self.worst_case(kwargs)
        ref = self.limits.admit.remote(self.owner, worst)
        try:
            admitted, spent = await ref
        except asyncio.CancelledError:
            ref.future().add_done_callback(lambda f: self._unreserve(f, worst))
            raise
        if not admitted:  # Limits waited for every call in flight to end; their cache writes have started here too
            self.closed = True
            await asyncio.to_thread(nothing)  # see budget.py: the answers' cache writes were taken up by threads
            raise BudgetExceeded(spent, self.limit or 0.0)
        self.reserved += worst
        self.in_flight += 1
        return worst

    def _unreserve(self, answer: Any, worst: float) -> None:
        if not answer.cancelled() and answer.exception() is None and answer.result()[0]:
            self.limits.settle.remote(self.owner, worst, 0.0)

    def settle(self, reservation: float, cost: float) -> None:
        super().settle(reservation, cost)
        self.limits.settle.remote(self.owner, reservation, cost)


def nothing() -> None:
    """A thread job that does nothing (see ``Budget.admit``)."""
