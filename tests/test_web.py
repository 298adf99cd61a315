"""The review web app through FastAPI's TestClient: access, CSRF, size limits, escaping, API, blind mode."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from autolabel import ReviewError
from autolabel.review import ReviewQueue
from autolabel.web import COOKIE, create_app, is_loopback, serve
from tests.test_review import RISK_TEXT, SCRIPT_TEXT, annotate_into, copy_db, synthetic_queue

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def annotated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("web") / "base.db"
    annotate_into(db)
    return db


@pytest.fixture
def db(annotated: Path, tmp_path: Path) -> Path:
    return copy_db(annotated, tmp_path / "review.db")


@pytest.fixture
def client(db: Path) -> Iterator[TestClient]:
    with TestClient(create_app(db, token=TOKEN)) as c:
        yield c


def login(client: TestClient, reviewer: str = "alice") -> str:
    """Start a cookie session with the token in the URL; returns the page's CSRF token."""
    first = client.get(f"/?token={TOKEN}&reviewer={reviewer}", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/"
    page = client.get("/")
    return re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)


def test_no_token_no_data(client: TestClient) -> None:
    for method, path in [("GET", "/"), ("GET", "/item/1"), ("GET", "/api/status"), ("GET", "/static/app.js"),
                         ("POST", "/api/claim"), ("POST", "/api/items/1/submit"), ("GET", "/docs"),
                         ("GET", "/openapi.json")]:
        r = client.request(method, path)
        assert r.status_code == 401, (method, path)
        assert r.headers["www-authenticate"] == "Bearer"
        assert "pending" not in r.text and "Seeker" not in r.text and "set-cookie" not in r.headers


def test_a_wrong_token_is_refused_everywhere(client: TestClient) -> None:
    for headers, url in [({"Authorization": "Bearer nope"}, "/api/status"),
                         ({"Authorization": f"Bearer {TOKEN}x"}, "/api/status"),
                         ({"Authorization": f"Bearer {TOKEN[:-1]}"}, "/"),
                         ({}, "/?token=nope"), ({}, f"/?token={TOKEN.upper()}")]:
        r = client.get(url, headers=headers, follow_redirects=False)
        assert r.status_code == 401, (headers, url)
        assert "set-cookie" not in r.headers
    client.cookies.set(COOKIE, "forged-session-id")
    assert client.get("/").status_code == 401


def test_the_token_in_the_url_starts_a_strict_httponly_session(client: TestClient) -> None:
    r = client.get(f"/?token={TOKEN}&reviewer=alice", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/", "the token is dropped from the URL"
    cookie = r.headers["set-cookie"]
    assert f"{COOKIE}=" in cookie and "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
    assert TOKEN not in cookie
    page = client.get("/")
    assert page.status_code == 200 and "by alice" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"


def test_state_changes_need_the_csrf_token_of_the_session(client: TestClient) -> None:
    csrf = login(client)
    assert client.post("/api/claim").status_code == 403
    assert client.post("/api/claim", headers={"X-CSRF-Token": "wrong"}).status_code == 403
    assert client.get("/api/status").json()["claimed"] == 0, "a refused request changes nothing"
    ok = client.post("/api/claim", headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 200 and isinstance(ok.json()["item"], int)
    other = TestClient(client.app)
    bearer = {"Authorization": f"Bearer {TOKEN}", "X-Reviewer": "bob"}
    assert other.post("/api/claim", headers=bearer).json()["item"], "no CSRF token needed without a cookie"


def test_oversized_bodies_get_413(client: TestClient) -> None:
    csrf = login(client)
    headers = {"X-CSRF-Token": csrf, "Content-Type": "application/json"}
    big = b'{"version": 1, "labels": {}, "note": "' + b"x" * 70_000 + b'"}'
    assert client.post("/api/items/1/submit", headers=headers, content=big).status_code == 413

    def chunks() -> Iterator[bytes]:
        for _ in range(80):
            yield b"x" * 1000

    assert client.post("/api/items/1/submit", headers=headers, content=chunks()).status_code == 413
    assert client.get("/api/status").json()["done"] == 0


def test_dialogue_text_is_escaped(tmp_path: Path) -> None:
    db = tmp_path / "xss.db"
    synthetic_queue(db, 3, text=SCRIPT_TEXT)
    with TestClient(create_app(db, token=TOKEN)) as client:
        csrf = login(client)
        item = client.post("/api/claim", headers={"X-CSRF-Token": csrf}).json()["item"]
        page = client.get(f"/item/{item}").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;b&gt;nobody&lt;/b&gt;" in page
    assert "<script>alert" not in page and "<b>nobody" not in page
    assert "&lt;img src=x onerror=alert(2)&gt;" in page and "<img" not in page  # the critique
    assert "&lt;i&gt;worry&lt;/i&gt;" in page  # the explanation
    data = re.search(r'<script type="application/json" id="item-data">(.*?)</script>', page, re.S).group(1)
    assert "<" not in data, "JSON in the page has < escaped"
    assert len(re.findall(r"<script\b", page)) == 2, "only the data block and /static/app.js"


def test_claim_review_submit_through_the_api(client: TestClient, db: Path) -> None:
    csrf = login(client)
    h = {"X-CSRF-Token": csrf}
    status = client.get("/api/status").json()
    assert status["me"] == "alice" and status["remaining"] >= 5
    item_id = client.post("/api/claim", headers=h).json()["item"]
    resumed = client.get("/", follow_redirects=False)
    assert resumed.headers["location"] == f"/item/{item_id}", "the held item is resumed"
    page = client.get(f"/item/{item_id}").text
    assert RISK_TEXT in page and 'class="turn role-seeker target"' in page and "risk_content" in page
    assert "Model proposal" in page and "self-critique" in page and "Accept as proposed" in page
    with ReviewQueue.open(db) as q:
        item = q.get(item_id)
    emotion = ["Sadness", "Fear"]
    r = client.post(f"/api/items/{item_id}/submit", headers=h, json={"version": item.version - 1,
                                                                     "labels": {"emotion": emotion}})
    assert r.status_code == 409 and "changed" in r.json()["error"]
    r = client.post(f"/api/items/{item_id}/submit", headers=h, json={"version": item.version,
                                                                     "labels": {"emotion": ["Bliss"]}})
    assert r.status_code == 422 and "not an option" in r.json()["error"]
    r = client.post(f"/api/items/{item_id}/submit", headers=h,
                    json={"version": item.version, "labels": {"emotion": emotion}, "note": "n"})
    assert r.status_code == 200 and r.json()["status"] == "done"
    with ReviewQueue.open(db) as q:
        assert q.gold_items()[0]["labels"] == {"emotion": ["Sadness", "Fear"]}
    assert client.get(f"/item/{item_id}", follow_redirects=False).status_code == 303, "no longer held"
    assert client.get("/api/status").json()["reviewers"] == {"alice": 1}
    assert client.get("/item/99999").status_code == 404


def test_blind_mode_hides_the_proposal_until_the_reviewer_commits(db: Path) -> None:
    with TestClient(create_app(db, token=TOKEN, blind=True)) as client:
        csrf = login(client)
        h = {"X-CSRF-Token": csrf}
        item_id = client.post("/api/claim", headers=h).json()["item"]
        with ReviewQueue.open(db) as q:
            item = q.get(item_id)
        page = client.get(f"/item/{item_id}").text
        assert "Hidden in blind mode" in page and "self-critique" not in page
        for text in item.proposal["texts"].values():
            assert text not in page
        assert '"proposed": null' in page
        shown = client.post(f"/api/items/{item_id}/reveal", headers=h,
                            json={"version": item.version, "labels": {"emotion": ["Fear"]}}).json()
        assert shown["labels"] == item.proposal["labels"] and "self-critique" in shown["html"]
        done = client.post(f"/api/items/{item_id}/submit", headers=h,
                           json={"version": item.version, "labels": {"emotion": ["Fear"]}})
        assert done.json()["status"] == "done"
    with ReviewQueue.open(db) as q:
        assert [e["action"] for e in q.audit(item_id)] == ["claim", "reveal", "submit"]


def test_reviewer_tokens_identify_the_reviewer(db: Path) -> None:
    with ReviewQueue.open(db) as q:
        token = q.add_reviewer("erin")
    with TestClient(create_app(db)) as client:  # no shared token: reviewer tokens only
        assert client.get("/api/status", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 401
        me = client.get("/api/status", headers={"Authorization": f"Bearer {token}", "X-Reviewer": "mallory"})
        assert me.json()["me"] == "erin", "a reviewer token names its reviewer; X-Reviewer cannot override it"


def test_non_loopback_without_a_token_is_refused(tmp_path: Path) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    for host in ("0.0.0.0", "192.168.1.5", "::"):
        with pytest.raises(ReviewError, match="without a token"):
            serve(tmp_path / "q.db", host=host, port=1, token=None)
