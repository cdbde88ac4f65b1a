"""Spec strings, the reward table, weighted sums and callables, weight resolution and its errors."""
import pytest
import torch

import steer.rewards as rewards_pkg
from steer.rewards import CallableReward, MissingWeightsError, Reward, WeightedSum, load, parse_spec, table
from steer.rewards.registry import COLUMNS, REWARDS

PROMPTS = ["a red circle", "a blue square"]
ENV_VARS = ("STEER_HPS_PATH", "STEER_PICKSCORE_PATH", "STEER_IMAGE_REWARD_PATH", "STEER_BERT_TOKENIZER_PATH",
            "STEER_CLIP_PATH", "STEER_AESTHETIC_PATH", "STEER_HPSV3_PATH", "STEER_QWEN2VL_PATH")


def brightness(images, prompts):
    """A user reward: mean pixel value (differentiable)."""
    return images.mean(dim=(1, 2, 3))


brightness.differentiable = True


def redness(images, prompts):
    return (images[:, 0] - images[:, 1:].mean(1)).mean(dim=(1, 2))


@pytest.fixture()
def images():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture()
def empty_hub(tmp_path, monkeypatch):
    """No env vars and an empty Hugging Face cache: nothing can be found."""
    import huggingface_hub.constants as hub

    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_parse_spec():
    assert parse_spec("hps") == [("hps", 1.0)]
    assert parse_spec("hps=1,clip=0.5") == [("hps", 1.0), ("clip", 0.5)]
    assert parse_spec(" HPSv2.1 = 2 , ImageReward=-0.1 ") == [("hps", 2.0), ("image_reward", -0.1)]
    assert parse_spec("tests.test_rewards_registry:brightness=0.3,jpeg") == [
        ("tests.test_rewards_registry:brightness", 0.3), ("jpeg", 1.0)]


@pytest.mark.parametrize("spec, message", [
    ("hsp", "unknown reward 'hsp'; did you mean 'hps'"),
    ("pickscor=1", "did you mean 'pickscore'"),
    ("hps=abc", "weight 'abc' of 'hps' is not a number; write e.g. 'hps' or 'hps=1,clip=0.5'"),
    ("hps=nan", "weight of 'hps' must be finite"),
    ("hps=inf,clip", "must be finite"),
    ("", "empty reward spec"),
    ("hps,,clip", "empty term"),
    ("hps=1,hpsv2.1=2", "appears twice"),
    ("nosuchmodule_xyz:fn", "cannot import module 'nosuchmodule_xyz'"),
    ("tests.test_rewards_registry:nothing", "has no attribute 'nothing'"),
])
def test_spec_errors_name_the_fix(spec, message):
    with pytest.raises(ValueError) as err:
        load(spec)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_table_lists_every_reward():
    rows = table()
    assert [r["name"] for r in rows] == [r.name for r in REWARDS]
    assert {"hps", "hps_v2.0", "pickscore", "image_reward", "hpsv3", "clip", "aesthetic", "aesthetic_v1", "jpeg", "chroma",
            "shapes-clip", "shapes-check", "shapes-swap", "temporal_consistency", "shapes-temporal", "shapes-ot",
            "clip-ot"} == {
        r["name"] for r in rows}
    for row in rows:
        assert tuple(row) == COLUMNS and isinstance(row["differentiable"], bool)
        assert all(isinstance(v, str) and v for k, v in row.items() if k != "differentiable")
    by_name = {r["name"]: r for r in rows}
    assert by_name["jpeg"]["differentiable"] is False and by_name["hps"]["differentiable"] is True
    assert "HPS_v2.1_compressed.pt" in by_name["hps"]["weights"] and "STEER_HPS_PATH" in by_name["hps"]["point_at"]


@pytest.mark.parametrize("name", [r.name for r in REWARDS if r.weights not in ("none", "ships with steer")])
def test_missing_weights_is_one_line(empty_hub, name):
    with pytest.raises(MissingWeightsError) as err:
        load(name)
    msg = str(err.value)
    info = {r.name: r for r in REWARDS}[name]
    assert "\n" not in msg and "not found" in msg
    assert info.source.split(" ;")[0] in msg  # where it comes from
    assert any(var in msg for var in ENV_VARS)  # how to point at it
    assert "pass " in msg


def test_env_var_pointing_nowhere(empty_hub, monkeypatch, tmp_path):
    monkeypatch.setenv("STEER_HPS_PATH", str(tmp_path / "nope.pt"))
    with pytest.raises(MissingWeightsError, match=r"nope.pt does not exist\. HPS_v2.1_compressed.pt not found"):
        load("hps")


def test_hps_from_env_var_and_from_hf_cache(empty_hub, monkeypatch, tmp_path, images):
    from steer.rewards.hps import HPSReward
    from tests.fixtures.rewards import TINY_OPEN_CLIP, write_tiny_hps

    opts = {"hps": {"model_name": TINY_OPEN_CLIP}}
    ckpt = write_tiny_hps(tmp_path / "HPS_v2.1_compressed.pt")
    monkeypatch.setenv("STEER_HPS_PATH", str(ckpt))
    from_env = load("hps", options=opts)
    assert isinstance(from_env, HPSReward)
    # the Hugging Face cache layout: models--xswu--HPSv2/{refs/main, snapshots/<rev>/file}
    monkeypatch.delenv("STEER_HPS_PATH")
    repo = empty_hub / "models--xswu--HPSv2"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "HPS_v2.1_compressed.pt").write_bytes(ckpt.read_bytes())
    from_cache = load("hps", options=opts)
    torch.testing.assert_close(from_cache(images, PROMPTS), from_env(images, PROMPTS))
    with pytest.raises(MissingWeightsError, match="HPS_v2_compressed.pt"):  # v2.0 is a different file
        load("hps_v2.0", options={"hps_v2.0": {"model_name": TINY_OPEN_CLIP}})


def test_weighted_sum_and_callables_compose(images):
    combo = load("tests.test_rewards_registry:brightness=2,jpeg=0.5")
    assert isinstance(combo, WeightedSum) and not combo.differentiable  # jpeg is not differentiable
    jpeg = load("jpeg")
    expected = 2 * images.mean(dim=(1, 2, 3)) + 0.5 * jpeg(images, PROMPTS)
    torch.testing.assert_close(combo(images, PROMPTS), expected)

    both = WeightedSum([(1.0, CallableReward(brightness)), (-3.0, CallableReward(redness, differentiable=True))])
    assert both.differentiable and both.name == "1*brightness+-3*redness"
    x = images.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(both(x, PROMPTS).sum(), x)
    torch.testing.assert_close(g[0, 0], torch.full((32, 32), (1 / 3 - 3) / 1024))


def test_load_passes_rewards_and_callables_through(images):
    jpeg = load("jpeg")
    assert load(jpeg) is jpeg and load("jpeg=1").__class__ is jpeg.__class__  # weight 1 alone: no wrapper
    assert isinstance(load("jpeg=2"), WeightedSum)
    fn = load(lambda imgs, prompts: imgs.sum(dim=(1, 2, 3)))
    assert isinstance(fn, Reward) and not fn.differentiable
    torch.testing.assert_close(fn(images, PROMPTS), images.sum(dim=(1, 2, 3)))
    assert load("tests.test_rewards_registry:brightness").differentiable  # attribute on the function


def test_nan_or_inf_raises_naming_the_reward(images):
    def broken(imgs, prompts):
        out = imgs.mean(dim=(1, 2, 3))
        out[1] = float("inf")
        return out

    with pytest.raises(FloatingPointError, match="'broken'.*a blue square"):
        CallableReward(broken)(images, PROMPTS)
    combo = WeightedSum([(1.0, CallableReward(brightness)), (0.5, CallableReward(broken))])
    with pytest.raises(FloatingPointError, match="reward 'broken'"):
        combo(images, PROMPTS)
    with pytest.raises(FloatingPointError, match="'nan_reward'"):
        CallableReward(lambda i, p: [float("nan")] * 2, name="nan_reward")(images, PROMPTS)


def test_bad_callables_and_weights():
    with pytest.raises(TypeError, match="callable"):
        CallableReward(3)
    with pytest.raises(ValueError, match="finite"):
        WeightedSum([(float("nan"), CallableReward(brightness))])
    with pytest.raises(ValueError, match="at least one"):
        WeightedSum([])
    with pytest.raises(ValueError, match="'pkg.module:function'"):
        load("tests.test_rewards_registry:")


def test_package_import_is_light():
    import subprocess
    import sys

    code = ("import sys, steer.rewards; heavy = [m for m in ('open_clip', 'transformers', 'timm') if m in sys.modules];"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"importing steer.rewards pulled in {out}"
    assert rewards_pkg.load is load


def test_shapes_rewards_ship_with_the_package():
    """The shapes world's rewards need no download: they load from the package and score images."""
    import torch

    clip_r, check = load("shapes-clip"), load("shapes-check")
    assert clip_r.differentiable and not check.differentiable
    from steer.zoo.shapes.world import dataset

    images, captions = zip(*dataset(4, seed=0, split="test"))
    images = torch.stack(images)
    assert check(images, list(captions)).tolist() == [1.0] * 4
    assert torch.isfinite(clip_r(images, list(captions))).all()


def test_chroma_is_the_mean_rgb_spread_and_differentiable():
    images = torch.zeros(2, 3, 2, 2)
    images[0, 0] = 1.0  # pure red everywhere: chroma 1
    images[1, :, 0, 0] = torch.tensor([0.2, 0.6, 0.4])  # one pixel of spread 0.4, three black
    r = load("saturation")
    torch.testing.assert_close(r(images, ["a", "b"]), torch.tensor([1.0, 0.1]))
    x = images.clone().requires_grad_(True)
    r(x, ["a", "b"]).sum().backward()
    assert r.differentiable and x.grad.abs().sum() > 0
