"""paddle_qwen2.jsonl: the one JSON-lines reader and its `FILE:LINE: ...` errors."""

from __future__ import annotations

import gzip
import re

import pytest

from paddle_qwen2.errors import PaddleQwen2Error
from paddle_qwen2.jsonl import JSONLError, read_jsonl, read_lines, where

# (file bytes, the (line, value) pairs read)
GOOD_FILES = {
    "two lines": (b'{"a": 1}\n"b"\n', [(1, {"a": 1}), (2, "b")]),
    "no final newline": (b'{"a": 1}\n[2]', [(1, {"a": 1}), (2, [2])]),
    "blank lines keep numbering": (b'\n{"a": 1}\n   \n\n3\n', [(2, {"a": 1}), (5, 3)]),
    "crlf endings": (b'{"a": 1}\r\n{"b": 2}\r\n', [(1, {"a": 1}), (2, {"b": 2})]),
    "leading BOM dropped": (b'\xef\xbb\xbf{"a": 1}\n', [(1, {"a": 1})]),
    "utf-8 text": ('{"t": "法国的首都"}\n'.encode(), [(1, {"t": "法国的首都"})]),
    "empty file": (b"", []),
    "only blank lines": (b"\n\n  \n", []),
}

# (file bytes, the message after "FILE")
BAD_FILES = {
    "invalid JSON": (b'{"a": 1}\n{"a" 1}\n', r":2: not valid JSON \(Expecting ':' delimiter at column 6\)"),
    "extra data": (b'{"a": 1} x\n', r":1: not valid JSON \(Extra data at column 10\)"),
    "truncated last line": (b'{"a": 1}\n{"a": ', r":2: not valid JSON \(Expecting value at column 7\)"),
    "not UTF-8": (b'"ok"\n\n"\xff"\n', r":3: not valid UTF-8 \(invalid start byte at byte 2\)"),
    "BOM not at the start": (b'"ok"\n\xef\xbb\xbf"x"\n', r":2: not valid JSON \(Unexpected UTF-8 BOM .* at column 1\)"),
    "latin-1 text": ('"café"\n'.encode("latin-1"), r":1: not valid UTF-8 \(invalid continuation byte at byte 5\)"),
}


@pytest.mark.parametrize("name", GOOD_FILES)
def test_reads_values_with_their_line_numbers(tmp_path, name):
    content, expected = GOOD_FILES[name]
    path = tmp_path / "data.jsonl"
    path.write_bytes(content)
    assert list(read_jsonl(path)) == expected
    assert list(read_jsonl(str(path))) == expected


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_file_names_file_and_line(tmp_path, name):
    content, message = BAD_FILES[name]
    path = tmp_path / "data.jsonl"
    path.write_bytes(content)
    with pytest.raises(JSONLError) as info:
        list(read_jsonl(path))
    assert re.fullmatch(re.escape(str(path)) + message, str(info.value)), str(info.value)


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(JSONLError, match=re.escape(f"{tmp_path / 'absent.jsonl'}: no such file")):
        list(read_jsonl(tmp_path / "absent.jsonl"))
    with pytest.raises(JSONLError, match=re.escape(f"{tmp_path}: not a file")):
        list(read_jsonl(tmp_path))


def test_gzip_file(tmp_path):
    path = tmp_path / "data.jsonl.gz"
    with gzip.open(path, "wb") as f:
        f.write(b'{"a": 1}\n\n"b"\n')
    assert list(read_jsonl(path)) == [(1, {"a": 1}), (3, "b")]


def test_read_lines_keeps_blank_lines_and_strips_terminators(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"\xef\xbb\xbfa\r\n\nb \n")
    assert list(read_lines(path)) == [(1, "a"), (2, ""), (3, "b ")]


def test_error_type_and_prefix():
    assert issubclass(JSONLError, PaddleQwen2Error) and issubclass(JSONLError, ValueError)
    assert where("x/data.jsonl", 3) == "x/data.jsonl:3"
