"""How fast the installed llama-cpp-python build runs the embedded default model: the arithmetic alone, no autolabel.

    python benchmarks/bench_llama_build.py --out benchmarks/results/llama_build_avx512.json

Run it once per build (each in the venv holding that build) and compare the JSON files: the build's instruction sets
(``llama_print_system_info``), prompt evaluation (tokens/s, 1,000 tokens in chunks of 256), one sequence generating
(tokens/s), and a step of 5 tokens — what 5 sequences generating together cost — with the logits of all 5 (as the
engine needs them) and of the last one only: the difference is the vocabulary projection. Best of ``--repeat`` runs,
``--threads`` threads (2: the development machine's cores).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from _common import write_result

TEXT = "The counselor listened carefully and asked about the client's week. " * 300


def _llm(path: str, threads: int, logits_all: bool) -> Any:
    import llama_cpp

    return llama_cpp.Llama(path, n_ctx=4096, n_batch=256, n_ubatch=256, n_threads=threads, n_threads_batch=threads,
                           logits_all=logits_all, verbose=False)


def _timed(llm: Any, tokens: list[int], prefix: int, n: int, chunk: int) -> float:
    """Seconds per token to evaluate ``n`` tokens after ``prefix`` tokens, ``chunk`` at a time."""
    llm.reset()
    llm.eval(tokens[:prefix])
    start = time.perf_counter()
    for k in range(prefix, prefix + n, chunk):
        llm.eval(tokens[k:k + chunk])
    return (time.perf_counter() - start) / n


def measure(path: str, threads: int, repeat: int) -> dict[str, float]:
    best: dict[str, float] = {}
    last_only, every = _llm(path, threads, False), _llm(path, threads, True)
    tokens = last_only.tokenize(TEXT.encode())
    for _ in range(repeat):
        runs = {"prompt_tokens_per_s": 1 / _timed(last_only, tokens, 0, 1000, 256),
                "generate_tokens_per_s": 1 / _timed(last_only, tokens, 300, 32, 1),
                "step_5_tokens_ms_logits_all": 5000 * _timed(every, tokens, 300, 160, 5),
                "step_5_tokens_ms_logits_last": 5000 * _timed(last_only, tokens, 300, 160, 5)}
        for k, v in runs.items():
            best[k] = max(best.get(k, v), v) if k.endswith("_per_s") else min(best.get(k, v), v)
    return {k: round(v, 1) for k, v in best.items()}


def main() -> None:
    import llama_cpp

    from autolabel.llm.local import model_path
    from autolabel.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-0.5b")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/llama_build.json")
    args = parser.parse_args()
    path = str(model_path(args.model, Settings.model_validate({})))
    result = {"model": args.model, "threads": args.threads, "repeat": args.repeat,
              "llama_cpp_python": llama_cpp.__version__,
              "system_info": (llama_cpp.llama_print_system_info() or b"").decode().strip(),
              **measure(path, args.threads, args.repeat)}
    print(json.dumps(result, indent=1))
    print("written:", write_result("llama_build", result, args.out))


if __name__ == "__main__":
    main()
