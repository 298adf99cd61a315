"""Nodes of the ``annotate`` graph. Each takes the state (and the run's context) and returns an update."""

from __future__ import annotations

import asyncio
import functools
import random
from typing import Any

from autolabel.graphs.annotate import prompts
from autolabel.graphs.annotate.context import Context
from autolabel.graphs.annotate.state import State, TurnState
from langgraph.runtime import Runtime

from autolabel.errors import RequestRefused, RetryExhausted
from autolabel.llm.client import CallTrace, option_probabilities
from autolabel.models import Dialogue, FieldConfidence, SessionAnnotation, Status, TurnAnnotation
from autolabel.records import session_record, turn_record
from autolabel.safety.redact import Redactor
from autolabel.safety.risk import detect_injection, detect_risk
from autolabel.tasks import RoleFields
from autolabel.text import detect_language, truncate
from autolabel.validation import validation_errors

CRITIC_SCORE = {"agree": 1.0, "unsure": 0.5, "revise": 0.0}
DEFAULT_THRESHOLD = 0.5


# -- dialogue level ---------------------------------------------------------------------------------------

TURNS_PER_TASK = 32
"""Turns per ``Send`` branch (rounded up to whole windows of ``turns_per_call``): the branch runs their calls
concurrently. A branch costs LangGraph a task (and the checkpointer the dialogue in its ``Send`` packet and a pending
write): about 1 ms of CPU, as much as a third of the client's own CPU per call when each turn was a branch."""


async def prepare(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Detect the dialogue's language (it picks prompts and descriptions); cut the turns into chunks, one ``Send``
    branch each, each a whole number of ``turns_per_call`` windows."""
    ctx = runtime.context
    turns = state["dialogue"].turns
    k = ctx.settings.turns_per_call
    size = -(-TURNS_PER_TASK // k) * k
    return {"language": detect_language([t.text for t in turns], ctx.task.languages),
            "chunks": [[t.index for t in turns[i:i + size]] for i in range(0, len(turns), size)]}


def _fields(runtime: Runtime[Context], role: str | None) -> RoleFields | None:
    ctx = runtime.context
    return ctx.once(("fields", role), lambda: ctx.task.fields_for(role))


def _schema(ctx: Context, fields: RoleFields, kind: str = "turn") -> dict[str, Any]:
    """The output schema of a role's turns (``kind`` "turn") or of the session, built once per run."""
    return ctx.once(("output_schema", kind, fields.role), lambda: ctx.task.output_schema(fields))


def _messages(state: TurnState, ctx: Context, fields: RoleFields) -> tuple[list[dict[str, str]], str]:
    task, lang = ctx.task, state["language"]
    window = ctx.settings.window if ctx.settings.window is not None else task.context.window
    turn = state["dialogue"].turns[state["index"]]
    similar = ctx.examples(fields.role, lang, turn.text) if ctx.examples else None
    dialogue, redactor = _sent(ctx, state["dialogue"])
    if redactor is not None and similar:
        similar = [_redacted_example(ex) for ex in similar]
    user = prompts.turn_user(dialogue, state["index"], fields.role, window, task.context.max_turn_chars,
                             lang, similar, task, fields)
    system = ctx.once(("label_system", fields.role, lang), lambda: prompts.label_system(task, fields, lang))
    return [{"role": "system", "content": system}, {"role": "user", "content": user}], user


async def _prompt(state: TurnState, ctx: Context, fields: RoleFields) -> tuple[list[dict[str, str]], str]:
    """``_messages``, in a worker thread when similar examples are looked up (embedding is CPU work)."""
    if ctx.examples is None:
        return _messages(state, ctx, fields)
    return await asyncio.to_thread(_messages, state, ctx, fields)


# -- --redact: what the model sees is pseudonymised, what is stored is restored ----------------------------------

def _sent(ctx: Context, d: Dialogue) -> tuple[Dialogue, Redactor | None]:
    """The dialogue as the model sees it and the Redactor that can undo it (None without ``--redact``).

    One Redactor per dialogue, primed with every turn, redacts the turns in order: the placeholders are the same in
    every node and on every resume (the prompts, hence the cache keys, do not change), and nothing of it goes into a
    checkpoint — each node rebuilds it from the dialogue (cached)."""
    if not ctx.settings.redact:
        return d, None
    turns, redactor = _redact_turns(d.id, tuple((t.speaker, t.text) for t in d.turns))
    return d.model_copy(update={"turns": tuple(t.model_copy(update={"speaker": speaker, "text": text})
                                               for t, (speaker, text) in zip(d.turns, turns, strict=True))}), redactor


@functools.lru_cache(maxsize=256)
def _redact_turns(dialogue_id: str, turns: tuple[tuple[str, str], ...]
                  ) -> tuple[tuple[tuple[str, str], ...], Redactor]:
    redactor = Redactor()
    redactor.prime(text for _, text in turns)
    return tuple((redactor.redact(speaker), redactor.redact(text)) for speaker, text in turns), redactor


def _redacted_example(ex: dict[str, Any]) -> dict[str, Any]:
    """A reviewed example from another dialogue, pseudonymised on its own (its placeholders are never restored)."""
    r = Redactor()
    r.prime([ex["text"], *ex.get("texts", {}).values()])
    return {**ex, "text": r.redact(ex["text"]), "texts": {k: r.redact(v) for k, v in ex.get("texts", {}).items()}}


def _restore(ctx: Context, d: Dialogue, obj: Any) -> Any:
    """Model output to be stored, with the originals back in place of ``--redact``'s placeholders."""
    if not ctx.settings.redact:
        return obj
    return _redact_turns(d.id, tuple((t.speaker, t.text) for t in d.turns))[1].restore_obj(obj)


def _trace(state: TurnState, purpose: str) -> CallTrace:
    return CallTrace(purpose=purpose, dialogue_id=state["dialogue"].id, turn_index=state["index"])


# -- turn level -------------------------------------------------------------------------------------------

async def label(state: TurnState, runtime: Runtime[Context]) -> dict[str, Any]:
    """One structured call: explanation first, then labels as option codes, validated (re-asked by instructor)."""
    ctx = runtime.context
    turn = state["dialogue"].turns[state["index"]]
    role = ctx.task.role_of(turn.speaker)
    fields = _fields(runtime, role)
    if role is None:
        return {"role": None, "failed": f"unknown_speaker: {turn.speaker!r} is not mapped to a role by the task"}
    if fields is None:
        return {"role": role, "answer": {}, "labels": {}, "texts": {}, "history": []}
    messages, user = await _prompt(state, ctx, fields)
    schema = _schema(ctx, fields)
    trace = _trace(state, "label")
    try:
        result = await ctx.llm.structured(messages, schema, name=f"label_{role}", trace=trace)
    except RetryExhausted as e:
        return _restore(ctx, state["dialogue"], {"role": role, "failed": f"invalid_output: {e}",
                                                 "raw": e.last_output or "", "history": _history("label", trace, e)})
    except RequestRefused as e:  # other LLMErrors (endpoint down, bad key) stop the run; it resumes later
        return _restore(ctx, state["dialogue"], {"role": role, "failed": f"llm_error: {e}", "raw": "",
                                                 "history": _history("label", trace, e)})
    out = labeled(ctx, state["dialogue"], fields, result.answer, result.raw, result.tokens,
                  _restore(ctx, state["dialogue"], _history("label", trace, None)))
    out["prompt"] = user  # the critique shows the same turn prompt (built, examples looked up, once)
    if ctx.settings.samples > 1:
        out["samples"] = await _samples(state, ctx, fields, messages, schema)
    return out


def labeled(ctx: Context, d: Dialogue, fields: RoleFields, answer: dict[str, Any], raw: str,
            tokens: list[tuple[str, float]] | None, history: list[dict[str, Any]],
            scope: str | None = None) -> dict[str, Any]:
    """The state update of a labeled turn. ``answer`` and ``raw`` stay as the model saw them (the critique quotes the
    answer; logprobs spell the raw text); the texts are restored (``--redact``)."""
    labels, texts = ctx.task.decode(fields, answer)
    return {"role": fields.role, "answer": answer, "raw": raw, "tokens": tokens, "scope": scope, "labels": labels,
            "texts": _restore(ctx, d, texts), "history": history}


def sample_rng(dialogue_id: str, index: int, k: int) -> random.Random:
    """The random order of sample ``k`` of the turn (or window starting at) ``index``: the same on every resume."""
    return random.Random(f"{dialogue_id}:{index}:{k}")


def shuffle_options(fields: RoleFields, rng: random.Random) -> RoleFields:
    """``fields`` with each label's options in an order drawn from ``rng`` (a sample sees them so)."""
    return RoleFields(fields.role, fields.texts, tuple(
        f.model_copy(update={"options": tuple(rng.sample(list(f.options), len(f.options)))}) for f in fields.labels))


async def _samples(state: TurnState, ctx: Context, fields: RoleFields, messages: list[dict[str, str]],
                   schema: dict[str, Any]) -> list[dict[str, Any]]:
    """k extra answers at temperature 0.7 with the options shown in a shuffled order (agreement signal)."""
    answers = []
    for k in range(1, ctx.settings.samples):
        shuffled = shuffle_options(fields, sample_rng(state["dialogue"].id, state["index"], k))
        msgs = [{"role": "system", "content": prompts.label_system(ctx.task, shuffled, state["language"])},
                messages[1]]
        try:
            r = await ctx.llm.structured(msgs, schema, name=f"sample_{fields.role}", trace=_trace(state, "sample"),
                                         temperature=0.7, seed=k)
        except (RetryExhausted, RequestRefused):
            continue
        answers.append(r.answer)
    return answers


async def critique(state: TurnState, runtime: Runtime[Context]) -> dict[str, Any]:
    """A second call reviews label + explanation: agree / revise (with new labels) / unsure."""
    ctx = runtime.context
    fields = _fields(runtime, state["role"])
    if fields is None or not ctx.settings.critique:
        return {"critique": None}
    user = state.get("prompt") or (await _prompt(state, ctx, fields))[1]
    lang = state["language"]
    system = ctx.once(("critique_system", fields.role, lang), lambda: prompts.critique_system(ctx.task, fields, lang))
    msgs = [{"role": "system", "content": system},
            {"role": "user", "content": prompts.critique_user(user, state["answer"], lang)}]
    schema = ctx.once(("critique_schema", fields.role), lambda: ctx.task.critique_schema(fields))
    trace = _trace(state, "critique")
    history = list(state.get("history", []))
    try:
        result = await ctx.llm.structured(msgs, schema, name=f"critique_{fields.role}", trace=trace)
    except (RetryExhausted, RequestRefused) as e:
        history += _restore(ctx, state["dialogue"], _history("critique", trace, e))
        return critique_failed(ctx, state, e, history)
    history += _restore(ctx, state["dialogue"], _history("critique", trace, None))
    return critiqued(ctx, state, fields, result.answer, history)


def critiqued(ctx: Context, state: TurnState, fields: RoleFields, answer: dict[str, Any],
              history: list[dict[str, Any]]) -> dict[str, Any]:
    """The state update of a critiqued turn: a "revise" verdict with revised labels replaces the labels (the
    proposal is kept in the critique)."""
    crit = _restore(ctx, state["dialogue"], dict(answer))
    update: dict[str, Any] = {"critique": crit, "history": history}
    if crit["verdict"] == "revise" and crit.get("revised"):
        revised = {**state["answer"], **crit["revised"]}
        labels, _ = ctx.task.decode(fields, revised)
        crit["proposed"] = state["labels"]
        crit["revised"] = labels
        update["labels"] = labels
    return update


def critique_failed(ctx: Context, state: TurnState, error: Exception, history: list[dict[str, Any]]
                    ) -> dict[str, Any]:
    """The state update when the critique could not be had: an "unsure" verdict that says why."""
    return {"critique": {"verdict": "unsure", "revised": None,
                         "reason": _restore(ctx, state["dialogue"], f"critique failed: {error}")},
            "history": history}


async def validate(state: TurnState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Final gate: the labels against the generated schema, the record against annotation.schema.json."""
    ctx = runtime.context
    fields = _fields(runtime, state["role"])
    if fields is None:
        return {}
    answer = {**state["answer"], **ctx.task.encode(fields, state["labels"])}
    problems = validation_errors(_schema(ctx, fields), answer)
    if not problems:
        probe = _turn_annotation(state, Status.ACCEPTED)
        problems = _record_problems(ctx, probe)
    if not problems:
        return {}
    return {"failed": f"invalid_output: {problems[0]}", "raw": _restore(ctx, state["dialogue"], state.get("raw", ""))}


async def score(state: TurnState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Confidence per field from the signals at hand, through the stored calibrator when there is one.

    Without a calibrator the value is the mean of the available signals (option probability from logprobs,
    the critic's verdict as 1 / 0.5 / 0, agreement of samples, agreement with the nearest reviewed turns) — a
    documented placeholder, not a probability.
    """
    ctx = runtime.context
    fields = _fields(runtime, state["role"])
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
            turn = state["dialogue"].turns[state["index"]]
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
    if len(state["dialogue"].turns[state["index"]].text) > INLINE_SCAN_CHARS:
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
    turn = state["dialogue"].turns[state["index"]]
    flags = []
    if detect_risk(turn.text, None):  # both tables: turns mix languages
        flags.append("risk_content")
    if detect_injection(turn.text):
        flags.append("prompt_injection")
    if truncate(turn.text, ctx.task.context.max_turn_chars)[1]:
        flags.append("truncated_input")
    return flags


def _turn_annotation(state: TurnState, status: Status) -> TurnAnnotation:
    turn = state["dialogue"].turns[state["index"]]
    failed = status == Status.FAILED
    return TurnAnnotation(
        dialogue_id=state["dialogue"].id, turn_index=state["index"], speaker=turn.speaker, role=state.get("role"),
        status=status, labels={} if failed else state.get("labels", {}), texts={} if failed else state.get("texts", {}),
        critique=state.get("critique"), confidence={} if failed else state.get("confidence", {}),
        flags=list(dict.fromkeys(state.get("flags", []))), error=state.get("failed"),
        raw_output=state.get("raw") if failed else None, attempts=len(state.get("history", [])),
        history=state.get("history", []))


def _record_problems(ctx: Context, ann: TurnAnnotation) -> list[str]:
    from autolabel.records import record_problems

    rec = turn_record(ann, run_id=ctx.run_id, task=ctx.task, model=ctx.model, language="en", text=None)
    return record_problems(rec, ctx.task)


def _history(stage: str, trace: CallTrace, error: Exception | None) -> list[dict[str, Any]]:
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

async def session(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Session-level labels and texts (e.g. psychotherapy, topic, summary) from the whole dialogue."""
    ctx = runtime.context
    fields = ctx.once("session_fields", ctx.task.session_fields)
    d = state["dialogue"]
    if fields is None:
        return {"session": None}
    lang = state["language"]
    user, truncated = prompts.session_user(_sent(ctx, d)[0], ctx.task.context.max_turn_chars, lang)
    system = ctx.once(("session_system", lang), lambda: prompts.session_system(ctx.task, fields, lang))
    msgs = [{"role": "system", "content": system},
            {"role": "user", "content": user}]
    trace = CallTrace(purpose="session", dialogue_id=d.id)
    try:
        r = await ctx.llm.structured(msgs, _schema(ctx, fields, "session"), name="session", trace=trace)
    except RetryExhausted as e:
        return {"session": SessionAnnotation(dialogue_id=d.id, status=Status.FAILED,
                                             error=_restore(ctx, d, f"invalid_output: {e}"),
                                             raw_output=_restore(ctx, d, e.last_output))}
    except RequestRefused as e:
        return {"session": SessionAnnotation(dialogue_id=d.id, status=Status.FAILED,
                                             error=_restore(ctx, d, f"llm_error: {e}"))}
    labels, texts = ctx.task.decode(fields, r.answer)
    texts = _restore(ctx, d, texts)
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
    return {"session": SessionAnnotation(dialogue_id=d.id, status=status, labels=labels, texts=texts,
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
    for t in d.turns:
        ann = by_index.get(t.index) or TurnAnnotation(
            dialogue_id=d.id, turn_index=t.index, speaker=t.speaker, role=ctx.task.role_of(t.speaker),
            status=Status.FAILED, error="lost: the turn produced no result", flags=_risk_flag(t.text))
        turns.append({"turn_index": t.index, "speaker": t.speaker, "role": ann.role, "text": t.text,
                      "meta": t.meta, "status": ann.status.value})
        for i, h in enumerate(ann.history):
            if h["error"] is not None:
                annotations.append({"kind": "turn", "turn_index": t.index, "attempt": i + 1, "is_final": False,
                                    "valid": False, "status": "rejected", "record": h})
        rec = turn_record(ann, run_id=ctx.run_id, task=ctx.task, model=ctx.model, language=lang, text=None)
        annotations.append({"kind": "turn", "turn_index": t.index, "attempt": 0, "is_final": True,
                            "valid": ann.status != Status.FAILED, "status": ann.status.value, "record": rec})
        reasons = _review_reasons(ann)
        if reasons:
            review.append({"kind": "turn", "turn_index": t.index, "reasons": reasons,
                           "priority": _priority(reasons, ann.confidence), "proposal": rec})
    s = state.get("session")
    if s is not None:
        rec = session_record(s, run_id=ctx.run_id, task=ctx.task, model=ctx.model, language=lang)
        annotations.append({"kind": "session", "turn_index": -1, "attempt": 0, "is_final": True,
                            "valid": s.status != Status.FAILED, "status": s.status.value, "record": rec})
        if s.status == Status.FLAGGED:
            review.append({"kind": "session", "turn_index": -1, "reasons": s.flags,
                           "priority": _priority(s.flags, s.confidence), "proposal": rec})
    await asyncio.to_thread(ctx.store.save_dialogue, ctx.run_id, d.id, turns=turns, annotations=annotations,
                            review_items=review,
                            task=ctx.task, language=lang, lease_owner=ctx.lease_owner)
    return {}


def _review_reasons(ann: TurnAnnotation) -> list[str]:
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


def _priority(flags: list[str], confidence: dict[str, FieldConfidence]) -> float:
    """Lower is reviewed first: risk content before everything, then the lowest confidence."""
    low = min((c.value for c in confidence.values()), default=0.0)
    return low - 10.0 if "risk_content" in flags else low
