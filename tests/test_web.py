"""The review web app through FastAPI's TestClient (access, CSRF, size limits, escaping, API, blind mode), and
``autolabel review serve`` started as a user starts it (loopback by default, the token, the refusals)."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from autolabel import ReviewError
from autolabel.review.queue import ReviewQueue
from autolabel.review.web import COOKIE, create_app, is_loopback, serve
from tests.pg import engine_fixture, free_port, new_db_fixture  # noqa: F401  (fixtures)
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
    assert page.status_code == 200 and "for alice" in page.text
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


# -- `autolabel review serve` as a user starts it --------------------------------------------------------------

class Served:
    """``autolabel review serve`` in a subprocess; the URL it announces, and its output when it ends."""

    def __init__(self, *args: str, token_env: str | None = None) -> None:
        env = {**os.environ, "CI": "1", "COLUMNS": "1000"}
        env.pop("AUTOLABEL_REVIEW_TOKEN", None)
        if token_env is not None:
            env["AUTOLABEL_REVIEW_TOKEN"] = token_env
        self.proc = subprocess.Popen([sys.executable, "-m", "autolabel", "review", "serve", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def url(self) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)  # announced, or the process ended
        assert ready, "the review server announced nothing within 60 s"
        line = self.proc.stdout.readline()
        match = re.search(r"reviewing at (\S+)", line)
        assert match, line + self.proc.stderr.read()
        return match.group(1)

    def wait_listening(self, port: int) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            assert self.proc.poll() is None, self.proc.stderr.read()
            time.sleep(0.05)
        raise AssertionError("the review server did not start listening")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def non_loopback_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if is_loopback(address) else address


def test_review_serve_binds_loopback_and_wants_the_token_on_both_engines(new_db: str) -> None:
    """The real command on a SQLite file and on a PostgreSQL URL: 127.0.0.1 by default, the token from
    AUTOLABEL_REVIEW_TOKEN (then from --token, which wins), 401 without it, the queue with it."""
    synthetic_queue(new_db, 4)
    for option, env_token in (([], TOKEN), (["--token", TOKEN], "another-token")):
        port = free_port()
        served = Served("--db", new_db, "--port", str(port), *option, token_env=env_token)
        try:
            assert served.url() == f"http://127.0.0.1:{port}/", "loopback by default, no token in the URL"
            served.wait_listening(port)
            base = f"http://127.0.0.1:{port}"
            refused = httpx.get(f"{base}/api/status")
            assert refused.status_code == 401 and "pending" not in refused.text
            assert httpx.get(f"{base}/api/status", headers={"Authorization": "Bearer another"}).status_code == 401
            ok = httpx.get(f"{base}/api/status", headers={"Authorization": f"Bearer {TOKEN}", "X-Reviewer": "ann"})
            assert ok.status_code == 200 and ok.json()["pending"] == 4 and ok.json()["me"] == "ann"
            address = non_loopback_address()
            if address is not None:  # the machine has another address: nothing listens there
                with socket.socket() as s:
                    s.settimeout(2)
                    assert s.connect_ex((address, port)) != 0, f"reachable on {address}"
        finally:
            served.stop()


def test_review_serve_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    synthetic_queue(db, 1)
    served = Served("--db", str(db), "--host", "0.0.0.0", "--port", str(free_port()))
    _, err = served.proc.communicate(timeout=60)
    assert served.proc.returncode == ReviewError.exit_code and "Traceback" not in err
    assert [line for line in err.splitlines() if line.strip()] == [
        "error: refusing to serve on 0.0.0.0 without a token: pass --token (or set AUTOLABEL_REVIEW_TOKEN), or "
        "add reviewers with `autolabel review add-reviewer`"]


def test_review_serve_on_loopback_without_any_token_makes_up_a_one_time_one(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    synthetic_queue(db, 1)
    port = free_port()
    served = Served("--db", str(db), "--port", str(port))
    try:
        url = served.url()
        match = re.fullmatch(rf"http://127\.0\.0\.1:{port}/\?token=([\w-]{{20,}})", url)
        assert match, url
        served.wait_listening(port)
        assert httpx.get(f"http://127.0.0.1:{port}/api/status").status_code == 401
        assert httpx.get(f"http://127.0.0.1:{port}/api/status",
                         headers={"Authorization": f"Bearer {match.group(1)}"}).status_code == 200
    finally:
        served.stop()
