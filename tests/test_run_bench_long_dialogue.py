"""``benchmarks/bench_long_dialogue.py`` runs end to end at tiny sizes and writes its JSON; no timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_long_dialogue_benchmark_runs_and_reports_each_size(tmp_path: Path) -> None:
    out = tmp_path / "long.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_long_dialogue.py"), "--sizes", "40,120",
                        "--concurrency", "8", "--workdir", str(tmp_path / "work"), "--out", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "|---|" in r.stdout  # the markdown table
    data = json.loads(out.read_text())
    assert [x["turns"] for x in data["results"]] == [40, 120]
    for x in data["results"]:
        assert sum(x["turn_states"].values()) == x["turns"] and x["calls"] >= x["turns"]
        assert x["peak_rss_mb"] > 0 and x["store_kb_per_turn"] > 0
    assert data["results"][0]["store_per_turn_ratio"] == 1.0 and "goals" in data
