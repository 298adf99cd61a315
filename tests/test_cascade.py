"""A two-stage cascade on two loopback endpoints: stage 2 gets only what stage 1 flagged (never risk turns), every
turn ends once in the export with its deciding stage, and a run stopped during stage 2 resumes without stage 1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from autolabel import Dialogue, Turn, export
from autolabel.cascade import WITHHELD, Cascade, load_cascade
from autolabel.errors import LLMError, TaskSpecError
from tests.conftest import write_jsonl
from tests.fake_openai import FakeOpenAIServer, Fault, is_critique

RISK = "Some nights I just want to kill myself."
UNSURE = "not sure"  # the stage-1 critic is unsure of every turn whose text holds this


def dialogues() -> list[Dialogue]:
    lines = [
        ("Supporter", "Hello, what brings you here today?"),
        ("Seeker", f"I am {UNSURE} why I feel so tired every morning."),
        ("Supporter", "It sounds like the mornings are hard. What happens then?"),
        ("Seeker", RISK + f" I am {UNSURE} anyone would notice."),
        ("Supporter", f"Thank you for telling me; I am {UNSURE} I understood, can you say more?"),
    ]
    out = []
    for n in range(2):
        turns = tuple(Turn(index=i, speaker=s, text=f"{t} (session {n})" if i == 0 else t)
                      for i, (s, t) in enumerate(lines))
        out.append(Dialogue(id=f"c{n}", turns=turns))
    return out


def stage1_replies(body: dict[str, Any]) -> dict[str, Any] | None:
    """Stage 1's critic: unsure of the turn being critiqued when its target text says so, else agree."""
    if not is_critique(body):
        return None
    user = body["messages"][1]["content"]
    turn = _target_line(user)
    if UNSURE in turn:
        return {"reason": "ambiguous", "verdict": "unsure", "revised": None}
    return {"reason": "fine", "verdict": "agree", "revised": None}


def agree(body: dict[str, Any]) -> dict[str, Any] | None:
    return {"reason": "fine", "verdict": "agree", "revised": None} if is_critique(body) else None


def _target_line(user: str) -> str:
    """The text of the target turn of a label (or critique) prompt: ``<target index=..>text</target>``."""
    return user.split("<target ", 1)[1].split("</target>", 1)[0]


def cascade_file(tmp_path: Path, s1: FakeOpenAIServer, s2: FakeOpenAIServer, extra: str = "") -> Path:
    p = tmp_path / "cascade.yaml"
    p.write_text(f"stages:\n  - model: openai:small\n    base_url: {s1.base_url}\n"
                 f"  - model: openai:strong\n    base_url: {s2.base_url}\n{extra}", encoding="utf-8")
    return p


def labeled_turns(server: FakeOpenAIServer) -> list[str]:
    """The target text of every label request the server got."""
    return [_target_line(b["messages"][1]["content"]) for b in server.requests
            if not is_critique(b) and "annotator of counseling sessions" not in b["messages"][0]["content"]]


def exported(db: Path, run_id: str, tmp_path: Path) -> list[dict[str, Any]]:
    out = tmp_path / f"{run_id}.jsonl"
    export(db, "jsonl", out, run_id=run_id)
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def two_servers() -> Any:
    with FakeOpenAIServer(replies=stage1_replies, seed=1) as s1, FakeOpenAIServer(replies=agree, seed=2) as s2:
        yield s1, s2


def test_stage_two_gets_only_flagged_turns_and_never_risk(two_servers: Any, tmp_path: Path) -> None:
    s1, s2 = two_servers
    src = write_jsonl(tmp_path / "in.jsonl", dialogues())
    db = tmp_path / "runs.db"
    summary = Cascade("psy-insight", cascade_file(tmp_path, s1, s2), db=db, few_shot=0).run(src)

    assert summary.stopped_reason is None
    first, second = summary.stages
    assert first.turns == 10 and second.turns == first.escalated == 4  # turns 1 and 4 of each dialogue
    labeled = labeled_turns(s2)
    assert len(labeled) == 4 and all(UNSURE in t and RISK not in t for t in labeled)
    sent = " ".join(json.dumps(b) for b in s2.requests)
    assert RISK not in sent and "kill myself" not in sent  # not even as another turn's context
    assert WITHHELD in sent  # the risk turn's place in the context is marked
    assert not [b for b in s2.requests if "annotator of counseling sessions" in b["messages"][0]["content"]]

    records = exported(db, summary.run_id, tmp_path)
    turns = [r for r in records if r["kind"] == "turn"]
    assert sorted((r["dialogue_id"], r["turn_index"]) for r in turns) == [(f"c{n}", i) for n in range(2)
                                                                          for i in range(5)]
    by = {(r["dialogue_id"], r["turn_index"]): r for r in turns}
    for n in range(2):
        for i in (1, 4):
            r = by[(f"c{n}", i)]
            assert r["decided_by"] == {"stage": 2, "model": "openai:strong"} and r["status"] == "accepted"
            assert [s["stage"] for s in r["stages"]] == [1] and "critic_unsure" in r["stages"][0]["reasons"]
        risk = by[(f"c{n}", 3)]
        assert risk["decided_by"]["stage"] == 1 and "risk_content" in risk["flags"] and risk["stages"] == []
        assert by[(f"c{n}", 0)]["decided_by"] == {"stage": 1, "model": "openai:small"}
    assert summary.flagged == 2  # the risk turns: the review queue holds them, and only them
    assert any("uncalibrated rule" in n for n in summary.notes)


def test_a_run_stopped_in_stage_two_resumes_without_stage_one(tmp_path: Path) -> None:
    broken = {"on": True}

    def stage2(body: dict[str, Any]) -> Any:
        return Fault("500") if broken["on"] else agree(body)

    src = write_jsonl(tmp_path / "in.jsonl", dialogues())
    db = tmp_path / "runs.db"
    with FakeOpenAIServer(replies=stage1_replies, seed=1) as s1, FakeOpenAIServer(replies=stage2, seed=2) as s2:
        spec = cascade_file(tmp_path, s1, s2)
        with pytest.raises(LLMError):
            Cascade("psy-insight", spec, db=db, few_shot=0, max_retries=0).run(src)
        stage1_calls = len(s1.requests)
        assert stage1_calls > 0 and len(s2.requests) > 0
        broken["on"] = False
        summary = Cascade("psy-insight", spec, db=db, few_shot=0, max_retries=0).run(src)
        assert len(s1.requests) == stage1_calls  # stage 1 was not asked again
    assert summary.stages[0].calls == 0 and summary.stages[1].turns == 4
    records = [r for r in exported(db, summary.run_id, tmp_path) if r["kind"] == "turn"]
    assert len(records) == 10 and len({(r["dialogue_id"], r["turn_index"]) for r in records}) == 10
    assert sum(r["decided_by"]["stage"] == 2 for r in records) == 4


def test_cascade_file_errors_name_the_json_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - model: openai:a\n    turns_per_call: 0\n  - base_url: http://x\n"
                   "risk_to_later_stages: maybe\n", encoding="utf-8")
    with pytest.raises(TaskSpecError) as e:
        load_cascade(bad)
    msg = str(e.value)
    assert "$.stages[0].turns_per_call" in msg and "$.stages[1]" in msg and "$.risk_to_later_stages" in msg
    knn = tmp_path / "knn.yaml"
    knn.write_text("stages:\n  - model: openai:a\n  - model: knn\nassumed_escalation_rate: 0.2\n", encoding="utf-8")
    assert [s.model for s in load_cascade(knn).stages] == ["openai:a", "knn"]
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("stages:\n  - model: gpt-4o\n", encoding="utf-8")
    with pytest.raises(TaskSpecError, match=r"\$\.stages\[0\]\.model"):
        load_cascade(wrong)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autolabel", *args], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])


def test_cli_cascade_errors_exit_2(tmp_path: Path, small_input: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: []\n", encoding="utf-8")
    for command in ("run", "plan"):
        result = cli(command, str(small_input), "--cascade", str(bad), "--db", str(tmp_path / "r.db"))
        assert result.returncode == 2, result.stderr
        assert "$.stages" in result.stderr and "Traceback" not in result.stderr


def test_cli_run_and_plan_per_stage(two_servers: Any, tmp_path: Path) -> None:
    s1, s2 = two_servers
    src = write_jsonl(tmp_path / "in.jsonl", dialogues())
    db = str(tmp_path / "runs.db")
    spec = cascade_file(tmp_path, s1, s2, "assumed_escalation_rate: 0.5\n")
    prices = ("--price-in", "1", "--price-out", "2")
    before = cli("plan", str(src), "--cascade", str(spec), "--db", db, *prices)
    assert before.returncode == 0, before.stderr
    assert "assumed_escalation_rate 0.5" in before.stdout and "50%" in before.stdout
    result = cli("run", str(src), "--cascade", str(spec), "--db", db, "--few-shot", "0", "--progress-every", "0.01",
                 *prices)
    assert result.returncode == 0, result.stderr
    assert "progress: stage 1 (openai:small)" in result.stderr and "progress: stage 2 (openai:strong)" in result.stderr
    assert "openai:strong" in result.stdout and "uncalibrated rule" in result.stdout
    assert len(labeled_turns(s2)) == 4
    after = cli("plan", str(src), "--cascade", str(spec), "--db", db, *prices)
    assert after.returncode == 0, after.stderr
    assert "measured by run" in after.stdout and "40%" in after.stdout  # 4 of 10 turns went on


def test_a_knn_stage_labels_what_stage_one_sent_on_without_llm_calls(two_servers: Any, tmp_path: Path) -> None:
    from autolabel import Annotator
    from tests.test_learned import SEEKER, SUPPORTER, review_everything
    from tests.test_learned import dialogue as gold_dialogue

    s1, _ = two_servers
    db = tmp_path / "runs.db"
    gold = [gold_dialogue(k, SUPPORTER[k][0], SEEKER[k][0]) for k in SEEKER]
    list(Annotator("psy-insight", model="openai:gold", base_url=s1.base_url, db=db, few_shot=0).annotate_many(gold))
    review_everything(db)
    spec = tmp_path / "knn.yaml"
    spec.write_text(f"stages:\n  - model: openai:small\n    base_url: {s1.base_url}\n  - model: knn\n",
                    encoding="utf-8")
    src = write_jsonl(tmp_path / "in.jsonl", dialogues())
    before = len(s1.requests)
    summary = Cascade("psy-insight", spec, db=db, few_shot=0, embeddings="openai:emb",
                      embeddings_base_url=s1.base_url).run(src)
    stage1_calls = len(s1.requests) - before
    assert summary.stages[1].turns == 4 and summary.stages[1].calls == 0
    assert stage1_calls == summary.stages[0].calls  # the knn stage asked no model
    records = [r for r in exported(db, summary.run_id, tmp_path) if r["kind"] == "turn"]
    assert len(records) == 10
    knn = [r for r in records if r["decided_by"]["stage"] == 2]
    assert len(knn) == 4 and all(r["decided_by"]["model"] == "knn" and r["stages"][0]["stage"] == 1 for r in knn)
    assert all(c["signals"].keys() == {"knn_vote"} for r in knn for c in r["confidence"].values())


def test_bench_cascade_smoke(tmp_path: Path) -> None:
    """benchmarks/bench_cascade.py end to end at a tiny size with a scripted stage 1 (no timing asserted)."""
    out = tmp_path / "cascade.json"
    r = subprocess.run([sys.executable, "benchmarks/bench_cascade.py", "--stage1", "scripted", "--turns", "12",
                        "--out", str(out)], capture_output=True, text=True, timeout=600,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "|---|" in r.stdout
    data = json.loads(out.read_text(encoding="utf-8"))
    arms = {a["arm"]: a for a in data["results"]}
    assert set(arms) == {"stage 1 alone", "cascade", "stage 2 alone"} and data["simulated_stage_2"] is True
    assert all(a["turns"] == 12 for a in arms.values())
    # stage 2 saw only what stage 1 sent on: fewer stage-2 calls in the cascade than alone, none by stage 1 alone
    assert 0 < arms["cascade"]["calls_per_1000_turns"]["stage 2"] < arms["stage 2 alone"]["calls_per_1000_turns"][
        "stage 2"]
    assert abs(sum(arms["cascade"]["decided"].values()) - 1) < 0.01


def test_max_cost_is_one_budget_over_the_stages_and_a_stop_resumes_in_stage_two(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", dialogues())
    prices = {"price_in": 1.0, "price_out": 1.0, "concurrency": 1, "few_shot": 0}
    with FakeOpenAIServer(replies=stage1_replies, seed=1) as s1, FakeOpenAIServer(replies=agree, seed=2) as s2:
        spec = cascade_file(tmp_path, s1, s2)
        full = Cascade("psy-insight", spec, db=tmp_path / "full.db", **prices).run(src)
        c1, c2 = (st.cost_usd for st in full.stages)
        assert c1 > 0 and c2 > 0
        db = tmp_path / "runs.db"
        first = len(s1.requests)
        stopped = Cascade("psy-insight", spec, db=db, max_cost=c1 + 0.9 * c2, **prices).run(src)
        assert stopped.stopped_reason == "budget" and stopped.stages[1].stopped_reason == "budget"
        assert stopped.stages[0].turns == 10 and stopped.cost_usd <= c1 + 0.9 * c2
        asked = len(s1.requests) - first
        resumed = Cascade("psy-insight", spec, db=db, **prices).run(src)
        assert len(s1.requests) - first == asked  # stage 1 was not asked again
    assert resumed.stopped_reason is None and resumed.stages[0].calls == 0
    records = [r for r in exported(db, resumed.run_id, tmp_path) if r["kind"] == "turn"]
    assert len(records) == 10 and sum(r["decided_by"]["stage"] == 2 for r in records) == 4


def test_risk_turns_go_on_only_when_the_file_allows_it(two_servers: Any, tmp_path: Path) -> None:
    s1, s2 = two_servers
    src = write_jsonl(tmp_path / "in.jsonl", dialogues())
    spec = cascade_file(tmp_path, s1, s2, "risk_to_later_stages: true\n")
    summary = Cascade("psy-insight", spec, db=tmp_path / "runs.db", few_shot=0).run(src)
    labeled = labeled_turns(s2)
    assert summary.stages[1].turns == 6 and len(labeled) == 6
    assert sum(RISK in t for t in labeled) == 2  # the risk turn of each dialogue, sent on as the file allows


def test_a_budget_no_stage_can_keep_is_refused_before_stage_one(two_servers: Any, tmp_path: Path) -> None:
    from autolabel.errors import ConfigError

    s1, s2 = two_servers
    src = write_jsonl(tmp_path / "in.jsonl", dialogues())
    spec = tmp_path / "remote.yaml"  # stage 2 a remote endpoint with no known price (never called here)
    spec.write_text(f"stages:\n  - model: openai:small\n    base_url: {s1.base_url}\n"
                    "  - model: openai:unpriced-model\n    base_url: https://api.example.invalid/v1\n",
                    encoding="utf-8")
    with pytest.raises(ConfigError, match="--max-cost needs a price"):
        Cascade("psy-insight", spec, db=tmp_path / "r.db", max_cost=1.0).run(src)
    assert s1.requests == []
