"""MaPO, D3PO and PRDP on the grey world (``tests.fixtures.grey``): each moves fresh samples toward what
its preference favours, brighter under a brightness reward and darker under the negated control.

Measured on one thread (moved brightness, brightness / darkness reward): MaPO (β = 0.1, the reference's;
best-of-8 vs base pairs, x̂0 errors, 25 steps) +0.024 / −0.036 at seed 0, +0.047 / −0.041 at seed 1
(40 steps at β = 10: −0.015 / −0.044, the margin term then degrades both ways); D3PO (8 pairs, 20
steps) +0.027 / −0.041 at seed 0, +0.075 / −0.017 at seed 1; PRDP (K = 8, β = 0.01, lr 3e-3, 20
steps) +0.013 / −0.044 at seed 0, +0.022 / −0.019 at seed 1."""
from __future__ import annotations

import pytest

from steer.finetune import D3POConfig, MaPOConfig, PRDPConfig, d3po, mapo, prdp
from tests.fixtures import grey
from tests.test_finetune import PIXEL_WIDE, Brightness, Darkness


@pytest.fixture(scope="module")
def grey_state():
    return grey.train_state()


def _moved(tmp_path, grey_state, method, make_config, eta):
    base = grey.brightness(grey.process(grey_state), eta)
    moved = {}
    for reward in (Brightness(), Darkness()):
        process = grey.process(grey_state)
        method(process, reward, ["grey"], make_config(), out_dir=tmp_path / reward.name)
        moved[reward.name] = grey.brightness(process, eta) - base
    return base, moved


def test_mapo_on_steering_pairs_moves_fresh_samples_both_ways(tmp_path, grey_state):
    base, moved = _moved(tmp_path, grey_state, mapo, lambda: MaPOConfig(
        steer_method="best_of_n", steer_options={"n": 8}, samples_per_prompt=16, max_steps=25, learning_rate=3e-3,
        train_batch_size=8, target_modules=PIXEL_WIDE, beta=0.1, loss_space="x0"), eta=0.0)
    print(f"mapo: base {base:.4f}, moved {moved}")
    assert moved["brightness"] > 0.015 and moved["darkness"] < -0.015, moved


def test_d3po_moves_fresh_samples_both_ways(tmp_path, grey_state):
    base, moved = _moved(tmp_path, grey_state, d3po, lambda: D3POConfig(
        max_steps=20, learning_rate=1e-2, prompts_per_step=8, target_modules=PIXEL_WIDE), eta=1.0)
    print(f"d3po: base {base:.4f}, moved {moved}")
    assert moved["brightness"] > 0.01 and moved["darkness"] < -0.01, moved


def test_prdp_moves_fresh_samples_both_ways(tmp_path, grey_state):
    base, moved = _moved(tmp_path, grey_state, prdp, lambda: PRDPConfig(
        max_steps=20, learning_rate=3e-3, group_size=8, beta=0.01, target_modules=PIXEL_WIDE), eta=1.0)
    print(f"prdp: base {base:.4f}, moved {moved}")
    assert moved["brightness"] > 0.008 and moved["darkness"] < -0.008, moved
