"""What the benchmarks share: generated dialogues, the simulated endpoint in its own process, tables, results."""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"

SEEKER = [
    "I have been feeling anxious about my exams and I can't sleep at night.",
    "My parents keep asking about my grades and I feel like I am letting them down.",
    "Work has been overwhelming lately, my manager adds tasks every day.",
    "I don't really know why I came here, a friend told me it might help.",
    "Sometimes I just feel empty, like nothing I do matters anymore.",
    "We argued again last night and I said things I regret.",
    "I guess it is fine, I am just tired all the time.",
    "When I try to talk to my partner about it, he changes the subject.",
    "I felt a bit better this week after I went for walks in the morning.",
    "I keep thinking that if I fail this exam my whole future is over.",
]
SUPPORTER = [
    "That sounds really hard. What goes through your mind when you lie awake?",
    "It seems the pressure from your parents weighs on you. How do they usually react?",
    "You are carrying a lot at work. What would help you most right now?",
    "Thank you for coming anyway. What would you like to be different after our talks?",
    "Feeling empty can be very draining. When did you first notice it?",
    "It sounds like you care about the relationship and regret how the argument went.",
    "Being tired all the time is important to take seriously. How have you been sleeping?",
    "So when you open up, the conversation moves away from what matters to you.",
    "That is good to hear. What made the walks possible this week?",
    "Let us look at that thought together: what evidence do you have for and against it?",
]


def dialogue_record(index: int, turns: int, rng: random.Random) -> dict[str, Any]:
    """One generated counseling session (alternating Supporter/Seeker); the id keeps every prompt distinct."""
    out = []
    for i in range(turns):
        pool, speaker = (SUPPORTER, "Supporter") if i % 2 == 0 else (SEEKER, "Seeker")
        text = " ".join(rng.choice(pool) for _ in range(1 + rng.randrange(2)))
        if i == 0:
            text = f"{text} (session {index})"
        out.append({"speaker": speaker, "text": text})
    return {"id": f"d{index:07d}", "turns": out}


def generate_records(total_turns: int, per_dialogue: int, seed: int = 0) -> Iterator[dict[str, Any]]:
    """Dialogues of ``per_dialogue`` turns (the last one shorter) adding up to ``total_turns``."""
    rng = random.Random(seed)
    index = 0
    left = total_turns
    while left > 0:
        n = min(per_dialogue, left)
        yield dialogue_record(index, n, rng)
        index += 1
        left -= n


def write_jsonl(path: Path, total_turns: int, per_dialogue: int, seed: int = 0) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for rec in generate_records(total_turns, per_dialogue, seed):
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return path


class Endpoint:
    """``benchmarks/_server.py`` in a child process (own CPU), on 127.0.0.1; a context manager."""

    def __init__(self, *, latency_ms: float = 0.0, latency_sigma: float = 0.0, rate_limit_per_min: float | None = None,
                 bucket_start: float | None = None, max_concurrency: int | None = None, record: Path | None = None,
                 stats: Path | None = None) -> None:
        args = [sys.executable, str(HERE / "_server.py"), "--latency-ms", str(latency_ms),
                "--latency-sigma", str(latency_sigma)]
        for flag, value in (("--rate-limit-per-min", rate_limit_per_min), ("--bucket-start", bucket_start),
                            ("--max-concurrency", max_concurrency), ("--record", record), ("--stats", stats)):
            if value is not None:
                args += [flag, str(value)]
        self.args = args
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""

    def __enter__(self) -> Endpoint:
        self.proc = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening "):
            self.proc.kill()
            raise RuntimeError(f"the simulated endpoint did not start: {line!r}")
        self.base_url = line.split()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process so far (from /proc)."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- memory -------------------------------------------------------------------------------------------------

def rss_mb(pid: int | str = "self") -> tuple[float, float]:
    """(current RSS, peak RSS) in MB from /proc/<pid>/status."""
    cur = peak = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            cur = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return cur, peak


class RssSampler:
    """Samples this process's RSS every ``interval`` seconds in a thread: (seconds since start, MB, progress)."""

    def __init__(self, interval: float = 1.0, progress: Any = None) -> None:
        self.interval, self.progress = interval, progress
        self.samples: list[tuple[float, float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            done = self.progress() if self.progress else 0
            self.samples.append((round(time.monotonic() - self.started, 2), round(rss_mb()[0], 1), done))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- output -------------------------------------------------------------------------------------------------

def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A markdown table."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}


def write_result(name: str, data: dict[str, Any], out: Path | None = None) -> Path:
    path = out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **data}, indent=2, ensure_ascii=False) + "\n")
    return path
