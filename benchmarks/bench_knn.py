"""The knn stage against the embedded LLM on the shared Psy-Insight sessions, split by dialogue.

Split (fixed seed, by a hash of the session id, English and Chinese sessions together): half the sessions are the
test side; of the other half, three quarters train the knn stage (their silver labels are its examples) and one
quarter is the calibration part. The calibration part is itself split in two by dialogue: the ``knn_vote``
calibrator is fitted on one half and its auto-accept threshold certified on the other (fixed-sequence
Clopper-Pearson, alpha 0.1, delta 0.05), as ``autolabel calibrate`` does. On the test side (whole sessions in a
fixed order up to ``--test-turns``, 1,500 by default: the in-process embedder takes about 0.1 CPU second a turn, so
the whole side is left to an idle machine; ``--test-turns 0``): macro-F1 per field of every knn answer, and coverage
at alpha (the share of turns whose calibrated confidence reaches the certified threshold) with the error rate
actually found among them.

The embedded LLM (``local:qwen2.5-0.5b``, its turn fields only, no critic) takes seconds per call on a busy machine,
so it labels only a small sample: the first test sessions by sorted id, English, cut to ``--llm-turns`` turns. The
knn stage is measured on the same turns too. The LLM's coverage at alpha is not measured: certifying it needs a
calibration sample of its own answers (hundreds of calls); 30 turns cannot certify anything at alpha 0.1.

The labels are silver (the dataset's gpt-3.5 pipeline): agreement with them, not truth.

    python benchmarks/bench_knn.py [--llm-turns 30] [--no-llm] [--data ../shared/data/psy-insight]

The committed results: ``--llm-only --test-turns 600 --llm-turns 30`` (the LLM arm in a process of its own, its
answers to a file), then ``--test-turns 600 --llm-turns 30 --whole-test`` (the knn arms on the 600-turn cut, on the
LLM's 30 turns and on the whole test side). The test cut must be the same in both: the LLM sample is the cut's
first English sessions by id.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from autolabel.annotator import Annotator  # noqa: E402
from autolabel.examples import (  # noqa: E402
    E5Embedder,  # noqa: E402
    embedder_name,
    stored_vectors,
)
from autolabel.learned import SIGNAL, KnnStage  # noqa: E402
from autolabel.models import Dialogue  # noqa: E402
from autolabel.persistence.store import Store  # noqa: E402
from autolabel.quality import metrics  # noqa: E402
from autolabel.quality.calibration import Calibrator, certify_threshold  # noqa: E402
from autolabel.quality.evaluate import load_gold  # noqa: E402
from autolabel.readers import read_dialogues  # noqa: E402
from autolabel.tasks import TaskSpec, builtin_tasks, parse_spec  # noqa: E402
from benchmarks._common import table, write_result  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "psy-insight"
ALPHA, DELTA, SEED = 0.1, 0.05, 0
FILES = {"en": "en_dev.json", "zh": "cn_dev.json"}


def turn_task() -> TaskSpec:
    """psy-insight's turn fields (emotion for seekers, strategy for supporters)."""
    raw = yaml.safe_load(builtin_tasks()["psy-insight"].read_text(encoding="utf-8"))
    raw["labels"] = [f for f in raw["labels"] if f["scope"] == "turn"]
    raw["texts"] = [t for t in raw.get("texts", []) if t["scope"] == "turn"]
    return parse_spec(raw, "bench:psy-insight-turns")


def part(dialogue_id: str, salt: str) -> float:
    """A fixed pseudo-random number in [0, 1) per session."""
    return int(hashlib.sha256(f"{SEED}:{salt}:{dialogue_id}".encode()).hexdigest()[:8], 16) / 16**8


def turns_of(task: TaskSpec, dialogues: list[Dialogue], gold: dict[tuple[str, int], dict[str, Any]]
             ) -> list[dict[str, Any]]:
    """The turns with a silver label for their role's field."""
    out = []
    for d in dialogues:
        for t in d.turns:
            role = task.role_of(t.speaker)
            fields = task.fields_for(role)
            labels = gold.get((d.id, t.index), {})
            if fields is None or not all(f.name in labels for f in fields.labels) or not t.text.strip():
                continue
            out.append({"dialogue": d, "id": d.id, "index": t.index, "text": t.text, "role": role,
                        "labels": {f.name: labels[f.name] for f in fields.labels}})
    return out


def canon(value: Any) -> Any:
    return tuple(sorted(value)) if isinstance(value, list | tuple) else value


def quality(task: TaskSpec, field: str, truth: list[Any], pred: list[Any]) -> dict[str, Any]:
    f = task.label(field)
    options = [o.name for o in f.options]
    if not truth:
        return {"n": 0}
    if f.multi:
        r = metrics.multilabel_report([set(x) for x in truth], [set(x) for x in pred], labels=options)
        return {"n": len(truth), "macro_f1": r["macro_f1"], "exact_match": r["exact_match"]}
    r = metrics.classification_report([str(x) for x in truth], [str(x) for x in pred], labels=options)
    return {"n": len(truth), "macro_f1": r["macro_f1"], "exact_match": r["accuracy"]}


def knn_answers(stage: KnnStage, rows: list[dict[str, Any]]) -> list[dict[str, tuple[Any, float]]]:
    return stage.label([(r["dialogue"], r["index"]) for r in rows])


def certify(task: TaskSpec, rows: list[dict[str, Any]], answers: list[dict[str, tuple[Any, float]]]
            ) -> dict[str, dict[str, Any]]:
    """Per field: a calibrator fitted on one half of the calibration sessions, the threshold certified on the
    other half."""
    out: dict[str, dict[str, Any]] = {}
    for f in task.labels:
        picked = [(r, a[f.name]) for r, a in zip(rows, answers, strict=True) if f.name in a and f.name in r["labels"]]
        fit = [(r, a) for r, a in picked if part(r["id"], "cal") < 0.5]
        held = [(r, a) for r, a in picked if part(r["id"], "cal") >= 0.5]
        correct = [np.array([canon(a[0]) == canon(r["labels"][f.name]) for r, a in x]) for x in (fit, held)]
        try:
            calibrator: Calibrator | None = Calibrator.fit({SIGNAL: np.array([a[1] for _, a in fit])}, correct[0])
        except ValueError:  # all right or all wrong: nothing to calibrate against
            calibrator = None
        raw = np.array([a[1] for _, a in held])
        scores = calibrator.predict({SIGNAL: raw}) if calibrator is not None else raw
        res = certify_threshold(scores, correct[1], ALPHA, DELTA)
        out[f.name] = {"calibrator": calibrator, "threshold": res.threshold, "n_fit": len(fit),
                       "n_certify": len(held), "n_at_threshold": res.n, "errors_at_threshold": res.k,
                       "upper_bound": res.upper_bound, "calibration_coverage": res.coverage, "reason": res.reason}
    return out


def measure(task: TaskSpec, rows: list[dict[str, Any]], answers: list[dict[str, tuple[Any, float]]],
            certified: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    """Per field: macro-F1 and exact match of every answer; with ``certified``, coverage at alpha (share of the
    field's turns accepted) and the error rate and macro-F1 among the accepted."""
    out: dict[str, Any] = {}
    for f in task.labels:
        pairs = [(r["labels"][f.name], a.get(f.name)) for r, a in zip(rows, answers, strict=True)
                 if f.name in r["labels"]]
        answered = [(t, a) for t, a in pairs if a is not None]
        entry = quality(task, f.name, [t for t, _ in answered], [a[0] for _, a in answered])
        entry["turns"] = len(pairs)
        if certified is not None and answered:
            c = certified[f.name]
            raw = np.array([a[1] for _, a in answered])
            scores = c["calibrator"].predict({SIGNAL: raw}) if c["calibrator"] is not None else raw
            accept = scores >= c["threshold"] if c["threshold"] is not None else np.zeros(len(answered), bool)
            kept = [x for x, ok in zip(answered, accept, strict=True) if ok]
            wrong = sum(canon(t) != canon(a[0]) for t, a in kept)
            entry.update({"coverage": len(kept) / len(pairs), "accepted": len(kept),
                          "error_among_accepted": wrong / len(kept) if kept else None,
                          "accepted_macro_f1": quality(task, f.name, [t for t, _ in kept],
                                                       [a[0] for _, a in kept]).get("macro_f1") if kept else None})
        out[f.name] = entry
    return out


def llm_sample(test: list[dict[str, Any]], turns: int) -> list[dict[str, Any]]:
    """The first English test sessions by sorted id, cut to ``turns`` labeled turns."""
    ids = sorted({r["id"] for r in test if r["id"].startswith("en-")})  # the test side's first English sessions
    out: list[dict[str, Any]] = []
    for did in ids:
        out += [r for r in test if r["id"] == did][: turns - len(out)]
        if len(out) >= turns:
            break
    return out


def llm_answers(task: TaskSpec, rows: list[dict[str, Any]], model: str, db: Path
                ) -> tuple[list[dict[str, tuple[Any, float]]], float]:
    """The embedded model's labels of ``rows`` (each session cut after its last sampled turn); ``db`` keeps its
    answers (the LLM cache), so a stopped arm resumes without asking again."""
    annotator = Annotator(task=task, model=model, db=str(db), critique=False, concurrency=1)
    wanted: dict[str, int] = {}
    for r in rows:
        wanted[r["id"]] = max(wanted.get(r["id"], 0), r["index"] + 1)
    started = time.perf_counter()
    results = {}
    for did, upto in wanted.items():
        d = next(r["dialogue"] for r in rows if r["id"] == did)
        # the id names the cut: a longer cut of a session labeled before is a new dialogue to the store (its
        # earlier turns' prompts are the same, so they come from the cache)
        results[did] = annotator.annotate(d.model_copy(update={"id": f"{did}@{upto}", "turns": d.turns[:upto]}))
        print(f"  llm: {did} ({upto} turns) {time.perf_counter() - started:.0f} s", flush=True)
    seconds = time.perf_counter() - started
    out = []
    for r in rows:
        ann = next((t for t in results[r["id"]].turns if t.turn_index == r["index"]), None)
        labels = ann.labels if ann is not None and ann.status.value != "failed" else {}
        conf = ann.confidence if ann is not None else {}
        out.append({k: (v, float(conf[k].value) if k in conf else 0.0) for k, v in labels.items()})
    return out, seconds


class Cached:
    """The embedder, its vectors kept in a store's ``embeddings`` table (a rerun embeds nothing again)."""

    def __init__(self, embedder: E5Embedder, store: Store) -> None:
        self.embedder, self.store, self.name = embedder, store, embedder.name
        self.embedded = 0
        """Texts embedded by this run (the others came from the store)."""

    def _embed(self, texts: list[str]) -> np.ndarray:
        self.embedded += len(texts)
        return self.embedder(texts)

    def __call__(self, texts: list[str]) -> np.ndarray:
        unique, vectors = sorted(set(texts)), {}
        for i in range(0, len(unique), 128):  # stored chunk by chunk: a stopped run keeps what it embedded
            vectors.update(stored_vectors(self.store, embedder_name(self.embedder), unique[i:i + 128], self._embed))
        return np.vstack([vectors[t] for t in texts])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--llm-turns", type=int, default=30)
    parser.add_argument("--llm-model", default="local:qwen2.5-0.5b")
    parser.add_argument("--no-llm", action="store_true")
    parser.add_argument("--whole-test", action="store_true", help="also the knn arm on every test session")
    parser.add_argument("--llm-db", type=Path, default=Path(tempfile.gettempdir()) / "bench-knn-llm.db",
                        help="the LLM arm's store (its cache: a rerun asks nothing twice)")
    parser.add_argument("--llm-only", action="store_true", help="run the LLM arm only, its answers to --llm-answers")
    parser.add_argument("--llm-answers", type=Path, default=Path(tempfile.gettempdir()) / "bench-knn-llm.json",
                        help="the LLM arm's answers: written by --llm-only, read (when present) by a full run")
    parser.add_argument("--test-turns", type=int, default=1500,
                        help="test sessions (whole, in a fixed order) up to this many turns; 0: the whole test side")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "knn.json")
    parser.add_argument("--embeddings-db", type=Path, default=Path(tempfile.gettempdir()) / "bench-knn-vectors.db",
                        help="SQLite store that keeps the vectors between runs")
    args = parser.parse_args()

    task = turn_task()
    dialogues: list[Dialogue] = []
    gold: dict[tuple[str, int], dict[str, Any]] = {}
    for lang, name in FILES.items():
        path = args.data / name
        for k, v in load_gold(path, task).items():
            gold[(f"{lang}-{k[0]}", k[1])] = v
        dialogues += [d.model_copy(update={"id": f"{lang}-{d.id}"}) for d in read_dialogues(path)]
    test_d = whole_test_d = [d for d in dialogues if part(d.id, "test") < 0.5]
    if args.test_turns:  # whole sessions in a fixed pseudo-random order, up to the turns asked for
        kept, n = [], 0
        for d in sorted(test_d, key=lambda d: part(d.id, "order")):
            if n >= args.test_turns:
                break
            kept.append(d)
            n += len(d.turns)
        test_d = kept
    train_d = [d for d in dialogues if part(d.id, "test") >= 0.5]
    fit_d = [d for d in train_d if part(d.id, "train") < 0.75]
    cal_d = [d for d in train_d if part(d.id, "train") >= 0.75]
    fit, cal, test = (turns_of(task, x, gold) for x in (fit_d, cal_d, test_d))
    sizes = {"sessions": {"train": len(fit_d), "calibration": len(cal_d), "test": len(test_d)},
             "turns": {"train": len(fit), "calibration": len(cal), "test": len(test)}}
    print(f"split: {sizes}", flush=True)

    if args.llm_only:  # the LLM arm alone, in a process of its own (it needs no vectors), its answers to a file
        sample_rows = llm_sample(test, args.llm_turns)
        llm, llm_seconds = llm_answers(task, sample_rows, args.llm_model, args.llm_db)
        args.llm_answers.write_text(json.dumps({
            "model": args.llm_model, "seconds": llm_seconds, "load_average": os.getloadavg()[0],
            "answers": [{"id": r["id"], "index": r["index"], "labels": a}
                        for r, a in zip(sample_rows, llm, strict=True)]},
            ensure_ascii=False))
        print(f"wrote {args.llm_answers}")
        return
    e5 = E5Embedder()
    store = Store.open(args.embeddings_db)
    embedder = Cached(e5, store)
    started = time.perf_counter()
    embedder([r["text"] for r in cal + test])  # into the cache first (chunk by chunk), then the examples
    stage = KnnStage.from_examples(task, [r["text"] for r in fit], [r["labels"] for r in fit], embedder,
                                   roles=[r["role"] for r in fit], keys=[(r["id"], r["index"]) for r in fit], k=args.k)
    cal_answers = knn_answers(stage, cal)
    certified = certify(task, cal, cal_answers)
    test_answers = knn_answers(stage, test)
    knn_seconds = time.perf_counter() - started
    per_turn_ms = 1000 * knn_seconds / (len(fit) + len(cal) + len(test))
    print(f"knn: {knn_seconds:.0f} s for {len(fit) + len(cal) + len(test)} turns embedded and labeled", flush=True)
    report: dict[str, Any] = {
        "data": "Psy-Insight en_dev + cn_dev (shared; silver labels from the dataset's gpt-3.5 pipeline)",
        "split": sizes, "seed": SEED, "alpha": ALPHA, "delta": DELTA, "k": args.k,
        "embedder": e5.name,
        "certified": {f: {**{k: v for k, v in c.items() if k != "calibrator"},
                          "calibrator": c["calibrator"].to_dict() if c["calibrator"] else None}
                      for f, c in certified.items()},
        "knn_full_test": measure(task, test, test_answers, certified),
        "knn_seconds": round(knn_seconds, 1), "knn_ms_per_turn": round(per_turn_ms, 2),
        "texts_embedded_this_run": embedder.embedded,
        "seconds_note": "knn_seconds covers embedding only texts_embedded_this_run texts (the rest came from the "
                        "vectors store) plus the votes of every turn",
        "load_average": os.getloadavg()[0],
        "note": "busy machine (2 cores shared with other work): seconds are indicative only",
    }
    if args.whole_test:  # the knn arm on every test session too (the LLM sample stays the --test-turns cut's)
        whole = turns_of(task, whole_test_d, gold)
        embedder([r["text"] for r in whole])
        report["knn_whole_test"] = measure(task, whole, knn_answers(stage, whole), certified)
        report["split"]["turns"]["whole_test"] = len(whole)
        report["split"]["sessions"]["whole_test"] = len(whole_test_d)
    if not args.no_llm:
        sample = llm_sample(test, args.llm_turns)
        sample_idx = {(r["id"], r["index"]) for r in sample}
        knn_sample = [a for r, a in zip(test, test_answers, strict=True) if (r["id"], r["index"]) in sample_idx]
        sample_rows = [r for r in test if (r["id"], r["index"]) in sample_idx]
        if args.llm_answers.exists():  # made by --llm-only (in parallel)
            saved = json.loads(args.llm_answers.read_text())
            found = {(a["id"], a["index"]): {k: tuple(v) for k, v in a["labels"].items()} for a in saved["answers"]}
            llm, llm_seconds = [found[r["id"], r["index"]] for r in sample_rows], float(saved["seconds"])
        else:
            llm, llm_seconds = llm_answers(task, sample_rows, args.llm_model, args.llm_db)
        report["sample"] = {"turns": len(sample_rows), "sessions": sorted({r["id"] for r in sample_rows})}
        report["knn_sample"] = measure(task, sample_rows, knn_sample, certified)
        report["llm_sample"] = measure(task, sample_rows, llm, None)
        report["llm"] = {"model": args.llm_model, "seconds": round(llm_seconds, 1),
                         "seconds_per_turn": round(llm_seconds / max(1, len(sample_rows)), 1)}
    store.close()
    path = write_result("knn", report, args.out)
    print(markdown(report))
    print(f"wrote {path}")


def markdown(report: dict[str, Any]) -> str:
    rows = []
    arms = [("knn, whole test side", "knn_whole_test"), ("knn, test cut", "knn_full_test"),
            ("knn, LLM sample", "knn_sample"),
            (f"{report.get('llm', {}).get('model', 'LLM')}, LLM sample", "llm_sample")]
    for name, key in arms:
        for field, e in report.get(key, {}).items():
            rows.append([name, field, e.get("turns"), e.get("macro_f1"), e.get("exact_match"),
                         e.get("coverage", "not certified"), e.get("error_among_accepted", "–")])
    return table(["arm", "field", "turns", "macro-F1", "exact match", f"coverage at α={report['alpha']}",
                  "error among accepted"], rows)


if __name__ == "__main__":
    main()
