"""The method toolkit's contracts, checked for every method in the catalog (on the exact GMM process):
one noise knob, one result contract, one budget check, no option shadowed by ``steer.generate``."""
import inspect

import pytest
import torch

import steer
from steer import chain, toolkit
from steer.budget import Budget
from steer.catalog import METHODS, method_options, resolve_method
from steer.zoo.gmm import GMMProcess, quadratic_reward

SMALL = {"best_of_n": {"n": 3}, "fk": {"particles": 3}, "reno": {"iterations": 2}, "dts": {"rollouts": 3},
         "dts_star": {"rollouts": 3}, "beam": {"beam_width": 2, "candidates": 2},
         "zero_order": {"iterations": 1, "neighbors": 2}, "path_search": {"paths": 2, "candidates": 2},
         "svdd": {"candidates": 2}, "reward_guidance": {"n": 2, "scale": 1.0},
         "rbf": {"max_nfe": 24, "initial_candidates": 2}, "carinox": {"seeds": 2, "iterations": 2}}
NOISY = sorted(m for m in METHODS if "noise_level" in method_options(resolve_method(m)))


def _run(name, kind="diffusion", seed=0, **options):
    proc = GMMProcess(kind=kind, num_inference_steps=8)
    fn = resolve_method(name)
    return proc, fn(proc, quadratic_reward(), ["a", "b"], generator=torch.Generator().manual_seed(seed),
                    **{**SMALL[name], **options})


def test_every_method_is_listed_with_a_small_setting():
    assert set(SMALL) == set(METHODS)


@pytest.mark.parametrize("kind", ["diffusion", "flow"])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_result_latents_decode_to_the_images(name, kind):
    proc, res = _run(name, kind)
    assert res.images.shape[0] == res.rewards.shape[0] == res.latents.shape[0] == 2
    assert torch.equal(proc.decode(res.latents).float(), res.images)
    assert res.prompts == ("a", "b") and res.trace.seconds > 0


def test_reno_returns_its_optimized_noise_apart_from_the_final_latents():
    proc, res = _run("reno")
    cond = proc.prepare(["a", "b"])
    assert torch.allclose(chain.run(proc, res.initial_noise, cond), res.latents, atol=1e-6)
    assert not torch.equal(res.initial_noise, res.latents)


def test_every_method_with_a_kernel_takes_the_one_noise_knob_and_its_eta_alias():
    assert NOISY == ["beam", "best_of_n", "dts", "dts_star", "fk", "path_search", "reward_guidance", "svdd",
                     "zero_order"]
    for name in NOISY:
        options = method_options(resolve_method(name))
        assert isinstance(options["noise_level"], toolkit.NoiseDefault), name
        assert options["eta"] is None, name


@pytest.mark.parametrize("name", NOISY)
def test_eta_is_noise_level_on_diffusion_and_refused_on_flow(name):
    level = 0.5
    _, a = _run(name, noise_level=level, seed=4)
    _, b = _run(name, eta=level, seed=4)
    assert torch.equal(a.latents, b.latents)
    with pytest.raises(ValueError, match="eta applies to diffusion.*pass noise_level="):
        _run(name, kind="flow", eta=level)
    with pytest.raises(ValueError, match="eta is an alias of noise_level"):
        _run(name, noise_level=level, eta=level)


@pytest.mark.parametrize("name", NOISY)
def test_the_default_noise_is_the_one_table(name):
    """A method's default equals passing the table's value for its kind explicitly."""
    default = method_options(resolve_method(name))["noise_level"]
    for kind in ("diffusion", "flow"):
        _, a = _run(name, kind, seed=2)
        _, b = _run(name, kind, seed=2, noise_level=toolkit.NOISE_DEFAULTS[default.name][kind])
        assert torch.equal(a.latents, b.latents), (name, kind)


def test_grpo_uses_the_stochastic_defaults():
    from steer.finetune.config import GRPOConfig
    from steer.finetune.grpo import noise_level

    for kind in ("diffusion", "flow"):
        proc = GMMProcess(kind=kind, num_inference_steps=4)
        assert noise_level(proc, GRPOConfig()) == toolkit.NOISE_DEFAULTS["stochastic"][kind]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_budget_below_one_chain_is_refused_naming_it(name):
    proc = GMMProcess(kind="diffusion", num_inference_steps=8)
    with pytest.raises(ValueError, match=f"{name}: budget.nfe=7 per prompt is too small"):
        resolve_method(name)(proc, quadratic_reward(), ["a"], budget=Budget(nfe=7), **SMALL[name])


@pytest.mark.parametrize("name", sorted(METHODS))
def test_no_method_option_is_shadowed_by_generate(name):
    """``steer.generate`` passes unknown keywords to the method: an option named like one of its own
    parameters (``width``, ``steps``, ...) could never reach the method."""
    own = set(inspect.signature(steer.generate).parameters)
    assert not own & set(method_options(resolve_method(name)))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_the_callback_sees_every_step_the_trace_records(name):
    seen = []
    proc = GMMProcess(kind="diffusion", num_inference_steps=8)
    res = resolve_method(name)(proc, quadratic_reward(), ["a"], generator=torch.Generator().manual_seed(0),
                               callback=seen.append, **SMALL[name])
    assert seen and all(isinstance(s, steer.types.StepInfo) for s in seen)
    assert seen[-1].nfe <= res.trace.nfe


def test_allowance_books_per_prompt_against_the_budget():
    a = toolkit.Allowance(2, Budget(nfe=10, reward_calls=2))
    assert a.affords(0, nfe=10, reward_calls=2) and not a.affords(0, nfe=11)
    a.spend(0, nfe=6, reward_calls=1)
    assert not a.affords(0, nfe=5) and a.affords(1, nfe=10)
    assert not a.affords_all(nfe=5) and a.affords_all(nfe=4, reward_calls=1)
    assert toolkit.Allowance(1, None).affords(0, nfe=10**9)


def test_plan_checks_planned_spending():
    with pytest.raises(ValueError, match="needs 12 reward calls per prompt but the budget allows 3; fewer"):
        toolkit.plan("m", 1, Budget(reward_calls=3), unit_nfe=1, reward_calls=12, hint="fewer")
    with pytest.raises(TypeError, match="steer.Budget"):
        toolkit.plan("m", 1, 5, unit_nfe=1)
    assert toolkit.plan("m", 3, Budget(nfe=4), unit_nfe=4, nfe=4).num_prompts == 3


def test_selection_never_mixes_prompts():
    r = torch.tensor([0.0, 5.0, 1.0, 9.0, 2.0, 3.0])  # prompt 0: rows 0-2, prompt 1: rows 3-5
    assert toolkit.best_rows(r, 2).tolist() == [1, 3]
    assert toolkit.top_rows(r, 2, 2).tolist() == [1, 2, 3, 5]
    assert toolkit.prompt_rows(2, 3).tolist() == [0, 0, 0, 1, 1, 1]


def test_steer_methods_shows_the_noise_knob_the_same_way_for_every_method():
    from typer.testing import CliRunner

    from steer.cli import app

    out = CliRunner().invoke(app, ["methods"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    blocks = {line.split(" ")[0].rstrip(":"): opts.strip() for line, opts in zip(lines[::2], lines[1::2])}
    assert set(blocks) == set(METHODS)
    for name, opts in blocks.items():
        default = method_options(resolve_method(name)).get("noise_level")
        assert opts.count("noise_level|eta=") == (default is not None), name
        if default is not None:
            assert f"noise_level|eta={default!r}" in opts and "eta=None" not in opts


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_runs_few_step_chains_with_default_options(name, steps):
    """Few-step models (Turbo, schnell, LCM: 1-4 steps) are a main use of steering."""
    proc = GMMProcess(kind="flow", num_inference_steps=steps)
    run = lambda: resolve_method(name)(proc, quadratic_reward(), ["a", "b"],  # noqa: E731
                                       generator=torch.Generator().manual_seed(0))
    res = run()
    assert torch.isfinite(res.rewards).all() and res.trace.nfe >= 2 * steps
