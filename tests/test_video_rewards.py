"""Rewards on videos (``space = "video"``): an image reward per frame with a reduction and a stride
(``FrameReward``, spec ``NAME@frames[:mean|min][:STRIDE]``), the temporal-consistency reward, and
every kind of method run on the tiny Wan / LTX-Video fixtures' latents (B, C, F, h, w) with them."""
import pytest
import torch

import steer
from steer.errors import SteerError
from steer.pipelines import from_pipe
from steer.rewards import WeightedSum, as_reward, load, parse_spec
from steer.rewards.video import FrameReward, TemporalConsistencyReward, parse_frames
from steer.scoring import decode_and_score
from tests.fixtures.tiny import build
from tests.rewards_for_tests import brightness

PROMPTS = ["a red circle", "two green triangles"]
WAN = dict(num_inference_steps=2, height=32, width=32, num_frames=5, max_sequence_length=64)
_PIPES = {}


def tiny(family):
    if family not in _PIPES:
        _PIPES[family] = build(family)
        _PIPES[family].set_progress_bar_config(disable=True)
    return _PIPES[family]


def wan_process(**kw):
    return from_pipe(tiny("wan"), **{**WAN, **kw})


@pytest.fixture(scope="module")
def temporal():
    return load("shapes-temporal")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


def prompt_weighted(images, prompts):
    """A prompt-dependent image reward: len(prompt) * brightness (catches frames scored with the wrong prompt)."""
    return torch.tensor([len(p) for p in prompts], dtype=torch.float32) * images.float().mean(dim=(1, 2, 3))


def videos(B=2, F=7, seed=0):
    return torch.rand(B, F, 3, 8, 8, generator=torch.Generator().manual_seed(seed))  # (B, F, 3, H, W)


# ---- per-frame rewards --------------------------------------------------------------------------
@pytest.mark.parametrize("reduce", ["mean", "min"])
@pytest.mark.parametrize("stride", [1, 2, 3, 4, 10])
def test_per_frame_reward_is_the_manual_loop(reduce, stride):
    v = videos()
    r = FrameReward(prompt_weighted, reduce=reduce, stride=stride)
    got = r(v, PROMPTS)
    for b, prompt in enumerate(PROMPTS):
        scores = [prompt_weighted(v[b, f][None], [prompt])[0] for f in range(0, v.shape[1], stride)]
        want = sum(scores) / len(scores) if reduce == "mean" else min(scores)
        assert torch.allclose(got[b], want, atol=1e-6), (b, got[b], want)
    assert got.dtype == torch.float32 and got.shape == (2,)
    assert r.space == "video" and r.name == f"prompt_weighted@frames:{reduce}:{stride}"
    assert torch.equal(FrameReward(prompt_weighted, reduce=reduce, stride=stride, batch_size=3)(v, PROMPTS), got)


def test_min_is_the_worst_frame_and_mean_the_average():
    v = torch.ones(1, 4, 3, 2, 2) * torch.tensor([0.9, 0.1, 0.5, 0.7]).view(1, 4, 1, 1, 1)
    assert torch.allclose(FrameReward(brightness, "min")(v, ["p"]), torch.tensor([0.1]))
    assert torch.allclose(FrameReward(brightness, "mean")(v, ["p"]), torch.tensor([0.55]))
    assert torch.allclose(FrameReward(brightness, "min", stride=2)(v, ["p"]), torch.tensor([0.5]))  # frames 0, 2
    assert torch.allclose(FrameReward(brightness, "mean", stride=3)(v, ["p"]), torch.tensor([0.8]))  # frames 0, 3


def test_per_frame_reward_is_differentiable():
    v = videos().requires_grad_(True)
    FrameReward(brightness, "min", stride=2)(v, PROMPTS).sum().backward()
    assert v.grad[:, 1::2].abs().sum() == 0 and v.grad[:, ::2].abs().sum() > 0  # skipped frames get none
    assert FrameReward(brightness).differentiable and not FrameReward(lambda i, p: i.mean((1, 2, 3))).differentiable


def test_a_video_reward_checks_its_input():
    with pytest.raises(ValueError, match=r"frames must be \(B, F, 3, H, W\)"):
        FrameReward(brightness)(torch.rand(2, 3, 8, 8), PROMPTS)
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        FrameReward(brightness)(videos(), PROMPTS[:1])


# ---- temporal consistency -----------------------------------------------------------------------
def test_temporal_consistency_is_the_mean_consecutive_cosine(temporal):
    v = videos(F=4)
    got = temporal(v, PROMPTS)
    for b in range(2):
        e = [temporal.embed(v[b, f][None])[0] for f in range(4)]  # one frame at a time
        cos = [torch.dot(e[f], e[f + 1]) / (e[f].norm() * e[f + 1].norm()) for f in range(3)]
        assert torch.allclose(got[b], sum(cos) / 3, atol=1e-5)
    still = v[:, :1].expand(2, 4, 3, 8, 8)
    assert torch.allclose(temporal(still, PROMPTS), torch.ones(2), atol=1e-5)  # nothing moves: 1
    assert torch.equal(temporal(v[:, :1], PROMPTS), torch.ones(2))  # one frame: 1
    assert temporal.space == "video" and temporal.differentiable and isinstance(temporal, TemporalConsistencyReward)
    assert temporal.encoder.mean == (0.5, 0.5, 0.5)  # the shapes CLIP's own normalization, read from its folder


def test_temporal_consistency_ranks_a_flicker_below_a_still(temporal):
    a, b = torch.zeros(3, 8, 8), torch.ones(3, 8, 8)
    a[0], b[2] = 1.0, 0.0  # red vs. yellow-ish: different frames
    flicker = torch.stack([a, b, a, b])[None]
    still = torch.stack([a, a, a, a])[None]
    assert temporal(flicker, ["x"]) < temporal(still, ["x"])


# ---- spec strings -------------------------------------------------------------------------------
def test_spec_syntax():
    assert parse_spec("hps@frames") == [("hps@frames:mean:1", 1.0)]
    assert parse_spec("hps@frames:min:4=0.5, clip@frames:2,temporal_consistency=0.3") == [
        ("hps@frames:min:4", 0.5), ("clip@frames:mean:2", 1.0), ("temporal_consistency", 0.3)]
    assert parse_spec("hps@Frames:4:min") == [("hps@frames:min:4", 1.0)]  # either order, any case
    assert parse_spec("tests.rewards_for_tests:brightness@frames:min") == [
        ("tests.rewards_for_tests:brightness@frames:min:1", 1.0)]
    assert parse_spec("http://127.0.0.1:8085@frames:min=2") == [("http://127.0.0.1:8085@frames:min:1", 2.0)]
    assert parse_frames("hps") == ("hps", None) and parse_frames("pick@frames:3") == ("pick", ("mean", 3))
    r = load("tests.rewards_for_tests:brightness@frames:min:2")
    assert isinstance(r, FrameReward) and (r.reduce, r.stride) == ("min", 2) and r.space == "video"
    s = load("tests.rewards_for_tests:brightness@frames=2,shapes-temporal=0.5")
    assert isinstance(s, WeightedSum) and s.space == "video"
    v = videos()
    want = 2 * FrameReward(brightness)(v, PROMPTS) + 0.5 * s.terms[1][1](v, PROMPTS)
    assert torch.allclose(s(v, PROMPTS), want, atol=1e-6)


@pytest.mark.parametrize("spec,match", [
    ("hps@max", r"after '@' write frames .*hps@frames:min:4"),
    ("hps@frames:max", r"'max' is neither a reduction \(mean, min\) nor a stride"),
    ("hps@frames:0", r"'0' is neither"),
    ("hps@frames:min:mean", r"given twice"),
    ("hps@frames:2:3", r"given twice"),
    ("@frames", r"names no reward before '@'"),
    ("hsp@frames", r"unknown reward 'hsp'; did you mean 'hps'"),
    ("hps@frames,hps@frames:mean:1", r"appears twice"),
])
def test_bad_specs_are_one_line_errors(spec, match):
    with pytest.raises(ValueError, match=match) as err:
        parse_spec(spec)
    assert "\n" not in str(err.value)


def test_spaces_do_not_mix_and_video_rewards_do_not_nest(temporal):
    with pytest.raises(ValueError, match=r"mixes video rewards \(temporal_consistency\) with image rewards.*"
                                         r"brightness@frames"):
        WeightedSum([(1.0, as_reward(brightness)), (1.0, temporal)])
    with pytest.raises(ValueError, match="reads videos, not images"):
        load("shapes-temporal@frames")
    with pytest.raises(ValueError, match="reduce must be 'mean' or 'min'"):
        FrameReward(brightness, reduce="max")
    with pytest.raises(ValueError, match="stride must be an int >= 1"):
        FrameReward(brightness, stride=0)
    assert as_reward(lambda v, p: v.mean((1, 2, 3, 4)), space="video").space == "video"


# ---- methods on video latents -------------------------------------------------------------------
@pytest.mark.parametrize("method,options", [("best_of_n", {"n": 2}), ("fk", {"particles": 2}), ("beam", {})])
@pytest.mark.parametrize("which", ["per_frame", "temporal"])
def test_methods_steer_wan_with_video_rewards(method, options, which, temporal):
    process = wan_process()
    reward = FrameReward(prompt_weighted, "min", stride=2) if which == "per_frame" else temporal
    out = steer.generate(process, PROMPTS, method=method, reward=reward, seed=0, **options)
    assert out.images.shape == (2, 3, 2 * 32, 3 * 32)  # the 2x3 frame grid of 5 frames
    with torch.no_grad():
        again = reward(process.decode_video(out.latents), PROMPTS)  # the reward of the returned videos
    assert torch.allclose(out.rewards, again, atol=1e-4), (out.rewards, again)
    assert out.trace.nfe > 0 and out.trace.reward_calls > 0


def test_reno_backpropagates_a_per_frame_reward_through_the_video_decoder():
    out = steer.generate(wan_process(), PROMPTS[:1], method="reno", reward=FrameReward(brightness, "min"),
                         iterations=2, seed=0)
    assert out.images.shape == (1, 3, 64, 96) and torch.isfinite(out.rewards).all() and out.trace.backward_calls == 1


def test_reward_calls_count_videos_and_the_grid_is_not_decoded_twice(temporal):
    process = wan_process()
    calls = []
    decode_video = process.decode_video
    process.decode_video = lambda x0: calls.append(x0.shape[0]) or decode_video(x0)
    x0 = process.init_noise(3, torch.Generator().manual_seed(0))
    from steer.budget import Trace

    trace = Trace(num_prompts=3)
    images, r = decode_and_score(process, temporal, x0, ["a"] * 3, trace=trace)
    assert calls == [3] and trace.reward_calls == 3 and images.shape == (3, 3, 64, 96)
    first = wan_process(frame_layout=0)  # one frame per image: the frames come from the latents
    images0, r0 = decode_and_score(first, temporal, x0, ["a"] * 3)
    assert images0.shape == (3, 3, 32, 32) and torch.allclose(r0, r, atol=1e-5)


def test_ltx_and_the_eval_reward_read_frames(temporal):
    ltx = from_pipe(tiny("ltx"), num_inference_steps=2, height=32, width=32, num_frames=9, max_sequence_length=64)
    out = steer.generate(ltx, PROMPTS[:1], method="fk", reward="tests.rewards_for_tests:brightness@frames:min:4",
                         particles=2, eval_reward=temporal)
    frames = ltx.decode_video(out.latents)  # (1, 9, 3, 32, 32)
    assert torch.allclose(out.rewards, brightness(frames[0, ::4], PROMPTS * 3).min()[None], atol=1e-4)
    assert torch.allclose(out.eval_rewards, temporal(frames, PROMPTS[:1]), atol=1e-4)


def test_a_video_reward_on_an_image_pipeline_names_the_fix(temporal):
    with pytest.raises(SteerError, match="makes images, and a video reward .* use an image reward") as err:
        steer.generate(tiny("sd"), "a red circle", method="best_of_n", reward=temporal, n=1, steps=1,
                       height=32, width=32)
    assert "\n" not in str(err.value)
