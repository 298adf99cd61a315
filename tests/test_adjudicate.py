"""The adjudication pages through FastAPI's TestClient: two reviewers disagree, a third settles the item."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from autolabel.review.queue import ReviewQueue
from autolabel.review.web import create_app
from tests.test_review import SCRIPT_TEXT, synthetic_queue

TOKEN = "adjudication-token"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Three items that need two reviews each; alice and bob disagree on the first two, agree on the third."""
    db = tmp_path / "adj.db"
    synthetic_queue(db, 3, text=SCRIPT_TEXT)
    with ReviewQueue.open(db) as q:
        assert q.require_reviews(2) == 3
        for alice, bob in ((["Anxiety"], ["Fear", "Sadness"]), (["Shame"], ["Guilty"]), (["Anger"], ["Anger"])):
            for reviewer, labels in (("alice", alice), ("bob", bob)):
                item = q.claim(reviewer)
                q.submit(item.id, reviewer, item.version, {"emotion": labels}, note=f"<i>{reviewer}</i>")
    return db


@pytest.fixture
def client(db: Path) -> Iterator[TestClient]:
    with TestClient(create_app(db, token=TOKEN)) as c:
        yield c


def login(client: TestClient, reviewer: str = "carol") -> str:
    assert client.get(f"/?token={TOKEN}&reviewer={reviewer}", follow_redirects=False).status_code == 303
    return re.search(r'name="csrf-token" content="([^"]+)"', client.get("/").text).group(1)


def test_adjudication_needs_a_token(client: TestClient) -> None:
    for method, path in [("GET", "/adjudicate"), ("GET", "/adjudicate/1"), ("POST", "/api/adjudicate/1"),
                         ("GET", "/static/adjudicate.js")]:
        r = client.request(method, path)
        assert r.status_code == 401 and "Anxiety" not in r.text


def test_the_list_shows_each_reviewers_labels(client: TestClient, db: Path) -> None:
    login(client)
    home = client.get("/").text
    assert '<a class="adj-link" href="/adjudicate"><b>2</b> to adjudicate</a>' in home
    page = client.get("/adjudicate").text
    assert "2 items to adjudicate" in page
    with ReviewQueue.open(db) as q:
        waiting = q.items("adjudication")
    assert len(waiting) == 2
    for i in waiting:
        assert f'href="/adjudicate/{i.id}"' in page
    assert all(w in page for w in ("alice", "bob", "Anxiety", "Fear", "Sadness", "Shame", "Guilty"))
    assert "Anger" not in page, "the item both reviewers agree on is done, not listed"


def test_an_adjudicator_settles_an_item_by_keyboard_page_and_api(client: TestClient, db: Path) -> None:
    csrf = login(client)
    with ReviewQueue.open(db) as q:
        first, second = q.items("adjudication")
    page = client.get(f"/adjudicate/{first.id}").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
    assert "&lt;i&gt;alice&lt;/i&gt;" in page and "<i>alice" not in page, "reviewer notes are escaped"
    assert all(k in page for k in ("<kbd>R</kbd>", "<kbd>M</kbd>", "Settle <kbd>Enter</kbd>", "<kbd>S</kbd>"))
    assert len(re.findall(r"<script\b", page)) == 2 and "/static/adjudicate.js" in page
    assert "/static/app.js" not in page
    data = re.search(r'<script type="application/json" id="item-data">(.*?)</script>', page, re.S).group(1)
    assert '"reviewer": "alice"' in data and '"reviewer": "bob"' in data and f'"next": {second.id}' in data
    assert '"start": {"emotion": []}' in data, "nothing is preselected where the reviewers disagree"
    js = client.get("/static/adjudicate.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")

    url = f"/api/adjudicate/{first.id}"
    body = {"version": first.version, "labels": {"emotion": ["Anxiety", "Fear"]}, "note": "both, really"}
    assert client.post(url, json=body).status_code == 403, "CSRF token required"
    h = {"X-CSRF-Token": csrf}
    stale = client.post(url, headers=h, json={**body, "version": first.version - 1})
    assert stale.status_code == 409 and "changed" in stale.json()["error"]
    wrong = client.post(url, headers=h, json={**body, "labels": {"emotion": ["Bliss"]}})
    assert wrong.status_code == 422 and "not an option" in wrong.json()["error"]
    done = client.post(url, headers=h, json=body)
    assert done.status_code == 200 and done.json() == {"status": "done", "next": second.id}
    again = client.post(url, headers=h, json=body)
    assert again.status_code == 409 and "not awaiting adjudication" in again.json()["error"]

    with ReviewQueue.open(db) as q:
        gold = next(g for g in q.gold_items() if g["item_id"] == first.id)
        audit = q.audit(first.id)
    assert (gold["labels"], gold["source"], gold["reviewer"]) == ({"emotion": ["Fear", "Anxiety"]}, "adjudication",
                                                                   "carol")
    assert audit[-1]["action"] == "adjudicate" and audit[-1]["reviewer"] == "carol"
    assert audit[-1]["after"]["note"] == "both, really"
    assert client.get(f"/adjudicate/{first.id}", follow_redirects=False).headers["location"] == "/adjudicate"
    assert "1 item to adjudicate" in client.get("/adjudicate").text
    last = client.post(f"/api/adjudicate/{second.id}", headers=h,
                       json={"version": second.version, "labels": {"emotion": ["Shame", "Guilty"]}})
    assert last.json() == {"status": "done", "next": None}
    assert "Nothing is waiting for adjudication" in client.get("/adjudicate").text


def test_settling_two_items_with_the_keyboard_in_chromium(db: Path, tmp_path: Path) -> None:
    from tests.test_web_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, LiveServer, unavailable

    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        unavailable("playwright is not installed")
    if not CHROMIUM.exists():
        unavailable(f"{CHROMIUM} is missing")
    with ReviewQueue.open(db) as q:
        first, second = q.items("adjudication")
    problems: list[str] = []
    with sync_playwright() as p, LiveServer(create_app(db, token=TOKEN)) as url:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 920})
        page.set_default_timeout(10_000)
        page.on("dialog", lambda d: (problems.append(d.message), d.dismiss()))
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(f"{url}/adjudicate?token={TOKEN}&reviewer=carol")
        expect(page.locator("h1")).to_have_text("2 items to adjudicate")
        page.keyboard.press("1")
        page.wait_for_url(f"{url}/adjudicate/{first.id}")
        field = page.locator("fieldset.field.active")
        expect(field.locator("button.option.on")).to_have_count(0)
        page.keyboard.press("r")
        expect(field.locator("button.option.on")).to_have_text(["5Anxiety"])
        expect(page.locator("[data-review='0']")).to_have_class(re.compile("taken"))
        page.keyboard.press("r")  # bob's answer instead
        expect(field.locator("button.option.on")).to_have_text(["2Sadness", "3Fear"])
        page.keyboard.press("5")  # and Anxiety too
        expect(field.locator("button.option.on")).to_have_text(["2Sadness", "3Fear", "5Anxiety"])
        page.keyboard.press("n")
        page.keyboard.type("bob, plus the worry")
        page.keyboard.press("Escape")
        page.screenshot(path=str(ARTIFACTS / "adjudicate.png"), full_page=True)
        page.keyboard.press("Enter")
        page.wait_for_url(f"{url}/adjudicate/{second.id}")
        page.keyboard.press("m")  # the model's labels
        page.keyboard.press("Enter")
        page.wait_for_url(f"{url}/adjudicate")
        expect(page.locator("h1")).to_have_text("0 items to adjudicate")
        browser.close()
    assert not problems, problems
    with ReviewQueue.open(db) as q:
        gold = {g["item_id"]: g["labels"] for g in q.gold_items()}
        notes = [a["after"]["note"] for a in q.audit(first.id) if a["action"] == "adjudicate"]
    assert gold[first.id] == {"emotion": ["Sadness", "Fear", "Anxiety"]}
    assert gold[second.id] == {"emotion": ["Anxiety"]}, "the model's proposal"
    assert notes == ["bob, plus the worry"]
