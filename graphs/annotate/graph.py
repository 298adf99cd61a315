"""The ``annotate`` graph: one thread per dialogue.

    prepare ──Send per chunk──► annotate_turns ──┐
            └─Send──────────► session ───────────┴─► finalize

A chunk is a run of consecutive turns (``nodes.TURNS_PER_TASK``, 32), sent with an excerpt of the dialogue: its turns
and the context window before them (``excerpt.py``), never the whole dialogue, so a long dialogue costs the
checkpointer linear, not quadratic, store. The session call is a branch of its own beside the chunks, with the whole
dialogue once. With ``turns_per_call`` = 1 (the default) each turn goes through the per-turn pipeline (label →
critique → validate → score → route: the functions of ``nodes.py`` chained by the routers below); with
``turns_per_call`` = K > 1 the chunk is cut into windows of K turns, each labeled by one call and critiqued by one
(``multi.py``), then validated, scored and routed turn by turn. A chunk's turns (or windows) run concurrently.

The ``Send`` branches run concurrently under the run config's top-level ``max_concurrency`` (the LLM client caps the
calls in flight). The dialogue thread is checkpointed (a finished branch's result is kept as a pending write), so a
killed run resumes where it stopped. A branch is not checkpointed step by step: a chunk interrupted mid-way is
redone, and its LLM calls come from the store's cache.

Why steps chained in a node and not a compiled subgraph, and many turns per branch: as a subgraph every step was
a Pregel superstep of its own (channels, callbacks, task bookkeeping), about 3 ms of CPU per turn; a branch per turn
still cost LangGraph a task, and the checkpointer a packet and a write, per turn — about 1 ms
(``benchmarks/bench_overhead.py``). A step's result only feeds the next step of the same turn, so nothing is lost by
running them in sequence inside the node.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal, cast

from autolabel.graphs.annotate import multi, nodes
from autolabel.graphs.annotate.context import Context
from autolabel.graphs.annotate.state import (
    ChunkInput,
    InputState,
    SessionInput,
    State,
    TurnInput,
    TurnOutput,
    TurnState,
)
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send


def fan_out(state: State, runtime: Runtime[Context]) -> list[Send] | Literal["finalize"]:
    """One ``Send`` per chunk of turns and one for the session; a dialogue without either goes straight on."""
    chunks, session = nodes.branches(state, runtime.context)
    sends = [Send("annotate_turns", c) for c in chunks]
    if session is not None:
        sends.append(Send("session", session))
    return sends or "finalize"


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


async def annotate_turns(state: ChunkInput, runtime: Runtime[Context]) -> TurnOutput:
    """A chunk's turns, concurrently: each through ``annotate_turn``, or (``turns_per_call`` = K > 1) K at a time
    through ``multi.annotate_together``. When one raises, the others are cancelled and the error goes on (the run
    stops, and resumes)."""
    ex, lang, k = state["excerpt"], state["language"], runtime.context.settings.turns_per_call
    indices = state["indices"]
    if k > 1:
        jobs = [multi.annotate_together(ChunkInput(excerpt=ex, indices=indices[i:i + k], language=lang), runtime,
                                        annotate_turn) for i in range(0, len(indices), k)]
    else:
        jobs = [annotate_turn(TurnInput(excerpt=ex, index=i, language=lang), runtime) for i in indices]
    tasks = [asyncio.ensure_future(j) for j in jobs]
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
    b.add_node("annotate_turns", annotate_turns, input_schema=ChunkInput)
    b.add_node("session", nodes.session, input_schema=SessionInput)
    b.add_node("finalize", nodes.finalize)
    b.add_edge(START, "prepare")
    b.add_conditional_edges("prepare", fan_out, ["annotate_turns", "session", "finalize"])
    b.add_edge("annotate_turns", "finalize")
    b.add_edge("session", "finalize")
    b.add_edge("finalize", END)
    return b


graph = build_graph().compile(name="annotate")
