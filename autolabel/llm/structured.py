"""Structured output: response models for instructor built from a task's JSON Schemas, and how a request asks for
them in each structured-output mode.

instructor wants a pydantic model. We give it one whose JSON Schema *is* the task's generated schema (so the model
and the validator see the same schema) and whose validation *is* the compiled schema of :mod:`autolabel.validation`
(jsonschema Draft 2020-12). A failure becomes a pydantic ``ValidationError`` carrying every jsonschema message with
its path, which instructor sends back to the model as the re-ask.

OpenAI-compatible servers differ in how they take a schema (``StructuredMode``, instructor's modes):

============  =============================================================  ===================
mode          the request carries                                            instructor mode
============  =============================================================  ===================
json_schema   ``response_format: {type: json_schema, json_schema: {...}}``     ``JSON_SCHEMA``
json_object   ``response_format: {type: json_object, schema}`` + instruction  ``JSON``
tools         ``tools: [one function]`` + ``tool_choice`` forcing it          ``TOOLS``
prompt        the instruction only (the schema in the system message)         ``MD_JSON``
============  =============================================================  ===================

In json_object mode the schema sent in ``response_format`` has no string length limits: llama-cpp-python's server
(0.3.36) turns ``maxLength: 1200`` into nested grammar rules that llama.cpp refuses, and then crashes. The system
message carries the whole schema, and autolabel's validator checks the lengths (and re-asks) as in every mode.

``RequestParts`` of each mode are built once per schema, with their JSON (the cache key and the call log reuse it
instead of serialising the schema again on every call).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar, cast

import instructor
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ConfigDict, model_validator

from autolabel.settings import StructuredMode
from autolabel.validation import Check, compile_schema, compile_schema_json, schema_digest

__all__ = ["FALLBACK", "INSTRUCTOR_MODES", "RequestParts", "SchemaAnswer", "StructuredMode", "request_parts",
           "response_format", "response_model", "schema_digest", "with_instruction"]

FALLBACK: tuple[StructuredMode, ...] = (StructuredMode.JSON_SCHEMA, StructuredMode.JSON_OBJECT, StructuredMode.TOOLS,
                                        StructuredMode.PROMPT)
"""The modes ``auto`` tries, in order: each asks less of the server than the one before."""

INSTRUCTOR_MODES: dict[StructuredMode, instructor.Mode] = {
    StructuredMode.JSON_SCHEMA: instructor.Mode.JSON_SCHEMA,
    StructuredMode.JSON_OBJECT: instructor.Mode.JSON,
    StructuredMode.TOOLS: instructor.Mode.TOOLS,
    StructuredMode.PROMPT: instructor.Mode.MD_JSON,
}
"""How instructor parses and re-asks the answer of each mode."""

INSTRUCTION = ("Answer with one JSON object valid for this JSON Schema (the object itself, not the schema), and "
               "nothing else:\n{schema}")


@dataclass(frozen=True)
class RequestParts:
    """What a request of one mode adds for one schema; shared by every request for it: nothing may change it."""

    mode: StructuredMode
    fields: dict[str, Any]
    """Request fields (``response_format``, or ``tools`` and ``tool_choice``)."""
    fields_json: dict[str, str]
    """Each field's JSON as ``json.dumps(value, sort_keys=True, ensure_ascii=False)`` (the cache key's form)."""
    instruction: str | None
    """Appended to the system message: the schema, for modes where the server does not enforce it."""

    @property
    def refused_by(self) -> tuple[str, ...]:
        """Names that an endpoint's refusal of this mode mentions (the request fields it did not take)."""
        return (*self.fields, *(("json_schema",) if self.mode is StructuredMode.JSON_SCHEMA else ()))


class SchemaAnswer(BaseModel):
    """Base of generated response models: holds the raw answer dict, validated by jsonschema."""

    model_config = ConfigDict(extra="allow")
    json_schema_: ClassVar[dict[str, Any]] = {}
    validator_: ClassVar[Draft202012Validator]
    check_: ClassVar[Check | None] = None
    requests_: ClassVar[dict[StructuredMode, RequestParts]] = {}

    @model_validator(mode="before")
    @classmethod
    def _check(cls, data: Any) -> Any:
        if cls.check_ is not None and cls.check_(data):
            return data
        errors = sorted(cls.validator_.iter_errors(data), key=lambda e: e.json_path)
        if errors:
            raise ValueError("; ".join(f"{e.json_path}: {e.message}" for e in errors[:8]))
        return data

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return cls.json_schema_

    def answer(self) -> dict[str, Any]:
        return dict(self.__pydantic_extra__ or {})


def _sorted_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


_DATA_KEYS = frozenset({"enum", "const", "default", "examples"})
_NAMED_KEYS = frozenset({"properties", "$defs", "definitions", "patternProperties", "dependentSchemas"})


def without_lengths(schema: Any) -> Any:
    """``schema`` without ``minLength``/``maxLength`` anywhere (values under enum/const/default are data: kept)."""
    if isinstance(schema, list):
        return [without_lengths(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("minLength", "maxLength"):
            continue
        if key in _NAMED_KEYS and isinstance(value, dict):
            out[key] = {name: without_lengths(sub) for name, sub in value.items()}
        else:
            out[key] = value if key in _DATA_KEYS else without_lengths(value)
    return out


def _parts(name: str, schema: dict[str, Any], schema_text: str) -> dict[StructuredMode, RequestParts]:
    instruction = INSTRUCTION.format(schema=schema_text)
    by_mode: dict[StructuredMode, tuple[dict[str, Any], str | None]] = {
        StructuredMode.JSON_SCHEMA: ({"response_format": {"type": "json_schema",
                                                          "json_schema": {"name": name, "schema": schema}}}, None),
        StructuredMode.JSON_OBJECT: ({"response_format": {"type": "json_object", "schema": without_lengths(schema)}},
                                     instruction),
        StructuredMode.TOOLS: ({"tools": [{"type": "function", "function": {"name": name, "parameters": schema}}],
                                "tool_choice": {"type": "function", "function": {"name": name}}}, None),
        StructuredMode.PROMPT: ({}, instruction),
    }
    return {mode: RequestParts(mode, fields, {k: _sorted_json(v) for k, v in fields.items()}, text)
            for mode, (fields, text) in by_mode.items()}


@lru_cache(maxsize=256)
def _model_for(name: str, schema_json: str) -> type[SchemaAnswer]:
    c = compile_schema_json(schema_json)
    attrs = {"json_schema_": json.loads(schema_json), "validator_": c.validator, "check_": c.check,
             "__module__": __name__}
    return type(name, (SchemaAnswer,), attrs)


@lru_cache(maxsize=256)
def _response_model_for(name: str, schema_json: str) -> type[SchemaAnswer]:
    # instructor wraps a model that is not yet its ``ResponseSchema`` in a new pydantic class on every call (a few
    # milliseconds of CPU each); wrapped once here, the class is reused
    model = cast(type[SchemaAnswer], instructor.openai_schema(_model_for(name, schema_json)))
    model.requests_ = _parts(model.__name__, model.model_json_schema(), schema_json)
    return model


def response_model(name: str, schema: dict[str, Any]) -> type[SchemaAnswer]:
    """The (cached) response model class for a JSON Schema, ready for instructor."""
    return _response_model_for(name, compile_schema(schema).json)


def request_parts(model: type[SchemaAnswer], mode: StructuredMode) -> RequestParts:
    """What a request for ``model``'s schema in ``mode`` adds (made once per schema)."""
    return model.requests_[StructuredMode.JSON_SCHEMA if mode is StructuredMode.AUTO else mode]


def response_format(model: type[SchemaAnswer]) -> dict[str, Any]:
    """The ``response_format`` instructor's JSON_SCHEMA mode sends for ``model`` (OpenAI structured outputs)."""
    return cast(dict[str, Any], request_parts(model, StructuredMode.JSON_SCHEMA).fields["response_format"])


def with_instruction(messages: list[dict[str, Any]], instruction: str) -> list[dict[str, Any]]:
    """``messages`` with ``instruction`` appended to the system message (a new one first when there is none)."""
    if messages and messages[0].get("role") == "system" and isinstance(messages[0].get("content"), str):
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{instruction}"}, *messages[1:]]
    return [{"role": "system", "content": instruction}, *messages]
