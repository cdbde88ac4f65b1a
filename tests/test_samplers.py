"""Samplers on the exact-target GMM harness (diffusion and flow schedules): FK vs the exact tilted
target, best-of-N vs its order-statistic law, ReNO, accounting, and bad input."""
import math

import pytest
import torch

from steer import Budget
from steer.rewards.base import Reward
from steer.samplers import best_of_n, fk, potentials, reno
from steer.zoo.gmm import GaussianMixture, GMMProcess, PointReward, quadratic_reward, tilted_target, tv_distance

BINS = 20
LAM = 0.5
# per schedule: steps, and the scheduled reward evaluations late in the chain where x̂0 is informative
CONFIG = {"diffusion": (50, dict(t_start=36, every=8, t_end=44)), "flow": (50, dict(t_start=30, every=10, t_end=40))}
# mean TV over 3-4 seeds at K = 2000 measured (diffusion, flow): max .14/.13, difference .11/.09,
# sum .23/.23, immediate .14/.13; TV(p0, target) = 0.37, TV(target λ=.5, target λ=1) = 0.36
# tempered (λ capped at LAM, ESS target 0.5; it reaches LAM by the end): .11/.08
BOUND = {"max": 0.2, "difference": 0.16, "sum": 0.32, "immediate": 0.2, "tempered": 0.16}


pytestmark = pytest.mark.usefixtures("one_thread")


def linear_reward():
    return PointReward(lambda p: p.sum(-1), name="linear")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def weighted_histogram(points, weights, lim=4.0, bins=BINS):
    idx = ((points.float() + lim) / (2 * lim) * bins).floor().long()  # (N, 2)
    inside = ((idx >= 0) & (idx < bins)).all(1)
    flat = idx[inside, 0] * bins + idx[inside, 1]
    return torch.zeros(bins * bins).index_add_(0, flat, weights[inside].float()).reshape(bins, bins)


def fk_tv(kind, K, seed, reward=None, **options):
    S, sched = CONFIG[kind]
    proc, reward = GMMProcess(kind=kind, num_inference_steps=S), reward or linear_reward()
    # tempered: λ rises until the ESS would fall below half the particles, capped at LAM
    ess = 0.5 if options.get("potential") == "tempered" else 1.0
    out = fk(proc, reward, ["p"], generator=_gen(seed), particles=K, lam=LAM,
             **{"ess_threshold": ess, **sched, **options})
    hist = weighted_histogram(out.candidates[0, :, :2, 0, 0], out.log_weights[0].exp())
    return tv_distance(hist, tilted_target(proc.mixture, reward.fn, LAM, bins=BINS)), out


@pytest.mark.parametrize("kind", ["diffusion", "flow"])
@pytest.mark.parametrize("potential", potentials.POTENTIALS)
def test_fk_matches_the_tilted_target_and_converges(kind, potential):
    small = sum(fk_tv(kind, 250, s, potential=potential)[0] for s in range(3)) / 3
    large = sum(fk_tv(kind, 2000, s, potential=potential)[0] for s in range(3)) / 3
    assert large < BOUND[potential], (small, large)
    assert large < 0.8 * small, (small, large)


@pytest.mark.parametrize("kind", ["diffusion", "flow"])
@pytest.mark.parametrize("scheme", ["multinomial", "stratified", "residual"])
def test_fk_every_resampling_scheme_matches_the_target(kind, scheme):
    assert fk_tv(kind, 2000, 0, potential="max", scheme=scheme)[0] < BOUND["max"]


def test_fk_gradient_guided_proposal_keeps_the_target():
    tv, out = fk_tv("flow", 2000, 0, potential="difference", guidance=1.0)
    assert tv < BOUND["difference"] and out.trace.backward_calls == 50


@pytest.mark.parametrize("potential", potentials.POTENTIALS)
def test_fk_is_invariant_to_a_reward_offset(potential):
    """Shifting every reward by −100 must change nothing (a zero initial max would clip it)."""
    shifted = PointReward(lambda p: p.sum(-1) - 100.0)
    _, a = fk_tv("flow", 64, 0, potential=potential)
    _, b = fk_tv("flow", 64, 0, potential=potential, reward=shifted)
    assert torch.allclose(a.candidates, b.candidates, atol=1e-5)
    assert torch.allclose(a.log_weights, b.log_weights, atol=1e-3)


@pytest.mark.parametrize("kind", ["diffusion", "flow"])
def test_tempered_fk_targets_the_tilt_it_reports(kind):
    """Uncapped tempering (lam = inf) picks λ itself; the weighted particles then match
    p0·exp(λ_final·r) for the λ_final the trace reports."""
    S, sched = CONFIG[kind]
    proc, reward = GMMProcess(kind=kind, num_inference_steps=S), linear_reward()
    tvs, lams = [], []
    for seed in range(3):
        out = fk(proc, reward, ["p"], generator=_gen(seed), particles=2000, lam=math.inf, potential="tempered",
                 ess_threshold=0.5, **sched)
        lam_final = out.trace.steps[-1]["lam"][0]
        hist = weighted_histogram(out.candidates[0, :, :2, 0, 0], out.log_weights[0].exp())
        tvs.append(tv_distance(hist, tilted_target(proc.mixture, reward.fn, lam_final, bins=BINS)))
        lams.append(lam_final)
        steps = [st["lam"][0] for st in out.trace.steps if "lam" in st]
        assert steps == sorted(steps) and 0 < steps[0]  # λ only rises
    assert 0.2 < min(lams) and sum(tvs) / 3 < 0.2, (lams, tvs)


def test_tempered_fk_is_invariant_to_an_affine_change_of_the_reward():
    """r -> 10·r + 3 gives the same particles and a λ ten times smaller: FK no longer depends on the
    reward's scale (a fixed λ does: compare the second half)."""
    S, sched = CONFIG["diffusion"]
    proc = GMMProcess(kind="diffusion", num_inference_steps=S)
    r1, r2 = linear_reward(), PointReward(lambda p: 10 * p.sum(-1) + 3, name="scaled")
    run = lambda r, **o: fk(proc, r, ["p"], generator=_gen(5), particles=64, **{**sched, **o})  # noqa: E731
    a, b = run(r1, lam=math.inf, potential="tempered"), run(r2, lam=math.inf, potential="tempered")
    assert torch.allclose(a.candidates, b.candidates, atol=1e-5)
    lam_a, lam_b = a.trace.steps[-1]["lam"][0], b.trace.steps[-1]["lam"][0]
    assert lam_a == pytest.approx(10 * lam_b, rel=1e-4)
    fixed_a, fixed_b = run(r1, lam=LAM, potential="difference"), run(r2, lam=LAM, potential="difference")
    assert not torch.allclose(fixed_a.candidates, fixed_b.candidates, atol=1e-2)


def test_max_potential_uses_negative_rewards():
    r = torch.tensor([[-3.0, -1.0]])
    log_g, state = potentials.intermediate("max", 2.0, r, potentials.PotentialState())
    assert torch.equal(log_g, 2.0 * r)
    log_g, state = potentials.intermediate("max", 2.0, torch.tensor([[-5.0, 0.5]]), state)
    assert torch.equal(log_g, torch.tensor([[-6.0, 1.0]]))
    assert torch.equal(potentials.final(2.0, torch.tensor([[-5.0, 0.5]]), state), torch.tensor([[-10.0, 1.0]]) - state.log_prod)


@pytest.mark.parametrize("potential", [p for p in potentials.POTENTIALS if p != "tempered"])  # it always resamples
def test_weights_not_resampled_carry_over(potential):
    """Never resampling (ess_threshold=0): the potentials of every scheduled step stay in the weights
    and cancel against the final correction, leaving exactly importance weights exp(λ·r(x0))."""
    _, out = fk_tv("diffusion", 32, 1, potential=potential, ess_threshold=0.0, every=2, t_start=10, t_end=48)
    assert not any(any(s.get("resampled", [False])) for s in out.trace.steps)
    expected = torch.log_softmax(LAM * out.candidate_rewards, dim=1)
    assert torch.allclose(out.log_weights, expected, atol=1e-4)


def _best_of_n_law(mixture, reward_fn, n, lim=4.0, bins=BINS, sub=4):
    """Bin probabilities of the best of n i.i.d. draws from p0 (exact for the discretized p0)."""
    edges = torch.linspace(-lim, lim, bins * sub + 1)
    c = (edges[:-1] + edges[1:]) / 2
    gx, gy = torch.meshgrid(c, c, indexing="ij")
    pts = torch.stack([gx.flatten(), gy.flatten()], 1)
    q = torch.softmax(mixture.log_prob(pts), 0).double()
    order = torch.argsort(reward_fn(pts))
    cdf = torch.cumsum(q[order], 0)
    best = torch.zeros_like(q)
    best[order] = cdf**n - torch.cat([torch.zeros(1, dtype=cdf.dtype), cdf[:-1]]) ** n
    return best.float().reshape(bins, sub, bins, sub).sum(dim=(1, 3))


@pytest.mark.parametrize("kind", ["diffusion", "flow"])
def test_best_of_n_follows_the_order_statistic_law_not_the_tilted_target(kind):
    proc, reward, n, P = GMMProcess(kind=kind, num_inference_steps=25), linear_reward(), 4, 2000
    out = best_of_n(proc, reward, [f"p{k}" for k in range(P)], generator=_gen(2), n=n)
    hist = weighted_histogram(out.latents, torch.full((P,), 1.0 / P))
    law = _best_of_n_law(proc.mixture, reward.fn, n)
    to_law, to_tilted = tv_distance(hist, law), tv_distance(hist, tilted_target(proc.mixture, reward.fn, LAM, bins=BINS))
    # measured: to the law ≈ 0.12 (3000-sample noise), to the tilted target ≈ 0.3
    assert to_law < 0.16 and to_tilted > to_law + 0.1, (to_law, to_tilted)
    assert torch.equal(out.rewards, out.candidate_rewards.max(1).values)


class HighDimGMM(GMMProcess):
    """The harness' mixture embedded in 64 dimensions (the reward reads the first two)."""

    latent_shape = (64,)

    def __init__(self, **kw):
        m = GaussianMixture.default()
        m = GaussianMixture(m.weights, torch.cat([m.means, torch.zeros(4, 62)], 1), m.stds)
        super().__init__(m, **kw)

    def decode(self, x0):
        return super().decode(x0[:, :2])


def test_reno_raises_the_reward_and_keeps_the_noise_norm():
    proc, P = HighDimGMM(kind="flow", num_inference_steps=2), 32
    out = reno(proc, quadratic_reward(), [f"p{k}" for k in range(P)], generator=_gen(3), iterations=12)
    mean = out.candidate_rewards.mean(0)  # (iterations,)
    assert torch.all(mean[1:5] > mean[:4]), mean  # rises monotonically on average while far from the optimum
    assert out.rewards.mean() > -0.05 > mean[0]
    norms = torch.tensor([s["z_norm"] for s in out.trace.steps]) / math.sqrt(64)  # (iterations, P)
    assert norms.min() > 0.75 and norms.max() < 1.35  # measured 0.85 .. 1.27 for single prompts
    assert torch.all((norms.mean(1) - 1).abs() < 0.2)  # measured mean over prompts 0.89 .. 1.14
    assert torch.equal(out.rewards, out.candidate_rewards.max(1).values)  # the best image seen
    assert out.trace.nfe_per_prompt == 12 * 2 and out.trace.backward_calls == 11


def test_reno_checkpointing_gives_the_same_result():
    proc = GMMProcess(kind="diffusion", num_inference_steps=3)
    a = reno(proc, quadratic_reward(), ["a", "b"], generator=_gen(4), iterations=5, checkpointing=True)
    b = reno(proc, quadratic_reward(), ["a", "b"], generator=_gen(4), iterations=5, checkpointing=False)
    assert torch.allclose(a.candidate_rewards, b.candidate_rewards, atol=1e-5)
    assert a.trace.nfe == b.trace.nfe == 2 * 5 * 3


@pytest.mark.parametrize("kind", ["diffusion", "flow"])
def test_accounting_and_callbacks(kind):
    S, P, K = 10, 3, 4
    proc, reward = GMMProcess(kind=kind, num_inference_steps=S), quadratic_reward()
    seen = []
    out = fk(proc, reward, [f"p{k}" for k in range(P)], generator=_gen(5), particles=K, callback=seen.append)
    assert out.trace.nfe_per_prompt == K * S and [s.step for s in seen] == list(range(S))
    assert out.trace.reward_calls_per_prompt == K * (len(range(2, 9, 2)) + 1)
    assert out.images.shape == (P, 3, 1, 1) and out.candidates.shape == (P, K, 3, 1, 1)
    assert out.log_weights.shape == (P, K) and torch.allclose(out.log_weights.logsumexp(1), torch.zeros(P), atol=1e-5)
    assert torch.equal(out.rewards, out.candidate_rewards.max(1).values)
    bon = best_of_n(proc, reward, ["a", "b"], generator=_gen(5), n=K)
    assert bon.trace.nfe_per_prompt == K * S and bon.trace.reward_calls_per_prompt == K
    again = fk(proc, reward, [f"p{k}" for k in range(P)], generator=_gen(5), particles=K)
    assert torch.equal(out.candidates, again.candidates)  # same seed, same output


def test_prompts_are_independent_problems():
    """A prompt's particles do not depend on the other prompts in the batch."""
    proc = GMMProcess(kind="flow", num_inference_steps=10)
    rewards = PointReward(lambda p: p[:, 0])  # same reward for both; layout is what matters
    two = fk(proc, rewards, ["a", "b"], generator=_gen(6), particles=8, ess_threshold=1.0)
    owner_steps = [s for s in two.trace.steps if "resampled" in s]
    assert owner_steps and all(len(s["resampled"]) == 2 for s in owner_steps)
    assert two.candidates.shape[:2] == (2, 8)


def test_bad_inputs_raise_clear_errors():
    proc, reward = GMMProcess(kind="diffusion", num_inference_steps=10), quadratic_reward()
    with pytest.raises(ValueError, match="particles must be an integer >= 1"):
        fk(proc, reward, ["a"], particles=0)
    with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
        fk(proc, reward, ["a"], lam=-1.0)
    with pytest.raises(ValueError, match="unknown potential 'maximum'.*max, difference, sum, immediate"):
        fk(proc, reward, ["a"], potential="maximum")
    with pytest.raises(ValueError, match="unknown resampling scheme 'fancy'"):
        fk(proc, reward, ["a"], scheme="fancy")
    with pytest.raises(ValueError, match="eta is an alias of noise_level"):
        fk(proc, reward, ["a"], noise_level=0.5, eta=0.5)
    with pytest.raises(ValueError, match="eta applies to diffusion.*pass noise_level="):
        fk(GMMProcess(kind="flow", num_inference_steps=10), reward, ["a"], eta=0.5)
    with pytest.raises(ValueError, match="stochastic kernel"):
        fk(proc, reward, ["a"], eta=0.0)
    with pytest.raises(ValueError, match="t_start=8 is after t_end=4"):
        fk(proc, reward, ["a"], t_start=8, t_end=4)
    with pytest.raises(ValueError, match="too small for one chain of 10"):
        fk(proc, reward, ["a"], budget=Budget(nfe=5))
    with pytest.raises(ValueError, match="needs 40 denoiser calls.*fewer particles"):
        fk(proc, reward, ["a"], particles=4, budget=Budget(nfe=20))
    with pytest.raises(ValueError, match="lower n \\(at most 2 fit\\)"):
        best_of_n(proc, reward, ["a"], n=4, budget=Budget(nfe=20))
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        best_of_n(proc, reward, ["a"], n=0)
    with pytest.raises(ValueError, match="not differentiable"):
        reno(proc, PointReward(lambda p: p[:, 0], differentiable=False), ["a"])
    with pytest.raises(ValueError, match="not differentiable"):
        fk(proc, PointReward(lambda p: p[:, 0], differentiable=False), ["a"], guidance=1.0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'particle'"):
        fk(proc, reward, ["a"], particle=4)


class NanForPrompt(Reward):
    """−x₀ of each point, NaN for every image of prompt ``bad``."""

    name, differentiable = "nan_for_prompt", True

    def __init__(self, bad):
        self.bad = bad

    def score(self, images, prompts):
        nan = torch.tensor([p == self.bad for p in prompts])
        return torch.where(nan, torch.nan, -images[:, 0, 0, 0])


def test_nan_reward_names_method_step_and_prompt():
    proc = GMMProcess(kind="flow", num_inference_steps=10)
    nan_right = NanForPrompt("right")
    with pytest.raises(FloatingPointError, match=r"fk at step 2.*'right'"):
        fk(proc, nan_right, ["left", "right"], generator=_gen(7), particles=64)
    with pytest.raises(FloatingPointError, match=r"best_of_n at the final sample.*'right'"):
        best_of_n(proc, nan_right, ["left", "right"], generator=_gen(7), n=64)
    with pytest.raises(FloatingPointError, match=r"reno at step 0"):
        reno(proc, nan_right, ["left", "right"], generator=_gen(7), iterations=2)
