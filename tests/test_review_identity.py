"""Who made a review (issue 15, item 4): a replaced token or a removed reviewer ends their browser sessions; the
shared token cannot act as a reviewer who has a personal token; reviewer names are checked to their end."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from autolabel import ReviewError
from autolabel.cli import app
from autolabel.review.queue import ReviewQueue
from autolabel.review.web import create_app
from tests.test_review import rows, synthetic_queue

SHARED = "shared-token-for-identity"
runner = CliRunner()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    db = tmp_path / "id.db"
    synthetic_queue(db, 3)
    return db


def session(client: TestClient, token: str, reviewer: str | None = None) -> dict[str, str]:
    url = f"/?token={token}" + (f"&reviewer={reviewer}" if reviewer else "")
    assert client.get(url, follow_redirects=False).status_code == 303
    return {"X-CSRF-Token": re.search(r'name="csrf-token" content="([^"]+)"', client.get("/").text).group(1)}


def test_replacing_a_token_ends_the_sessions_made_with_the_old_one(db: Path) -> None:
    with ReviewQueue.open(db) as q:
        old = q.add_reviewer("erin")
    with TestClient(create_app(db)) as browser:
        session(browser, old)
        assert browser.get("/api/status").json()["me"] == "erin"
        r = runner.invoke(app, ["review", "add-reviewer", "erin", "--replace", "--db", str(db)])
        assert r.exit_code == 0
        new = r.output.strip()
        gone = browser.get("/api/status")
        assert gone.status_code == 401, "the session made with the old token is over"
        assert browser.get("/api/status", headers={"Authorization": f"Bearer {old}"}).status_code == 401
        assert browser.get("/api/status", headers={"Authorization": f"Bearer {new}"}).json()["me"] == "erin"


def test_remove_reviewer_ends_their_sessions_returns_their_items_and_is_audited(db: Path) -> None:
    with ReviewQueue.open(db) as q:
        token = q.add_reviewer("erin")
    with TestClient(create_app(db)) as browser:
        h = session(browser, token)
        held = browser.post("/api/claim", headers=h).json()["item"]
        r = runner.invoke(app, ["review", "remove-reviewer", "erin", "--db", str(db), "--by", "lead"])
        assert r.exit_code == 0, r.output
        assert "removed erin" in r.output and "1 item(s) they held went back to the queue" in r.output
        assert browser.get("/api/status").status_code == 401
        assert browser.get("/", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    with ReviewQueue.open(db) as q:
        assert q.get(held).status == "pending" and q.get(held).lease_owner is None
        removed = [a for a in q.audit() if a["action"] == "remove_reviewer"]
        assert [(a["reviewer"], a["after"]["name"]) for a in removed] == [("lead", "erin")]
        assert [a["action"] for a in q.audit(held)][-1] == "release"
    again = runner.invoke(app, ["review", "remove-reviewer", "erin", "--db", str(db)])
    assert isinstance(again.exception, ReviewError) and "no reviewer 'erin'" in str(again.exception)
    assert again.exception.exit_code == 7
    assert rows(db, "SELECT COUNT(*) FROM reviewers") == [(0,)]


def test_the_shared_token_cannot_act_as_a_reviewer_with_a_personal_token(db: Path) -> None:
    with ReviewQueue.open(db) as q:
        q.add_reviewer("alice")
    with TestClient(create_app(db, token=SHARED)) as client:
        bearer = {"Authorization": f"Bearer {SHARED}"}
        r = client.get("/api/status", headers={**bearer, "X-Reviewer": "alice"})
        assert r.status_code == 403 and "alice has a personal token" in r.json()["error"]
        r = client.get(f"/?token={SHARED}&reviewer=alice", follow_redirects=False)
        assert r.status_code == 403 and "set-cookie" not in r.headers
        assert client.post("/api/claim", headers={**bearer, "X-Reviewer": "alice"}).status_code == 403
        assert client.get("/api/status", headers={**bearer, "X-Reviewer": "bob"}).json()["me"] == "bob"
        h = session(client, SHARED, "carol")  # a shared-token session of a name that later gets a token
        assert client.post("/api/claim", headers=h).status_code == 200
        with ReviewQueue.open(db) as q:
            q.add_reviewer("carol")
        assert client.get("/api/status").status_code == 401, "carol now proves who she is with her own token"
    with ReviewQueue.open(db) as q:
        assert [a["action"] for a in q.audit() if a["reviewer"] == "alice"] == ["add_reviewer"]


def test_reviewer_names_are_checked_to_their_end(db: Path) -> None:
    with ReviewQueue.open(db) as q:
        for bad in ("bob\n", "bob\r\nX-Evil: 1", " bob", "", "b\x00b"):
            with pytest.raises(ReviewError, match="bad reviewer name"):
                q.add_reviewer(bad)
            with pytest.raises(ReviewError, match="bad reviewer name"):
                q.claim(bad)
    with TestClient(create_app(db, token=SHARED)) as client:
        r = client.get(f"/?token={SHARED}&reviewer=bob%0A", follow_redirects=False)
        assert r.status_code == 400 and "bad reviewer name" in r.json()["error"]
        r = client.get("/api/status", headers={"Authorization": f"Bearer {SHARED}", "X-Reviewer": "bob\t"})
        assert r.status_code == 400
    assert rows(db, "SELECT COUNT(*) FROM review_audit WHERE reviewer LIKE 'bob%'") == [(0,)]


# -- store errors and impossible ids (issue 15, item 5) ---------------------------------------------------------

def test_a_read_only_store_gives_a_json_error_the_page_can_show(db: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with TestClient(create_app(f"file:{db}?mode=ro", token=SHARED)) as client:
        h = session(client, SHARED, "bob")
        r = client.post("/api/claim", headers=h)
        assert r.status_code == 503 and r.headers["content-type"] == "application/json"
        assert "readonly" in r.json()["error"] and "try again" in r.json()["error"]
    assert "Traceback" not in capfd.readouterr().err


def test_a_failing_read_gives_a_json_error_too(db: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with TestClient(create_app(db, token=SHARED)) as client:
        h = session(client, SHARED, "bob")
        rows(db, "DROP TABLE gold")  # the store breaks under the running server
        r = client.get("/api/status", headers=h)
        assert r.status_code == 503 and "no such table: gold" in r.json()["error"]
        assert client.get("/", headers=h).status_code == 503
    assert "Traceback" not in capfd.readouterr().err


def test_ids_that_cannot_exist_are_404(db: Path) -> None:
    huge = "99999999999999999999999"
    with TestClient(create_app(db, token=SHARED)) as client:
        h = session(client, SHARED, "bob")
        assert client.get(f"/item/{huge}").status_code == 404
        assert client.get(f"/adjudicate/{huge}").status_code == 404
        for action in ("submit", "reveal"):
            r = client.post(f"/api/items/{huge}/{action}", headers=h, json={"version": 1, "labels": {}})
            assert r.status_code == 404 and f"no review item {huge}" in r.json()["error"]
        for action in ("skip", "release"):
            assert client.post(f"/api/items/{huge}/{action}", headers=h, json={"version": 1}).status_code == 404
        assert client.post(f"/api/items/{huge}/renew", headers=h).status_code == 404
        assert client.post(f"/api/adjudicate/{huge}", headers=h, json={"version": 1, "labels": {}}).status_code == 404
        assert client.get("/item/-1").status_code == 404
