"""The benchmarks' simulated endpoint: ``tests.fake_openai`` in its own process, so its CPU is not the client's.

Prints ``listening <base_url>`` on stdout once it accepts connections, then serves until stdin closes (the
benchmark that spawned it exits or closes the pipe). Differences from ``python -m tests.fake_openai``:

- binds port 0 (a free port) and says which;
- does not keep request bodies in memory (a million-turn run would hold gigabytes); ``--record PATH`` appends each
  chat request body to a JSONL file instead (the overhead benchmark replays them with the raw client);
- ``--stats PATH`` writes the server's counters (requests, ok, rate_limited) as JSON when it stops;
- ``--bucket-start N``: requests in the rate limiter's bucket at start (the fake server starts it full, a whole
  minute's worth, which lets the first minute burst to twice the rate).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fake_openai import FakeOpenAIServer  # noqa: E402


class _Sink:
    """Stands in for ``FakeOpenAIServer.requests``: appends go to a file, or nowhere."""

    def __init__(self, out: TextIO | None) -> None:
        self.out = out
        self.lock = threading.Lock()

    def append(self, body: Any) -> None:
        if self.out is not None:
            line = json.dumps(body, ensure_ascii=False) + "\n"
            with self.lock:
                self.out.write(line)

    def __len__(self) -> int:
        return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--latency-sigma", type=float, default=0.0, help="lognormal sigma around the median (0: fixed)")
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument("--rate-limit-per-min", type=float, default=None)
    p.add_argument("--bucket-start", type=float, default=None)
    p.add_argument("--record", type=Path, default=None)
    p.add_argument("--stats", type=Path, default=None)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    median, sigma = a.latency_ms / 1000, a.latency_sigma
    latency: Any = median
    if sigma > 0 and median > 0:
        def latency(rng: random.Random) -> float:
            return rng.lognormvariate(math.log(median), sigma)
    record = a.record.open("a", encoding="utf-8", buffering=1) if a.record else None  # line-buffered
    server = FakeOpenAIServer(seed=a.seed, latency=latency, max_concurrency=a.max_concurrency,
                              rate_limit_per_min=a.rate_limit_per_min)
    server.requests = _Sink(record)  # type: ignore[assignment]
    if a.bucket_start is not None:
        server._bucket = a.bucket_start
    with server:
        print(f"listening {server.base_url}", flush=True)
        sys.stdin.read()  # until the parent closes the pipe
    if record is not None:
        record.close()
    if a.stats is not None:
        a.stats.write_text(json.dumps(dict(server.stats)))


if __name__ == "__main__":
    main()
