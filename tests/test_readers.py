"""Tests of autolabel.readers: the three input formats, every error kind with its line, streaming, fuzzing."""

from __future__ import annotations

import csv
import io
import json
import random
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autolabel import readers
from autolabel.errors import InputError
from autolabel.models import Dialogue
from autolabel.readers import InputFormat, count_input, detect_format, read_dialogues
from tests.conftest import shared_file

MB = 1024 * 1024
CSV_COLUMNS = ("dialogue_id", "turn_index", "speaker", "text")


def collect(path: Path, fmt: InputFormat | None = None) -> tuple[list[Dialogue], list[InputError]]:
    errors: list[InputError] = []
    dialogues = list(read_dialogues(path, format=fmt, on_error=errors.append))
    return dialogues, errors


def where(errors: list[InputError]) -> list[tuple[int | None, str | None]]:
    return [(e.line, e.field) for e in errors]


def jsonl(path: Path, *records: Any) -> Path:
    """One line per record; a str is written as the raw line."""
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def rec(did: Any, *texts: str, **extra: Any) -> dict[str, Any]:
    turns = [{"speaker": ["client", "therapist"][i % 2], "text": t} for i, t in enumerate(texts)]
    return {"id": did, "turns": turns, **extra}


def csv_file(path: Path, rows: list[list[Any]], header: tuple[str, ...] = CSV_COLUMNS) -> Path:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8", newline="")
    return path


def psy_session(did: str, n_turns: int = 2) -> dict[str, Any]:
    """A session with the Psy-Insight keys (invented text, not the real data)."""
    turns = []
    for i in range(n_turns):
        seeker = i % 2 == 1
        turn: dict[str, Any] = {"speaker": "Seeker" if seeker else "Supporter",
                                "participant": "Client" if seeker else "Therapist",
                                "content": f"utterance {i} of {did}", "id": f"1-{i}"}
        if seeker:
            turn.update({"emotional label": ["Anxious", "Others"], "observation": "worried"})
        else:
            turn.update({"strategy": ["Question"], "reasoning": "explores", "reference_labels": ["[pause]"]})
        turns.append(turn)
    return {"dialog_id": did, "theme": "t", "psychotherapy": "CBT", "topic": "Job Crisis", "stage": "",
            "guide": "", "is_same_qa": 0, "is_same_session": 1, "background": "b", "reasoning": "r",
            "dialog": turns, "summary": "s"}


# ------------------------------------------------------------------------------------------- detection


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("a.jsonl", "", InputFormat.JSONL),
    ("a.NDJSON", "", InputFormat.JSONL),
    ("a.csv", "", InputFormat.CSV),
    ("a.json", json.dumps([psy_session("1")]), InputFormat.PSY_INSIGHT),
    ("a.json", json.dumps([rec("1", "hi")]), InputFormat.JSON),
    ("a.json", "[]", InputFormat.PSY_INSIGHT),
])
def test_detect_format(tmp_path: Path, name: str, content: str, expected: InputFormat) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert detect_format(path) is expected
    assert detect_format(str(path)) is expected


def test_unknown_extension_is_an_input_error(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "a.txt", rec("a", "x"))
    for call in (lambda: detect_format(path), lambda: read_dialogues(path, on_error=lambda e: None)):
        with pytest.raises(InputError) as info:
            call()
        assert info.value.line is None and info.value.source == str(path)
    assert [d.id for d in read_dialogues(path, format=InputFormat.JSONL)] == ["a"]
    assert [d.id for d in read_dialogues(path, format="jsonl")] == ["a"]  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", [None, *InputFormat])
def test_missing_file_and_directory_raise_whatever_on_error(tmp_path: Path, fmt: InputFormat | None) -> None:
    for path in (tmp_path / "missing.jsonl", tmp_path):
        with pytest.raises(InputError) as info:
            read_dialogues(path, format=fmt, on_error=lambda e: None)
        assert info.value.line is None and info.value.source == str(path)
        with pytest.raises(InputError):
            count_input(path, format=fmt)


# ---------------------------------------------------------------------------------------------- JSONL


def test_jsonl_happy_path_with_aliases_meta_and_blank_lines(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path / "in.jsonl",
        {"id": "a", "lang": "en", "turns": [{"speaker": "client", "text": "hi", "gold": ["x"]},
                                             {"role": "therapist", "content": "hello"}]},
        "",
        "   ",
        {"dialogue_id": 7, "turns": [{"speaker": "c", "text": "one"}]},
    )
    dialogues = list(read_dialogues(path))
    assert [d.id for d in dialogues] == ["a", "7"]
    first, second = dialogues
    assert first.meta == {"lang": "en"} and first.source == f"{path}:1"
    assert [(t.index, t.speaker, t.text, t.meta) for t in first.turns] == [
        (0, "client", "hi", {"gold": ["x"]}), (1, "therapist", "hello", {})]
    assert second.source == f"{path}:4" and second.meta == {}
    assert count_input(path) == (2, 3)


@pytest.mark.parametrize(("line", "field", "detail"), [
    ('{"id": "x", "turns": [', None, "invalid JSON"),
    ('["not", "an", "object"]', None, "must be an object"),
    ('{"turns": [{"speaker": "a", "text": "t"}]}', "id", "missing"),
    ('{"id": 1.5, "turns": [{"speaker": "a", "text": "t"}]}', "id", "must be a string"),
    ('{"id": true, "turns": [{"speaker": "a", "text": "t"}]}', "id", "must be a string"),
    ('{"id": "  ", "turns": [{"speaker": "a", "text": "t"}]}', "id", "is empty"),
    ('{"id": "x", "turns": "hello"}', "turns", "must be a list"),
    ('{"id": "x"}', "turns", "missing"),
    ('{"id": "x", "turns": []}', "turns", "is empty"),
    ('{"id": "x", "turns": ["hi"]}', "turns[0]", "must be an object"),
    ('{"id": "x", "turns": [{"speaker": "a", "text": "t"}, {"text": "t"}]}', "turns[1].speaker", "missing"),
    ('{"id": "x", "turns": [{"speaker": "a", "text": 5}]}', "turns[0].text", "must be a string"),
    ('{"id": "x", "turns": [{"speaker": "a", "text": " \\n\\t "}]}', "turns[0].text", "is empty"),
    ('{"id": "x", "turns": [{"speaker": "a", "text": ""}]}', "turns[0].text", "is empty"),
    ('{"id": "x", "turns": [{"speaker": "a", "text": "\\ud800"}]}', "turns[0].text", "invalid Unicode"),
    pytest.param("[" * 100_000 + "]" * 100_000, None, "nested too deeply", id="deep-list"),
    pytest.param('{"id": "x", "turns": ' + "[" * 100_000, None, "nested too deeply", id="deep-truncated"),
])
def test_jsonl_bad_record_is_reported_with_its_line_and_neighbours_survive(
        tmp_path: Path, line: str, field: str | None, detail: str) -> None:
    path = jsonl(tmp_path / "in.jsonl", rec("before", "a"), "", line, rec("after", "b"))
    dialogues, errors = collect(path)
    assert [d.id for d in dialogues] == ["before", "after"]
    assert where(errors) == [(3, field)]
    assert detail in errors[0].detail and errors[0].source == str(path)
    assert dialogues[1].source == f"{path}:4"
    with pytest.raises(InputError) as info:  # on_error=None raises the first error
        list(read_dialogues(path))
    assert (info.value.line, info.value.field) == (3, field)


def test_jsonl_invalid_utf8_is_reported_and_reading_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    good = [json.dumps(rec(i, "ok")).encode() for i in range(3)]
    path.write_bytes(good[0] + b"\n" + b'{"id": "bad", "turns": [{"speaker": "a", "text": "\xff\xfe"}]}\n'
                     + good[1] + b"\n\xc3\n" + good[2] + b"\n")
    dialogues, errors = collect(path)
    assert [d.id for d in dialogues] == ["0", "1", "2"]
    assert where(errors) == [(2, None), (4, None)]
    assert all("invalid UTF-8" in e.detail for e in errors)


def test_jsonl_duplicate_id_keeps_the_first(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "in.jsonl", rec("a", "first"), rec("b", "x"), rec("a", "second"), rec(5, "y"),
                 rec("5", "z"))
    dialogues, errors = collect(path)
    assert [(d.id, d.turns[0].text) for d in dialogues] == [("a", "first"), ("b", "x"), ("5", "y")]
    assert where(errors) == [(3, "id"), (5, "id")]
    assert "first at line 1" in errors[0].detail


def test_jsonl_crlf_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(rec("a", "x")).encode() + b"\r\n\r\n"
                     + json.dumps(rec("b", "y")).encode() + b"\r\n")
    dialogues, errors = collect(path)
    assert errors == [] and [(d.id, d.source) for d in dialogues] == [("a", f"{path}:1"), ("b", f"{path}:3")]


# ------------------------------------------------------------------------------------------------ CSV


def test_csv_happy_path_sorts_turns_and_counts_physical_lines(tmp_path: Path) -> None:
    path = csv_file(tmp_path / "in.csv", [
        ["d1", "2", "client", "third", "x2"],
        ["d1", "0", "client", "first\nspans two lines", "x0"],
        ["d1", "1", "therapist", 'says "hi", twice', ""],
        ["d2", "10", "client", "only", "y"],
    ], header=(*CSV_COLUMNS, "gold"))
    dialogues, errors = collect(path)
    assert errors == []
    d1, d2 = dialogues
    assert [(t.index, t.speaker, t.text, t.meta) for t in d1.turns] == [
        (0, "client", "first\nspans two lines", {"turn_index": 0, "gold": "x0"}),
        (1, "therapist", 'says "hi", twice', {"turn_index": 1, "gold": ""}),
        (2, "client", "third", {"turn_index": 2, "gold": "x2"})]
    assert d2.turns[0].index == 0 and d2.turns[0].meta["turn_index"] == 10
    assert d1.source == f"{path}:2" and d1.meta == {}
    assert d2.source == f"{path}:6" and d2.id == "d2"  # the quoted newline makes row 3 take two lines
    assert count_input(path) == (2, 4)


def test_csv_non_contiguous_id_is_a_duplicate(tmp_path: Path) -> None:
    path = csv_file(tmp_path / "in.csv", [["a", "0", "c", "x"], ["b", "0", "c", "y"], ["a", "1", "c", "z"],
                                          ["a", "2", "c", "w"], ["c", "0", "c", "v"]])
    dialogues, errors = collect(path)
    assert [(d.id, len(d.turns)) for d in dialogues] == [("a", 1), ("b", 1), ("c", 1)]
    assert where(errors) == [(4, "dialogue_id")]
    assert "contiguous" in errors[0].detail and "line 2" in errors[0].detail


@pytest.mark.parametrize(("row", "field", "detail"), [
    (["bad", "1.5", "c", "t"], "turn_index", "not an integer"),
    (["bad", "one", "c", "t"], "turn_index", "not an integer"),
    (["bad", "0", "c", "t"], "turn_index", "appears twice"),
    (["bad", "1", "", "t"], "speaker", "is empty"),
    (["bad", "1", "c", "   "], "text", "is empty"),
    (["bad", "1", "c"], None, "expected 4 fields"),
    (["bad", "1", "c", "t", "extra"], None, "expected 4 fields"),
])
def test_csv_bad_row_rejects_its_dialogue_only(tmp_path: Path, row: list[str], field: str | None,
                                               detail: str) -> None:
    path = csv_file(tmp_path / "in.csv", [["ok1", "0", "c", "x"], ["bad", "0", "c", "t"], row,
                                          ["bad", "2", "c", "t"], ["ok2", "0", "c", "y"]])
    dialogues, errors = collect(path)
    assert [d.id for d in dialogues] == ["ok1", "ok2"]
    assert where(errors) == [(4, field)] and detail in errors[0].detail


def test_csv_blank_dialogue_id_is_reported(tmp_path: Path) -> None:
    path = csv_file(tmp_path / "in.csv", [["a", "0", "c", "x"], ["", "0", "c", "y"], ["b", "0", "c", "z"]])
    dialogues, errors = collect(path)
    assert [d.id for d in dialogues] == ["a", "b"] and where(errors) == [(3, "dialogue_id")]


def test_csv_invalid_utf8_is_reported_and_reading_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(b"\xef\xbb\xbfdialogue_id,turn_index,speaker,text\r\n"
                     b"a,0,c,fine\r\nb,0,c,caf\xe9\r\nb,1,c,more\r\nc,0,c,ok\r\n")
    dialogues, errors = collect(path)
    assert [d.id for d in dialogues] == ["a", "c"]  # the BOM did not hide the dialogue_id column
    assert where(errors) == [(3, "text")] and "invalid UTF-8" in errors[0].detail


@pytest.mark.parametrize(("content", "line", "field"), [
    ("dialogue_id,speaker,text\na,c,x\n", 1, "turn_index"),
    ("\n\ndialogue_id,turn_index,turn_index,speaker,text\n", 3, None),
])
def test_csv_bad_header_stops_reading(tmp_path: Path, content: str, line: int, field: str | None) -> None:
    path = tmp_path / "in.csv"
    path.write_text(content, encoding="utf-8")
    dialogues, errors = collect(path)
    assert dialogues == [] and where(errors) == [(line, field)]


@pytest.mark.parametrize(("content", "ids", "errors_at"), [
    (b'a,0,c,x\nb,0,c,"never closed\nc,0,c,y\n', ["a"], [(3, None)]),
    (b'a,0,c,x\nb,0,c,"closed" then text\nc,0,c,y\n', ["a", "c"], [(3, None)]),
])
def test_csv_broken_quoting_is_reported(tmp_path: Path, content: bytes, ids: list[str],
                                        errors_at: list[tuple[int | None, str | None]]) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(b"dialogue_id,turn_index,speaker,text\n" + content)
    dialogues, errors = collect(path)
    assert [d.id for d in dialogues] == ids
    assert where(errors) == errors_at and "invalid CSV" in errors[0].detail


# ------------------------------------------------------------------------------------ Psy-Insight / JSON


def test_psy_insight_maps_keys_and_keeps_gold_labels_in_meta(tmp_path: Path) -> None:
    sessions = [psy_session("000433", 3), psy_session("000436", 2)]
    path = tmp_path / "psy.json"
    path.write_text(json.dumps(sessions, indent=1, ensure_ascii=False), encoding="utf-8")
    dialogues, errors = collect(path)
    assert errors == []
    first = dialogues[0]
    assert first.id == "000433" and first.source == f"{path}:1" and dialogues[1].source == f"{path}:2"
    assert first.meta == {k: v for k, v in sessions[0].items() if k not in ("dialog_id", "dialog")}
    assert [(t.speaker, t.text) for t in first.turns] == [
        (t["speaker"], t["content"]) for t in sessions[0]["dialog"]]
    assert first.turns[1].meta == {k: v for k, v in sessions[0]["dialog"][1].items()
                                   if k not in ("speaker", "content")}
    assert first.turns[1].meta["emotional label"] == ["Anxious", "Others"]
    assert first.turns[0].meta["strategy"] == ["Question"]


def test_json_record_list(tmp_path: Path) -> None:
    path = tmp_path / "records.json"
    path.write_text(json.dumps([rec("a", "x", "y", lang="en"), {"dialogue_id": 3, "turns": [
        {"role": "c", "content": "z"}]}]), encoding="utf-8")
    dialogues, errors = collect(path)
    assert errors == [] and [(d.id, d.meta, len(d.turns)) for d in dialogues] == [("a", {"lang": "en"}, 2),
                                                                                  ("3", {}, 1)]


def _psy_text(*elements: str) -> str:
    return "[\n" + ",\n".join(elements) + "\n]"


@pytest.mark.parametrize(("text", "ids", "errors_at"), [
    # a bad record is reported at its index; the others come through
    (_psy_text('{"dialog_id": "1", "dialog": []}', json.dumps(psy_session("2"))), ["2"], [(1, "dialog")]),
    (_psy_text(json.dumps(psy_session("1")), '{"dialog_id": "2", "dialog": [{"speaker": "Seeker"}]}',
               json.dumps(psy_session("3"))), ["1", "3"], [(2, "dialog[0].content")]),
    (_psy_text(json.dumps(psy_session("1")), "17", json.dumps(psy_session("1"))), ["1"],
     [(2, None), (3, "dialog_id")]),
    # a truncated list or broken JSON is reported and reading stops
    (_psy_text(json.dumps(psy_session("1")), json.dumps(psy_session("2")))[:-30], ["1"], [(2, None)]),
    (_psy_text(json.dumps(psy_session("1")))[:-2], ["1"], [(2, None)]),
    ("[" + json.dumps(psy_session("1")) + ",", ["1"], [(2, None)]),
    ("[", [], [(1, None)]),
    (_psy_text(json.dumps(psy_session("1")), '{"dialog_id": "2" "dialog": []}', json.dumps(psy_session("3"))),
     ["1"], [(2, None)]),
    pytest.param(_psy_text(json.dumps(psy_session("1")), "[" * 50_000, json.dumps(psy_session("3"))), ["1"],
                 [(2, None)], id="deep"),
    (_psy_text(json.dumps(psy_session("1"))) + "]", ["1"], [(None, None)]),
    ("[" + json.dumps(psy_session("1")) + " " + json.dumps(psy_session("2")) + "]", ["1"], [(2, None)]),
    ('{"dialog_id": "1"}', [], [(None, None)]),
    ("[]  \n", [], []),
    ("", [], [(None, None)]),
    ("[]", [], []),
])
def test_json_list_errors(tmp_path: Path, text: str, ids: list[str],
                          errors_at: list[tuple[int | None, str | None]]) -> None:
    path = tmp_path / "psy.json"
    path.write_text(text, encoding="utf-8")
    dialogues, errors = collect(path, InputFormat.PSY_INSIGHT)
    assert [d.id for d in dialogues] == ids
    assert where(errors) == errors_at


def test_json_list_invalid_utf8_stops_at_its_record(tmp_path: Path) -> None:
    sessions = [json.dumps(psy_session(str(i))).encode() for i in range(4)]
    sessions[2] = sessions[2].replace(b"utterance", b"utter\xffance")
    path = tmp_path / "psy.json"
    path.write_bytes(b"[" + b",".join(sessions) + b"]")
    dialogues, errors = collect(path)
    assert [d.id for d in dialogues] == ["0", "1"]
    assert where(errors) == [(3, None)] and "invalid UTF-8" in errors[0].detail


@pytest.mark.parametrize(("tail", "errors_at"), [(b"]\xff", [(None, None)]), (b",\xff]", [(2, None)]),
                                                (b"\xe2\x82", [(2, None)])])
def test_json_list_invalid_utf8_between_records(tmp_path: Path, tail: bytes,
                                                errors_at: list[tuple[int | None, str | None]]) -> None:
    path = tmp_path / "psy.json"
    path.write_bytes(b"[" + json.dumps(psy_session("1")).encode() + tail)
    dialogues, errors = collect(path)
    assert [d.id for d in dialogues] == ["1"] and where(errors) == errors_at
    assert "invalid UTF-8" in errors[0].detail


def test_json_list_bom(tmp_path: Path) -> None:
    path = tmp_path / "psy.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([psy_session("1")]).encode())
    assert detect_format(path) is InputFormat.PSY_INSIGHT
    assert [d.id for d in read_dialogues(path)] == ["1"]



# ---------------------------------------------------------------------------- edge cases of issue 15 (item 9)

DEEP = 100_000  # far past the JSON decoder's recursion limit


def _deep_text(did: str) -> str:
    """A well-formed record whose meta is nested DEEP levels (closed again), with strings holding brackets."""
    return ('{"id": "' + did + '", "note": "a ] and a [ and a \\" quote", "turns": [{"speaker": "a", "text": '
            '"x"}], "deep": ' + "[" * DEEP + '"[\\"]"' + "]" * DEEP + "}")


@pytest.mark.parametrize("fmt", [InputFormat.JSON, InputFormat.JSONL])
def test_a_record_nested_too_deeply_is_skipped_and_the_records_after_it_are_read(tmp_path: Path,
                                                                               fmt: InputFormat) -> None:
    records = [json.dumps(rec("before", "a")), _deep_text("deep"), json.dumps(rec("after", "b")),
               json.dumps(rec("last", "c"))]
    json.loads(records[1].replace("[" * DEEP, "[").replace("]" * DEEP, "]"))  # well-formed apart from its depth
    if fmt is InputFormat.JSON:
        path = tmp_path / "in.json"
        path.write_text("[\n" + ",\n".join(records) + "\n]\n", encoding="utf-8")
    else:
        path = tmp_path / "in.jsonl"
        path.write_text("\n".join(records) + "\n", encoding="utf-8")
    dialogues, errors = collect(path, fmt)
    assert [d.id for d in dialogues] == ["before", "after", "last"]
    assert where(errors) == [(2, None)] and "nested too deeply" in errors[0].detail
    assert count_input(path, format=fmt) == (3, 3)


def test_a_deep_record_cut_by_every_chunk_boundary_is_skipped(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readers, "_CHUNK", 7)
    path = tmp_path / "in.json"
    path.write_text("[" + ",".join([json.dumps(rec("a", "x")), _deep_text("deep"), json.dumps(rec("b", "y"))])
                    + "]", encoding="utf-8")
    dialogues, errors = collect(path, InputFormat.JSON)
    assert [d.id for d in dialogues] == ["a", "b"] and where(errors) == [(2, None)]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
@pytest.mark.parametrize("fmt", [InputFormat.JSONL, InputFormat.JSON, InputFormat.CSV])
def test_a_utf16_or_utf32_file_with_a_byte_order_mark_is_read(tmp_path: Path, encoding: str,
                                                             fmt: InputFormat) -> None:
    texts = ["I feel anxious — 焦虑", "That sounds hard.", "x" * 70_000]  # the long one crosses read chunks
    if fmt is InputFormat.JSONL:
        text = "\n".join(json.dumps(rec(f"d{i}", t), ensure_ascii=False) for i, t in enumerate(texts)) + "\n"
    elif fmt is InputFormat.JSON:
        text = json.dumps([rec(f"d{i}", t) for i, t in enumerate(texts)], ensure_ascii=False)
    else:
        text = "dialogue_id,turn_index,speaker,text\n" + "".join(f"d{i},0,c,{t}\n" for i, t in enumerate(texts))
    path = tmp_path / f"in.{fmt.value}"
    bom = {"utf-16": "", "utf-16-be": "\ufeff", "utf-32": ""}[encoding]  # utf-16/utf-32 write their own BOM
    path.write_bytes((bom + text).encode(encoding))
    dialogues, errors = collect(path)
    assert errors == []
    assert [(d.id, d.turns[0].text) for d in dialogues] == [(f"d{i}", t) for i, t in enumerate(texts)]


def test_utf16_without_a_byte_order_mark_is_named(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes((json.dumps(rec("a", "x")) + "\n").encode("utf-16-le"))
    for fmt in (InputFormat.JSONL, InputFormat.JSON, InputFormat.CSV):
        dialogues, errors = collect(path, fmt)
        assert dialogues == [] and where(errors) == [(None, None)]
        assert "UTF-16" in errors[0].detail and "invalid UTF-8" not in errors[0].detail


@pytest.mark.parametrize(("name", "content"), [("e.jsonl", ""), ("e.jsonl", "\n  \n"), ("e.json", ""),
                                               ("e.json", " \n"), ("e.csv", "")])
def test_an_empty_file_is_one_file_level_error_in_every_format(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    dialogues, errors = collect(path)
    assert dialogues == [] and where(errors) == [(None, None)] and "empty" in errors[0].detail


def test_json_list_chunk_boundaries_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny read chunks cut every token (strings, escapes, numbers, literals, multi-byte characters)."""
    rng = random.Random(7)
    atoms = [0, -12.5e-3, 123456789, True, False, None, "é\u00e9\\\"\n", "😀 中文", "\\u0041", ""]
    path = tmp_path / "records.json"
    for chunk in (1, 2, 3, 5, 8):
        monkeypatch.setattr(readers, "_CHUNK", chunk)
        for _ in range(20):
            data: list[dict[str, Any]] = [
                {"id": f"d{i}", "turns": [{"speaker": "s", "text": f"t {rng.choice(atoms)!s}",
                                           "x": rng.sample(atoms, 4)}],
                 "m": {"n": rng.choice(atoms), "l": [rng.choice(atoms)]}} for i in range(rng.randint(0, 3))]
            path.write_text(json.dumps(data, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 2])),
                            encoding="utf-8")
            dialogues, errors = collect(path, InputFormat.JSON)
            assert errors == []
            assert [(d.id, d.turns[0].text, d.turns[0].meta["x"], d.meta) for d in dialogues] == [
                (r["id"], r["turns"][0]["text"], r["turns"][0]["x"], {"m": r["m"]}) for r in data]


# ---------------------------------------------------------------------------------------- big and BOM


def test_one_megabyte_turn_comes_through_whole_in_every_format(tmp_path: Path) -> None:
    big = "".join(random.Random(1).choices("abc é😀,\"\n\r\\", k=MB)) + "end"
    paths = {
        InputFormat.JSONL: jsonl(tmp_path / "big.jsonl", rec("a", "x"), rec("big", "hi", big), rec("b", "y")),
        InputFormat.CSV: csv_file(tmp_path / "big.csv", [["a", "0", "c", "x"], ["big", "0", "c", "hi"],
                                                         ["big", "1", "t", big], ["b", "0", "c", "y"]]),
        InputFormat.JSON: tmp_path / "big.json",
        InputFormat.PSY_INSIGHT: tmp_path / "psy.json",
    }
    paths[InputFormat.JSON].write_text(json.dumps([rec("a", "x"), rec("big", "hi", big), rec("b", "y")]),
                                       encoding="utf-8")
    session = psy_session("big")
    session["dialog"][1]["content"] = big
    paths[InputFormat.PSY_INSIGHT].write_text(json.dumps([psy_session("a"), session, psy_session("b")]),
                                              encoding="utf-8")
    for fmt, path in paths.items():
        assert detect_format(path) is fmt
        dialogues, errors = collect(path)
        assert errors == [], fmt
        assert [d.id for d in dialogues] == ["a", "big", "b"], fmt
        assert dialogues[1].turns[1].text == big, fmt


# -------------------------------------------------------------------------------------------- real data


@pytest.mark.parametrize(("name", "sessions", "turns"),
                         [("en_dev.json", 406, 4686), ("cn_dev.json", 333, 4452)])
def test_real_psy_insight_files(name: str, sessions: int, turns: int) -> None:
    path = shared_file(name)
    assert detect_format(path) is InputFormat.PSY_INSIGHT
    assert count_input(path) == (sessions, turns)
    dialogues, errors = collect(path)
    assert errors == [] and len(dialogues) == sessions
    session_keys = {"theme", "psychotherapy", "topic", "stage", "guide", "is_same_qa", "is_same_session",
                    "background", "reasoning", "summary"}
    assert all(set(d.meta) == session_keys for d in dialogues)
    all_turns = [t for d in dialogues for t in d.turns]
    assert {t.speaker for t in all_turns} == {"Seeker", "Supporter"}
    assert all({"participant", "id"} <= set(t.meta) for t in all_turns)
    seekers = [t for t in all_turns if t.speaker == "Seeker"]
    supporters = [t for t in all_turns if t.speaker == "Supporter"]
    assert sum("emotional label" in t.meta for t in seekers) > 0.9 * len(seekers)
    assert sum("strategy" in t.meta for t in supporters) > 0.9 * len(supporters)
    assert all(isinstance(t.meta.get("emotional label", []), list) for t in all_turns)


# ------------------------------------------------------------------------------------------- streaming


def test_jsonl_is_streamed_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "many.jsonl"
    filler = "word " * 100
    with path.open("w", encoding="utf-8") as fh:
        for i in range(50_000):
            fh.write(json.dumps(rec(f"d{i}", f"{i} {filler}", "reply " + filler, topic="x" * 50)) + "\n")
    assert path.stat().st_size > 50 * MB
    tracemalloc.start()
    try:
        dialogues = turns = 0
        for dialogue in read_dialogues(path):
            dialogues += 1
            turns += len(dialogue.turns)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (dialogues, turns) == (50_000, 100_000)
    assert peak < 20 * MB, f"peak {peak / MB:.1f} MB"


def test_json_list_is_streamed_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "many.json"
    with path.open("w", encoding="utf-8") as fh:
        fh.write("[")
        for i in range(5_000):
            session = psy_session(f"{i}", 4)
            session["background"] = "b" * 5000
            fh.write(("," if i else "") + json.dumps(session))
        fh.write("]")
    assert path.stat().st_size > 25 * MB
    tracemalloc.start()
    try:
        assert sum(1 for _ in read_dialogues(path)) == 5_000
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * MB, f"peak {peak / MB:.1f} MB"


# ---------------------------------------------------------------------------------------------- fuzzing


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def check_reader(path: Path, fmt: InputFormat) -> list[Dialogue]:
    """Reading yields Dialogues, reports InputErrors and raises nothing else."""
    dialogues, errors = collect(path, fmt)
    assert all(isinstance(d, Dialogue) and d.turns for d in dialogues)
    assert len({d.id for d in dialogues}) == len(dialogues)
    for error in errors:
        assert isinstance(error, InputError) and error.source == str(path)
        assert error.line is None or error.line >= 1
    return dialogues


FUZZ = settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["id", "dialogue_id", "dialog_id", "turns", "dialog", "speaker", "role", "text",
                         "content", "x"]) | st.text(max_size=5), inner, max_size=5),
    max_leaves=30)


@FUZZ
@given(data=st.binary(max_size=2000), fmt=st.sampled_from(list(InputFormat)))
def test_fuzz_random_bytes(fuzz_dir: Path, data: bytes, fmt: InputFormat) -> None:
    path = fuzz_dir / "bytes.in"
    path.write_bytes(data)
    check_reader(path, fmt)


@FUZZ
@given(values=st.lists(json_values, max_size=5), fmt=st.sampled_from(list(InputFormat)))
def test_fuzz_random_json_values(fuzz_dir: Path, values: list[Any], fmt: InputFormat) -> None:
    path = fuzz_dir / "values.in"
    as_list = json.dumps(values)
    path.write_text(as_list if fmt in (InputFormat.JSON, InputFormat.PSY_INSIGHT)
                    else "\n".join(json.dumps(v) for v in values), encoding="utf-8", errors="surrogatepass")
    check_reader(path, fmt)
    path.write_text(json.dumps(values[0] if values else None), encoding="utf-8", errors="surrogatepass")
    check_reader(path, fmt)


csv_cells = st.text(st.sampled_from('ab0 1,"\n\r\t\x00é'), max_size=6)


@FUZZ
@given(text=st.text(max_size=400), rows=st.lists(st.lists(csv_cells, max_size=6), max_size=8),
       header=st.permutations([*CSV_COLUMNS, "gold"]))
def test_fuzz_random_csv(fuzz_dir: Path, text: str, rows: list[list[str]], header: list[str]) -> None:
    path = fuzz_dir / "rows.csv"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    check_reader(path, InputFormat.CSV)
    buf = io.StringIO(newline="")
    csv.writer(buf).writerows([header, *rows])
    path.write_text(buf.getvalue(), encoding="utf-8", newline="")
    check_reader(path, InputFormat.CSV)


speakers = st.text(st.characters(codec="utf-8"), min_size=1, max_size=8).filter(str.strip)
turn_texts = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40).filter(str.strip)
dialogue_specs = st.lists(st.lists(st.tuples(speakers, turn_texts), min_size=1, max_size=4), max_size=5)


@FUZZ
@given(specs=dialogue_specs, fmt=st.sampled_from(list(InputFormat)))
def test_fuzz_round_trip(fuzz_dir: Path, specs: list[list[tuple[str, str]]], fmt: InputFormat) -> None:
    """Any valid dialogues written in any format read back unchanged."""
    path = fuzz_dir / "round.trip"
    records: list[dict[str, Any]] = [{"id": f"d{i}", "turns": [{"speaker": s, "text": t} for s, t in turns]}
               for i, turns in enumerate(specs)]
    if fmt is InputFormat.CSV:
        csv_file(path, [[r["id"], j, t["speaker"], t["text"]]
                        for r in records for j, t in enumerate(r["turns"])])
    elif fmt is InputFormat.JSONL:
        jsonl(path, *records)
    elif fmt is InputFormat.JSON:
        path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    else:
        path.write_text(json.dumps([{"dialog_id": r["id"], "dialog": [
            {"speaker": t["speaker"], "content": t["text"]} for t in r["turns"]]} for r in records]),
            encoding="utf-8")
    dialogues = check_reader(path, fmt)
    assert [(d.id, [(t.speaker, t.text) for t in d.turns]) for d in dialogues] == [
        (r["id"], [(t["speaker"], t["text"]) for t in r["turns"]]) for r in records]
