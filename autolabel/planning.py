"""``autolabel plan``: the calls, tokens and cost of a run, estimated before it from the real prompts.

How each number is made:

- **Prompts.** The first ``sample_dialogues`` dialogues of the input are read (streamed), and for each every
  request the ``annotate`` graph would send is built by the graph's own request builder
  (``graphs/annotate/requests.py``: label, samples, critique, session; per turn or per window of
  ``turns_per_call`` turns), with the same language detection and speaker roles. No model is called.
- **Prompt tokens.** ``openai:`` models: OpenAI's cookbook formula over tiktoken's encoding for the model
  (``autolabel.llm.tokens``; exact for OpenAI's models, o200k_base assumed for others). ``local:`` models: the
  model's own chat template and tokenizer (``autolabel.llm.local.count_tokens``); when the model is not installed,
  o200k_base with the cookbook formula as an approximation (said in the notes).
- **Extrapolation.** Per-turn calls (label, sample, critique) are scaled by the input's turns over the
  sample's turns, session calls by dialogues over sampled dialogues (``readers.count_input`` streams the whole
  input). When the sample is the whole input the counts are exact.
- **Completion tokens.** When the store (``settings.db``) has calls for this task and model, the observed mean
  completion tokens per call purpose. Otherwise an estimate from the output schema: the tokens of a
  representative answer (:func:`representative_answer`): each text field at its typical length (the mean
  length of the spec's examples of that field in the dialogue's language; without examples a quarter of its
  ``max_chars``, a tenth for Chinese, whose characters carry more), one option code per label field; the
  critic's answer is a reason of typical length, ``"agree"`` and ``null``.
- **Critique prompts** contain the label answer, unknown before the run: the representative answer stands in.
- **Cacheable prefix.** System-message tokens over prompt tokens: the part that is stable across calls
  (guidelines, fields, examples) and that providers' prefix caches can serve.
- **Not counted:** re-asks after invalid output and transport retries; reviewed examples that later runs add
  to label prompts; the JSON Schema sent as ``response_format`` (OpenAI bills it as prompt tokens).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from itertools import islice
from pathlib import Path
from statistics import mean
from typing import Any

from autolabel.errors import ConfigError
from autolabel.graphs.annotate.excerpt import Excerpt
from autolabel.graphs.annotate.requests import Request, RequestBuilder
from autolabel.llm.client import BackendKind
from autolabel.llm.pricing import Price, price
from autolabel.llm.tokens import count_chat_tokens, encoding, encoding_for_model
from autolabel.models import Dialogue
from autolabel.persistence.store import Store, is_postgres
from autolabel.readers import count_input, read_dialogues
from autolabel.settings import Settings
from autolabel.tasks import RoleFields, TaskSpec, load_task, localize
from autolabel.text import detect_language

Messages = list[dict[str, str]]
WINDOW = "window:"  # completion-estimate key of a multi-turn call: "window:" and its targets' roles, in order
DENSE_LANGUAGES = ("zh", "ja")
FALLBACK_FILLER = {"en": "The speaker describes what they feel and why it matters to them.",
                   "zh": "来访者描述了自己的感受以及这件事对自己的意义。"}


class Purpose(str, Enum):
    """Why a call is made; the same names as ``llm_calls.purpose``."""

    LABEL = "label"
    SAMPLE = "sample"
    CRITIQUE = "critique"
    SESSION = "session"


PER_TURN = (Purpose.LABEL, Purpose.SAMPLE, Purpose.CRITIQUE)


@dataclass
class CallPlan:
    """The estimate for one call purpose over the whole input."""

    purpose: Purpose
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cacheable_tokens: int = 0
    cost_usd: float | None = 0.0
    completion_source: str = "schema estimate"
    sample_calls: int = 0
    """Calls and exact prompt tokens in the sampled dialogues (before extrapolation)."""
    sample_prompt_tokens: int = 0


@dataclass
class Plan:
    """What a run of ``input`` would cost; see the module docstring for how each number is made."""

    input: str
    task: str
    model: str
    dialogues: int
    turns: int
    sample_dialogues: int
    sample_turns: int
    calls: list[CallPlan]
    tokenizer: str
    price_source: str
    notes: list[str] = field(default_factory=list)

    @property
    def total_calls(self) -> int:
        return sum(c.calls for c in self.calls)

    @property
    def prompt_tokens(self) -> int:
        return sum(c.prompt_tokens for c in self.calls)

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.calls)

    @property
    def cacheable_share(self) -> float:
        return sum(c.cacheable_tokens for c in self.calls) / self.prompt_tokens if self.prompt_tokens else 0.0

    @property
    def cost_usd(self) -> float | None:
        costs = [c.cost_usd for c in self.calls]
        return None if any(c is None for c in costs) else sum(c for c in costs if c is not None)


def plan(input: str | Path, task: TaskSpec | str | Path, settings: Settings, samples: int | None = None,
         sample_dialogues: int = 20) -> Plan:
    """Estimate calls, tokens and cost of annotating ``input`` with ``task`` and ``settings.model``."""
    spec = task if isinstance(task, TaskSpec) else load_task(task)
    if samples is not None:
        settings = Settings.model_validate({**settings.model_dump(), "samples": samples})
    if sample_dialogues < 1:
        raise ConfigError("--sample-dialogues must be at least 1")
    counter, text_tokens, tokenizer, notes = _tokenizer(settings)
    cost = price(settings)
    sampled = list(islice(read_dialogues(input, on_error=lambda _: None), sample_dialogues))
    dialogues, turns = count_input(input)
    rows = {p: CallPlan(p) for p in Purpose}
    sample_costs: dict[Purpose, float | None] = dict.fromkeys(Purpose, 0.0)
    estimates: dict[tuple[Purpose, str, str], int] = {}  # (purpose, role, language) -> completion tokens
    requests = RequestBuilder(spec, settings)
    for d in sampled:
        for purpose, messages, estimate_key in _calls(requests, d):
            row = rows[purpose]
            if estimate_key not in estimates:
                estimates[estimate_key] = text_tokens(_answer_json(requests, *estimate_key))
            prompt = counter(messages)
            row.sample_calls += 1
            row.sample_prompt_tokens += prompt
            row.cacheable_tokens += counter(messages[:1]) - 3  # the system message, less the reply priming
            row.completion_tokens += estimates[estimate_key]
            one = cost.cost(prompt, estimates[estimate_key])
            previous = sample_costs[purpose]
            sample_costs[purpose] = None if one is None or previous is None else previous + one
    observed = observed_completions(settings.db, spec.name, settings.model, settings.turns_per_call)
    sample_turns = sum(len(d.turns) for d in sampled)
    for purpose, row in rows.items():
        scale = _scale(turns, sample_turns) if purpose in PER_TURN else _scale(dialogues, len(sampled))
        row.calls = round(row.sample_calls * scale)
        row.prompt_tokens = round(row.sample_prompt_tokens * scale)
        row.cacheable_tokens = round(row.cacheable_tokens * scale)
        per_call = row.completion_tokens / row.sample_calls if row.sample_calls else 0.0
        if purpose.value in observed:
            per_call, n = observed[purpose.value]
            row.completion_source = f"observed mean of {n} calls"
            sample_costs[purpose] = _cost_with(cost, row, per_call)
        row.completion_tokens = round(per_call * row.calls)
        spent = sample_costs[purpose]
        row.cost_usd = None if spent is None else spent * scale
    if not cost.known:
        notes.append("cost n/a: no price is known for this model; pass --price-in/--price-out (USD per M)")
    if len(sampled) < dialogues:
        notes.append(f"extrapolated from the first {len(sampled)} of {dialogues} dialogues")
    return Plan(input=str(input), task=spec.name, model=settings.model, dialogues=dialogues, turns=turns,
                sample_dialogues=len(sampled), sample_turns=sample_turns,
                calls=[r for r in rows.values() if r.sample_calls], tokenizer=tokenizer,
                price_source=cost.source, notes=notes)


def _scale(total: int, sampled: int) -> float:
    return total / sampled if sampled else 0.0


def _cost_with(cost: Price, row: CallPlan, completion_per_call: float) -> float | None:
    """Sample cost when completions are the observed mean (prompt tokens averaged too: prices are linear)."""
    if not row.sample_calls:
        return 0.0
    one = cost.cost(round(row.sample_prompt_tokens / row.sample_calls), round(completion_per_call))
    return None if one is None else one * row.sample_calls


# -- the calls a dialogue makes (the graph's own request builder) ----------------------------------------------

Call = tuple[Purpose, Messages, tuple[Purpose, str, str]]


def _calls(requests: RequestBuilder, d: Dialogue) -> list[Call]:
    """(purpose, messages, completion-estimate key) of every call the graph makes for ``d``, re-asks aside."""
    task, settings = requests.task, requests.settings
    lang = detect_language([t.text for t in d.turns], task.languages)
    ex = Excerpt(dialogue_id=d.id, turns=d.turns, meta=d.meta)
    out: list[Call] = []
    k = settings.turns_per_call
    for start in range(0, len(d.turns) if k > 1 else 0, k):
        out += _window_calls(requests, ex, [t.index for t in d.turns[start:start + k]], lang)
    for turn in d.turns if k == 1 else ():
        fields = requests.fields(task.role_of(turn.speaker))
        if fields is None:
            continue  # unknown speaker, or nothing to label for the role: no call
        key = (Purpose.LABEL, fields.role, lang)
        label = requests.label(ex, turn.index, fields, lang)
        out += [_call(r, key) for r in (label, *requests.samples(label, fields, d.id, turn.index, lang))]
        if settings.critique and fields.labels:
            critique = requests.critique(label.user, fields, representative_answer(task, fields, lang), lang)
            out.append(_call(critique, (Purpose.CRITIQUE, fields.role, lang)))
    session = requests.session_fields()
    if session is not None:
        out.append(_call(requests.session(ex, session, lang)[0], (Purpose.SESSION, "session", lang)))
    return out


def _window_calls(requests: RequestBuilder, ex: Excerpt, indices: list[int], lang: str) -> list[Call]:
    """The calls of one window of ``turns_per_call`` turns."""
    task = requests.task
    targets = {i: f for i in indices if (f := requests.fields(task.role_of(ex.turn(i).speaker))) is not None}
    if not targets:
        return []
    key = (Purpose.LABEL, WINDOW + ",".join(f.role for f in targets.values()), lang)
    label = requests.window_label(ex, indices, targets, lang)
    out = [_call(r, key) for r in (label, *requests.window_samples(label, ex.dialogue_id, indices[0], lang))]
    labeled = {i: f for i, f in targets.items() if f.labels}
    if requests.settings.critique and labeled:
        proposals = {str(i): representative_answer(task, f, lang) for i, f in labeled.items()}
        out.append(_call(requests.window_critique(label.user, labeled, proposals, lang),
                         (Purpose.CRITIQUE, WINDOW + ",".join(f.role for f in labeled.values()), lang)))
    return out


def _call(request: Request, key: tuple[Purpose, str, str]) -> Call:
    return Purpose(request.purpose), request.messages, key


# -- representative answers (completion estimate, critique prompts) ------------------------------------------

def typical_chars(task: TaskSpec, name: str, max_chars: int, language: str) -> int:
    """Typical length of text field ``name``: its examples' mean, else a share of ``max_chars``."""
    seen = [len(e.texts[name]) for e in task.examples if name in e.texts and e.language in (None, language)]
    if seen:
        return max(1, min(max_chars, round(mean(seen))))
    return max(1, max_chars // (10 if language in DENSE_LANGUAGES else 4))


def representative_text(task: TaskSpec, name: str, max_chars: int, language: str) -> str:
    """A text of typical length in the dialogue's language (the task's own guidelines, cut to length)."""
    base = " ".join(localize(task.guidelines, language).split()) or FALLBACK_FILLER.get(language,
                                                                                        FALLBACK_FILLER["en"])
    n = typical_chars(task, name, max_chars, language)
    return ((base + " ") * (n // (len(base) + 1) + 1))[:n]


def representative_answer(task: TaskSpec, fields: RoleFields, language: str) -> dict[str, Any]:
    """An answer valid for ``task.output_schema(fields)``: texts of typical length, one code per label."""
    answer: dict[str, Any] = {t.name: representative_text(task, t.name, t.max_chars, language)
                              for t in fields.texts}
    for f in fields.labels:
        answer[f.name] = [f.options[0].code] if f.multi else f.options[0].code
    return answer


def representative_critique(task: TaskSpec, fields: RoleFields, language: str) -> dict[str, Any]:
    """A critic's answer valid for ``task.critique_schema(fields)``: agree, a reason of typical length."""
    reason_max = task.critique_schema(fields)["properties"]["reason"]["maxLength"]
    return {"reason": representative_text(task, "reason", reason_max, language), "verdict": "agree",
            "revised": None}


def _answer_json(requests: RequestBuilder, purpose: Purpose, role: str, language: str) -> str:
    if role.startswith(WINDOW):  # a window's roles, in order: one answer each, keyed by turn index
        parts = [json.loads(_answer_json(requests, purpose, r, language) or "null")
                 for r in role.removeprefix(WINDOW).split(",")]
        return json.dumps({str(10 + j): a for j, a in enumerate(parts)}, ensure_ascii=False)
    fields = requests.session_fields() if purpose == Purpose.SESSION else requests.fields(role)
    if fields is None:
        return ""
    answer = (representative_critique(requests.task, fields, language) if purpose == Purpose.CRITIQUE
              else representative_answer(requests.task, fields, language))
    return json.dumps(answer, ensure_ascii=False)


# -- tokenizers and history ---------------------------------------------------------------------------------

def _tokenizer(settings: Settings) -> tuple[Callable[[Messages], int], Callable[[str], int], str, list[str]]:
    """(prompt tokens of messages, tokens of an answer's text, tokenizer description, notes)."""
    notes: list[str] = []
    if settings.family == BackendKind.LOCAL.value:
        enc = encoding()
        try:
            from autolabel.llm.local import count_tokens

            count_tokens(settings.model_name, [{"role": "user", "content": "ok"}], settings)
        except (ConfigError, ImportError) as e:
            notes.append(f"prompt tokens approximated with o200k_base and the cookbook formula ({e})")
            counter: Callable[[Messages], int] = lambda m: count_chat_tokens(m, enc)  # noqa: E731
            description = "o200k_base (approximation for a local model)"
        else:
            counter = lambda m: count_tokens(settings.model_name, m, settings)  # noqa: E731
            description = f"{settings.model_name}'s own chat template and tokenizer"
        notes.append("completion tokens of a local model are estimated with o200k_base")
    else:
        enc, exact = encoding_for_model(settings.model)
        counter = lambda m: count_chat_tokens(m, enc)  # noqa: E731
        description = f"tiktoken {enc.name}" + ("" if exact else f" (assumed: {settings.model_name} is not a "
                                                                 "known OpenAI model)")
    return counter, lambda answer: len(enc.encode(answer, disallowed_special=())), description, notes


def observed_completions(db: str, task_name: str, model: str, turns_per_call: int = 1
                         ) -> dict[str, tuple[float, int]]:
    """purpose -> (mean completion tokens, calls) of the store's successful calls for this task and model, in runs
    that labeled ``turns_per_call`` turns per call (an answer for K turns is K answers long)."""
    if not is_postgres(db) and not Path(db).expanduser().is_file():
        return {}
    store = Store.open(db)
    try:
        return store.completions_by_purpose(task_name, model, turns_per_call)
    finally:
        store.close()
