"""Streaming readers for dialogue files: JSONL, CSV, Psy-Insight JSON and JSON lists of ``{id, turns}``.

A record reader per format holds one record at a time and yields ``(line, record)`` or an InputError, where
``line`` is the physical 1-based line for JSONL and CSV (for CSV the line a row starts on), the 1-based
record index for JSON lists, and None for a file-level problem (an empty file, not a JSON list).

Files are UTF-8 (with or without a byte order mark); UTF-16 and UTF-32 files are read when they start with their
byte order mark, and named as such when they do not.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections.abc import Callable, Generator, Iterator
from enum import Enum
from functools import partial
from itertools import groupby
from pathlib import Path
from typing import IO, Any, NamedTuple, cast

from autolabel.errors import InputError
from autolabel.models import Dialogue, Turn


class InputFormat(str, Enum):
    """The input formats autolabel reads."""

    JSONL = "jsonl"
    CSV = "csv"
    PSY_INSIGHT = "psy-insight"
    JSON = "json"


_Records = Iterator[tuple[int, Any] | InputError]
_CHUNK = 1 << 16  # bytes read at a time from a JSON list
_LOOKAHEAD = 16  # a JSON token cut by a chunk boundary ends within this many characters of the buffer end
_CSV_FIELD_LIMIT = 64 << 20
_CSV_COLUMNS = ("dialogue_id", "turn_index", "speaker", "text")
_NONSPACE = re.compile(r"[^ \t\n\r]")
_JSON_KINDS = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}
_TOO_DEEP = "invalid JSON: nested too deeply"
_EMPTY = "the file is empty: no dialogues"
_JSON_SYNTAX = re.compile(r'["\[\]{}]')  # what moves the nesting depth outside strings
_STRING_END = re.compile(r'["\\]')
# byte order marks, longest first (UTF-32-LE's starts with UTF-16-LE's): codec of the rest, name, text-mode codec
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le", "UTF-32", "utf-32"), (codecs.BOM_UTF32_BE, "utf-32-be", "UTF-32", "utf-32"),
         (codecs.BOM_UTF8, "utf-8", "UTF-8", "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16-le", "UTF-16", "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16-be", "UTF-16", "utf-16"))


class _Shape(NamedTuple):
    """Where a record keeps its id, turns, speakers and texts (the first key present wins)."""

    id_keys: tuple[str, ...]
    turns_key: str
    speaker_keys: tuple[str, ...]
    text_keys: tuple[str, ...]


_RECORD = _Shape(("id", "dialogue_id"), "turns", ("speaker", "role"), ("text", "content"))
_PSY = _Shape(("dialog_id",), "dialog", ("speaker",), ("content",))


def _kind(value: Any) -> str:
    return _JSON_KINDS.get(type(value), "null" if value is None else type(value).__name__)


def _bad_unicode_at(text: str) -> int | None:
    """1-based position of the first undecodable byte (kept as a lone surrogate) in ``text``, else None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start + 1
    return None


class _Encoding(NamedTuple):
    codec: str  # for a byte stream whose byte order mark was skipped
    name: str  # in messages
    text_codec: str  # for a text-mode file (skips the byte order mark itself)


_UTF8 = _Encoding("utf-8", "UTF-8", "utf-8-sig")


def _encoding(head: bytes, source: str) -> _Encoding:
    """The encoding announced by the byte order mark at the start of a file (UTF-8 without one).

    A file without one whose first characters hold NUL bytes is UTF-16 or UTF-32 without its mark: an InputError
    that says so (decoded as UTF-8 it would only be 'invalid JSON' or a CSV without its columns)."""
    for bom, codec, name, text_codec in _BOMS:
        if head.startswith(bom):
            return _Encoding(codec, name, text_codec)
    if b"\x00" in head[:4]:
        raise InputError(source, None, "looks like UTF-16 or UTF-32 without a byte order mark: save it as UTF-8 "
                         "(or as UTF-16 with a byte order mark)")
    return _UTF8


def _string(obj: dict[str, Any], key: str, name: str, source: str, line: int, *, int_ok: bool = False) -> str:
    """``obj[key]`` as a non-blank string, or an InputError naming field ``name``."""
    value = obj.get(key)
    if int_ok and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise InputError(source, line, f"must be a string, not {_kind(value)}" if key in obj else "missing",
                         name)
    if not value.strip():
        raise InputError(source, line, "is empty", name)
    if _bad_unicode_at(value) is not None:
        raise InputError(source, line, "contains invalid Unicode (a lone surrogate)", name)
    return value


def _pick(obj: dict[str, Any], keys: tuple[str, ...]) -> str:
    return next((key for key in keys if key in obj), keys[0])


def _dialogue(record: Any, shape: _Shape, source: str, line: int) -> Dialogue:
    """Build a Dialogue from one decoded record; every other key goes to ``meta`` unchanged."""
    if not isinstance(record, dict):
        raise InputError(source, line, f"a dialogue must be an object, not {_kind(record)}")
    id_key = _pick(record, shape.id_keys)
    dialogue_id = _string(record, id_key, id_key, source, line, int_ok=True)
    raw_turns = record.get(shape.turns_key)
    if not isinstance(raw_turns, list) or not raw_turns:
        detail = "is empty" if raw_turns == [] else f"must be a list of turns, not {_kind(raw_turns)}"
        raise InputError(source, line, detail if shape.turns_key in record else "missing", shape.turns_key)
    turns = []
    for index, raw in enumerate(raw_turns):
        where = f"{shape.turns_key}[{index}]"
        if not isinstance(raw, dict):
            raise InputError(source, line, f"a turn must be an object, not {_kind(raw)}", where)
        speaker_key, text_key = _pick(raw, shape.speaker_keys), _pick(raw, shape.text_keys)
        speaker = _string(raw, speaker_key, f"{where}.{speaker_key}", source, line)
        text = _string(raw, text_key, f"{where}.{text_key}", source, line)
        meta = {k: v for k, v in raw.items() if k not in (speaker_key, text_key)}
        turns.append(Turn(index=index, speaker=speaker, text=text, meta=meta))
    meta = {k: v for k, v in record.items() if k not in (id_key, shape.turns_key)}
    return Dialogue(id=dialogue_id, turns=tuple(turns), meta=meta, source=f"{source}:{line}")


def _encoding_name(fh: IO[str]) -> str:
    """UTF-8, UTF-16 or UTF-32: the encoding of a file ``_open`` opened as text."""
    codec = str(getattr(fh, "encoding", _UTF8.text_codec))
    return _UTF8.name if codec == _UTF8.text_codec else codec.upper()


def _jsonl_records(fh: IO[str], source: str) -> _Records:
    empty = True
    for line, text in enumerate(fh, 1):
        column = _bad_unicode_at(text)
        if column is not None:
            empty = False
            yield InputError(source, line, f"invalid {_encoding_name(fh)} at column {column}")
        elif text.strip():
            empty = False
            try:
                yield line, json.loads(text)
            except RecursionError:
                yield InputError(source, line, _TOO_DEEP)
            except ValueError as exc:
                yield InputError(source, line, f"invalid JSON: {exc}")
    if empty:
        yield InputError(source, None, _EMPTY)


def _csv_rows(reader: Any, source: str) -> Iterator[tuple[int, list[str] | InputError]]:
    """Non-empty rows with the line each starts on; a row the csv module rejects becomes an error."""
    last = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield last + 1, InputError(source, last + 1, f"invalid CSV: {exc}")
            last = max(reader.line_num, last + 1)
            continue
        start, last = last + 1, reader.line_num
        if row:
            yield start, row


def _csv_header(rows: Iterator[tuple[int, list[str] | InputError]], source: str) -> list[str]:
    line, row = next(rows, (1, InputError(source, None, f"{_EMPTY} (not even a header)")))
    if isinstance(row, InputError):
        raise row
    names = [name.strip() for name in row]
    missing = [name for name in _CSV_COLUMNS if name not in names]
    if missing or len(set(names)) < len(names) or _bad_unicode_at("".join(names)) is not None:
        detail = "missing column in the header" if missing else "duplicate or undecodable column names"
        raise InputError(source, line, detail, missing[0] if missing else None)
    return names


def _csv_turn(row: list[str], names: list[str], turns: dict[int, dict[str, Any]], source: str,
              line: int, encoding: str = "UTF-8") -> None:
    """Check one row and add it to ``turns``; the original ``turn_index`` stays in the turn's meta."""
    if len(row) != len(names):
        raise InputError(source, line, f"expected {len(names)} fields, got {len(row)}")
    cells: dict[str, Any] = dict(zip(names, row, strict=True))
    for name, value in cells.items():
        if (column := _bad_unicode_at(value)) is not None:
            raise InputError(source, line, f"invalid {encoding} at character {column}", name)
    raw_index = cells["turn_index"]
    try:
        cells["turn_index"] = index = int(raw_index.strip())
    except ValueError:
        raise InputError(source, line, f"not an integer: {raw_index[:20]!r}", "turn_index") from None
    if index in turns:
        raise InputError(source, line, f"turn {index} appears twice in this dialogue", "turn_index")
    _string(cells, "speaker", "speaker", source, line)
    _string(cells, "text", "text", source, line)
    turns[index] = {k: v for k, v in cells.items() if k != "dialogue_id"}


def _csv_id(id_column: int, item: tuple[int, list[str] | InputError]) -> str | None:
    """The dialogue id of a row; None for a row that is an error or has no usable id."""
    row_id = item[1][id_column] if isinstance(item[1], list) and id_column < len(item[1]) else ""
    return row_id if row_id.strip() and _bad_unicode_at(row_id) is None else None


def _csv_dialogue(dialogue_id: str, rows: Iterator[tuple[int, list[str] | InputError]], names: list[str],
                  started: dict[str, int], source: str, encoding: str) -> _Records:
    """One dialogue from its contiguous rows, or the first error in them."""
    turns: dict[int, dict[str, Any]] = {}
    first = 0
    for line, row in cast(Iterator[tuple[int, list[str]]], rows):  # a row with an id is a list
        if not first:
            first = started.setdefault(dialogue_id, line)
            if first != line:
                yield InputError(source, line, f"duplicate dialogue id {dialogue_id!r}: its rows must be "
                                 f"contiguous (first seen at line {first})", "dialogue_id")
                return
        try:
            _csv_turn(row, names, turns, source, line, encoding)
        except InputError as exc:
            yield exc
            return
    yield first, {"id": dialogue_id, "turns": [turns[index] for index in sorted(turns)]}


def _csv_records(fh: IO[str], source: str) -> _Records:
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    rows = _csv_rows(csv.reader(fh, strict=True), source)
    try:
        names = _csv_header(rows, source)
    except InputError as exc:
        yield exc
        return
    started: dict[str, int] = {}
    for dialogue_id, group in groupby(rows, key=partial(_csv_id, names.index("dialogue_id"))):
        if dialogue_id is not None:
            yield from _csv_dialogue(dialogue_id, group, names, started, source, _encoding_name(fh))
            continue
        for line, row in group:
            yield row if isinstance(row, InputError) else InputError(
                source, line, f"missing or not valid {_encoding_name(fh)}; row skipped", "dialogue_id")


class _Chars:
    """The text of a byte stream, decoded a chunk at a time; ``buf[pos:]`` is not parsed yet.

    UTF-8, or UTF-16 / UTF-32 when the stream starts with that byte order mark (``encoding``)."""

    def __init__(self, fh: IO[bytes], source: str) -> None:
        self._fh, self._pending, self._started = fh, b"", False
        self.buf, self.pos, self.eof, self.bad_utf8 = "", 0, False, False
        head = fh.read(4)
        self.encoding = _encoding(head, source)
        self._pending = head.removeprefix(codecs.BOM_UTF8) if self.encoding is _UTF8 else head[len(
            next(bom for bom, codec, *_ in _BOMS if codec == self.encoding.codec)):]

    def more(self) -> bool:
        """Append text (at least as much as is unparsed, so re-parsing stays linear); False at the end."""
        while not self.eof:
            raw = self._fh.read(max(_CHUNK, len(self.buf) - self.pos))
            data = self._pending + raw
            try:
                text, self._pending = data.decode(self.encoding.codec), b""
            except UnicodeDecodeError as exc:  # a character cut by the chunk boundary, or a bad byte
                text, self._pending = data[: exc.start].decode(self.encoding.codec), data[exc.start:]
                self.bad_utf8 = self.eof = not raw or exc.reason not in ("unexpected end of data", "truncated data")
            self.eof = self.eof or not raw
            if text and not self._started:
                self._started, text = True, text.removeprefix("\ufeff")
            if text:  # the buffer only changes when text comes, so a caller's offsets stay valid otherwise
                self.buf, self.pos = self.buf[self.pos:] + text, 0
                return True
        return False

    def skip_value(self) -> bool:
        """Move past the array or object at ``pos`` without decoding it (it is nested too deeply for the decoder):
        brackets are counted outside strings, without recursion. False when the input ends first."""
        depth, offset, in_string = 0, 0, False  # offset: from ``pos``, which ``more`` keeps pointing at the value
        while True:
            pattern = _STRING_END if in_string else _JSON_SYNTAX
            found = pattern.search(self.buf, self.pos + offset)
            if found is None or (found.group() == "\\" and found.end() >= len(self.buf)):  # need more text
                offset = (len(self.buf) if found is None else found.start()) - self.pos
                if not self.more():
                    return False
                continue
            offset = found.end() - self.pos
            char = found.group()
            if char == "\\":
                offset += 1  # the escaped character, whatever it is
            elif char == '"':
                in_string = not in_string
            elif char in "[{":
                depth += 1
            else:
                depth -= 1
                if depth <= 0:
                    self.pos = found.end()
                    return True

    def peek(self) -> str:
        """The next non-whitespace character ('' at the end), without consuming it."""
        while True:
            found = _NONSPACE.search(self.buf, self.pos)
            if found is not None:
                self.pos = found.start()
                return found.group()
            self.pos = len(self.buf)
            if not self.more():
                return ""

    def value(self, decoder: json.JSONDecoder) -> tuple[bool, Any]:
        """(True, the JSON value at ``pos``), or (False, why there is none)."""
        while True:
            try:
                value, end = decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                cut = exc.msg.startswith("Unterminated string") or exc.pos >= len(self.buf) - _LOOKAHEAD
                if cut and self.more():
                    continue
                return False, f"invalid JSON: {exc.msg}"
            except RecursionError:
                return False, _TOO_DEEP
            except ValueError as exc:
                return False, f"invalid JSON: {exc}"
            if end >= len(self.buf) - _LOOKAHEAD and self.more():
                continue  # a number at the end of the buffer may go on in the next chunk
            self.pos = end
            return True, value


def _json_records(fh: IO[bytes], source: str) -> _Records:
    """The elements of a top-level JSON list, one at a time, numbered from 1; stops at the first error that leaves
    the next record's start unknown (a record nested too deeply is skipped: its end is found without decoding)."""
    try:
        chars = _Chars(fh, source)
    except InputError as exc:  # UTF-16 without its byte order mark
        yield exc
        return
    decoder, index = json.JSONDecoder(), 0

    def fail(line: int | None, detail: str) -> InputError:
        return InputError(source, line, f"invalid {chars.encoding.name}; reading stopped" if chars.bad_utf8
                          else detail)

    first = chars.peek()
    if first != "[":
        yield fail(None, "expected a JSON list" if first else _EMPTY)
        return
    chars.pos, after = chars.pos + 1, ","
    if chars.peek() == "]":
        chars.pos, after = chars.pos + 1, "]"
    while after == ",":
        if not chars.peek():
            yield fail(index + 1, "truncated JSON list")
            return
        index += 1
        ok, value = chars.value(decoder)
        if not ok and value == _TOO_DEEP and chars.skip_value():
            yield InputError(source, index, f"{_TOO_DEEP}; record skipped")
        elif not ok:
            yield fail(index, f"{value}; reading stopped")
            return
        else:
            yield index, value
        after = chars.peek()
        if after not in (",", "]"):
            yield fail(index + 1, "expected ',' or ']' after the record" if after else "truncated JSON list")
            return
        chars.pos += 1
    if chars.peek() or chars.bad_utf8:
        yield fail(None, "unexpected data after the end of the JSON list")


_Reader = tuple[Callable[[Any, str], _Records], _Shape, str | None]  # records, shape, newline (None: binary)
_READERS: dict[InputFormat, _Reader] = {
    InputFormat.JSONL: (_jsonl_records, _RECORD, "\n"),
    InputFormat.CSV: (_csv_records, _RECORD, ""),
    InputFormat.PSY_INSIGHT: (_json_records, _PSY, None),
    InputFormat.JSON: (_json_records, _RECORD, None),
}
_EXTENSIONS = {".jsonl": InputFormat.JSONL, ".ndjson": InputFormat.JSONL, ".csv": InputFormat.CSV}


def _check_file(path: Path, source: str) -> None:
    if path.is_dir() or not path.exists():
        raise InputError(source, None, "is a directory, not a file" if path.is_dir() else "file not found")


def _open(path: Path, source: str, newline: str | None) -> IO[Any]:
    """Binary when ``newline`` is None (``_Chars`` reads the byte order mark); else text in the encoding its byte
    order mark names (UTF-8 without one), where a bad byte becomes a lone surrogate, found later."""
    try:
        if newline is None:
            return open(path, "rb")
        with open(path, "rb") as fh:
            encoding = _encoding(fh.read(4), source)
        return open(path, encoding=encoding.text_codec, errors="surrogateescape", newline=newline)
    except OSError as exc:
        raise InputError(source, None, f"cannot open: {exc.strerror or exc}") from None


def detect_format(path: str | Path) -> InputFormat:
    """By extension; a ``.json`` list is JSON when its first record has ``turns`` and no ``dialog``."""
    source, suffix = str(path), Path(path).suffix.lower()
    _check_file(Path(path), source)
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    if suffix != ".json":
        raise InputError(source, None, "unknown format: name the file .jsonl, .ndjson, .csv or .json, "
                         "or pass a format")
    with _open(Path(path), source, None) as fh:
        first = next(_json_records(fh, source), None)
    record = first[1] if isinstance(first, tuple) and isinstance(first[1], dict) else {}
    return InputFormat.JSON if "turns" in record and "dialog" not in record else InputFormat.PSY_INSIGHT


def collect_errors(on_invalid: str, errors: list[InputError]) -> Callable[[InputError], None]:
    """An ``on_error`` for :func:`read_dialogues`: ``"fail"`` raises the bad record's error, ``"skip"`` keeps it in
    ``errors`` (to report) and reading goes on."""

    def on_error(e: InputError) -> None:
        if on_invalid == "fail":
            raise e
        errors.append(e)

    return on_error


def read_dialogues(path: str | Path, *, format: InputFormat | None = None,
                   on_error: Callable[[InputError], None] | None = None) -> Generator[Dialogue, None, None]:
    """Stream the dialogues of ``path`` (``close()`` the generator to release the file before the end).

    With ``on_error=None`` the first bad record raises its InputError; otherwise ``on_error`` gets each one
    and reading goes on. A dialogue id seen before in the same file is an error (the first one is kept).
    """
    _check_file(Path(path), str(path))
    fmt = detect_format(path) if format is None else InputFormat(format)
    return _dialogues(Path(path), str(path), _READERS[fmt], on_error)


def _dialogues(path: Path, source: str, reader: _Reader,
               on_error: Callable[[InputError], None] | None) -> Generator[Dialogue, None, None]:
    records, shape, newline = reader
    first_line: dict[str, int] = {}
    try:
        fh = _open(path, source, newline)
    except InputError as exc:  # unreadable, or UTF-16 without its byte order mark: a file-level problem
        if on_error is None:
            raise
        on_error(exc)
        return
    with fh:
        for item in records(fh, source):
            if isinstance(item, tuple):
                line, record = item
                try:
                    dialogue = _dialogue(record, shape, source, line)
                except InputError as exc:
                    item = exc
                else:
                    if dialogue.id not in first_line:
                        first_line[dialogue.id] = line
                        yield dialogue
                        continue
                    item = InputError(source, line, f"duplicate dialogue id {dialogue.id!r} (first at line "
                                      f"{first_line[dialogue.id]})", shape.id_keys[0])
            if on_error is None:
                raise item
            on_error(item)


def count_input(path: str | Path, *, format: InputFormat | None = None,
                on_error: Callable[[InputError], None] | None = None) -> tuple[int, int]:
    """(dialogues, turns) in ``path``, streamed; bad records are not counted (``on_error`` gets them)."""
    dialogues = turns = 0
    for dialogue in read_dialogues(path, format=format, on_error=on_error or (lambda _: None)):
        dialogues += 1
        turns += len(dialogue.turns)
    return dialogues, turns
