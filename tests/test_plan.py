"""``autolabel plan`` against what a run really sends, prices, and ``--max-cost`` stopping cleanly."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from autolabel.graphs.annotate import prompts
from autolabel.graphs.annotate.excerpt import Excerpt
from autolabel.graphs.annotate.requests import RequestBuilder, labeled_roles
from typer.testing import CliRunner

from autolabel import (
    Annotator,
    BudgetExceeded,
    ConfigError,
    Dialogue,
    RunSummary,
    Settings,
    Turn,
    load_task,
    read_dialogues,
)
from autolabel.cli import app
from autolabel.llm import local
from autolabel.llm.budget import Budget, prompt_counter
from autolabel.llm.pricing import price, pricer
from autolabel.llm.tokens import encoding
from autolabel.planning import Purpose, plan, representative_answer, representative_critique
from autolabel.records import record_problems
from autolabel.tasks import TaskSpec
from tests.conftest import write_jsonl
from tests.fake_openai import FakeOpenAIServer, count_prompt_tokens

runner = CliRunner()
TASK = load_task("psy-insight")
EN = [("Supporter", "Hello, what brings you here today?"),
      ("Seeker", "I have been feeling really anxious about my exams and I can't sleep."),
      ("Supporter", "It sounds like the exams weigh on you. What worries you most?"),
      ("Narrator", "(a long pause)"),  # no role in the task: no call
      ("Seeker", "That I will fail and disappoint my parents.")]
ZH = [("咨询师", "你好，今天想聊些什么？"), ("来访者", "我最近很焦虑，晚上睡不着觉，担心考试不及格。"),
      ("咨询师", "听起来考试给你很大的压力。最让你担心的是什么？"), ("来访者", "怕让父母失望。")]


def mixed_input(path: Path, n: int = 6) -> Path:
    """English and Chinese dialogues of different lengths, each with its own text (no two prompts alike)."""
    dialogues = []
    for i in range(n):
        lines = (EN if i % 2 == 0 else ZH)[: 3 + i % 3]
        dialogues.append(Dialogue(id=f"d{i}", turns=tuple(
            Turn(index=j, speaker=s, text=f"{t} ({i}.{j})") for j, (s, t) in enumerate(lines))))
    return write_jsonl(path, dialogues)


def uniform_input(path: Path, n: int = 6) -> Path:
    """Dialogues of the same shape whose texts differ only in one digit."""
    return write_jsonl(path, [Dialogue(id=f"u{i}", turns=tuple(
        Turn(index=j, speaker=s, text=f"{t} (#{i})") for j, (s, t) in enumerate(EN[:3]))) for i in range(n)])


def representative_replies(task: TaskSpec) -> Callable[[dict[str, Any]], str | None]:
    """Answers every label, critique and session call with the plan's representative answer (always valid, so
    there are no re-asks). Sample calls show shuffled options and get the server's own valid answer."""
    by_system: dict[str, tuple[str, str | None]] = {}  # the critic shares the label call's system message
    for lang in ("en", "zh"):
        for role in task.roles:
            fields = task.fields_for(role)
            if fields is None:
                continue
            answer = json.dumps(representative_answer(task, fields, lang), ensure_ascii=False)
            critique = json.dumps(representative_critique(task, fields, lang), ensure_ascii=False)
            by_system[prompts.label_system(task, fields, lang)] = (answer, critique)
        session = task.session_fields()
        assert session is not None
        answer = json.dumps(representative_answer(task, session, lang), ensure_ascii=False)
        by_system[prompts.session_system(task, session, lang)] = (answer, None)

    def reply(body: dict[str, Any]) -> str | None:
        found = by_system.get(body["messages"][0]["content"])
        if found is None:
            return None
        return found[1] if "<proposal>" in body["messages"][-1]["content"] else found[0]
    return reply


def representative_window_replies(task: TaskSpec) -> Callable[[dict[str, Any]], str | None]:
    """The plan's representative answer for every turn of a window's label and critique calls (sample calls get
    the server's own valid answer); session calls as ``representative_replies``."""
    roles = labeled_roles(task)
    lang_of = {prompts.group_system(task, roles, lang): lang for lang in ("en", "zh")}
    role_of = {frozenset(task.output_schema(f)["properties"]): f for f in roles}
    session = representative_replies(task)

    def reply(body: dict[str, Any]) -> str | None:
        system = body["messages"][0]["content"]
        if system not in lang_of:
            return session(body)
        lang, critique = lang_of[system], "<proposal>" in body["messages"][-1]["content"]
        answer = {}
        for key, sub in body["response_format"]["json_schema"]["schema"]["properties"].items():
            if critique:
                fields = next(f for f in roles if task.critique_schema(f) == sub)
                answer[key] = representative_critique(task, fields, lang)
            else:
                answer[key] = representative_answer(task, role_of[frozenset(sub["properties"])], lang)
        return json.dumps(answer, ensure_ascii=False)
    return reply


def logged(db: Path) -> dict[str, tuple[int, int, int]]:
    """purpose -> (calls, prompt tokens, completion tokens) as the run logged them."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT purpose, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens)"
                            " FROM llm_calls GROUP BY purpose").fetchall()
    return {p: (n, int(pt), int(ct)) for p, n, pt, ct in rows}


# -- plan against a real run --------------------------------------------------------------------------------

def test_plan_counts_exactly_the_prompt_tokens_a_run_sends(tmp_path: Path) -> None:
    input = mixed_input(tmp_path / "in.jsonl")
    db = tmp_path / "runs.db"
    with FakeOpenAIServer(replies=representative_replies(TASK)) as srv:
        settings = Settings(model="openai:test-model", base_url=srv.base_url, db=str(db), samples=2)
        before = plan(input, TASK, settings)  # empty store: completions estimated from the schema
        summary = Annotator(TASK, settings=settings).run(input)
        sent = sum(count_prompt_tokens(body["messages"]) for body in srv.requests)
    assert not [b for b in srv.requests if len(b["messages"]) > 2]  # no re-asks
    labelled = sum(1 for d in read_dialogues(input) for t in d.turns if TASK.role_of(t.speaker))
    assert summary.failed == summary.turns - labelled  # the "Narrator" turns: no role, no call
    rows = {c.purpose: c for c in before.calls}
    assert set(rows) == set(Purpose)
    run = logged(db)
    for purpose, row in rows.items():
        calls, prompt_tokens, completion_tokens = run[purpose.value]
        assert (row.calls, row.prompt_tokens) == (row.sample_calls, row.sample_prompt_tokens)  # all sampled
        assert (row.calls, row.prompt_tokens) == (calls, prompt_tokens), purpose
        if purpose != Purpose.SAMPLE:  # samples are answered by the server's synthesizer, not the estimate
            assert row.completion_tokens == completion_tokens, purpose
            assert row.completion_source == "schema estimate"
    assert before.prompt_tokens == summary.prompt_tokens == sent
    assert before.dialogues == 6 and before.turns == summary.turns
    assert rows[Purpose.LABEL].calls == rows[Purpose.CRITIQUE].calls == labelled < before.turns
    assert rows[Purpose.SESSION].calls == 6
    assert 0.5 < before.cacheable_share < 1.0
    cost = price(settings)  # a loopback endpoint with no known price: unknown, or free where pricing says so
    assert before.price_source == cost.source
    assert (before.cost_usd == 0.0) if cost.known else (before.cost_usd is None and any("n/a" in n
                                                                                        for n in before.notes))

    after = plan(input, TASK, settings)  # the store now has this task and model's calls
    for row in after.calls:
        calls, _, completion_tokens = run[row.purpose.value]
        assert row.completion_source == f"observed mean of {calls} calls"
        assert row.completion_tokens == completion_tokens


def test_plan_counts_exactly_the_prompt_tokens_of_a_multi_turn_run(tmp_path: Path) -> None:
    input = mixed_input(tmp_path / "in.jsonl")
    db = tmp_path / "runs.db"
    with FakeOpenAIServer(replies=representative_window_replies(TASK)) as srv:
        settings = Settings(model="openai:test-model", base_url=srv.base_url, db=str(db), samples=2,
                            turns_per_call=3)
        before = plan(input, TASK, settings)
        Annotator(TASK, settings=settings).run(input)
        assert not [b for b in srv.requests if len(b["messages"]) > 2]
    run = logged(db)
    rows = {c.purpose: c for c in before.calls}
    assert set(rows) == set(Purpose)
    for purpose, row in rows.items():
        assert (row.calls, row.prompt_tokens) == run[purpose.value][:2], purpose
        if purpose != Purpose.SAMPLE:  # the representative answers, as the plan estimates them
            assert row.completion_tokens == run[purpose.value][2], purpose
    labelled = sum(1 for d in read_dialogues(input) for t in d.turns if TASK.role_of(t.speaker))
    windows = sum(any(TASK.role_of(t.speaker) for t in d.turns[i:i + 3])  # windows with a turn to label
                  for d in read_dialogues(input) for i in range(0, len(d.turns), 3))
    assert rows[Purpose.LABEL].calls == rows[Purpose.CRITIQUE].calls == windows < labelled
    # the observed completions of a multi-turn run are not taken for a one-turn plan, nor the other way round
    one = plan(input, TASK, settings.model_copy(update={"turns_per_call": 1}))
    assert all(c.completion_source == "schema estimate" for c in one.calls)
    again = plan(input, TASK, settings)
    assert all(c.completion_source.startswith("observed mean") for c in again.calls)


def test_plan_extrapolates_from_a_sample(tmp_path: Path) -> None:
    input = uniform_input(tmp_path / "in.jsonl", n=9)
    settings = Settings(model="openai:gpt-4o-mini", db=str(tmp_path / "none.db"))
    whole = plan(input, TASK, settings, sample_dialogues=100)
    part = plan(input, TASK, settings, sample_dialogues=3)
    assert (part.dialogues, part.turns, part.sample_dialogues, part.sample_turns) == (9, 27, 3, 9)
    assert [(c.purpose, c.calls, c.prompt_tokens) for c in part.calls] == \
        [(c.purpose, c.calls, c.prompt_tokens) for c in whole.calls]
    assert part.calls[0].sample_calls * 3 == part.calls[0].calls
    assert any("first 3 of 9" in n for n in part.notes) and not whole.notes
    assert not (tmp_path / "none.db").exists()  # planning never creates a store


def test_plan_options_change_the_calls(tmp_path: Path) -> None:
    input = uniform_input(tmp_path / "in.jsonl", n=2)
    base = Settings(model="openai:gpt-4o", db=str(tmp_path / "none.db"))
    default = {c.purpose: c for c in plan(input, TASK, base).calls}
    assert set(default) == {Purpose.LABEL, Purpose.CRITIQUE, Purpose.SESSION}
    three = {c.purpose: c for c in plan(input, TASK, base, samples=3).calls}
    assert three[Purpose.SAMPLE].calls == 2 * three[Purpose.LABEL].calls
    lean_settings = base.model_copy(update={"critique": False, "window": 0})
    lean = {c.purpose: c for c in plan(input, TASK, lean_settings).calls}
    assert Purpose.CRITIQUE not in lean
    assert lean[Purpose.LABEL].prompt_tokens < default[Purpose.LABEL].prompt_tokens  # no context turns


def test_plan_cost_uses_the_price_of_each_call(tmp_path: Path) -> None:
    input = uniform_input(tmp_path / "in.jsonl", n=2)
    p = plan(input, TASK, Settings(model="openai:x", price_in=2.0, price_out=8.0, db=str(tmp_path / "n.db")))
    expected = (p.prompt_tokens * 2.0 + p.completion_tokens * 8.0) / 1e6
    assert p.cost_usd == pytest.approx(expected, rel=1e-9)
    assert "--price-in/--price-out" in p.price_source
    known = plan(input, TASK, Settings(model="openai:gpt-4o-mini", db=str(tmp_path / "n.db")))
    assert known.cost_usd is not None and known.cost_usd > 0 and "genai-prices" in known.price_source


# -- prices -------------------------------------------------------------------------------------------------

def test_prices_come_from_genai_prices_overrides_or_nowhere() -> None:
    mini = price(Settings(model="openai:gpt-4o-mini"))
    assert mini.known and "genai-prices" in mini.source and "gpt-4o-mini" in mini.source
    assert mini.cost(1_000_000, 0) == pytest.approx(0.15)  # per million prompt tokens, as OpenAI lists it
    full, cached = mini.cost(1_000_000, 0), mini.cost(1_000_000, 0, cached_tokens=1_000_000)
    assert full is not None and cached is not None and cached < full  # cache reads are cheaper
    assert price(Settings(model="local:qwen2.5-0.5b")).cost(10**6, 10**6) == 0.0
    own = price(Settings(model="openai:my-model", base_url="http://127.0.0.1:9/v1", price_in=1, price_out=3))
    assert own.cost(2_000_000, 1_000_000) == pytest.approx(5.0)
    unknown = price(Settings(model="openai:my-model", base_url="https://llm.example.org/v1"))  # loopback: no cost
    assert not unknown.known and unknown.cost(100, 100) is None and "--price-in" in unknown.source
    with pytest.raises(ConfigError, match="together"):
        price(Settings(model="openai:gpt-4o", price_in=1.0))


def test_a_budget_needs_a_price() -> None:
    fn, source = pricer(Settings(model="openai:my-model", base_url="https://llm.example.org/v1"))
    assert fn(1000, 1000) == 0.0 and "n/a" in source
    with pytest.raises(ConfigError, match="--max-cost"):
        pricer(Settings(model="openai:my-model", base_url="https://llm.example.org/v1", max_cost=1.0))


# -- --max-cost ---------------------------------------------------------------------------------------------

def final_records(db: Path) -> list[tuple[str, str, int]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT dialogue_id, kind, turn_index FROM annotations"
                            " WHERE is_final=1").fetchall()


def dialogue_states(db: Path) -> dict[str, str]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT dialogue_id, status FROM dialogues").fetchall())


def stored_cost(db: Path) -> float:
    """What the run's calls cost, as the call log has it."""
    with sqlite3.connect(db) as conn:
        return float(conn.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM llm_calls").fetchone()[0])


def assert_clean(db: Path, input: Path) -> set[str]:
    """Nothing half-written. A dialogue is either done (all its turns stored, exactly one final record per turn
    plus its session, every valid record valid for the schema and the task), or it was stopped by the budget: still
    'running', nothing of it stored, and a checkpoint to resume from. Returns the done ones."""
    states = dialogue_states(db)
    assert set(states.values()) <= {"done", "running"}, states
    done = {d for d, s in states.items() if s == "done"}
    turns = {d.id: len(d.turns) for d in read_dialogues(input)}
    with sqlite3.connect(db) as conn:
        (run_id,) = conn.execute("SELECT id FROM runs").fetchone()
        records = conn.execute("SELECT dialogue_id, kind, turn_index, valid, record_json FROM annotations"
                               " WHERE is_final=1").fetchall()
        stored_turns = conn.execute("SELECT dialogue_id FROM turns").fetchall()
        threads = {t for (t,) in conn.execute("SELECT DISTINCT thread_id FROM checkpoints")}
        written = {d for table in ("annotations", "review_items")
                   for (d,) in conn.execute(f"SELECT DISTINCT dialogue_id FROM {table}")}
    assert written <= done
    keys = [(d, k, i) for d, k, i, _, _ in records]
    assert len(keys) == len(set(keys))
    assert {d for d, *_ in records} == {d for (d,) in stored_turns} == done
    for did in done:
        assert sorted(i for d, k, i in keys if d == did and k == "turn") == list(range(turns[did]))
        assert [k for d, k, _ in keys if d == did].count("session") == 1
        assert stored_turns.count((did,)) == turns[did]
    for d, k, i, valid, record in records:
        assert not valid or record_problems(json.loads(record), TASK) == [], (d, k, i)
    assert {f"{run_id}:{d}" for d in set(states) - done} <= threads  # resumable
    return done


def assert_turns_add_up(db: Path, summary: RunSummary, done: set[str], input: Path) -> None:
    with sqlite3.connect(db) as conn:
        by_status = dict(conn.execute("SELECT status, COUNT(*) FROM turns GROUP BY status").fetchall())
    counted = {"accepted": summary.accepted, "flagged": summary.flagged, "failed": summary.failed}
    assert by_status == {k: v for k, v in counted.items() if v}
    assert summary.turns == sum(counted.values()) == sum(len(d.turns) for d in read_dialogues(input)
                                                         if d.id in done)


def test_a_call_is_admitted_only_if_its_worst_case_fits() -> None:
    """$1 a prompt token, $10 a completion token; every request here has 10 prompt tokens and max_tokens=5: a
    worst case of $60 against a limit of $100."""
    request = {"messages": [{"role": "user", "content": "x" * 10}], "max_tokens": 5}

    async def scenario() -> None:
        budget = Budget(100.0, lambda p, c: p + 10.0 * c, lambda kw: len(kw["messages"][0]["content"]), 512)
        assert budget.worst_case(request) == 60.0
        a = await budget.admit(request)
        b = asyncio.create_task(budget.admit(request))  # 60 + 60 would pass 100: waits for the call in flight
        await asyncio.sleep(0.01)
        assert not b.done() and budget.reserved == 60.0
        budget.settle(a, 20.0)  # a cost less than its worst case: b fits now (20 + 60)
        assert await b == 60.0 and budget.spent == 20.0 and budget.reserved == 60.0
        c = asyncio.create_task(budget.admit(request))
        await asyncio.sleep(0.01)
        assert not c.done()
        budget.settle(60.0, 30.0)  # spent 50: c's 60 would not fit even with nothing in flight
        with pytest.raises(BudgetExceeded) as e:
            await c
        assert (e.value.spent, e.value.limit, budget.closed) == (50.0, 100.0, True)
        cheap = {**request, "max_tokens": 1}  # $20 would fit, but the budget is closed: the run is stopping
        with pytest.raises(BudgetExceeded):
            await budget.admit(cheap)
        assert budget.spent == 50.0 and budget.reserved == 0.0 and budget.in_flight == 0

    async def refusal_waits_for_the_calls_in_flight() -> None:
        budget = Budget(100.0, lambda p, c: p + 10.0 * c, lambda kw: len(kw["messages"][0]["content"]), 512)
        a = await budget.admit(request)
        refused = asyncio.create_task(budget.admit({**request, "max_tokens": 10}))  # $110: never fits
        await asyncio.sleep(0.01)
        assert budget.closed and not refused.done()  # raised only once nothing is in flight
        budget.settle(a, 25.0)
        with pytest.raises(BudgetExceeded) as e:
            await refused
        assert e.value.spent == 25.0

    asyncio.run(scenario())
    asyncio.run(refusal_waits_for_the_calls_in_flight())


def test_without_max_cost_every_call_is_admitted() -> None:
    budget = Budget.of(Settings(model="openai:gpt-4o-mini"), lambda p, c: 1e9)
    assert asyncio.run(budget.admit({"messages": [{"role": "user", "content": "hi"}]})) == 0.0
    budget.settle(0.0, 0.5)
    assert budget.spent == 0.5 and not budget.closed


@pytest.mark.parametrize("concurrency", [1, 3, 8])
def test_max_cost_is_never_passed_and_a_higher_budget_resumes(tmp_path: Path, concurrency: int) -> None:
    input = mixed_input(tmp_path / "in.jsonl", n=8)  # English and Chinese
    db = tmp_path / "runs.db"
    every = {d.id for d in read_dialogues(input)}
    # a little latency: at concurrency 8 calls overlap, and a refusal meets calls in flight
    with FakeOpenAIServer(replies=representative_replies(TASK), latency=0.02) as srv:
        settings = Settings(model="openai:test-model", base_url=srv.base_url, db=str(db), price_in=1000.0,
                            price_out=1000.0, concurrency=concurrency)
        estimate = plan(input, TASK, settings).cost_usd
        assert estimate is not None
        limit = 2.5 * estimate / 8  # two and a half dialogues' worth
        first = Annotator(TASK, settings=settings.model_copy(update={"max_cost": limit})).run(input)
        assert first.stopped_reason == "budget"
        spent = stored_cost(db)
        assert spent <= limit and first.cost_usd == pytest.approx(spent)
        done = assert_clean(db, input)
        assert len(done) == first.dialogues < 8 and first.skipped_dialogues == first.resumed_dialogues == 0
        begun = len(dialogue_states(db)) - len(done)
        assert 0 < begun <= concurrency  # stopped mid-way; no new one started
        assert_turns_add_up(db, first, done, input)
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT status FROM runs").fetchall() == [("stopped",)]
        sent_first = len(srv.requests)

        second = Annotator(TASK, settings=settings.model_copy(update={"max_cost": 100 * limit})).run(input)
    assert second.stopped_reason is None and second.skipped_dialogues == len(done)
    assert second.resumed_dialogues == begun  # continued from their checkpoints
    assert assert_clean(db, input) == every
    assert_turns_add_up(db, second, every, input)  # the stored dialogues are counted too
    assert len([r for r in final_records(db) if r[1] == "turn"]) == sum(len(d.turns) for d in read_dialogues(input))
    bodies = [json.dumps(b, sort_keys=True) for b in srv.requests]
    assert len(bodies) == len(set(bodies))  # no call answered before was sent again: the cache answered it
    # the budget was used: what was left is less than the worst case of one call (the refused one)
    budget = Budget.of(settings, pricer(settings)[0])
    assert sent_first > 0 and limit - spent < max(budget.worst_case(b) for b in srv.requests)
    assert stored_cost(db) == pytest.approx(spent + second.cost_usd)
    for body in srv.requests:  # the estimate is never below what the endpoint counts
        assert budget.count(body) >= count_prompt_tokens(body["messages"])


def test_the_prompt_estimate_of_an_openai_model_is_its_token_count() -> None:
    fields = TASK.fields_for("seeker")
    assert fields is not None
    messages = [{"role": "system", "content": prompts.label_system(TASK, fields, "zh")},
                {"role": "user", "content": "我最近很焦虑，晚上睡不着觉。"}]
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": TASK.output_schema(fields)}}
    count = prompt_counter("openai", "gpt-4o-mini")
    assert count({"messages": messages}) == count_prompt_tokens(messages)  # o200k_base, the cookbook formula
    with_schema = count({"messages": messages, "response_format": schema})
    assert with_schema == count_prompt_tokens(messages) + len(encoding().encode(json.dumps(schema, ensure_ascii=False)))
    approx = prompt_counter("openai", "my-llama")({"messages": messages})  # unknown tokenizer: UTF-8 bytes
    assert approx >= 2 * count_prompt_tokens(messages)


def test_the_streaming_api_raises_budget_exceeded_after_the_finished_results(tmp_path: Path) -> None:
    input = uniform_input(tmp_path / "in.jsonl", n=4)
    with FakeOpenAIServer(replies=representative_replies(TASK)) as srv:
        settings = Settings(model="openai:test-model", base_url=srv.base_url, db=str(tmp_path / "r.db"),
                            price_in=1000.0, price_out=1000.0, concurrency=1)
        estimate = plan(input, TASK, settings).cost_usd
        assert estimate is not None
        limit = 2 * estimate / 4
        results = []
        with pytest.raises(BudgetExceeded) as e:
            for r in Annotator(TASK, settings=settings.model_copy(update={"max_cost": limit})).annotate_many(
                    read_dialogues(input)):
                results.append(r)
    assert 1 <= len(results) < 4 and all(len(r.turns) == 3 and r.session is not None for r in results)
    assert e.value.limit == limit and 0 < e.value.spent <= limit


# -- the CLI ------------------------------------------------------------------------------------------------

def test_cli_plan_prints_the_table_and_where_prices_come_from(tmp_path: Path) -> None:
    input = mixed_input(tmp_path / "in.jsonl")
    r = runner.invoke(app, ["plan", str(input), "--model", "openai:gpt-4o-mini", "--db",
                            str(tmp_path / "n.db"), "--samples", "2", "--sample-dialogues", "4"],
                      env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    for text in ("label", "sample", "critique", "session", "total", "cacheable prefix", "genai-prices",
                 "tiktoken o200k_base", "first 4 of 6"):
        assert text in r.output
    r = runner.invoke(app, ["plan", str(input), "--model", "openai:my-model", "--base-url",
                            "https://llm.example.org/v1", "--db", str(tmp_path / "n.db")], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "n/a" in r.output and "--price-in" in r.output
    r = runner.invoke(app, ["plan", str(input), "--model", "openai:my-model", "--price-in", "1",
                            "--price-out", "2", "--db", str(tmp_path / "n.db")], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "n/a" not in r.output and "$1/M prompt" in r.output
    r = runner.invoke(app, ["plan", str(input), "--model", "openai:my-model", "--price-in", "1"])
    assert isinstance(r.exception, ConfigError)


def test_cli_run_stops_at_max_cost_with_its_exit_code_and_resumes(tmp_path: Path) -> None:
    input = uniform_input(tmp_path / "in.jsonl", n=4)
    db = tmp_path / "runs.db"
    with FakeOpenAIServer(replies=representative_replies(TASK)) as srv:
        args = ["run", str(input), "--model", "openai:test-model", "--base-url", srv.base_url, "--db",
                str(db), "--concurrency", "1", "--price-in", "1000", "--price-out", "1000"]
        r = runner.invoke(app, [*args, "--max-cost", "0.000001"], env={"COLUMNS": "200"})
        assert r.exit_code == BudgetExceeded.exit_code == 6, r.output
        assert "stopped: budget" in r.output and "--max-cost" in r.output
        assert "prices from --price-in" in r.output
        assert srv.requests == []  # not even the first call fits: nothing is sent, nothing spent
        assert assert_clean(db, input) == set() and dialogue_states(db) == {"u0": "running"}
        r = runner.invoke(app, [*args, "--max-cost", "1000"], env={"COLUMNS": "200"})
        assert r.exit_code == 0, r.output
        assert "stopped" not in r.output
    assert len(assert_clean(db, input)) == 4


# -- local models -------------------------------------------------------------------------------------------

def test_plan_counts_a_local_models_prompts_with_its_own_tokenizer(tmp_path: Path) -> None:
    """SmolLM2 (the [local] extra): its chat template and tokenizer, which the local backend reports as usage
    (tests/test_local.py); that plan builds the graph's messages is pinned by the scripted-server test above."""
    turn = Turn(index=0, speaker="Seeker", text="I failed my driving test again and I feel like an idiot.")
    input = write_jsonl(tmp_path / "in.jsonl", [Dialogue(id="l1", turns=(turn,))])
    settings = Settings(model="local:smollm2-135m", model_dir=tmp_path / "models", local_threads=2,
                        db=str(tmp_path / "none.db"), critique=False)
    p = plan(input, TASK, settings)
    assert p.tokenizer == "smollm2-135m's own chat template and tokenizer"
    assert p.cost_usd == 0.0 and "no cost" in p.price_source
    requests = RequestBuilder(TASK, settings)
    fields = requests.fields("seeker")  # labels only: smollm2 is too small to explain (Settings.texts)
    assert fields is not None and not fields.texts
    d = next(read_dialogues(input))
    messages = requests.label(Excerpt(dialogue_id=d.id, turns=d.turns), 0, fields, "en").messages
    label = next(c for c in p.calls if c.purpose == Purpose.LABEL)
    assert label.sample_prompt_tokens == local.count_tokens("smollm2-135m", messages, settings)
    assert label.sample_prompt_tokens != count_prompt_tokens(messages)  # not o200k's count


def test_plan_approximates_a_local_model_that_is_not_installed(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    ghost = local.split_model("ghost-1b", "nowhere", "autolabel-ghost-part", "1", 2, 10, "0" * 64, ("en",))
    monkeypatch.setitem(local.MODELS, "ghost-1b", ghost)
    input = uniform_input(tmp_path / "in.jsonl", n=1)
    p = plan(input, TASK, Settings(model="local:ghost-1b", model_dir=tmp_path / "m", db=str(tmp_path / "n")))
    assert p.tokenizer.startswith("o200k_base (approximation")
    assert any("approximated" in n and "pip install" in n for n in p.notes) and p.prompt_tokens > 0
    assert p.cost_usd == 0.0
