"""tests/fixtures/fullsize.py builds the released architectures: parameter counts of SD 1.5's and SDXL
base's UNets, VAEs and text towers (built on the meta device: no memory, no time)."""
import pytest
import torch

from tests.fixtures import fullsize

COUNTS = {  # the released checkpoints' parameter counts
    "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840},
}


@pytest.mark.parametrize("family", sorted(COUNTS))
def test_full_size_architectures_have_the_released_parameter_counts(family):
    with torch.device("meta"):
        pipe = fullsize.BUILDERS[family]()
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in pipe.components.items()
              if isinstance(module, torch.nn.Module)}
    assert counts == COUNTS[family]


def test_unknown_family_is_one_line():
    with pytest.raises(ValueError, match="unknown full-size family 'sd2'; choose from"):
        fullsize.build_pipeline("sd2")
