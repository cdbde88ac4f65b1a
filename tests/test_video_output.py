"""Video output: ``outputs.save_video`` / ``read_video`` (MP4 with PyAV, animated WebP with PIL), and
``steer generate`` on a saved tiny Wan pipeline writing NNN.mp4 next to NNN.png, recorded in trace.json
(name, sha256) so ``--resume`` skips it; ``num_frames`` / ``--num-frames`` for video pipelines only."""
import hashlib
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import steer
from steer import outputs
from steer.cli import app
from steer.errors import SteerError
from tests.fixtures.tiny import build

REWARD = "tests.rewards_for_tests:brightness@frames:min:2"


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-wan")
    build("wan").save_pretrained(path)
    return path


def generate(model, out, *extra, prompts=("a red circle", "two green triangles"), frames=5):
    args = ["generate", "--model", model, "--reward", REWARD, "--steps", 2, "--method", "best_of_n", "--n", 2,
            "--height", 32, "--width", 32, "--num-frames", frames, "--out", out, *extra]
    for p in prompts:
        args += ["--prompt", p]
    return CliRunner().invoke(app, [str(a) for a in args])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- the writer ---------------------------------------------------------------------------------
def test_the_video_extra_is_installed_here():
    pytest.importorskip("av")  # the `video` extra, in `dev`: CI writes real MP4s
    assert outputs.video_format() == "mp4"


@pytest.mark.parametrize("kind", ["mp4", "webp"])
def test_save_and_read_back(kind, tmp_path):
    if kind == "mp4":
        pytest.importorskip("av")
    t = torch.linspace(0, 1, 7).view(7, 1, 1, 1)
    frames = (t * torch.ones(7, 3, 16, 24)).clone()  # (F, 3, H, W): brightening grey frames
    frames[:, 0, :8] = 1.0  # a red band on top
    info = {"prompt": "a red band", "seed": 3, "options": {"n": 2}}
    digest = outputs.save_video(tmp_path / f"v.{kind}", frames, fps=12, info=info)
    assert digest == sha256(tmp_path / f"v.{kind}")
    back, meta = outputs.read_video(tmp_path / f"v.{kind}")
    assert back.shape == (7, 3, 16, 24) and meta == info
    err = (back - frames).abs()
    assert err.max() <= (0.6 / 255 if kind == "webp" else 0.2) and err.mean() < 0.03  # lossless WebP, CRF-18 H.264
    assert [p.name for p in tmp_path.iterdir()] == [f"v.{kind}"]  # atomic: no temporaries left


def test_odd_sides_and_bad_calls(tmp_path):
    pytest.importorskip("av")
    outputs.save_video(tmp_path / "odd.mp4", torch.rand(3, 3, 9, 11), fps=8)
    back, _ = outputs.read_video(tmp_path / "odd.mp4")
    assert back.shape == (3, 3, 10, 12)  # yuv420p: the last row / column repeated to even sides
    with pytest.raises(ValueError, match=".mp4 or .webp"):
        outputs.save_video(tmp_path / "v.avi", torch.rand(3, 3, 8, 8), fps=8)
    with pytest.raises(ValueError, match=r"\(F, 3, H, W\)"):
        outputs.save_video(tmp_path / "v.webp", torch.rand(1, 3, 3, 8, 8), fps=8)


# ---- steer generate -----------------------------------------------------------------------------
def test_generate_writes_videos_and_resume_skips_them(wan_dir, tmp_path):
    out = tmp_path / "out"
    r = generate(wan_dir, out)
    assert r.exit_code == 0, r.output
    trace = json.loads((out / "trace.json").read_text())
    assert trace["complete"] and trace["num_frames"] == 5 and trace["settings"]["num_frames"] == 5
    kind = outputs.video_format()
    for k, rec in enumerate(trace["images"]):
        video = out / f"{k:03d}.{kind}"
        assert rec["video"] == video.name and rec["video_sha256"] == sha256(video)
        frames, meta = outputs.read_video(video)
        assert frames.shape == (5, 3, 32, 32)
        assert meta["prompt"] == rec["prompt"] and meta["num_frames"] == 5 and meta["fps"] == 16.0
        assert meta["reward_spec"] == REWARD and meta["seed"] == k and meta["reward"] == rec["reward"]
    assert (out / "grid.png").is_file() and (out / "000.png").is_file()
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    again = generate(wan_dir, out, "--resume")  # everything there: nothing regenerated
    assert again.exit_code == 0 and "wrote 0 image(s)" in again.output and "2 already there" in again.output
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "trace.json"} == \
        {k: v for k, v in before.items() if k != "trace.json"}

    (out / f"001.{kind}").write_bytes(b"truncated")  # a damaged video: that prompt is made again
    third = generate(wan_dir, out, "--resume")
    assert third.exit_code == 0 and "wrote 1 image(s)" in third.output, third.output
    assert (out / f"001.{kind}").read_bytes() == before[f"001.{kind}"]

    changed = generate(wan_dir, out, "--resume", frames=9)
    assert changed.exit_code == 2 and "num_frames was 5, now 9 (--num-frames)" in changed.output

    assert generate(wan_dir, out, "--overwrite", prompts=("a red circle",)).exit_code == 0
    assert not (out / f"001.{kind}").exists() and (out / f"000.{kind}").exists()  # the old run's videos went


def test_num_frames_is_for_video_pipelines(tmp_path):
    wan = build("wan")
    wan.set_progress_bar_config(disable=True)
    out = steer.generate(wan, "a red circle", method="best_of_n", reward=REWARD, n=1, steps=1, height=32,
                         width=32, num_frames=9)
    assert out.images.shape == (1, 3, 3 * 32, 3 * 32)  # 9 frames: a 3x3 grid
    with pytest.raises(SteerError, match="num_frames=6 must be 1 \\+ a multiple of 4.*num_frames=5"):
        steer.generate(wan, "a red circle", method="best_of_n", reward=REWARD, n=1, steps=1, height=32, width=32,
                       num_frames=6)
    with pytest.raises(SteerError, match=r"num_frames is an option of video pipelines .* StableDiffusionPipeline "
                                         r"makes images: drop num_frames \(--num-frames\)"):
        steer.generate(build("sd"), "a red circle", method="best_of_n", reward=REWARD, n=1, num_frames=5)
    sd_dir = tmp_path / "tiny-sd"
    build("sd").save_pretrained(sd_dir)
    r = generate(sd_dir, tmp_path / "out")
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert r.exit_code == 2 and len(lines) == 1 and "num_frames is an option of video pipelines" in lines[0]
    assert not (tmp_path / "out" / "trace.json").exists()
