"""Nodes of the ``annotate`` graph. Each takes the state (and the run's context) and returns an update."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from autolabel.graphs.annotate.context import Context
from autolabel.graphs.annotate.excerpt import Excerpt, cut
from autolabel.graphs.annotate.requests import Request
from autolabel.graphs.annotate.state import ChunkInput, SessionInput, State, TurnState
from langgraph.runtime import Runtime

from autolabel.errors import RequestRefused, RetryExhausted
from autolabel.llm.client import CallTrace, Structured, option_probabilities
from autolabel.models import Dialogue, FieldConfidence, SessionAnnotation, Status, Turn, TurnAnnotation
from autolabel.quality.explanations import NOT_EXPLANATIONS, copy_problem, same
from autolabel.records import session_record, turn_record
from autolabel.safety.risk import detect_injection, detect_risk
from autolabel.tasks import RoleFields
from autolabel.text import detect_language, truncate
from autolabel.validation import validation_errors

CRITIC_SCORE = {"agree": 1.0, "unsure": 0.5, "revise": 0.0}
DEFAULT_THRESHOLD = 0.5


# -- dialogue level ---------------------------------------------------------------------------------------

TURNS_PER_TASK = 32
"""Turns per ``Send`` branch (rounded up to whole windows of ``turns_per_call``): the branch runs their calls
concurrently. A branch costs LangGraph a task and the checkpointer its packet (its turns and the context window
before them) and a pending write: about 1 ms of CPU, as much as a third of the client's own CPU per call when each
turn was a branch."""


async def prepare(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Detect the dialogue's language (it picks prompts and descriptions). A dialogue given as JSON (LangGraph's
    tooling: ``{"id": ..., "turns": [{"speaker": ..., "text": ...}]}``) becomes a ``Dialogue``."""
    d = as_dialogue(state["dialogue"])
    out: dict[str, Any] = {"language": detect_language([t.text for t in d.turns], runtime.context.task.languages)}
    if d is not state["dialogue"]:
        out["dialogue"] = d
    return out


def as_dialogue(value: Dialogue | dict[str, Any]) -> Dialogue:
    """``value`` as a Dialogue; turns without an ``index`` are numbered in order."""
    if isinstance(value, Dialogue):
        return value
    turns = [{"index": i, **t} for i, t in enumerate(value.get("turns", []))]
    return Dialogue.model_validate({**value, "turns": turns})


def branches(state: State, ctx: Context) -> tuple[list[ChunkInput], SessionInput | None]:
    """The turns cut into chunks, each a whole number of ``turns_per_call`` windows, each with the excerpt it needs
    (its turns and the context window before them, ``--redact``'s placeholders in place); the session's input when
    the task has session fields."""
    d, lang = state["dialogue"], state["language"]
    k = ctx.settings.turns_per_call
    size = -(-TURNS_PER_TASK // k) * k
    only = state.get("only")
    todo = [t.index for t in d.turns] if only is None else sorted(set(only) & {t.index for t in d.turns})
    chunks = [todo[i:i + size] for i in range(0, len(todo), size)]
    parts, whole = cut(d, chunks, ctx.requests.window, ctx.settings.redact)
    asks_session = only is None and ctx.requests.session_fields() is not None  # a later stage: the session is done
    session = SessionInput(excerpt=whole, language=lang) if asks_session else None
    return [ChunkInput(excerpt=e, indices=c, language=lang) for e, c in zip(parts, chunks, strict=True)], session


async def ask(ctx: Context, request: Request, trace: CallTrace) -> Structured:
    """One structured call of ``request`` (raises RetryExhausted, RequestRefused, other LLMErrors)."""
    return await ctx.llm.structured(request.messages, request.schema, name=request.name, trace=trace,
                                    **request.options)


def trace_of(state: TurnState, purpose: str) -> CallTrace:
    return CallTrace(purpose=purpose, dialogue_id=state["excerpt"].dialogue_id, turn_index=state["index"])


def restore(state: TurnState, obj: Any) -> Any:
    return state["excerpt"].restore(obj)


# -- turn level -------------------------------------------------------------------------------------------

def unlabeled(state: TurnState, ctx: Context) -> tuple[str | None, RoleFields | None, dict[str, Any] | None]:
    """The turn's role and fields; or the state update of a turn that takes no call (an unknown speaker fails, a
    role with nothing to label is done)."""
    turn = state["excerpt"].turn(state["index"])
    role = ctx.task.role_of(turn.speaker)
    if role is None:
        return None, None, {"role": None,
                            "failed": f"unknown_speaker: {turn.speaker!r} is not mapped to a role by the task"}
    fields = ctx.requests.fields(role)
    if fields is None:
        return role, None, {"role": role, "answer": {}, "labels": {}, "texts": {}, "history": []}
    return role, fields, None


async def similar_examples(ctx: Context, role: str, language: str, text: str) -> list[dict[str, Any]] | None:
    """Reviewed examples similar to ``text`` (few-shot), looked up in a worker thread (embedding is CPU work)."""
    if ctx.examples is None:
        return None
    return await asyncio.to_thread(ctx.examples, role, language, text)


async def label(state: TurnState, runtime: Runtime[Context]) -> dict[str, Any]:
    """One structured call: explanation first, then labels as option codes, validated (re-asked by instructor)."""
    ctx = runtime.context
    role, fields, done = unlabeled(state, ctx)
    if done is not None or fields is None:
        return done or {}
    ex, lang = state["excerpt"], state["language"]
    similar = await similar_examples(ctx, fields.role, lang, ex.turn(state["index"]).text)
    request = ctx.requests.label(ex, state["index"], fields, lang, similar)
    trace = trace_of(state, "label")
    try:
        result = await ask(ctx, request, trace)
    except RetryExhausted as e:
        return restore(state, {"role": role, "failed": f"invalid_output: {e}", "raw": e.last_output or "",
                               "history": attempts("label", trace, e)})
    except RequestRefused as e:  # other LLMErrors (endpoint down, bad key) stop the run; it resumes later
        return restore(state, {"role": role, "failed": f"llm_error: {e}", "raw": "",
                               "history": attempts("label", trace, e)})
    out = labeled(ctx, ex, fields, result.answer, result.raw, result.tokens,
                  restore(state, attempts("label", trace, None)))
    out["prompt"] = request.user  # the critique shows the same turn prompt (built, examples looked up, once)
    if ctx.settings.samples > 1:
        out["samples"] = await _samples(state, ctx, fields, request)
    return out


def labeled(ctx: Context, ex: Excerpt, fields: RoleFields, answer: dict[str, Any], raw: str,
            tokens: list[tuple[str, float]] | None, history: list[dict[str, Any]],
            scope: str | None = None) -> dict[str, Any]:
    """The state update of a labeled turn. ``answer`` and ``raw`` stay as the model saw them (the critique quotes the
    answer; logprobs spell the raw text); the texts are restored (``--redact``)."""
    labels, texts = ctx.task.decode(fields, answer)
    return {"role": fields.role, "answer": answer, "raw": raw, "tokens": tokens, "scope": scope, "labels": labels,
            "texts": ex.restore(texts), "history": history}


async def _samples(state: TurnState, ctx: Context, fields: RoleFields, label: Request) -> list[dict[str, Any]]:
    """k extra answers at temperature 0.7 with the options shown in a shuffled order (agreement signal)."""
    answers = []
    for request in ctx.requests.samples(label, fields, state["excerpt"].dialogue_id, state["index"],
                                        state["language"]):
        try:
            r = await ask(ctx, request, trace_of(state, "sample"))
        except (RetryExhausted, RequestRefused):
            continue
        answers.append(r.answer)
    return answers


async def critique(state: TurnState, runtime: Runtime[Context]) -> dict[str, Any]:
    """A second call reviews label + explanation: agree / revise (with new labels) / unsure."""
    ctx = runtime.context
    fields = ctx.requests.fields(state.get("role"))
    if fields is None or not ctx.settings.critique:
        return {"critique": None}
    lang = state["language"]
    user = state.get("prompt") or ctx.requests.label(state["excerpt"], state["index"], fields, lang).user
    request = ctx.requests.critique(user, fields, state["answer"], lang)
    trace = trace_of(state, "critique")
    history = list(state.get("history", []))
    try:
        result = await ask(ctx, request, trace)
    except (RetryExhausted, RequestRefused) as e:
        history += restore(state, attempts("critique", trace, e))
        last = last_answer(e)
        if last is not None and unlabeled_revise(ctx, fields, last):
            return inconsistent(state, last, history)
        return critique_failed(state, e, history)
    history += restore(state, attempts("critique", trace, None))
    return critiqued(ctx, state, fields, result.answer, history)


INCONSISTENT = "revise without valid revised labels"
"""Marks a critique whose "revise" came without valid labels (kept as "unsure"; ``RunSummary.critic_inconsistent``)."""


def last_answer(error: Exception) -> dict[str, Any] | None:
    """The last output of a call whose answer never validated, when it is a JSON object."""
    raw = error.last_output if isinstance(error, RetryExhausted) else None
    try:
        value = json.loads(raw) if raw else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def unlabeled_revise(ctx: Context, fields: RoleFields, answer: Any) -> bool:
    """Is ``answer`` a "revise" verdict without valid revised labels? (The critique schema refuses it, so it is
    re-asked; this is what still gets through.)"""
    if not isinstance(answer, dict) or answer.get("verdict") != "revise":
        return False
    revised = answer.get("revised")
    return not isinstance(revised, dict) or bool(validation_errors(ctx.requests.labels_schema(fields), revised))


def inconsistent(state: TurnState, answer: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """The state update of a "revise" without valid labels: an "unsure" verdict, marked, the labels unchanged."""
    reason = answer.get("reason")
    return {"critique": {"verdict": "unsure", "revised": None, "inconsistent": INCONSISTENT,
                         "reason": restore(state, reason if isinstance(reason, str) else "")},
            "history": history}


def critiqued(ctx: Context, state: TurnState, fields: RoleFields, answer: dict[str, Any],
              history: list[dict[str, Any]]) -> dict[str, Any]:
    """The state update of a critiqued turn: a "revise" verdict with revised labels replaces the labels (the
    proposal is kept in the critique)."""
    if unlabeled_revise(ctx, fields, answer):
        return inconsistent(state, answer, history)
    crit = restore(state, dict(answer))
    update: dict[str, Any] = {"critique": crit, "history": history}
    if crit["verdict"] == "revise" and crit.get("revised"):
        revised = {**state["answer"], **crit["revised"]}
        labels, _ = ctx.task.decode(fields, revised)
        crit["proposed"] = state["labels"]
        crit["revised"] = labels
        update["labels"] = labels
    return update


def critique_failed(state: TurnState, error: Exception, history: list[dict[str, Any]]) -> dict[str, Any]:
    """The state update when the critique could not be had: an "unsure" verdict that says why."""
    return {"critique": {"verdict": "unsure", "revised": None, "reason": restore(state, f"critique failed: {error}")},
            "history": history}


async def validate(state: TurnState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Final gate: the labels against the generated schema, the record against annotation.schema.json."""
    ctx = runtime.context
    fields = ctx.requests.fields(state["role"])
    if fields is None:
        return {}
    answer = {**state["answer"], **ctx.task.encode(fields, state["labels"])}
    problems = validation_errors(ctx.requests.schema(fields), answer)
    if not problems:
        probe = _turn_annotation(state, Status.ACCEPTED)
        problems = _record_problems(ctx, probe)
    if not problems:
        return {}
    return {"failed": f"invalid_output: {problems[0]}", "raw": restore(state, state.get("raw", ""))}


async def score(state: TurnState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Confidence per field from the signals at hand, through the stored calibrator when there is one.

    Without a calibrator the value is the mean of the available signals (option probability from logprobs,
    the critic's verdict as 1 / 0.5 / 0, agreement of samples, agreement with the nearest reviewed turns) — a
    documented placeholder, not a probability.
    """
    ctx = runtime.context
    fields = ctx.requests.fields(state["role"])
    if fields is None:
        return {"confidence": {}}
    crit = state.get("critique")
    out: dict[str, Any] = {}
    for f in fields.labels:
        signals: dict[str, float] = {}
        probs = option_probabilities(state.get("raw", ""), state.get("tokens"), f.name, f.multi, state.get("scope"))
        if probs:
            signals["logprob"] = min(probs.values())
        if crit is not None:
            signals["critic"] = CRITIC_SCORE[crit["verdict"]]
        if state.get("samples"):
            signals["sample_agreement"] = _agreement(state["labels"].get(f.name), ctx, fields, f.name,
                                                     state["samples"])
        if ctx.knn_agreement is not None and f.name in state["labels"]:
            turn = state["excerpt"].turn(state["index"])
            knn = await asyncio.to_thread(ctx.knn_agreement, fields.role, state["language"], turn.text, f.name,
                                          state["labels"][f.name])
            if knn is not None:
                signals["knn_agreement"] = knn
        value = ctx.calibrate(f.name, signals) if ctx.calibrate else (
            sum(signals.values()) / len(signals) if signals else 0.0)
        out[f.name] = FieldConfidence(value=min(1.0, max(0.0, value)), signals=signals)
    return {"confidence": out}


def _agreement(value: Any, ctx: Context, fields: RoleFields, name: str, samples: list[dict[str, Any]]) -> float:
    field = next(f for f in fields.labels if f.name == name)
    mine = set(value if isinstance(value, list) else [value])
    same = 0
    for s in samples:
        v: Any = s.get(name)  # a sample is a schema-valid answer: it has every field
        theirs = {field.name_of(c) for c in (v if isinstance(v, list) else [v])}
        same += theirs == mine
    return same / len(samples)


INLINE_SCAN_CHARS = 20_000


async def route(state: TurnState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Accept, or flag with reasons; failures keep their reason and last raw output."""
    ctx = runtime.context
    # a failed turn keeps them too (risk content, injection, truncation); a long turn is scanned in a thread so that
    # the other turns' calls go on meanwhile (~0.5 s per MB), a short one inline (a thread hop costs more than that)
    if len(state["excerpt"].turn(state["index"]).text) > INLINE_SCAN_CHARS:
        flags = await asyncio.to_thread(_content_flags, state, ctx)
    else:
        flags = _content_flags(state, ctx)
    if state.get("failed"):
        return {"turns": [_turn_annotation({**state, "flags": flags}, Status.FAILED)]}
    crit = state.get("critique")
    if crit is not None and crit["verdict"] == "revise":
        flags.append("critic_disagrees")
    elif crit is not None and crit["verdict"] == "unsure":
        flags.append("critic_unsure")
    for name, conf in state.get("confidence", {}).items():
        if conf.value < ctx.thresholds.get(name, DEFAULT_THRESHOLD):
            flags.append(f"low_confidence:{name}")
        if conf.signals.get("sample_agreement", 1.0) < 1.0:
            flags.append("sample_disagreement")
    status = Status.FLAGGED if flags else Status.ACCEPTED
    return {"turns": [_turn_annotation({**state, "flags": flags}, status)]}


def _content_flags(state: TurnState, ctx: Context) -> list[str]:
    turn = state["excerpt"].turn(state["index"])
    flags = []
    if detect_risk(turn.text, None):  # both tables: turns mix languages
        flags.append("risk_content")
    if detect_injection(turn.text):
        flags.append("prompt_injection")
    if truncate(turn.text, ctx.task.context.max_turn_chars)[1]:
        flags.append("truncated_input")
    return flags


def _turn_annotation(state: TurnState, status: Status) -> TurnAnnotation:
    turn = state["excerpt"].turn(state["index"])
    failed = status == Status.FAILED
    return TurnAnnotation(
        dialogue_id=state["excerpt"].dialogue_id, turn_index=state["index"], speaker=turn.speaker,
        role=state.get("role"),
        status=status, labels={} if failed else state.get("labels", {}), texts={} if failed else state.get("texts", {}),
        critique=state.get("critique"), confidence={} if failed else state.get("confidence", {}),
        flags=list(dict.fromkeys(state.get("flags", []))), error=state.get("failed"),
        raw_output=state.get("raw") if failed else None, attempts=len(state.get("history", [])),
        # an accepted attempt's raw text is its answer, held by the record: only rejected ones keep theirs (they are
        # stored as attempts), so a dialogue's checkpoints and memory hold no second copy of every answer
        history=[h if h["error"] is not None else {**h, "raw": None} for h in state.get("history", [])])


def _record_problems(ctx: Context, ann: TurnAnnotation) -> list[str]:
    from autolabel.records import record_problems

    rec = turn_record(ann, run_id=ctx.run_id, task=ctx.task, model=ctx.model, language="en", text=None)
    return record_problems(rec, ctx.task)


def attempts(stage: str, trace: CallTrace, error: Exception | None) -> list[dict[str, Any]]:
    """The attempts of one call (its re-asks), as a turn's history records them: each raw output, and why it was
    rejected (the last one's error is the call's, or None when it was accepted)."""
    n = len(trace.outputs)
    out = [{"stage": stage, "raw": raw, "error": None if i == n - 1 and error is None else "rejected"}
           for i, raw in enumerate(trace.outputs)]
    if error is not None:
        if out:
            out[-1]["error"] = str(error)
        else:
            out.append({"stage": stage, "raw": None, "error": str(error)})
    return out


# -- session level ----------------------------------------------------------------------------------------

async def session(state: SessionInput, runtime: Runtime[Context]) -> dict[str, Any]:
    """Session-level labels and texts (e.g. psychotherapy, topic, summary) from the whole dialogue; a branch of its
    own, beside the chunks of turns."""
    ctx = runtime.context
    fields = ctx.requests.session_fields()
    ex = state["excerpt"]
    if fields is None:
        return {"session": None}
    request, truncated = ctx.requests.session(ex, fields, state["language"])
    trace = CallTrace(purpose="session", dialogue_id=ex.dialogue_id)
    try:
        r = await ask(ctx, request, trace)
    except RetryExhausted as e:
        return {"session": SessionAnnotation(dialogue_id=ex.dialogue_id, status=Status.FAILED,
                                             error=ex.restore(f"invalid_output: {e}"),
                                             raw_output=ex.restore(e.last_output))}
    except RequestRefused as e:
        return {"session": SessionAnnotation(dialogue_id=ex.dialogue_id, status=Status.FAILED,
                                             error=ex.restore(f"llm_error: {e}"))}
    labels, texts = ctx.task.decode(fields, r.answer)
    texts = ex.restore(texts)
    conf = {}
    flags = ["truncated_input"] if truncated else []
    for f in fields.labels:
        probs = option_probabilities(r.raw, r.tokens, f.name, f.multi)
        signals = {"logprob": min(probs.values())} if probs else {}
        value = ctx.calibrate(f.name, signals) if ctx.calibrate else (
            sum(signals.values()) / len(signals) if signals else 0.0)
        conf[f.name] = FieldConfidence(value=min(1.0, max(0.0, value)), signals=signals)
        if value < ctx.thresholds.get(f.name, DEFAULT_THRESHOLD):
            flags.append(f"low_confidence:{f.name}")
    status = Status.FLAGGED if flags else Status.ACCEPTED
    return {"session": SessionAnnotation(dialogue_id=ex.dialogue_id, status=status, labels=labels, texts=texts,
                                         confidence=conf, flags=flags)}


async def finalize(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Persist the dialogue in one transaction: turns, every attempt, final records, review items.

    Every turn keeps exactly one state (accepted, flagged or failed; a review later makes it reviewed). A flagged
    turn gets a review item; so does a failed turn with risk content — it stays failed, with its reason, and its
    item (its failed record as the proposal, no labels) names the failure among the reasons."""
    ctx = runtime.context
    d, lang = state["dialogue"], state["language"]
    by_index = {t.turn_index: t for t in state.get("turns", [])}
    turns, annotations, review = [], [], []
    only = state.get("only")
    todo = d.turns if only is None else tuple(t for t in d.turns if t.index in set(only))
    anns = copied_explanations(d, [by_index.get(t.index) or _lost(d, t, ctx) for t in todo], ctx)
    for t, ann in zip(todo, anns, strict=True):
        turns.append({"turn_index": t.index, "speaker": t.speaker, "role": ann.role, "text": t.text,
                      "meta": t.meta, "status": ann.status.value})
        for i, h in enumerate(ann.history):
            if h["error"] is not None:
                annotations.append({"kind": "turn", "turn_index": t.index, "attempt": i + 1, "is_final": False,
                                    "valid": False, "status": "rejected", "record": h})
        rec = turn_record(ann, run_id=ctx.run_id, task=ctx.task, model=ctx.model, language=lang, text=None)
        annotations.append({"kind": "turn", "turn_index": t.index, "attempt": 0, "is_final": True,
                            "valid": ann.status != Status.FAILED, "status": ann.status.value, "record": rec})
        reasons = review_reasons(ann) if ctx.review else []
        if reasons:
            review.append({"kind": "turn", "turn_index": t.index, "reasons": reasons,
                           "priority": priority(reasons, ann.confidence), "proposal": rec})
    s = state.get("session")
    if s is not None:
        rec = session_record(s, run_id=ctx.run_id, task=ctx.task, model=ctx.model, language=lang)
        annotations.append({"kind": "session", "turn_index": -1, "attempt": 0, "is_final": True,
                            "valid": s.status != Status.FAILED, "status": s.status.value, "record": rec})
        if s.status == Status.FLAGGED and ctx.review:
            review.append({"kind": "session", "turn_index": -1, "reasons": s.flags,
                           "priority": priority(s.flags, s.confidence), "proposal": rec})
    await asyncio.to_thread(ctx.store.save_dialogue, ctx.run_id, d.id, turns=turns, annotations=annotations,
                            review_items=review,
                            task=ctx.task, language=lang, lease_owner=ctx.lease_owner)
    await ctx.close()  # a context opened from a configuration (LangGraph's tooling) closes its run here
    return {"turns": None}  # stored: the thread lets them go


def _lost(d: Dialogue, t: Turn, ctx: Context) -> TurnAnnotation:
    """The failed record of a turn that produced no result."""
    return TurnAnnotation(dialogue_id=d.id, turn_index=t.index, speaker=t.speaker, role=ctx.task.role_of(t.speaker),
                          status=Status.FAILED, error="lost: the turn produced no result", flags=_risk_flag(t.text))


def copied_explanations(d: Dialogue, anns: list[TurnAnnotation], ctx: Context) -> list[TurnAnnotation]:
    """``anns`` (in turn order), each turn flagged ``explanation_copied:<field>`` whose explanation (a text field)
    repeats the turn, is one of the spec's example explanations, or is the same as an earlier turn's (any of its
    explanations) within the context window (``autolabel.quality.explanations``): a generic or copied sentence
    explains nothing, and a person sees it before it is taken as the model's reasoning. Here, not in ``route``:
    only the dialogue sees every turn's answer (its chunks run apart)."""
    limit, window = ctx.task.context.max_turn_chars, ctx.requests.window
    text_of = {t.index: truncate(t.text, limit)[0] for t in d.turns}  # as the model saw it: bounded work
    explained: dict[int, dict[str, str]] = {}
    out = []
    for ann in anns:
        fields = ctx.requests.fields(ann.role) if ann.status != Status.FAILED else None
        texts = {t.name: ann.texts[t.name] for t in (fields.texts if fields else ())
                 if t.name not in NOT_EXPLANATIONS and ann.texts.get(t.name)}
        explained[ann.turn_index] = texts
        earlier = [explained[j] for j in range(ann.turn_index - window, ann.turn_index) if j in explained]
        copied = [f"explanation_copied:{name}" for name, text in texts.items()
                  if copy_problem(text, text_of[ann.turn_index], ctx.requests.example_texts(name))
                  or any(same(text, other) for e in earlier for other in e.values())]
        new = [f for f in copied if f not in ann.flags]
        out.append(ann.model_copy(update={"flags": [*ann.flags, *new], "status": Status.FLAGGED}) if new else ann)
    return out


def review_reasons(ann: TurnAnnotation) -> list[str]:
    """Why a turn goes to a human (empty: it does not): a flagged turn's flags; for a failed turn with risk content
    its flags and ``failed:<kind>`` (``invalid_output``, ``llm_error``...; the full reason is the record's error)."""
    if ann.status == Status.FLAGGED:
        return ann.flags
    if ann.status == Status.FAILED and "risk_content" in ann.flags:
        return [*ann.flags, f"failed:{(ann.error or 'unknown').split(':', 1)[0]}"]
    return []


def _risk_flag(text: str) -> list[str]:
    """The risk flag of a turn that produced no result (its flags were never computed)."""
    return ["risk_content"] if detect_risk(text, None) else []


def priority(flags: list[str], confidence: dict[str, FieldConfidence]) -> float:
    """Lower is reviewed first: risk content before everything, then the lowest confidence."""
    low = min((c.value for c in confidence.values()), default=0.0)
    return low - 10.0 if "risk_content" in flags else low
