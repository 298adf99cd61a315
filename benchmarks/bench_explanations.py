"""Benchmark how often the model's explanations are copied or generic, before and after asking for evidence.

On a small fixed sample of the shared Psy-Insight sessions (the first English sessions by sorted ``dialog_id``, cut
to ``--turns`` turns in all; the data is read in place, nothing is copied into the repo) it labels every turn with
the ``psy-insight`` task's turn fields (its session fields are left out, to save calls) through the real
``Annotator``, and counts, over the turns that got an explanation:

- **copied**: the explanation repeats the turn's text — the longest common substring of the two (case-folded,
  whitespace collapsed) is at least 60% of the explanation's characters, or the word-token Jaccard similarity of
  the two is at least 0.8;
- **same in window**: the explanation is the same as that of one of the ``context.window`` turns before it in the
  dialogue — equal after case-folding and collapsing whitespace, or word-token Jaccard at least 0.8;
- **from an example**: the explanation is (nearly) one of the spec's example explanations — word-token Jaccard
  at least 0.8 with one of them (a small model copies the prompt's example answer);
- **either**: any of the three (the headline rate);
- **of these accepted**: those the run accepted anyway (``route`` flags an explanation that repeats the turn or an
  example's, ``explanation_copied:<field>``, by the same rule: ``autolabel/quality/explanations.py``).

``--texts`` is the runs' ``texts`` setting: ``on`` (the default here) asks every model to explain; ``auto`` is the
product's default, in which the embedded models too small to explain are asked for labels only.

The explanation of a turn is its spec text field (``observation`` for the seeker, ``reasoning`` for the supporter);
``evidence`` and ``rule`` are not explanations (the evidence is meant to be a quote). For the ``after`` variant it
also counts how often the evidence is a quote (its text found in the turn) and how often the rule copies the turn.

Variants: ``before`` is the spec as shipped; ``after`` adds ``explain: {evidence: true, rule: true}`` (the answer
starts with a short quote of the turn and the option description it matches, then the explanation) and gives the
spec's examples their evidence and rule. Backends: ``scripted`` is the loopback fake (``tests/fake_openai.py``)
answering with sentences synthesized for the schema — it does not read the prompt, so its rates only show the
measure running end to end and the chance floor of a 90-sentence pool; ``copy`` is the same server answering every
text field with the turn's own text, the positive control (every explanation must count as copied); ``local`` is
an embedded model (``--model``, default ``qwen2.5-0.5b``). The reference row measures the dataset's own (silver)
explanations of the same turns.

Usage::

    python benchmarks/bench_explanations.py [--backends scripted,copy,local] [--variants before,after]
                                            [--turns 12] [--model qwen2.5-0.5b] [--tag NAME]

It prints a markdown table and merges its results into ``benchmarks/results/explanations.json`` (one entry per
backend and variant, so the slow local runs can be made separately).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from autolabel.annotator import Annotator  # noqa: E402
from autolabel.models import Dialogue, DialogueResult  # noqa: E402
from autolabel.quality.explanations import (  # noqa: E402
    COPY_JACCARD,
    COPY_LCS,
    SAME_JACCARD,
    copied,
    from_example,
    norm,
    same,
)
from autolabel.readers import read_dialogues  # noqa: E402
from autolabel.tasks import TaskSpec, builtin_tasks, parse_spec  # noqa: E402
from tests.fake_openai import FakeOpenAIServer, is_critique  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "psy-insight"
NOT_EXPLANATIONS = ("evidence", "rule")

# Evidence and rule for the spec's own examples (in the order of its examples: seeker en, supporter en, seeker zh).
EXAMPLE_EXPLAIN = [
    {"evidence": "I feel like I'm letting everyone down",
     "rule": "Guilty: blames themself for failing others; Sadness: a low, heavy mood"},
    {"evidence": "What happens when you let someone down?",
     "rule": "Reflection of Feelings: names the feeling behind the words; Question: asks to explore further"},
    {"evidence": "睡不着，一想到下周的考试心里就发慌",
     "rule": "Anxiety：对即将发生之事的担心与紧张"},
]


# -- the measure --------------------------------------------------------------------------------------------

def rates(rows: list[dict[str, Any]], window: int, examples: tuple[str, ...] = ()) -> dict[str, Any]:
    """The rates over ``rows`` (one per labeled turn: dialogue, index, turn text, explanation, evidence, rule);
    ``examples`` are the spec's example explanations."""
    by_dialogue: dict[str, dict[int, dict[str, Any]]] = {}
    for r in rows:
        by_dialogue.setdefault(r["dialogue"], {})[r["index"]] = r
    n = n_copy = n_same = n_example = n_either = n_accepted = 0
    n_ev = n_quote = n_rule = n_rule_copy = 0
    words = 0
    for r in rows:
        expl = r["explanation"]
        if not expl:
            continue
        n += 1
        words += len(expl.split())
        c = copied(expl, r["text"])
        before = by_dialogue[r["dialogue"]]
        s = any(same(expl, before[j]["explanation"]) for j in range(r["index"] - window, r["index"])
                if j in before and before[j]["explanation"])
        e = from_example(expl, examples)
        n_copy, n_same, n_example, n_either = n_copy + c, n_same + s, n_example + e, n_either + (c or s or e)
        n_accepted += (c or s or e) and r.get("status") == "accepted"
        if r.get("evidence"):
            n_ev += 1
            n_quote += norm(r["evidence"]).strip(" .\"'“”") in norm(r["text"])
        if r.get("rule"):
            n_rule += 1
            n_rule_copy += copied(r["rule"], r["text"])
    out: dict[str, Any] = {"n": n, "copied": n_copy, "same_in_window": n_same, "from_example": n_example,
                           "either": n_either, "either_accepted": n_accepted, "copied_rate": _rate(n_copy, n),
                           "same_rate": _rate(n_same, n),
                           "from_example_rate": _rate(n_example, n),
                           "either_rate": _rate(n_either, n), "words_per_explanation": _rate(words, n)}
    if n_ev or n_rule:
        out |= {"evidence_n": n_ev, "evidence_quoted_rate": _rate(n_quote, n_ev),
                "rule_n": n_rule, "rule_copied_rate": _rate(n_rule_copy, n_rule)}
    return out


def _rate(k: float, n: int) -> float | None:
    return round(k / n, 3) if n else None


# -- sample and spec ----------------------------------------------------------------------------------------

def sample(data: Path, turns: int) -> list[Dialogue]:
    """The first English sessions by sorted dialog_id, cut so that they hold ``turns`` turns in all."""
    out: list[Dialogue] = []
    left = turns
    for d in sorted(read_dialogues(data / "en_dev.json"), key=lambda d: d.id):
        if left <= 0:
            break
        out.append(d.model_copy(update={"id": f"en-{d.id}", "turns": d.turns[:left]}))
        left -= len(out[-1].turns)
    return out


MORE_EXAMPLES = [  # written for this benchmark
    {"role": "seeker", "language": "en",
     "text": "Honestly, things went better this week. I slept through the night twice.",
     "texts": {"observation": "The seeker reports sleeping better and sounds relieved."},
     "labels": {"emotion": ["Happiness"]}},
    {"role": "seeker", "language": "en",
     "text": "Why does my boss always pick on me in meetings? It's not fair.",
     "texts": {"observation": "The seeker is angry at being singled out by the boss."},
     "labels": {"emotion": ["Anger"]}},
    {"role": "supporter", "language": "en",
     "text": "Maybe you could write down the three tasks that matter most tomorrow, and start with the smallest one.",
     "texts": {"reasoning": "The supporter proposes a concrete first step for tomorrow's work."},
     "labels": {"strategy": ["Providing Suggestions"]}},
    {"role": "supporter", "language": "en",
     "text": "Many people feel this way after a loss; grief often comes in waves rather than fading steadily.",
     "texts": {"reasoning": "The supporter explains how grief usually unfolds, which makes the feeling normal."},
     "labels": {"strategy": ["Information", "Affirmation and Reassurance"]}},
]


def spec(variant: str) -> TaskSpec:
    """psy-insight's turn fields; ``after`` asks for the evidence and the rule before the explanation;
    ``examples3`` shows three English examples per role instead of one."""
    raw = yaml.safe_load(builtin_tasks()["psy-insight"].read_text(encoding="utf-8"))
    raw["labels"] = [f for f in raw["labels"] if f["scope"] == "turn"]
    raw["texts"] = [t for t in raw.get("texts", []) if t["scope"] == "turn"]
    if variant == "examples3":  # three English examples per role instead of one (the 0.5B model copies the one)
        raw["examples"] = [*raw.get("examples", []), *MORE_EXAMPLES]
    if variant == "after":
        raw["explain"] = {"evidence": True, "rule": True}
        for ex, extra in zip(raw.get("examples", []), EXAMPLE_EXPLAIN, strict=False):
            ex["texts"] = {**extra, **ex.get("texts", {})}
    return parse_spec(raw, f"bench:psy-insight-turns-{variant}")


# -- runs ---------------------------------------------------------------------------------------------------

def copy_replies(task: TaskSpec) -> Callable[[dict[str, Any]], str | None]:
    """The positive control: every text field is the target turn's text; labels from the synthesizer (None)."""
    def reply(body: dict[str, Any]) -> str | None:
        user = body["messages"][-1]["content"]
        m = re.search(r"<target[^>]*>(.*?)</target>", user, re.S)
        if m is None or is_critique(body):
            return None
        text = re.sub(r"^\s*\[[^\]]*\]\s*", "", m.group(1).strip())[:200] or "x"
        schema = body.get("response_format", {}).get("json_schema", {}).get("schema", {})
        props = schema.get("properties", {})
        out: dict[str, Any] = {}
        for name, sub in props.items():
            if sub.get("type") == "string" and "enum" not in sub:
                out[name] = text[: sub.get("maxLength", 200)]
            elif "enum" in sub:
                out[name] = sub["enum"][0]
            else:
                out[name] = [sub["items"]["enum"][0]]
        return json.dumps(out, ensure_ascii=False)
    return reply


def label(task: TaskSpec, dialogues: list[Dialogue], backend: str, model: str, workdir: Path, texts: str = "on"
          ) -> tuple[dict[str, DialogueResult], dict[str, Any]]:
    db = str(workdir / f"{backend}.db")
    common: dict[str, Any] = {"db": db, "critique": False, "cache": False, "texts": texts}
    started = time.perf_counter()
    if backend == "local":
        annotator = Annotator(task=task, model=f"local:{model}", concurrency=1, **common)
        results = {d.id: annotator.annotate(d) for d in dialogues}
        info = {"model": f"local:{model}"}
    else:
        replies = copy_replies(task) if backend == "copy" else None
        with FakeOpenAIServer(replies=replies, seed=0) as server:
            annotator = Annotator(task=task, model="openai:test", base_url=server.base_url, concurrency=1, **common)
            results = {d.id: annotator.annotate(d) for d in dialogues}
        info = {"model": "scripted loopback (tests/fake_openai.py)" + (", copying" if backend == "copy" else "")}
    info["seconds"] = round(time.perf_counter() - started, 1)
    return results, info


def rows_of(task: TaskSpec, dialogues: list[Dialogue], results: dict[str, DialogueResult]) -> list[dict[str, Any]]:
    out = []
    names = {t.name for t in task.texts}
    for d in dialogues:
        by_index = {t.turn_index: t for t in results[d.id].turns}
        for turn in d.turns:
            ann = by_index.get(turn.index)
            texts = ann.texts if ann else {}
            expl = " ".join(v for k, v in texts.items() if k in names or k == "explanation")
            out.append({"dialogue": d.id, "index": turn.index, "text": turn.text, "explanation": expl,
                        "evidence": texts.get("evidence", ""), "rule": texts.get("rule", ""),
                        "status": ann.status.value if ann else "missing"})
    return out


def example_texts(task: TaskSpec) -> tuple[str, ...]:
    """The explanations the spec's examples show the model."""
    return tuple(v for ex in task.examples for k, v in ex.texts.items() if k not in NOT_EXPLANATIONS)


def silver_rows(dialogues: list[Dialogue]) -> list[dict[str, Any]]:
    return [{"dialogue": d.id, "index": t.index, "text": t.text,
             "explanation": str(t.meta.get("observation") or t.meta.get("reasoning") or "")}
            for d in dialogues for t in d.turns]


def table(entries: dict[str, Any]) -> str:
    lines = ["| backend | variant | turns with an explanation | copies the turn | same in window | an example's "
             "| any of these | of these accepted | words per explanation | evidence is a quote "
             "| rule copies the turn |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def pct(v: Any) -> str:
        return "" if v is None else f"{100 * v:.0f}%"

    for e in entries.values():
        r = e["rates"]
        lines.append(f"| {e['model']} | {e['variant']} | {r['n']} | {r['copied']} ({pct(r['copied_rate'])}) | "
                     f"{r['same_in_window']} ({pct(r['same_rate'])}) | "
                     f"{r.get('from_example', 0)} ({pct(r.get('from_example_rate'))}) | "
                     f"{r['either']} ({pct(r['either_rate'])}) | {r.get('either_accepted', '')} | "
                     f"{r['words_per_explanation'] or 0:.1f} | {pct(r.get('evidence_quoted_rate'))} | "
                     f"{pct(r.get('rule_copied_rate'))} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="scripted,copy", help="comma-separated: scripted, copy, local")
    parser.add_argument("--variants", default="before,after")
    parser.add_argument("--turns", type=int, default=12)
    parser.add_argument("--texts", default="on", help="the runs' texts setting (on: ask every model to explain, "
                                                      "as before; auto: the product's default, labels only on the "
                                                      "models too small to explain)")
    parser.add_argument("--model", default="qwen2.5-0.5b", help="the embedded model of the local backend")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "explanations.json")
    parser.add_argument("--tag", default="", help="stored after the variant in the entry's key (e.g. the prompt's "
                                                  "version, to keep earlier entries)")
    args = parser.parse_args()

    dialogues = sample(args.data, args.turns)
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    report: dict[str, Any] = {
        "benchmark": "explanations",
        "rule": {"copied": f"longest common substring >= {COPY_LCS} of the explanation's characters, or word-token "
                           f"Jaccard with the turn >= {COPY_JACCARD}",
                 "same_in_window": f"equal (case-folded, whitespace collapsed) or word-token Jaccard >= "
                                   f"{SAME_JACCARD} with the explanation of one of the window's turns before it"},
        "sample": {"dialogues": [d.id for d in dialogues], "turns": sum(len(d.turns) for d in dialogues)},
        "note": "the machine was busy with other work (2 cores shared): seconds are not comparable across runs",
        "entries": previous.get("entries", {}),
    }
    window = spec("before").context.window
    report["entries"]["silver"] = {"model": "silver (the dataset's own explanations)", "variant": "-",
                                   "rates": rates(silver_rows(dialogues), window, example_texts(spec("before")))}
    with tempfile.TemporaryDirectory(prefix="bench-explanations-") as tmp:
        for backend in args.backends.split(","):
            for variant in args.variants.split(","):
                task = spec(variant)
                workdir = Path(tmp) / variant
                workdir.mkdir(exist_ok=True)
                results, info = label(task, dialogues, backend, args.model, workdir, args.texts)
                rows = rows_of(task, dialogues, results)
                statuses: dict[str, int] = {}
                for r in rows:
                    statuses[r["status"]] = statuses.get(r["status"], 0) + 1
                name = f"{variant}+{args.tag}" if args.tag else variant
                info["texts"] = args.texts
                report["entries"][f"{backend}:{name}"] = {
                    **info, "variant": name, "statuses": statuses, "load_average": os.getloadavg()[0],
                    "rates": rates(rows, task.context.window, example_texts(task)), "rows": rows}
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
                print(f"{backend} {variant}: {info['seconds']} s", flush=True)
    print(table(report["entries"]))


if __name__ == "__main__":
    main()
