"""The ``annotate`` graph: one thread per dialogue.

    prepare ──Send per window──► annotate_window ──► session ──► finalize

A window is a run of consecutive turns. With ``turns_per_call`` = 1 (the default) each turn of a window goes through
the per-turn pipeline (label → critique → validate → score → route: the functions of ``nodes.py`` chained by the
routers below), the window's turns concurrently; with ``turns_per_call`` = K > 1 a window holds K turns, labeled by
one call and critiqued by one (``multi.py``), then validated, scored and routed turn by turn.

The ``Send`` branches run concurrently under the run config's top-level ``max_concurrency`` (the LLM client caps the
calls in flight). The dialogue thread is checkpointed (a finished branch's result is kept as a pending write), so a
killed run resumes where it stopped. A branch is not checkpointed step by step: a window interrupted mid-way is
redone, and its LLM calls come from the store's cache.

Why steps chained in a node and not a compiled subgraph, and several turns per branch: as a subgraph every step was
a Pregel superstep of its own (channels, callbacks, task bookkeeping), about 3 ms of CPU per turn; a branch per turn
still cost LangGraph a task and the checkpointer a write per turn (``benchmarks/bench_overhead.py``). A step's result
only feeds the next step of the same turn, so nothing is lost by running them in sequence inside the node.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal, cast

from autolabel.graphs.annotate import multi, nodes
from autolabel.graphs.annotate.context import Context
from autolabel.graphs.annotate.state import InputState, State, TurnInput, TurnOutput, TurnState, WindowInput
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send


def fan_out(state: State) -> list[Send] | Literal["session"]:
    """One ``Send`` per window of turns; a dialogue without turns goes straight to the session step."""
    if not state["dialogue"].turns:
        return "session"
    return [Send("annotate_window", WindowInput(dialogue=state["dialogue"], indices=w, language=state["language"]))
            for w in state["windows"]]


def after_label(state: TurnState) -> Literal["critique", "validate", "route"]:
    if state.get("failed"):
        return "route"
    if not state.get("labels"):
        return "validate"  # nothing to label for this role
    return "critique"


def after_validate(state: TurnState) -> Literal["score", "route"]:
    return "route" if state.get("failed") else "score"


async def annotate_turn(state: TurnInput, runtime: Runtime[Context]) -> TurnOutput:
    """The per-turn pipeline: label → critique → validate → score → route (the routers above pick the steps)."""
    s = cast(TurnState, dict(state))
    step = after_label(_merge(s, await nodes.label(s, runtime)))
    if step == "critique":
        _merge(s, await nodes.critique(s, runtime))
        step = "validate"
    if step == "validate" and after_validate(_merge(s, await nodes.validate(s, runtime))) == "score":
        _merge(s, await nodes.score(s, runtime))
    return cast(TurnOutput, await nodes.route(s, runtime))


async def annotate_window(state: WindowInput, runtime: Runtime[Context]) -> TurnOutput:
    """A window's turns: one call for all of them (``turns_per_call`` > 1), or each through ``annotate_turn``,
    concurrently (when one raises, the others are cancelled and the error goes on: the run stops, and resumes)."""
    if runtime.context.settings.turns_per_call > 1:
        return await multi.annotate_together(state, runtime, annotate_turn)
    d, lang = state["dialogue"], state["language"]
    tasks = [asyncio.ensure_future(annotate_turn(TurnInput(dialogue=d, index=i, language=lang), runtime))
             for i in state["indices"]]
    try:
        done = await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return TurnOutput(turns=[a for out in done for a in out["turns"]])


def _merge(state: TurnState, update: dict[str, Any]) -> TurnState:
    state.update(update)  # type: ignore[typeddict-item]
    return state


def build_graph() -> StateGraph[State, Context, InputState, State]:
    b = StateGraph(State, context_schema=Context, input_schema=InputState)
    b.add_node("prepare", nodes.prepare)
    b.add_node("annotate_window", annotate_window, input_schema=WindowInput)
    b.add_node("session", nodes.session)
    b.add_node("finalize", nodes.finalize)
    b.add_edge(START, "prepare")
    b.add_conditional_edges("prepare", fan_out, ["annotate_window", "session"])
    b.add_edge("annotate_window", "session")
    b.add_edge("session", "finalize")
    b.add_edge("finalize", END)
    return b


graph = build_graph().compile(name="annotate")
