"""The shipped shapes text-to-image pipeline: loads offline as a plain diffusers
``StableDiffusionPipeline``, runs through steer, is the embedded default, and draws single objects
the exact checker accepts at its default sampling settings."""
import pytest
import torch

import steer
from steer.pipelines import from_pipe
from steer.zoo.shapes import DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_INFERENCE_STEPS, pipeline
from steer.zoo.shapes.checker import check
from steer.zoo.shapes.generator import WEIGHTS_DIR
from steer.zoo.shapes.world import split_captions


@pytest.fixture(scope="module")
def pipe():
    return pipeline()


def test_loads_offline_with_plain_diffusers_and_is_small():
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    loaded = StableDiffusionPipeline.from_pretrained(str(WEIGHTS_DIR), local_files_only=True)
    assert isinstance(loaded.text_encoder, CLIPTextModel)
    assert loaded.vae.config.sample_size == 32 and loaded.unet.config.sample_size == 16
    assert CLIPTextModel.from_pretrained(str(WEIGHTS_DIR / "text_encoder")).config.hidden_size == 128
    files = [p for p in WEIGHTS_DIR.rglob("*") if p.is_file()]
    assert all(p.suffix != ".bin" for p in files)
    assert sum(p.stat().st_size for p in files) <= 13e6  # + the 7 MB CLIP: <= 20 MB shipped


def test_generates_32px_images(pipe):
    g = torch.Generator().manual_seed(0)
    out = pipe(["a red circle", "a blue square above a green triangle"], num_inference_steps=4,
               guidance_scale=DEFAULT_GUIDANCE_SCALE, generator=g, output_type="pt").images
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()
    assert 0 <= out.min() and out.max() <= 1


def test_runs_through_steer(pipe):
    process = from_pipe(pipe, num_inference_steps=4, guidance_scale=DEFAULT_GUIDANCE_SCALE)
    res = steer.generate(process, ["a yellow triangle"], method="fk", reward="shapes-clip", particles=2)
    assert res.images.shape == (1, 3, 32, 32) and torch.isfinite(res.rewards).all()


def test_default_model_is_the_shapes_pipeline():
    from diffusers import StableDiffusionPipeline

    default = steer.zoo.default_model()
    assert isinstance(default, StableDiffusionPipeline)
    assert default.unet.config.sample_size == 16 and default.tokenizer.vocab_size == 1000


def test_single_objects_pass_the_checker_at_default_settings(pipe):
    caps = split_captions("test")["single"] * 2  # all 12 single-object captions, two seeds each
    g = torch.Generator().manual_seed(123)
    out = pipe(caps, num_inference_steps=DEFAULT_NUM_INFERENCE_STEPS, guidance_scale=DEFAULT_GUIDANCE_SCALE,
               generator=g, output_type="pt").images
    acc = check(out, caps).float().mean().item()
    assert acc >= SINGLE_FLOOR, f"single-object checker accuracy {acc:.2f}"


SINGLE_FLOOR = 0.8  # the target for single objects (measured: 24/24 at this seed)


def test_main_command_uses_the_embedded_model_at_its_settings_and_prints_the_breakdown(tmp_path):
    """The README's main command, as the CLI runs it (no --model): 25 steps, guidance 4, a time table."""
    import json

    from typer.testing import CliRunner

    from steer.cli import app

    r = CliRunner().invoke(app, ["generate", "--method", "fk", "--reward", "shapes-clip", "--prompt",
                                 "a red circle above a blue square", "--verbose", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    trace = json.loads((tmp_path / "trace.json").read_text())
    assert trace["steps"] == DEFAULT_NUM_INFERENCE_STEPS and trace["guidance_scale"] == DEFAULT_GUIDANCE_SCALE
    assert trace["nfe_per_prompt"] % DEFAULT_NUM_INFERENCE_STEPS == 0
    for part in ("load", "denoise", "decode", "reward", "total"):
        assert part in r.output
    timing = trace["timing"]
    assert timing["denoise_seconds"] > 0 and timing["reward_seconds"] > 0
    assert timing["denoise_seconds"] + timing["reward_seconds"] <= timing["total_seconds"]
    # with no --reward (and no --model) the embedded model is steered by its own shipped reward
    r = CliRunner().invoke(app, ["generate", "--prompt", "a red circle", "--steps", "2", "--out", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "d" / "trace.json").read_text())["reward"] == "shapes-clip"


def test_shipped_models_load_without_progress_bars_and_restore_the_setting(capfd):
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    from steer.zoo.shapes import clip

    assert dlog.is_progress_bar_enabled() and tlog.is_progress_bar_enabled()
    pipeline(), clip()
    err = capfd.readouterr().err
    assert "Loading pipeline components" not in err and "Loading weights" not in err
    assert dlog.is_progress_bar_enabled() and tlog.is_progress_bar_enabled()


def test_embedded_model_chunks_denoiser_calls_on_the_cpu_only():
    from steer.api import resolve_process
    from steer.zoo import default_options
    from steer.zoo.shapes import CPU_BATCH_SIZE

    assert default_options()["batch_size"] == default_options("cpu")["batch_size"] == CPU_BATCH_SIZE
    assert "batch_size" not in default_options("cuda")
    assert resolve_process(None).batch_size == CPU_BATCH_SIZE
    assert resolve_process(None, batch_size=8).batch_size == 8  # an explicit option wins
