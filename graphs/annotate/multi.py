"""Several turns per call (``turns_per_call`` = K > 1): a window of K consecutive turns labeled by one structured call
and critiqued by one; then each turn is validated, scored and routed on its own, as in the per-turn pipeline.

The answer is one JSON object keyed by turn index (``{"12": {...}, "13": {...}}``), each value valid for the turn's
role (the same sub-schemas as one turn's answer); the system message describes every labeled role, so it is the same
for every window of a task and language (a stable prefix). Confidence from logprobs reads each turn's codes inside
its own object (``scope``). When the window's label call fails — invalid after the re-asks, or refused — its turns
are labeled one call each by the per-turn steps, the failed attempt first in each turn's history. These are the
steps ``label_windows`` and ``critique_windows`` of the turns subgraph (``graph.py``); the requests come from the
run's request builder (``requests.py``), like the per-turn steps'.
"""

from __future__ import annotations

from typing import Any

from autolabel.graphs.annotate import nodes
from autolabel.graphs.annotate.context import Context
from autolabel.graphs.annotate.excerpt import Excerpt
from autolabel.graphs.annotate.requests import Request
from autolabel.graphs.annotate.state import TurnState

from autolabel.errors import RequestRefused, RetryExhausted
from autolabel.llm.client import CallTrace
from autolabel.tasks import RoleFields


def windows(indices: list[int], k: int) -> list[list[int]]:
    """A chunk's turns cut into windows of ``k`` consecutive turns."""
    return [indices[i:i + k] for i in range(0, len(indices), k)]


async def label_window(ctx: Context, ex: Excerpt, indices: list[int], work: dict[int, TurnState], lang: str) -> None:
    """One call labels every turn of the window that has fields (``window`` set on each); a turn that takes no call
    is done here; when the call fails, its turns are left to the per-turn label step, the failed attempt first in
    their history."""
    targets: dict[int, RoleFields] = {}
    for i in indices:
        s = work[i]
        _, fields, done = nodes.unlabeled(s, ctx)
        if done is not None or fields is None:
            _put(s, done or {})
        else:
            targets[i] = fields
    if not targets:
        return
    request = await window_request(ctx, ex, indices, targets, lang)
    first = next(iter(targets))
    trace = CallTrace(purpose="label", dialogue_id=ex.dialogue_id, turn_index=first)
    try:
        result = await nodes.ask(ctx, request, trace)
    except (RetryExhausted, RequestRefused) as e:
        history = ex.restore(nodes.attempts("label", trace, e))
        for i in targets:  # labeled one by one next, this attempt heading their history
            work[i]["history"] = list(history)
        return
    history = ex.restore(nodes.attempts("label", trace, None))
    for i, f in targets.items():
        _put(work[i], nodes.labeled(ctx, ex, f, result.answer[str(i)], result.raw, result.tokens, list(history),
                                     scope=str(i)))
        _put(work[i], {"window": first, "prompt": request.user})
    for sample in ctx.requests.window_samples(request, ex.dialogue_id, first, lang):
        try:
            r = await nodes.ask(ctx, sample, CallTrace(purpose="sample", dialogue_id=ex.dialogue_id, turn_index=first))
        except (RetryExhausted, RequestRefused):
            continue
        for i in targets:
            work[i].setdefault("samples", []).append(r.answer[str(i)])


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


async def critique_window(ctx: Context, ex: Excerpt, states: dict[int, TurnState], lang: str) -> None:
    """One call reviews every labeled turn of a window (``states``, labeled by one call); a failed call makes each
    verdict "unsure", saying why."""
    targets = {i: f for i, s in states.items() if (f := ctx.requests.fields(s.get("role"))) is not None}
    if not targets:
        return
    proposals = {str(i): states[i]["answer"] for i in targets}
    request = ctx.requests.window_critique(states[next(iter(targets))]["prompt"], targets, proposals, lang)
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
