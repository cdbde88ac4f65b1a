"""`steer generate` keeps one honest run per --out: the trace is written after every prompt and says
how the run ended, --resume finishes a failed or killed run with the bytes of an uninterrupted one, a
used folder is refused unless --resume / --overwrite, files honour the umask, stale temporaries go."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from io import BytesIO
from pathlib import Path

import pytest
from typer.testing import CliRunner

from steer import io
from steer.cli import app
from tests import rewards_for_tests

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a red circle", "a blue square", "a green triangle"]
CRASHES = "tests.rewards_for_tests:crashes_on_marked"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tests.fixtures.tiny import build

    path = tmp_path_factory.mktemp("tiny-sd")
    build("sd").save_pretrained(path)
    return path


def generate(model_dir, out, prompts, *extra, reward=CRASHES):
    path = Path(out).parent / f"{Path(out).name}-{len(prompts)}.txt"
    path.write_text("\n".join(prompts) + "\n")
    args = ["generate", "--model", model_dir, "--reward", reward, "--steps", 2, "--method", "fk", "--particles", 2,
            "--prompts", path, "--out", out, *extra]
    return CliRunner().invoke(app, [str(a) for a in args])


def error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def pngs(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(out).glob("*.png"))}


def pixels(files: dict[str, bytes]) -> dict[str, bytes]:
    """The decoded pixels (the PNG text chunks name the reward spec, which differs between tests)."""
    from PIL import Image

    return {name: Image.open(BytesIO(data)).tobytes() for name, data in files.items()}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):  # one torch thread, as the `python -m steer` process below (OMP_NUM_THREADS=1)
    yield


@pytest.fixture(scope="module")
def straight(model_dir, tmp_path_factory):
    """An uninterrupted run of the three prompts: the bytes every resumed run must reproduce."""
    import torch

    out = tmp_path_factory.mktemp("straight") / "out"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = generate(model_dir, out, PROMPTS)
    finally:
        torch.set_num_threads(before)
    assert r.exit_code == 0, r.output
    return pngs(out)


def test_a_failed_run_says_so_and_resume_gives_the_uninterrupted_bytes(model_dir, tmp_path, straight, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr(rewards_for_tests, "FAIL_ON", {PROMPTS[2]})
    r = generate(model_dir, out, PROMPTS)
    assert "reward model crashed on 'a green triangle'" in error_line(r)
    trace = json.loads((out / "trace.json").read_text())
    assert trace["failed"] is True and "crashed on 'a green triangle'" in trace["error"] and not trace["complete"]
    assert [i["file"] for i in trace["images"]] == ["000.png", "001.png"] and sorted(pngs(out)) == ["000.png", "001.png"]
    first = (out / "000.png").stat().st_mtime_ns

    monkeypatch.setattr(rewards_for_tests, "FAIL_ON", set())
    r = generate(model_dir, out, PROMPTS, "--resume")
    assert r.exit_code == 0 and "wrote 1 image(s)" in r.output and "2 already there" in r.output, r.output
    assert pngs(out) == straight  # 000-002 and grid.png, byte for byte
    assert (out / "000.png").stat().st_mtime_ns == first  # skipped, not redone
    trace = json.loads((out / "trace.json").read_text())
    assert trace["complete"] is True and trace["failed"] is False and trace["error"] is None
    assert [i["index"] for i in trace["images"]] == [0, 1, 2]


def test_resume_appends_prompts_and_refuses_changed_settings(model_dir, tmp_path, straight):
    out = tmp_path / "out"
    assert generate(model_dir, out, PROMPTS[:2]).exit_code == 0  # two prompts, then a third appended
    r = generate(model_dir, out, PROMPTS, "--resume")
    assert r.exit_code == 0, r.output
    assert pngs(out) == straight
    assert "seed was 0, now 1 (--seed)" in error_line(generate(model_dir, out, PROMPTS, "--resume", "--seed", 1))
    changed = [PROMPTS[0], "a yellow star", PROMPTS[2]]
    assert "prompt 2 of the run" in error_line(generate(model_dir, out, changed, "--resume"))
    assert pngs(out) == straight  # refusals write nothing


def test_a_used_out_is_refused_unless_resume_or_overwrite(model_dir, tmp_path):
    out = tmp_path / "out"
    assert generate(model_dir, out, PROMPTS[:2], "--save-all").exit_code == 0
    before = pngs(out)
    line = error_line(generate(model_dir, out, PROMPTS[:1]))
    assert "holds an earlier run" in line and "--resume" in line and "--overwrite" in line
    assert "exclude each other" in error_line(generate(model_dir, out, PROMPTS[:1], "--resume", "--overwrite"))
    assert pngs(out) == before
    (out / "notes.txt").write_text("mine")  # not steer's: kept
    r = generate(model_dir, out, PROMPTS[:1], "--overwrite")
    assert r.exit_code == 0, r.output
    assert sorted(pngs(out)) == ["000.png", "grid.png"] and (out / "notes.txt").read_text() == "mine"
    assert [i["index"] for i in json.loads((out / "trace.json").read_text())["images"]] == [0]


def test_outputs_honour_the_umask_and_stale_temporaries_go(model_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".000.png.k3x_9abc.tmp"  # what a write killed midway leaves
    stale.write_bytes(b"half a png")
    keep = out / ".hidden.tmp"  # not one of ours
    keep.write_text("x")
    old = os.umask(0o027)
    try:
        r = generate(model_dir, out, PROMPTS[:1])
        io.atomic_write_bytes(tmp_path / "f.bin", b"x")
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.output
    assert not stale.exists() and keep.exists()
    for path in [*out.glob("*.png"), out / "trace.json", tmp_path / "f.bin"]:
        assert path.stat().st_mode & 0o777 == 0o640, (path, oct(path.stat().st_mode))


def test_a_killed_run_leaves_a_trace_of_what_is_on_disk_and_nothing_in_the_cwd_shadows(model_dir, tmp_path, straight):
    """One real process: `python -m steer` in a folder holding a `psutil.py` and a `tqdm.py` (never
    imported), the user's reward module (imported, with its sibling), and a SIGKILL at prompt 3."""
    cwd = tmp_path / "work"
    cwd.mkdir()
    for name in ("psutil", "tqdm"):
        (cwd / f"{name}.py").write_text(f"open({str(cwd / (name + '.SHADOWED'))!r}, 'w').write('x')\n"
                                        f"raise ImportError('the working directory shadowed {name}')\n")
    (cwd / "myhelper.py").write_text("from tests.rewards_for_tests import brightness\n")
    (cwd / "myreward.py").write_text(
        "import os, signal\nfrom myhelper import brightness\n\n"
        "def score(images, prompts):\n"
        "    if prompts[0] == 'a green triangle' and os.path.exists('KILL'):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return brightness(images, prompts)\n")
    (cwd / "KILL").write_text("")
    (cwd / "p.txt").write_text("\n".join(PROMPTS) + "\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "steer", "generate", "--model", str(model_dir), "--reward",
                           "myreward:score", "--steps", "2", "--method", "fk", "--particles", "2", "--prompts", "p.txt",
                           "--out", "out"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]  # killed at prompt 3
    assert not list(cwd.glob("*.SHADOWED"))
    out = cwd / "out"
    trace = json.loads((out / "trace.json").read_text())
    assert not trace["complete"] and not trace["failed"] and not trace["interrupted"]
    assert [i["file"] for i in trace["images"]] == ["000.png", "001.png"] == sorted(pngs(out))

    (cwd / "KILL").unlink()
    before = os.getcwd()
    os.chdir(cwd)  # the user's module is found in the working directory (appended to the end of sys.path)
    try:
        r = CliRunner().invoke(app, ["generate", "--model", str(model_dir), "--reward", "myreward:score", "--steps", "2",
                                     "--method", "fk", "--particles", "2", "--prompts", "p.txt", "--out", "out",
                                     "--resume"])
    finally:
        os.chdir(before)
        sys.path[:] = [p for p in sys.path if p != str(cwd)]
        for name in ("myreward", "myhelper"):
            sys.modules.pop(name, None)
    assert r.exit_code == 0 and "2 already there" in r.output, r.output
    assert pixels(pngs(out)) == pixels(straight)
