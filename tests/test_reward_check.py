"""Every steering method checks its reward the same way (``toolkit.check_reward``): a reward that is not
callable is one TypeError naming the method, before any denoiser call."""
import pytest
import torch

from steer import catalog
from steer.zoo.gmm import GMMProcess


class CountingProcess(GMMProcess):
    calls = 0

    def denoise(self, x, i, cond):
        CountingProcess.calls += 1
        return super().denoise(x, i, cond)


@pytest.mark.parametrize("name", sorted(catalog.METHODS))
def test_a_reward_that_is_not_callable_is_refused_first(name):
    fn = catalog.resolve_method(name)
    CountingProcess.calls = 0
    with pytest.raises(TypeError, match=rf"^{name}: reward must be a steer.rewards.Reward"):
        fn(CountingProcess(num_inference_steps=4), "not a reward", ["p"], generator=torch.Generator().manual_seed(0))
    assert CountingProcess.calls == 0
