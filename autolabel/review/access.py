"""Who a review request is from: tokens (a reviewer's own, or the server's shared one), cookie sessions with their
CSRF tokens, and the request-body limit — the web app's guard (see :mod:`autolabel.review.web`).

A token is the server's shared one (the reviewer's name then comes from ``?reviewer=`` or ``X-Reviewer``, and may
not be a registered reviewer's) or a reviewer's own; tokens are compared in constant time. ``?token=`` on a GET
starts a session (HttpOnly, SameSite=Strict cookie) and redirects to the same page without it. A session ends when
the token it started with is replaced or its reviewer removed. A store that fails answers 503 with a JSON message.
"""

from __future__ import annotations

import hmac
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from autolabel.errors import ReviewError, StoreError
from autolabel.review.queue import ReviewQueue, hash_token

COOKIE = "autolabel_review"
SESSION_SECONDS = 12 * 3600
DEFAULT_REVIEWER = "reviewer"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_NAME = re.compile(r"[\w.@+-]{1,64}")  # fullmatch: "bob\n" is not a name


@dataclass(frozen=True)
class Session:
    """A browser session: who, its CSRF token, when it ends, and the hash of the reviewer's own token it was started
    with (None: the shared token). It ends early when that token is replaced or the reviewer removed, and a
    shared-token session ends when its name gets a token of its own."""

    reviewer: str
    csrf: str
    expires: float
    token_hash: str | None = None


class Sessions:
    """Cookie sessions in memory (a restarted server asks for the token again)."""

    def __init__(self) -> None:
        self._by_id: dict[str, Session] = {}
        self._lock = threading.Lock()

    def start(self, reviewer: str, token_hash: str | None = None) -> tuple[str, Session]:
        sid = secrets.token_urlsafe(32)
        session = Session(reviewer, secrets.token_urlsafe(32), time.time() + SESSION_SECONDS, token_hash)
        with self._lock:
            self._by_id = {k: v for k, v in self._by_id.items() if v.expires > time.time()}
            self._by_id[sid] = session
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        with self._lock:
            session = self._by_id.get(sid or "")
        return session if session is not None and session.expires > time.time() else None

    def end(self, sid: str | None) -> None:
        with self._lock:
            self._by_id.pop(sid or "", None)


@dataclass(frozen=True)
class Identity:
    """Who a request is from: the reviewer, and the hash of their own token (None: the shared token)."""

    reviewer: str
    token_hash: str | None


class Access:
    """Who a token belongs to: a reviewer's own (hash in the store), or the shared server token.

    With the shared token the name comes from ``X-Reviewer`` / ``?reviewer=`` (default ``reviewer``); a name that
    is not a plain name is refused (400), and so is the name of a registered reviewer (403): a registered reviewer
    proves who they are with their own token, so the shared token cannot act as them."""

    def __init__(self, queue: ReviewQueue, token: str | None) -> None:
        self.queue = queue
        self.token = token

    def identify(self, token: str, name: str | None) -> Identity | None:
        shared = self.token is not None and hmac.compare_digest(token.encode(), self.token.encode())
        own = self.queue.reviewer_for_token(token)
        if own is not None:
            return Identity(own, hash_token(token))
        if not shared:
            return None
        if name is not None and not _NAME.fullmatch(name):
            raise ReviewError(f"bad reviewer name {name!r}: letters, digits and . @ + - only", reason="invalid")
        reviewer = name or DEFAULT_REVIEWER
        if self.queue.token_hash_of(reviewer) is not None:
            raise ReviewError(f"{reviewer} has a personal token: sign in with it, not the shared one",
                              reason="forbidden")
        return Identity(reviewer, None)

    def current(self, session: Session) -> bool:
        """Whether a session still stands: its reviewer's token is the one it started with (shared-token sessions:
        the name still has no token of its own)."""
        return self.queue.token_hash_of(session.reviewer) == session.token_hash


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, whether sized by Content-Length or chunked."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.limit:
            await PlainTextResponse("request body too large", 413)(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                await PlainTextResponse("request body too large", 413)(scope, receive, send)
                return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def authenticate(request: Request, call_next: Callable[[Request], Awaitable[Response]], access: Access,
                       sessions: Sessions) -> Response:
    """Bearer token, session cookie, or a first visit with ``?token=``; CSRF for cookie sessions."""
    auth = request.headers.get("authorization", "")
    session = None
    who: Identity | None = None
    try:
        if auth.lower().startswith("bearer "):
            who = await run_in_threadpool(access.identify, auth[7:].strip(), request.headers.get("x-reviewer"))
        elif (session := sessions.get(request.cookies.get(COOKIE))) is not None:
            if await run_in_threadpool(access.current, session):
                who = Identity(session.reviewer, session.token_hash)
            else:  # the token was replaced, or the reviewer removed (or given a token of their own)
                sessions.end(request.cookies.get(COOKIE))
                session = None
        elif "token" in request.query_params and request.method == "GET":
            who = await run_in_threadpool(access.identify, request.query_params["token"],
                                          request.query_params.get("reviewer"))
            if who is not None:
                return start_session(request, who, sessions)
    except ReviewError as e:
        code = 400 if e.fields.get("reason") == "invalid" else 403
        return JSONResponse({"error": e.detail}, status_code=code)
    except StoreError as e:
        return store_error(e)
    if who is None:
        return PlainTextResponse("401 unauthorized: a reviewer token is required", 401,
                                 headers={"WWW-Authenticate": "Bearer"})
    if session is not None and request.method not in SAFE_METHODS:
        sent = request.headers.get("x-csrf-token", "")
        if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
            return PlainTextResponse("403 forbidden: missing or wrong CSRF token", 403)
    request.state.reviewer = who.reviewer
    request.state.session = session
    return await call_next(request)


def store_error(e: StoreError) -> JSONResponse:
    """The store failed (read-only, locked past its timeout, gone): 503 with a message the page shows."""
    return JSONResponse({"error": f"the review store is unavailable, try again shortly: {e.detail}"},
                        status_code=503)


def start_session(request: Request, who: Identity, sessions: Sessions) -> Response:
    sid, _ = sessions.start(who.reviewer, who.token_hash)
    rest = [(k, v) for k, v in request.query_params.multi_items() if k not in ("token", "reviewer")]
    response = RedirectResponse(request.url.path + ("?" + urlencode(rest) if rest else ""), status_code=303)
    response.set_cookie(COOKIE, sid, max_age=SESSION_SECONDS, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")
    return response
