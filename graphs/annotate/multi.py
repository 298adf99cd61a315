"""Several turns per call (``turns_per_call`` = K > 1): a window of K consecutive turns labeled by one structured call
and critiqued by one; then each turn is validated, scored and routed on its own, as in the per-turn pipeline.

The answer is one JSON object keyed by turn index (``{"12": {...}, "13": {...}}``), each value valid for the turn's
role (the same sub-schemas as one turn's answer); the system message describes every labeled role, so it is the same
for every window of a task and language (a stable prefix). Confidence from logprobs reads each turn's codes inside
its own object (``scope``). When the window's label call fails — invalid after the re-asks, or refused — its turns
are labeled one call each, the failed attempt first in each turn's history. The requests come from the run's
request builder (``requests.py``), like the per-turn pipeline's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

from autolabel.graphs.annotate import nodes
from autolabel.graphs.annotate.context import Context
from autolabel.graphs.annotate.excerpt import Excerpt
from autolabel.graphs.annotate.requests import Request
from autolabel.graphs.annotate.state import ChunkInput, TurnInput, TurnOutput, TurnState
from langgraph.runtime import Runtime

from autolabel.errors import RequestRefused, RetryExhausted
from autolabel.llm.client import CallTrace
from autolabel.models import TurnAnnotation
from autolabel.tasks import RoleFields

OneTurn = Callable[[TurnInput, Runtime[Context]], Awaitable[TurnOutput]]


async def annotate_together(window: ChunkInput, runtime: Runtime[Context], one_turn: OneTurn) -> TurnOutput:
    """Label, critique, validate, score and route the turns of one window (``one_turn``: the per-turn pipeline, for
    turns whose window call failed)."""
    ctx = runtime.context
    ex, lang, indices = window["excerpt"], window["language"], window["indices"]
    states = {i: cast(TurnState, {"excerpt": ex, "index": i, "language": lang}) for i in indices}
    targets: dict[int, RoleFields] = {}
    for i, s in states.items():
        _, fields, done = nodes.unlabeled(s, ctx)
        if done is not None or fields is None:
            _put(s, done or {})
        else:
            targets[i] = fields
    out: list[TurnAnnotation] = []
    if targets:
        request = await window_request(ctx, ex, indices, targets, lang)
        fallback = await _label(ctx, ex, states, targets, request, lang)
        if fallback is not None:  # the window call failed: these turns go one by one, and are done
            out += await _one_by_one(window, runtime, one_turn, fallback)
            for i in fallback[1]:
                del states[i], targets[i]
        if ctx.settings.critique:
            await _critique(ctx, ex, states, {i: f for i, f in targets.items() if states[i].get("labels")},
                            request, lang)
    for s in states.values():
        if not s.get("failed"):
            _put(s, await nodes.validate(s, runtime))
            if not s.get("failed"):
                _put(s, await nodes.score(s, runtime))
        out += (await nodes.route(s, runtime))["turns"]
    return TurnOutput(turns=sorted(out, key=lambda a: a.turn_index))


def _put(state: TurnState, update: dict[str, Any]) -> None:
    state.update(update)  # type: ignore[typeddict-item]


async def window_request(ctx: Context, ex: Excerpt, indices: list[int], targets: dict[int, RoleFields],
                         lang: str) -> Request:
    """The window's label request, with similar reviewed examples per role (looked up in a worker thread)."""
    similar: dict[str, list[dict[str, Any]]] = {}
    if ctx.examples is not None:
        for role in dict.fromkeys(f.role for f in targets.values()):
            text = "\n".join(ex.turn(i).text for i, f in targets.items() if f.role == role)
            similar[role] = await nodes.similar_examples(ctx, role, lang, text) or []
    return ctx.requests.window_label(ex, indices, targets, lang, similar)


async def _label(ctx: Context, ex: Excerpt, states: dict[int, TurnState], targets: dict[int, RoleFields],
                 request: Request, lang: str) -> tuple[list[dict[str, Any]], set[int]] | None:
    """One call labels every target; None when it did, else (its history, the turns to label one by one)."""
    first = next(iter(targets))
    trace = CallTrace(purpose="label", dialogue_id=ex.dialogue_id, turn_index=first)
    try:
        result = await nodes.ask(ctx, request, trace)
    except (RetryExhausted, RequestRefused) as e:
        return ex.restore(nodes.attempts("label", trace, e)), set(targets)
    history = ex.restore(nodes.attempts("label", trace, None))
    for i, f in targets.items():
        _put(states[i], nodes.labeled(ctx, ex, f, result.answer[str(i)], result.raw, result.tokens, list(history),
                                       scope=str(i)))
    for sample in ctx.requests.window_samples(request, ex.dialogue_id, first, lang):
        try:
            r = await nodes.ask(ctx, sample, CallTrace(purpose="sample", dialogue_id=ex.dialogue_id, turn_index=first))
        except (RetryExhausted, RequestRefused):
            continue
        for i in targets:
            states[i].setdefault("samples", []).append(r.answer[str(i)])
    return None


async def _one_by_one(window: ChunkInput, runtime: Runtime[Context], one_turn: OneTurn,
                      fallback: tuple[list[dict[str, Any]], set[int]]) -> list[TurnAnnotation]:
    """The turns of a failed window call, each through the per-turn pipeline; the failed attempt heads each
    turn's history (and counts among its attempts)."""
    history, indices = fallback
    outs = await asyncio.gather(*(one_turn(TurnInput(excerpt=window["excerpt"], index=i,
                                                     language=window["language"]), runtime) for i in sorted(indices)))
    anns = [a for out in outs for a in out["turns"]]
    return [a.model_copy(update={"history": [*history, *a.history], "attempts": len(history) + len(a.history)})
            for a in anns]


async def _critique(ctx: Context, ex: Excerpt, states: dict[int, TurnState], targets: dict[int, RoleFields],
                    label: Request, lang: str) -> None:
    """One call reviews every labeled target; a failed call makes each verdict "unsure", saying why."""
    if not targets:
        return
    proposals = {str(i): states[i]["answer"] for i in targets}
    request = ctx.requests.window_critique(label.user, targets, proposals, lang)
    trace = CallTrace(purpose="critique", dialogue_id=ex.dialogue_id, turn_index=next(iter(targets)))
    try:
        result = await nodes.ask(ctx, request, trace)
    except (RetryExhausted, RequestRefused) as e:
        history = ex.restore(nodes.attempts("critique", trace, e))
        last = nodes.last_answer(e) or {}
        for i, f in targets.items():
            so_far = [*states[i].get("history", []), *history]
            mine = last.get(str(i))
            _put(states[i], nodes.inconsistent(states[i], mine, so_far)
                 if isinstance(mine, dict) and nodes.unlabeled_revise(ctx, f, mine)
                 else nodes.critique_failed(states[i], e, so_far))
        return
    history = ex.restore(nodes.attempts("critique", trace, None))
    for i, f in targets.items():
        _put(states[i], nodes.critiqued(ctx, states[i], f, result.answer[str(i)],
                                         [*states[i].get("history", []), *history]))
