"""Each benchmark in ``benchmarks/`` runs end to end at a tiny size (seconds) and writes its JSON.

No timing is asserted (CI machines vary); what is asserted holds at any speed: the runs finish, nothing fails, the
two sides of a comparison did the same work.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def bench(name: str, out: Path, *args: str) -> dict[str, Any]:
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / f"bench_{name}.py"), *args, "--out", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "|---|" in r.stdout  # a markdown table was printed
    return json.loads(out.read_text())


def test_overhead_sends_the_same_requests_both_ways(tmp_path: Path) -> None:
    data = bench("overhead", tmp_path / "overhead.json", "--turns", "12", "--turns-c1", "4", "--per-dialogue", "4",
                 "--concurrency", "1,4", "--latency-ms", "5")
    assert [r["concurrency"] for r in data["results"]] == [1, 4]
    for r in data["results"]:
        # 2 calls per turn (label, critique) and one session call per dialogue, the same count on both sides
        calls = {r[side]["calls"] for side in ("autolabel", "baseline", "raw_post")}
        assert calls == {2 * r["turns"] + r["turns"] // 4}
        assert r["throughput_ratio"] > 0 and r["autolabel_cpu_ms_per_call"] > 0


def test_client_arms_make_the_same_calls(tmp_path: Path) -> None:
    data = bench("client", tmp_path / "client.json", "--calls", "12", "--concurrency", "1,2", "--repeat", "1")
    assert [r["concurrency"] for r in data["results"]] == [1, 2]
    for r in data["results"]:  # the raw client and each LLMClient arm made every call
        assert {r[arm]["calls"] for arm in ("raw", "cache off", "cache miss", "cache hit")} == {12}
        assert r["cache hit"]["cpu_ms_per_call"] > 0


def test_overhead_of_the_windowed_mode(tmp_path: Path) -> None:
    data = bench("overhead", tmp_path / "overhead.json", "--turns", "16", "--turns-c1", "8", "--per-dialogue", "8",
                 "--concurrency", "2", "--latency-ms", "5", "--turns-per-call", "4")
    (r,) = data["results"]
    # a label and a critique call per window of 4 turns, and one session call per dialogue, the same on both sides
    assert r["autolabel"]["calls"] == r["baseline"]["calls"] == 2 * (16 // 4) + 16 // 8


def test_tokens_windowed_prompts_stay_flat_while_the_full_history_grows(tmp_path: Path) -> None:
    data = bench("tokens", tmp_path / "tokens.json", "--lengths", "6,24", "--dialogues", "1")
    short, long = data["results"]
    assert long["naive"]["prompt_per_turn"] > short["naive"]["prompt_per_turn"]
    assert long["prompt_ratio"] < short["prompt_ratio"] <= 1.0
    assert 0 < long["autolabel"]["stable_prefix_share"] < 1
    # several turns per call: fewer calls and fewer prompt tokens per turn than one call per turn
    for r in (short, long):
        assert r["windowed_4"]["calls_per_turn"] < r["autolabel"]["calls_per_turn"]
        assert r["windowed_4"]["prompt_per_turn"] < r["autolabel"]["prompt_per_turn"]


def test_memory_streams_a_run_and_an_export(tmp_path: Path) -> None:
    data = bench("memory", tmp_path / "memory.json", "--turns", "120", "--per-dialogue", "10", "--concurrency", "8")
    assert sum(data["turn_states"].values()) == 120 and data["turn_states"].get("failed", 0) == 0
    assert data["export"]["records"] == 120 + 12  # one record per turn and per dialogue (session)
    assert data["run"]["peak_rss_mb"] > 0 and data["store_mb"] > 0 and data["samples"]


def test_rate_limited_run_completes_without_failed_turns(tmp_path: Path) -> None:
    data = bench("ratelimit", tmp_path / "ratelimit.json", "--rate", "600", "--seconds", "4", "--per-dialogue", "4",
                 "--concurrency", "8", "--latency-ms", "20")
    assert data["error"] is None and data["failed_turns"] == 0 and data["turns"] == data["input_turns"]
    assert data["server"]["rate_limited"] > 0  # the limit was hit, and the run still finished


def test_scale_workers_and_review_queue_on_postgresql(tmp_path: Path) -> None:
    data = bench("scale", tmp_path / "scale.json", "--workers", "1,2", "--dialogues", "4", "--latency", "0.05",
                 "--items", "2000", "--reviewers", "3", "--per-reviewer", "20", "--think-ms", "10")
    runs = data["workers"]["runs"]
    assert [r["workers"] for r in runs] == [1, 2] and len({r["turns"] for r in runs}) == 1
    assert {m: r["reviewed"] for m, r in data["review"].items()} == {"closed": 60, "paced": 60}
