"""One run per ``--out`` at a time: ``steer generate`` and ``steer finetune`` hold the folder with an OS lock
(``flock`` on ``.steer.lock``) for as long as they run; a second run into it is refused in one line naming
the holder's PID, before it deletes or writes anything; a killed holder leaves no stuck lock; the lock
file is neither "an earlier run" nor deleted by ``--overwrite``."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from steer import io
from steer.errors import SteerError
from steer.rewards.base import Reward

ROOT = Path(__file__).resolve().parents[1]
# a process that holds FOLDER until killed
HOLDER = "import sys, time\nfrom steer import io\nio.hold_folder(sys.argv[1])\nprint('held', flush=True)\n" \
         "time.sleep(600)\n"
# a process that tries to hold FOLDER: exit 0 if it could, else 1 with the refusal on stdout
PROBE = "import sys\nfrom steer import io\ntry:\n    io.hold_folder(sys.argv[1])\nexcept Exception as e:\n" \
        "    print(e)\n    sys.exit(1)\n"
PROBED: list[subprocess.CompletedProcess] = []  # what the rewards below saw while their run held --out


def probe(folder) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, str(folder)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def holder(tmp_path):
    """Start a process holding a folder: ``holder(folder) -> its Popen``; killed at the end."""
    started = []

    def start(folder):
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], cwd=ROOT, stdout=subprocess.PIPE,
                                text=True)
        started.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tests.fixtures.tiny import build

    path = tmp_path_factory.mktemp("tiny-sd")
    build("sd").save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    PROBED.clear()
    yield


def probing_brightness(images, prompts):
    """Brightness; at its first call it records whether another process could take --out meanwhile."""
    if not PROBED:
        PROBED.append(probe(os.environ["STEER_TEST_OUT"]))
    return images.float().mean(dim=(1, 2, 3))


class ProbingBrightness(Reward):
    name, differentiable = "probing-brightness", True

    def score(self, images, prompts):
        return probing_brightness(images, prompts)


def one_error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


# ---- the lock itself ----------------------------------------------------------------------------
def test_a_held_folder_is_refused_naming_the_pid_and_a_killed_holder_leaves_no_stuck_lock(tmp_path, holder):
    proc = holder(tmp_path)
    with pytest.raises(SteerError, match=rf"is in use by another steer run \(PID {proc.pid}\); wait for it"):
        io.hold_folder(tmp_path)
    refused = probe(tmp_path)
    assert refused.returncode == 1 and f"PID {proc.pid}" in refused.stdout
    proc.send_signal(signal.SIGKILL)  # killed: no cleanup ran, the OS drops its lock
    proc.wait()
    try:
        assert io.hold_folder(tmp_path) is True
        assert (tmp_path / io.LOCK).read_text().strip() == str(os.getpid())
        assert io.hold_folder(tmp_path) is False  # this process holds it already: re-entrant
        assert probe(tmp_path).returncode == 1
    finally:
        io.release_folder(tmp_path)
    assert probe(tmp_path).returncode == 0  # released: free for the next run


def test_check_free_names_the_holder_and_takes_nothing(tmp_path, holder):
    io.check_free(tmp_path)  # no lock file: free, and none is made
    assert not (tmp_path / io.LOCK).exists()
    proc = holder(tmp_path)
    with pytest.raises(SteerError, match=rf"in use by another steer run \(PID {proc.pid}\)"):
        io.check_free(tmp_path)
    proc.kill()
    proc.wait()
    io.check_free(tmp_path)
    with io.holding(tmp_path):
        io.check_free(tmp_path)  # held by this process: free for it
        assert probe(tmp_path).returncode == 1
    assert probe(tmp_path).returncode == 0


def test_the_lock_file_is_not_a_run_and_survives_cleanup(tmp_path):
    from steer import generate_folder as run
    from steer.finetune import run_folder

    with io.holding(tmp_path):
        (tmp_path / "000.png").write_bytes(b"x")
        (tmp_path / "metrics.jsonl").write_text("{}\n")
        assert run.earlier_run(tmp_path) == ["000.png"] and run_folder.earlier_run(tmp_path) == ["metrics.jsonl"]
        run.clear_run(tmp_path)
        run_folder.clear_run(tmp_path)
        assert io.remove_stale_temporaries(tmp_path) == []
        assert sorted(p.name for p in tmp_path.iterdir()) == [io.LOCK]
        assert probe(tmp_path).returncode == 1  # still held
    assert run.earlier_run(tmp_path) == [] and run_folder.earlier_run(tmp_path) == []


# ---- steer generate -----------------------------------------------------------------------------
def generate(model_dir, out, *extra, reward="tests.test_run_lock:probing_brightness"):
    args = ["generate", "--model", model_dir, "--reward", reward, "--steps", 2, "--method", "best_of_n", "--n", 2,
            "--prompt", "a red circle", "--prompt", "a blue square", "--out", out, *extra]
    from steer.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_generate_holds_out_while_it_runs(model_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("STEER_TEST_OUT", str(out))
    result = generate(model_dir, out)
    assert result.exit_code == 0, result.output
    assert PROBED[0].returncode == 1 and f"PID {os.getpid()}" in PROBED[0].stdout, PROBED[0]
    assert json.loads((out / "trace.json").read_text())["complete"]
    assert probe(out).returncode == 0  # released when the run ended
    again = generate(model_dir, out, "--overwrite")
    assert again.exit_code == 0, again.output
    assert (out / io.LOCK).is_file() and sorted(p.name for p in out.glob("*.png")) == ["000.png", "001.png", "grid.png"]


@pytest.mark.parametrize("extra", [[], ["--overwrite"], ["--resume"]])
def test_generate_into_a_held_out_is_refused_and_touches_nothing(model_dir, tmp_path, holder, extra):
    out = tmp_path / "out"
    out.mkdir()
    earlier = {"000.png": b"the other run's image", "trace.json": b"{}"}
    for name, data in earlier.items():
        (out / name).write_bytes(data)
    proc = holder(out)
    line = one_error_line(generate(model_dir, out, *extra))
    assert f"is in use by another steer run (PID {proc.pid})" in line and "choose another --out" in line
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != io.LOCK} == earlier


# ---- steer finetune -----------------------------------------------------------------------------
def finetune(model_dir, tmp_path, out, *extra):
    from steer.finetune.command import finetune as command

    app = typer.Typer()
    app.command()(command)
    app.command("noop")(lambda: None)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    args = ["finetune", "--method", "grpo", "--reward", "tests.test_run_lock:ProbingBrightness", "--prompts", prompts,
            "--model", model_dir, "--steps", 2, "--guidance", 1, "--out", out, "--lora-rank", 2, "--max-steps", 1,
            "--set", "group_size=2", *extra]
    return CliRunner().invoke(app, [str(a) for a in args])


def test_finetune_holds_out_while_it_runs(model_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv("STEER_TEST_OUT", str(out))
    result = finetune(model_dir, tmp_path, out)
    assert result.exit_code == 0, result.output
    assert PROBED[0].returncode == 1 and f"PID {os.getpid()}" in PROBED[0].stdout, PROBED[0]
    import gc

    gc.collect()  # the run's Trainer (and its accelerator) is gone: the folder is free
    assert probe(out).returncode == 0
    assert (out / io.LOCK).is_file() and (out / "lora").is_dir()


@pytest.mark.parametrize("extra", [["--overwrite"], []])
def test_finetune_into_a_held_out_is_refused_and_touches_nothing(model_dir, tmp_path, holder, extra):
    out = tmp_path / "run"
    out.mkdir()
    proc = holder(out)
    if extra:  # --overwrite would delete these
        (out / "metrics.jsonl").write_text('{"step": 1}\n')
        (out / "config.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    line = one_error_line(finetune(model_dir, tmp_path, out, *extra))
    assert f"is in use by another steer run (PID {proc.pid})" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def _rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), ACCELERATE_USE_CPU="true")
    from accelerate import Accelerator

    from steer.finetune import run_folder

    accelerator = Accelerator(cpu=True)
    try:
        run_folder.prepare(Path(out), Path(out) / "checkpoints", accelerator, resume=False, overwrite=True)
        outcome = "held"
    except SteerError as e:
        outcome = str(e)
    Path(out, f"rank{rank}.txt").write_text(outcome)
    accelerator.wait_for_everyone()


@pytest.mark.parametrize("held", [False, True])
def test_the_ranks_of_one_run_share_the_folder_and_are_refused_together(tmp_path, holder, held):
    """Under ``accelerate launch`` the main process holds --out for its siblings; refused, every rank
    stops with the same line (none waits forever at a barrier)."""
    import socket

    import torch.multiprocessing as mp

    proc = holder(tmp_path) if held else None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    outcomes = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    if held:
        assert outcomes[0] == outcomes[1] and f"(PID {proc.pid})" in outcomes[0]
    else:
        assert outcomes == ["held", "held"]
