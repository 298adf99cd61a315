"""A budget stop while the input is waiting for its next dialogue (issue 21: a Ray labeler's feed, or any async
source that blocks): the run must stop, not wait for input that will never be used. Before the fix the worker
that was waiting for the next dialogue held the run open, so ``aannotate_many`` never ended and the Ray driver hung
on its batch (seen once in ``test_ray.py::test_concurrency_and_max_cost_hold_for_the_whole_run_over_two_workers``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from autolabel import Annotator, BudgetExceeded
from autolabel.settings import Settings
from tests.conftest import dialogue
from tests.fake_openai import FakeOpenAIServer


def test_a_budget_stop_ends_the_run_while_the_source_waits_for_input(tmp_path: Path) -> None:
    first = dialogue("d1", 4)
    more = asyncio.Event()  # never set: the source has nothing more for now (a feed still open)

    async def source() -> AsyncIterator:  # type: ignore[type-arg]
        yield first
        await more.wait()

    async def run(annotator: Annotator) -> list[str]:
        return [r.dialogue_id async for r in annotator.aannotate_many(source())]

    with FakeOpenAIServer(seed=3, latency=0.05) as server:
        settings = Settings(model="openai:test", base_url=server.base_url, db=str(tmp_path / "runs.db"),
                            concurrency=2, max_cost=1e-9, price_in=1000.0, price_out=1000.0, few_shot=0)
        with pytest.raises(BudgetExceeded):  # the first call is refused: the run stops, resumable
            asyncio.run(asyncio.wait_for(run(Annotator("psy-insight", settings=settings)), timeout=60))
