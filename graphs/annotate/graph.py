"""The ``annotate`` graph: one thread per dialogue.

    prepare ──Send per turn──► annotate_turn (label → critique → validate → score → route) ──► session ──► finalize

``annotate_turn`` is the per-turn pipeline compiled as its own graph; the ``Send`` branches run concurrently under
the run config's top-level ``max_concurrency``. The dialogue thread is checkpointed (a finished branch's result is
kept as a pending write), so a killed run resumes where it stopped. The per-turn pipeline is not checkpointed step
by step: a turn interrupted mid-way is redone, and its LLM calls come from the store's cache.
"""

from __future__ import annotations

from typing import Literal

from autolabel.graphs.annotate import nodes
from autolabel.graphs.annotate.context import Context
from autolabel.graphs.annotate.state import InputState, State, TurnInput, TurnOutput, TurnState
from langgraph.graph import END, START, StateGraph
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


def build_turn_graph() -> StateGraph:
    b = StateGraph(TurnState, context_schema=Context, input_schema=TurnInput, output_schema=TurnOutput)
    b.add_node("label", nodes.label)
    b.add_node("critique", nodes.critique)
    b.add_node("validate", nodes.validate)
    b.add_node("score", nodes.score)
    b.add_node("route", nodes.route)
    b.add_edge(START, "label")
    b.add_conditional_edges("label", after_label)
    b.add_edge("critique", "validate")
    b.add_conditional_edges("validate", after_validate)
    b.add_edge("score", "route")
    b.add_edge("route", END)
    return b


def build_graph() -> StateGraph:
    b = StateGraph(State, context_schema=Context, input_schema=InputState)
    b.add_node("prepare", nodes.prepare)
    b.add_node("annotate_turn", turn_graph)
    b.add_node("session", nodes.session)
    b.add_node("finalize", nodes.finalize)
    b.add_edge(START, "prepare")
    b.add_conditional_edges("prepare", fan_out, ["annotate_turn", "session"])
    b.add_edge("annotate_turn", "session")
    b.add_edge("session", "finalize")
    b.add_edge("finalize", END)
    return b


turn_graph = build_turn_graph().compile(checkpointer=False, name="annotate_turn")
graph = build_graph().compile(name="annotate")
