"""A rating field in the review UI (issue 19, item 1): a reviewer rates with a digit key, in headless Chromium.

A 1-5 rating field is a single choice among its points, so the UI's digit keys pick the point of the same
number; the anchors travel with the options (their descriptions)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from autolabel import Annotator, Dialogue, Turn
from autolabel.review.queue import ReviewQueue
from autolabel.review.web import create_app
from tests.fake_openai import FakeOpenAIServer, is_critique
from tests.test_web_browser import TOKEN, LiveServer, browser, page  # noqa: F401 - pytest fixtures

SPEC = """\
name: warmth-rating
version: 1
roles:
  client: {speakers: [Client]}
  counselor: {speakers: [Counselor]}
labels:
  - name: warmth
    scope: turn
    roles: [counselor]
    scale:
      1: cold or dismissive
      2: polite but distant
      3: friendly
      4: warm, attentive
      5: very warm, clearly caring
"""


def replies(body: dict[str, Any]) -> str:
    if is_critique(body):
        return json.dumps({"reason": "Hard to tell.", "verdict": "unsure", "revised": None})  # every turn flagged
    return json.dumps({"explanation": "Kind words.", "warmth": "R2"})


def test_a_reviewer_rates_with_a_digit(browser: Any, page: Any, tmp_path: Path) -> None:  # noqa: F811
    from playwright.sync_api import expect

    spec = tmp_path / "warmth.yaml"
    spec.write_text(SPEC)
    db = tmp_path / "review.db"
    dialogue = Dialogue(id="w1", turns=(Turn(index=0, speaker="Counselor", text="I'm glad you came today."),
                                        Turn(index=1, speaker="Client", text="Thanks.")))
    with FakeOpenAIServer(replies=replies) as srv:
        list(Annotator(str(spec), model="openai:test", base_url=srv.base_url, db=db).annotate_many([dialogue]))

    with LiveServer(create_app(db, token=TOKEN)) as url:
        page.goto(f"{url}/?token={TOKEN}&reviewer=alice")
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(r"/item/\d+$"))
        first = page.url
        field = page.locator('fieldset.field[data-field="warmth"]')
        buttons = field.locator("button.option")
        expect(buttons).to_have_count(5)
        assert [b.get_attribute("data-option") for b in buttons.all()] == ["1", "2", "3", "4", "5"]
        expect(buttons.nth(3)).to_have_attribute("title", "warm, attentive")  # the anchor of point 4
        expect(buttons.nth(1)).to_have_attribute("aria-pressed", "true")  # the model's 2, proposed
        page.keyboard.press("4")
        expect(buttons.nth(3)).to_have_attribute("aria-pressed", "true")
        expect(buttons.nth(1)).to_have_attribute("aria-pressed", "false")
        page.keyboard.press("Enter")
        page.wait_for_url(lambda u: u != first)  # submitted: the next page
    with ReviewQueue.open(db) as q:
        gold = q.gold_items()
    assert [g["labels"] for g in gold] == [{"warmth": "4"}]
    assert page.problems == []
