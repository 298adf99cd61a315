"""Reversible pseudonymisation: what is replaced, what is kept, and that restore gives the text back; and
``autolabel enqueue --redact``, whose workers send placeholders (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autolabel import Annotator, Store
from autolabel.cli import app
from autolabel.safety.redact import Redactor
from tests.conftest import write_jsonl
from tests.fake_openai import FakeOpenAIServer
from tests.pg import engine_fixture, new_db_fixture  # noqa: F401  (fixtures ``engine`` and ``new_db``)
from tests.test_privacy import EN, EN_SECRETS, PLACEHOLDER, ZH, ZH_SECRETS, echo_placeholders

# (turn, the personal details in it that must not survive redaction)
EN_TURNS = [
    ("Hi, my name is Sarah Connor, I'm 34.", ["Sarah Connor", "Sarah", "Connor"]),
    ("Reach me at sarah.connor@example.com or (415) 555-0100.", ["sarah.connor@example.com", "555-0100"]),
    ("My old number was +1 415 555 0199 and the office is 555-0123.", ["415 555 0199", "555-0123"]),
    ("Dr. Patel said I should talk to Mrs. Okafor about it.", ["Patel", "Okafor"]),
    ("I moved to 123 Main Street, Apt 4 after the divorce.", ["123 Main Street", "Apt 4"]),
    ("My ex still lives at 45 Oak Ave. with his new girlfriend.", ["45 Oak Ave"]),
    ("Michael never listens, and Jennifer takes his side.", ["Michael", "Jennifer"]),
    ("I'm Daniel.", ["Daniel"]),
    ("Sarah's mom called me at 415-555-0100 yesterday.", ["Sarah", "415-555-0100"]),
    ("Mr. Will Turner from HR emailed will.turner@corp.io.", ["Will Turner", "will.turner@corp.io"]),
]
ZH_TURNS = [
    ("我叫李明，今年二十岁。", ["李明"]),
    ("我的名字是王芳。", ["王芳"]),
    ("我的电话是138 1234 5678，也可以打13812345678。", ["138 1234 5678", "13812345678"]),
    ("办公室电话020-12345678，或者+86 138-1234-5678。", ["020-12345678", "138-1234-5678"]),
    ("我的邮箱是 wang.fang@qq.com", ["wang.fang@qq.com"]),
    ("我住在广东省深圳市南山区科技园路100号。", ["深圳市南山区科技园路100号", "科技园路100号"]),
    ("以前住人民路123号，后来搬到解放街5号301室。", ["人民路123号", "解放街5号301室"]),
    ("王老师和小张都劝我去看医生。", ["王老师", "小张"]),
    ("张伟先生是我的邻居，他叫张伟。", ["张伟"]),
    ("我男朋友名叫陈浩然，他总是骂我。", ["陈浩然", "浩然"]),
]


@pytest.mark.parametrize(("turn", "secrets"), EN_TURNS + ZH_TURNS)
def test_no_personal_detail_survives_and_restore_gives_the_turn_back(turn, secrets):
    r = Redactor()
    redacted = r.redact(turn)
    for secret in secrets:
        assert secret not in redacted, redacted
    assert r.restore(redacted) == turn


def test_whole_corpus_through_one_redactor():
    r = Redactor()
    turns = [t for t, _ in EN_TURNS + ZH_TURNS]
    redacted = [r.redact(t) for t in turns]
    for (_, secrets), out in zip(EN_TURNS + ZH_TURNS, redacted, strict=True):
        assert not [s for s in secrets if s in out], out
    assert [r.restore(x) for x in redacted] == turns


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Write to sarah@example.com please", "Write to [EMAIL_1] please"),
        ("Call (415) 555-0100 now", "Call [PHONE_1] now"),
        ("Call +1 415 555 0100 now", "Call [PHONE_1] now"),
        ("Call 555-0100 now", "Call [PHONE_1] now"),
        ("I live at 123 Main Street, Apt 4.", "I live at [ADDRESS_1]."),
        ("I talked to Dr. Smith today.", "I talked to Dr. [NAME_1] today."),
        ("My name is Tom.", "My name is [NAME_1]."),
        ("Jessica said no.", "[NAME_1] said no."),
        ("我的邮箱是a.b@163.com", "我的邮箱是[EMAIL_1]"),
        ("打13812345678找我", "打[PHONE_1]找我"),
        ("我家在北京市朝阳区建国路88号", "我家在[ADDRESS_1]"),
        ("地址是解放街5号301室。", "地址是[ADDRESS_1]。"),
        ("我叫李明。", "我叫[NAME_1]。"),
        ("我是王芳，今年三十岁。", "我是[NAME_1]，今年三十岁。"),
        ("刘女士和老王吵架了。", "[NAME_1]女士和老[NAME_2]吵架了。"),
        ("他叫赵磊，是我同事。", "他叫[NAME_1]，是我同事。"),
    ],
)
def test_each_kind_is_replaced_with_a_numbered_placeholder(text, expected):
    assert Redactor().redact(text) == expected


def test_placeholders_are_stable_across_turns_and_calls():
    r = Redactor()
    first = r.redact("Sarah called me from 415-555-0100.")
    second = r.redact("Then Sarah called again, same number 415-555-0100, and Emily too.")
    assert first == "[NAME_1] called me from [PHONE_1]."
    assert second == "Then [NAME_1] called again, same number [PHONE_1], and [NAME_2] too."
    assert r.redact("Sarah called me from 415-555-0100.") == first
    assert r.mapping == {"[NAME_1]": "Sarah", "[PHONE_1]": "415-555-0100", "[NAME_2]": "Emily"}


def test_separate_redactors_do_not_share_placeholders():
    a, b = Redactor(), Redactor()
    a.redact("Emily is here.")
    assert b.redact("Sarah is here.") == "[NAME_1] is here."
    assert b.restore("[NAME_1]") == "Sarah"


def test_ordinary_words_that_are_also_names_are_kept():
    text = "I hope it will be better in May. Mark my words: grace and joy matter, Bill or no bill."
    assert Redactor().redact(text) == text


def test_ambiguous_names_are_redacted_after_a_title_or_introduction():
    r = Redactor()
    assert r.redact("I spoke with Mrs. May yesterday.") == "I spoke with Mrs. [NAME_1] yesterday."
    assert r.redact("Hi, my name is Grace.") == "Hi, my name is [NAME_2]."
    # ...but not elsewhere, even once seen
    assert r.redact("I hope May comes soon, by God's grace.") == "I hope May comes soon, by God's grace."


def test_self_introduction_only_takes_names():
    r = Redactor()
    for text in ["I'm Tired.", "I'm Sorry.", "I'm Chinese.", "I'm fine.", "Call me tomorrow."]:
        assert r.redact(text) == text
    assert r.redact("I'm Zephyr.") == "I'm [NAME_1]."


def test_chinese_ordinary_words_are_kept():
    text = "我是高中生。历史老师说分数小于六十就要补考，我们马上要考试了。我叫外卖了"
    assert Redactor().redact(text) == text


def test_registered_names_are_replaced_everywhere_ignoring_case():
    r = Redactor(names=["Zephyr Quill", "欧阳娜娜"])
    out = r.redact("zephyr told QUILL about Zephyr Quill; 欧阳娜娜和娜娜")
    assert "ephyr" not in out.lower() and "quill" not in out.lower() and "娜娜" not in out
    assert r.restore(out) == "zephyr told QUILL about Zephyr Quill; 欧阳娜娜和娜娜"


def test_a_registered_name_that_is_a_common_word_keeps_its_case():
    r = Redactor(names=["Will"])
    assert r.redact("Will said he will come.") == "[NAME_1] said he will come."


def test_registered_name_with_a_quote_is_refused():
    with pytest.raises(ValueError, match="quotes"):
        Redactor(names=['Bob "the builder"'])


def test_names_learned_once_are_caught_later_without_a_cue():
    r = Redactor()
    r.redact("Dr. Okonkwo is my therapist.")
    assert r.redact("Okonkwo said I was doing better.") == "[NAME_1] said I was doing better."
    r.redact("他叫张伟。")
    assert r.redact("张伟很好") == "[NAME_2]很好"


def test_prime_learns_names_from_the_whole_dialogue_before_redacting():
    turns = ["Zephyr was angry again.", "Who is that?", "My partner, Mr. Zephyr Quill."]
    r = Redactor()
    r.prime(turns)
    redacted = [r.redact(t) for t in turns]
    assert not any("Zephyr" in t or "Quill" in t for t in redacted)
    assert [r.restore(t) for t in redacted] == turns


def test_restore_inside_model_json_output():
    r = Redactor()
    turn = "Sarah Connor (sarah@example.com, 415-555-0100) lives at 9 Elm Street. 我叫李明。"
    redacted = r.redact(turn)
    model_output = json.dumps(
        {
            "explanation": f"The client mentions {r.redact('Sarah Connor')} and her phone [PHONE_1].",
            "evidence": ["[EMAIL_1]", "[ADDRESS_1]", "[NAME_2]"],
            "labels": {"emotion": ["Sadness"]},
        },
        ensure_ascii=True,
    )
    restored = json.loads(r.restore(model_output))
    assert restored["explanation"] == "The client mentions Sarah Connor and her phone 415-555-0100."
    assert restored["evidence"] == ["sarah@example.com", "9 Elm Street", "李明"]
    assert r.restore(redacted) == turn


def test_restore_tolerates_small_changes_and_leaves_unknown_placeholders():
    r = Redactor()
    r.redact("Jessica lives at 12 Oak Road.")
    text = "[ NAME_1 ] and [name_1] and NAME_1, at [ADDRESS 1]; [NAME_7] is unknown."
    assert r.restore(text) == "Jessica and Jessica and Jessica, at 12 Oak Road; [NAME_7] is unknown."
    assert r.restore("[NAME_10]") == "[NAME_10]"


def test_restore_obj_recurses_into_dicts_lists_and_tuples():
    r = Redactor()
    r.redact("Emily, emily@x.org")
    obj = {"[NAME_1]": ["[EMAIL_1]", ("[NAME_1]", 3)], "n": 1.5, "none": None, "nested": {"k": "hi [NAME_1]"}}
    assert r.restore_obj(obj) == {
        "Emily": ["emily@x.org", ("Emily", 3)],
        "n": 1.5,
        "none": None,
        "nested": {"k": "hi Emily"},
    }


def test_dates_times_and_small_numbers_are_not_phones():
    text = "On 2023-10-05 at 10:30 I slept 8 hours; it cost $1,500 and I'm 34. 2019年到2021年。"
    assert Redactor().redact(text) == text


def test_mapping_is_a_copy():
    r = Redactor()
    r.redact("Emily")
    r.mapping.clear()
    assert r.restore("[NAME_1]") == "Emily"


# -- autolabel enqueue --redact ---------------------------------------------------------------------------------------

def test_enqueue_redact_flag_makes_the_workers_send_placeholders(new_db: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTOLABEL_REDACT", raising=False)
    input = write_jsonl(tmp_path / "in.jsonl", [EN, ZH])
    runner = CliRunner()
    queued = runner.invoke(app, ["enqueue", str(input), "--db", new_db, "--model", "openai:test", "--redact"])
    assert queued.exit_code == 0, queued.output
    # the run autolabel run --redact would make: redact is one of its parameters, so the workers follow it
    run_id = Annotator("psy-insight", model="openai:test", redact=True).run_id(str(input.resolve()))
    assert run_id != Annotator("psy-insight", model="openai:test").run_id(str(input.resolve()))
    assert f"run {run_id}: 2 dialogue(s) queued" in queued.output
    with FakeOpenAIServer(replies=echo_placeholders) as srv:
        worked = runner.invoke(app, ["worker", "--db", new_db, "--base-url", srv.base_url])
        sent = [json.dumps(b, ensure_ascii=False) for b in srv.requests]
    assert worked.exit_code == 0, worked.output
    assert len(sent) == 2 * (2 * 4 + 1)  # label and critique per turn, a session call per dialogue
    assert not [s for s in EN_SECRETS + ZH_SECRETS for body in sent if s in body]
    assert all(PLACEHOLDER.search(body) for body in sent)
    with closing(Store.open(new_db)) as store:  # the model's texts quoted placeholders; the store has the originals
        assert store.run(run_id)["status"] == "finished"
        records = list(store.final_records(run_id))
    stored = json.dumps([(r["texts"], (r.get("critique") or {}).get("reason")) for r in records], ensure_ascii=False)
    assert len(records) == 2 * 4 + 2 and not PLACEHOLDER.search(stored)
    assert "sarah.connor@example.com" in stored and "13812345678" in stored
