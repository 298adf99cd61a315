"""One long dialogue costs store linear in its length: a branch of the graph is handed its own turns and the context
window before them, never the whole dialogue (LangGraph checkpoints every branch's packet)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from autolabel import Annotator, Dialogue, Status, Turn
from tests.fake_openai import FakeOpenAIServer

LINES = [("Supporter", "What has been on your mind this week?"),
         ("Seeker", "Mostly work. I keep thinking I will be let go, and I cannot sleep."),
         ("Supporter", "That sounds exhausting. What happens when you lie awake?"),
         ("Seeker", "I replay every meeting and every mistake, over and over.")]


def long_dialogue(n: int, did: str = "long") -> Dialogue:
    return Dialogue(id=did, turns=tuple(Turn(index=i, speaker=LINES[i % 4][0], text=f"{LINES[i % 4][1]} ({i})")
                                        for i in range(n)))


def store_bytes(db: Path) -> int:
    """What the run left on disk: the database and its write-ahead log."""
    return sum(os.path.getsize(p) for p in (db, Path(f"{db}-wal")) if p.exists())


def per_turn(server: FakeOpenAIServer, tmp_path: Path, n: int, **kw: Any) -> float:
    db = tmp_path / f"{n}.db"
    a = Annotator("psy-insight", model="openai:test-model", base_url=server.base_url, db=db, critique=False, **kw)
    result = a.annotate(long_dialogue(n))
    assert len(result.turns) == n and all(t.status != Status.FAILED for t in result.turns)
    return store_bytes(db) / n


def test_store_per_turn_does_not_grow_with_the_dialogue(server: FakeOpenAIServer, tmp_path: Path) -> None:
    short, long = per_turn(server, tmp_path, 200), per_turn(server, tmp_path, 800)
    # quadratic (each of n/32 packets carrying the whole dialogue) gave about 3x per turn at 4x the turns
    assert long / short < 1.1, (short, long)


def test_redacted_long_dialogue_restores_names_from_far_back(server: FakeOpenAIServer, tmp_path: Path) -> None:
    """A name learned in the first turn is replaced in a turn hundreds of turns (many branches) later, and the
    model's texts about it come back with the original name."""
    d = long_dialogue(300)
    turns = list(d.turns)
    turns[1] = turns[1].model_copy(update={"text": "My name is Orla Brannigan and I work nights."})
    turns[291] = turns[291].model_copy(update={"text": "Orla keeps thinking about it."})
    d = d.model_copy(update={"turns": tuple(turns)})
    echo = '{"observation": "about %s", "emotion": ["A"]}'

    def replies(body: dict[str, Any]) -> str | None:
        user = body["messages"][-1]["content"]
        if 'index="291"' in user and "<target" in user:
            target = user.split('index="291"', 1)[1]
            assert "Orla" not in target  # the model sees a placeholder
            placeholder = target[target.index("[NAME_"):target.index("]", target.index("[NAME_")) + 1]
            return echo % placeholder
        return None

    with FakeOpenAIServer(replies=replies) as srv:
        a = Annotator("psy-insight", model="openai:test-model", base_url=srv.base_url, db=tmp_path / "r.db",
                      critique=False, redact=True)
        result = a.annotate(d)
        sent = [b for b in srv.requests if 'index="291"' in b["messages"][-1]["content"]]
    assert sent and all("Orla" not in b["messages"][-1]["content"] for b in sent)
    t291 = next(t for t in result.turns if t.turn_index == 291)
    assert t291.texts.get("observation") == "about Orla", t291
