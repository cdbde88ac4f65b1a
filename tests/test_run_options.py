"""``steer.run_options.RunOptions``: the run-wide options as one frozen record, checked once, each field
carrying its CLI flag; trace.json's settings keys as before (earlier runs resume)."""
import dataclasses

import numpy as np
import pytest
import torch

from steer.errors import SteerError
from steer.generate_folder import SETTINGS
from steer.run_options import RunOptions


def test_check_normalizes_and_freezes():
    run = RunOptions.check(seed=np.int64(3), steps=np.int32(5), guidance_scale=2, height=64, dtype="bf16")
    assert (run.seed, run.steps, run.guidance_scale, run.height, run.dtype) == (3, 5, 2.0, 64, torch.bfloat16)
    assert type(run.seed) is int and type(run.steps) is int
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.seed = 4
    assert run.process_options()["num_inference_steps"] == 5


def test_errors_name_the_flag_on_the_command_line_and_the_keyword_in_python():
    with pytest.raises(SteerError, match=r"^--steps must be a positive integer"):
        RunOptions.check(flags=True, steps=0)
    with pytest.raises(SteerError, match=r"^num_inference_steps \(steps\) must be a positive integer"):
        RunOptions.check(steps=0)
    with pytest.raises(SteerError, match=r"^--seed must be an integer"):
        RunOptions.check(flags=True, seed=1.5)
    with pytest.raises(TypeError, match="unknown run options"):
        RunOptions.check(stpes=3)


def test_every_flagged_field_is_a_resume_setting_with_its_flag():
    settings = RunOptions.check(seed=1, steps=4, dtype=torch.float16).settings()
    # the keys earlier traces carry (trace.json's settings), unchanged
    assert list(settings) == ["seed", "steps", "guidance_scale", "height", "width", "negative_prompt", "nfe_budget",
                              "dtype", "num_frames"]
    assert settings["dtype"] == "torch.float16"
    assert set(SETTINGS) == {"method", "reward", "model", "options", "eval_reward", *settings}
    assert all(SETTINGS[k] == RunOptions.flags()[k] for k in settings)
    assert RunOptions.flags()["guidance_scale"] == "--guidance" and RunOptions.flags()["batch_size"] is None
