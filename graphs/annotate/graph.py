"""The ``annotate`` graph: one thread per dialogue.

    prepare ──Send per turn──► annotate_turn (label → critique → validate → score → route) ──► session ──► finalize

``annotate_turn`` is the per-turn pipeline, one node whose steps are the functions of ``nodes.py`` chained by the
routers below; the ``Send`` branches run concurrently under the run config's top-level ``max_concurrency``. The
dialogue thread is checkpointed (a finished branch's result is kept as a pending write), so a killed run resumes
where it stopped. The per-turn pipeline is not checkpointed step by step: a turn interrupted mid-way is redone, and
its LLM calls come from the store's cache.

Why one node and not a compiled subgraph: as a subgraph every step was a Pregel superstep of its own (channels,
callbacks, task bookkeeping), which cost about 3 ms of CPU per turn — as much as a third of the client's CPU per
LLM call (``benchmarks/bench_overhead.py``). A step's result only feeds the next step of the same turn, so nothing is
lost by running them in sequence inside the node.
"""

from __future__ import annotations

from typing import Any, Literal, cast

from autolabel.graphs.annotate import nodes
from autolabel.graphs.annotate.context import Context
from autolabel.graphs.annotate.state import InputState, State, TurnInput, TurnOutput, TurnState
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send


def fan_out(state: State) -> list[Send] | Literal["session"]:
    """One ``Send`` per turn; a dialogue without turns goes straight to the session step."""
    d = state["dialogue"]
    if not d.turns:
        return "session"
    return [Send("annotate_turn", TurnInput(dialogue=d, index=t.index, language=state["language"]))
            for t in d.turns]


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


def _merge(state: TurnState, update: dict[str, Any]) -> TurnState:
    state.update(update)  # type: ignore[typeddict-item]
    return state


def build_graph() -> StateGraph[State, Context, InputState, State]:
    b = StateGraph(State, context_schema=Context, input_schema=InputState)
    b.add_node("prepare", nodes.prepare)
    b.add_node("annotate_turn", annotate_turn, input_schema=TurnInput)
    b.add_node("session", nodes.session)
    b.add_node("finalize", nodes.finalize)
    b.add_edge(START, "prepare")
    b.add_conditional_edges("prepare", fan_out, ["annotate_turn", "session"])
    b.add_edge("annotate_turn", "session")
    b.add_edge("session", "finalize")
    b.add_edge("finalize", END)
    return b


graph = build_graph().compile(name="annotate")
