"""The final write of a dialogue under Ray's failure model (issue 21, item 2), on a real local Ray instance and a real
SQLite store: a labeler that Ray declared dead but that still finishes later (a stalled process, a node cut off)
cannot overwrite the result of the incarnation that took its batch over, and an attempt that finds the dialogue
finished changes nothing — no record, review item, timestamp or call is added or changed."""

from __future__ import annotations

import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from autolabel.persistence.store import Store
from autolabel.readers import read_dialogues
from tests.conftest import dialogue, write_jsonl
from tests.fake_openai import FakeOpenAIServer

ray = pytest.importorskip("ray")
from autolabel.scale.ray import RayAnnotator  # noqa: E402  (needs ray)
from autolabel.scale.ray_labeler import Labeler  # noqa: E402
from autolabel.scale.ray_limits import Limits  # noqa: E402

TABLES = {"dialogues": "dialogue_id", "turns": "dialogue_id, turn_index", "annotations": "id",
          "review_items": "id", "llm_calls": "id"}


def snapshot(db: str, *, calls: bool = True) -> dict[str, list[tuple[Any, ...]]]:
    """Every stored row a dialogue's final write makes (with its ids and timestamps), and the call log."""
    with closing(Store.open(db)) as store, store.engine.connect() as conn:
        return {t: [tuple(r) for r in conn.execute(text(f"SELECT * FROM {t} ORDER BY {order}"))]
                for t, order in TABLES.items() if calls or t != "llm_calls"}


def test_a_superseded_labeler_cannot_overwrite_and_a_finished_dialogue_is_never_written_again(
        local_ray: Any, tmp_path: Path) -> None:
    input = write_jsonl(tmp_path / "dialogues.jsonl", [dialogue(f"d{i}", 4) for i in range(2)])
    batch = list(read_dialogues(input))
    input_name = str(input.resolve())
    db = str(tmp_path / "labels.db")
    # low confidence: every turn goes to review, so a second write would show as a second review item
    with FakeOpenAIServer(seed=7, latency=1.5, logprob=-3.0) as slow, \
            FakeOpenAIServer(seed=7, latency=0.02, logprob=-3.0) as fast:
        def settings(url: str) -> str:
            return RayAnnotator("psy-insight", model="openai:test", base_url=url, db=db,
                                concurrency=4).settings.model_dump_json()

        annotator = RayAnnotator("psy-insight", model="openai:test", base_url=fast.base_url, db=db)
        task = annotator.task.model_dump_json()
        run_id = annotator.run_id(input_name)
        with closing(Store.open(db)) as store:
            annotator.start_run(store, input_name)
        limits = ray.remote(Limits).options(name="limits", num_cpus=0, max_concurrency=1000).remote(4, None)

        def incarnation(url: str) -> Any:
            """One incarnation of the run's labeler-0, as Ray makes a new one when it restarts the actor."""
            return ray.remote(Labeler).options(num_cpus=0, max_concurrency=1000).remote(
                task, settings(url), input_name, "labeler-0", "limits")

        first, second, third = incarnation(slow.base_url), incarnation(fast.base_url), incarnation(fast.base_url)
        stalled = first.label.remote(batch)  # the first incarnation stalls on a slow endpoint ...
        while len(slow.requests) < 2:
            time.sleep(0.05)
        done = ray.get(second.label.remote(batch), timeout=300)  # ... and is declared dead: its batch goes here
        assert sorted(r.dialogue_id for r in done.results) == ["d0", "d1"]
        finished = snapshot(db, calls=False)
        assert len(finished["review_items"]) >= 8 and {r[0:1] for r in finished["dialogues"]} == {(run_id,)}

        late = ray.get(stalled, timeout=300)  # the stalled one comes back and finishes its own attempts
        ray.get(first.close.remote(), timeout=300)  # returns when its last attempt has ended
        assert snapshot(db, calls=False) == finished, "the superseded attempt wrote nothing over the finished one"
        assert late.results == [] and sorted(late.lost) == ["d0", "d1"], "its attempts were superseded"

        before = snapshot(db)
        requests = len(fast.requests) + len(slow.requests)
        again = ray.get(third.label.remote(batch), timeout=300)  # a retried batch finding both dialogues done
        ray.get([second.close.remote(), third.close.remote()], timeout=300)
        assert sorted(r.dialogue_id for r in again.results) == ["d0", "d1"]
        assert [r.model_dump() for r in again.results] == [r.model_dump() for r in done.results]
        assert len(fast.requests) + len(slow.requests) == requests, "no call sent again"
        assert snapshot(db) == before, "a second attempt finding the dialogue done changes nothing"
        for a in (first, second, third, limits):
            ray.kill(a, no_restart=True)
