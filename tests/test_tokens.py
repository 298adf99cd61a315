"""Offline tokenizers: encodings built from the wheel's ranks are tiktoken's, and nothing is downloaded."""

from __future__ import annotations

import hashlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tiktoken
import tiktoken_ext.openai_public as openai_public

from autolabel.llm import tokens
from autolabel.llm.tokens import count_chat_tokens, encoding, encoding_for_model, load_ranks, tiktoken_file
from tests.fake_openai import count_prompt_tokens

SAMPLES = [
    "Hello, what brings you here today?",
    "我最近很焦虑，晚上睡不着觉，担心考试不及格会让父母失望。",
    "It's   spaced\n\n\tout — with émojis 🚀🙂 and numbers 1234567 and CamelCaseWords don't.",
    "<|endoftext|> is plain text here",
]


def published(name: str) -> tuple[str, str]:
    """(URL, expected sha256) of an encoding's rank file, as written in tiktoken's own openai_public.py."""
    source = inspect.getsource(openai_public)
    pattern = r'"(https://[^"]+/' + re.escape(name) + r'\.tiktoken)",\s*expected_hash="([0-9a-f]{64})"'
    match = re.search(pattern, source)
    assert match, f"{name} not found in {openai_public.__file__}"
    return match.group(1), match.group(2)


@pytest.mark.parametrize("name", sorted(tokens.SPECS))
def test_ranks_hash_to_tiktokens_published_sha256(name: str) -> None:
    _, expected = published(name)
    assert hashlib.sha256(tiktoken_file(load_ranks(name))).hexdigest() == expected


@pytest.mark.parametrize("name", sorted(tokens.SPECS))
def test_tiktokens_own_constructor_fed_these_ranks_gives_the_same_encoding(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # tiktoken reads its cache folder before the network, and checks the published hash of what it finds there

    url, _ = published(name)
    (tmp_path / hashlib.sha1(url.encode()).hexdigest()).write_bytes(tiktoken_file(load_ranks(name)))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    spec = openai_public.ENCODING_CONSTRUCTORS[name]()
    reference = tiktoken.Encoding(**spec)
    ours = encoding(name)
    assert ours._pat_str == spec["pat_str"]
    assert ours._special_tokens == spec["special_tokens"]
    assert ours._mergeable_ranks == spec["mergeable_ranks"]
    assert ours.n_vocab == reference.n_vocab
    for text in SAMPLES:
        assert ours.encode(text, disallowed_special=()) == reference.encode(text, disallowed_special=())
    assert ours.encode("<|endoftext|>", allowed_special="all") == reference.encode("<|endoftext|>",
                                                                                  allowed_special="all")


def test_encoding_is_built_once_per_process() -> None:
    assert encoding() is encoding("o200k_base")
    assert encoding().name == "o200k_base"


def test_nothing_is_downloaded_or_cached(tmp_path: Path) -> None:
    cache = tmp_path / "tiktoken-cache"
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(cache), "DATA_GYM_CACHE_DIR": str(cache),
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}
    code = ("from autolabel.llm.tokens import encoding\n"
            "print(len(encoding().encode('hello world')),"
            " len(encoding('cl100k_base').encode('hello world')))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "2"]
    assert not cache.exists()


@pytest.mark.parametrize(("model", "name", "exact"), [
    ("openai:gpt-4o-mini", "o200k_base", True),
    ("gpt-4o", "o200k_base", True),
    ("gpt-4.1-nano", "o200k_base", True),
    ("gpt-5", "o200k_base", True),
    ("o3-mini", "o200k_base", True),
    ("o1", "o200k_base", True),
    ("gpt-4", "cl100k_base", True),
    ("gpt-4-turbo", "cl100k_base", True),
    ("gpt-3.5-turbo-0125", "cl100k_base", True),
    ("gpt-oss-20b", "o200k_base", False),
    ("qwen2.5-7b-instruct", "o200k_base", False),
    ("openai:test-model", "o200k_base", False),
])
def test_encoding_for_model(model: str, name: str, exact: bool) -> None:
    enc, is_exact = encoding_for_model(model)
    assert (enc.name, is_exact) == (name, exact)


def test_chat_tokens_follow_the_cookbook_formula() -> None:
    enc = encoding()
    # "user", "hi", "system", "be brief" are 1, 1, 1, 2 tokens in o200k_base
    assert [len(enc.encode(t)) for t in ("user", "hi", "system", "be brief")] == [1, 1, 1, 2]
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi", "name": "ann"}]
    assert count_chat_tokens(messages, enc) == 3 + (3 + 1 + 2) + (3 + 1 + 1 + len(enc.encode("ann")) + 1)
    assert count_chat_tokens([], enc) == 3


def test_chat_tokens_agree_with_the_scripted_server() -> None:
    messages = [{"role": "system", "content": SAMPLES[2]}, {"role": "user", "content": SAMPLES[1]},
                {"role": "assistant", "content": [{"type": "text", "text": SAMPLES[0]}]},
                {"role": "user", "content": SAMPLES[3], "name": "client"}]
    assert count_chat_tokens(messages, encoding()) == count_prompt_tokens(messages)
