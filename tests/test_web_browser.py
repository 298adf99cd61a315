"""The review UI in headless Chromium (Debian's chromium driven by Playwright): a reviewer clears items with
the keyboard only, in normal and in blind mode. Screenshots go to ``tests/artifacts/``.

Nothing is skipped: without Chromium or Playwright the tests fail, naming what to install (``.ci/run`` installs
both), so CI cannot go green without really running them.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from autolabel.review.queue import ReviewQueue
from autolabel.review.web import create_app
from tests.test_review import RISK_TEXT, SCRIPT_TEXT, annotate_into, copy_db

TOKEN = "browser-test-token"
CHROMIUM = Path(os.environ.get("AUTOLABEL_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def unavailable(reason: str) -> None:
    pytest.fail(f"{reason}: the browser tests need it (apt-get install chromium; pip install playwright)",
                pytrace=False)


class LiveServer:
    """The real app under uvicorn, in a thread, on a free loopback port."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the review server did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed")
    if not CHROMIUM.exists():
        unavailable(f"{CHROMIUM} is missing")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def annotated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("browser") / "base.db"
    annotate_into(db)
    return db


@pytest.fixture
def db(annotated: Path, tmp_path: Path) -> Path:
    return copy_db(annotated, tmp_path / "review.db")


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 920})
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.problems = []  # alert() from an injected script, or any JS error, lands here
    page.on("dialog", lambda d: (page.problems.append(f"dialog: {d.message}"), d.dismiss()))
    page.on("pageerror", lambda e: page.problems.append(f"pageerror: {e}"))
    yield page
    context.close()


def item_id(page: Any) -> int:
    match = re.search(r"/item/(\d+)$", page.url)
    assert match, page.url
    return int(match.group(1))


def next_item(page: Any, after: int) -> int:
    page.wait_for_url(lambda url: re.search(r"/item/\d+$", url) is not None and not url.endswith(f"/{after}"))
    return item_id(page)


def pressed(fieldset: Any) -> list[str]:
    on = fieldset.locator("button.option[aria-pressed=true]")
    return [b.get_attribute("data-option") for b in on.all()]


def test_a_reviewer_clears_items_with_the_keyboard(browser: Any, page: Any, db: Path) -> None:
    from playwright.sync_api import expect

    with LiveServer(create_app(db, token=TOKEN)) as url:
        page.goto(f"{url}/?token={TOKEN}&reviewer=alice")
        assert page.url == f"{url}/", "the token is dropped from the address bar"
        expect(page.locator("h1")).to_contain_text("waiting for review")
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(r"/item/\d+$"))
        first = item_id(page)

        # risk first: the target turn highlighted with its context, the proposal beside it
        expect(page.locator(".turn.target")).to_contain_text(RISK_TEXT)
        expect(page.locator(".reasons .risk")).to_contain_text("risk content: may express self-harm")
        expect(page.locator("#proposal")).to_contain_text("self-critique")
        expect(page.locator("#proposal meter")).to_have_count(1)
        expect(page.locator(".turn").nth(3)).to_contain_text(SCRIPT_TEXT)  # shown as text, never run
        expect(page.locator("#p-mine")).to_have_text("0")
        expect(page.locator("#p-done")).to_have_text("0")
        remaining = int(page.locator("#p-remaining").inner_text())
        assert remaining >= 5

        active = page.locator("fieldset.field.active")
        proposed = pressed(active)
        assert proposed, "the proposal is preselected outside blind mode"
        buttons = active.locator("button.option")
        names = [b.get_attribute("data-option") for b in buttons.all()]
        drop, add = names.index(proposed[0]), next(i for i, n in enumerate(names) if n not in proposed)
        assert drop < 10 and add < 10
        expect(active.locator(".rule")).to_have_text("up to 3")
        page.keyboard.press(str((add + 1) % 10))  # one keystroke replaces the model's choice ...
        expect(buttons.nth(add)).to_have_attribute("aria-pressed", "true")
        expect(buttons.nth(drop)).to_have_attribute("aria-pressed", "false")
        expect(page.locator("#message")).to_contain_text("replaced the model's choice")
        expect(page.locator("#option-help")).to_contain_text(names[add])
        page.keyboard.press(str((drop + 1) % 10))  # ... and later keystrokes add
        expect(buttons.nth(drop)).to_have_attribute("aria-pressed", "true")
        chosen = pressed(active)
        assert set(chosen) == {names[drop], names[add]}
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "review.png"), full_page=True)

        page.keyboard.press("Enter")
        second = next_item(page, first)
        expect(page.locator("#p-mine")).to_have_text("1")
        expect(page.locator("#p-done")).to_have_text("1")
        expect(page.locator("#p-remaining")).to_have_text(str(remaining - 1))
        with ReviewQueue.open(db) as q:
            assert q.get(first).status == "done"
            gold = q.gold_items()
            assert len(gold) == 1 and set(gold[0]["labels"]["emotion"]) == set(chosen)

        page.keyboard.press("?")
        expect(page.locator("#help")).to_be_visible()
        expect(page.locator("#help")).to_contain_text("skip this item")
        page.keyboard.press("Escape")
        expect(page.locator("#help")).to_be_hidden()

        page.keyboard.press("s")
        third = next_item(page, second)

        before = [pressed(f) for f in page.locator("fieldset.field").all()]
        page.keyboard.press("n")
        page.keyboard.type("looked at 1 2 3")  # digits in the note are text, not shortcuts
        page.keyboard.press("Escape")
        expect(page.locator("#note")).to_have_value("looked at 1 2 3")
        assert [pressed(f) for f in page.locator("fieldset.field").all()] == before
        page.keyboard.press("a")
        next_item(page, third)
        expect(page.locator("#p-mine")).to_have_text("2")

    with ReviewQueue.open(db) as q:
        assert [e["action"] for e in q.audit(second)][-1] == "skip"
        log = q.audit(third)
        assert [e["action"] for e in log] == ["claim", "submit"]
        assert log[-1]["after"]["decision"] == "accept" and log[-1]["after"]["note"] == "looked at 1 2 3"
    assert page.problems == []


def test_blind_mode_reveals_the_proposal_only_after_the_reviewer_commits(browser: Any, page: Any,
                                                                         db: Path) -> None:
    from playwright.sync_api import expect

    with LiveServer(create_app(db, token=TOKEN, blind=True)) as url:
        page.goto(f"{url}/?token={TOKEN}&reviewer=bob")
        expect(page.locator(".badge.blind")).to_be_visible()
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(r"/item/\d+$"))
        first = item_id(page)
        expect(page.locator("#proposal")).to_contain_text("Hidden in blind mode")
        expect(page.locator("#proposal .chip")).to_have_count(0)
        expect(page.locator("button.option[aria-pressed=true]")).to_have_count(0)

        page.keyboard.press("a")
        expect(page.locator("#message")).to_contain_text("hidden")
        page.keyboard.press("Enter")
        expect(page.locator("#message")).to_contain_text("Choose at least one option")

        fields = page.locator("fieldset.field")
        mine: dict[str, list[str]] = {}
        for i in range(fields.count()):
            f = fields.nth(i)
            expect(f).to_have_class(re.compile(r"\bactive\b"))
            n = f.locator("button.option").count()
            page.keyboard.press("Shift+Digit1" if n > 10 else "Digit2")
            mine[f.get_attribute("data-field")] = pressed(f)
            page.keyboard.press("f")
        assert all(len(v) == 1 for v in mine.values())

        page.keyboard.press("Enter")
        expect(page.locator("#proposal")).to_contain_text("self-critique")
        expect(page.locator("#proposal .chip.model").first).to_be_visible()
        expect(page.locator("button.option.model").first).to_be_visible()
        expect(page.locator("#submit")).to_contain_text("Confirm")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "review-blind.png"), full_page=True)

        page.keyboard.press("Enter")
        next_item(page, first)

    with ReviewQueue.open(db) as q:
        log = q.audit(first)
        assert [e["action"] for e in log] == ["claim", "reveal", "submit"]
        assert log[1]["after"]["labels"] == log[2]["after"]["labels"]
        assert {k: sorted(v) for k, v in log[2]["after"]["labels"].items()} == mine
    assert page.problems == []


def test_without_a_token_the_browser_gets_401_and_no_data(browser: Any, db: Path) -> None:
    context = browser.new_context()
    page = context.new_page()
    try:
        with LiveServer(create_app(db, token=TOKEN)) as url:
            for path in ("/", "/item/1", "/adjudicate", "/api/status", f"/?token={TOKEN}x&reviewer=mallory"):
                response = page.goto(url + path)
                assert response is not None and response.status == 401, path
                body = page.content()
                assert "401 unauthorized" in body and "Seeker" not in body and RISK_TEXT not in body, path
            assert context.cookies() == [], "no session without a valid token"
            fetched = page.evaluate("""async () => {
                const r = await fetch("/api/claim", {method: "POST"});
                return [r.status, await r.text()];
            }""")
            assert fetched[0] == 401 and "item" not in fetched[1]
        with ReviewQueue.open(db) as q:
            assert q.status()["claimed"] == 0 and q.audit() == [], "nothing was claimed"
    finally:
        context.close()


def test_two_reviewers_clear_the_queue_at_once_with_the_keyboard(browser: Any, db: Path) -> None:
    """alice and bob work side by side, each in their own browser session, with keys only: alice accepts
    proposals (A), bob corrects them (one digit replaces the model's choice, then Enter). They never hold the same
    item, every item is reviewed exactly once, and both end on the empty queue."""
    from playwright.sync_api import expect

    with ReviewQueue.open(db) as q:
        total = len(q.items())
    contexts = [browser.new_context(viewport={"width": 1400, "height": 920}) for _ in range(2)]
    pages = [c.new_page() for c in contexts]
    problems: list[str] = []
    for p in pages:
        p.set_default_timeout(10_000)
        p.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
        p.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
    alice, bob = pages
    seen: dict[str, list[int]] = {"alice": [], "bob": []}
    told_to_wait: list[str] = []
    try:
        with LiveServer(create_app(db, token=TOKEN)) as url:
            for name, p in (("alice", alice), ("bob", bob)):
                p.goto(f"{url}/?token={TOKEN}&reviewer={name}")
                expect(p.locator("#p-remaining")).to_have_text(str(total))
                p.keyboard.press("Enter")
                p.wait_for_url(re.compile(r"/item/\d+$"))
                seen[name].append(item_id(p))
            while True:
                assert seen["alice"][-1] != seen["bob"][-1], "alice and bob hold the same item"
                moved = False
                for name, p in (("alice", alice), ("bob", bob)):
                    if not re.search(r"/item/\d+$", p.url):
                        continue
                    current = item_id(p)
                    if name == "alice":
                        p.keyboard.press("a")
                    else:
                        field = p.locator("fieldset.field.active")
                        options = [b.get_attribute("data-option") for b in field.locator("button.option").all()]
                        chosen = pressed(field)  # one keystroke puts another option in the model's place
                        toggle = next(i for i, o in enumerate(options) if o not in chosen)
                        assert toggle < 9
                        p.keyboard.press(str(toggle + 1))
                        expect(field.locator("button.option").nth(toggle)).to_have_attribute("aria-pressed", "true")
                        assert pressed(field) == [options[toggle]]
                        p.keyboard.press("Enter")
                    p.wait_for_url(lambda u, c=current: not u.endswith(f"/item/{c}"))
                    other = bob if p is alice else alice
                    if re.search(r"/item/\d+$", p.url):
                        seen[name].append(item_id(p))
                    elif re.search(r"/item/\d+$", other.url):  # the last item is the other reviewer's
                        expect(p.locator("h1")).to_have_text("1 item waiting for review")
                        p.keyboard.press("Enter")
                        expect(p.locator("#message")).to_contain_text("held by other reviewers")
                        told_to_wait.append(name)
                    moved = True
                if not moved:
                    break
            for p in pages:
                p.reload()
                expect(p.locator("h1")).to_have_text("Nothing left to review")
                expect(p.locator("#p-done")).to_have_text(str(total))
                expect(p.locator("#p-remaining")).to_have_text("0")
            expect(alice.locator("#p-mine")).to_have_text(str(len(seen["alice"])))
            expect(bob.locator("#p-mine")).to_have_text(str(len(seen["bob"])))
            ARTIFACTS.mkdir(exist_ok=True)
            alice.screenshot(path=str(ARTIFACTS / "review-done.png"), full_page=True)
    finally:
        for c in contexts:
            c.close()
    assert len(told_to_wait) == 1, "the first to run out was told the rest is someone else's"
    assert not set(seen["alice"]) & set(seen["bob"]), "no item was offered to both"
    assert len(seen["alice"]) + len(seen["bob"]) == total and seen["alice"] and seen["bob"]
    with ReviewQueue.open(db) as q:
        assert q.status()["done"] == total and len(q.gold_items()) == total
        for name in ("alice", "bob"):
            for i in seen[name]:
                assert [(e["action"], e["reviewer"]) for e in q.audit(i)] == [("claim", name), ("submit", name)]
                assert [r["decision"] for r in q.reviews(i)] == ["accept" if name == "alice" else "correct"]
    assert problems == []
