"""The merge of a cascade run (``autolabel/cascade.py``): one final record per turn in the cascade's own run.

For each dialogue whose every needed stage is done, the record of the last stage that labeled a turn decides it: it
is stored as the turn's final record in the cascade's run with ``decided_by: {stage, model}`` and ``stages`` (each
earlier stage's labels, confidence and the reasons it sent the turn on); the earlier records are kept beside it as
non-final attempts (status ``escalated``), as rejected attempts are. The session record is stage 1's. Review items
are made here, by the graph's own rules, for the records that decide: the cascade's run holds the review queue. A
dialogue already merged is left as it is (its reviews stay).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from autolabel.annotator import result_of
from autolabel.cascade_spec import CascadeSpec, CascadeSummary
from autolabel.graphs.annotate.nodes import priority, review_reasons
from autolabel.persistence.store import Store
from autolabel.readers import collect_errors, read_dialogues
from autolabel.tasks import TaskSpec

SESSION = -1


async def merge_input(db: str, task: TaskSpec, spec: CascadeSpec, model: str, path: str | Path, name: str,
                      summary: CascadeSummary, done: list[set[str]]) -> None:
    """Merge every dialogue of ``path`` whose stages are done (``done[k-1]``: the dialogues stage k finished in this
    call, resumed or new) into the cascade's run (``summary.run_id``, its model named ``model``), and record the run
    with ``summary``."""
    await asyncio.to_thread(_merge, Merge(db, task, spec), model, path, name, summary, done)


class Merge:
    """What a merge needs of the cascade: its store, task and file."""

    def __init__(self, db: str, task: TaskSpec, spec: CascadeSpec) -> None:
        self.db, self.task, self.spec = db, task, spec


def _merge(c: Merge, model: str, path: str | Path, name: str, summary: CascadeSummary, done: list[set[str]]) -> None:
    store = Store.open(c.db)
    try:
        stage_runs = [st.run_id for st in summary.stages]
        store.start_run(summary.run_id, task_name=c.task.name, task_version=c.task.version,
                        task_hash=c.task.spec_hash, task_json=c.task.model_dump_json(), model=model,
                        params={"cascade": c.spec.key(), "stages": [s.model for s in c.spec.stages],
                                "stage_runs": stage_runs, "risk_to_later_stages": c.spec.risk_to_later_stages},
                        params_hash=c.spec.key(), input=name)
        merged = 0
        for d in read_dialogues(path, on_error=collect_errors("skip", [])):
            if store.dialogue_status(summary.run_id, d.id) == "done":
                merged += 1
                continue
            chain = _chain(c, store, summary, done, d.id)
            if chain is None:
                continue
            _save(c, store, summary.run_id, d, chain)
            merged += 1
        counts = store.counts(summary.run_id)
        summary.dialogues = merged
        summary.accepted, summary.flagged, summary.failed = counts["accepted"], counts["flagged"], counts["failed"]
        summary.turns = sum(counts.values())
        summary.notes = _notes(summary)
        store.finish_run(summary.run_id, "stopped" if summary.stopped_reason else "finished", summary.as_dict())
    finally:
        store.close()


def _chain(c: Merge, store: Store, summary: CascadeSummary, done: list[set[str]], dialogue_id: str
           ) -> list[list[dict[str, Any]]] | None:
    """Each needed stage's final records of the dialogue, in stage order; None while a needed stage is not done."""
    out: list[list[dict[str, Any]]] = []
    for k, st in enumerate(summary.stages, 1):
        if k > 1 and not any(c.spec.escalates(r) for r in out[-1] if r["kind"] == "turn"):
            break  # nothing of it went on
        if k > len(done) or dialogue_id not in done[k - 1] or st.run_id is None:
            return None
        out.append(store.final_records_of(st.run_id, dialogue_id))
    return out


def _save(c: Merge, store: Store, run_id: str, d: Any, chain: list[list[dict[str, Any]]]) -> None:
    final: dict[int, tuple[int, dict[str, Any]]] = {}
    earlier: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    for k, records in enumerate(chain, 1):
        for rec in records:
            i = rec["turn_index"] if rec["kind"] == "turn" else SESSION
            if i in final:
                earlier.setdefault(i, []).append(final[i])
            final[i] = (k, rec)
    first = {r["turn_index"]: r for r in store.turn_rows(_stage1_run(c, chain), d.id)} if chain else {}
    turns, annotations, review = [], [], []
    language = "en"
    for i, (k, rec) in sorted(final.items()):
        out = {**rec, "run_id": run_id, "decided_by": {"stage": k, "model": rec["model"]},
               "stages": [{"stage": j, "model": r["model"], "labels": r["labels"], "confidence": r["confidence"],
                           "reasons": r["flags"]} for j, r in earlier.get(i, [])]}
        language = rec.get("language", language)
        kind = "session" if i == SESSION else "turn"
        for n, (_, r) in enumerate(earlier.get(i, []), 1):
            annotations.append({"kind": kind, "turn_index": i, "attempt": n, "is_final": False, "valid": False,
                                "status": "escalated", "record": r})
        annotations.append({"kind": kind, "turn_index": i, "attempt": 0, "is_final": True,
                            "valid": rec["status"] != "failed", "status": rec["status"], "record": out})
        result = result_of(d.id, [out])
        if kind == "session":
            if result.session is not None and rec["status"] == "flagged":
                review.append({"kind": kind, "turn_index": i, "reasons": rec["flags"],
                               "priority": priority(rec["flags"], result.session.confidence), "proposal": out})
            continue
        row = first.get(i) or {"speaker": rec["speaker"], "role": rec["role"], "text": "", "meta": {}}
        turns.append({"turn_index": i, "speaker": row["speaker"], "role": row["role"], "text": row["text"],
                      "meta": row["meta"], "status": rec["status"]})
        ann = result.turns[0]
        reasons = review_reasons(ann)
        if reasons:
            review.append({"kind": kind, "turn_index": i, "reasons": reasons,
                           "priority": priority(reasons, ann.confidence), "proposal": out})
    store.mark_running(run_id, d.id, language=language, n_turns=len(d.turns), meta=d.meta, source=d.source)
    store.save_dialogue(run_id, d.id, turns=turns, annotations=annotations, review_items=review, task=c.task,
                        language=language)


def _stage1_run(c: Merge, chain: list[list[dict[str, Any]]]) -> str:
    return str(chain[0][0]["run_id"]) if chain and chain[0] else ""


def _notes(summary: CascadeSummary) -> list[str]:
    """What the run says about each stage's routing rule."""
    notes = []
    for st in summary.stages:
        if st.run_id is None:
            continue
        if st.calibrated:
            notes.append(f"stage {st.stage} ({st.model}): routed by its stored calibrator and certified thresholds "
                         "for this task and model")
        else:
            notes.append(f"stage {st.stage} ({st.model}): no stored calibration for this task and model — routed by "
                         "the uncalibrated rule (the mean of the confidence signals against 0.5); `autolabel "
                         "calibrate` on reviewed turns that reached this stage certifies it")
    return notes
