"""Shared fixtures: a scripted OpenAI-compatible server on loopback, small dialogue files, the shared data."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autolabel import Dialogue, Turn
from tests.fake_openai import FakeOpenAIServer

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "psy-insight"


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(seed=7) as srv:
        yield srv


def dialogue(did: str = "d1", n: int = 4) -> Dialogue:
    lines = [
        ("Supporter", "Hello, what brings you here today?"),
        ("Seeker", "I have been feeling really anxious about my exams and I can't sleep."),
        ("Supporter", "It sounds like the exams weigh on you. What worries you most?"),
        ("Seeker", "That I will fail and disappoint my parents."),
        ("Supporter", "That is a heavy load to carry. How do your parents usually react?"),
        ("Seeker", "They say they are proud, but I still feel guilty when I rest."),
    ]
    # the dialogue id in the first turn keeps dialogues distinct (identical prompts would be answered from cache)
    lines[0] = (lines[0][0], f"{lines[0][1]} (session {did})")
    return Dialogue(id=did, turns=tuple(Turn(index=i, speaker=s, text=t) for i, (s, t) in enumerate(lines[:n])))


def write_jsonl(path: Path, dialogues: list[Dialogue]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for d in dialogues:
            f.write(json.dumps({"id": d.id, "turns": [{"speaker": t.speaker, "text": t.text} for t in d.turns]})
                    + "\n")
    return path


@pytest.fixture
def small_input(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "dialogues.jsonl", [dialogue(f"d{i}", 4 + i % 3) for i in range(5)])


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.fail(f"{path} is missing: the shared Psy-Insight data must sit beside the repo")
    return path


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    """One small Ray instance for a module's runs (a run joins the caller's session, started here); Ray is imported
    here, on use, so that test sessions without Ray tests do not load it (and fail, never skip, without it: CI
    installs the [ray] extra)."""
    import ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()
