"""A two-stage cascade on a small fixed Psy-Insight sample, against each stage alone at the same alpha.

Sample: the first English sessions of ``../shared/data/psy-insight/en_dev.json`` by sorted ``dialog_id``, cut so
that they hold ``--turns`` turns in all (the data is read in place; the sample is written to a temporary folder,
never into the repo). Task: ``psy-insight``'s turn fields (its session fields are left out, to save calls). The
reference is the dataset's silver labels (gpt-3.5-turbo's, see the data's SOURCE.md), not truth.

Stages:

- **stage 1**: the embedded model (``--stage1 local``, default ``local:qwen2.5-0.5b``, real, in process; label and
  self-critique, or the label call alone with ``--no-critique1``; concurrency 1), or for a smoke run a scripted
  loopback server whose critic is unsure of a third of the turns (``--stage1 scripted``).
- **stage 2**: a SIMULATED strong endpoint on loopback (``tests/fake_openai.py``), no self-critique. For each turn
  and field it answers the silver label with probability ``--accuracy`` (0.85), else another option; every token of
  a correct answer has probability 0.95; of the wrong answers ``--confident-errors`` (40%) also have 0.95 and the
  rest 0.4 (below the uncalibrated rule's 0.5): an endpoint that is usually right and knows some of its mistakes.
  Its cost is counted at ``--price-in``/``--price-out`` USD per million tokens (0.15 / 0.60, gpt-4o-mini's list
  price) from the tokens its calls used.

Compared at the same routing rule (nothing is calibrated in the fresh store: each stage's uncalibrated rule, the
mean of its signals against 0.5) and the same alpha: stage 1 alone (the cascade's stage-1 run: what it accepts is
auto-labeled, the rest goes to people), stage 2 alone (a normal run of the simulated endpoint on every turn), and the
cascade (stage 1, then stage 2 on what stage 1 flagged for low confidence or critic/sample disagreement; risk turns
stay with stage 1 and go to people). Per arm: the share of turns decided by each stage and by people, calls and cost
per 1,000 turns, and over the auto-accepted labels (field level, exact match against silver) the error rate and its
one-sided 95% Clopper–Pearson upper bound (the certified error), and whether that bound meets ``--alpha``. With a
sample this small the bounds are wide: they say what the sample can certify, not what the arms would reach.

Usage::

    python benchmarks/bench_cascade.py [--turns 20] [--stage1 local|scripted] [--model qwen2.5-0.5b]
                                       [--no-critique1] [--out benchmarks/results/cascade.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402
from scipy.stats import beta  # noqa: E402

from autolabel import Annotator, Cascade, Dialogue, Store  # noqa: E402
from autolabel.quality.evaluate import load_gold  # noqa: E402
from autolabel.readers import read_dialogues  # noqa: E402
from autolabel.tasks import TaskSpec, builtin_tasks, parse_spec  # noqa: E402
from tests.fake_openai import FakeOpenAIServer, is_critique, requested_schema, synthesize  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "psy-insight"
RESULTS = HERE / "results" / "cascade.json"
DELTA = 0.05
HIGH, LOW = math.log(0.95), math.log(0.4)


def spec() -> TaskSpec:
    raw = yaml.safe_load(builtin_tasks()["psy-insight"].read_text(encoding="utf-8"))
    raw["labels"] = [f for f in raw["labels"] if f["scope"] == "turn"]
    raw["texts"] = [t for t in raw.get("texts", []) if t["scope"] == "turn"]
    return parse_spec(raw, "bench:psy-insight-turns")


def sample(turns: int) -> list[Dialogue]:
    out: list[Dialogue] = []
    left = turns
    for d in sorted(read_dialogues(DATA / "en_dev.json"), key=lambda d: d.id):
        if left <= 0:
            break
        out.append(d.model_copy(update={"turns": d.turns[:left]}))
        left -= len(out[-1].turns)
    return out


def write_jsonl(path: Path, dialogues: list[Dialogue]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for d in dialogues:
            f.write(json.dumps({"id": d.id, "turns": [{"speaker": t.speaker, "text": t.text} for t in d.turns]},
                               ensure_ascii=False) + "\n")
    return path


def _u(*key: object) -> float:
    return int.from_bytes(hashlib.sha256(":".join(map(str, key)).encode()).digest()[:8], "big") / 2**64


def _target(body: dict[str, Any]) -> str | None:
    user = body["messages"][-1]["content"]
    if "<target " not in user:
        return None
    return user.split("<target ", 1)[1].split(">", 1)[1].split("</target>", 1)[0].strip()


class Simulated:
    """The simulated strong endpoint's answers (see the module docstring): silver labels at a stated accuracy."""

    def __init__(self, task: TaskSpec, dialogues: list[Dialogue], gold: dict[tuple[str, int], dict[str, Any]],
                 accuracy: float, confident_errors: float) -> None:
        self.task, self.gold = task, gold
        self.accuracy, self.confident_errors = accuracy, confident_errors
        self.by_text = {t.text.strip(): (d.id, t) for d in dialogues for t in d.turns}
        self.logprob = HIGH

    def token_logprob(self, _token: str) -> float:
        return self.logprob  # set by the reply just made (replies and completion run back to back on one thread)

    def reply(self, body: dict[str, Any]) -> dict[str, Any] | None:
        self.logprob = HIGH
        text = _target(body)
        found = self.by_text.get(text or "")
        schema = requested_schema(body)
        if found is None or schema is None:
            return None
        did, turn = found
        fields = self.task.fields_for(self.task.role_of(turn.speaker))
        if fields is None:
            return None
        import random

        answer = synthesize(schema, random.Random(f"{did}:{turn.index}"))
        labels: dict[str, Any] = {}
        for f in fields.labels:
            silver = self.gold.get((did, turn.index), {}).get(f.name)
            names = [o.name for o in f.options]
            if silver is not None and _u(did, turn.index, f.name, "right") < self.accuracy:
                labels[f.name] = list(silver) if f.multi else silver
                continue
            wrong = [n for n in names if n not in (set(silver) if isinstance(silver, (list, tuple)) else {silver})]
            pick = wrong[int(_u(did, turn.index, f.name, "pick") * len(wrong))]
            labels[f.name] = [pick] if f.multi else pick
            if _u(did, turn.index, f.name, "confident") >= self.confident_errors:
                self.logprob = LOW
        answer.update(self.task.encode(fields, labels))
        return answer


def stage1_scripted(body: dict[str, Any]) -> dict[str, Any] | None:
    """The smoke run's stage 1: a critic unsure of a third of the turns (by a hash of the target text)."""
    if not is_critique(body):
        return None
    unsure = _u(_target(body) or "") < 1 / 3
    return {"reason": "x", "verdict": "unsure" if unsure else "agree", "revised": None}


def correctness(records: list[dict[str, Any]], gold: dict[tuple[str, int], dict[str, Any]]) -> tuple[int, int]:
    """(labels, wrong) over the auto-accepted turn records' label fields that have a silver label."""
    n = k = 0
    for r in records:
        if r["kind"] != "turn" or r["status"] != "accepted":
            continue
        for name, value in r["labels"].items():
            silver = gold.get((r["dialogue_id"], r["turn_index"]), {}).get(name)
            if silver is None:
                continue
            mine = set(value) if isinstance(value, list) else {value}
            theirs = set(silver) if isinstance(silver, (list, tuple)) else {silver}
            n += 1
            k += mine != theirs
    return n, k


def upper(k: int, n: int) -> float:
    return 1.0 if n == 0 or k >= n else float(beta.ppf(1 - DELTA, k + 1, n - k))


def arm(name: str, records: list[dict[str, Any]], gold: dict[tuple[str, int], dict[str, Any]],
        calls: dict[str, int], cost: float, alpha: float, seconds: float | None, model: str) -> dict[str, Any]:
    """One arm's row; ``model`` names who decides an accepted turn of a run without stages."""
    turns = [r for r in records if r["kind"] == "turn"]
    total = len(turns)
    decided: dict[str, int] = {}
    for r in turns:
        who = "people" if r["status"] != "accepted" else (
            f"stage {r['decided_by']['stage']}" if "decided_by" in r else model)
        decided[who] = decided.get(who, 0) + 1
    n, k = correctness(records, gold)
    bound = upper(k, n)
    return {"arm": name, "turns": total, "decided": {w: round(c / total, 3) for w, c in sorted(decided.items())},
            "calls_per_1000_turns": {s: round(c * 1000 / total) for s, c in calls.items()},
            "cost_per_1000_turns_usd": round(cost * 1000 / total, 4), "accepted_labels": n, "errors": k,
            "error_rate": round(k / n, 3) if n else None, "certified_error": round(bound, 3),
            "meets_alpha": bound <= alpha, "seconds": None if seconds is None else round(seconds, 1)}


def records_of(db: str, run_id: str) -> list[dict[str, Any]]:
    store = Store.open(db)
    try:
        return list(store.final_records(run_id))
    finally:
        store.close()


def tokens_cost(db: str, run_id: str, price_in: float, price_out: float) -> tuple[int, float]:
    store = Store.open(db)
    try:
        t = store.call_totals(run_id)
    finally:
        store.close()
    return t["calls"], (t["prompt_tokens"] * price_in + t["completion_tokens"] * price_out) / 1e6


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--turns", type=int, default=20)
    ap.add_argument("--stage1", choices=("local", "scripted"), default="local")
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--no-critique1", action="store_true", help="stage 1 without self-critique (half the calls)")
    ap.add_argument("--accuracy", type=float, default=0.85)
    ap.add_argument("--confident-errors", type=float, default=0.4)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--price-in", type=float, default=0.15)
    ap.add_argument("--price-out", type=float, default=0.60)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    task = spec()
    dialogues = sample(args.turns)
    gold = load_gold(DATA / "en_dev.json", task)
    sim = Simulated(task, dialogues, gold, args.accuracy, args.confident_errors)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, \
            FakeOpenAIServer(replies=sim.reply, logprob=sim.token_logprob, seed=2) as strong, \
            FakeOpenAIServer(replies=stage1_scripted, seed=1) as scripted:
        src = write_jsonl(Path(tmp) / "sample.jsonl", dialogues)
        db = str(Path(tmp) / "runs.db")
        first: dict[str, Any] = ({"model": f"local:{args.model}"} if args.stage1 == "local"
                                 else {"model": "openai:scripted-small", "base_url": scripted.base_url})
        if args.no_critique1:
            first["critique"] = False
        cascade_file = Path(tmp) / "cascade.yaml"
        cascade_file.write_text(yaml.safe_dump({"stages": [
            first, {"model": "openai:simulated-strong", "base_url": strong.base_url, "critique": False}]}),
            encoding="utf-8")
        started = time.perf_counter()
        summary = Cascade(task, cascade_file, db=db, concurrency=1, few_shot=0).run(src)
        seconds = time.perf_counter() - started
        s1, s2 = summary.stages
        stage1_records = records_of(db, s1.run_id or "")
        c2, cost2 = tokens_cost(db, s2.run_id, args.price_in, args.price_out) if s2.run_id else (0, 0.0)
        results.append(arm("stage 1 alone", stage1_records, gold, {"stage 1": s1.calls}, 0.0, args.alpha,
                           None, "stage 1"))  # its time is nearly all of the cascade's
        results.append(arm("cascade", records_of(db, summary.run_id), gold, {"stage 1": s1.calls, "stage 2": c2},
                           cost2, args.alpha, seconds, "cascade"))
        started = time.perf_counter()
        db2 = str(Path(tmp) / "alone.db")  # its own store: none of its calls come from the cascade's cache
        alone = Annotator(task, model="openai:simulated-strong", base_url=strong.base_url, db=db2, critique=False,
                          concurrency=1, few_shot=0)
        run2 = alone.run(src)
        calls, cost = tokens_cost(db2, run2.run_id, args.price_in, args.price_out)
        results.append(arm("stage 2 alone", records_of(db2, run2.run_id), gold, {"stage 2": calls}, cost,
                           args.alpha, time.perf_counter() - started, "stage 2"))
    out = {"benchmark": "cascade", "simulated_stage_2": True,
           "stage_1": (first["model"] if args.stage1 == "local" else "scripted loopback (smoke)")
           + (", no self-critique" if args.no_critique1 else ", label + self-critique"),
           "stage_2": f"simulated loopback endpoint: accuracy {args.accuracy} vs silver, token probability 0.95 "
                      f"when right; of the errors {args.confident_errors:.0%} at 0.95, the rest at 0.4",
           "sample": {"dialogues": [d.id for d in dialogues], "turns": sum(len(d.turns) for d in dialogues),
                      "source": "../shared/data/psy-insight/en_dev.json (first sessions by dialog_id)"},
           "alpha": args.alpha, "delta": DELTA, "price_per_million": [args.price_in, args.price_out],
           "escalated_by_stage_1": s1.escalated, "notes": summary.notes,
           "machine": {"python": platform.python_version(), "busy": "shared machine, other work running"},
           "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(table(out))


def table(out: dict[str, Any]) -> str:
    lines = ["| arm | decided by stage 1 / stage 2 / people | calls per 1,000 turns | cost per 1,000 turns "
             "(USD) | auto-accepted labels | error | certified error (95%) | meets alpha |",
             "|---|---|---|---|---|---|---|---|"]
    for r in out["results"]:
        d = r["decided"]
        who = " / ".join(f"{d.get(w, 0):.0%}" for w in ("stage 1", "stage 2", "people"))
        calls = ", ".join(f"{s}: {c:,}" for s, c in r["calls_per_1000_turns"].items())
        err = "–" if r["error_rate"] is None else f"{r['error_rate']:.1%}"
        lines.append(f"| {r['arm']} | {who} | {calls} | {r['cost_per_1000_turns_usd']:.4f} | {r['accepted_labels']} "
                     f"| {err} | {r['certified_error']:.1%} | {'yes' if r['meets_alpha'] else 'no'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
