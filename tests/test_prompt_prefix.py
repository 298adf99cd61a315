"""The critic's prompt extends the label prompt (issue 18): the same system message, the label call's user message,
then the proposal and the critic's instructions — so a prefix cache (the embedded engine's KV cache, a provider's
prompt cache) holds everything but the end. Checked on the requests a real run sends to the loopback server, one
turn per call and in windows, English and Chinese."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from autolabel import Annotator, Dialogue, Turn
from tests.conftest import dialogue
from tests.fake_openai import FakeOpenAIServer, is_critique

ZH = Dialogue(id="zh1", turns=tuple(Turn(index=i, speaker=s, text=t) for i, (s, t) in enumerate([
    ("咨询师", "你好，今天想聊些什么？"), ("来访者", "我最近总是睡不着，一想到考试就心慌。"),
    ("咨询师", "考试让你很有压力，能多说一点吗？"), ("来访者", "我怕考不好，让父母失望。")])))


def _critic(body: dict[str, Any]) -> dict[str, Any] | None:
    if "<proposal>" in body["messages"][-1]["content"]:  # agree, so no revision changes what is compared
        keys = list(body["response_format"]["json_schema"]["schema"]["properties"])
        one = {"reason": "The labels fit the turn.", "verdict": "agree", "revised": None}
        return one if keys == ["reason", "verdict", "revised"] else {k: one for k in keys}
    return None


@pytest.mark.parametrize("turns_per_call", [1, 4])
def test_each_critique_prompt_starts_with_its_label_prompt(tmp_path: Path, turns_per_call: int) -> None:
    with FakeOpenAIServer(replies=_critic) as srv:
        list(Annotator("psy-insight", model="openai:test", base_url=srv.base_url, db=tmp_path / "r.db",
                  turns_per_call=turns_per_call).annotate_many([dialogue("d1", 4), ZH]))
        bodies = [b for b in srv.requests if len(b["messages"]) == 2]  # first attempts, no re-asks
    critiques = [b for b in bodies if "<proposal>" in b["messages"][1]["content"]]
    labels = [b for b in bodies if b not in critiques and "<target" in b["messages"][1]["content"]]
    assert critiques and labels
    for c in critiques:
        system, user = c["messages"][0]["content"], c["messages"][1]["content"]
        label = [b for b in labels if b["messages"][0]["content"] == system and user.startswith(
            b["messages"][1]["content"] + "\n")]
        assert len(label) == 1, user[:200]  # its own label call, whole, is the critique's prefix
        assert is_critique(c)
    assert any("复核" in c["messages"][1]["content"] for c in critiques)  # the Chinese ask for Chinese turns


def test_on_the_embedded_model_the_session_call_of_a_one_window_dialogue_extends_its_label_prompt(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows on the embedded model (the demo, issue 18): the session call of a dialogue that is one window extends
    that window's label prompt (the session's fields and the ask appended), so the dialogue and the label system
    prompt are not decoded again. A dialogue longer than a window gets the session call of its own (its system
    message and the whole dialogue). English and Chinese, run on SmolLM2 (the [local] extra)."""
    from autolabel.llm import local
    from autolabel.planning import plan

    sent: list[dict[str, Any]] = []
    complete = local.LocalBackend.complete

    async def record(self: local.LocalBackend, kwargs: dict[str, Any]) -> Any:
        sent.append(kwargs)
        return await complete(self, kwargs)

    monkeypatch.setattr(local.LocalBackend, "complete", record)
    long = dialogue("long", 6)
    ann = Annotator("psy-insight", model="local:smollm2-135m", model_dir=tmp_path / "models", db=tmp_path / "r.db",
                    turns_per_call=4, local_threads=2)
    list(ann.annotate_many([dialogue("d1", 4), ZH, long]))
    bodies = [b for b in sent if len(b["messages"]) == 2]
    sessions = [b for b in bodies if set(b["response_format"]["json_schema"]["schema"]["properties"]) ==
                {"psychotherapy", "topic"}]
    labels = [b for b in bodies if b not in sessions and "<proposal>" not in b["messages"][1]["content"]]
    assert len(sessions) == 3 and labels
    one_window = [s for s in sessions if "<target" in s["messages"][1]["content"]]
    assert len(one_window) == 2
    for s in one_window:
        user = s["messages"][1]["content"]
        assert any(b["messages"][0] == s["messages"][0] and user.startswith(b["messages"][1]["content"] + "\n")
                   for b in labels)
    whole = next(s for s in sessions if s not in one_window)
    assert all(t.text[:40] in whole["messages"][1]["content"] for t in long.turns)
    assert whole["messages"][0]["content"] not in {b["messages"][0]["content"] for b in labels}
    engine = local.load_model("smollm2-135m", ann.settings).engine
    assert engine.prompt_tokens_reused > 0
    # plan counts the prompts a run sends: the one-window session extends its label prompt there too
    input = tmp_path / "in.jsonl"
    input.write_text("\n".join(d.model_dump_json() for d in [dialogue("d1", 4), ZH, long]) + "\n", encoding="utf-8")
    p = plan(input, "psy-insight", ann.settings)
    row = next(c for c in p.calls if c.purpose == "session")
    assert row.sample_calls == 3
    assert row.sample_prompt_tokens == sum(local.count_tokens("smollm2-135m", s["messages"], ann.settings)
                                           for s in sessions)
