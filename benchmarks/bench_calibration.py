"""Confidence and calibration of the embedded default model on a fixed sample of Psy-Insight sessions.

Sample: per language (EN, CN) the first ``--per-language`` sessions of ``../shared/data/psy-insight/
{en,cn}_dev.json`` in ``dialog_id`` order that have at most ``--max-turns`` turns. They are labeled with the
default pipeline (label + self-critique: logprob and critic signals) by ``--model`` (default
``Settings().model``, the embedded local model), then split by dialogue (a seeded hash of the id) into a
calibrate half and a report half:

- on the calibrate half, ``autolabel.quality.evaluate.calibrate`` certifies thresholds (it splits that half again
  into fit / certify), and a calibrator with the same features is fitted on the whole half for the table;
- on the report half, per field: exact-match accuracy and macro-F1 against the silver labels, and AUROC, ECE
  and error recall at a 20% review budget of the raw confidence (the mean of the signals, what an
  uncalibrated run stores) and of the calibrated one (that calibrator applied to the same signals).

Prints the table and writes ``benchmarks/results/calibration.json``. The run is kept in ``--work``
(resumable: the same sample and model resume the same run). Usage::

    PYTHONPATH=. python benchmarks/bench_calibration.py [--per-language 6] [--max-turns 12] [--model ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from autolabel import Annotator, Settings, Store, load_task
from autolabel.quality.calibration import fit_calibrator
from autolabel.quality.evaluate import Item, calibrate, load_gold, run_items
from autolabel.quality.metrics import (
    auroc_errors,
    classification_report,
    ece,
    error_recall_at_budget,
    multilabel_report,
)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "psy-insight"
RESULTS = REPO / "benchmarks" / "results" / "calibration.json"
SEED = 0


def sample(per_language: int, max_turns: int) -> list[dict[str, Any]]:
    sessions = []
    for name in ("en_dev.json", "cn_dev.json"):
        rows = sorted(json.loads((DATA / name).read_text(encoding="utf-8")), key=lambda s: s["dialog_id"])
        picked = [s for s in rows if len(s["dialog"]) <= max_turns][:per_language]
        sessions += [{**s, "dialog_id": f"{name[:2]}-{s['dialog_id']}"} for s in picked]  # unique in both
    return sessions


def report_half(dialogue_ids: list[str]) -> set[str]:
    """Half of each language's sessions, by a seeded hash of the id."""
    held: set[str] = set()
    for language in ("en", "cn"):
        ids = [d for d in dialogue_ids if d.startswith(language)]
        ordered = sorted(ids, key=lambda d: hashlib.sha256(f"report:{SEED}:{d}".encode()).digest())
        held |= set(ordered[: len(ids) // 2])
    return held


def quality(multi: bool, items: list[Item]) -> dict[str, float]:
    """Exact-match accuracy (the ``correct`` of confidence) and macro-F1; Jaccard too for multi-label."""
    if multi:
        rep = multilabel_report([set(i.gold) for i in items], [set(i.predicted or ()) for i in items])
        return {"accuracy": rep["exact_match"], "macro_f1": rep["macro_f1"], "jaccard": rep["jaccard"]}
    rep = classification_report([str(i.gold) for i in items], [str(i.predicted) for i in items])
    return {"accuracy": rep["accuracy"], "macro_f1": rep["macro_f1"]}


def confidence(correct: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    return {"auroc": auroc_errors(correct, scores), "ece": ece(correct, scores),
            "error_recall_20": error_recall_at_budget(correct, scores, 0.2)["error_recall"]}


def clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-language", type=int, default=6)
    ap.add_argument("--max-turns", type=int, default=12)
    ap.add_argument("--model", default=None, help="default: Settings().model (the embedded local model)")
    ap.add_argument("--base-url", default=None, help="an OpenAI-compatible endpoint, for openai: models")
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "autolabel" / "bench_calibration")
    args = ap.parse_args()
    settings = Settings()
    model = args.model or settings.model
    task = load_task("psy-insight")
    args.work.mkdir(parents=True, exist_ok=True)
    sessions = sample(args.per_language, args.max_turns)
    path = args.work / f"sample-{args.per_language}-{args.max_turns}.json"
    path.write_text(json.dumps(sessions, ensure_ascii=False), encoding="utf-8")
    db = args.work / "runs.db"

    started = time.monotonic()
    summary = Annotator(task, model=model, db=db, base_url=args.base_url).run(path)
    seconds = time.monotonic() - started
    gold = load_gold(path, task)
    held = report_half([s["dialog_id"] for s in sessions])
    gold_cal = {k: v for k, v in gold.items() if k[0] not in held}
    gold_rep = {k: v for k, v in gold.items() if k[0] in held}
    certified = calibrate(db, gold_cal, run_id=summary.run_id)

    cal_items, rep_items = run_items(db, gold_cal, summary.run_id), run_items(db, gold_rep, summary.run_id)
    fields: dict[str, Any] = {}
    for f in task.labels:
        fit = [i for i in cal_items if i.field == f.name and i.predicted is not None]
        rep = [i for i in rep_items if i.field == f.name and i.predicted is not None]
        if not rep:
            continue
        correct = np.array([i.correct for i in rep])
        # the uncalibrated score (mean of the signals), whatever calibrator the run itself may have used
        raw = np.array([sum(i.signals.values()) / len(i.signals) if i.signals else 0.0 for i in rep])
        names = sorted({n for i in fit for n in i.signals})
        row: dict[str, Any] = {"n_calibrate": len(fit), "n_report": len(rep), "signals": names,
                               "right_calibrate": sum(i.correct for i in fit), **quality(f.multi, rep)}
        row["raw"] = confidence(correct, raw)
        try:
            calibrator = fit_calibrator({n: [i.signals.get(n, math.nan) for i in fit] for n in names},
                                        [i.correct for i in fit])
        except ValueError as e:  # one class only, or no signals: nothing to calibrate
            row["calibrated"], row["note"] = None, str(e)
        else:
            scores = calibrator.predict({n: [i.signals.get(n, math.nan) for i in rep] for n in names})
            row["calibrated"] = confidence(correct, scores) | {"method": calibrator.method.value}
        fields[f.name] = row

    store = Store.open(db)
    counts = store.counts(summary.run_id)
    calls = store._rows("SELECT COUNT(*) FROM llm_calls WHERE run_id=:r", r=summary.run_id)[0][0]
    store.close()
    result = clean({
        "model": model, "machine": f"{platform.machine()}, {platform.python_version()}",
        "sample": {"per_language": args.per_language, "max_turns": args.max_turns,
                   "dialogues": [s["dialog_id"] for s in sessions], "report_half": sorted(held),
                   "turns": sum(len(s["dialog"]) for s in sessions)},
        "run": {"id": summary.run_id, "llm_calls": calls, "seconds_this_invocation": round(seconds, 1),
                **counts},
        "fields": fields, "certified_on_calibrate_half": certified,
    })
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    def pair(row: dict[str, Any], key: str) -> str:
        raw, cal = row["raw"][key], (row["calibrated"] or {}).get(key)
        show = ["–" if v is None or not math.isfinite(v) else f"{v:.2f}" for v in (raw, cal)]
        return f"{show[0]} → {show[1]}"

    print(f"model {model}; {len(sessions)} sessions, {result['sample']['turns']} turns; report half "
          f"{len(held)} sessions")
    print(f"{'field':15} {'n cal/rep':>10} {'acc':>5} {'Jacc.':>5} {'mF1':>5} {'AUROC raw→cal':>14}"
          f" {'ECE raw→cal':>12} {'err.rec@20%':>12}")
    for name, row in fields.items():
        jaccard = f"{row['jaccard']:5.2f}" if "jaccard" in row else "    –"
        print(f"{name:15} {row['n_calibrate']:>4}/{row['n_report']:<5} {row['accuracy']:5.2f} {jaccard} "
              f"{row['macro_f1']:5.2f} {pair(row, 'auroc'):>14} {pair(row, 'ece'):>12} "
              f"{pair(row, 'error_recall_20'):>12}")
    for r in certified:
        print(f"certified {r['field']}: threshold {r['threshold']}, n={r['n']} k={r['k']} "
              f"U={r['upper_bound']:.3f} ({r['reason']})")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
