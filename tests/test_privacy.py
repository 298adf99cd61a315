"""What leaves the machine: ``--redact`` end to end in English and Chinese, and the remote-endpoint notice.

No test sends anything to a non-loopback address: the remote notice is checked with an empty input (no call is
made) and a host under ``.invalid``, which never resolves.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from autolabel import Annotator, Dialogue, Settings, Turn
from autolabel.review.queue import ReviewQueue
from tests.conftest import write_jsonl
from tests.fake_openai import FakeOpenAIServer, requested_schema, synthesize

PLACEHOLDER = re.compile(r"\[(?:NAME|PHONE|EMAIL|ADDRESS)_\d+\]")

EN = Dialogue(id="en-private", turns=(
    Turn(index=0, speaker="Supporter", text="Hello, I'm Dr. Patel. What brings you here today?"),
    Turn(index=1, speaker="Seeker", text="Hi, my name is Sarah Connor. You can reach me at (415) 555-0100 or "
                                         "sarah.connor@example.com."),
    Turn(index=2, speaker="Supporter", text="Thank you, Sarah. Where are you staying at the moment?"),
    Turn(index=3, speaker="Seeker", text="I moved to 123 Main Street, Apt 4 after the divorce, and Michael still "
                                         "calls me every night."),
))
EN_SECRETS = ["Patel", "Sarah", "Connor", "555-0100", "sarah.connor@example.com", "123 Main Street", "Michael"]
ZH = Dialogue(id="zh-private", turns=(
    Turn(index=0, speaker="咨询师", text="你好，我是王老师。今天想聊些什么？"),
    Turn(index=1, speaker="来访者", text="我叫李明，电话是13812345678，邮箱是 li.ming@qq.com。"),
    Turn(index=2, speaker="咨询师", text="谢谢你，李明。你现在住在哪里？"),
    Turn(index=3, speaker="来访者", text="我住在广东省深圳市南山区科技园路100号。我男朋友名叫陈浩然，他总是骂我。"),
))
ZH_SECRETS = ["王老师", "李明", "13812345678", "li.ming@qq.com", "科技园路100号", "陈浩然", "浩然"]


def echo_placeholders(body: dict[str, Any]) -> dict[str, Any] | None:
    """A schema-valid answer whose free-text fields quote the placeholders of the prompt, as a model's would."""
    schema = requested_schema(body)
    found = sorted(set(PLACEHOLDER.findall(body["messages"][1]["content"])))
    if schema is None or not found:
        return None
    value = synthesize(schema, random.Random(0))
    for name, prop in schema.get("properties", {}).items():
        if prop.get("type") == "string" and "enum" not in prop:
            value[name] = ("About " + ", ".join(found))[: prop.get("maxLength", 400)]
    return value


def _stored_texts(db: Path) -> str:
    """Every free text of the final records (texts and the critic's reasons) as stored."""
    out = []
    with sqlite3.connect(db) as conn:
        for (rec,) in conn.execute("SELECT record_json FROM annotations WHERE is_final=1"):
            r = json.loads(rec)
            out += list(r["texts"].values()) + [(r.get("critique") or {}).get("reason") or ""]
    return "\n".join(out)


@pytest.mark.parametrize(("d", "secrets"), [(EN, EN_SECRETS), (ZH, ZH_SECRETS)], ids=["en", "zh"])
def test_redact_sends_placeholders_and_stores_the_originals(d: Dialogue, secrets: list[str], tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    with FakeOpenAIServer(replies=echo_placeholders) as srv:
        result = Annotator("psy-insight", model="openai:test", base_url=srv.base_url, db=db, redact=True).annotate(d)
        sent = [json.dumps(b, ensure_ascii=False) for b in srv.requests]
    assert len(sent) == 2 * len(d.turns) + 1  # label and critique per turn, one session call
    leaks = [s for s in secrets for body in sent if s in body]
    assert leaks == []
    assert all(PLACEHOLDER.search(body) for body in sent)  # every prompt carried the dialogue, pseudonymised
    # the model's texts quoted placeholders; what is stored has the originals back
    stored = _stored_texts(db)
    assert not PLACEHOLDER.search(stored)
    for s in secrets[1:]:  # (王老师 is stored as 王 + 老师 around the placeholder: covered by 李明 and the rest)
        if s != "浩然":
            assert s in stored or s.split()[0] in stored, s
    assert all(t.status.value != "failed" for t in result.turns)
    assert not PLACEHOLDER.search(json.dumps([t.texts for t in result.turns], ensure_ascii=False))
    with sqlite3.connect(db) as conn:  # the dialogue itself is stored as it came
        assert [t for (t,) in conn.execute("SELECT text FROM turns ORDER BY turn_index")] == [t.text for t in d.turns]


def test_redact_prompts_are_stable_so_a_rerun_is_answered_from_the_cache(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    with FakeOpenAIServer(replies=echo_placeholders) as srv:
        Annotator("psy-insight", model="openai:test", base_url=srv.base_url, db=db, redact=True).annotate(EN)
        sent = len(srv.requests)
        copy = write_jsonl(tmp_path / "copy.jsonl", [EN])  # another run id, the same prompts
        s = Annotator("psy-insight", model="openai:test", base_url=srv.base_url, db=db, redact=True).run(copy)
    assert len(srv.requests) == sent and s.calls == 0 and s.cache_hits == sent


def test_redact_covers_few_shot_examples_from_other_dialogues(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    named = "My name is Sarah Connor, call me on 415-555-0100: I am so anxious about my exams that I cannot sleep."
    old = Dialogue(id="old", turns=(Turn(index=0, speaker="Supporter", text="Hello, what brings you here?"),
                                    Turn(index=1, speaker="Seeker", text=named)))
    new = Dialogue(id="new", turns=(Turn(index=0, speaker="Supporter", text="Hi, what is on your mind today?"),
                                    Turn(index=1, speaker="Seeker", text="I'm so nervous about my exam that I "
                                                                         "lie awake all night.")))
    with FakeOpenAIServer() as srv:
        Annotator("psy-insight", model="openai:test", base_url=srv.base_url, db=db, critique=False).annotate(old)
    with ReviewQueue.open(db) as queue:  # the named turn becomes gold, hence a few-shot example for later runs
        run_id = queue.store.run()["id"]
        item = queue.find(run_id, "old", "turn", 1) or queue.enqueue(run_id, "old", "turn", 1, "alice")
        claimed = queue.claim("alice", item_id=item.id)
        assert claimed is not None
        queue.submit(claimed.id, "alice", claimed.version, {"emotion": ["Anxiety"]})
    with FakeOpenAIServer() as srv:
        Annotator("psy-insight", model="openai:test", base_url=srv.base_url, db=db, critique=False, few_shot=1,
                  redact=True).annotate(new)
        sent = [json.dumps(b, ensure_ascii=False) for b in srv.requests]
    assert any("<example>" in body and "anxious about my exams" in body for body in sent)  # the example was shown
    assert not [s for s in ("Sarah", "Connor", "555-0100") for body in sent if s in body]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autolabel", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CI": "1", "COLUMNS": "1000"})


def test_cli_redact_flag(tmp_path: Path) -> None:
    input = write_jsonl(tmp_path / "in.jsonl", [EN])
    with FakeOpenAIServer(replies=echo_placeholders) as srv:
        r = cli("run", str(input), "--model", "openai:test", "--base-url", srv.base_url, "--db",
                str(tmp_path / "runs.db"), "--redact")
        sent = [json.dumps(b, ensure_ascii=False) for b in srv.requests]
    assert r.returncode == 0, r.stderr
    assert sent and not [s for s in EN_SECRETS for body in sent if s in body]
    assert "sarah.connor@example.com" in _stored_texts(tmp_path / "runs.db")


@pytest.mark.parametrize(("model", "base_url", "remote"), [
    ("local:qwen2.5-0.5b", None, False),
    ("openai:gpt-4o-mini", None, True),  # api.openai.com
    ("openai:test", "http://127.0.0.1:8000/v1", False),
    ("openai:test", "http://127.8.9.10:8000/v1", False),
    ("openai:test", "http://localhost:11434/v1", False),
    ("openai:test", "http://LOCALHOST:11434/v1", False),
    ("openai:test", "http://[::1]:8000/v1", False),
    ("openai:test", "https://api.openai.com/v1", True),
    ("openai:test", "http://10.0.0.5:8000/v1", True),  # a LAN address still leaves the machine
    ("openai:test", "http://192.168.1.20/v1", True),
    ("openai:test", "http://localhost.example.com/v1", True),
    ("openai:test", "http://[2001:db8::1]/v1", True),
])
def test_is_remote(model: str, base_url: str | None, remote: bool) -> None:
    assert Settings(model=model, base_url=base_url).is_remote() is remote


REMOTE = "https://user:sk-in-the-url@llm.example.invalid/v1"  # .invalid never resolves; no call is made anyway


def _notices(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "remote endpoint" in r.getMessage()]


def test_a_remote_endpoint_is_announced_once_per_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    summary = Annotator("psy-insight", model="openai:test", base_url=REMOTE, db=tmp_path / "r.db").run(empty)
    assert summary.calls == 0
    [notice] = _notices(caplog)
    assert "llm.example.invalid" in notice and "sk-in-the-url" not in notice and "--redact" in notice
    caplog.clear()
    Annotator("psy-insight", model="openai:test", base_url=REMOTE, db=tmp_path / "r.db", redact=True).run(empty)
    [notice] = _notices(caplog)
    assert "replaced" in notice
    caplog.clear()
    Annotator("psy-insight", model="openai:test", base_url="http://127.0.0.1:9/v1", db=tmp_path / "r.db").run(empty)
    assert _notices(caplog) == []


def test_cli_says_once_that_text_would_leave_the_machine(tmp_path: Path) -> None:
    """A budget of nothing stops the run before its first call (an empty input is an input error, exit 3, before the
    run starts): the notice is printed at the start all the same, and nothing is sent."""
    input = write_jsonl(tmp_path / "in.jsonl", [EN])
    r = cli("run", str(input), "--model", "openai:test", "--base-url", REMOTE, "--db", str(tmp_path / "r.db"),
            "--max-cost", "0", "--price-in", "1", "--price-out", "1")
    assert r.returncode == 6, r.stderr
    assert r.stderr.count("remote endpoint") == 1 and "sk-in-the-url" not in r.stderr + r.stdout
