"""Rating fields in the review UI (issue 19, item 1), in headless Chromium: the anchors are on the page next to
their points (not only in a tooltip), and a digit picks the point of that number — on a 0-4 scale ``0`` is the
lowest point and ``4`` the highest, in review and in adjudication. Other fields keep their keys by position."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from autolabel import Annotator, Dialogue, Turn
from autolabel.review.queue import ReviewQueue
from autolabel.review.web import create_app
from tests.fake_openai import FakeOpenAIServer, is_critique
from tests.test_web_browser import TOKEN, LiveServer, browser  # noqa: F401 - pytest fixture

ANCHORS = {0: "no attempt to understand", 1: "shallow, occasional attempts", 2: "tries, with moderate success",
           3: "understands beyond what was said", 4: "deep understanding, also of what is implied"}
SPEC = """\
name: empathy-0-4
version: 1
roles:
  client: {speakers: [Client]}
  counselor: {speakers: [Counselor]}
labels:
  - name: stance
    scope: turn
    roles: [counselor]
    options: [question, reflection, advice]
  - name: empathy
    scope: turn
    roles: [counselor]
    scale:
""" + "".join(f"      {p}: {a}\n" for p, a in ANCHORS.items())


def replies(body: dict[str, Any]) -> str:
    if is_critique(body):
        return json.dumps({"reason": "Hard to tell.", "verdict": "unsure", "revised": None})  # every turn flagged
    return json.dumps({"explanation": "A reflection.", "stance": "B", "empathy": "R1"})  # B: reflection


@pytest.fixture(scope="module")
def annotated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ratings")
    spec = root / "empathy.yaml"
    spec.write_text(SPEC)
    db = root / "review.db"
    dialogue = Dialogue(id="e1", turns=(Turn(index=0, speaker="Counselor", text="It sounds like a hard week."),
                                        Turn(index=1, speaker="Client", text="It was.")))
    with FakeOpenAIServer(replies=replies) as srv:
        list(Annotator(str(spec), model="openai:test", base_url=srv.base_url, db=db).annotate_many([dialogue]))
    return db


@pytest.fixture
def db(annotated: Path, tmp_path: Path) -> Path:
    target = tmp_path / "review.db"
    target.write_bytes(annotated.read_bytes())
    return target


@pytest.fixture
def page(browser: Any) -> Any:  # noqa: F811
    context = browser.new_context(viewport={"width": 1366, "height": 850})
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.problems = []
    page.on("pageerror", lambda e: page.problems.append(f"pageerror: {e}"))
    yield page
    context.close()


def check_scale(field: Any) -> None:
    """The 0-4 field: five points keyed 0-4, each with its anchor written out and in view."""
    from playwright.sync_api import expect

    buttons = field.locator("button.option")
    expect(buttons).to_have_count(5)
    assert [b.get_attribute("data-option") for b in buttons.all()] == ["0", "1", "2", "3", "4"]
    assert [b.locator("kbd").inner_text() for b in buttons.all()] == ["0", "1", "2", "3", "4"]
    anchors = field.locator(".anchor")
    assert anchors.all_inner_texts() == list(ANCHORS.values())
    field.scroll_into_view_if_needed()
    for i in range(5):
        expect(anchors.nth(i)).to_be_in_viewport()


def test_the_anchors_are_in_view_and_a_digit_picks_its_point(db: Path, page: Any) -> None:
    from playwright.sync_api import expect

    with LiveServer(create_app(db, token=TOKEN)) as url:
        page.goto(f"{url}/?token={TOKEN}&reviewer=alice")
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(r"/item/\d+$"))
        first = page.url
        stance = page.locator('fieldset.field[data-field="stance"] button.option')
        assert [b.locator("kbd").inner_text() for b in stance.all()] == ["1", "2", "3"]  # by position, as before
        field = page.locator('fieldset.field[data-field="empathy"]')
        check_scale(field)
        expect(page.locator("#proposal")).to_contain_text(ANCHORS[1])  # the model's point, with its anchor
        points = field.locator("button.option")
        expect(points.nth(1)).to_have_attribute("aria-pressed", "true")  # the model's 1, proposed
        page.keyboard.press("f")  # to the rating field
        page.keyboard.press("0")
        expect(points.nth(0)).to_have_attribute("aria-pressed", "true")
        expect(points.nth(1)).to_have_attribute("aria-pressed", "false")
        expect(page.locator("#option-help")).to_have_text(f"0: {ANCHORS[0]}")
        page.keyboard.press("4")
        expect(points.nth(4)).to_have_attribute("aria-pressed", "true")
        expect(points.nth(0)).to_have_attribute("aria-pressed", "false")
        page.keyboard.press("Enter")
        page.wait_for_url(lambda u: u != first)
    with ReviewQueue.open(db) as q:
        assert [g["labels"] for g in q.gold_items()] == [{"stance": "reflection", "empathy": "4"}]
    assert page.problems == []


def test_an_adjudicator_picks_point_zero_with_its_digit(db: Path, page: Any) -> None:
    from playwright.sync_api import expect

    with ReviewQueue.open(db) as q:
        q.require_reviews(2)
        for reviewer, point in (("alice", "2"), ("bob", "3")):
            item = q.claim(reviewer)
            assert item is not None
            q.submit(item.id, reviewer, item.version, {"stance": "reflection", "empathy": point})
        (waiting,) = q.items("adjudication")
    with LiveServer(create_app(db, token=TOKEN)) as url:
        page.goto(f"{url}/adjudicate/{waiting.id}?token={TOKEN}&reviewer=carol")
        field = page.locator('fieldset.field[data-field="empathy"]')
        check_scale(field)
        page.keyboard.press("f")
        page.keyboard.press("0")
        expect(field.locator("button.option").nth(0)).to_have_attribute("aria-pressed", "true")
        page.keyboard.press("Enter")
        page.wait_for_url(lambda u: "/adjudicate/" not in u or str(waiting.id) not in u)
    with ReviewQueue.open(db) as q:
        assert [(g["labels"], g["source"]) for g in q.gold_items()] == [
            ({"stance": "reflection", "empathy": "0"}, "adjudication")]
    assert page.problems == []
