"""Evaluation against gold labels, calibration of confidence, and the certified auto-accept threshold.

``load_gold`` reads gold from an input file or the store's reviewed items; ``evaluate`` measures a run against
it (label quality, coverage, confidence quality, reviewer agreement) and writes the report (``report.py``);
``calibrate`` fits a calibrator per field and certifies its auto-accept threshold (DESIGN.md, Confidence);
``load_routing`` hands both to later runs.

A label counts as *correct* when it equals the gold label; for a multi-label field, when the predicted set
equals the gold set exactly (exact match). Confidence quality and calibration use that definition.

Honest certification: the run's dialogues are split in two halves by a seeded hash of their ids. The
calibrator is fitted on one half and the threshold certified on the other, so the Clopper–Pearson bound is
computed on labels the calibrator never saw. The stored calibrator is the one fitted on the first half
(refitting on everything would change the scores the threshold was certified for).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from autolabel.errors import ConfigError, InputError, StoreError
from autolabel.persistence.quality import QualityStore
from autolabel.persistence.store import Store, is_postgres
from autolabel.quality import metrics
from autolabel.quality.agreement import cohen_kappa, fleiss_kappa_from_ratings, krippendorff_alpha
from autolabel.quality.calibration import CalibrationMethod, Calibrator, certify_threshold
from autolabel.quality.gold import is_labels_file, read_labels_file
from autolabel.quality.hierarchy import to_parent
from autolabel.quality.ordinal import krippendorff_alpha_ordinal, ordinal_quality
from autolabel.readers import read_dialogues
from autolabel.settings import Settings
from autolabel.tasks import LabelField, TaskSpec, load_task

__all__ = ["Gold", "Item", "StageAnswers", "bootstrap_resamples", "calibrate", "calibration_mismatch", "evaluate",
           "load_gold", "load_routing", "run_items", "stage_answers", "stage_report"]

Gold = dict[tuple[str, int], dict[str, Any]]
Value = str | tuple[str, ...]
SESSION = -1
NEVER = 1.01
"""Threshold of a field with no certified threshold: above every confidence, so every label is flagged."""
BUDGETS = (0.1, 0.2, 0.3)
_DB_SUFFIXES, _CURVE_POINTS = (".db", ".sqlite", ".sqlite3"), 200


# ------------------------------------------------------------------------------------------------ gold

def load_gold(source: str | Path | Store, task: TaskSpec | str) -> Gold:
    """Gold labels from an input file, or a store (a ``Store``, a ``.db``/``.sqlite`` path, a PostgreSQL URL).

    In a file, a turn's gold for a field is its meta value under the field's ``gold`` key (or its name);
    session fields are read from the dialogue's meta. A CSV cell may hold a JSON list or names separated by
    ``;`` or ``|``. Values that name no option are left out. A labels file (one record per label: dialogue id,
    turn index, field, label; JSONL or CSV) is read by ``quality.gold.read_labels_file``.
    """
    spec = task if isinstance(task, TaskSpec) else load_task(task)
    if isinstance(source, Store) or is_postgres(str(source)) or Path(source).suffix.lower() in _DB_SUFFIXES:
        with _opened(source) as store:
            return _store_gold(store, spec)
    if is_labels_file(source):  # one record per label (dialogue id, turn index, field, label): quality/gold.py
        return read_labels_file(source, spec).gold
    gold: Gold = {}
    for d in read_dialogues(source):
        for f in spec.labels:
            metas = [(SESSION, d.meta)] if f.scope == "session" else [(t.index, t.meta) for t in d.turns]
            for index, meta in metas:
                value = _gold_value(f, meta)
                if value is not None:
                    gold.setdefault((d.id, index), {})[f.name] = value
    return gold


def _gold_value(f: LabelField, meta: Mapping[str, Any]) -> Any:
    for key in dict.fromkeys((f.gold, f.name)):
        if key and meta.get(key) not in (None, "", []):
            raw = meta[key]
            if isinstance(raw, str) and raw.strip().startswith("["):
                try:
                    raw = json.loads(raw)
                except ValueError:
                    pass
            if isinstance(raw, str) and f.multi:
                raw = re.split(r"[;|]", raw)
            return f.normalize(raw)
    return None


def _store_gold(store: Store, task: TaskSpec) -> Gold:
    """Reviewed labels of this task from the review queue's ``gold`` table; later rows override."""
    gold: Gold = {}
    for dialogue_id, kind, turn_index, labels_json in QualityStore(store).gold(task.name):
        key = (dialogue_id, SESSION if kind == "session" or turn_index is None else int(turn_index))
        for name, value in _normalised(task, labels_json):
            gold.setdefault(key, {})[name] = value
    return gold


def _normalised(task: TaskSpec, labels_json: str | None) -> Iterator[tuple[str, Any]]:
    names = {f.name for f in task.labels}
    for name, raw in (json.loads(labels_json or "{}") or {}).items():
        value = task.label(name).normalize(raw) if name in names else None
        if value is not None:
            yield name, value


def _resolve_gold(gold: Gold | str | Path | None, store: Store, task: TaskSpec) -> tuple[Gold, str]:
    if gold is None:
        return _store_gold(store, task), f"{store.db} (reviewed items)"
    if isinstance(gold, dict):
        return gold, "given"
    return load_gold(gold, task), str(gold)


@contextmanager
def _opened(db: str | Path | Store) -> Iterator[Store]:
    """The given store (left open), or one opened here and closed afterwards."""
    store = db if isinstance(db, Store) else Store.open(db)
    try:
        yield store
    finally:
        if store is not db:
            store.close()


# ------------------------------------------------------------------------------------------------ items

@dataclass(frozen=True)
class Item:
    """One label of one record with its gold; ``predicted`` is None when the record failed. Multi-label
    values are sorted tuples, so ``correct`` is exact match."""

    dialogue_id: str
    turn_index: int
    field: str
    gold: Value
    predicted: Value | None
    status: str
    confidence: float | None
    signals: Mapping[str, float]

    @property
    def correct(self) -> bool:
        return self.predicted == self.gold


def _canon(value: Any, multi: bool) -> Value:
    return tuple(sorted(set(value))) if multi else str(value)


def _collect(store: Store, run_id: str, task: TaskSpec, gold: Gold) -> tuple[list[Item], dict[str, Any]]:
    """The model's gold-matched labels in a run, and the count of final states per kind (turn / session).

    The model's answer is the record the run wrote (attempt 0), also where a reviewer's record has since
    become final: a review must not grade itself."""
    items: list[Item] = []
    rows = QualityStore(store)
    for rec in rows.first_records(run_id):
        items += _answer_items(task, gold, rec, rec["labels"], rec["confidence"], rec["status"])
    coverage: dict[str, Counter[str]] = {"turn": Counter(), "session": Counter()}
    for kind, status, n in rows.final_states(run_id):
        coverage[kind][status] += n
    states = ("accepted", "flagged", "reviewed", "failed")
    return items, {k: {**{s: c[s] for s in states}, "total": sum(c.values())} for k, c in coverage.items()}


def _answer_items(task: TaskSpec, gold: Gold, rec: Mapping[str, Any], labels: Mapping[str, Any],
                  confidence: Mapping[str, Any], status: str) -> list[Item]:
    """The gold-matched labels of one answer to the record's turn (or session): the record's own, or an earlier
    cascade stage's (``labels``, ``confidence``)."""
    key = (rec["dialogue_id"], SESSION if rec["kind"] == "session" else rec["turn_index"])
    fields = task.session_fields() if rec["kind"] == "session" else task.fields_for(rec.get("role"))
    asked = {f.name for f in fields.labels} if fields else set()
    out = []
    for name, g in gold.get(key, {}).items():
        value = labels.get(name)
        if value is None and (status != "failed" or name not in asked and rec.get("role")):
            continue  # the field is not asked of this record (a failed record lost its labels)
        multi, conf = task.label(name).multi, confidence.get(name) or {}
        conf = conf if isinstance(conf, Mapping) else {"value": conf}
        out.append(Item(rec["dialogue_id"], key[1], name, _canon(g, multi),
                        None if value is None else _canon(value, multi), status,
                        conf.get("value"), dict(conf.get("signals") or {})))
    return out


def run_items(db: str | Path | Store, gold: Gold | str | Path | None = None,
              run_id: str | None = None) -> list[Item]:
    """The labels of a run (default: the latest) that have gold, as ``Item``s."""
    with _opened(db) as store:
        run = store.run(run_id)
        task = store.run_task(run["id"])
        return _collect(store, run["id"], task, _resolve_gold(gold, store, task)[0])[0]


# ------------------------------------------------------------------------------------------- evaluation

def _single_stats(truth: np.ndarray, pred: np.ndarray, k: int) -> Callable[[np.ndarray], dict[str, float]]:
    """Accuracy, macro-F1 and Cohen's kappa from option indices, as ``metrics`` defines them; fast enough
    to bootstrap."""
    def stats(idx: np.ndarray) -> dict[str, float]:
        cm = np.bincount(truth[idx] * k + pred[idx], minlength=k * k).reshape(k, k).astype(float)
        n, tp, rows, cols = cm.sum(), np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
        present = rows + cols > 0
        po, pe = tp.sum() / n, float(rows @ cols) / n**2
        kappa = math.nan if present.sum() < 2 or math.isclose(pe, 1.0) else (po - pe) / (1 - pe)
        return {"accuracy": po, "macro_f1": float((2 * tp[present] / (rows + cols)[present]).mean()),
                "cohen_kappa": kappa}
    return stats


def _multi_stats(truth: np.ndarray, pred: np.ndarray) -> Callable[[np.ndarray], dict[str, float]]:
    """Exact match, mean Jaccard (two empty sets count 1), macro and micro F1 from binarised sets."""
    def stats(idx: np.ndarray) -> dict[str, float]:
        t, p = truth[idx], pred[idx]
        inter, union = (t & p).sum(axis=1), (t | p).sum(axis=1)
        tp, fp, fn = (t & p).sum(axis=0), (~t & p).sum(axis=0), (t & ~p).sum(axis=0)
        present = (t | p).any(axis=0)
        f1 = 2 * tp[present] / (2 * tp + fp + fn)[present]
        denom = 2 * tp.sum() + fp.sum() + fn.sum()
        return {"exact_match": float((t == p).all(axis=1).mean()),
                "jaccard": float(np.where(union > 0, inter / np.maximum(union, 1), 1.0).mean()),
                "macro_f1": float(f1.mean()) if f1.size else math.nan,
                "micro_f1": float(2 * tp.sum() / denom) if denom else 0.0}
    return stats


def _quality(f: LabelField, items: list[Item], n_boot: int, seed: int) -> dict[str, Any]:
    """The ``metrics`` report of one field, per-option kappa (multi-label), intervals by dialogue."""
    options = [o.name for o in f.options]
    index = {o: j for j, o in enumerate(options)}
    stats: Callable[[np.ndarray], dict[str, float]]
    if f.multi:
        truth_sets, pred_sets = [set(i.gold) for i in items], [set(i.predicted or ()) for i in items]
        report = metrics.multilabel_report(truth_sets, pred_sets, labels=options)
        t = np.zeros((len(items), len(options)), dtype=bool)
        p = np.zeros_like(t)
        for row, (ts, ps) in enumerate(zip(truth_sets, pred_sets, strict=True)):
            t[row, [index[o] for o in ts]], p[row, [index[o] for o in ps]] = True, True
        for j, o in enumerate(options):  # kappa of the option's presence
            report["per_option"][o]["cohen_kappa"] = cohen_kappa(t[:, j].tolist(), p[:, j].tolist())
        report["confusion"] = {"labels": options, "matrix": (t.T.astype(int) @ p.astype(int)).tolist(),
                               "kind": "co-occurrence"}
        report["accuracy"], stats = report["exact_match"], _multi_stats(t, p)
        keys: tuple[str, ...] = ("exact_match", "jaccard", "macro_f1", "micro_f1")
    else:
        truth, pred = [str(i.gold) for i in items], [str(i.predicted) for i in items]
        report = metrics.classification_report(truth, pred, labels=options)
        report["confusion"]["kind"] = "gold x predicted"
        codes = np.array([[index[v] for v in truth], [index[v] for v in pred]]).reshape(2, -1)
        stats = _single_stats(codes[0], codes[1], len(index))
        keys = ("accuracy", "macro_f1", "cohen_kappa")
    groups = np.array([i.dialogue_id for i in items])
    boot = metrics.bootstrap_many(lambda idx: {k: v for k, v in stats(idx).items() if k in keys}, groups,
                                  n_boot=n_boot, seed=seed)
    report["intervals"] = {key: {"value": report[key], "low": boot[key][1], "high": boot[key][2]} for key in keys}
    return report


def _confidence(items: list[Item], n_boot: int, seed: int) -> dict[str, Any] | None:
    scored = [i for i in items if i.confidence is not None]
    if not scored:
        return None
    correct = np.array([i.correct for i in scored])
    conf = np.array([float(i.confidence or 0.0) for i in scored])
    groups = [i.dialogue_id for i in scored]
    report = metrics.confidence_report(correct, conf, groups, budgets=BUDGETS, n_boot=n_boot, seed=seed)
    coverage, risk = metrics.risk_coverage_curve(correct, conf)
    step = max(1, coverage.size // _CURVE_POINTS)
    keep = np.unique(np.r_[np.arange(0, coverage.size, step), coverage.size - 1])
    report["risk_coverage"] = {"coverage": coverage[keep].tolist(), "risk": risk[keep].tolist()}
    return report


SMALL_EVALUATION = 40  # dialogues: below, intervals come from fewer resamples (they are wide anyway)


def bootstrap_resamples(dialogues: int, asked: int | None = None) -> int:
    """The bootstrap resamples of an evaluation: ``asked`` when given; else 1000, or 200 for an evaluation of
    fewer than ``SMALL_EVALUATION`` dialogues, whose few distinct resamples 1000 draws would mostly repeat (4
    dialogues have 35) and whose intervals are too wide for the last digit 1000 resamples buy."""
    if asked is not None:
        return asked
    return 1000 if dialogues >= SMALL_EVALUATION else 200


def evaluate(db: str | Path | Store, gold: Gold | str | Path | None = None, run_id: str | None = None,
             out_dir: str | Path | None = None, n_boot: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Evaluate a run (default: the latest) against gold; ``gold=None`` reads the store's reviewed items.

    Returns the report (undefined values as None); with ``out_dir`` also writes ``report.json`` and a
    self-contained ``report.html`` there. Label metrics cover the labels the run produced; gold items whose
    record failed count as ``n_missing``. Intervals: 95% percentile bootstrap over ``n_boot`` resamples (default:
    ``bootstrap_resamples``) of
    whole dialogues.
    """
    with _opened(db) as store:
        run = store.run(run_id)
        task = store.run_task(run["id"])
        labels, source = _resolve_gold(gold, store, task)
        items, coverage = _collect(store, run["id"], task, labels)
        if not items:
            raise InputError(source, None, f"no gold label matches a labeled item of run {run['id']}")
        n_boot = bootstrap_resamples(len({i.dialogue_id for i in items}), n_boot)
        fields: dict[str, Any] = {}
        for f in task.labels:
            mine = [i for i in items if i.field == f.name]
            labeled = [i for i in mine if i.predicted is not None]
            if mine:
                fields[f.name] = {"scope": f.scope, "multi": f.multi, "n_gold": len(mine),
                                  "n_labeled": len(labeled), "n_missing": len(mine) - len(labeled),
                                  "quality": _quality(f, labeled, n_boot, seed) if labeled else None,
                                  "confidence": _confidence(labeled, n_boot, seed)}
                if labeled:
                    fields[f.name].update(spec_levels(f, labeled, n_boot, seed))
        report = {
            "run": {"id": run["id"], "model": run["model"], "input": run["input"],
                    "task": {"name": task.name, "version": task.version, "hash": task.spec_hash}},
            "gold": {"source": source, "labels": sum(len(v) for v in labels.values()), "matched": len(items),
                     "unmatched": sum(len(v) for v in labels.values()) - len(items)},
            "coverage": coverage, "fields": fields, "agreement": reviewer_agreement(store, task, run["id"]),
            "stages": stage_report(store, run, task, stage_answers(store, run["id"], task, labels), n_boot, seed),
            "method": {"correct": "label equals gold; multi-label fields: exact match of the label sets",
                       "intervals": f"95% percentile bootstrap by dialogue, {n_boot} resamples, seed {seed}",
                       "ece": "equal-mass bins (10)", "auroc": "errors are the positives",
                       "error_recall": "share of wrong labels among the lowest-confidence share flagged"},
        }
    report = _finite(report)
    if out_dir is not None:
        from autolabel.quality.report import write_report  # matplotlib loads only when a report is written

        report["files"] = write_report(report, Path(out_dir))
    return report


def _finite(obj: Any) -> Any:
    """NaN and infinities as None (JSON has no NaN); numpy scalars as Python numbers."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    obj = obj.item() if isinstance(obj, np.generic) else obj
    return None if isinstance(obj, float) and not math.isfinite(obj) else obj


# -------------------------------------------------------------------------------------------- agreement

def reviewer_agreement(store: Store, task: TaskSpec, run_id: str | None = None) -> dict[str, Any] | None:
    """Agreement per field over items reviewed by two or more reviewers, from the ``reviews`` table.

    Cohen's kappa per pair of reviewers (on the items both reviewed), Fleiss' kappa (items with the most
    common number of reviews), Krippendorff's alpha (nominal; MASI distance for multi-label fields). None
    when no item has several reviews.
    """
    out: dict[str, Any] = {}
    for name, per_item in _review_units(store, task, run_id).items():
        multi = task.label(name).multi
        shared = [v for v in per_item.values() if len(v) >= 2]
        if not shared:
            continue
        reviewers = sorted({r for v in shared for r in v})
        pairs = []
        for a, b in combinations(reviewers, 2):
            if both := [v for v in shared if a in v and b in v]:
                kappa = cohen_kappa([_key(v[a]) for v in both], [_key(v[b]) for v in both])
                pairs.append({"a": a, "b": b, "n": len(both), "kappa": kappa})
        size = Counter(len(v) for v in shared).most_common(1)[0][0]
        fleiss_rows = [[_key(x) for x in v.values()] for v in shared if len(v) == size]
        units = [[frozenset(x) if multi else _key(x) for x in v.values()] for v in shared]
        distance = "masi" if multi else "nominal"
        out[name] = {"n_items": len(shared), "reviewers": reviewers, "cohen_pairs": pairs,
                     "fleiss_kappa": fleiss_kappa_from_ratings(fleiss_rows), "fleiss_items": len(fleiss_rows),
                     "krippendorff_alpha": krippendorff_alpha(units, distance), "distance": distance}
        out[name].update(ordinal_agreement(task.label(name), shared))
    return out or None


def _key(value: Any) -> str:
    """A rating as one hashable label: multi-label sets become their sorted names joined by ``|``."""
    return "|".join(sorted(value)) if isinstance(value, list | tuple | set | frozenset) else str(value)


def _review_units(store: Store, task: TaskSpec, run_id: str | None) -> dict[str, dict[Any, dict[str, Any]]]:
    """{field: {item: {reviewer: normalised value}}} from the review queue's ``reviews``."""
    units: dict[str, dict[Any, dict[str, Any]]] = defaultdict(dict)
    for run, dialogue_id, kind, turn_index, reviewer, labels_json in QualityStore(store).ratings(run_id):
        for name, value in _normalised(task, labels_json):
            units[name].setdefault((run, dialogue_id, kind, turn_index), {})[reviewer] = value
    return units


# ------------------------------------------------------- ratings and sub-codes (issue 19; h6-specs' hook)

def spec_levels(f: LabelField, labeled: list[Item], n_boot: int, seed: int) -> dict[str, Any]:
    """A rating or ordinal field's ordinal metrics (``ordinal``), and the label metrics one level up for a field
    with sub-codes (``parent_level``: leaf answers and gold mapped to their parents)."""
    out: dict[str, Any] = {}
    if f.ordinal and not f.multi:
        out["ordinal"] = ordinal_quality(f, [str(i.gold) for i in labeled], [str(i.predicted) for i in labeled],
                                         [i.dialogue_id for i in labeled], n_boot, seed)
    if f.has_children:
        up = [replace(i, gold=to_parent(f, i.gold), predicted=to_parent(f, i.predicted)) for i in labeled]
        out["parent_level"] = _quality(f.parent_level(), up, n_boot, seed)
    return out


def ordinal_agreement(f: LabelField, shared: list[dict[str, Any]]) -> dict[str, Any]:
    """Krippendorff's alpha at the ordinal level of reviewers' ratings of a rating or ordinal field."""
    if not f.ordinal or f.multi:
        return {}
    units = [[f.rank(x) for x in v.values()] for v in shared]
    return {"krippendorff_alpha_ordinal": krippendorff_alpha_ordinal(units)}


# ------------------------------------------------------------------------------------------- calibration

def _fit_half(dialogue_ids: Iterable[str], seed: int) -> set[str]:
    """The dialogues a calibrator is fitted on: the first half in the order of a seeded hash of their ids
    (stable whatever the order of the records). The other half, one larger when odd, certifies."""
    ordered = sorted(set(dialogue_ids), key=lambda d: hashlib.sha256(f"{seed}:{d}".encode()).hexdigest())
    return set(ordered[: len(ordered) // 2])


def _placeholder(signals: Mapping[str, float]) -> float:
    """The uncalibrated score the annotate graph uses: the mean of the available signals (0 without any)."""
    return sum(signals.values()) / len(signals) if signals else 0.0


def _features(items: list[Item], names: Iterable[str]) -> dict[str, np.ndarray]:
    return {n: np.array([i.signals.get(n, np.nan) for i in items], dtype=float) for n in names}


def _scores(calibrator: Calibrator | None, items: list[Item]) -> np.ndarray:
    if calibrator is None or not items:
        return np.clip(np.array([_placeholder(i.signals) for i in items], dtype=float), 0.0, 1.0)
    return calibrator.predict(_features(items, calibrator.features))


def _fit(items: list[Item], method: CalibrationMethod) -> tuple[Calibrator | None, str]:
    names = sorted({n for i in items for n in i.signals})
    if not items:
        return None, "no gold labels to fit a calibrator on"
    if not names:
        return None, "no signals to fit a calibrator on; the raw score was used"
    if method is CalibrationMethod.ISOTONIC and len(names) > 1:
        raise ConfigError(f"isotonic calibration takes one signal, the labels carry {names}: use auto")
    try:
        return Calibrator.fit(_features(items, names), [i.correct for i in items], method), ""
    except ValueError as e:
        return None, f"no calibrator fitted ({e}); the raw score was used"


def calibrate(db: str | Path | Store, gold: Gold | str | Path | None = None, run_id: str | None = None,
              alpha: float = 0.1, delta: float = 0.05, method: CalibrationMethod | str = "auto",
              min_n: int = 30, seed: int = 0) -> list[dict[str, Any]]:
    """Fit a calibrator and certify an auto-accept threshold per label field of a run's task; store both.

    The run's dialogues are split in two halves (``_fit_half``): the calibrator is fitted on one, the
    threshold certified on the other by fixed-sequence Clopper–Pearson testing (``certify_threshold``). A
    field without a certified threshold (too little data: n < ``min_n`` above every threshold; or none meets
    ``alpha``) is stored with threshold None, and later runs flag every label of it. Returns per field:
    ``field, model, method, features, n_fit, n_held, threshold, alpha, delta, n, k, upper_bound, coverage, reason, id``.

    A cascade's run (records with ``decided_by``) is calibrated per stage (``stage_answers``): stage k's calibrator
    is fitted and certified on stage k's answers to the gold turns that reached it, and stored under stage k's model
    with the signal settings of stage k's own run; each row also names its ``stage``.
    """
    if method not in {m.value for m in CalibrationMethod}:
        raise ConfigError(f"unknown calibration method {method!r}: auto, isotonic or logistic")
    with _opened(db) as store:
        run = store.run(run_id)
        task = store.run_task(run["id"])
        labels = _resolve_gold(gold, store, task)[0]
        stages = stage_answers(store, run["id"], task, labels)
        if stages:  # a cascade's run: each stage on the turns that reached it, under its own model
            results = []
            for k, st in sorted(stages.items()):
                key = {**run, "model": st.model, "params_json": _stage_params(store, run, k)}
                items = [i for i in st.items if i.predicted is not None]
                results += [{"stage": k, **row} for row in _calibrate_items(
                    store, task, key, items, alpha, delta, method, min_n, seed, {i.field for i in items})]
            return results
        items = [i for i in _collect(store, run["id"], task, labels)[0] if i.predicted is not None]
        return _calibrate_items(store, task, run, items, alpha, delta, method, min_n, seed)


def _calibrate_items(store: Store, task: TaskSpec, key: Mapping[str, Any], items: list[Item], alpha: float,
                     delta: float, method: CalibrationMethod | str, min_n: int, seed: int,
                     only: set[str] | None = None) -> list[dict[str, Any]]:
    """``calibrate`` of one model's labels (``key``: the run's task, model and parameters); of the fields in
    ``only`` when given (a stage: the fields it answered on gold turns, so that a field it never saw, such as a
    session field only stage 1 labels, is not stored as "flag everything" for its model)."""
    fit_ids, results = _fit_half((i.dialogue_id for i in items), seed), []
    for f in task.labels:
        if only is not None and f.name not in only:
            continue
        fit = [i for i in items if i.field == f.name and i.dialogue_id in fit_ids]
        held = [i for i in items if i.field == f.name and i.dialogue_id not in fit_ids]
        calibrator, note = _fit(fit, CalibrationMethod(method))
        res = certify_threshold(_scores(calibrator, held), [i.correct for i in held], alpha, delta, min_n)
        row = {"field": f.name, "model": key["model"], "method": calibrator.method.value if calibrator else "raw",
               "features": list(calibrator.features) if calibrator else [], "n_fit": len(fit), "n_held": len(held),
               "threshold": res.threshold, "alpha": alpha, "delta": delta, "n": res.n, "k": res.k,
               "upper_bound": res.upper_bound, "coverage": res.coverage,
               "reason": f"{res.reason}; {note}" if note else res.reason}
        row["id"] = _store_calibrator(store, key, f.name, calibrator, row)
        results.append(row)
    return results


SIGNAL_PARAMS = ("critique", "samples", "temperature", "logprobs", "few_shot", "embeddings", "turns_per_call",
                 "texts")
"""Run settings that shape the confidence signals (which signals there are, and how they are distributed): a
threshold certified on a run holds for runs with the same ones."""


def signal_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """``SIGNAL_PARAMS`` of a run's stored parameters, with the defaults a run leaves out (``Annotator.params``
    names ``embeddings`` and ``turns_per_call`` only when they are not the default, ``texts`` only when the run asked
    for labels only or a model's non-default text); the embedder only matters with few-shot examples."""
    out = {k: params.get(k, "on" if k == "texts" else Settings.model_fields[k].default) for k in SIGNAL_PARAMS}
    if not out["few_shot"]:
        out["embeddings"] = None
    return out


def _store_calibrator(store: Store, run: Mapping[str, Any], name: str, calibrator: Calibrator | None,
                      row: Mapping[str, Any]) -> int:
    settings = signal_params(json.loads(run["params_json"] or "{}"))
    return QualityStore(store).add_calibrator(
        task_name=run["task_name"], task_hash=run["task_hash"], model=run["model"], field=name,
        calibrator_json=json.dumps(calibrator.to_dict()) if calibrator else None,
        signal_params_json=json.dumps(settings, sort_keys=True), row=dict(row))


def load_routing(store: Store, task: TaskSpec, model: str
                 ) -> tuple[dict[str, float], Callable[[str, dict[str, float]], float] | None]:
    """Thresholds and the calibrated-confidence function for runs of ``task`` with ``model``.

    The latest stored calibrator per field wins. A field whose threshold is None gets ``NEVER`` (1.01):
    every label of it is flagged. A field stored without a calibrator is scored as without calibration (the
    mean of its signals). With nothing stored: ``({}, None)``, i.e. the graph's defaults.
    """
    rows = QualityStore(store).calibrators(task.name, task.spec_hash, model)
    latest = {r.field: (r.calibrator_json, r.threshold) for r in rows}
    if not latest:
        return {}, None
    thresholds = {name: NEVER if t is None else float(t) for name, (_, t) in latest.items()}
    calibrators = {name: Calibrator.from_dict(json.loads(c)) for name, (c, _) in latest.items() if c}

    def score(name: str, signals: dict[str, float]) -> float:
        calibrator = calibrators.get(name)
        if calibrator is None:
            return _placeholder(signals)
        return float(calibrator.predict({k: float(v) for k, v in signals.items()})[0])

    return thresholds, score


def calibration_mismatch(store: Store, task: TaskSpec, model: str, params: Mapping[str, Any]) -> list[str]:
    """The signal settings (``SIGNAL_PARAMS``) in which a run with ``params`` differs from the runs its stored
    calibrators (the ones ``load_routing`` hands it) were fitted on, as ``name: fitted → this run``; empty when
    they agree or nothing is stored."""
    rows = QualityStore(store).calibrators(task.name, task.spec_hash, model)
    latest = {r.field: r.signal_params_json for r in rows}  # per field, the newest (the one load_routing uses)
    mine = signal_params(params)
    out: dict[str, str] = {}
    for sp in latest.values():
        if sp is None:  # stored before the settings were
            continue
        for k, v in json.loads(sp).items():
            if k in mine and mine[k] != v:
                out[k] = f"{k}: {v} → {mine[k]}"
    return [out[k] for k in SIGNAL_PARAMS if k in out]


# ------------------------------------------------------------------------------- cascade stages (issue 20, item 3)

@dataclass
class StageAnswers:
    """What one stage of a cascade run answered: its gold-matched ``items`` (an earlier stage's answers have status
    ``escalated``; the deciding stage's, the record's status), and per turn counts: ``reached`` it, it ``decided``
    (accepted), sent on (``escalated``), left ``flagged`` for people, ``failed``; ``accepted_labels``: the labels of
    the turns it decided."""

    model: str
    items: list[Item]
    reached: int = 0
    decided: int = 0
    escalated: int = 0
    flagged: int = 0
    failed: int = 0
    accepted_labels: int = 0


def stage_answers(store: Store, run_id: str, task: TaskSpec, gold: Gold) -> dict[int, StageAnswers]:
    """Per stage of a cascade run (empty for any other run): stage k's answer to a turn is its entry in the final
    record's ``stages``, or the final record itself when ``decided_by.stage`` is k (the merged record's contract,
    ``autolabel/cascade_merge.py``). A turn reached stage k when either holds."""
    out: dict[int, StageAnswers] = {}
    for rec in QualityStore(store).first_records(run_id):
        decided = rec.get("decided_by")
        if not isinstance(decided, Mapping):
            continue
        answers = [(int(s["stage"]), str(s["model"]), s.get("labels") or {}, s.get("confidence") or {}, "escalated")
                   for s in rec.get("stages") or []]
        answers.append((int(decided["stage"]), str(decided["model"]), rec["labels"], rec["confidence"],
                        rec["status"]))
        for k, model, labels, confidence, status in answers:
            st = out.setdefault(k, StageAnswers(model, []))
            st.items += _answer_items(task, gold, rec, labels, confidence, status)
            if rec["kind"] != "turn":
                continue
            st.reached += 1
            st.decided += status == "accepted"
            st.escalated += status == "escalated"
            st.flagged += status in ("flagged", "reviewed")
            st.failed += status == "failed"
            st.accepted_labels += len(labels) if status == "accepted" else 0
    return out


def _stage_params(store: Store, run: Mapping[str, Any], k: int) -> str:
    """The stored parameters of stage k's own run (``stage_runs`` in the cascade run's parameters); ``{}`` when it
    has none (a stage without a run of its own, such as knn)."""
    stage_runs = json.loads(run["params_json"] or "{}").get("stage_runs") or []
    if k <= len(stage_runs) and stage_runs[k - 1]:
        try:
            return str(store.run(stage_runs[k - 1])["params_json"] or "{}")
        except StoreError:
            pass
    return "{}"


def _stage_cost(store: Store, run: Mapping[str, Any], k: int) -> dict[str, Any]:
    stage_runs = json.loads(run["params_json"] or "{}").get("stage_runs") or []
    if k <= len(stage_runs) and stage_runs[k - 1]:
        return store.call_totals(stage_runs[k - 1])
    return {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}


def _kappa(quality: Mapping[str, Any]) -> float | None:
    """Cohen's κ; of a multi-label field, the mean of its options' presence κ (the defined ones)."""
    if "cohen_kappa" in quality:
        return quality["cohen_kappa"]
    kappas = [o["cohen_kappa"] for o in quality.get("per_option", {}).values() if o.get("cohen_kappa") is not None]
    return sum(kappas) / len(kappas) if kappas else None


def stage_report(store: Store, run: Mapping[str, Any], task: TaskSpec, stages: Mapping[int, StageAnswers],
                 n_boot: int, seed: int) -> list[dict[str, Any]]:
    """Per stage: turns that reached it and what became of them, ``coverage`` (share of all the run's turns it
    decided), accuracy and κ per field of the labels it accepted (against gold; exact match for multi-label
    fields), its certified bound per field (the stored calibrator of this task and the stage's model), its calls
    and cost and the cost per accepted label."""
    total = sum(st.decided + st.flagged + st.failed for st in stages.values())
    out = []
    for k, st in sorted(stages.items()):
        fields: dict[str, Any] = {}
        for f in task.labels:
            accepted = [i for i in st.items if i.field == f.name and i.status == "accepted" and i.predicted is not None]
            if accepted:
                q = _quality(f, accepted, n_boot, seed)
                fields[f.name] = {"n": len(accepted), "accuracy": q["accuracy"], "kappa": _kappa(q),
                                  "macro_f1": q["macro_f1"]}
        certified = QualityStore(store).certified(task.name, task.spec_hash, st.model)
        cost = _stage_cost(store, run, k)
        out.append({"stage": k, "model": st.model, "reached": st.reached, "decided": st.decided,
                    "escalated": st.escalated, "flagged": st.flagged, "failed": st.failed,
                    "coverage": st.decided / total if total else None,
                    "decided_of_reached": st.decided / st.reached if st.reached else None,
                    "accepted_quality": fields,
                    "certified": {name: {c: row[c] for c in ("threshold", "alpha", "delta", "n", "k", "upper_bound")}
                                  for name, row in certified.items()},
                    "calls": cost["calls"], "cost_usd": cost["cost_usd"], "accepted_labels": st.accepted_labels,
                    "cost_per_accepted_label": cost["cost_usd"] / st.accepted_labels if st.accepted_labels else None})
    return out
