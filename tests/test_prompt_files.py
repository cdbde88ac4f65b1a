"""Prompt files: a prompt is a line as ``wc -l`` counts it (split on ``\\n`` only, ``\\r\\n`` handled),
a BOM is dropped, and a prompt no text encoder can read (a NUL byte, only invisible characters, over
``io.MAX_PROMPT_CHARS``) is one line naming the file and the line; ``--prompt`` values likewise."""
from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from steer import io
from steer.errors import SteerError

# the characters str.splitlines() splits on besides \n: none of them may split a prompt
SEPARATORS = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def read(tmp_path, data: bytes, name: str = "p.txt") -> list[str]:
    path = tmp_path / name
    path.write_bytes(data)
    return io.read_prompts(path)


def test_a_bom_is_dropped_and_crlf_is_one_line_end(tmp_path):
    assert read(tmp_path, "\ufeffa red circle\r\na blue square\r\n".encode()) == ["a red circle", "a blue square"]
    assert read(tmp_path, b"\xef\xbb\xbfonly") == ["only"]  # the BOM bytes, no final newline


@pytest.mark.parametrize("sep", SEPARATORS)
def test_only_newline_ends_a_prompt(tmp_path, sep):
    prompts = read(tmp_path, f"a cat{sep}in a hat\nsecond\n".encode())
    assert prompts == [f"a cat{sep}in a hat", "second"]  # prompt 2 keeps seed + 1


@pytest.mark.parametrize("data, line, what", [
    (b"fine\nbad\x00byte\n", 2, "contains a NUL byte"),
    ("a cat\n".encode("utf-16-le"), 1, "contains a NUL byte"),  # UTF-16 text without its BOM
    ("fine\n\u200b\u200b\n".encode(), 2, "only invisible characters"),
    ("\n\n\u200d\ufeff\u2060 \u00ad\n".encode(), 3, "only invisible characters"),  # ZWJ, BOM, WJ, SHY
    ("x\n\u3164\n".encode(), 2, "only invisible characters"),  # the Hangul filler
    (b"ok\n" + b"x" * (io.MAX_PROMPT_CHARS + 1) + b"\n", 2, "over the limit of 10,000"),
])
def test_unreadable_prompts_are_refused_naming_file_and_line(tmp_path, data, line, what):
    with pytest.raises(SteerError) as err:
        read(tmp_path, data)
    message = str(err.value)
    assert f"line {line} of prompts file" in message and "p.txt" in message and what in message, message
    assert "\n" not in message and len(message) < 400


def test_the_limit_itself_is_accepted_and_blank_lines_are_skipped(tmp_path):
    long = "y" * io.MAX_PROMPT_CHARS
    assert read(tmp_path, f"\n \t\n{long}\n\x0c\n\u2028\n".encode()) == [long]


def test_prompt_flags_are_checked_like_lines(tmp_path):
    assert io.read_prompts(None, given=[" spaced "]) == [" spaced "]  # a --prompt is used as given
    for bad, what in (("\u200b", "only invisible"), ("a\x00b", "NUL byte"), ("z" * 10_001, "over the limit")):
        with pytest.raises(SteerError, match=f"--prompt .*{what}"):
            io.read_prompts(None, given=[bad])


def test_a_file_that_is_not_utf8_names_the_fix(tmp_path):
    with pytest.raises(SteerError, match=r"cannot read prompts file .*p\.txt.*UnicodeDecodeError.*save it as UTF-8"):
        read(tmp_path, "é\n".encode("latin-1"))


def test_the_cli_refuses_a_bad_line_in_one_line_before_loading(tmp_path):
    from steer.cli import app

    path = tmp_path / "p.txt"
    path.write_bytes(b"a cat\n\xe2\x80\x8b\n")  # line 2: a zero-width space only
    result = CliRunner().invoke(app, ["generate", "--prompts", str(path), "--model", str(tmp_path / "none"),
                                      "--out", str(tmp_path / "out")])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("error: line 2 of prompts file") and "only invisible" in lines[0]
    assert not (tmp_path / "out").exists()


visible = st.text(alphabet=string.ascii_letters + string.digits + ",.'-éß猫", min_size=1, max_size=12)
filler = st.text(alphabet=" \t" + SEPARATORS + "\u200b", max_size=3)
line = st.builds(lambda a, b, c, d: a + b + c + d, filler, visible, filler, st.one_of(st.just(""), visible))
blank = st.text(alphabet=" \t\x0b\x0c\u2028\u3000", max_size=3)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.one_of(line, blank), max_size=8), crlf=st.booleans(), bom=st.booleans(),
       final_newline=st.booleans())
def test_prompts_are_the_nonblank_newline_separated_lines(tmp_path, lines, crlf, bom, final_newline):
    text = ("\r\n" if crlf else "\n").join(lines) + (("\r\n" if crlf else "\n") if final_newline and lines else "")
    data = (b"\xef\xbb\xbf" if bom else b"") + text.encode()
    expected = [ln.strip() for ln in lines if ln.strip()]
    assert data.count(b"\n") == len(lines) - (0 if final_newline or not lines else 1)  # wc -l
    if not expected:
        with pytest.raises(SteerError, match="is empty"):
            read(tmp_path, data)
        return
    assert read(tmp_path, data) == expected
    numbered = io.prompt_lines(data.decode("utf-8"))
    assert [n for n, _ in numbered] == [k + 1 for k, ln in enumerate(lines) if ln.strip()]  # line numbers


def test_the_negative_prompt_is_checked_too(tmp_path):
    from steer.cli import app

    result = CliRunner().invoke(app, ["generate", "--prompt", "a cat", "--negative-prompt", "\u200b\u2060",
                                      "--model", str(tmp_path / "none"), "--out", str(tmp_path / "out")])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("error: --negative-prompt has only invisible characters")


def test_every_entry_point_bounds_a_prompt_s_length(tmp_path):
    """The 2.6 MB caption class: steer.generate's prompts and preference-dataset captions are bounded too."""
    from steer.errors import SteerError
    from steer.finetune.preference_dataset import Row, _caption
    from steer.io import MAX_PROMPT_CHARS
    from steer.toolkit import prompt_list

    huge = "a red circle " * (MAX_PROMPT_CHARS // 10)
    with pytest.raises(ValueError, match=r"prompt 1 is .* over the limit of 10,000"):
        prompt_list("fk", ["a red circle", huge])

    row = Row(cells={"caption": huge}, file=tmp_path / "pairs.jsonl", where="line 4")
    with pytest.raises(SteerError, match="pairs.jsonl' line 4: caption is .* over the limit"):
        _caption(row)
