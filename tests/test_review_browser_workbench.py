"""The review workbench in headless Chromium, keyboard only (issue 17): undo after submit changes gold, history
reopens and takes a skip back, a skipped item is reviewed in the end, the lease-lost message is inside the
viewport at 1366×850, guidance is in view, dark mode and a 390 px top bar, focus kept in the help dialog, Tab left
to the browser, the browse view, and an adjudicator who reviewed the item."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from autolabel.review.queue import ReviewQueue
from autolabel.review.web import create_app
from tests.test_review import synthetic_queue
from tests.test_web_browser import ARTIFACTS, LiveServer, browser, item_id, pressed  # noqa: F401  (fixture)

TOKEN = "workbench-token"
LAPTOP = {"width": 1366, "height": 850}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    db = tmp_path / "wb.db"
    synthetic_queue(db, 3)
    return db


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:  # noqa: F811
    ctx = browser.new_context(viewport=LAPTOP)
    ctx.problems = []
    yield ctx
    ctx.close()


def open_page(context: Any, url: str, reviewer: str = "alice") -> Any:
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.on("pageerror", lambda e: context.problems.append(f"pageerror: {e}"))
    page.on("dialog", lambda d: (context.problems.append(f"dialog: {d.message}"), d.dismiss()))
    page.goto(f"{url}/?token={TOKEN}&reviewer={reviewer}")
    return page


def start(page: Any) -> int:
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/item/\d+$"))
    return item_id(page)


def moved_from(page: Any, current: int) -> None:
    page.wait_for_url(lambda u: not u.endswith(f"/item/{current}"))


def in_view(page: Any, selector: str) -> bool:
    box = page.locator(selector).bounding_box()
    size = page.viewport_size
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= size["height"] \
        and box["x"] >= 0 and box["x"] + box["width"] <= size["width"]


def test_backspace_undoes_a_submit_and_the_new_answer_becomes_gold(context: Any, db: Path) -> None:
    from playwright.sync_api import expect

    with LiveServer(create_app(db, token=TOKEN)) as url:
        page = open_page(context, url)
        first = start(page)
        expect(page.locator("#p-mine")).to_have_text("0")
        expect(page.locator("#p-total")).to_have_text("3")
        page.keyboard.press("Enter")  # the model's labels, submitted at once: the wrong key
        moved_from(page, first)
        second = item_id(page)
        expect(page.locator("#p-mine")).to_have_text("1")
        with ReviewQueue.open(db) as q:
            assert q.gold_items()[0]["labels"] == {"emotion": ["Anxiety"]}

        page.keyboard.press("Backspace")
        page.wait_for_url(re.compile(rf"/item/{first}$"))
        with ReviewQueue.open(db) as q:
            assert q.gold_items() == [], "the reopened answer is no longer gold"
            assert q.get(second).status == "pending", "the item held when undoing went back"
        options = [b.get_attribute("data-option") for b in page.locator("fieldset.field.active button.option").all()]
        page.keyboard.press(str(options.index("Fear") + 1))  # one key replaces the model's Anxiety
        assert pressed(page.locator("fieldset.field.active")) == ["Fear"]
        page.keyboard.press("Enter")
        moved_from(page, first)
        with ReviewQueue.open(db) as q:
            (gold,) = q.gold_items()
            assert gold["labels"] == {"emotion": ["Fear"]}
            assert [a["action"] for a in q.audit(first)] == ["claim", "submit", "reopen", "submit"]
    assert context.problems == []


def test_history_reopens_a_review_and_takes_a_skip_back(context: Any, db: Path) -> None:
    from playwright.sync_api import expect

    with LiveServer(create_app(db, token=TOKEN)) as url:
        page = open_page(context, url)
        first = start(page)
        page.keyboard.press("a")
        moved_from(page, first)
        skipped = item_id(page)
        page.keyboard.press("s")
        moved_from(page, skipped)
        page.keyboard.press("h")
        page.wait_for_url(re.compile(r"/history$"))
        expect(page.locator("#history li")).to_have_count(1)
        expect(page.locator("#skipped li")).to_have_count(1)
        page.locator("[data-unskip]").click()
        expect(page.locator("#message")).to_contain_text("Taken back")
        with ReviewQueue.open(db) as q:
            assert [a["action"] for a in q.audit(skipped)][-1] == "unskip"
        page.keyboard.press("1")
        page.wait_for_url(re.compile(rf"/item/{first}$"))
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "review-reopened.png"))
    assert context.problems == []


def test_a_skipped_item_is_reviewed_in_the_end(context: Any, db: Path) -> None:
    from playwright.sync_api import expect

    with LiveServer(create_app(db, token=TOKEN)) as url:
        page = open_page(context, url)
        skipped = start(page)
        page.keyboard.press("s")
        order = []
        current = skipped
        for _ in range(3):
            moved_from(page, current)
            current = item_id(page)
            order.append(current)
            page.keyboard.press("a")
        moved_from(page, current)
        expect(page.locator("h1")).to_have_text("Nothing left to review")
    assert order[-1] == skipped and len(set(order)) == 3
    with ReviewQueue.open(db) as q:
        assert q.get(skipped).status == "done" and q.status()["pending"] == 0


def test_a_lost_lease_is_said_in_view_with_what_happens_next(context: Any, db: Path) -> None:
    from playwright.sync_api import expect

    with LiveServer(create_app(db, token=TOKEN, lease_seconds=1)) as url:
        page = open_page(context, url)
        mine = start(page)
        time.sleep(1.2)  # alice's one-second lease lapses; bob takes the item over
        with ReviewQueue.open(db) as q:
            assert q.claim("bob", item_id=mine) is not None
        page.keyboard.press("Enter")
        message = page.locator("#message")
        expect(message).to_contain_text(f"alice does not hold item {mine}")
        expect(message).to_contain_text("Press Enter for your next item")
        assert in_view(page, "#message"), "the message is on screen, not below the fold"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "review-lease-lost.png"))
        page.keyboard.press("Enter")
        moved_from(page, mine)
        assert item_id(page) != mine
    with ReviewQueue.open(db) as q:
        assert q.reviews(mine) == [], "nothing of alice's was stored"


def test_guidance_is_in_view_and_tab_stays_with_the_browser(context: Any, db: Path) -> None:
    from playwright.sync_api import expect

    with LiveServer(create_app(db, token=TOKEN)) as url:
        page = open_page(context, url)
        start(page)
        expect(page.locator(".reasons li")).to_have_text("low model confidence in emotion")
        expect(page.locator("fieldset.field.active .field-desc")).not_to_be_empty()
        expect(page.locator("fieldset.field.active .rule")).to_have_text("up to 3")
        for selector in (".reasons", "fieldset.field.active legend", "#submit"):
            assert in_view(page, selector), selector
        second = page.locator("fieldset.field.active button.option").nth(1)
        second.focus()  # the focused option, with its description
        expect(page.locator("#option-help")).to_have_text(f'{second.get_attribute("data-option")}: '
                                                          f'{second.get_attribute("title")}')
        page.locator("body").focus()

        page.keyboard.press("Tab")  # the browser's: focus moves to a control, no field switch
        assert page.evaluate("document.activeElement.tagName") in ("BUTTON", "A", "INPUT")
        page.keyboard.press("g")
        expect(page.locator("#guidelines")).to_be_visible()
        expect(page.locator("#guidelines")).to_contain_text("counseling dialogues")
        page.keyboard.press("Escape")
        expect(page.locator("#guidelines")).to_be_hidden()

        page.keyboard.press("?")
        expect(page.locator("#help")).to_be_visible()
        for _ in range(4):
            page.keyboard.press("Tab")
            assert page.evaluate("document.getElementById('help').contains(document.activeElement)"), \
                "focus stays in the help dialog"
        page.keyboard.press("Escape")
        expect(page.locator("#help")).to_be_hidden()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "review-item.png"))
    assert context.problems == []


def test_dark_mode_a_390px_top_bar_and_a_favicon(browser: Any, db: Path) -> None:  # noqa: F811
    from playwright.sync_api import expect

    ctx = browser.new_context(viewport={"width": 390, "height": 844}, color_scheme="dark")
    try:
        with LiveServer(create_app(db, token=TOKEN)) as url:
            page = ctx.new_page()
            page.goto(f"{url}/?token={TOKEN}&reviewer=alice")
            page.keyboard.press("Enter")
            page.wait_for_url(re.compile(r"/item/\d+$"))
            background = page.evaluate("getComputedStyle(document.body).backgroundColor")
            assert background == "rgb(18, 21, 28)", background
            assert page.evaluate("document.documentElement.scrollWidth") <= 390, "nothing sticks out sideways"
            top = page.locator("header.top").bounding_box()
            assert top["width"] <= 390
            expect(page.locator(".help-btn")).to_be_visible()
            assert in_view(page, ".help-btn")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "review-dark-390.png"))
            icon = httpx.get(f"{url}/favicon.ico", headers={"Authorization": f"Bearer {TOKEN}"})
            assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"
    finally:
        ctx.close()


def test_browse_filters_and_opens_an_item(context: Any, db: Path) -> None:
    from playwright.sync_api import expect

    with ReviewQueue.open(db) as q:
        last = q.items()[-1]
    with LiveServer(create_app(db, token=TOKEN)) as url:
        page = open_page(context, url, "carol")
        page.keyboard.press("b")
        page.wait_for_url(re.compile(r"/browse$"))
        expect(page.locator("#browse li")).to_have_count(3)
        page.goto(f"{url}/browse?dialogue=s000&reason=low_confidence:emotion&status=pending&label=Anxiety")
        expect(page.locator("#browse li")).to_have_count(3)
        page.goto(f"{url}/browse?label=Joy")
        expect(page.locator("h1")).to_have_text("0 items matching")
        page.goto(f"{url}/browse")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "review-browse.png"))
        page.locator(f'[data-open-item="{last.id}"]').click()
        page.wait_for_url(re.compile(rf"/item/{last.id}$"))
    with ReviewQueue.open(db) as q:
        assert q.get(last.id).lease_owner == "carol"
    assert context.problems == []


def test_an_adjudicator_who_reviewed_the_item_presses_twice(context: Any, db: Path) -> None:
    from playwright.sync_api import expect

    with ReviewQueue.open(db) as q:
        q.require_reviews(2)
        for reviewer, labels in (("alice", ["Anxiety"]), ("bob", ["Fear"])):
            item = q.claim(reviewer)
            q.submit(item.id, reviewer, item.version, {"emotion": labels})
        (waiting,) = q.items("adjudication")
    with LiveServer(create_app(db, token=TOKEN)) as url:
        page = open_page(context, url)
        page.goto(f"{url}/adjudicate/{waiting.id}")
        expect(page.locator("#took-part")).to_be_visible()
        page.keyboard.press("r")
        page.keyboard.press("n")
        page.keyboard.type("anxious about the exam, not afraid")
        page.keyboard.press("Escape")
        page.keyboard.press("Enter")
        expect(page.locator("#message")).to_contain_text("Press Enter again")
        assert in_view(page, "#message")
        with ReviewQueue.open(db) as q:
            assert q.get(waiting.id).status == "adjudication", "the first press settles nothing"
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(r"/adjudicate$"))
    with ReviewQueue.open(db) as q:
        (gold,) = q.gold_items()
        assert gold["note"] == "anxious about the exam, not afraid" and gold["reviewer"] == "alice"
        assert q.audit(waiting.id)[-1]["after"]["forced"] is True
    assert context.problems == []
