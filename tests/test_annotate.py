"""The annotate graph end to end, through a real HTTP server speaking the OpenAI protocol and a real SQLite store."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import jsonschema

from autolabel import Annotator, Status, export, load_task, read_dialogues
from autolabel.tasks import load_schema
from tests.conftest import dialogue, shared_file, write_jsonl
from tests.fake_openai import FakeOpenAIServer, Fault, is_critique


def purpose(body: dict[str, Any]) -> str:
    system = body["messages"][0]["content"]
    if is_critique(body):
        return "critique"
    if "annotator of counseling sessions" in system or "心理咨询会话的专业标注员" in system:
        return "session"
    return "label"


def annotator(server: FakeOpenAIServer, db: Path, **kw: Any) -> Annotator:
    return Annotator("psy-insight", model="openai:test-model", base_url=server.base_url, db=db, **kw)


def db_rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def test_every_turn_ends_in_exactly_one_state(server: FakeOpenAIServer, small_input: Path, tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    summary = annotator(server, db).run(small_input)
    n_turns = sum(len(d.turns) for d in read_dialogues(small_input))
    assert summary.turns == n_turns == summary.accepted + summary.flagged + summary.failed
    rows = db_rows(db, "SELECT dialogue_id, turn_index, COUNT(*) FROM annotations WHERE is_final=1 AND"
                       " kind='turn' GROUP BY dialogue_id, turn_index")
    assert len(rows) == n_turns and all(r[2] == 1 for r in rows)
    assert summary.flagged == db_rows(db, "SELECT COUNT(*) FROM review_items WHERE kind='turn'")[0][0]
    # label, critique per turn, one session call per dialogue; each logged with tokens and latency
    calls = db_rows(db, "SELECT purpose, COUNT(*), MIN(prompt_tokens), MIN(latency_ms) FROM llm_calls GROUP BY purpose")
    by = {p: (n, tok, lat) for p, n, tok, lat in calls}
    assert by["label"][0] == by["critique"][0] == n_turns and by["session"][0] == 5
    assert all(v[1] > 0 and v[2] > 0 for v in by.values())


def test_requests_carry_the_generated_schema_and_a_bounded_window(server: FakeOpenAIServer, tmp_path: Path) -> None:
    d = dialogue("long", 6)
    annotator(server, tmp_path / "r.db", window=2, critique=False).annotate(d)
    labels = [b for b in server.requests if purpose(b) == "label"]
    assert len(labels) == 6
    first = next(b for b in labels if 'index="0"' in b["messages"][1]["content"])
    schema = first["response_format"]["json_schema"]["schema"]
    task = load_task("psy-insight")
    assert schema == task.output_schema(task.fields_for("supporter"))
    assert list(schema["properties"]) == ["reasoning", "strategy"]  # explanation first, then labels
    last = next(b for b in labels if 'index="5"' in b["messages"][1]["content"])["messages"][1]["content"]
    assert "[3] " in last and "[4] " in last and "[2] " not in last  # two preceding turns only
    assert all(b["logprobs"] is True for b in labels)


def test_invalid_output_is_reasked_then_accepted(tmp_path: Path) -> None:
    seen: dict[str, int] = {}

    def replies(body: dict[str, Any]) -> str | None:
        if purpose(body) != "label":
            return None
        key = body["messages"][1]["content"]
        seen[key] = seen.get(key, 0) + 1
        return '{"reasoning": "asks", "strategy": ["ZZ"]}' if seen[key] == 1 else None

    with FakeOpenAIServer(replies=replies) as srv:
        result = annotator(srv, tmp_path / "r.db", critique=False).annotate(dialogue("d", 2))
        reasks = [b for b in srv.requests if len(b["messages"]) > 2]
    assert len(reasks) == 2 and "ZZ" in reasks[0]["messages"][-1]["content"]  # the error went back to the model
    assert all(t.status != Status.FAILED and t.attempts == 2 for t in result.turns)
    rejected = db_rows(tmp_path / "r.db", "SELECT record_json FROM annotations WHERE valid=0")
    assert len(rejected) == 2 and "ZZ" in json.loads(rejected[0][0])["raw"]


def test_output_that_never_validates_fails_with_reason_and_raw_output(tmp_path: Path) -> None:
    bad = '{"reasoning": "x", "strategy": "not a list"}'
    def replies(body: dict[str, Any]) -> str | None:
        return bad if purpose(body) == "label" and '"strategy"' in body["messages"][0]["content"] else None

    with FakeOpenAIServer(replies=replies) as srv:
        result = annotator(srv, tmp_path / "r.db", max_reasks=1).annotate(dialogue("d", 2))
    sup = result.turns[0]
    assert sup.status == Status.FAILED and sup.error.startswith("invalid_output")
    assert "$.strategy" in sup.error and "is not of type 'array'" in sup.error
    assert sup.raw_output == bad and sup.labels == {}
    # the seeker turn is labeled with another schema and is unaffected
    assert result.turns[1].status != Status.FAILED


def test_transport_faults_are_retried(tmp_path: Path) -> None:
    faults = iter([Fault("429_retry_after", retry_after=0.01), Fault("500"), Fault("503")])

    def replies(body: dict[str, Any]) -> Fault | None:
        return next(faults, None) if purpose(body) == "label" else None

    with FakeOpenAIServer(replies=replies) as srv:
        result = annotator(srv, tmp_path / "r.db").annotate(dialogue("d", 2))
    assert all(t.status != Status.FAILED for t in result.turns)
    outcomes = [r[0] for r in db_rows(tmp_path / "r.db", "SELECT outcome FROM llm_calls WHERE purpose='label'")]
    assert sorted(o for o in outcomes if o != "ok") == ["error:InternalServerError", "error:InternalServerError",
                                                        "error:RateLimitError"]


def test_rerun_of_a_finished_job_makes_no_calls(server: FakeOpenAIServer, small_input: Path,
                                                tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    first = annotator(server, db).run(small_input)
    sent = len(server.requests)
    again = annotator(server, db).run(small_input)
    assert len(server.requests) == sent and again.calls == 0
    assert again.skipped_dialogues == first.dialogues and again.turns == first.turns
    # every answer the first run paid for is in the cache (one entry per request sent)
    assert db_rows(db, "SELECT COUNT(*) FROM llm_cache")[0][0] == sent


def test_cache_answers_identical_calls_without_the_endpoint(server: FakeOpenAIServer, small_input: Path,
                                                            tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    annotator(server, db).run(small_input)
    sent = len(server.requests)
    copy = write_jsonl(tmp_path / "copy.jsonl", list(read_dialogues(small_input)))  # same dialogues, new run id
    s = annotator(server, db).run(copy)
    assert len(server.requests) == sent and s.cache_hits > 0 and s.calls == 0


def test_the_cache_keeps_a_small_reply_that_gives_the_same_records(server: FakeOpenAIServer, small_input: Path,
                                                                  tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    annotator(server, db).run(small_input)
    assert server.requests[0]["top_logprobs"] == 5  # each token came with five alternatives
    sizes = db_rows(db, "SELECT MAX(LENGTH(response)), COUNT(response_json) FROM llm_cache")[0]
    assert sizes[0] < 1500 and sizes[1] == 0  # compressed, alternatives left out (the whole reply took ~11 KB)
    first = {(r["dialogue_id"], r.get("turn_index")): r for r in export_records(db)}
    sent = len(server.requests)
    copy = write_jsonl(tmp_path / "copy.jsonl", list(read_dialogues(small_input)))  # same dialogues, new run id
    s = annotator(server, db).run(copy)
    assert len(server.requests) == sent and s.calls == 0 and s.cache_hits > 0
    again = [r for r in export_records(db) if r["run_id"] == s.run_id]
    assert len(again) == len(first)
    for r in again:  # labels, texts, confidence (from the cached logprobs), flags: as the paid calls gave them
        assert {**r, "run_id": None} == {**first[(r["dialogue_id"], r.get("turn_index"))], "run_id": None}


def export_records(db: Path) -> list[dict[str, Any]]:
    return [json.loads(rec) for (rec,) in db_rows(db, "SELECT record_json FROM annotations WHERE is_final=1")]


def test_export_records_validate_against_the_schemas(server: FakeOpenAIServer, small_input: Path,
                                                     tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    annotator(server, db).run(small_input)
    out = tmp_path / "labels.jsonl"
    n = export(db, "jsonl", out)
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    schema = load_schema("annotation.schema.json")
    for r in records:
        jsonschema.validate(r, schema, cls=jsonschema.Draft202012Validator)
    turns = sum(len(d.turns) for d in read_dialogues(small_input))
    assert n == len(records) == turns + 5
    native = tmp_path / "native.json"
    assert export(db, "psy-insight", native) == 5
    sessions = json.loads(native.read_text(encoding="utf-8"))
    seeker = next(t for t in sessions[0]["dialog"] if t["speaker"] == "Seeker")
    assert "psychotherapy" in sessions[0] and "summary" in sessions[0] and "guide" in sessions[0]
    assert seeker["content"] and ("emotional label" in seeker or seeker["autolabel"]["status"] == "failed")


def test_second_task_spec_needs_no_code(server: FakeOpenAIServer, tmp_path: Path) -> None:
    a = Annotator("support-strategy", model="openai:test-model", base_url=server.base_url, db=tmp_path / "r.db")
    result = a.annotate(dialogue("d", 4))
    helper, user = result.turns[0], result.turns[1]
    assert set(helper.labels) == {"esconv_strategy"} and isinstance(helper.labels["esconv_strategy"], str)
    assert user.labels == {} and user.status == Status.ACCEPTED  # nothing to label for the user role
    assert set(result.session.labels) == {"outcome"}


def test_real_sessions_en_and_cn(server: FakeOpenAIServer, tmp_path: Path) -> None:
    for name, lang in (("en_dev.json", "en"), ("cn_dev.json", "zh")):
        sessions = []
        for d in read_dialogues(shared_file(name)):
            sessions.append(d)
            if len(sessions) == 2:
                break
        a = annotator(server, tmp_path / f"{lang}.db", critique=False)
        results = list(a.annotate_many(sessions, input_name=name))
        assert {r.language for r in results} == {lang}
        assert sum(len(r.turns) for r in results) == sum(len(d.turns) for d in sessions)
        assert all(t.status in (Status.ACCEPTED, Status.FLAGGED, Status.FAILED) for r in results for t in r.turns)
    cn_prompt = next(b for b in server.requests if "心理咨询" in b["messages"][0]["content"])
    assert "来访者" in cn_prompt["messages"][0]["content"] or "咨询师" in cn_prompt["messages"][0]["content"]

