"""Several turns per call (``turns_per_call`` = K > 1): a window of K consecutive turns labeled by one structured call
and critiqued by one; then each turn is validated, scored and routed on its own, as in the per-turn pipeline.

The answer is one JSON object keyed by turn index (``{"12": {...}, "13": {...}}``), each value valid for the turn's
role (the same sub-schemas as one turn's answer); the system message describes every labeled role, so it is the same
for every window of a task and language (a stable prefix). Confidence from logprobs reads each turn's codes inside
its own object (``scope``). When the window's label call fails — invalid after the re-asks, or refused — its turns
are labeled one call each, the failed attempt first in each turn's history.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

from autolabel.graphs.annotate import nodes, prompts
from autolabel.graphs.annotate.context import Context
from autolabel.graphs.annotate.state import TurnInput, TurnOutput, TurnsInput, TurnState
from langgraph.runtime import Runtime

from autolabel.errors import RequestRefused, RetryExhausted
from autolabel.llm.client import CallTrace
from autolabel.models import Dialogue, TurnAnnotation
from autolabel.tasks import RoleFields, TaskSpec

OneTurn = Callable[[TurnInput, Runtime[Context]], Awaitable[TurnOutput]]


def labeled_roles(task: TaskSpec) -> list[RoleFields]:
    """Every role with turn fields, in the spec's order: what a multi-turn system message describes."""
    return [f for f in (task.fields_for(r) for r in task.roles) if f is not None]


def group_schema(ctx: Context, targets: dict[int, RoleFields], kind: str = "label") -> dict[str, Any]:
    """The answer for a window: one object per target turn, keyed by its index, with the role's own schema."""
    def one(f: RoleFields) -> dict[str, Any]:
        if kind == "critique":
            return ctx.once(("critique_schema", f.role), lambda: ctx.task.critique_schema(f))
        return nodes._schema(ctx, f)

    props = {str(i): one(f) for i, f in targets.items()}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def shuffled_roles(all_fields: list[RoleFields], dialogue_id: str, index: int, k: int) -> list[RoleFields]:
    """Every role's options in the order sample ``k`` of the window starting at ``index`` shows them."""
    rng = nodes.sample_rng(dialogue_id, index, k)
    return [nodes.shuffle_options(f, rng) for f in all_fields]


async def annotate_together(state: TurnsInput, runtime: Runtime[Context], one_turn: OneTurn) -> TurnOutput:
    """Label, critique, validate, score and route the turns of one window (``one_turn``: the per-turn pipeline, for
    turns whose window call failed)."""
    ctx = runtime.context
    d, lang = state["dialogue"], state["language"]
    states = {i: cast(TurnState, {"dialogue": d, "index": i, "language": lang}) for i in state["indices"]}
    targets: dict[int, RoleFields] = {}
    for i, s in states.items():
        turn = d.turns[i]
        role = ctx.task.role_of(turn.speaker)
        fields = nodes._fields(runtime, role)
        if role is None:
            s["role"], s["failed"] = None, f"unknown_speaker: {turn.speaker!r} is not mapped to a role by the task"
        elif fields is None:
            _put(s, {"role": role, "answer": {}, "labels": {}, "texts": {}, "history": []})
        else:
            targets[i] = fields
    done: list[TurnAnnotation] = []
    if targets:
        user = await _user(ctx, d, state["indices"], targets, lang)
        fallback = await _label(ctx, d, states, targets, user, lang)
        if fallback is not None:  # the window call failed: these turns go one by one, and are done
            done += await _one_by_one(state, runtime, one_turn, fallback)
            for i in fallback[1]:
                del states[i], targets[i]
        if ctx.settings.critique:
            await _critique(ctx, d, states, {i: f for i, f in targets.items() if states[i].get("labels")}, user, lang)
    for s in states.values():
        if not s.get("failed"):
            _put(s, await nodes.validate(s, runtime))
            if not s.get("failed"):
                _put(s, await nodes.score(s, runtime))
        done += (await nodes.route(s, runtime))["turns"]
    return TurnOutput(turns=sorted(done, key=lambda a: a.turn_index))


def _put(state: TurnState, update: dict[str, Any]) -> None:
    state.update(update)  # type: ignore[typeddict-item]


async def _user(ctx: Context, d: Dialogue, indices: list[int], targets: dict[int, RoleFields], lang: str) -> str:
    """The window's user message: similar reviewed examples per role, the context before it, its turns."""
    task = ctx.task
    window = ctx.settings.window if ctx.settings.window is not None else task.context.window
    sent, redactor = nodes._sent(ctx, d)
    similar: dict[str, list[dict[str, Any]]] = {}
    if ctx.examples is not None:
        lookup = ctx.examples
        for role in dict.fromkeys(f.role for f in targets.values()):
            text = "\n".join(d.turns[i].text for i, f in targets.items() if f.role == role)
            found = await asyncio.to_thread(lookup, role, lang, text)
            similar[role] = [nodes._redacted_example(ex) for ex in found] if redactor is not None else found
    return prompts.group_user(sent, targets, indices, window, task.context.max_turn_chars, lang, similar, task)


def _system(ctx: Context, lang: str) -> str:
    return ctx.once(("group_system", lang), lambda: prompts.group_system(ctx.task, labeled_roles(ctx.task), lang))


async def _label(ctx: Context, d: Dialogue, states: dict[int, TurnState], targets: dict[int, RoleFields], user: str,
                 lang: str) -> tuple[list[dict[str, Any]], set[int]] | None:
    """One call labels every target; None when it did, else (its history, the turns to label one by one)."""
    first = next(iter(targets))
    schema = group_schema(ctx, targets)
    messages = [{"role": "system", "content": _system(ctx, lang)}, {"role": "user", "content": user}]
    trace = CallTrace(purpose="label", dialogue_id=d.id, turn_index=first)
    max_tokens = ctx.settings.max_tokens * len(targets)
    try:
        result = await ctx.llm.structured(messages, schema, name="label_turns", trace=trace, max_tokens=max_tokens)
    except (RetryExhausted, RequestRefused) as e:
        return nodes._restore(ctx, d, nodes._history("label", trace, e)), set(targets)
    history = nodes._restore(ctx, d, nodes._history("label", trace, None))
    for i, f in targets.items():
        _put(states[i], nodes.labeled(ctx, d, f, result.answer[str(i)], result.raw, result.tokens, list(history),
                                       scope=str(i)))
    for k in range(1, ctx.settings.samples):
        shuffled = shuffled_roles(labeled_roles(ctx.task), d.id, first, k)
        msgs = [{"role": "system", "content": prompts.group_system(ctx.task, shuffled, lang)}, messages[1]]
        try:
            r = await ctx.llm.structured(msgs, schema, name="sample_turns", temperature=0.7, seed=k,
                                         trace=CallTrace(purpose="sample", dialogue_id=d.id, turn_index=first),
                                         max_tokens=max_tokens)
        except (RetryExhausted, RequestRefused):
            continue
        for i in targets:
            states[i].setdefault("samples", []).append(r.answer[str(i)])
    return None


async def _one_by_one(state: TurnsInput, runtime: Runtime[Context], one_turn: OneTurn,
                      fallback: tuple[list[dict[str, Any]], set[int]]) -> list[TurnAnnotation]:
    """The turns of a failed window call, each through the per-turn pipeline; the failed attempt heads each
    turn's history (and counts among its attempts)."""
    history, indices = fallback
    outs = await asyncio.gather(*(one_turn(TurnInput(dialogue=state["dialogue"], index=i,
                                                     language=state["language"]), runtime) for i in sorted(indices)))
    anns = [a for out in outs for a in out["turns"]]
    return [a.model_copy(update={"history": [*history, *a.history], "attempts": len(history) + len(a.history)})
            for a in anns]


async def _critique(ctx: Context, d: Dialogue, states: dict[int, TurnState], targets: dict[int, RoleFields],
                    user: str, lang: str) -> None:
    """One call reviews every labeled target; a failed call makes each verdict "unsure", saying why."""
    if not targets:
        return
    system = ctx.once(("group_critique_system", lang),
                      lambda: prompts.group_critique_system(ctx.task, labeled_roles(ctx.task), lang))
    proposals = {str(i): states[i]["answer"] for i in targets}
    msgs = [{"role": "system", "content": system},
            {"role": "user", "content": prompts.critique_user(user, proposals, lang)}]
    trace = CallTrace(purpose="critique", dialogue_id=d.id, turn_index=next(iter(targets)))
    try:
        result = await ctx.llm.structured(msgs, group_schema(ctx, targets, "critique"), name="critique_turns",
                                          trace=trace, max_tokens=ctx.settings.max_tokens * len(targets))
    except (RetryExhausted, RequestRefused) as e:
        history = nodes._restore(ctx, d, nodes._history("critique", trace, e))
        for i in targets:
            _put(states[i], nodes.critique_failed(ctx, states[i], e, [*states[i].get("history", []), *history]))
        return
    history = nodes._restore(ctx, d, nodes._history("critique", trace, None))
    for i, f in targets.items():
        _put(states[i], nodes.critiqued(ctx, states[i], f, result.answer[str(i)],
                                         [*states[i].get("history", []), *history]))
