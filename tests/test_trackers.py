"""Experiment trackers (``report_to``, accelerate's): a tiny GRPO run writes a TensorBoard event file under
the run folder whose scalars are metrics.jsonl's and whose images are the sampled ones; bad names and
missing packages are one line. (The suite's conftest blocks any network connection.)"""
from __future__ import annotations

import json
import warnings

import pytest

from steer.errors import SteerError, SteerWarning
from steer.finetune import GRPOConfig, grpo
from tests.test_finetune import PROMPTS, Brightness, tiny_process

pytest.importorskip("tensorboard")


def _events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list((run_dir / "trackers").rglob("events.out.tfevents.*"))
    assert files, "no event file under trackers/"
    acc = EventAccumulator(str(run_dir / "trackers" / "steer-finetune"), size_guidance={"images": 0, "scalars": 0})
    return acc.Reload()


def test_tensorboard_gets_metrics_and_images(tmp_path, one_thread):
    out = tmp_path / "run"
    cfg = GRPOConfig(max_steps=2, group_size=2, lora_rank=2, report_to="tensorboard", log_images_every=1)
    grpo(tiny_process(steps=2), Brightness(), PROMPTS, cfg, out_dir=out)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    acc = _events(out)
    tags = acc.Tags()
    for key in ("reward_mean", "loss", "grad_norm", "lr", "seconds", "nfe"):
        events = acc.Scalars(key)
        assert [e.step for e in events] == [1, 2]
        assert [e.value for e in events] == pytest.approx([r[key] for r in logged], rel=1e-6)
    assert "kl" not in tags["scalars"]  # None in metrics.jsonl (kl_beta = 0): skipped, not logged as 0
    images = acc.Images("samples")
    assert [e.step for e in images] == [1, 2]  # one image (a grid of the step's 2 samples) per step
    assert images[0].width > 0 and images[0].height > 0 and images[0].encoded_image_string[:4] == b"\x89PNG"
    assert "images" not in logged[0]  # the images go to the trackers only


def test_images_off_and_resume_may_change_report_to(tmp_path, one_thread):
    out = tmp_path / "run"
    cfg = GRPOConfig(max_steps=1, group_size=2, lora_rank=2, checkpoint_every=1)
    grpo(tiny_process(steps=2), Brightness(), PROMPTS, cfg, out_dir=out)
    assert not (out / "trackers").exists()  # report_to None: no tracker
    more = GRPOConfig(max_steps=2, group_size=2, lora_rank=2, checkpoint_every=1, report_to="tensorboard")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grpo(tiny_process(steps=2), Brightness(), PROMPTS, more, out_dir=out, resume=True)
    assert any(issubclass(w.category, SteerWarning) and "report_to" in str(w.message) for w in caught)
    acc = _events(out)
    assert [e.step for e in acc.Scalars("loss")] == [2]  # the resumed step; log_images_every = 0: no images
    assert acc.Tags()["images"] == []


def test_bad_tracker_settings_are_one_line(monkeypatch):
    with pytest.raises(ValueError, match=r"^report_to must be None or tracker names from tensorboard, wandb") as e:
        GRPOConfig(report_to="tensorbord")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="log_images_every must be an integer >= 0"):
        GRPOConfig(log_images_every=-1)
    from steer.finetune.command import build_config

    with pytest.raises(SteerError, match="^report_to must be"):
        build_config("grpo", {"report_to": "nope"}, [], {})
    assert build_config("grpo", {"report_to": "tensorboard"}, [], {}).report_to == "tensorboard"

    import accelerate.tracking

    from steer.finetune.distributed import check_trackers

    monkeypatch.setattr(accelerate.tracking, "_available_trackers", [])  # as if tensorboard were not installed
    with pytest.raises(SteerError) as e:
        check_trackers(["tensorboard"])
    assert str(e.value).startswith("report_to='tensorboard' needs the tensorboard package")
    assert "pip install tensorboard" in str(e.value) and "\n" not in str(e.value)


def test_missing_tracker_package_stops_before_training(tmp_path, monkeypatch):
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "_available_trackers", [])
    cfg = GRPOConfig(max_steps=1, group_size=2, lora_rank=2, report_to="wandb")
    with pytest.raises(SteerError, match=r"^report_to='wandb' needs the wandb package, which is not installed: "
                                         r"pip install wandb$"):
        grpo(tiny_process(steps=2), Brightness(), PROMPTS, cfg, out_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
