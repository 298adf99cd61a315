"""A copied explanation is never accepted unseen (issue 19, item 6).

A model too small to explain gave a spec example's explanation word for word, or the turn's own words, and the turn
was accepted with it (benchmarks/bench_explanations.py). ``route`` now flags a turn whose explanation repeats the
turn or one of the spec's example explanations (``explanation_copied:<field>``), by the rule the benchmark measures
with (``autolabel.quality.explanations``); the labels stay and a person sees why.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from autolabel import Annotator, Dialogue, Turn
from autolabel.quality.explanations import copy_problem
from autolabel.tasks import load_task
from tests.conftest import dialogue
from tests.fake_openai import FakeOpenAIServer, is_critique

TASK = load_task("psy-insight")
EXAMPLES = {name: next(e.texts[name] for e in TASK.examples if name in e.texts)
            for name in ("observation", "reasoning")}
EXAMPLE = EXAMPLES["reasoning"]


def _answer(props: dict[str, Any], turn: str, text_of: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, sub in props.items():
        if sub.get("type") == "string" and "enum" not in sub:
            out[name] = text_of(name, turn)
        elif "enum" in sub:
            out[name] = sub["enum"][0]
        else:
            out[name] = [sub["items"]["enum"][0]]
    return out


def _replies(text_of: Any) -> Any:
    """Label answers (one turn or a window) whose text fields are ``text_of(field, turn text)``; labels first
    options; critiques from the server."""
    def reply(body: dict[str, Any]) -> str | None:
        targets = dict(re.findall(r'<target index="(\d+)"[^>]*>\n?(.*?)\n?</target>', body["messages"][-1]["content"],
                                  re.S))
        if not targets or is_critique(body):
            return None
        props = body["response_format"]["json_schema"]["schema"]["properties"]
        if all(k.isdigit() for k in props):  # a window: one object per target turn
            return json.dumps({k: _answer(sub["properties"], targets[k].strip(), text_of) for k, sub in props.items()},
                              ensure_ascii=False)
        return json.dumps(_answer(props, next(iter(targets.values())).strip(), text_of), ensure_ascii=False)
    return reply


def _flags(tmp_path: Path, text_of: Any) -> list[list[str]]:
    with FakeOpenAIServer(replies=_replies(text_of)) as srv:
        r = Annotator("psy-insight", model="openai:test", base_url=srv.base_url, db=tmp_path / "r.db",
                      critique=False, few_shot=0).annotate(dialogue("d1", 4))
    return [t.flags for t in r.turns]


def test_an_explanation_repeating_the_turn_is_flagged(tmp_path: Path) -> None:
    flags = _flags(tmp_path, lambda name, turn: turn)
    assert all(any(f.startswith("explanation_copied:") for f in fl) for fl in flags), flags


def test_an_examples_explanation_is_flagged(tmp_path: Path) -> None:
    flags = _flags(tmp_path, lambda name, turn: EXAMPLES[name])  # the example of the field's role
    assert all(any(f.startswith("explanation_copied:") for f in fl) for fl in flags), flags


@pytest.mark.parametrize("turns_per_call", [1, 4])
def test_an_explanation_repeating_an_earlier_turns_is_flagged(tmp_path: Path, turns_per_call: int) -> None:
    """The same sentence for every turn (a generic explanation): each turn whose explanation an earlier turn of its
    context window already gave is flagged — whatever the field (a supporter's reasoning, then the seeker's
    observation) — the first one is not."""
    with FakeOpenAIServer(replies=_replies(lambda name, turn: "The speaker talks about the exams.")) as srv:
        r = Annotator("psy-insight", model="openai:test", base_url=srv.base_url, db=tmp_path / "r.db",
                      critique=False, few_shot=0, turns_per_call=turns_per_call).annotate(dialogue("d1", 4))
    copied = [any(f.startswith("explanation_copied:") for f in t.flags) for t in r.turns]
    assert copied == [False, True, True, True], [t.flags for t in r.turns]


def test_repeats_are_found_across_chunks(tmp_path: Path) -> None:
    """A dialogue's turns run in chunks of 32, apart: turns 32 and 33 repeat turns 30 and 31 of the chunk before."""
    base = dialogue("long", 6).turns
    long = Dialogue(id="long", turns=tuple(Turn(index=i, speaker=base[i % 6].speaker, text=f"{base[i % 6].text} ({i})")
                                           for i in range(34)))
    with FakeOpenAIServer(replies=_replies(lambda name, turn: "The speaker talks about the exams.")) as srv:
        r = Annotator("psy-insight", model="openai:test", base_url=srv.base_url, db=tmp_path / "r.db",
                      critique=False, few_shot=0).annotate(long)
    copied = [any(f.startswith("explanation_copied:") for f in t.flags) for t in r.turns]
    assert copied == [False] + [True] * 33
    assert all(t.status.value == "flagged" for t in r.turns[1:])


def test_an_own_explanation_is_not_flagged(tmp_path: Path) -> None:
    flags = _flags(tmp_path, lambda name, turn: f"The speaker mentions {turn.split()[1]!r} and ends on "
                                                f"{turn.split()[-1]!r}.")
    assert not any(f.startswith("explanation_copied") for fl in flags for f in fl), flags


@pytest.mark.parametrize(("explanation", "turn", "problem"), [
    ("I can't sleep before exams.", "I can't sleep before exams.", "repeats the turn"),
    ("The seeker says: I can't sleep before my exams at all", "I can't sleep before my exams at all.",
     "repeats the turn"),
    (EXAMPLE.upper(), "Anything else.", "is an example's explanation"),
    ("The seeker is anxious about exams and cannot sleep.", "I can't sleep before exams.", None),
])
def test_the_rule(explanation: str, turn: str, problem: str | None) -> None:
    assert copy_problem(explanation, turn, (EXAMPLE,)) == problem
