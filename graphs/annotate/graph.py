"""The ``annotate`` graph: one thread per dialogue; each chunk of turns runs the ``turns`` subgraph.

    prepare ──Send per chunk──► annotate_turns ──┐
            └─Send──────────► session ───────────┴─► finalize

    annotate_turns (the turns subgraph, shown by ``graph.get_graph(xray=True)``):
        begin ─┬─► label ────────────────────────────┬─► critique ─► validate ─► score ─► route
               └─► label_windows ─► label ─► critique_windows ─┘      (critique skipped when off)

A chunk is a run of consecutive turns (``nodes.TURNS_PER_TASK``, 32), sent with an excerpt of the dialogue: its turns
and the context window before them (``excerpt.py``), never the whole dialogue, so a long dialogue costs the
checkpointer linear, not quadratic, store. The session call is a branch of its own beside the chunks, with the whole
dialogue once.

Each step of the subgraph is a node that runs on every turn of the chunk it applies to, concurrently: ``label`` (one
structured call per turn), ``critique``, ``validate``, ``score``, ``route`` (the per-turn functions of ``nodes.py``);
with ``turns_per_call`` = K > 1, ``label_windows`` labels K turns per call and ``critique_windows`` critiques them
per window (``multi.py``), and the per-turn ``label`` and ``critique`` take only the turns whose window call failed.
The per-turn routers (``after_label``, ``after_validate``) pick which turns a step takes.

Why a step per chunk and not per turn: as a subgraph per turn every step was a Pregel superstep of its own (channels,
callbacks, task bookkeeping) for one turn, about 3 ms of CPU per turn; per chunk it is shared by 32 turns
(``benchmarks/bench_overhead.py``). A run's checkpointer keeps the dialogue thread's checkpoints only, not the
subgraph's (``autolabel/annotator.py``): a finished chunk's result is kept as a pending write, so a killed run resumes
where it stopped; a chunk interrupted mid-way is redone, and its LLM calls come from the store's cache.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from autolabel.graphs.annotate import multi, nodes
from autolabel.graphs.annotate.context import Context
from autolabel.graphs.annotate.state import (
    ChunkInput,
    ChunkState,
    InputState,
    SessionInput,
    State,
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
    """Where a turn goes after it was labeled."""
    if state.get("failed"):
        return "route"
    if not state.get("labels"):
        return "validate"  # nothing to label for this role
    return "critique"


def after_validate(state: TurnState) -> Literal["score", "route"]:
    return "route" if state.get("failed") else "score"


# -- the turns subgraph: one chunk, a node per step -------------------------------------------------------------

Step = Callable[[TurnState, Runtime[Context]], Awaitable[dict[str, Any]]]


async def _each(state: ChunkState, runtime: Runtime[Context], step: Step, take: Callable[[TurnState], bool]
                ) -> dict[str, Any]:
    """``step`` on every turn of the chunk that ``take`` picks, concurrently (when one raises, the others are
    cancelled and the error goes on: the run stops, and resumes)."""
    work = state["work"]
    todo = [s for s in work.values() if take(s)]
    for s, update in zip(todo, await _gather([step(s, runtime) for s in todo]), strict=True):
        s.update(update)
    return {"work": work}


async def _gather(jobs: list[Awaitable[Any]]) -> list[Any]:
    tasks = [asyncio.ensure_future(j) for j in jobs]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def begin(state: ChunkState) -> dict[str, Any]:
    """Each turn of the chunk starts its pipeline state."""
    ex, lang = state["excerpt"], state["language"]
    return {"work": {i: TurnState(excerpt=ex, index=i, language=lang) for i in state["indices"]}}


def by_mode(state: ChunkState, runtime: Runtime[Context]) -> Literal["label", "label_windows"]:
    """One call per turn, or one per window of ``turns_per_call`` turns."""
    return "label_windows" if runtime.context.settings.turns_per_call > 1 else "label"


async def label_windows(state: ChunkState, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx, ex, lang, work = runtime.context, state["excerpt"], state["language"], state["work"]
    await _gather([multi.label_window(ctx, ex, w, work, lang)
                   for w in multi.windows(state["indices"], ctx.settings.turns_per_call)])
    return {"work": work}


async def _label_alone(s: TurnState, runtime: Runtime[Context]) -> dict[str, Any]:
    """The per-turn label call; a failed window call's attempt stays first in the turn's history."""
    before = s.get("history", [])
    update = await nodes.label(s, runtime)
    if before:
        update["history"] = [*before, *update.get("history", [])]
    return update


async def label(state: ChunkState, runtime: Runtime[Context]) -> dict[str, Any]:
    return await _each(state, runtime, _label_alone, lambda s: "role" not in s)


def after_labels(state: ChunkState, runtime: Runtime[Context]
                 ) -> Literal["critique", "critique_windows", "validate"]:
    settings = runtime.context.settings
    if not settings.critique:
        return "validate"
    return "critique_windows" if settings.turns_per_call > 1 else "critique"


async def critique_windows(state: ChunkState, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx, ex, lang, work = runtime.context, state["excerpt"], state["language"], state["work"]
    groups: dict[int, dict[int, TurnState]] = {}
    for i, s in work.items():
        if "window" in s and after_label(s) == "critique":
            groups.setdefault(s["window"], {})[i] = s
    await _gather([multi.critique_window(ctx, ex, g, lang) for g in groups.values()])
    return {"work": work}


async def critique(state: ChunkState, runtime: Runtime[Context]) -> dict[str, Any]:
    return await _each(state, runtime, nodes.critique,
                       lambda s: "window" not in s and after_label(s) == "critique")


async def validate(state: ChunkState, runtime: Runtime[Context]) -> dict[str, Any]:
    return await _each(state, runtime, nodes.validate, lambda s: after_label(s) != "route")


async def score(state: ChunkState, runtime: Runtime[Context]) -> dict[str, Any]:
    return await _each(state, runtime, nodes.score, lambda s: after_validate(s) == "score")


async def route(state: ChunkState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Accept or flag each turn (failures keep their reason): the chunk's annotations, in turn order."""
    work = state["work"]
    outs = await _gather([nodes.route(work[i], runtime) for i in sorted(work)])
    return {"turns": [a for out in outs for a in out["turns"]]}


def build_turns_graph() -> StateGraph[ChunkState, Context, ChunkInput, TurnOutput]:
    """The turns subgraph: one chunk's turns through label → critique → validate → score → route."""
    b = StateGraph(ChunkState, context_schema=Context, input_schema=ChunkInput, output_schema=TurnOutput)
    for name, step in (("begin", begin), ("label_windows", label_windows), ("label", label),
                       ("critique_windows", critique_windows), ("critique", critique), ("validate", validate),
                       ("score", score), ("route", route)):
        b.add_node(name, step)
    b.add_edge(START, "begin")
    b.add_conditional_edges("begin", by_mode, ["label", "label_windows"])
    b.add_edge("label_windows", "label")  # the turns whose window call failed, one call each
    b.add_conditional_edges("label", after_labels, ["critique", "critique_windows", "validate"])
    b.add_edge("critique_windows", "critique")  # the turns labeled on their own
    b.add_edge("critique", "validate")
    b.add_edge("validate", "score")
    b.add_edge("score", "route")
    b.add_edge("route", END)
    return b


def build_graph() -> StateGraph[State, Context, InputState, State]:
    b = StateGraph(State, context_schema=Context, input_schema=InputState)
    b.add_node("prepare", nodes.prepare)
    # the run's checkpointer keeps the dialogue thread's checkpoints, not the subgraph's (``annotator.py``): a chunk
    # interrupted mid-way is redone, its calls from the cache
    b.add_node("annotate_turns", build_turns_graph().compile(name="turns"))
    b.add_node("session", nodes.session, input_schema=SessionInput)
    b.add_node("finalize", nodes.finalize)
    b.add_edge(START, "prepare")
    b.add_conditional_edges("prepare", fan_out, ["annotate_turns", "session", "finalize"])
    b.add_edge("annotate_turns", "finalize")
    b.add_edge("session", "finalize")
    b.add_edge("finalize", END)
    return b


graph = build_graph().compile(name="annotate")
