"""``autolabel demo`` ends by showing what it did (issue 18 item 4): a short table of labeled turns (turn, label,
confidence, accepted or flagged with the reason) and the command that opens them in the review UI.

The demo dialogues go to the scripted loopback server (``--model openai:test``, its URL from the environment as a
user would set it), so the test checks the command's output, not the embedded model's labels.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from autolabel.cli import app
from autolabel.demo import review_command, showcase
from tests.fake_openai import FakeOpenAIServer

runner = CliRunner()


@pytest.fixture
def demo_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: FakeOpenAIServer) -> tuple[Path, str]:
    monkeypatch.setenv("AUTOLABEL_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("AUTOLABEL_FEW_SHOT", "0")
    db = tmp_path / "demo.db"
    r = runner.invoke(app, ["demo", "--db", str(db), "--model", "openai:test"])
    assert r.exit_code == 0, r.output
    return db, r.output


def test_the_demo_ends_with_labeled_turns_and_the_review_command(demo_run: tuple[Path, str]) -> None:
    db, output = demo_run
    tail = output[output.index("a few labeled turns"):]
    assert "confidence" in tail and "label" in tail
    assert "risk_content" in tail  # the session with a risk sentence: flagged for a human, and said why
    assert "accepted" in tail or "flagged" in tail
    assert review_command(str(db)) in " ".join(tail.split())


def test_showcase_mixes_accepted_and_flagged_turns_in_dialogue_order(demo_run: tuple[Path, str]) -> None:
    db, _ = demo_run
    from autolabel.persistence.store import Store

    store = Store.open(str(db))
    run_id = store.run()["id"]
    store.close()
    shown = showcase(str(db), run_id, limit=6)
    assert 1 <= len(shown) <= 6
    assert [(t.dialogue_id, t.turn_index) for t in shown] == sorted((t.dialogue_id, t.turn_index) for t in shown)
    flagged = [t for t in shown if t.status == "flagged"]
    assert flagged and all(t.reasons for t in flagged)  # a flagged turn says why
    assert any("risk_content" in t.reasons for t in shown)
    for t in shown:
        assert t.labels and t.confidence is not None and 0.0 <= t.confidence <= 1.0
        assert len(t.text) <= 60


def test_the_demo_labels_windows_of_turns_on_an_embedded_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the embedded default a demo dialogue is labeled (and critiqued) a window at a time; an endpoint model, or
    AUTOLABEL_TURNS_PER_CALL, keeps what the user asked for."""
    from autolabel.cli.demo import LOCAL_TURNS_PER_CALL, demo_settings

    monkeypatch.delenv("AUTOLABEL_TURNS_PER_CALL", raising=False)
    monkeypatch.delenv("AUTOLABEL_MODEL", raising=False)
    assert demo_settings(None, "x.db").turns_per_call == LOCAL_TURNS_PER_CALL > 1
    assert demo_settings("local:smollm2-135m", "x.db").turns_per_call == LOCAL_TURNS_PER_CALL
    assert demo_settings("openai:test", "x.db").turns_per_call == 1
    monkeypatch.setenv("AUTOLABEL_TURNS_PER_CALL", "2")
    assert demo_settings(None, "x.db").turns_per_call == 2


def test_the_demo_set_is_small_and_shows_what_the_tool_does() -> None:
    """The demo is the first thing a user runs, on 2 cores (issue 18: 90 s): two dialogues, each labeled in one
    window (one label call and one critique per dialogue on the embedded model), yet both built-in languages, both
    roles and a turn with a risk sentence (flagged for a human whatever the labels). Three dialogues took 1:37-1:48
    on the AVX-512 build; the critique of the longest one is most of the wall time, so one per language."""
    import json

    from autolabel.cli.demo import LOCAL_TURNS_PER_CALL
    from autolabel.demo import demo_path
    from autolabel.safety.risk import detect_risk
    from autolabel.text import detect_language

    dialogues = [json.loads(line) for line in demo_path().read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(dialogues) <= 2
    assert all(len(d["turns"]) <= LOCAL_TURNS_PER_CALL for d in dialogues)
    assert {"en", "zh"} <= {detect_language([t["text"] for t in d["turns"]]) for d in dialogues}
    assert all(len({t["speaker"] for t in d["turns"]}) == 2 for d in dialogues)  # a seeker and a supporter each
    assert any(detect_risk(t["text"]) for d in dialogues for t in d["turns"])
