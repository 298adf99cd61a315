"""Several turns per call (``turns_per_call`` > 1), end to end through the OpenAI protocol and a real SQLite store."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from autolabel import Annotator, Dialogue, Status, Turn, read_dialogues
from autolabel.cli import app
from tests.conftest import dialogue, write_jsonl
from tests.fake_openai import FakeOpenAIServer, is_critique


def annotator(server: FakeOpenAIServer, db: Path, **kw: Any) -> Annotator:
    return Annotator("psy-insight", model="openai:test-model", base_url=server.base_url, db=db, **kw)


def purpose(body: dict[str, Any]) -> str:
    system = body["messages"][0]["content"]
    if is_critique(body):
        return "critique"
    if "annotator of counseling sessions" in system:
        return "session"
    return "label"


def keys(body: dict[str, Any]) -> list[str]:
    return list(body["response_format"]["json_schema"]["schema"]["properties"])


def rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def test_a_window_of_turns_is_labeled_and_critiqued_by_one_call_each(tmp_path: Path) -> None:
    dialogues = [dialogue(f"d{i}", 6) for i in range(3)]
    input = write_jsonl(tmp_path / "in.jsonl", dialogues)
    db = tmp_path / "runs.db"
    with FakeOpenAIServer() as srv:
        summary = annotator(srv, db, turns_per_call=4).run(input)
        labels = [b for b in srv.requests if purpose(b) == "label"]
        critiques = [b for b in srv.requests if purpose(b) == "critique"]
    # 6 turns: windows 0-3 and 4-5, one label and one critique call each, plus the session call
    assert summary.turns == 18 == summary.accepted + summary.flagged and summary.failed == 0
    assert sorted(keys(b) for b in labels) == sorted([["0", "1", "2", "3"], ["4", "5"]] * 3)
    assert sorted(keys(b) for b in critiques) == sorted(keys(b) for b in labels)
    assert summary.calls == 3 * (2 + 2 + 1)
    four = next(b for b in labels if keys(b) == ["0", "1", "2", "3"])
    assert four["max_tokens"] == 4 * 512  # the per-turn allowance, for each turn of the window
    schema = four["response_format"]["json_schema"]["schema"]
    assert list(schema["properties"]["0"]["properties"]) == ["reasoning", "strategy"]  # supporter
    assert list(schema["properties"]["1"]["properties"]) == ["observation", "emotion"]  # seeker
    user = next(b for b in labels if keys(b) == ["4", "5"])["messages"][1]["content"]
    assert '<target index="4" speaker="Supporter" role="supporter">' in user and '<target index="5"' in user
    assert "[0] " in user and "[3] " in user and '<target index="3"' not in user  # earlier turns: context only
    # one system message for every window of the task and language: a stable prefix
    assert len({b["messages"][0]["content"] for b in labels}) == 1
    # each turn is stored on its own, with its own labels, critique and confidence
    finals = rows(db, "SELECT turn_index, record_json FROM annotations WHERE is_final=1 AND kind='turn'")
    assert len(finals) == 18
    for index, rec in finals:
        r = json.loads(rec)
        assert r["labels"] and r["critique"]["verdict"] in ("agree", "revise", "unsure"), r
        field = "strategy" if index % 2 == 0 else "emotion"
        assert set(r["confidence"]) == {field} and "logprob" in r["confidence"][field]["signals"]


def test_confidence_reads_each_turns_own_codes_from_the_shared_answer(tmp_path: Path) -> None:
    # the window's answer names code A for turn 0 and code C for turn 1: their logprobs differ, and each turn's
    # confidence must come from its own code, not from the first one found in the answer
    answer = {"0": {"reasoning": "asks a question", "strategy": ["A"]},
              "1": {"observation": "worried about exams", "emotion": ["C"]}}

    def replies(body: dict[str, Any]) -> str | None:
        return json.dumps(answer) if purpose(body) == "label" else None

    def logprob(token: str) -> float:
        return {"A": math.log(0.9), "C": math.log(0.3)}.get(token, 0.0)

    with FakeOpenAIServer(replies=replies, logprob=logprob) as srv:
        result = annotator(srv, tmp_path / "r.db", turns_per_call=2, critique=False).annotate(dialogue("x", 2))
    by = {t.turn_index: t for t in result.turns}
    assert by[0].labels == {"strategy": ["Question"]} and by[1].labels == {"emotion": ["Fear"]}
    assert math.isclose(by[0].confidence["strategy"].signals["logprob"], 0.9, rel_tol=1e-6)
    assert math.isclose(by[1].confidence["emotion"].signals["logprob"], 0.3, rel_tol=1e-6)


def test_a_failed_window_call_falls_back_to_one_call_per_turn(tmp_path: Path) -> None:
    def replies(body: dict[str, Any]) -> str | None:
        if purpose(body) == "label" and len(keys(body)) > 1 and keys(body)[0].isdigit():
            return '{"0": {"reasoning": "x", "strategy": ["ZZ"]}}'  # never valid: turn 1 missing, bad code
        return None

    db = tmp_path / "r.db"
    with FakeOpenAIServer(replies=replies) as srv:
        result = annotator(srv, db, turns_per_call=3, critique=False, max_reasks=1).annotate(dialogue("x", 3))
        windowed = [b for b in srv.requests if purpose(b) == "label" and keys(b)[0].isdigit()]
        single = [b for b in srv.requests if purpose(b) == "label" and not keys(b)[0].isdigit()]
    assert len(windowed) == 2  # the call and its one re-ask
    assert len(single) == 3  # then each turn alone
    assert [t.status for t in result.turns] != [] and all(t.status != Status.FAILED for t in result.turns)
    assert [t.attempts for t in result.turns] == [3, 3, 3]  # two rejected window answers, then the turn's own
    rejected = rows(db, "SELECT turn_index, attempt, record_json FROM annotations WHERE is_final=0")
    assert sorted((i, a) for i, a, _ in rejected) == [(0, 1), (0, 2), (1, 1), (1, 2), (2, 1), (2, 2)]
    for _, _, rec in rejected:  # every turn keeps the failed window attempts, with the reason
        r = json.loads(rec)
        assert r["stage"] == "label" and '"ZZ"' in r["raw"] and r["error"], r


def test_unknown_speakers_and_unlabeled_roles_in_a_window(tmp_path: Path) -> None:
    d = Dialogue(id="mixed", turns=(Turn(index=0, speaker="Supporter", text="Hi, how are you today?"),
                                    Turn(index=1, speaker="Narrator", text="(a long pause)"),
                                    Turn(index=2, speaker="Seeker", text="I feel anxious about tomorrow.")))
    with FakeOpenAIServer() as srv:
        result = annotator(srv, tmp_path / "r.db", turns_per_call=3).annotate(d)
        labels = [b for b in srv.requests if purpose(b) == "label"]
    assert [keys(b) for b in labels] == [["0", "2"]]
    assert '<target index="1"' not in labels[0]["messages"][1]["content"]
    assert "[1] Narrator: (a long pause)" in labels[0]["messages"][1]["content"]  # shown where it stands
    by = {t.turn_index: t for t in result.turns}
    assert by[1].status == Status.FAILED and by[1].error.startswith("unknown_speaker")
    assert by[0].status != Status.FAILED and by[2].status != Status.FAILED


def test_a_revise_verdict_changes_only_its_turn(tmp_path: Path) -> None:
    def replies(body: dict[str, Any]) -> str | None:
        if purpose(body) == "label":
            return json.dumps({"0": {"reasoning": "asks", "strategy": ["A"]},
                               "1": {"observation": "worried", "emotion": ["E"]}})
        if purpose(body) == "critique":
            return json.dumps({"0": {"reason": "fine", "verdict": "agree", "revised": None},
                               "1": {"reason": "it is fear", "verdict": "revise", "revised": {"emotion": ["C"]}}})
        return None

    with FakeOpenAIServer(replies=replies) as srv:
        result = annotator(srv, tmp_path / "r.db", turns_per_call=2).annotate(dialogue("x", 2))
    by = {t.turn_index: t for t in result.turns}
    assert by[0].labels == {"strategy": ["Question"]} and "critic_disagrees" not in by[0].flags
    assert by[1].labels == {"emotion": ["Fear"]} and "critic_disagrees" in by[1].flags
    assert by[1].critique["proposed"] == {"emotion": ["Anxiety"]}


def test_a_rerun_comes_from_the_cache_and_the_run_id_names_the_mode(tmp_path: Path) -> None:
    input = write_jsonl(tmp_path / "in.jsonl", [dialogue(f"d{i}", 5) for i in range(2)])
    db = tmp_path / "runs.db"
    with FakeOpenAIServer() as srv:
        first = annotator(srv, db, turns_per_call=4).run(input)
        sent = len(srv.requests)
        copy = write_jsonl(tmp_path / "copy.jsonl", list(read_dialogues(input)))
        again = annotator(srv, db, turns_per_call=4).run(copy)
        assert len(srv.requests) == sent
    assert (again.calls, again.cache_hits) == (0, first.calls)
    one = annotator(srv, db).run_id("x")
    assert annotator(srv, db, turns_per_call=4).run_id("x") != one
    assert annotator(srv, db, turns_per_call=1).run_id("x") == one  # the default keeps earlier runs' ids


def test_cli_run_turns_per_call(tmp_path: Path) -> None:
    input = write_jsonl(tmp_path / "in.jsonl", [dialogue("c1", 6)])
    db = tmp_path / "runs.db"
    with FakeOpenAIServer() as srv:
        res = CliRunner().invoke(app, ["run", str(input), "--model", "openai:test", "--base-url", srv.base_url,
                                       "--db", str(db), "--turns-per-call", "3", "--no-critique"])
        assert res.exit_code == 0, res.output
        assert sorted(keys(b) for b in srv.requests if purpose(b) == "label") == [["0", "1", "2"], ["3", "4", "5"]]
    assert rows(db, "SELECT COUNT(*) FROM annotations WHERE is_final=1 AND kind='turn'") == [(6,)]
