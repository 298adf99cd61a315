"""Benchmark the embedded local models on this machine: speed, and agreement with Psy-Insight's silver labels.

For each ``local:`` model it labels the same fixed sample of Psy-Insight sessions (the first N English and M
Chinese sessions by sorted ``dialog_id``) with the ``psy-insight`` task through the real ``Annotator`` (same
prompts, schemas, validation and routing as any run), then reports

- turns labeled per minute (wall clock, model already loaded) and seconds per model call (median, p90);
- agreement with the silver labels: exact match and macro-F1 for the multi-label turn fields (emotion,
  strategy), accuracy and macro-F1 for the session fields (psychotherapy, topic), exact match per language.

Usage::

    python benchmarks/bench_local.py [--models smollm2-135m,qwen2.5-0.5b] [--en 4] [--zh 3] [--critique]
                                     [--turns-per-call 1,4] [--concurrency 8] [--threads N]

``--turns-per-call`` runs each model once per value (windowed multi-turn mode for values > 1); such an entry is
keyed ``model@K``. Validity is reported as the turns that failed (invalid after re-asks) and the rejected answers
(each a re-ask, or a window's answer before its turns fell back to one call each). Each entry also records the
process's CPU seconds and peak RSS, and the engine's counters: prompt tokens decoded and taken from the KV cache,
llama_decode steps (fewer steps than tokens: sequences decoded together).

It prints a markdown table and merges its results into ``benchmarks/results/local.json`` (one entry per model,
so models can be run separately). The data is read in place from ``--data``; nothing is copied into the repo.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from autolabel.annotator import Annotator
from autolabel.llm.local import MODELS, load_model
from autolabel.models import Dialogue, DialogueResult
from autolabel.quality.metrics import classification_report, multilabel_report
from autolabel.readers import read_dialogues
from autolabel.runs import writes_texts
from autolabel.settings import Settings
from autolabel.tasks import TaskSpec, load_task

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "psy-insight"
TURN_FIELDS = {"emotion": "emotional label", "strategy": "strategy"}
SESSION_FIELDS = ("psychotherapy", "topic")
NONE = "(none)"


def sample(data: Path, n_en: int, n_zh: int) -> list[Dialogue]:
    """The first ``n_en`` English and ``n_zh`` Chinese sessions by sorted dialog_id (same for every model)."""
    out: list[Dialogue] = []
    for lang, name, n in (("en", "en_dev.json", n_en), ("zh", "cn_dev.json", n_zh)):
        dialogues = sorted(read_dialogues(data / name), key=lambda d: d.id)[:n]
        out += [d.model_copy(update={"id": f"{lang}-{d.id}"}) for d in dialogues]
    return out


def _gold(task: TaskSpec, field: str, value: Any) -> Any:
    return task.label(field).normalize(value) if value is not None else None


def agreement(task: TaskSpec, dialogues: list[Dialogue], results: dict[str, DialogueResult]
              ) -> dict[str, Any]:
    """Exact match / macro-F1 per field against the silver labels; a failed or missing prediction is wrong."""
    out: dict[str, Any] = {}
    for field, key in TURN_FIELDS.items():
        truth: list[list[str]] = []
        pred: list[list[str]] = []
        langs: list[str] = []
        for d in dialogues:
            by_index = {t.turn_index: t for t in results[d.id].turns}
            for turn in d.turns:
                gold = _gold(task, field, turn.meta.get(key))
                if gold is None:
                    continue
                ann = by_index.get(turn.index)
                truth.append(list(gold))
                pred.append(list((ann.labels.get(field) or []) if ann else []))
                langs.append(d.id[:2])
        report = multilabel_report(truth, pred)
        out[field] = {k: report[k] for k in ("n", "exact_match", "jaccard", "macro_f1", "micro_f1")}
        for lang in sorted(set(langs)):
            pairs = [(set(t), set(p)) for t, p, g in zip(truth, pred, langs, strict=True) if g == lang]
            out[field][f"exact_match_{lang}"] = sum(t == p for t, p in pairs) / len(pairs)
            out[field][f"n_{lang}"] = len(pairs)
    for field in SESSION_FIELDS:
        truth_s: list[str] = []
        pred_s: list[str] = []
        for d in dialogues:
            gold = _gold(task, field, d.meta.get(field))
            if gold is None:
                continue
            session = results[d.id].session
            truth_s.append(str(gold))
            pred_s.append(str((session.labels.get(field) if session else None) or NONE))
        report = classification_report(truth_s, pred_s)
        out[field] = {"n": len(truth_s), "accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}
    return out


def _calls(db: str) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT purpose, prompt_tokens, completion_tokens, latency_ms, outcome "
                            "FROM llm_calls")
        return [dict(r) for r in rows]


def _rejected(db: str) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM annotations WHERE is_final = 0").fetchone()[0])


def bench_model(name: str, dialogues: list[Dialogue], task: TaskSpec, *, critique: bool, workdir: Path,
                turns_per_call: int = 1, concurrency: int = 1, threads: int | None = None,
                texts: str = "auto") -> dict[str, Any]:
    settings = Settings(model=f"local:{name}", local_threads=threads)
    started = time.perf_counter()
    engine = load_model(name, settings).engine  # joined and loaded once, outside the timed part
    load_seconds = time.perf_counter() - started
    db = str(workdir / f"{name}@{turns_per_call}-{texts}.db")
    annotator = Annotator(task=task, model=f"local:{name}", db=db, critique=critique, cache=False,
                          concurrency=concurrency, turns_per_call=turns_per_call, local_threads=threads,
                          texts=texts)
    load_avg = os.getloadavg()
    counters = (engine.prompt_tokens_decoded, engine.prompt_tokens_reused, engine.steps)
    cpu = time.process_time()
    started = time.perf_counter()
    results: dict[str, DialogueResult] = {}
    crashed: dict[str, str] = {}
    for d in dialogues:  # one run per dialogue, so that an exception escaping the graph costs one dialogue
        try:
            results[d.id] = annotator.annotate(d)
        except Exception as e:  # reported in the results, and its turns counted as failed
            crashed[d.id] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            results[d.id] = DialogueResult(dialogue_id=d.id, language="", turns=[])
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu
    decoded, reused, steps = (now - before for now, before in zip(
        (engine.prompt_tokens_decoded, engine.prompt_tokens_reused, engine.steps), counters, strict=True))
    calls = _calls(db)
    latencies = sorted(c["latency_ms"] / 1000 for c in calls)
    turns = sum(len(d.turns) for d in dialogues)
    statuses: dict[str, int] = {"crashed_turns": sum(len(d.turns) for d in dialogues if d.id in crashed)}
    for r in results.values():
        for k, v in r.counts().items():
            statuses[k] = statuses.get(k, 0) + v
    return {
        "model": f"local:{name}", "upstream": MODELS[name].upstream, "load_seconds": round(load_seconds, 2),
        "seconds": round(seconds, 1), "turns": turns, "turns_per_minute": round(turns / seconds * 60, 2),
        "cpu_seconds": round(cpu, 1), "cpu_seconds_per_turn": round(cpu / turns, 2),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        "threads": settings.local_threads or os.cpu_count(), "concurrency": concurrency,
        "prompt_tokens_decoded": decoded, "prompt_tokens_reused": reused, "decode_steps": steps,
        "calls": len(calls), "seconds_per_call_median": round(statistics.median(latencies), 2),
        "seconds_per_call_p90": round(latencies[int(0.9 * (len(latencies) - 1))], 2),
        "prompt_tokens": sum(c["prompt_tokens"] for c in calls),
        "completion_tokens": sum(c["completion_tokens"] for c in calls),
        "statuses": statuses, "crashed_dialogues": crashed, "turns_per_call": turns_per_call,
        "texts": "on" if writes_texts(annotator.settings) else "off",
        "rejected_answers": _rejected(db),
        "load_average_at_start": [round(x, 2) for x in load_avg],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "agreement": agreement(task, dialogues, results),
    }


def table(models: dict[str, dict[str, Any]]) -> str:
    lines = ["| model | turns/call | sample | turns/min | CPU s/turn | peak RSS MB | s/call (median, p90) "
             "| tokens/turn (prompt, completion) "
             "| emotion EM / macro-F1 | strategy EM / macro-F1 | psychotherapy acc / macro-F1 | topic acc / macro-F1 "
             "| accepted / flagged / failed / crashed | rejected answers |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def pair(a: dict[str, Any], f: str, first: str) -> str:
        return f"{a[f][first]:.2f} / {a[f]['macro_f1']:.2f} (n={a[f]['n']})"

    for r in models.values():
        a, s, sample = r["agreement"], r["statuses"], r.get("sample") or {}
        where = f"{sample.get('en')} EN + {sample.get('zh')} ZH, {sample.get('turns')} turns"
        lines.append(f"| {r['model']} | {r.get('turns_per_call', 1)} | {where} | {r['turns_per_minute']:.1f} | "
                     f"{r.get('cpu_seconds_per_turn', '')} | {r.get('peak_rss_mb', '')} | "
                     f"{r['seconds_per_call_median']:.1f}, "
                     f"{r['seconds_per_call_p90']:.1f} | {r['prompt_tokens'] / r['turns']:.0f}, "
                     f"{r['completion_tokens'] / r['turns']:.0f} | {pair(a, 'emotion', 'exact_match')} | "
                     f"{pair(a, 'strategy', 'exact_match')} | {pair(a, 'psychotherapy', 'accuracy')} | "
                     f"{pair(a, 'topic', 'accuracy')} | {s.get('accepted', 0)} / {s.get('flagged', 0)} / "
                     f"{s.get('failed', 0)} / {s.get('crashed_turns', 0)} | {r.get('rejected_answers', '')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated local model names")
    parser.add_argument("--en", type=int, default=4, help="English sessions in the sample")
    parser.add_argument("--zh", type=int, default=3, help="Chinese sessions in the sample")
    parser.add_argument("--critique", action="store_true", help="also run the critique call (about 2x time)")
    parser.add_argument("--turns-per-call", default="1", help="comma-separated: one run per value")
    parser.add_argument("--texts", default="auto", help="comma-separated: one run per value of the texts setting "
                                                       "(auto: labels only on the models too small to explain)")
    parser.add_argument("--concurrency", type=int, default=1, help="calls in flight (the CLI's default is 8)")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all cores)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "local.json")
    args = parser.parse_args()

    task = load_task("psy-insight")
    dialogues = sample(args.data, args.en, args.zh)
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    sample_info = {"en": args.en, "zh": args.zh, "dialogues": [d.id for d in dialogues],
                   "turns": sum(len(d.turns) for d in dialogues)}
    settings_info = {"critique": args.critique, "concurrency": args.concurrency, "cache": False,
                     "defaults": "temperature 0, max_tokens 512, max_reasks 2, logprobs on"}
    models: dict[str, Any] = {}
    for name, entry in previous.get("models", {}).items():  # earlier runs, each with the sample it used
        models[name] = {"sample": previous.get("sample"), "settings": previous.get("settings"), **entry}
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "note": "each model entry names its sample and settings; compare models on the same sample only",
        "models": models,
    }
    with tempfile.TemporaryDirectory(prefix="bench-local-") as tmp:
        runs = ((n, int(k), t) for n in args.models.split(",") for k in args.turns_per_call.split(",")
                for t in args.texts.split(","))
        for name, k, texts in runs:
            result = bench_model(name, dialogues, task, critique=args.critique, workdir=Path(tmp), turns_per_call=k,
                                 concurrency=args.concurrency, threads=args.threads, texts=texts)
            key = (name if k == 1 else f"{name}@{k}") + ("+critique" if args.critique else "") + (
                f"/c{args.concurrency}" if args.concurrency != 1 else "") + (
                f"/texts-{texts}" if texts != "auto" else "")
            report["models"][key] = {"sample": sample_info, "settings": settings_info, **result}
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
            print(f"{name}: {result['seconds']} s, {result['turns_per_minute']} turns/min", flush=True)
    print(table(report["models"]))


if __name__ == "__main__":
    main()
