"""How a command ends when it does not end well: SIGTERM is handled like Ctrl-C (message, trace
``interrupted``, exit 143, ``--resume`` gives the same bytes); a reward calling ``sys.exit`` is a failure
(one line, exit 2, trace ``failed``); a full disk names the file and the fix and marks the trace failed
without touching earlier files; every file follows the umask; a malformed ``trace.json`` on ``--resume``
is one line naming the file and the fix."""
from __future__ import annotations

import errno
import json
import os
import signal
import stat
import sys
from io import BytesIO
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from steer import io
from steer.errors import SteerError

MARKS: set = set()  # the prompts on which the rewards below misbehave (tests set them)
PROMPTS = ["a red circle", "a blue square", "a green triangle"]


def brightness(images, prompts):
    return images.float().mean(dim=(1, 2, 3))


def exits_on_marked(images, prompts):
    """Brightness, but ``sys.exit(0)`` on a marked prompt (a user's reward bailing out)."""
    if MARKS & set(prompts):
        sys.exit(0)
    return brightness(images, prompts)


def terminated_on_marked(images, prompts):
    """Brightness, but the process gets a SIGTERM (``kill PID``, a job scheduler) on a marked prompt."""
    if MARKS & set(prompts):
        MARKS.clear()  # once
        os.kill(os.getpid(), signal.SIGTERM)
    return brightness(images, prompts)


@pytest.fixture(autouse=True)
def _clean(one_thread):
    MARKS.clear()
    yield
    MARKS.clear()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tests.fixtures.tiny import build

    path = tmp_path_factory.mktemp("tiny-sd")
    build("sd").save_pretrained(path)
    return path


def generate(model_dir, out, *extra, reward="brightness"):
    from steer.cli import app

    path = Path(out).parent / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    args = ["generate", "--model", model_dir, "--reward", f"tests.test_exits:{reward}", "--steps", 2, "--method",
            "fk", "--particles", 2, "--prompts", path, "--out", out, *extra]
    return CliRunner().invoke(app, [str(a) for a in args])


def error_line(result, code: int = 2) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert result.exit_code == code and len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def pixels(out: Path) -> dict[str, bytes]:
    from PIL import Image

    return {p.name: Image.open(BytesIO(p.read_bytes())).tobytes() for p in sorted(out.glob("*.png"))}


def trace(out: Path) -> dict:
    return json.loads((out / "trace.json").read_text())


@pytest.fixture(scope="module")
def straight(model_dir, tmp_path_factory):
    """The pixels of an uninterrupted run."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("straight") / "out"
        assert generate(model_dir, out, reward="terminated_on_marked").exit_code == 0
        return pixels(out)
    finally:
        torch.set_num_threads(before)


# ---- the boundary -------------------------------------------------------------------------------
def test_sigterm_is_handled_like_ctrl_c_with_exit_143(capsys):
    with pytest.raises(typer.Exit) as e:
        with io.boundary(debug=False, interrupted="interrupted: the work so far was kept"):
            os.kill(os.getpid(), signal.SIGTERM)
            raise AssertionError("not reached: the handler raises")
    assert e.value.exit_code == 143 and capsys.readouterr().err == "terminated: the work so far was kept\n"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored after the command
    with pytest.raises(typer.Exit) as e:
        with io.boundary(debug=False, interrupted="interrupted"):
            os.kill(os.getpid(), signal.SIGINT)
    assert e.value.exit_code == 130 and capsys.readouterr().err == "interrupted\n"


def test_sighup_likewise_and_an_ignored_sigterm_stays_ignored(capsys):
    with pytest.raises(typer.Exit) as e:
        with io.boundary(debug=False, interrupted="interrupted: kept"):
            os.kill(os.getpid(), signal.SIGHUP)
    assert e.value.exit_code == 129 and capsys.readouterr().err == "terminated: kept\n"
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # e.g. a parent that ignores it on purpose
    try:
        with io.boundary(debug=False):
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGTERM)  # ignored: the command goes on
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_sigterm_during_a_deferred_write_lets_it_finish(capsys):
    done = []
    with pytest.raises(typer.Exit) as e:
        with io.boundary(debug=False):
            with io.deferred_interrupts():
                os.kill(os.getpid(), signal.SIGTERM)
                done.append("the write")  # not cut short
            raise AssertionError("not reached: raised when the block ends")
    assert done == ["the write"] and e.value.exit_code == 143


@pytest.mark.parametrize("code", [0, None, 3, "bye"])
def test_sys_exit_inside_a_command_is_a_failure(capsys, code):
    with pytest.raises(typer.Exit) as e:
        with io.boundary(debug=False):
            sys.exit(code)
    err = capsys.readouterr().err
    assert e.value.exit_code == 2 and err.count("\n") == 1 and err.startswith("error: the run was stopped by sys.exit")


def test_os_errors_name_the_file_and_the_fix(capsys):
    with pytest.raises(typer.Exit):
        with io.boundary(debug=False):
            raise OSError(errno.ENOSPC, "No space left on device", "/data/out/001.png")
    assert capsys.readouterr().err == ("error: No space left on device (errno 28): '/data/out/001.png'; free space "
                                       "on that disk or choose another --out\n")


# ---- a reward that exits -------------------------------------------------------------------------
def test_a_reward_calling_sys_exit_is_a_reward_error():
    import torch

    from steer.scoring import RewardError, score_images

    MARKS.add("a cat")
    with pytest.raises(RewardError, match=r"fk: reward 'exits_on_marked' at step 3 for prompt 'a cat' called "
                                          r"sys.exit\(0\); a reward must return scores"):
        score_images(exits_on_marked, torch.zeros(1, 3, 8, 8), ["a cat"], method="fk", step=3)


def test_generate_with_a_reward_that_exits_fails_and_says_so(model_dir, tmp_path):
    out = tmp_path / "out"
    MARKS.add(PROMPTS[1])
    line = error_line(generate(model_dir, out, reward="exits_on_marked"))
    assert "called sys.exit(0)" in line and PROMPTS[1] in line
    t = trace(out)
    assert t["failed"] and not t["complete"] and "sys.exit(0)" in t["error"]
    assert [r["index"] for r in t["images"]] == [0] and sorted(pixels(out)) == ["000.png"]


# ---- SIGTERM --------------------------------------------------------------------------------------
def test_generate_on_sigterm_exits_143_marks_the_trace_and_resumes_bitwise(model_dir, tmp_path, straight):
    out = tmp_path / "out"
    MARKS.add(PROMPTS[1])
    result = generate(model_dir, out, reward="terminated_on_marked")
    assert result.exit_code == 143, result.output
    assert "terminated: finished images and trace.json were kept" in result.output
    t = trace(out)
    assert t["interrupted"] and not t["failed"] and not t["complete"] and [r["index"] for r in t["images"]] == [0]
    again = generate(model_dir, out, "--resume", reward="terminated_on_marked")
    assert again.exit_code == 0 and "1 already there" in again.output, again.output
    assert trace(out)["complete"] and pixels(out) == straight


def finetune(model_dir, tmp_path, out, *extra, reward="tests.test_finetune:Brightness"):
    from steer.finetune.command import finetune as command

    app = typer.Typer()
    app.command()(command)
    app.command("noop")(lambda: None)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    args = ["finetune", "--method", "grpo", "--reward", reward, "--prompts", prompts, "--model", model_dir,
            "--steps", 2, "--guidance", 1, "--out", out, "--lora-rank", 2, "--set", "group_size=2",
            "--set", "checkpoint_every=1", *extra]
    return CliRunner().invoke(app, [str(a) for a in args])


def test_finetune_on_sigterm_exits_143_and_resumes(model_dir, tmp_path, monkeypatch):
    from steer.finetune import trainer as trainer_module

    out = tmp_path / "run"
    real = trainer_module.Trainer._one_step
    monkeypatch.setattr(trainer_module.Trainer, "_one_step", lambda self, fn, step: (
        os.kill(os.getpid(), signal.SIGTERM) if step == 1 else None, real(self, fn, step))[1])
    result = finetune(model_dir, tmp_path, out, "--max-steps", 3)
    assert result.exit_code == 143, result.output
    assert "terminated: the last checkpoint was kept; continue with --resume" in result.output
    assert [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    monkeypatch.setattr(trainer_module.Trainer, "_one_step", real)
    again = finetune(model_dir, tmp_path, out, "--max-steps", 3, "--resume")
    assert again.exit_code == 0, again.output
    assert [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


# ---- a full disk ----------------------------------------------------------------------------------
def disk_full_on(monkeypatch, suffix: str) -> None:
    """Every atomic write of a ``*suffix`` file fails as on a full disk (``f.write`` names no file)."""
    from steer import atomic

    real = atomic.atomic_write

    def atomic_write(path, write):
        def full(f):
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")

        real(path, full if str(path).endswith(suffix) else write)

    monkeypatch.setattr(atomic, "atomic_write", atomic_write)  # what every atomic write (write_json, ...) calls


def test_atomic_write_names_the_path_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "x.bin"
    io.atomic_write_bytes(path, b"old")

    def full(f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as err:
        io.atomic_write(path, full)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(path)
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]
    named = io.naming_path(OSError(errno.EDQUOT, "Disk quota exceeded"), tmp_path / "metrics.jsonl")
    assert named.errno == errno.EDQUOT and named.filename == str(tmp_path / "metrics.jsonl")


def test_generate_on_a_full_disk_names_the_file_and_marks_the_trace(model_dir, tmp_path, monkeypatch, straight):
    out = tmp_path / "out"
    disk_full_on(monkeypatch, "001.png")
    line = error_line(generate(model_dir, out, reward="terminated_on_marked"))
    assert "No space left on device" in line and str(out / "001.png") in line and "free space" in line, line
    t = trace(out)
    assert t["failed"] and str(out / "001.png") in t["error"] and [r["index"] for r in t["images"]] == [0]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")] and sorted(pixels(out)) == ["000.png"]
    first = (out / "000.png").read_bytes()
    monkeypatch.undo()
    disk_full_on(monkeypatch, "002.png")  # full again, later: the files before it stay as they were
    line = error_line(generate(model_dir, out, "--resume", reward="terminated_on_marked"))
    assert str(out / "002.png") in line and trace(out)["failed"] and (out / "000.png").read_bytes() == first
    monkeypatch.undo()
    again = generate(model_dir, out, "--resume", reward="terminated_on_marked")
    assert again.exit_code == 0 and "2 already there" in again.output, again.output
    assert pixels(out) == straight and trace(out)["complete"]


def test_finetune_on_a_full_disk_names_the_checkpoint(model_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    disk_full_on(monkeypatch, ".pt")
    line = error_line(finetune(model_dir, tmp_path, out, "--max-steps", 1))
    assert "No space left on device" in line and str(out / "checkpoints" / "step-000001.pt") in line, line


# ---- permissions ----------------------------------------------------------------------------------
def test_files_follow_the_umask(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    mask = os.umask(0o027)
    try:
        io.atomic_write_bytes(tmp_path / "a.bin", b"x")
        with io.holding(tmp_path / "run"):
            pass
        save_file({"w": np.zeros(2)}, str(tmp_path / "lora.safetensors"))  # safetensors writes it 0600
        io.follow_umask(tmp_path)
    finally:
        os.umask(mask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [*tmp_path.iterdir(), tmp_path / "run" / io.LOCK]
             if p.is_file()}
    assert modes == {"a.bin": 0o640, "lora.safetensors": 0o640, io.LOCK: 0o640}


# ---- a malformed trace on --resume ----------------------------------------------------------------
@pytest.mark.parametrize("data, what", [
    (b"{\"images\": [", "is not valid JSON (Expecting value at line 1 column 13)"),
    (b"\xff\xfe{}", "is not UTF-8 text"),
    (b"[1, 2]", "is not a steer trace"),
    (b'{"images": [1]}', "is not a steer trace"),
    (b'{"images": [], "settings": null}', "is not a steer trace"),
    (b"[" * 100_000 + b"]" * 100_000, "is not JSON steer can read (RecursionError)"),
])
def test_a_malformed_trace_on_resume_is_one_line_naming_file_and_fix(model_dir, tmp_path, data, what):
    out = tmp_path / "out"
    out.mkdir()
    (out / "trace.json").write_bytes(data)
    line = error_line(generate(model_dir, out, "--resume"))
    assert f"--resume: {str(out / 'trace.json')!r} {what}" in line and "start over with --overwrite" in line, line


def test_a_trained_lora_follows_the_umask(tmp_path):
    """safetensors writes 0600; the LoRA folder's files follow the umask like every other file of a run."""
    import os

    from steer.finetune import DraftConfig, draft
    from tests.test_finetune import PROMPTS, Brightness, tiny_process

    old = os.umask(0o027)
    try:
        result = draft(tiny_process(steps=2), Brightness(), PROMPTS, DraftConfig(max_steps=1), out_dir=tmp_path)
    finally:
        os.umask(old)
    files = [p for p in result.lora_dir.iterdir() if p.is_file()]
    assert files and all(p.stat().st_mode & 0o777 == 0o640 for p in files), [(p.name, oct(p.stat().st_mode)) for p in files]
