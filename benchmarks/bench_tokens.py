"""Tokens per labeled turn: autolabel's windowed prompts against sending the full history with every turn.

For dialogues of each length (default 10, 50, 200 turns; generated English counseling sessions, ~100 characters
per turn like Psy-Insight's), ``autolabel.planning.plan`` builds every request the ``annotate`` graph would send —
with the graph's own prompt functions — and counts its tokens with tiktoken (``autolabel.llm.tokens``; the model's
encoding, OpenAI's cookbook formula). No model is called.

- **autolabel**: the task's context window (``psy-insight``: the 4 preceding turns), critique on.
- **naive**: the same prompt functions with the window set past the dialogue's length, so every turn's prompt
  holds all the turns before it (window = turn index): the full history with every turn.
- **windowed K** (``--turns-per-call``, default 4 and 8): autolabel's multi-turn mode, K consecutive turns labeled
  by one call and critiqued by one (same context window before the first of them).

Per labeled turn (every call of the dialogue, session call included, over its turns): prompt tokens, completion
tokens (estimated from the output schema's representative answer, the same for both), the ratio autolabel / naive,
and the share of prompt tokens in the stable prefix (the system message: guidelines, fields, examples — what
providers' prefix caches can serve). Linear growth shows as a flat per-turn cost across lengths.

Usage::

    python benchmarks/bench_tokens.py [--lengths 10,50,200] [--dialogues 5] [--model openai:gpt-4o-mini]
                                      [--turns-per-call 4,8]

Results go to ``benchmarks/results/tokens.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from _common import dialogue_record, table, write_result

from autolabel.planning import Plan, plan
from autolabel.settings import Settings

TASK = "psy-insight"
FULL_HISTORY = 10**9  # a window longer than any dialogue: each turn's context starts at turn 0


def write_dialogues(path: Path, length: int, n: int) -> Path:
    import random

    rng = random.Random(length)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps(dialogue_record(i, length, rng), ensure_ascii=False) + "\n")
    return path


def per_turn(p: Plan) -> dict[str, Any]:
    by = {c.purpose.value: c for c in p.calls}
    out: dict[str, Any] = {
        "calls_per_turn": p.total_calls / p.turns,
        "prompt_per_turn": p.prompt_tokens / p.turns,
        "completion_per_turn": p.completion_tokens / p.turns,
        "stable_prefix_share": p.cacheable_share,
        "cost_usd_per_1000_turns": None if p.cost_usd is None else 1000 * p.cost_usd / p.turns,
        "by_purpose": {k: {"calls": c.calls, "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                           "cacheable_tokens": c.cacheable_tokens} for k, c in by.items()},
    }
    out["total_per_turn"] = out["prompt_per_turn"] + out["completion_per_turn"]
    return out


def measure(lengths: list[int], dialogues: int, model: str, work: Path, windows: list[int]) -> list[dict[str, Any]]:
    results = []
    db = str(work / "none.db")  # no store: completions estimated from the schema, not observed
    for length in lengths:
        path = write_dialogues(work / f"len{length}.jsonl", length, dialogues)
        row: dict[str, Any] = {"turns_per_dialogue": length, "dialogues": dialogues}
        modes = [("autolabel", None, 1), ("naive", FULL_HISTORY, 1), *((f"windowed_{k}", None, k) for k in windows)]
        for name, window, k in modes:
            settings = Settings(model=model, db=db, window=window, critique=True, turns_per_call=k)
            row[name] = per_turn(plan(path, TASK, settings, sample_dialogues=dialogues))
        for name, _, _ in modes:
            if name != "naive":
                row[name]["prompt_ratio"] = row[name]["prompt_per_turn"] / row["naive"]["prompt_per_turn"]
                row[name]["total_ratio"] = row[name]["total_per_turn"] / row["naive"]["total_per_turn"]
        row["prompt_ratio"] = row["autolabel"]["prompt_ratio"]
        row["total_ratio"] = row["autolabel"]["total_ratio"]
        results.append(row)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="10,50,200")
    p.add_argument("--dialogues", type=int, default=5, help="dialogues per length (different texts)")
    p.add_argument("--model", default="openai:gpt-4o-mini")
    p.add_argument("--turns-per-call", default="4,8", help="windowed modes to measure (comma-separated K)")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    lengths = [int(x) for x in a.lengths.split(",")]
    windows = [int(x) for x in a.turns_per_call.split(",") if x]
    with tempfile.TemporaryDirectory(prefix="bench-tokens-") as tmp:
        results = measure(lengths, a.dialogues, a.model, Path(tmp), windows)
    rows = []
    for r in results:
        w, n = r["autolabel"], r["naive"]
        rows.append([r["turns_per_dialogue"], round(w["prompt_per_turn"]), round(n["prompt_per_turn"]),
                     r["prompt_ratio"], round(w["completion_per_turn"]), r["total_ratio"],
                     f"{100 * w['stable_prefix_share']:.0f}%", f"{100 * n['stable_prefix_share']:.0f}%",
                     w["cost_usd_per_1000_turns"], n["cost_usd_per_1000_turns"]])
    print(f"Tokens per labeled turn ({a.model}, psy-insight, critique on, session call included)")
    print(table(["turns/dialogue", "prompt (autolabel)", "prompt (naive)", "prompt ratio", "completion",
                 "total ratio", "stable prefix (autolabel)", "stable prefix (naive)", "USD/1k turns (autolabel)",
                 "USD/1k turns (naive)"], rows))
    if windows:
        rows = []
        for r in results:
            for name in ("autolabel", *(f"windowed_{k}" for k in windows)):
                w = r[name]
                rows.append([r["turns_per_dialogue"], name, round(w["calls_per_turn"], 2), round(w["prompt_per_turn"]),
                             round(w["completion_per_turn"]), w["prompt_ratio"], w["total_ratio"],
                             f"{100 * w['stable_prefix_share']:.0f}%", w["cost_usd_per_1000_turns"]])
        print()
        print("Windowed multi-turn mode (--turns-per-call K) against one call per turn; ratios against naive")
        print(table(["turns/dialogue", "mode", "calls/turn", "prompt/turn", "completion/turn", "prompt ratio",
                     "total ratio", "stable prefix", "USD/1k turns"], rows))
    purposes = []
    for r in results:
        for name in ("autolabel", "naive", *(f"windowed_{k}" for k in windows)):
            for purpose, c in r[name]["by_purpose"].items():
                purposes.append([r["turns_per_dialogue"], name, purpose, c["calls"],
                                 round(c["prompt_tokens"] / max(1, c["calls"])),
                                 round(c["completion_tokens"] / max(1, c["calls"]))])
    print()
    print(table(["turns/dialogue", "prompts", "call", "calls", "prompt tokens/call", "completion tokens/call"],
                purposes))
    out = write_result("tokens", {"task": TASK, "model": a.model, "turns_per_call": windows, "results": results},
                       a.out)
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
