"""The one request builder: every request the ``annotate`` graph sends — for a turn, a window of turns and a session:
label, samples, critique — built from the task, the run's settings and an excerpt of the dialogue.

The graph's nodes, the windowed mode (``multi.py``) and ``autolabel plan`` all build their requests here; plan counts
the tokens of exactly what a run would send. What depends only on the task, a role and a language (a system prompt,
an output schema) is built once per builder (one builder per run); a schema is a ``validation.Schema``, compiled once
and validated against on every call without serialising it again.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from autolabel.graphs.annotate import prompts
from autolabel.graphs.annotate.excerpt import Excerpt, redact_example

from autolabel.runs import writes_texts
from autolabel.settings import Settings
from autolabel.tasks import RoleFields, TaskSpec
from autolabel.validation import Schema

T = TypeVar("T")
Messages = list[dict[str, str]]
SAMPLE_TEMPERATURE = 0.7


@dataclass(frozen=True)
class Request:
    """One structured call: its messages, the answer's JSON Schema, a name and the call's own parameters."""

    purpose: str
    """label, sample, critique or session (``llm_calls.purpose``)."""
    messages: Messages
    schema: dict[str, Any]
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    """temperature, seed, max_tokens when they differ from the run's."""

    @property
    def user(self) -> str:
        return self.messages[-1]["content"]


def labeled_roles(task: TaskSpec, texts: bool = True) -> list[RoleFields]:
    """Every role with turn fields, in the spec's order: what a multi-turn system message describes."""
    return [f for f in (task.fields_for(r, texts) for r in task.roles) if f is not None]


def sample_rng(dialogue_id: str, index: int, k: int) -> random.Random:
    """The random order of sample ``k`` of the turn (or window starting at) ``index``: the same on every resume."""
    return random.Random(f"{dialogue_id}:{index}:{k}")


def shuffle_options(fields: RoleFields, rng: random.Random) -> RoleFields:
    """``fields`` with each label's options in an order drawn from ``rng`` (a sample sees them so)."""
    return RoleFields(fields.role, fields.texts, tuple(
        f.model_copy(update={"options": tuple(rng.sample(list(f.options), len(f.options)))}) for f in fields.labels))


def _pair(system: str, user: str) -> Messages:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


class RequestBuilder:
    """Builds a run's requests. One per run (``Context.requests``); ``autolabel plan`` makes its own."""

    def __init__(self, task: TaskSpec, settings: Settings) -> None:
        self.task = task
        self.settings = settings
        self.window = settings.window if settings.window is not None else task.context.window
        self.texts = writes_texts(settings)
        """The spec's text fields asked for (explanations, session texts), or labels only."""
        self._once: dict[Hashable, Any] = {}

    def once(self, key: Hashable, build: Callable[[], T]) -> T:
        """``build()``, made once per builder for ``key``."""
        try:
            return self._once[key]
        except KeyError:
            value = self._once[key] = build()
            return value

    # -- what a role is asked ------------------------------------------------------------------------------
    def fields(self, role: str | None) -> RoleFields | None:
        return self.once(("fields", role), lambda: self.task.fields_for(role, self.texts))

    def session_fields(self) -> RoleFields | None:
        return self.once("session_fields", lambda: self.task.session_fields(self.texts))

    def example_texts(self, name: str) -> tuple[str, ...]:
        """What the spec's examples show for text field ``name`` (a copied example answer is flagged)."""
        return self.once(("example_texts", name),
                         lambda: tuple(e.texts[name] for e in self.task.examples if e.texts.get(name)))

    def schema(self, fields: RoleFields, kind: str = "turn") -> dict[str, Any]:
        """The output schema of a role's turns (``kind`` "turn") or of the session."""
        return self.once(("output_schema", kind, fields.role), lambda: Schema(self.task.output_schema(fields)))

    def critique_schema(self, fields: RoleFields) -> dict[str, Any]:
        return self.once(("critique_schema", fields.role), lambda: Schema(self.task.critique_schema(fields)))

    def labels_schema(self, fields: RoleFields) -> dict[str, Any]:
        """A role's labels alone, as option codes (a critic's revised labels)."""
        return self.once(("labels_schema", fields.role), lambda: Schema(self.task.labels_schema(fields)))

    def group_schema(self, targets: dict[int, RoleFields], kind: str = "label") -> dict[str, Any]:
        """The answer for a window: one object per target turn, keyed by its index, with the role's own schema."""
        one = self.critique_schema if kind == "critique" else self.schema
        props = {str(i): one(f) for i, f in targets.items()}
        return Schema({"type": "object", "properties": props, "required": list(props), "additionalProperties": False})

    # -- one turn ------------------------------------------------------------------------------------------
    def label(self, ex: Excerpt, index: int, fields: RoleFields, language: str,
              similar: list[dict[str, Any]] | None = None) -> Request:
        """The label call of turn ``index``: the turn after its context window, similar reviewed examples first."""
        task = self.task
        if ex.redacted and similar:
            similar = [redact_example(e) for e in similar]
        user = prompts.turn_user(ex.seen_span(index - self.window, index), ex.seen(index), fields.role,
                                 task.context.max_turn_chars, language, similar, task, fields,
                                 prompts.session_info(task, ex.meta, language))
        system = self.once(("label_system", fields.role, language),
                           lambda: prompts.label_system(task, fields, language))
        return Request("label", _pair(system, user), self.schema(fields), f"label_{fields.role}")

    def samples(self, label: Request, fields: RoleFields, dialogue_id: str, index: int,
                language: str) -> list[Request]:
        """``samples`` - 1 extra answers at temperature 0.7, the options shown in a shuffled order (agreement)."""
        out = []
        for k in range(1, self.settings.samples):
            shuffled = shuffle_options(fields, sample_rng(dialogue_id, index, k))
            out.append(Request("sample", _pair(prompts.label_system(self.task, shuffled, language), label.user),
                               label.schema, f"sample_{fields.role}",
                               {"temperature": SAMPLE_TEMPERATURE, "seed": k}))
        return out

    def critique(self, turn_prompt: str, fields: RoleFields, answer: dict[str, Any], language: str) -> Request:
        """The critic's call: the label call's turn prompt and the proposed answer."""
        system = self.once(("label_system", fields.role, language),
                           lambda: prompts.label_system(self.task, fields, language))
        user = prompts.critique_user(turn_prompt, answer, language)
        return Request("critique", _pair(system, user), self.critique_schema(fields), f"critique_{fields.role}")

    # -- a window of turns (``turns_per_call`` > 1) ----------------------------------------------------------
    def window_label(self, ex: Excerpt, indices: list[int], targets: dict[int, RoleFields], language: str,
                     similar: dict[str, list[dict[str, Any]]] | None = None) -> Request:
        """One call labels every target of the window ``indices``; the system message describes every labeled
        role (the same for every window of a task and language: a stable prefix)."""
        if ex.redacted and similar:
            similar = {role: [redact_example(e) for e in found] for role, found in similar.items()}
        first = indices[0]
        user = prompts.group_user(ex.seen_span(first - self.window, first), ex.seen_span(first, indices[-1] + 1),
                                  targets, self.task.context.max_turn_chars, language, similar, self.task,
                                  prompts.session_info(self.task, ex.meta, language))
        system = self.once(("group_system", language),
                           lambda: prompts.group_system(self.task, labeled_roles(self.task, self.texts), language))
        return Request("label", _pair(system, user), self.group_schema(targets), "label_turns",
                       {"max_tokens": self.settings.max_tokens * len(targets)})

    def window_samples(self, label: Request, dialogue_id: str, first: int, language: str) -> list[Request]:
        out = []
        for k in range(1, self.settings.samples):
            rng = sample_rng(dialogue_id, first, k)
            shuffled = [shuffle_options(f, rng) for f in labeled_roles(self.task, self.texts)]
            out.append(Request("sample", _pair(prompts.group_system(self.task, shuffled, language), label.user),
                               label.schema, "sample_turns",
                               {**label.options, "temperature": SAMPLE_TEMPERATURE, "seed": k}))
        return out

    def window_critique(self, window_prompt: str, targets: dict[int, RoleFields], proposals: dict[str, Any],
                        language: str) -> Request:
        system = self.once(("group_system", language),
                           lambda: prompts.group_system(self.task, labeled_roles(self.task, self.texts), language))
        return Request("critique", _pair(system, prompts.critique_user(window_prompt, proposals, language, group=True)),
                       self.group_schema(targets, "critique"), "critique_turns",
                       {"max_tokens": self.settings.max_tokens * len(targets)})

    # -- the session ---------------------------------------------------------------------------------------
    def session(self, ex: Excerpt, fields: RoleFields, language: str) -> tuple[Request, bool]:
        """The session call over the whole dialogue (each turn capped); True when anything was cut."""
        user, truncated = prompts.session_user(ex.seen_span(0, ex.first + len(ex.turns)),
                                               self.task.context.max_turn_chars, language,
                                               prompts.session_info(self.task, ex.meta, language),
                                               self.task.context.turn_meta)
        system = self.once(("session_system", language),
                           lambda: prompts.session_system(self.task, fields, language))
        return Request("session", _pair(system, user), self.schema(fields, "session"), "session"), truncated
