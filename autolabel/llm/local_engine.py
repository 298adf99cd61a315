"""One llama.cpp context serving every local call of a process: requests become sequences decoded together.

``Engine`` owns the model, one context and a worker thread. A request (prompt tokens, grammar, limits) takes a
sequence slot; each step of the worker builds one ``llama_batch`` holding, for every busy slot, either its next
chunk of prompt tokens or its last sampled token, and decodes it with one ``llama_decode``: concurrent calls share
the weights' memory traffic (batched decoding) instead of waiting for each other.

Prompt prefixes are reused across calls through llama.cpp's KV cache: a slot keeps its tokens after its request ends,
and a new request starts from the longest prefix held by any slot (``llama_memory_seq_cp`` shares those cells, no
copy), so the label prompt of one role, the critique prompt and the session prompt each keep their system prompt
cached even when the calls alternate.

Sampling reads the step's logits once: the 64 most likely tokens go through the grammar (``llama_sampler_apply``
on 64 candidates, not the ~150k vocabulary); greedy decoding needs no more when one of them is allowed, which
nearly always holds. Only when none is (or when sampling at a temperature) is the grammar applied to the whole
vocabulary. Logprobs are renormalised over the allowed candidates, as hosted APIs report them under structured
output.

Greedy decoding of a small model can fall into a loop (a sentence written again and again until ``max_tokens``, so
the JSON never closes and the answer is invalid). llama.cpp's DRY sampler ("don't repeat yourself") lowers the
logit of a token that would extend a repeat of what this answer already wrote, more the longer the repeat; JSON's
quotes, colons and newlines break sequences, so keys and label codes (always right after a quote) are never
penalised, only repeated free text. It changes which token is chosen, not the logprobs reported.

A request can be abandoned (``Engine.abandon``, or ``cancel`` for all): the worker drops it at the next step — at
most one prompt chunk (``N_BATCH`` tokens) or one token later.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import threading
from collections.abc import Iterable
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autolabel.errors import LLMError

log = logging.getLogger(__name__)

TOP_N = 64  # candidates per step checked against the grammar, and the pool of reported alternatives
RESERVE = 256  # answer tokens counted for a running request when deciding whether another one fits the context
SHARE_MIN = 32  # a request waits for a prefix being decoded by another only when it shares this many more tokens
N_BATCH = 256  # tokens per llama_decode (prompt chunks): also the longest wait before an abandoned call stops
DRY = (0.8, 1.75, 2, 1024)  # llama.cpp DRY: multiplier, base, allowed repeat length, tokens looked back
DRY_BREAKERS = ("\n", ":", "\"", "*")  # llama.cpp's default sequence breakers
_TOKEN_DATA = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)


@dataclass(eq=False)
class Request:
    """One completion: prompt tokens in, sampled tokens (and per-step logprobs) out."""

    prompt: list[int]
    max_tokens: int
    grammar: tuple[str, str] | None = None  # (GBNF text, root rule)
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    logprobs: bool = False
    stop: tuple[str, ...] = ()
    tokens: list[int] = field(default_factory=list)
    steps: list[tuple[int, float, list[tuple[int, float]]]] = field(default_factory=list)  # chosen, lp, alternatives
    finish_reason: str = "stop"
    future: Future[Request] = field(default_factory=Future)
    abandoned: bool = False


@dataclass
class _Slot:
    seq: int
    tokens: list[int] = field(default_factory=list)  # what this sequence holds in the KV cache, in order
    request: Request | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens not yet decoded
    grammar: Any = None  # llama_sampler of the request's grammar
    dry: Any = None  # llama_sampler DRY of the request's answer so far
    rng: np.random.Generator | None = None
    text: bytes = b""
    used: int = 0  # when it last served a request (eviction order)


class Engine:
    """A model, one context of ``n_ctx`` cells shared by ``n_slots`` sequences, and the thread that decodes."""

    def __init__(self, model_path: str, threads: int, n_ctx: int, n_slots: int,
                 dry: tuple[float, float, int, int] | None = DRY) -> None:
        import llama_cpp
        from llama_cpp import _internals

        self._c = llama_cpp
        _route_llama_log(llama_cpp)  # llama.cpp's own log goes to Python logging (replacing llama-cpp-python's)
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        # ggml's AMX kernels (built in by -march=native on CPUs that report AMX) die with SIGILL in VMs that do
        # not hand the tile state to the guest; repacked weights for AVX2/AVX-512 are used instead.
        if b"AMX_INT8 = 1" in (llama_cpp.llama_print_system_info() or b""):
            params.use_extra_bufts = False
        self.model = _internals.LlamaModel(path_model=model_path, params=params, verbose=False)
        self.dry = dry  # None: no repeat penalty (the model's own greedy choice)
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = n_ctx, N_BATCH, N_BATCH
        cparams.n_seq_max, cparams.kv_unified = n_slots, True  # one pool of cells: shared prefixes stored once
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.no_perf = False
        self.ctx = _internals.LlamaContext(model=self.model, params=cparams, verbose=False)
        self.vocab = self.model.vocab
        self.n_vocab = self.model.n_vocab()
        self.n_ctx = self.ctx.n_ctx()
        self.eos = self.model.token_eos()
        self._pieces: dict[int, bytes] = {}
        self._batch = llama_cpp.llama_batch_init(N_BATCH, 0, 1)
        self._slots = [_Slot(seq=i) for i in range(n_slots)]
        self._queue: list[Request] = []
        self._cv = threading.Condition()
        self._clock = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._closed = False
        self.prompt_tokens_reused = 0  # counters (benchmarks, tests): prompt tokens taken from the KV cache,
        self.prompt_tokens_decoded = 0  # prompt tokens decoded,
        self.steps = 0  # llama_decode calls
        self.requeued = 0  # requests put back to wait for room in the context

    # -- the caller's side ------------------------------------------------------------------------------------

    def submit(self, request: Request) -> Future[Request]:
        if len(request.prompt) + request.max_tokens > self.n_ctx:
            raise LLMError(f"prompt of {len(request.prompt)} tokens plus max_tokens does not fit the "
                           f"{self.n_ctx}-token context")
        with self._cv:
            if self._closed:
                raise LLMError("the local model was closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="autolabel-llama", daemon=True)
                self._thread.start()
            self._queue.append(request)
            self._cv.notify()
        return request.future

    def abandon(self, request: Request) -> None:
        """Stop working on ``request`` (its future is cancelled) at the worker's next step."""
        with self._cv:
            request.abandoned = True
            if request in self._queue:
                self._queue.remove(request)
                request.future.cancel()
            self._cv.notify()

    def busy(self) -> int:
        """Requests queued or in flight."""
        with self._cv:
            return len(self._queue) + sum(s.request is not None for s in self._slots)

    def cancel(self) -> None:
        """Abandon every request queued or in flight."""
        with self._cv:
            for r in [*self._queue, *(s.request for s in self._slots if s.request is not None)]:
                r.abandoned = True
            self._cv.notify()

    def close(self) -> None:
        self.cancel()
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._c.llama_batch_free(self._batch)
        self.ctx.close()
        self.model.close()

    def piece(self, token: int) -> bytes:
        """The bytes token ``token`` stands for (special tokens: none)."""
        if token not in self._pieces:
            buf = ctypes.create_string_buffer(64)
            n = self._c.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self._c.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            self._pieces[token] = buf.raw[:n]
        return self._pieces[token]

    # -- the worker -------------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._closed and not self._queue and not any(s.request for s in self._slots):
                    self._cv.wait()
                if self._closed:
                    for r in self._queue:
                        r.future.cancel()
                    self._queue.clear()
                self._drop_abandoned()
                if self._closed and not any(s.request for s in self._slots):
                    return
                self._admit()
            try:
                self._step()
            except LLMError as e:  # a request that cannot go on fails; the others continue
                self._fail_newest(e)
            except BaseException as e:  # never leave a caller waiting on a dead worker
                for s in self._slots:
                    if s.request is not None:
                        self._finish(s, error=e)
                raise

    def _drop_abandoned(self) -> None:
        for s in self._slots:
            if s.request is not None and s.request.abandoned:
                self._finish(s, cancelled=True)

    def _admit(self) -> None:
        """Give waiting requests a free slot each, starting from the longest cached prefix of any slot, while the
        context has room for them: cells for what the busy sequences hold and will still write (up to ``RESERVE``
        answer tokens each), plus the new prompt's uncached part and its answer. A request that does not fit waits
        for a running one to finish (one alone always starts: if it cannot fit, it fails by itself).

        A request whose prompt shares more with a prompt still being decoded (the same system prompt, sent by
        several dialogues at once) than with any cache waits until that prefix is in the cache, then shares it:
        the prefix is decoded once, not once per request side by side. Other requests go ahead meanwhile."""
        waiting = 0
        while waiting < len(self._queue):
            free = [s for s in self._slots if s.request is None]
            if not free:
                return
            req = self._queue[waiting]
            limit = len(req.prompt) - 1  # at least one token is decoded: its logits start the answer
            source, n = max(((s, _common(s.tokens, req.prompt, limit)) for s in self._slots),
                            key=lambda p: (p[1], p[0].request is None, -p[0].used))
            busy = [s for s in self._slots if s.request is not None]
            coming = max((_common(itertools.chain(s.tokens, s.pending), req.prompt, limit) for s in busy if s.pending),
                         default=0)
            if coming - n >= SHARE_MIN:
                waiting += 1
                continue
            need = self._load(busy) + len(req.prompt) - n + min(req.max_tokens, RESERVE)
            if busy and need > self.n_ctx:
                return
            self._make_room(need, keep=source)
            self._queue.pop(waiting)
            if not req.future.running() and not req.future.set_running_or_notify_cancel():
                continue
            try:  # before any cell is touched: a grammar llama.cpp refuses fails this request, not the worker
                grammar = self._grammar(req) if req.grammar else None
            except LLMError as e:
                _set(req.future, exc=e)
                continue
            # take over the source's own slot only when most of what it holds is reused; otherwise a free slot
            # (empty, or the least recently used) gets the prefix shared into it and the source keeps its cache
            keep = source.request is None and 2 * n >= len(source.tokens)
            slot = source if keep else min(free, key=lambda s: (bool(s.tokens), s.used))
            mem = self.ctx.memory
            if slot is source:
                self._c.llama_memory_seq_rm(mem, slot.seq, n, -1)
                del slot.tokens[n:]
            else:  # share the source's cells for the prefix: no copy, no recomputation
                self._c.llama_memory_seq_rm(mem, slot.seq, -1, -1)
                self._c.llama_memory_seq_cp(mem, source.seq, slot.seq, 0, n)
                slot.tokens = req.prompt[:n]
            self.prompt_tokens_reused += n
            slot.request, slot.pending, slot.text, slot.used = req, req.prompt[n:], b"", next(self._clock)
            slot.grammar = grammar
            slot.dry = self._dry() if self.dry else None
            slot.rng = np.random.default_rng(req.seed) if req.temperature > 0 else None

    def _grammar(self, req: Request) -> Any:
        assert req.grammar is not None
        text, root = req.grammar
        smpl = self._c.llama_sampler_init_grammar(self.vocab, text.encode("utf-8"), root.encode("utf-8"))
        if not smpl:
            raise LLMError("llama.cpp could not parse the grammar made from the response schema")
        return smpl

    def _dry(self) -> Any:
        breakers = (ctypes.c_char_p * len(DRY_BREAKERS))(*(b.encode("utf-8") for b in DRY_BREAKERS))
        assert self.dry is not None
        multiplier, base, allowed, last_n = self.dry
        smpl = self._c.llama_sampler_init_dry(self.vocab, multiplier, base, allowed, last_n, breakers,
                                              len(DRY_BREAKERS))
        if not smpl:
            raise LLMError("llama.cpp could not create its DRY sampler")
        return smpl

    def _free_samplers(self, s: _Slot) -> None:
        for smpl in (s.grammar, s.dry):
            if smpl is not None:
                self._c.llama_sampler_free(smpl)
        s.grammar = s.dry = None

    def _step(self) -> None:
        """One llama_decode: each generating slot's last token, then prompt chunks while the batch has room."""
        b = self._batch
        b.n_tokens = 0
        outputs: list[tuple[int, _Slot]] = []
        busy = [s for s in self._slots if s.request is not None]
        before = {s.seq: (len(s.tokens), list(s.pending)) for s in busy}
        for s in busy:
            if not s.pending:
                outputs.append((self._add(s, s.request.tokens[-1], True), s))  # type: ignore[union-attr]
        decoded = 0
        for s in busy:
            if s.pending and b.n_tokens < N_BATCH:
                chunk = s.pending[:N_BATCH - b.n_tokens]
                last = len(chunk) == len(s.pending)
                idx = [self._add(s, tok, last and j == len(chunk) - 1) for j, tok in enumerate(chunk)][-1]
                del s.pending[:len(chunk)]
                decoded += len(chunk)
                if last:
                    outputs.append((idx, s))
        if b.n_tokens == 0:
            return
        rc = self._c.llama_decode(self.ctx.ctx, b)
        self.steps += 1
        if rc == 1 and self._evict_idle():
            rc = self._c.llama_decode(self.ctx.ctx, b)
        if rc != 0:  # nothing of this batch entered the cache: undo its bookkeeping
            for s in busy:
                del s.tokens[before[s.seq][0]:]
                s.pending = before[s.seq][1]
            if rc == 1 and len(busy) > 1:  # no room for all of them: the newest waits until the others are done
                with self._cv:
                    self._requeue(max(busy, key=lambda s: s.used))
                return
            raise LLMError(f"the prompts do not fit the {self.n_ctx}-token context (llama_decode returned {rc})")
        self.prompt_tokens_decoded += decoded
        for idx, s in outputs:
            self._sample(s, idx)

    def _add(self, s: _Slot, token: int, logits: bool) -> int:
        b, i = self._batch, self._batch.n_tokens
        b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, len(s.tokens), 1, logits
        b.seq_id[i][0] = s.seq
        b.n_tokens = i + 1
        s.tokens.append(token)
        return i

    @staticmethod
    def _load(busy: list[_Slot]) -> int:
        """Cells the busy sequences hold or will write (a shared prefix counted for each: an upper bound)."""
        cells = 0
        for s in busy:
            cells += len(s.tokens) + len(s.pending)
            if s.request is not None:
                cells += max(0, min(s.request.max_tokens, RESERVE) - len(s.request.tokens))
        return cells

    def _requeue(self, s: _Slot) -> None:
        """Put a running request back at the head of the queue, its cells freed and its answer so far dropped: it
        starts again (the same answer at temperature 0) once the others have made room."""
        req = s.request
        assert req is not None
        self._free_samplers(s)
        self._c.llama_memory_seq_rm(self.ctx.memory, s.seq, -1, -1)
        s.tokens, s.pending, s.text, s.request, s.rng = [], [], b"", None, None
        req.tokens, req.steps, req.finish_reason = [], [], "stop"
        self._queue.insert(0, req)
        self.requeued += 1

    def _make_room(self, need: int, keep: _Slot) -> None:
        """Drop idle slots' cached prompts, least recently used first (never ``keep``, the prefix about to be
        shared), until what the busy sequences and the new request need fits beside what stays cached: llama.cpp
        is not asked to decode into a full context (it logs an error line for each refusal)."""
        idle = sorted((s for s in self._slots if s.request is None and s.tokens and s is not keep),
                      key=lambda s: s.used)
        held = sum(len(s.tokens) for s in idle) + (len(keep.tokens) if keep.request is None else 0)
        for s in idle:
            if need + held <= self.n_ctx:
                return
            self._c.llama_memory_seq_rm(self.ctx.memory, s.seq, -1, -1)
            held -= len(s.tokens)
            s.tokens = []

    def _evict_idle(self) -> bool:
        idle = [s for s in self._slots if s.request is None and s.tokens]
        for s in idle:
            self._c.llama_memory_seq_rm(self.ctx.memory, s.seq, -1, -1)
            s.tokens = []
        return bool(idle)

    def _fail_newest(self, error: LLMError) -> None:
        busy = [s for s in self._slots if s.request is not None]
        if busy:
            self._finish(max(busy, key=lambda s: s.used), error=error)

    def _sample(self, s: _Slot, idx: int) -> None:
        req = s.request
        assert req is not None
        row = np.ctypeslib.as_array(self._c.llama_get_logits_ith(self.ctx.ctx, idx), shape=(self.n_vocab,))
        top = np.argpartition(row, -TOP_N)[-TOP_N:]
        cand = top if s.grammar is None else top[self._allowed(s.grammar, top, row[top])]
        if s.grammar is not None and (len(cand) == 0 or req.temperature > 0):
            cand = self._allowed_all(s.grammar, row)  # rare: none of the top candidates fits the grammar
        if len(cand) == 0:
            raise LLMError("the grammar allows no token: the model cannot finish a valid answer")
        logits = row[cand].astype(np.float64) if s.dry is None else self._penalised(s.dry, cand, row[cand])
        if req.temperature > 0:
            token = self._draw(s, cand, logits, req)
        else:
            token = int(cand[int(np.argmax(logits))])
        if self._c.llama_vocab_is_eog(self.vocab, token):
            self._finish(s)
            return
        if req.logprobs:
            pool = cand if len(cand) <= TOP_N else cand[np.argpartition(logits, -TOP_N)[-TOP_N:]]
            lp = row[pool].astype(np.float64)
            norm = _logsumexp(lp) if s.grammar is not None else _logsumexp(row.astype(np.float64))
            chosen = float(row[token]) - norm
            order = np.argsort(-lp, kind="stable")
            req.steps.append((token, chosen, [(int(pool[i]), float(lp[i] - norm)) for i in order]))
        if s.grammar is not None:
            self._c.llama_sampler_accept(s.grammar, token)
        if s.dry is not None:
            self._c.llama_sampler_accept(s.dry, token)
        req.tokens.append(token)
        s.text += self.piece(token)
        stopped = next((x for x in req.stop if x.encode("utf-8") in s.text), None)
        if stopped is not None:
            req.finish_reason = "stop"
            self._finish(s)
        elif len(req.tokens) >= req.max_tokens or len(s.tokens) + 1 >= self.n_ctx:
            req.finish_reason = "length"
            self._finish(s)

    def _allowed(self, grammar: Any, ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """Which of ``ids`` the grammar allows now (a boolean mask)."""
        return np.isfinite(self._apply(grammar, ids, logits))

    def _penalised(self, dry: Any, ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """The logits of ``ids`` after the DRY sampler's penalty for extending a repeat of this answer."""
        return self._apply(dry, ids, logits).astype(np.float64)

    def _apply(self, smpl: Any, ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """``llama_sampler_apply`` of ``smpl`` to the candidates ``ids``: their logits afterwards, in order."""
        data = np.empty(len(ids), dtype=_TOKEN_DATA)
        data["id"], data["logit"], data["p"] = ids, logits, 0.0
        c = self._c
        arr = c.llama_token_data_array(data=data.ctypes.data_as(c.llama_token_data_p), size=len(ids), selected=-1,
                                       sorted=False)
        c.llama_sampler_apply(smpl, ctypes.byref(arr))
        if arr.size != len(ids) or arr.sorted:  # samplers used here change logits in place, never the order
            raise LLMError("a llama.cpp sampler reordered the candidates")
        return data["logit"].copy()

    def _allowed_all(self, grammar: Any, row: np.ndarray) -> np.ndarray:
        ids = np.arange(self.n_vocab, dtype=np.intc)
        return ids[self._allowed(grammar, ids, row)]

    @staticmethod
    def _draw(s: _Slot, cand: np.ndarray, logits: np.ndarray, req: Request) -> int:
        assert s.rng is not None
        z = logits / req.temperature
        p = np.exp(z - z.max())
        p /= p.sum()
        if req.top_p < 1.0:
            order = np.argsort(-p)
            keep = order[: int(np.searchsorted(np.cumsum(p[order]), req.top_p)) + 1]
            mask = np.zeros_like(p)
            mask[keep] = p[keep]
            p = mask / mask.sum()
        return int(cand[int(s.rng.choice(len(cand), p=p))])

    def _finish(self, s: _Slot, *, cancelled: bool = False, error: BaseException | None = None) -> None:
        req = s.request
        self._free_samplers(s)
        s.request, s.rng, s.used = None, None, next(self._clock)
        s.pending = []  # an unfinished prompt: the slot keeps what was decoded
        if req is None:
            return
        if cancelled:
            if not req.future.cancel():  # already running: cancelled futures cannot be set, so it says so itself
                _set(req.future, exc=CancelledError())
        elif error is not None:
            _set(req.future, exc=error)
        else:
            _set(req.future, result=req)


_LOG_CALLBACK: Any = None  # kept alive while llama.cpp holds it
_HANDLED = ("failed to find a memory slot",)  # a full context: the engine makes room or redoes a request (_step)


def _route_llama_log(llama_cpp: Any) -> None:
    """llama.cpp's log lines into this module's logger: its errors as errors, except those the engine handles
    (``_HANDLED``), which are debug lines like its load and context details and warnings. llama-cpp-python prints
    errors to stderr itself: in the middle of a progress bar, and for a full context that is only scheduling."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is not None:
        return

    last = logging.DEBUG  # the level of the line a continuation (ggml level 5) belongs to

    @llama_cpp.llama_log_callback
    def forward(level: int, text: bytes, user_data: Any) -> None:
        nonlocal last
        line = text.decode("utf-8", "replace").rstrip()
        if level != 5:
            error = level in (0, 3) and not any(h in line for h in _HANDLED)
            last = logging.ERROR if error else logging.DEBUG
        if line:
            log.log(last, "llama.cpp: %s", line)

    _LOG_CALLBACK = forward
    llama_cpp.llama_log_set(forward, ctypes.c_void_p(0))


def _set(future: Future[Request], *, result: Request | None = None, exc: BaseException | None = None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)  # type: ignore[arg-type]


def _common(a: Iterable[int], b: list[int], limit: int) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y or n >= limit:
            break
        n += 1
    return n


def _logsumexp(x: np.ndarray) -> float:
    m = float(np.max(x))
    return m + float(np.log(np.sum(np.exp(x - m))))
