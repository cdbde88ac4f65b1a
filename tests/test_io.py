"""``steer.io``: the one value parser (both commands' typing rules), prompts, dtypes, the error
boundary and atomic writes."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import typer

from steer import io
from steer.errors import SteerError


@pytest.mark.parametrize("raw, default, expected", [
    ("true", False, True), ("Off", True, False), ("1", False, True), ("no", True, False),
    ("3", 4, 3), ("-2", 0, -2),
    ("3", 1.0, 3.0), ("1e-3", 1.0, 1e-3),
    ("3", None, 3), ("0.5", None, 0.5), ("none", None, None), ("None", "max", None), ("sum", "max", "sum"),
    ("7", "max", 7), ("a, b,", ("x",), ("a", "b")), (" padded ", None, "padded"),
])
def test_values_are_typed_by_the_default(raw, default, expected):
    value = io.parse_value(raw, default)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("raw, default, expected", [
    ("1,2", None, (1, 2)), (" 5, 10 ,15 ", None, (5, 10, 15)), ("1,", None, (1,)), ("0.5,1", None, (0.5, 1.0)),
    ("1e3,2", None, (1000.0, 2.0)), ("a,b", None, "a,b"), ("1,b", None, "1,b"), (",", None, ","),
    ("1,2", "max", "1,2"),  # a string default keeps its text
    ("1,2", (), (1, 2)), ("a,2", (), ("a", "2")), ("1,2", [], (1, 2)), ("1,2", ("x",), ("1", "2")),
    ("3, 4", (1,), (3, 4)), ("3,4", (1.0,), (3.0, 4.0)), ("0.5", (1, 2.0), (0.5,)),
])  # `-o branch_steps=1,2` (default None) reaches dts as a tuple of ints
def test_comma_separated_numbers_are_tuples(raw, default, expected):
    value = io.parse_value(raw, default)
    assert value == expected and type(value) is type(expected)
    if isinstance(expected, tuple):
        assert [type(v) for v in value] == [type(v) for v in expected]


@pytest.mark.parametrize("raw, default, message", [
    ("1,x", (1,), "expected comma-separated ints, got '1,x'"), ("1.5,2", (1,), "expected comma-separated ints"),
    ("a", (1.0,), "expected comma-separated numbers, got 'a'"),
    ("maybe", False, "expected true/false, got 'maybe'"), ("none", True, "expected true/false"),
    ("3.5", 4, "expected an int, got '3.5'"), ("none", 4, "expected an int"),
    ("abc", 1.0, "expected a float, got 'abc'"), ("none", 1.0, "expected a float"),
])
def test_bad_values_are_one_line_errors(raw, default, message):
    with pytest.raises(SteerError, match=message) as err:
        io.parse_value(raw, default)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("default", [1.0, 4, True, ("x",), None])
def test_allow_none_makes_none_none_for_every_default(default):  # `steer finetune --set max_grad_norm=none`
    assert io.parse_value("NONE", default, allow_none=True) is None


def test_options_name_the_flag_and_key():
    assert io.parse_options(["lam=2", "ess-threshold = 0.3", "x=a=b"], {"lam": 1.0}, "--option") == {
        "lam": 2.0, "ess_threshold": 0.3, "x": "a=b"}
    with pytest.raises(SteerError, match="--option takes KEY=VALUE, got 'lam'"):
        io.parse_options(["lam"], {}, "--option")
    with pytest.raises(SteerError, match="--set k: expected an int, got 'x'"):
        io.parse_options(["k=x"], {"k": 1}, "--set")


def test_prompts_from_flags_and_file(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text(" a red circle \n\n  \na blue square\n", encoding="utf-8")
    assert io.read_prompts(path, given=["first"]) == ["first", "a red circle", "a blue square"]
    assert io.read_prompts(None, given=["only"]) == ["only"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(SteerError, match="no prompts: prompts file .* is empty; write one prompt per line"):
        io.read_prompts(empty)
    with pytest.raises(SteerError, match="no prompts: give --prompt TEXT"):
        io.read_prompts(None, given=[])
    with pytest.raises(SteerError, match="cannot read prompts file .*FileNotFoundError"):
        io.read_prompts(tmp_path / "missing.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(SteerError, match="cannot read prompts file .*UnicodeDecodeError"):
        io.read_prompts(tmp_path / "bin.txt")


def test_dtypes():
    assert io.parse_dtype(None) is None
    assert io.parse_dtype("fp16") is torch.float16 and io.parse_dtype("bfloat16") is torch.bfloat16
    assert io.parse_dtype("fp32") is torch.float32
    with pytest.raises(SteerError, match="--dtype must be one of float16, bfloat16, float32; got 'float8'"):
        io.parse_dtype("float8")


def test_output_dir(tmp_path):
    assert io.output_dir(tmp_path / "a" / "b").is_dir()
    assert not io.output_dir(tmp_path / "c", create=False).exists()
    (tmp_path / "f").write_text("")
    with pytest.raises(SteerError, match="is a file, not a folder"):
        io.output_dir(tmp_path / "f")


def test_atomic_write_fsyncs_and_never_leaves_a_partial_file(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    path = tmp_path / "sub" / "x.bin"
    io.atomic_write_bytes(path, b"old")
    assert path.read_bytes() == b"old" and len(synced) >= 1  # the file (and the folder where it can be)

    def broken(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        io.atomic_write(path, broken)
    assert path.read_bytes() == b"old" and sorted(p.name for p in path.parent.iterdir()) == ["x.bin"]


def test_json_and_torch_saves(tmp_path):
    io.write_json(tmp_path / "t.json", {"t": torch.tensor([1.0, 2.0]), "p": Path("a/b"), "o": object})
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["t"] == [1.0, 2.0] and data["p"] == "a/b" and data["o"] == repr(object)
    io.atomic_torch_save({"w": torch.arange(3)}, tmp_path / "c.pt")
    assert torch.equal(torch.load(tmp_path / "c.pt")["w"], torch.arange(3))


def test_boundary_one_line_exit_2_and_interrupt_130(capsys):
    with pytest.raises(typer.Exit) as e:
        with io.boundary(debug=False):
            raise SteerError("bad thing\nsecond line")
    assert e.value.exit_code == 2 and capsys.readouterr().err == "error: bad thing\n"
    with pytest.raises(typer.Exit) as e:
        with io.boundary(debug=False):
            raise KeyError()
    assert e.value.exit_code == 2 and capsys.readouterr().err == "error: KeyError\n"
    with pytest.raises(typer.Exit) as e:
        with io.boundary(debug=False, interrupted="stopped"):
            raise KeyboardInterrupt
    assert e.value.exit_code == 130 and capsys.readouterr().err == "stopped\n"
    with pytest.raises(SteerError):  # --debug: the traceback
        with io.boundary(debug=True):
            raise SteerError("shown")
