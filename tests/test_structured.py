"""Bounded parsing: alias bombs, deep nesting, huge and non-UTF-8 files give one short line, never a hang."""

from __future__ import annotations

import time

import pytest

from isoflop import structured
from isoflop.errors import IsoflopError, quote

# The 551-byte "billion laughs": 9^8 strings once expanded.
BOMB = "base: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"l{i}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(7)
)


def test_alias_bomb_in_count_is_one_short_line_at_once(cli, tmp_path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    start = time.perf_counter()
    result = cli("count", str(path))
    assert time.perf_counter() - start < 2
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "alias" in lines[0]
    assert len(lines[0]) < 300


@pytest.mark.parametrize(
    ("text", "fmt"),
    [
        ("[" * 100_000 + "]" * 100_000, "json"),
        ('{"a":' * 65 + "1" + "}" * 65, "json"),
        ("[" * 100_000, "yaml"),
        ("a:\n" + "".join("  " * i + "b:\n" for i in range(1, 70)), "yaml"),
    ],
)
def test_nesting_is_capped(text: str, fmt: structured.Format) -> None:
    with pytest.raises(IsoflopError, match=f"nested deeper than {structured.MAX_DEPTH}"):
        structured.loads(text, fmt, "f", "model file", "fix it")


def test_small_aliases_are_read() -> None:
    data = structured.loads("a: &x {k: 1, j: [1, 2]}\nb: *x\n", "yaml", "f", "x", "y")
    assert data["b"] == {"k": 1, "j": [1, 2]}


def test_nesting_at_the_cap_parses() -> None:
    depth = structured.MAX_DEPTH
    assert structured.loads("[" * depth + "]" * depth, "json", "f", "x", "y") is not None


def test_size_cap_refuses_before_reading(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(structured, "MAX_BYTES", 1000)
    path = tmp_path / "big.json"
    path.write_text("[" + "1," * 1000 + "1]")
    with pytest.raises(IsoflopError, match="over the 0 MiB limit|larger than"):
        structured.read(path, "law file", "fix it")


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_non_utf8_is_named_with_the_byte(cli, tmp_path, suffix: str) -> None:
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"d_model: \xff\xfe\n")
    result = cli("count", str(path))
    assert result.code == 2
    assert result.err.count("\n") == 1 and "not UTF-8 text (byte 9)" in result.err


def test_yaml_error_names_line_and_column() -> None:
    with pytest.raises(IsoflopError, match=r"line 1, column 6"):
        structured.loads("a: [1", "yaml", "f", "x", "y")


def test_python_tags_are_refused() -> None:
    with pytest.raises(IsoflopError, match="malformed"):
        structured.loads("!!python/object/apply:os.system [echo hi]", "yaml", "f", "x", "y")


def test_quote_is_bounded_and_one_line() -> None:
    assert len(quote("x" * 10_000)) < 230
    assert quote({"a": list(range(10_000))}) == "{'a': <list of 10000 items>}"
    assert "\n" not in quote("a\nb")
    assert quote(3) == "3"


def test_validation_error_quotes_briefly(cli, tmp_path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("d_model: '" + "9" * 5000 + "x'\nn_layers: 2\nn_heads: 2\nvocab_size: 10\n")
    result = cli("count", str(path))
    assert result.code == 2 and result.err.count("\n") == 1 and len(result.err) < 400


def test_clip_keeps_start_and_fix_on_one_line() -> None:
    from isoflop.errors import clip

    message = "bad value " + "x" * 5000 + "\nmore; fix it like this"
    line = clip(message)
    assert "\n" not in line and len(line) <= 3 * 200 + 3
    assert line.startswith("bad value") and line.endswith("fix it like this")


def test_jsonl_error_names_the_line(tmp_path) -> None:
    path = tmp_path / "runs.jsonl"
    path.write_text('{"a": 1}\n\n{oops\n')
    with pytest.raises(IsoflopError, match=r"runs.jsonl, line 3"):
        structured.read_jsonl(path, "JSONL file", "fix")
