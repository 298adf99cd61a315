"""CSV export for spreadsheets: one row per turn, read back by the csv module with every value intact."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from autolabel import Annotator, ConfigError, Dialogue, Store, Turn, export
from autolabel.cli import app
from autolabel.interop.export import csv_header
from tests.conftest import write_jsonl
from tests.fake_openai import FakeOpenAIServer

runner = CliRunner()
TRICKY = '他说：“我不行”，然后哭了。\n第二行, with a comma and "quotes"'


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run over a Chinese and an English dialogue (one turn with a newline, commas and quotes)."""
    tmp = tmp_path_factory.mktemp("csv")
    dialogues = [
        Dialogue(id="zh-1", turns=(Turn(index=0, speaker="咨询师", text="你好，今天想聊些什么？"),
                                   Turn(index=1, speaker="来访者", text=TRICKY),
                                   Turn(index=2, speaker="咨询师", text="听起来你很难过。能多说说吗？"))),
        Dialogue(id="en-1", turns=(Turn(index=0, speaker="Supporter", text="What brings you here?"),
                                   Turn(index=1, speaker="Seeker", text="=1+1 is all I think about."))),
    ]
    input = write_jsonl(tmp / "in.jsonl", dialogues)
    db = tmp / "runs.db"
    with FakeOpenAIServer(seed=3) as srv:
        Annotator("psy-insight", model="openai:test", base_url=srv.base_url, db=db).run(input)
    return db


def records(db: Path) -> list[dict[str, Any]]:
    store = Store.open(db)
    try:
        return list(store.final_records())
    finally:
        store.close()


def expected_row(rec: dict[str, Any], header: list[str]) -> dict[str, str]:
    """What a spreadsheet should show for a stored record, as text."""
    session = rec["kind"] == "session"
    row = {"dialogue_id": rec["dialogue_id"], "turn_index": "" if session else str(rec["turn_index"]),
           "speaker": rec.get("speaker", ""), "role": "session" if session else rec["role"] or "",
           "text": rec.get("text", ""), "status": rec["status"], "flags": "|".join(rec["flags"])}
    for name in header[len(row):]:
        if name.endswith("_confidence"):
            conf = rec["confidence"].get(name.removesuffix("_confidence"))
            row[name] = "" if conf is None else str(round(conf["value"], 4))
        elif name in rec["labels"]:
            value = rec["labels"][name]
            row[name] = "|".join(value) if isinstance(value, list) else value
        else:
            row[name] = rec["texts"].get(name, "")
    return row


@pytest.mark.parametrize("bom", [False, True])
def test_csv_round_trip(labelled: Path, tmp_path: Path, bom: bool) -> None:
    out = tmp_path / "labels.csv"
    n = export(labelled, "csv", out, bom=bom)
    raw = out.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") == bom
    assert "你好，今天想聊些什么？".encode() in raw  # UTF-8, not an escape
    with out.open(encoding="utf-8-sig" if bom else "utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    store = Store.open(labelled)
    try:
        task = store.run_task(store.run()["id"])
    finally:
        store.close()
    header = csv_header(task)
    assert list(rows[0]) == header
    assert header[:7] == ["dialogue_id", "turn_index", "speaker", "role", "text", "status", "flags"]
    for name in ("emotion", "strategy", "psychotherapy", "topic", "observation", "reasoning", "summary",
                 "emotion_confidence", "strategy_confidence", "topic_confidence"):
        assert name in header
    recs = records(labelled)
    assert n == len(rows) == len(recs) == 5 + 2  # five turns and two sessions
    assert rows == [expected_row(r, header) for r in recs]
    turns = [r for r in rows if r["turn_index"] != ""]
    assert [(r["dialogue_id"], r["turn_index"]) for r in turns] == [
        ("en-1", "0"), ("en-1", "1"), ("zh-1", "0"), ("zh-1", "1"), ("zh-1", "2")]
    assert any(r["text"] == TRICKY for r in turns)  # newline, commas and quotes survive
    assert any(r["text"].startswith("=1+1") for r in turns)  # values are written as they are
    multi = [r["emotion"] for r in turns if r["role"] == "seeker"]
    assert multi and all(v and all(part for part in v.split("|")) for v in multi)


def test_csv_without_text_keeps_the_column_empty(labelled: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels.csv"
    export(labelled, "csv", out, include_text=False)
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert rows and all(r["text"] == "" for r in rows)


def test_bom_is_for_csv_only(labelled: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CSV"):
        export(labelled, "jsonl", tmp_path / "x.jsonl", bom=True)


def test_cli_export_csv_with_bom(labelled: Path, tmp_path: Path) -> None:
    out = tmp_path / "excel.csv"
    r = runner.invoke(app, ["export", "--db", str(labelled), "--format", "csv", "--out", str(out), "--bom"])
    assert r.exit_code == 0, r.output
    assert "wrote 7 records" in r.output
    assert out.read_bytes().startswith(b"\xef\xbb\xbfdialogue_id,turn_index,")
    assert "他说：“我不行”，然后哭了。" in out.read_text(encoding="utf-8-sig")
