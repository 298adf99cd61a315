"""Run identity: the settings a run is made with, the parameters that make two runs different, its id, its record.

The id is derived from the task spec's hash, the model, the output parameters and the input's name, so the same
command (or the same LangGraph configuration) resumes the same run. Used by the Python API and by the graph's own
context when LangGraph's tooling opens a run from a configuration.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from autolabel.llm.local import MODELS
from autolabel.persistence.store import Store
from autolabel.settings import Settings, TextsMode
from autolabel.tasks import TaskSpec

OUTPUT_PARAMS = ("temperature", "max_tokens", "max_reasks", "samples", "critique", "window", "logprobs", "redact",
                 "few_shot")


def settings_with(base: Settings | None, overrides: dict[str, Any]) -> Settings:
    """``base`` (default: ``Settings()``, i.e. ``AUTOLABEL_*`` and the defaults) with the given values set."""
    base = base or Settings()
    return Settings.model_validate({**base.model_dump(), **{k: v for k, v in overrides.items() if v is not None}})


def writes_texts(settings: Settings) -> bool:
    """Does this run ask the model for free text (``Settings.texts``; ``auto``: the model's own default)?"""
    if settings.texts == TextsMode.AUTO:
        return model_writes_text(settings)
    return settings.texts == TextsMode.ON


def model_writes_text(settings: Settings) -> bool:
    """The model's own default: False for an embedded model registered as too small to explain."""
    spec = MODELS.get(settings.model_name) if settings.family == "local" else None
    return spec is None or spec.writes_text


def run_params(settings: Settings) -> dict[str, Any]:
    """The parameters that change what a run answers (another value: another run)."""
    params = {k: getattr(settings, k) for k in OUTPUT_PARAMS}
    if settings.few_shot and settings.embeddings != Settings.model_fields["embeddings"].default:
        params["embeddings"] = settings.embeddings  # another embedder picks other examples: another run
    if settings.turns_per_call != 1:
        params["turns_per_call"] = settings.turns_per_call  # other prompts and answers: another run
    texts = writes_texts(settings)
    if not (texts and model_writes_text(settings)):  # labels only, or text from a model that by default writes none:
        params["texts"] = "on" if texts else "off"   # other answers, another run (the others keep their ids)

    return params


def params_hash(settings: Settings) -> str:
    return hashlib.sha256(json.dumps(run_params(settings), sort_keys=True).encode()).hexdigest()[:16]


def run_id(task: TaskSpec, settings: Settings, input_name: str) -> str:
    key = f"{task.spec_hash}|{settings.model}|{params_hash(settings)}|{input_name}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def start_run(store: Store, task: TaskSpec, settings: Settings, input_name: str) -> str:
    """Record the run of this configuration over ``input_name`` (or reopen it); returns its id."""
    rid = run_id(task, settings, input_name)
    store.start_run(rid, task_name=task.name, task_version=task.version, task_hash=task.spec_hash,
                    task_json=task.model_dump_json(), model=settings.model, params=run_params(settings),
                    params_hash=params_hash(settings), input=input_name)
    return rid
