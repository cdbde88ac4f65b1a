"""The contributor map's worked example (docs/architecture.md) is real code: it runs as written,
fits in 60 lines, and meets the contracts every method meets."""
import re
import types
from pathlib import Path

import torch

import steer
from steer.zoo.gmm import GMMProcess, quadratic_reward

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def _example_module():
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    module = types.ModuleType("halving_example")
    exec(compile(code, str(DOC), "exec"), module.__dict__)
    return code, module


def test_the_worked_example_is_under_60_lines_and_runs_as_a_method():
    code, module = _example_module()
    assert len(code.strip().splitlines()) < 60
    proc = GMMProcess(kind="diffusion", num_inference_steps=10)
    out = steer.generate(proc, ["a", "b"], method=module.halving, reward=quadratic_reward(), n=8, seed=0)
    S, n, at = 10, 8, 5
    assert out.trace.nfe == 2 * (n * (at + 1) + n // 2 * (S - at - 1))
    assert out.trace.reward_calls == 2 * (n + n // 2)
    assert out.candidates.shape[:2] == (2, n // 2)
    assert torch.equal(proc.decode(out.latents), out.images)
    base = steer.generate(proc, ["a", "b"], method="best_of_n", reward=quadratic_reward(), n=1, seed=0)
    assert out.rewards.mean() > base.rewards.mean()
