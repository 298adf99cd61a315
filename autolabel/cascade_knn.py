"""A ``model: knn`` stage of a cascade: the nearest reviewed turns label the turns that reach it, at no LLM cost.

The labels and vote shares come from ``autolabel.learned.KnnStage`` (fitted once per cascade run on the task's
reviewed turns, with the run's ``--embeddings``); this module makes them a stage run like the others: a run in the
store (model ``knn``, its id derived from the cascade and the stage index), one final record per turn it labeled,
routed by the same rules as an LLM stage — its stored calibrator and certified thresholds for this task and model
``knn`` when ``autolabel calibrate`` stored them, otherwise the vote share against 0.5; a field no neighbour carries
is flagged ``low_confidence``; risk content and prompt injection are flagged from the turn's text. A dialogue already
done in the stage's run is read back, not labeled again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

from autolabel import runs
from autolabel.annotator import result_of
from autolabel.cascade_spec import StageSummary
from autolabel.graphs.annotate.nodes import DEFAULT_THRESHOLD
from autolabel.learned import MODEL, SIGNAL
from autolabel.models import Dialogue, DialogueResult, FieldConfidence, Status, TurnAnnotation
from autolabel.persistence.store import Store
from autolabel.records import turn_record
from autolabel.safety.risk import detect_injection, detect_risk
from autolabel.settings import Settings
from autolabel.tasks import TaskSpec
from autolabel.text import detect_language


def knn_stage_run(task: TaskSpec, settings: Settings, input_name: str, dialogues: Iterator[Dialogue],
                  only: dict[str, list[int]] | None, st: StageSummary,
                  seen: Callable[[DialogueResult], None]) -> None:
    """Label ``dialogues`` (``only``: just these turns of each) with the knn stage; ``seen`` after each dialogue."""
    from autolabel.learned import KnnStage
    from autolabel.quality.evaluate import load_routing

    s = settings.model_copy(update={"model": MODEL})
    store = Store.open(s.db)
    try:
        st.run_id = runs.start_run(store, task, s, input_name)
        thresholds, calibrate = load_routing(store, task, MODEL)
        st.calibrated = bool(thresholds)
        knn: KnnStage | None = None
        for d in dialogues:
            if store.dialogue_status(st.run_id, d.id) != "done":
                knn = knn or KnnStage.fit(store, task, embeddings=s.embeddings, settings=s)
                _label(store, task, st.run_id, knn, d, only, thresholds, calibrate)
            seen(result_of(d.id, store.final_records_of(st.run_id, d.id)))
        store.finish_run(st.run_id, "finished", {"run_id": st.run_id, "db": s.db, "turns": st.turns})
    finally:
        store.close()


async def aknn_stage_run(*args: Any) -> None:
    await asyncio.to_thread(knn_stage_run, *args)


def _label(store: Store, task: TaskSpec, run_id: str, knn: Any, d: Dialogue, only: dict[str, list[int]] | None,
           thresholds: dict[str, float], calibrate: Callable[[str, dict[str, float]], float] | None) -> None:
    indices = [t.index for t in d.turns] if only is None else sorted(set(only.get(d.id, [])))
    language = detect_language([t.text for t in d.turns], task.languages)
    answers = knn.label([(d, i) for i in indices])
    turns, annotations = [], []
    for i, answer in zip(indices, answers, strict=True):
        ann = _annotation(task, d, i, answer, thresholds, calibrate)
        t = d.turns[i]
        turns.append({"turn_index": i, "speaker": t.speaker, "role": ann.role, "text": t.text, "meta": t.meta,
                      "status": ann.status.value})
        rec = turn_record(ann, run_id=run_id, task=task, model=MODEL, language=language, text=None)
        annotations.append({"kind": "turn", "turn_index": i, "attempt": 0, "is_final": True,
                            "valid": ann.status != Status.FAILED, "status": ann.status.value, "record": rec})
    store.mark_running(run_id, d.id, language=language, n_turns=len(d.turns), meta=d.meta, source=d.source)
    store.save_dialogue(run_id, d.id, turns=turns, annotations=annotations, review_items=[], task=task,
                        language=language)


def _annotation(task: TaskSpec, d: Dialogue, i: int, answer: dict[str, tuple[Any, float]],
                thresholds: dict[str, float], calibrate: Callable[[str, dict[str, float]], float] | None
                ) -> TurnAnnotation:
    t = d.turns[i]
    role = task.role_of(t.speaker)
    flags = (["risk_content"] if detect_risk(t.text, None) else []) + (
        ["prompt_injection"] if detect_injection(t.text) else [])
    if role is None:
        return TurnAnnotation(dialogue_id=d.id, turn_index=i, speaker=t.speaker, role=role, status=Status.FAILED,
                              flags=flags,
                              error=f"unknown_speaker: {t.speaker!r} is not mapped to a role by the task")
    fields = task.fields_for(role)
    labels: dict[str, Any] = {}
    confidence: dict[str, FieldConfidence] = {}
    for f in fields.labels if fields else []:
        if f.name not in answer:
            flags.append(f"low_confidence:{f.name}")  # no reviewed neighbour carries it
            continue
        value, share = answer[f.name]
        signals = {SIGNAL: float(share)}
        conf = calibrate(f.name, signals) if calibrate else float(share)
        labels[f.name] = value
        confidence[f.name] = FieldConfidence(value=min(1.0, max(0.0, conf)), signals=signals)
        if conf < thresholds.get(f.name, DEFAULT_THRESHOLD):
            flags.append(f"low_confidence:{f.name}")
    status = Status.FLAGGED if flags else Status.ACCEPTED
    return TurnAnnotation(dialogue_id=d.id, turn_index=i, speaker=t.speaker, role=role, status=status,
                          labels=labels, confidence=confidence, flags=list(dict.fromkeys(flags)))
