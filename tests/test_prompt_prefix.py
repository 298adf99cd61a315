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
