"""The review workbench's store-level rules (issue 17): undo and history, skipped items that come back, items no
eligible reviewer can take, the adjudicator's own reviews and note."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autolabel import ReviewError
from autolabel.cli import app
from autolabel.persistence.store import Store
from autolabel.review.queue import ReviewQueue
from tests.test_review import Clock, rows, synthetic_queue

runner = CliRunner()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    db = tmp_path / "wb.db"
    synthetic_queue(db, 3)
    return db


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(db: Path, clock: Clock) -> ReviewQueue:
    q = ReviewQueue(Store.open(db), clock=clock)
    yield q
    q.close()


def turn_status(db: Path, item_id: int) -> str:
    ((status,),) = rows(db, "SELECT t.status FROM turns t JOIN review_items i ON i.run_id=t.run_id AND"
                            " i.dialogue_id=t.dialogue_id AND i.turn_index=t.turn_index WHERE i.id=:i", i=item_id)
    return status


# -- undo and history ----------------------------------------------------------------------------------------

def test_reopening_a_review_takes_back_its_gold_and_a_new_answer_replaces_it(queue: ReviewQueue, db: Path) -> None:
    item = queue.claim("alice")
    queue.submit(item.id, "alice", item.version, {"emotion": ["Fear"]})
    assert turn_status(db, item.id) == "reviewed" and len(queue.gold_items()) == 1
    (last,) = queue.history("alice")
    assert (last["item_id"], last["labels"], last["reopenable"]) == (item.id, {"emotion": ["Fear"]}, True)

    again = queue.reopen(item.id, "alice")
    assert again.status == "claimed" and again.lease_owner == "alice" and again.version > item.version
    assert queue.gold_items() == [] and queue.reviews(item.id) == []
    assert turn_status(db, item.id) == "flagged", "the turn is the model's again until the new answer"
    finals = rows(db, "SELECT status FROM annotations WHERE is_final=1 AND dialogue_id=:d AND turn_index=:t",
                  d=item.dialogue_id, t=item.turn_index)
    assert ("reviewed",) not in finals, "the reviewed record is no longer final"
    assert queue.claim("bob", item_id=item.id) is None, "the reopened item is alice's lease: nobody else gets it"

    queue.submit(again.id, "alice", again.version, {"emotion": ["Anger", "Shame"]})
    (gold,) = queue.gold_items()
    assert gold["labels"] == {"emotion": ["Anger", "Shame"]} and turn_status(db, item.id) == "reviewed"
    reopen = [a for a in queue.audit(item.id) if a["action"] == "reopen"]
    assert len(reopen) == 1 and reopen[0]["before"]["labels"] == {"emotion": ["Fear"]}
    assert [a["action"] for a in queue.audit(item.id)] == ["claim", "submit", "reopen", "submit"]


def test_a_reopened_item_keeps_its_lease_rules_and_adjudicated_items_stay_settled(queue: ReviewQueue,
                                                                                 clock: Clock) -> None:
    queue.require_reviews(2)
    a = queue.claim("alice")
    queue.submit(a.id, "alice", a.version, {"emotion": ["Fear"]})
    b = queue.claim("bob")
    assert b.id == a.id, "the item waits for its second review"
    with pytest.raises(ReviewError, match="bob holds item"):
        queue.reopen(a.id, "alice")
    clock.t += 10_000  # bob's lease lapses: alice may take her answer back
    assert queue.reopen(a.id, "alice").lease_owner == "alice"
    with pytest.raises(ReviewError, match="does not hold|changed"):
        queue.submit(b.id, "bob", b.version, {"emotion": ["Fear"]})
    with pytest.raises(ReviewError, match="has not reviewed"):
        queue.reopen(a.id, "bob")
    again = queue.get(a.id)
    queue.submit(a.id, "alice", again.version, {"emotion": ["Fear"]})
    b = queue.claim("bob")
    queue.submit(b.id, "bob", b.version, {"emotion": ["Anger"]})
    assert queue.get(a.id).status == "adjudication"
    queue.adjudicate(a.id, "carol", {"emotion": ["Fear"]}, note="fear fits")
    with pytest.raises(ReviewError, match="settled by adjudication"):
        queue.reopen(a.id, "alice")
    assert [h["reopenable"] for h in queue.history("alice")] == [False]


def test_undo_releases_the_current_item_and_reopens_the_last_review(queue: ReviewQueue) -> None:
    first = queue.claim("alice")
    queue.submit(first.id, "alice", first.version, {"emotion": ["Fear"]})
    current = queue.claim("alice")
    back = queue.undo("alice", current=(current.id, current.version))
    assert back.id == first.id and back.lease_owner == "alice"
    assert queue.get(current.id).status == "pending"
    with pytest.raises(ReviewError, match="nothing to undo"):
        queue.undo("bob")


# -- skipped items -------------------------------------------------------------------------------------------

def test_a_skipped_item_comes_back_when_nothing_else_is_left(queue: ReviewQueue) -> None:
    queue.require_reviews(2)
    x = queue.claim("alice")
    queue.skip(x.id, "alice", x.version)
    order = []
    while (item := queue.claim("alice")) is not None:
        order.append(item.id)
        queue.submit(item.id, "alice", item.version, {"emotion": ["Fear"]})
    assert order[-1] == x.id and len(order) == 3, "the skipped item comes last, not never"
    assert queue.status()["stranded"] == 3, "alice, the only reviewer so far, reviewed them all: a second is needed"


def test_status_counts_items_no_eligible_reviewer_can_take_and_a_skip_can_be_taken_back(queue: ReviewQueue,
                                                                                        db: Path) -> None:
    queue.require_reviews(3)
    for reviewer in ("alice", "bob"):
        while (item := queue.claim(reviewer)) is not None:
            queue.submit(item.id, reviewer, item.version, {"emotion": ["Fear"]})
    s = queue.status()
    assert s["stranded"] == 3 and s["pending"] == 3, "everyone known reviewed them: a third reviewer is needed"
    r = runner.invoke(app, ["review", "status", "--db", str(db)])
    assert "3 item(s) no reviewer can take" in " ".join(r.output.split())
    y = queue.claim("carol")
    queue.skip(y.id, "carol", y.version)
    assert queue.status()["stranded"] == 0 and queue.status()["skipped"] == 1, "carol can take them all"
    queue.unskip(y.id, "carol")
    assert [a["action"] for a in queue.audit(y.id)][-1] == "unskip"
    assert queue.status()["skipped"] == 0 and queue.claim("carol").id == y.id
    with pytest.raises(ReviewError, match="did not skip"):
        queue.unskip(y.id, "dave")


# -- adjudication --------------------------------------------------------------------------------------------

def test_an_adjudicator_who_reviewed_the_item_must_force_and_the_note_is_kept(queue: ReviewQueue,
                                                                              tmp_path: Path) -> None:
    queue.require_reviews(2)
    for reviewer, labels in (("alice", ["Fear"]), ("bob", ["Anger"])):
        item = queue.claim(reviewer)
        queue.submit(item.id, reviewer, item.version, {"emotion": labels})
    (waiting,) = queue.items("adjudication")
    with pytest.raises(ReviewError, match="alice reviewed item .* herself|took part"):
        queue.adjudicate(waiting.id, "alice", {"emotion": ["Fear"]})
    done = queue.adjudicate(waiting.id, "alice", {"emotion": ["Fear"]}, note="context: exam fear", force=True)
    assert done.status == "done"
    (gold,) = queue.gold_items()
    assert gold["note"] == "context: exam fear" and gold["source"] == "adjudication"
    settle = [a for a in queue.audit(waiting.id) if a["action"] == "adjudicate"]
    assert settle[0]["after"]["forced"] is True
    out = tmp_path / "reviews.jsonl"
    queue.export_reviews(out)
    exported = [json.loads(line) for line in out.read_text().splitlines() if '"gold"' in line]
    assert exported[0]["note"] == "context: exam fear"
