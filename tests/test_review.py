"""The review queue on both engines (a SQLite file; a PostgreSQL database of the test run's own cluster): items
made by a real annotation run against the scripted server, plus synthetic queues written through the store's own
API for the concurrency races (8 reviewers × 200 items on both engines, 20 × 1,000 on PostgreSQL)."""

from __future__ import annotations

import json
import random
import sqlite3
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from autolabel import Annotator, Dialogue, ReviewError, Turn, export, load_task
from autolabel.cli import app
from autolabel.persistence.store import Store, engine_url
from autolabel.review.queue import Item, ReviewQueue
from tests.conftest import dialogue
from tests.fake_openai import FakeOpenAIServer, is_critique
from tests.pg import Cluster, cluster, dbname, engine_fixture, new_db_fixture, pg_fixture  # noqa: F401

RISK_TEXT = "Some nights I think about killing myself. I just want it all to end."
SCRIPT_TEXT = "<script>alert(1)</script> I keep worrying that <b>nobody</b> cares."


class Clock:
    """A settable clock for lease expiry."""

    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


# -- helpers shared with the web tests -----------------------------------------------------------------------

def base_dialogues() -> list[Dialogue]:
    risky = Dialogue(id="risk", turns=(
        Turn(index=0, speaker="Supporter", text="How have the last weeks been for you?"),
        Turn(index=1, speaker="Seeker", text=RISK_TEXT),
        Turn(index=2, speaker="Supporter", text="Thank you for telling me. Are you safe right now?"),
        Turn(index=3, speaker="Seeker", text=SCRIPT_TEXT),
    ))
    return [dialogue("d0", 6), dialogue("d1", 6), risky]


def _critic_agrees_on_d0_turn_1(body: dict[str, Any]) -> str | None:
    """Random answers (the server's), except the critic's on d0's first seeker turn: "agree", so that the run has an
    accepted seeker turn whatever order the requests arrive in."""
    user = body["messages"][-1]["content"]
    if is_critique(body) and 'index="1"' in user \
            and "(session d0)" in user:
        return json.dumps({"reason": "The labels fit the turn.", "verdict": "agree", "revised": None})
    return None


def annotate_into(db: str | Path) -> None:
    """A real annotation run (scripted server, random labels: most turns get flagged by the critic)."""
    with FakeOpenAIServer(seed=7, replies=_critic_agrees_on_d0_turn_1) as srv:
        annotator = Annotator("psy-insight", model="openai:test", base_url=srv.base_url, db=db)
        list(annotator.annotate_many(base_dialogues()))


def copy_db(src: Path, dst: Path) -> Path:
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    return dst


def clone_db(src: str, tmp_path: Path) -> str:
    """A copy of a database: a SQLite file, or a PostgreSQL database made from ``src`` as its template."""
    if src.startswith("postgresql://"):
        return cluster().database(template=dbname(src))
    return str(copy_db(Path(src), tmp_path / "review.db"))


def synthetic_queue(db: str | Path, n: int, *, seed: int = 0, text: str = "I feel anxious about tomorrow.") -> str:
    """A run with ``n`` flagged seeker turns, written with ``Store.start_run`` and ``Store.save_dialogue``."""
    task = load_task("psy-insight")
    store = Store.open(db)
    run_id = "synthetic"
    store.start_run(run_id, task_name=task.name, task_version=task.version, task_hash=task.spec_hash,
                    task_json=task.model_dump_json(), model="openai:test", params={}, params_hash="0",
                    input=None)
    rng = random.Random(seed)
    for k in range(0, n, 10):
        did = f"s{k // 10:03d}"
        turns = [{"turn_index": i, "speaker": "Seeker", "role": "seeker", "text": f"{text} ({did}/{i})",
                  "meta": {}, "status": "flagged"} for i in range(min(10, n - k))]
        items = []
        for t in turns:
            conf = round(rng.random(), 4)
            proposal = {"kind": "turn", "run_id": run_id,
                        "task": {"name": task.name, "version": task.version, "hash": task.spec_hash},
                        "model": "openai:test", "dialogue_id": did, "turn_index": t["turn_index"],
                        "speaker": "Seeker", "role": "seeker", "language": "en", "status": "flagged",
                        "labels": {"emotion": ["Anxiety"]},
                        "texts": {"observation": "<i>worry</i> about exams"},
                        "confidence": {"emotion": {"value": conf}}, "flags": ["low_confidence:emotion"],
                        "critique": {"verdict": "unsure", "reason": "<img src=x onerror=alert(2)>",
                                     "revised": None},
                        "error": None, "raw_output": None}
            items.append({"kind": "turn", "turn_index": t["turn_index"], "priority": conf,
                          "reasons": ["low_confidence:emotion"], "proposal": proposal})
        store.save_dialogue(run_id, did, turns=turns, annotations=[], review_items=items, task=task,
                            language="en")
    store.close()
    return run_id


def labels_for(queue: ReviewQueue, item: Item, choice: int = 0) -> dict[str, Any]:
    """Valid labels for the item: option ``choice`` of every field."""
    fields = queue.fields(item)
    assert fields is not None
    return {f.name: [f.options[choice].name] if f.multi else f.options[choice].name for f in fields.labels}


def rows(db: str | Path, sql: str, **params: Any) -> list[tuple]:
    """Read the database directly (SQL with ``:name`` parameters), past the queue's API."""
    eng = create_engine(engine_url(str(db)))
    try:
        with eng.begin() as conn:
            result = conn.execute(text(sql), params)
            return [tuple(r) for r in result] if result.returns_rows else []
    finally:
        eng.dispose()


# -- fixtures ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def annotated(engine: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    db = str(tmp_path_factory.mktemp("annotated") / "base.db") if engine == "sqlite" else cluster().database()
    annotate_into(db)
    return db


@pytest.fixture
def db(annotated: str, tmp_path: Path) -> str:
    return clone_db(annotated, tmp_path)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(db: str, clock: Clock) -> ReviewQueue:
    q = ReviewQueue(Store.open(db), clock=clock)
    yield q
    q.close()


# -- queue order and leases ----------------------------------------------------------------------------------

def test_items_come_risk_first_then_lowest_confidence(queue: ReviewQueue) -> None:
    items = queue.items()
    assert len(items) >= 5, "the scripted run should flag most turns"
    claimed = []
    while (item := queue.claim("alice")) is not None:
        claimed.append(item)
    assert [i.id for i in claimed] == [i.id for i in sorted(items, key=lambda i: (i.priority, i.id))]
    first = claimed[0]
    assert (first.dialogue_id, first.turn_index) == ("risk", 1)
    assert "risk_content" in first.reasons and first.priority < -9
    assert all("risk_content" not in i.reasons for i in claimed[1:])
    assert [i.priority for i in claimed] == sorted(i.priority for i in claimed)


def test_two_reviewers_never_get_the_same_item(queue: ReviewQueue) -> None:
    a, b = queue.claim("alice"), queue.claim("bob")
    assert a is not None and b is not None and a.id != b.id
    assert queue.held("alice") == [a] and queue.held("bob") == [b]


def test_concurrent_claims_and_submits_from_eight_threads(new_db: str) -> None:
    db = new_db
    synthetic_queue(db, 200)
    got: dict[str, list[int]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def reviewer(name: str) -> None:
        q = ReviewQueue.open(db)  # its own engine and connections, like a separate process
        mine: list[int] = []
        try:
            start.wait()
            while (item := q.claim(name)) is not None:
                mine.append(item.id)
                q.submit(item.id, name, item.version, {"emotion": ["Sadness"]})
        except BaseException as e:  # reported below
            errors.append(e)
        finally:
            got[name] = mine
            q.close()

    threads = [threading.Thread(target=reviewer, args=(f"r{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    claimed = [i for ids in got.values() for i in ids]
    assert len(claimed) == 200 and len(set(claimed)) == 200, "every item claimed exactly once"
    assert sum(1 for ids in got.values() if ids) >= 2, "the reviewers really raced"
    assert rows(db, "SELECT status, COUNT(*) FROM review_items GROUP BY status") == [("done", 200)]
    assert rows(db, "SELECT COUNT(*), COUNT(DISTINCT item_id) FROM reviews") == [(200, 200)]
    assert rows(db, "SELECT COUNT(*) FROM review_audit WHERE action='claim'") == [(200,)]
    assert rows(db, "SELECT COUNT(*) FROM gold") == [(200,)]


def test_twenty_reviewers_on_postgresql_review_every_item_exactly_once(pg: Cluster) -> None:
    """20 threads, each with its own engine and connections (like 20 processes), race for 1,000 items; one claim in
    five is released and claimed again. Every item reviewed once, and no update lost: each item's version counts
    every claim, release and submit in its audit log."""
    db, n, threads_n = pg.database(), 1000, 20
    synthetic_queue(db, n)
    got: dict[str, list[int]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(threads_n)

    def reviewer(name: str, seed: int) -> None:
        rng = random.Random(seed)
        q = ReviewQueue.open(db)
        mine: list[int] = []
        try:
            start.wait()
            while (item := q.claim(name)) is not None:
                if rng.random() < 0.2:
                    q.release(item.id, name, item.version)
                    continue
                q.submit(item.id, name, item.version, {"emotion": ["Sadness"]})
                mine.append(item.id)
        except BaseException as e:  # reported below
            errors.append(e)
        finally:
            got[name] = mine
            q.close()

    threads = [threading.Thread(target=reviewer, args=(f"r{i}", i)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a reviewer hung"
    assert not errors, errors[:3]
    reviewed = [i for ids in got.values() for i in ids]
    assert len(reviewed) == n and len(set(reviewed)) == n, "every item reviewed exactly once"
    assert sum(1 for ids in got.values() if ids) >= 10, "the reviewers really raced"
    assert rows(db, "SELECT status, COUNT(*) FROM review_items GROUP BY status") == [("done", n)]
    assert rows(db, "SELECT COUNT(*), COUNT(DISTINCT item_id) FROM reviews") == [(n, n)]
    lost = rows(db, "SELECT i.id, i.version, COUNT(a.id) FROM review_items i JOIN review_audit a ON a.item_id=i.id"
                    " AND a.action IN ('claim', 'release', 'submit') GROUP BY i.id, i.version"
                    " HAVING i.version <> 1 + COUNT(a.id)")
    assert lost == [], "a version bump was lost"
    claims, releases = (rows(db, f"SELECT COUNT(*) FROM review_audit WHERE action='{a}'")[0][0]
                        for a in ("claim", "release"))
    assert releases > 0 and claims == n + releases, "every claim was either released or submitted"
    assert rows(db, "SELECT COUNT(*) FROM gold") == [(n,)]


def test_an_expired_lease_returns_the_item(queue: ReviewQueue, clock: Clock) -> None:
    a = queue.claim("alice", lease_seconds=60)
    assert a is not None
    clock.t += 30
    assert queue.claim("bob").id != a.id
    assert queue.status()["claimed"] == 2
    clock.t += 31  # alice's lease lapsed
    assert queue.status()["claimed"] == 1
    b = queue.claim("carol")
    assert b is not None and b.id == a.id and b.version == a.version + 1 and b.lease_owner == "carol"
    with pytest.raises(ReviewError, match="does not hold"):
        queue.submit(a.id, "alice", a.version, labels_for(queue, a))
    queue.submit(b.id, "carol", b.version, labels_for(queue, b))
    assert queue.get(a.id).status == "done"


def test_renew_keeps_the_lease_and_a_lapsed_lease_nobody_took_still_counts(queue: ReviewQueue,
                                                                            clock: Clock) -> None:
    a = queue.claim("alice", lease_seconds=60)
    clock.t += 50
    renewed = queue.renew(a.id, "alice", lease_seconds=60)
    assert renewed.version == a.version and renewed.lease_expires == clock.t + 60
    clock.t += 50
    assert queue.claim("bob").id != a.id  # still alice's after renewal
    clock.t += 100
    done = queue.submit(a.id, "alice", a.version, labels_for(queue, a))
    assert done.status == "done"
    with pytest.raises(ReviewError, match="does not hold"):
        queue.renew(a.id, "alice")


def test_the_default_lease_is_ten_minutes(queue: ReviewQueue, clock: Clock) -> None:
    a = queue.claim("alice")
    assert a.lease_expires == clock.t + 600
    clock.t += 599
    assert queue.claim("bob").id != a.id, "still alice's after 9:59"
    clock.t += 2
    again = queue.claim("carol")
    assert again.id == a.id and again.lease_owner == "carol", "back in the queue after 10 minutes"


def test_racing_writes_to_one_item_never_both_land(db: str, clock: Clock) -> None:
    """Two real races, each on its own item, each thread with its own engine and connections: alice submits the
    same item from two tabs at once (one review lands, the other is refused); alice submits just as her lapsed
    lease is taken over by bob (either her review lands and bob gets nothing, or bob holds it and she is refused)."""
    setup = ReviewQueue(Store.open(db), clock=clock)
    tabs, lapsed = setup.claim("alice", 60), setup.claim("alice", 60)
    clock.t += 61

    def race(*actions: Any) -> list[Any]:
        start, out = threading.Barrier(len(actions)), [None] * len(actions)

        def go(i: int) -> None:
            q = ReviewQueue(Store.open(db), clock=clock)
            try:
                start.wait()
                out[i] = actions[i](q)
            except ReviewError as e:
                out[i] = e
            finally:
                q.close()

        threads = [threading.Thread(target=go, args=(i,)) for i in range(len(actions))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
        return out

    first, second = race(
        lambda q: q.submit(tabs.id, "alice", tabs.version, labels_for(q, tabs, 0)),
        lambda q: q.submit(tabs.id, "alice", tabs.version, labels_for(q, tabs, 1)))
    landed = [r for r in (first, second) if isinstance(r, Item)]
    refused = [r for r in (first, second) if isinstance(r, ReviewError)]
    assert len(landed) == 1 and len(refused) == 1, (first, second)
    assert refused[0].fields["reason"] in ("not_held", "stale")
    reviews = setup.reviews(tabs.id)
    assert len(reviews) == 1 and setup.gold_items()[0]["labels"] == reviews[0]["labels"]

    submitted, claimed = race(
        lambda q: q.submit(lapsed.id, "alice", lapsed.version, labels_for(q, lapsed)),
        lambda q: q.claim("bob", item_id=lapsed.id))
    if isinstance(submitted, Item):
        assert claimed is None and submitted.status == "done" and setup.get(lapsed.id).status == "done"
    else:
        assert isinstance(submitted, ReviewError) and submitted.fields["reason"] == "not_held"
        assert isinstance(claimed, Item) and setup.get(lapsed.id).lease_owner == "bob"
    assert len(setup.reviews(lapsed.id)) == int(isinstance(submitted, Item))
    setup.close()


def test_a_stale_submit_is_refused_and_writes_nothing(queue: ReviewQueue, db: str) -> None:
    first = queue.claim("alice")
    queue.release(first.id, "alice", first.version)
    again = queue.claim("alice")  # the same item (highest priority), a newer version: e.g. a second tab
    assert again.id == first.id and again.version > first.version
    with pytest.raises(ReviewError, match="changed") as refused:
        queue.submit(first.id, "alice", first.version, labels_for(queue, first))
    assert refused.value.fields["reason"] == "stale"
    assert rows(db, "SELECT COUNT(*) FROM reviews") == [(0,)]
    assert queue.get(first.id).status == "claimed"
    queue.submit(again.id, "alice", again.version, labels_for(queue, again))
    assert rows(db, "SELECT COUNT(*) FROM reviews") == [(1,)]


def test_skip_puts_the_item_last_for_that_reviewer_release_does_not(queue: ReviewQueue) -> None:
    x = queue.claim("alice")
    queue.skip(x.id, "alice", x.version)
    assert queue.get(x.id).status == "pending"
    seen = []
    while (item := queue.claim("alice")) is not None:
        seen.append(item.id)
    assert seen[-1] == x.id and x.id not in seen[:-1], "the skipped item comes back only when nothing else is left"
    queue.release(x.id, "alice", queue.get(x.id).version)
    y = queue.claim("bob")
    assert y.id == x.id, "a skipped item stays in the queue for others"
    queue.release(y.id, "bob", y.version)
    assert queue.claim("bob").id == x.id, "a released item comes back, also to the one who released it"
    with pytest.raises(ReviewError):
        queue.skip(x.id, "alice", x.version)


def test_invalid_labels_are_refused_and_the_lease_kept(queue: ReviewQueue) -> None:
    item = queue.claim("alice")
    good = labels_for(queue, item)
    field = next(iter(good))
    for bad in ({field: ["NotAnOption"]}, {}, {**good, "strategy": ["Question"]}, {field: "Anxiety"}):
        with pytest.raises(ReviewError, match="labels refused") as refused:
            queue.submit(item.id, "alice", item.version, bad)
        assert refused.value.fields["reason"] == "invalid"
    assert queue.get(item.id).lease_owner == "alice"
    assert queue.submit(item.id, "alice", item.version, good).status == "done"


def test_reopening_a_review_makes_the_models_record_final_again(queue: ReviewQueue, db: str) -> None:
    item = queue.claim("alice")
    queue.submit(item.id, "alice", item.version, labels_for(queue, item, choice=2))
    key = {"r": item.run_id, "d": item.dialogue_id, "i": item.turn_index}
    final = "SELECT status FROM annotations WHERE run_id=:r AND dialogue_id=:d AND turn_index=:i AND is_final=1" \
            " AND kind='turn'"
    assert rows(db, final, **key) == [("reviewed",)]
    again = queue.reopen(item.id, "alice")
    assert rows(db, final, **key) == [(item.proposal["status"],)]
    assert rows(db, "SELECT status FROM turns WHERE run_id=:r AND dialogue_id=:d AND turn_index=:i", **key) == \
        [(item.proposal["status"],)]
    assert queue.gold_items() == [] and queue.status()["stranded"] == 0
    queue.submit(again.id, "alice", again.version, labels_for(queue, item, choice=1))
    assert rows(db, final, **key) == [("reviewed",)] and len(queue.gold_items()) == 1


# -- outcomes: done, gold, reviewed turn, adjudication -------------------------------------------------------

def test_a_reviewed_item_becomes_gold_and_a_final_reviewed_record(queue: ReviewQueue, db: str,
                                                                    tmp_path: Path) -> None:
    item = queue.claim("alice")
    labels = labels_for(queue, item, choice=2)
    done = queue.submit(item.id, "alice", item.version, labels, note="the critic was right")
    assert done.status == "done" and done.agreement == 1.0
    key = {"r": item.run_id, "d": item.dialogue_id, "i": item.turn_index}
    assert rows(db, "SELECT status FROM turns WHERE run_id=:r AND dialogue_id=:d AND turn_index=:i", **key) == \
        [("reviewed",)]
    finals = rows(db, "SELECT is_final, status, record_json FROM annotations WHERE run_id=:r AND"
                      " dialogue_id=:d AND turn_index=:i AND kind='turn' AND valid=1 ORDER BY attempt", **key)
    assert [(f, s) for f, s, _ in finals] == [(0, "flagged"), (1, "reviewed")], "the model's record is kept"
    reviewed = json.loads(finals[-1][2])
    assert reviewed["labels"] == labels and reviewed["reviewer"] == "alice"
    assert reviewed["texts"] == item.proposal["texts"]
    assert reviewed["confidence"] == item.proposal["confidence"]
    gold = queue.gold_items("psy-insight")
    assert [(g["dialogue_id"], g["turn_index"], g["labels"], g["source"], g["reviewer"]) for g in gold] == \
        [(item.dialogue_id, item.turn_index, labels, "review", "alice")]
    assert gold[0]["text"] == RISK_TEXT and gold[0]["role"] == "seeker"
    assert queue.gold_items("another-task") == []
    out = tmp_path / "labels.jsonl"
    export(db, "jsonl", out, run_id=item.run_id)
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    mine = [r for r in exported
            if r["dialogue_id"] == item.dialogue_id and r.get("turn_index") == item.turn_index]
    assert [r["status"] for r in mine] == ["reviewed"] and mine[0]["labels"] == labels
    assert Store.open(db).counts(item.run_id)["reviewed"] == 1


def test_two_agreeing_reviews_make_gold(queue: ReviewQueue, db: str) -> None:
    assert queue.require_reviews(2) == len(queue.items())
    a = queue.claim("alice")
    labels = labels_for(queue, a, choice=1)
    after_one = queue.submit(a.id, "alice", a.version, labels)
    assert after_one.status == "pending" and after_one.lease_owner is None
    assert queue.gold_items() == []
    assert all(i.id != a.id for i in iter(lambda: queue.claim("alice"), None)), "alice never reviews it twice"
    b = queue.claim("bob")
    assert b.id == a.id
    done = queue.submit(b.id, "bob", b.version, labels)
    assert done.status == "done" and done.agreement == 1.0
    assert [(g["reviewer"], g["source"]) for g in queue.gold_items()] == [("alice,bob", "review")]


def test_disagreeing_reviews_go_to_adjudication(queue: ReviewQueue, db: str) -> None:
    queue.require_reviews(2)
    a = queue.claim("alice")
    queue.submit(a.id, "alice", a.version, labels_for(queue, a, choice=0))
    b = queue.claim("bob")
    assert b.id == a.id
    split = queue.submit(b.id, "bob", b.version, labels_for(queue, b, choice=1))
    assert split.status == "adjudication" and split.agreement == 0.0
    assert queue.gold_items() == [] and [i.id for i in queue.items("adjudication")] == [a.id]
    assert queue.claim("carol").id != a.id, "an item in adjudication is not offered for review"
    status = queue.status()
    assert status["adjudication"] == 1 and status["reviewers"] == {"alice": 1, "bob": 1}
    assert set(status["agreement"]) == {"emotion"} and status["agreement"]["emotion"] is not None
    assert status["agreement"]["emotion"] < 0.5
    with pytest.raises(ReviewError, match="changed"):
        queue.adjudicate(a.id, "carol", labels_for(queue, a, choice=1), version=split.version - 1)
    settled = queue.adjudicate(a.id, "carol", labels_for(queue, a, choice=1), note="B is right")
    assert settled.status == "done"
    assert [(g["source"], g["reviewer"], g["labels"]) for g in queue.gold_items()] == \
        [("adjudication", "carol", labels_for(queue, a, choice=1))]
    with pytest.raises(ReviewError, match="not awaiting adjudication"):
        queue.adjudicate(a.id, "carol", labels_for(queue, a))


def test_require_reviews_raises_the_count_of_open_items_only(queue: ReviewQueue, db: str) -> None:
    done = queue.claim("alice")
    queue.submit(done.id, "alice", done.version, labels_for(queue, done))
    open_items = len(queue.items("pending"))
    assert queue.require_reviews(2, by="lead") == open_items, "a settled item keeps its one review"
    assert queue.get(done.id).required_reviews == 1 and queue.get(done.id).status == "done"
    a = queue.claim("alice")
    after_one = queue.submit(a.id, "alice", a.version, labels_for(queue, a))
    assert after_one.status == "pending" and after_one.required_reviews == 2
    assert queue.require_reviews(1) == open_items - 1, "not below the reviews an item already has"
    assert queue.get(a.id).required_reviews == 2 and queue.get(a.id).status == "pending"
    assert queue.require_reviews(3, run_id="no-such-run") == 0
    assert queue.require_reviews(3, run_id=a.run_id) == open_items
    log = [e for e in queue.audit() if e["action"] == "require_reviews"]
    assert [(e["reviewer"], e["after"]["required_reviews"], e["after"]["items"]) for e in log] == [
        ("lead", 2, open_items), ("admin", 1, open_items - 1), ("admin", 3, 0), ("admin", 3, open_items)]
    for bad in (0, -1, 1.5):
        with pytest.raises(ReviewError, match="at least 1"):
            queue.require_reviews(bad)  # type: ignore[arg-type]


# -- audit, blind mode, reviewers, export --------------------------------------------------------------------

def test_every_action_is_in_the_append_only_audit_log(queue: ReviewQueue, db: str, clock: Clock) -> None:
    a = queue.claim("alice")
    queue.renew(a.id, "alice")
    queue.release(a.id, "alice", a.version)
    b = queue.claim("alice")
    queue.skip(b.id, "alice", b.version)
    c = queue.claim("bob")
    queue.reveal(c.id, "bob", c.version, labels_for(queue, c))
    queue.submit(c.id, "bob", c.version, labels_for(queue, c), note="ok")
    log = queue.audit(a.id)
    assert [(e["action"], e["reviewer"]) for e in log] == [
        ("claim", "alice"), ("renew", "alice"), ("release", "alice"), ("claim", "alice"), ("skip", "alice"),
        ("claim", "bob"), ("reveal", "bob"), ("submit", "bob")]
    assert log[0]["before"]["status"] == "pending" and log[0]["after"]["lease_owner"] == "alice"
    assert log[2]["before"]["version"] + 1 == log[2]["after"]["version"]
    assert log[-1]["after"]["status"] == "done" and log[-1]["after"]["note"] == "ok"
    assert log[-1]["after"]["labels"] == labels_for(queue, c)
    assert log[-1]["after"]["decision"] in ("accept", "correct")
    assert all(e["at"] for e in log)
    for sql in ("UPDATE review_audit SET reviewer='mallory'", "DELETE FROM review_audit"):
        with pytest.raises(DBAPIError, match="append-only"):
            rows(db, sql)
    assert len(queue.audit(a.id)) == len(log)


def test_blind_claim_hides_the_proposal_until_reveal(queue: ReviewQueue) -> None:
    item = queue.claim("alice", include_proposal=False)
    assert item.proposal is None
    assert queue.fields(item) is not None
    mine = labels_for(queue, item)
    shown = queue.reveal(item.id, "alice", item.version, mine)
    assert shown.proposal is not None and shown.proposal["labels"]
    assert queue.audit(item.id)[-1]["after"]["labels"] == mine
    with pytest.raises(ReviewError):
        queue.reveal(item.id, "bob", item.version, mine)


def test_reviewer_tokens_are_stored_hashed_and_compared(queue: ReviewQueue, db: str) -> None:
    token = queue.add_reviewer("alice")
    assert queue.reviewer_for_token(token) == "alice"
    assert queue.reviewer_for_token(token + "x") is None and queue.reviewer_for_token("") is None
    assert rows(db, "SELECT COUNT(*) FROM reviewers WHERE token_hash=:t", t=token) == [(0,)]
    assert rows(db, "SELECT COUNT(*) FROM review_audit WHERE after_json LIKE :t", t=f"%{token}%") == [(0,)]
    if not db.startswith("postgresql://"):
        files = [Path(db), Path(db + "-wal")]
        assert all(token.encode() not in f.read_bytes() for f in files if f.exists())
    with pytest.raises(ReviewError, match="exists"):
        queue.add_reviewer("alice")
    new = queue.add_reviewer("alice", replace=True)
    assert queue.reviewer_for_token(new) == "alice" and queue.reviewer_for_token(token) is None
    assert [e["action"] for e in queue.audit()] == ["add_reviewer", "replace_token"]
    with pytest.raises(ReviewError):
        queue.add_reviewer("  ")


def test_export_reviews_writes_reviews_and_gold(queue: ReviewQueue, tmp_path: Path) -> None:
    for name in ("alice", "bob"):
        item = queue.claim(name)
        queue.submit(item.id, name, item.version, labels_for(queue, item), note=f"by {name}")
    counts = queue.export_reviews(tmp_path / "reviews.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "reviews.jsonl").read_text().splitlines()]
    assert counts == {"reviews": 2, "gold": 2}
    assert Counter(x["type"] for x in lines) == {"review": 2, "gold": 2}
    assert {x["note"] for x in lines if x["type"] == "review"} == {"by alice", "by bob"}
    assert all(x["labels"] for x in lines)


# -- CLI -----------------------------------------------------------------------------------------------------

def test_review_cli_status_add_reviewer_export_and_serve_refusal(db: str, tmp_path: Path) -> None:
    runner = CliRunner()
    status = runner.invoke(app, ["review", "status", "--db", db])
    assert status.exit_code == 0, status.output
    assert "pending" in status.output and "adjudication" in status.output
    added = runner.invoke(app, ["review", "add-reviewer", "dana", "--db", str(db)])
    assert added.exit_code == 0
    token = added.output.strip()
    with ReviewQueue.open(db) as q:
        assert q.reviewer_for_token(token) == "dana"
        item = q.claim("dana")
        q.submit(item.id, "dana", item.version, labels_for(q, item))
    out = tmp_path / "r.jsonl"
    exported = runner.invoke(app, ["review", "export", "--db", str(db), "--out", str(out)])
    assert exported.exit_code == 0 and "1 reviews and 1 gold" in exported.output
    assert len(out.read_text().splitlines()) == 2
    fresh = tmp_path / "fresh.db"
    refused = runner.invoke(app, ["review", "serve", "--db", str(fresh), "--host", "0.0.0.0"],
                            env={"AUTOLABEL_REVIEW_TOKEN": ""})
    assert isinstance(refused.exception, ReviewError) and "without a token" in str(refused.exception)
