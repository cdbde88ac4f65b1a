"""The `steer` CLI on a tiny Stable Diffusion pipeline saved to disk (offline)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from steer.cli import app

REWARD = "tests.rewards_for_tests:brightness"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tests.fixtures.tiny import build

    path = tmp_path_factory.mktemp("tiny-sd")
    build("sd").save_pretrained(path)
    return path


def run(*args):
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=True)
    return result


def base_args(model_dir, out, *extra):
    return ["generate", "--model", model_dir, "--reward", REWARD, "--steps", 4, "--out", out, *extra]


def test_generate_writes_images_grid_and_trace(model_dir, tmp_path):
    out = tmp_path / "o"
    r = run(*base_args(model_dir, out, "-p", "a red circle", "-p", "a blue square", "--method", "fk",
                       "--particles", 3, "--save-all"))
    assert r.exit_code == 0, r.output
    assert (out / "000.png").exists() and (out / "001.png").exists() and (out / "grid.png").exists()
    assert len(list(out.glob("000_*.png"))) == 3
    trace = json.loads((out / "trace.json").read_text())
    assert trace["method"] == "fk" and trace["nfe_per_prompt"] == 3 * 4
    assert [i["prompt"] for i in trace["images"]] == ["a red circle", "a blue square"]
    assert trace["versions"]["torch"]
    meta = Image.open(out / "000.png").text
    assert meta["prompt"] == "a red circle" and meta["method"] == "fk"
    assert json.loads(meta["seed"]) == 0 and "reward" in meta


def test_same_seed_gives_byte_identical_pngs(model_dir, tmp_path):
    for name in ("a", "b"):
        r = run(*base_args(model_dir, tmp_path / name, "-p", "x", "--method", "best_of_n", "--n", 2, "--seed", 7))
        assert r.exit_code == 0, r.output
    assert (tmp_path / "a" / "000.png").read_bytes() == (tmp_path / "b" / "000.png").read_bytes()


@pytest.mark.parametrize("method,opts", [
    ("best_of_n", ["--n", 2]), ("fk", ["--particles", 2]), ("reno", ["--iterations", 2]),
    ("dts", ["--rollouts", 2]), ("dts_star", ["--rollouts", 2]), ("beam", []), ("zero_order", ["--iterations", 1]), ("path_search", ["-o", "delta_f=1", "-o", "delta_b=2"]),
])
def test_every_method_through_the_cli(model_dir, tmp_path, method, opts):
    r = run(*base_args(model_dir, tmp_path / method, "-p", "x", "--method", method, *opts))
    assert r.exit_code == 0, r.output
    assert (tmp_path / method / "000.png").exists()


def test_branch_steps_list_reaches_dts_star_as_ints(model_dir, tmp_path, monkeypatch):
    from steer.cli import _method_kwargs
    import importlib

    dts = importlib.import_module("steer.search.dts")

    assert _method_kwargs("dts_star", {}, ["branch_steps=5,10,15"]) == {"branch_steps": (5, 10, 15)}
    seen = []
    real = dts.branching_levels
    monkeypatch.setattr(dts, "branching_levels", lambda s, e, b, m: (seen.append(b), real(s, e, b, m))[1])
    r = run("generate", "--model", model_dir, "--reward", REWARD, "--steps", 16, "--out", tmp_path / "o", "-p", "x",
            "--method", "dts_star", "--rollouts", 1, "-o", "branch_steps=5,10,15")
    assert r.exit_code == 0, r.output
    assert seen == [(5, 10, 15)] and all(type(s) is int for s in seen[0])


@pytest.mark.parametrize("args,message", [
    (["--method", "fkk"], "did you mean 'fk'"),
    (["--reward", "hpz"], "hps"),
    (["--particles", "0"], "--particles must be >= 1"),
    (["--option", "bogus=1"], "takes no option"),
    (["--device", "cuda"], "no CUDA device"),
    (["--prompts", "/nonexistent/prompts.txt"], "cannot read prompts file"),
])
def test_bad_input_is_one_line_exit_2(model_dir, tmp_path, args, message):
    r = run(*base_args(model_dir, tmp_path / "o", "-p", "x", *args))
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output


def test_missing_model_and_file_as_out(tmp_path, model_dir):
    r = run("generate", "-p", "x", "--model", tmp_path / "nope", "--reward", REWARD, "--out", tmp_path / "o")
    assert r.exit_code == 2 and "Traceback" not in r.output
    f = tmp_path / "file"
    f.write_text("")
    r = run(*base_args(model_dir, f, "-p", "x"))
    assert r.exit_code == 2 and "is a file" in r.output


def test_empty_prompts_and_nan_reward(model_dir, tmp_path):
    empty = tmp_path / "p.txt"
    empty.write_text("\n\n")
    r = run(*base_args(model_dir, tmp_path / "o", "--prompts", empty))
    assert r.exit_code == 2 and "no prompts" in r.output
    r = run("generate", "--model", model_dir, "--reward", "tests.rewards_for_tests:nan_reward", "--steps", 2,
            "--out", tmp_path / "o2", "-p", "x", "--method", "best_of_n", "--n", 2)
    assert r.exit_code == 2 and "nan" in r.output.lower() and "'x'" in r.output


def test_rewards_and_methods_tables():
    r = run("rewards")
    assert r.exit_code == 0 and "hps" in r.output and "jpeg" in r.output
    r = run("methods")
    assert r.exit_code == 0 and "particles" in r.output and "dts_star" in r.output


def test_rewards_table_tells_which_are_differentiable():
    r = run("rewards")
    assert r.exit_code == 0, r.output
    rows = [[cell.strip() for cell in line.strip().strip("│").split("│")]
            for line in r.output.splitlines() if line.startswith("│")]
    column = {cells[0]: cells[1] for cells in rows if cells[0]}  # wrapped lines leave the name blank
    assert {name: column[name] for name in ("jpeg", "shapes-check", "hps", "clip", "shapes-clip")} == {
        "jpeg": "no", "shapes-check": "no", "hps": "yes", "clip": "yes", "shapes-clip": "yes"}
    assert "…" not in r.output  # long URLs wrap, they are not cut


FLAGS = st.sampled_from([
    ["--method", "fk"], ["--method", "nope"], ["--method", "bon"], ["--particles", "-1"], ["--particles", "2"],
    ["--n", "0"], ["--n", "2"], ["--lam", "-3"], ["--lam", "abc"], ["--potential", "weird"], ["--steps", "0"],
    ["--steps", "2"], ["--guidance", "nan"], ["--option", "x"], ["--option", "eta=abc"], ["--seed", "-5"],
    ["--dtype", "float8"], ["--height", "7"], ["--nfe-budget", "1"], ["--reward", "clip=abc"], ["--reward", ""],
    ["--prompt", ""], ["--iterations", "0"],
])


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(FLAGS, min_size=1, max_size=4))
def test_random_arguments_never_show_a_traceback(model_dir, tmp_path, flags):
    args = ["generate", "--model", str(model_dir), "--reward", REWARD, "--out", str(tmp_path / "h"), "-p", "x",
            "--steps", "2"]
    for f in flags:
        args += f
    r = CliRunner().invoke(app, args, catch_exceptions=True)
    assert r.exit_code in (0, 2), (args, r.output, r.exception)
    assert "Traceback" not in r.output


def test_accelerate_two_processes_match_one_process(model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na green triangle\n")
    common = ["--model", str(model_dir), "--reward", REWARD, "--steps", "3", "--prompts", str(prompts),
              "--method", "best_of_n", "--n", "2"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, "-m", "steer", "generate", *common, "--out", str(tmp_path / "one")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "-m", "steer", "generate", *common, "--out", str(tmp_path / "two")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    for k in range(3):
        assert (tmp_path / "one" / f"{k:03d}.png").read_bytes() == (tmp_path / "two" / f"{k:03d}.png").read_bytes()
    merged = json.loads((tmp_path / "two" / "trace.json").read_text())
    assert merged["processes"] == 2 and [i["index"] for i in merged["images"]] == [0, 1, 2]


def test_interrupt_keeps_finished_images_and_a_valid_trace(model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\nstop\na blue square\n")
    out = tmp_path / "o"
    r = run("generate", "--model", model_dir, "--reward", "tests.rewards_for_tests:interrupt_on_stop", "--steps", 2,
            "--prompts", prompts, "--method", "best_of_n", "--n", 2, "--out", out)
    assert r.exit_code == 130 and "interrupted" in r.output
    assert (out / "000.png").exists() and not (out / "002.png").exists()
    assert not list(out.glob(".*.tmp"))  # no half-written files left behind
    trace = json.loads((out / "trace.json").read_text())
    assert trace["interrupted"] is True and [i["index"] for i in trace["images"]] == [0]


def test_progress_display_reads_per_prompt_records():
    from steer.cli import _scalar

    assert _scalar([2.0, 4.0]) == 3.0 and _scalar(5) == 5.0 and _scalar(None) is None and _scalar("x") is None


def test_double_ctrl_c_keeps_the_trace_and_shows_no_traceback(model_dir, tmp_path):
    """A real ``python -m steer generate`` gets SIGINT mid-run, then again while it writes trace.json."""
    import signal
    import time

    prompts, marks, out = tmp_path / "p.txt", tmp_path / "marks", tmp_path / "o"
    prompts.write_text("a red circle\na blue square\na green triangle\n")
    marks.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", STEER_TEST_MARKS=str(marks))
    proc = subprocess.Popen([sys.executable, "-m", "steer", "generate", "--model", str(model_dir), "--reward",
                             "tests.rewards_for_tests:slow_and_watched", "--steps", "2", "--prompts", str(prompts),
                             "--method", "best_of_n", "--n", "2", "--out", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (marks / "scored").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        (marks / "interrupted").touch()
        os.kill(proc.pid, signal.SIGINT)  # mid-run: the reward is sleeping
        while not (marks / "writing").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()
        os.kill(proc.pid, signal.SIGINT)  # again, while the trace is being written (the write takes 0.5 s)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted: finished images and trace.json were kept" in err, err
    trace = json.loads((out / "trace.json").read_text())
    assert trace["interrupted"] is True and trace["complete"] is False
    on_disk = sorted(p.name for p in out.glob("[0-9][0-9][0-9].png"))
    assert [i["file"] for i in trace["images"]] == on_disk
    assert not list(out.glob(".*.tmp"))


def test_ctrl_c_while_torch_imports_is_one_line_exit_130():
    """A KeyboardInterrupt raised while the command imports torch (a real Ctrl-C at start-up lands there:
    the import takes seconds) is one line and exit 130, not a traceback from the import machinery."""
    code = ("import sys\n"
            "class Interrupt:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch':\n"
            "            raise KeyboardInterrupt\n"
            "sys.meta_path.insert(0, Interrupt())\n"
            "sys.argv = ['steer', 'methods']\n"
            "from steer.__main__ import main\n"
            "main()\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130 and proc.stderr == "interrupted while starting\n", proc.stderr


def test_output_piped_into_a_closed_reader_is_not_an_error():
    """``steer methods | head -1``: the reader closing the pipe is the user's choice, not a failure."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(f"'{sys.executable}' -m steer methods | head -1", shell=True, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.startswith("best_of_n") and proc.stderr == "", proc.stderr
