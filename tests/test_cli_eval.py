"""``autolabel eval`` by subprocess: it says how much of the gold it matched, shows κ in its table, and a small
evaluation does not spend its time on bootstrap resamples or plot libraries it does not need."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autolabel import Annotator
from autolabel.quality.evaluate import bootstrap_resamples
from tests.fake_openai import FakeOpenAIServer
from tests.test_evaluate import LOGPROB, N_TURNS, replies, write_input

RUN_DIALOGUES = 4  # a 24-turn run, scored against gold for all 48 dialogues (288 turns)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autolabel", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(database, gold file): a run over the first dialogues of the gold file only."""
    folder = tmp_path_factory.mktemp("eval")
    gold = write_input(folder / "gold.jsonl")
    run_input = folder / "run.jsonl"
    run_input.write_text("".join(gold.read_text(encoding="utf-8").splitlines(keepends=True)[:RUN_DIALOGUES]),
                         encoding="utf-8")
    db = folder / "runs.db"
    with FakeOpenAIServer(replies=replies, logprob=lambda token: LOGPROB.get(token, -0.001)) as srv:
        Annotator("psy-insight", model="openai:test", base_url=srv.base_url, db=db).run(run_input)
    return db, gold


def test_eval_prints_matched_and_unmatched_gold_and_kappa(small_run: tuple[Path, Path], tmp_path: Path) -> None:
    db, gold = small_run
    r = cli("eval", "--db", str(db), "--gold", str(gold), "--out", str(tmp_path / "report"))
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text(encoding="utf-8"))
    g = report["gold"]
    matched = RUN_DIALOGUES * (N_TURNS + 2)  # one label per turn, two session fields per dialogue
    assert g["matched"] == matched and g["unmatched"] == g["labels"] - matched > 0
    assert f"gold: {g['labels']} labels, {matched} matched; {g['unmatched']} matched no annotated turn" in r.stdout
    header = next(line for line in r.stdout.splitlines() if "field" in line and "accuracy" in line)
    assert "κ" in header
    topic = next(line for line in r.stdout.splitlines() if "│ topic" in line)
    kappa = report["fields"]["topic"]["quality"]["cohen_kappa"]
    assert kappa is not None and f"{kappa:.3f}" in topic, (kappa, topic)
    emotion = next(line for line in r.stdout.splitlines() if "│ emotion" in line)
    per_option = [o["cohen_kappa"] for o in report["fields"]["emotion"]["quality"]["per_option"].values()
                  if o.get("cohen_kappa") is not None]
    assert f"{sum(per_option) / len(per_option):.3f}" in emotion  # multi-label: the mean of the options' kappas


@pytest.mark.parametrize(("dialogues", "asked", "expected"), [
    (4, None, 200), (39, None, 200), (40, None, 1000), (200, None, 1000), (4, 50, 50), (4, 5000, 5000),
])
def test_a_tiny_evaluation_uses_fewer_bootstrap_resamples(dialogues: int, asked: int | None, expected: int) -> None:
    """Resampling 4 dialogues has at most 35 distinct outcomes: 1000 resamples repeat them for nothing."""
    assert bootstrap_resamples(dialogues, asked) == expected
    assert math.comb(2 * 4 - 1, 4) == 35


def test_eval_on_a_small_run_does_not_import_what_it_does_not_draw(small_run: tuple[Path, Path],
                                                                   tmp_path: Path) -> None:
    db, gold = small_run
    probe = ("import sys, runpy; sys.argv = ['autolabel', 'eval', '--db', sys.argv[1], '--gold', sys.argv[2], "
             "'--out', sys.argv[3]]\n"
             "try:\n    runpy.run_module('autolabel', run_name='__main__')\n"
             "except SystemExit as e:\n    assert not e.code, e.code\n"
             "print(sorted(m for m in ('matplotlib.pyplot', 'scipy.stats', 'sklearn', 'langgraph', 'openai') "
             "if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", probe, str(db), str(gold), str(tmp_path / "r")], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout
