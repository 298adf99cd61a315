"""Response models for instructor, built from the JSON Schemas a task spec generates.

instructor wants a pydantic model. We give it one whose JSON Schema *is* the task's generated schema (so the model
and the validator see the same schema) and whose validation *is* the compiled schema of :mod:`autolabel.validation`
(jsonschema Draft 2020-12). A failure becomes a pydantic ``ValidationError`` carrying every jsonschema message with
its path, which instructor sends back to the model as the re-ask.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, ClassVar, cast

import instructor
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ConfigDict, model_validator

from autolabel.validation import Check, compile_schema, compile_schema_json, schema_digest

__all__ = ["SchemaAnswer", "response_format", "response_model", "schema_digest"]


class SchemaAnswer(BaseModel):
    """Base of generated response models: holds the raw answer dict, validated by jsonschema."""

    model_config = ConfigDict(extra="allow")
    json_schema_: ClassVar[dict[str, Any]] = {}
    validator_: ClassVar[Draft202012Validator]
    check_: ClassVar[Check | None] = None

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
    return cast(type[SchemaAnswer], instructor.openai_schema(_model_for(name, schema_json)))


def response_model(name: str, schema: dict[str, Any]) -> type[SchemaAnswer]:
    """The (cached) response model class for a JSON Schema, ready for instructor."""
    return _response_model_for(name, compile_schema(schema).json)


@lru_cache(maxsize=256)
def response_format(model: type[SchemaAnswer]) -> dict[str, Any]:
    """The ``response_format`` instructor's JSON_SCHEMA mode sends for ``model`` (OpenAI structured outputs), built
    once per model. Shared by every request for it: nothing may change it."""
    return {"type": "json_schema", "json_schema": {"name": model.__name__, "schema": model.model_json_schema()}}


