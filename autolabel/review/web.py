"""The review web UI: a FastAPI app over ``ReviewQueue``, server-rendered (Jinja2, autoescaped), a little JS.

Access: every request needs a token — ``Authorization: Bearer <token>``, or ``?token=<token>`` once, which
starts a session (HttpOnly, SameSite=Strict cookie) and redirects to the same page without the token. A token
is the server's shared one (``--token`` / ``AUTOLABEL_REVIEW_TOKEN``; the reviewer's name then comes from
``?reviewer=`` or the ``X-Reviewer`` header) or a reviewer's own (``autolabel review add-reviewer``). Tokens
are compared in constant time. Requests of a cookie session that change state carry the session's CSRF token
in the ``X-CSRF-Token`` header. Bodies over ``max_body`` bytes get 413; without a valid token: 401, no data.
That guard is :mod:`autolabel.review.access`; a store that fails answers 503 with a JSON message.

Pages: ``/`` (start, or the item you hold), ``/item/<id>`` (review), ``/adjudicate`` (items whose reviews
disagree, with each reviewer's labels) and ``/adjudicate/<id>`` (settle one: its labels become gold). Any
reviewer may adjudicate; the audit log names who did.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined
from pydantic import BaseModel, Field

from autolabel.errors import ReviewError, StoreError
from autolabel.review.access import COOKIE, Access, BodyLimit, Sessions, authenticate, store_error
from autolabel.review.queue import DEFAULT_LEASE, MAX_NOTE_CHARS, ItemStatus, ReviewQueue
from autolabel.review.views import adjudication_view, browse_view, history_view, item_view

__all__ = ["COOKIE", "MAX_BODY", "create_app", "is_loopback", "serve"]

MAX_BODY = 64 * 1024
_JS = "text/javascript; charset=utf-8"
_STATIC = {"app.js": (_JS, ("labels.js", "app.js")), "adjudicate.js": (_JS, ("labels.js", "adjudicate.js")),
           "app.css": ("text/css; charset=utf-8", ("app.css",))}
"""name -> (media type, the template files it is made of): both pages' scripts start with the code they share."""
_ERROR_STATUS = {"unknown": 404, "invalid": 422, "stale": 409, "not_held": 409, "state": 409, "forbidden": 403}
_FAVICON = (b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect width="32" height="32" rx="7"'
            b' fill="#2f5fd0"/><path d="M9 17l5 5 9-11" fill="none" stroke="#fff" stroke-width="4"'
            b' stroke-linecap="round" stroke-linejoin="round"/></svg>')
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
                               " connect-src 'self'; base-uri 'none'; form-action 'self';"
                               " frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Labels(BaseModel):
    version: int
    labels: dict[str, str | list[str]]


class Submission(Labels):
    note: str | None = Field(None, max_length=MAX_NOTE_CHARS)


class Version(BaseModel):
    version: int


class Settlement(Submission):
    force: bool = False
    """Settle although the adjudicator reviewed the item themselves (the audit row says ``forced``)."""


class Undo(BaseModel):
    current: int | None = None
    version: int | None = None


def create_app(db: str | Path, token: str | None = None, blind: bool = False, *,
               lease_seconds: float = DEFAULT_LEASE, max_body: int = MAX_BODY) -> FastAPI:
    """The review app over the database ``db``. ``token`` is the shared token (None: reviewer tokens only)."""
    queue = ReviewQueue.open(db)
    access = Access(queue, token)
    sessions = Sessions()
    env = Environment(loader=PackageLoader("autolabel.review", "templates"), autoescape=True,
                      undefined=StrictUndefined)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        queue.close()

    app = FastAPI(title="autolabel review", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)

    def page(name: str, request: Request, **context: Any) -> HTMLResponse:
        me = request.state.reviewer
        status = queue.status(agreement=False, audit_gold=False)  # the header's counts only
        session = request.state.session
        mine = queue.progress(me)
        html = env.get_template(name).render(me=me, blind=blind, status=status, mine=mine["done"],
                                             progress=mine, csrf=session.csrf if session else "", **context)
        return HTMLResponse(html)

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await authenticate(request, call_next, access, sessions)
        response.headers.update(_HEADERS)
        return response

    app.add_middleware(BodyLimit, limit=max_body)  # outermost: added last

    @app.exception_handler(ReviewError)
    async def refused(request: Request, e: ReviewError) -> JSONResponse:
        code = _ERROR_STATUS.get(e.fields.get("reason", ""), 409)
        return JSONResponse({"error": e.detail}, status_code=code)

    @app.exception_handler(StoreError)
    async def unavailable(request: Request, e: StoreError) -> JSONResponse:
        return store_error(e)

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _malformed(e)}, status_code=422)

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request) -> Response:
        held = queue.held(request.state.reviewer)
        if held:
            return RedirectResponse(f"/item/{held[0].id}", status_code=303)
        return page("index.html", request)

    @app.get("/item/{item_id}", response_class=HTMLResponse)
    def item_page(item_id: int, request: Request) -> Response:
        item = queue.get(item_id)
        if item.lease_owner != request.state.reviewer or item.status != "claimed":
            return RedirectResponse("/", status_code=303)
        return page("item.html", request, **item_view(queue, item, blind, lease_seconds))

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in _STATIC:
            return PlainTextResponse("not found", 404)
        media, parts = _STATIC[name]
        files = resources.files("autolabel.review.templates")
        body = "\n".join(files.joinpath(part).read_text(encoding="utf-8") for part in parts)
        return Response(body, media_type=media)

    @app.get("/api/status")
    def api_status(request: Request) -> dict[str, Any]:
        return {**queue.status(), "me": request.state.reviewer}

    @app.post("/api/claim")
    def api_claim(request: Request) -> dict[str, Any]:
        item = queue.claim(request.state.reviewer, lease_seconds)
        return {"item": None if item is None else item.id}

    @app.post("/api/items/{item_id}/renew")
    def api_renew(item_id: int, request: Request) -> dict[str, Any]:
        item = queue.renew(item_id, request.state.reviewer, lease_seconds)
        return {"version": item.version, "lease_expires": item.lease_expires}

    @app.post("/api/items/{item_id}/skip")
    def api_skip(item_id: int, body: Version, request: Request) -> dict[str, Any]:
        return {"status": queue.skip(item_id, request.state.reviewer, body.version).status}

    @app.post("/api/items/{item_id}/release")
    def api_release(item_id: int, body: Version, request: Request) -> dict[str, Any]:
        return {"status": queue.release(item_id, request.state.reviewer, body.version).status}

    @app.post("/api/items/{item_id}/reveal")
    def api_reveal(item_id: int, body: Labels, request: Request) -> dict[str, Any]:
        item = queue.reveal(item_id, request.state.reviewer, body.version, dict(body.labels))
        view = item_view(queue, item, False, lease_seconds)
        return {"labels": (item.proposal or {}).get("labels", {}),
                "html": env.get_template("proposal.html").render(**view)}

    @app.post("/api/items/{item_id}/submit")
    def api_submit(item_id: int, body: Submission, request: Request) -> dict[str, Any]:
        item = queue.submit(item_id, request.state.reviewer, body.version, dict(body.labels), note=body.note)
        return {"status": item.status, "version": item.version}

    @app.get("/adjudicate", response_class=HTMLResponse)
    def adjudicate_list(request: Request) -> Response:
        items = queue.items(ItemStatus.ADJUDICATION)
        rows = [{"item": i, "reviews": queue.reviews(i.id)} for i in items]
        return page("adjudicate_list.html", request, rows=rows)

    @app.get("/adjudicate/{item_id}", response_class=HTMLResponse)
    def adjudicate_page(item_id: int, request: Request) -> Response:
        item = queue.get(item_id)
        if item.status != ItemStatus.ADJUDICATION.value:
            return RedirectResponse("/adjudicate", status_code=303)
        return page("adjudicate.html", request,
                    **adjudication_view(queue, item, lease_seconds, request.state.reviewer))

    @app.post("/api/adjudicate/{item_id}")
    def api_adjudicate(item_id: int, body: Settlement, request: Request) -> dict[str, Any]:
        item = queue.adjudicate(item_id, request.state.reviewer, dict(body.labels), note=body.note,
                                version=body.version, force=body.force)
        waiting = [i.id for i in queue.items(ItemStatus.ADJUDICATION)]
        return {"status": item.status, "next": waiting[0] if waiting else None}

    @app.post("/api/undo")
    def api_undo(body: Undo, request: Request) -> dict[str, Any]:
        current = (body.current, body.version) if body.current is not None and body.version is not None else None
        return {"item": queue.undo(request.state.reviewer, current=current, lease_seconds=lease_seconds).id}

    @app.post("/api/items/{item_id}/reopen")
    def api_reopen(item_id: int, request: Request) -> dict[str, Any]:
        return {"item": queue.reopen(item_id, request.state.reviewer, lease_seconds).id}

    @app.post("/api/items/{item_id}/unskip")
    def api_unskip(item_id: int, request: Request) -> dict[str, Any]:
        queue.unskip(item_id, request.state.reviewer)
        return {"item": item_id}

    @app.post("/api/items/{item_id}/open")
    def api_open(item_id: int, request: Request) -> dict[str, Any]:
        """Take one item from the browse list (if nobody holds it and you have not reviewed it)."""
        me = request.state.reviewer
        item = queue.get(item_id)
        if not (item.status == ItemStatus.CLAIMED.value and item.lease_owner == me):
            if queue.claim(me, lease_seconds, item_id=item_id) is None:
                raise ReviewError(f"item {item_id} is {item.status}: someone holds it, it is settled, or you"
                                  " reviewed it already (reopen it from your history)", reason="state")
        return {"item": item_id}

    @app.get("/history", response_class=HTMLResponse)
    def history_page(request: Request) -> Response:
        return page("history.html", request, **history_view(queue, request.state.reviewer))

    @app.get("/browse", response_class=HTMLResponse)
    def browse_page(request: Request) -> Response:
        return page("browse.html", request, **browse_view(queue, dict(request.query_params)))

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(_FAVICON, media_type="image/svg+xml")

    return app


def _malformed(e: RequestValidationError) -> str:
    """A request body of the wrong shape, in one line that names the field (``labels.emotion: ...``)."""
    first, *rest = e.errors() or [{"loc": (), "msg": "malformed request"}]
    where = ".".join(str(p) for p in first["loc"] if p not in ("body", "str", "list[str]"))
    more = f" (and {len(rest)} more)" if rest else ""
    return f"request refused: {where or 'body'}: {first['msg']}{more}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(db: str | Path, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
          blind: bool = False, announce: Callable[[str], None] | None = None) -> None:
    """Run the review server until interrupted.

    Refuses (ReviewError) a non-loopback ``host`` when there is neither a shared token nor any reviewer token.
    On loopback with neither, a one-time token is made up and announced in the URL.
    """
    with ReviewQueue.open(db) as queue:
        has_reviewers = queue.has_reviewers()
    if not token and not has_reviewers and not is_loopback(host):
        raise ReviewError(f"refusing to serve on {host} without a token: pass --token (or set"
                          " AUTOLABEL_REVIEW_TOKEN), or add reviewers with `autolabel review add-reviewer`")
    url = f"http://{host}:{port}/"
    if not token and not has_reviewers:
        token = secrets.token_urlsafe(24)
        url += "?token=" + token
    app = create_app(db, token, blind)
    if announce:
        announce(url)
    uvicorn.Server(uvicorn.Config(app, host=host, port=port, access_log=False, log_level="warning")).run()
