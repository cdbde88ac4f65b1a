"""``eval_reward``: a held-out reward scored on the returned images only — never steering them — in
``Result.eval_rewards``, ``trace.json``, the PNG metadata and the fine-tuning metrics log."""
import json

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import steer
import steer.rewards
from steer.cli import app
from steer.finetune import DistillConfig, DraftConfig, GRPOConfig, distill, draft, grpo
from steer.finetune.lora import trainable_parameters
from steer.pipelines import from_pipe
from tests.fixtures.tiny import build
from tests.rewards_for_tests import brightness, redness

PROMPTS = ["a red circle", "a blue square"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-sd")
    build("sd").save_pretrained(path)
    return path


def _process(steps=3):
    return from_pipe(build("sd"), num_inference_steps=steps, guidance_scale=1.0)


@pytest.mark.parametrize("method, options", [("best_of_n", {"n": 3}), ("fk", {"particles": 3})])
def test_generate_scores_the_returned_images_and_steers_nothing(method, options):
    process = _process()
    plain = steer.generate(process, PROMPTS, method=method, reward=brightness, seed=4, **options)
    held = steer.generate(process, PROMPTS, method=method, reward=brightness, eval_reward=redness, seed=4, **options)
    assert plain.eval_rewards is None
    assert torch.equal(held.images, plain.images) and torch.equal(held.rewards, plain.rewards)
    assert held.trace.reward_calls == plain.trace.reward_calls  # the held-out reward is not a reward call
    torch.testing.assert_close(held.eval_rewards, redness(held.images, PROMPTS))
    assert not torch.allclose(held.eval_rewards, held.rewards)


def test_a_bad_eval_reward_is_one_line():
    with pytest.raises(ValueError, match="unknown reward 'hpss'; did you mean 'hps'"):
        steer.generate(_process(), PROMPTS, method="best_of_n", reward=brightness, eval_reward="hpss", n=2)


def test_cli_records_the_eval_reward_per_image(model_dir, tmp_path):
    out = tmp_path / "o"
    res = CliRunner().invoke(app, ["generate", "--model", str(model_dir), "--prompt", PROMPTS[0], "--prompt",
                                   PROMPTS[1], "--method", "best_of_n", "--n", "2", "--steps", "2",
                                   "--reward", "tests.rewards_for_tests:brightness",
                                   "--eval-reward", "tests.rewards_for_tests:redness", "--out", str(out)])
    assert res.exit_code == 0, res.output
    trace = json.loads((out / "trace.json").read_text())
    assert trace["eval_reward"] == "tests.rewards_for_tests:redness"
    assert trace["settings"]["eval_reward"] == "tests.rewards_for_tests:redness"
    for record in trace["images"]:
        png = Image.open(out / record["file"])
        assert json.loads(png.text["eval_reward"]) == pytest.approx(record["eval_reward"])
        assert png.text["eval_reward_spec"] == "tests.rewards_for_tests:redness"
        pixels = torch.from_numpy(__import__("numpy").array(png.convert("RGB"))).permute(2, 0, 1).float() / 255
        assert float(redness(pixels[None], [record["prompt"]])) == pytest.approx(record["eval_reward"], abs=0.01)


def _weights(process):
    return [p.detach().clone() for p in trainable_parameters(process.pipe)]


@pytest.mark.parametrize("train, config", [
    (draft, DraftConfig(max_steps=2, lora_rank=2, k=1, prompts_per_step=2)),
    (grpo, GRPOConfig(max_steps=2, lora_rank=2, group_size=2, prompts_per_step=1)),
    (distill, DistillConfig(max_steps=2, steps_per_round=1, rounds=2, lora_rank=2, samples_per_prompt=1,
                            steer_method="best_of_n", steer_options={"n": 2})),
])
def test_finetune_logs_the_eval_reward_and_trains_the_same_weights(tmp_path, train, config):
    a, b = _process(2), _process(2)
    plain = train(a, steer.rewards.as_reward(brightness), PROMPTS, config, out_dir=tmp_path / "plain")
    held = train(b, steer.rewards.as_reward(brightness), PROMPTS, config, out_dir=tmp_path / "held",
                 eval_reward=steer.rewards.as_reward(redness))
    for x, y in zip(_weights(a), _weights(b)):
        assert torch.equal(x, y)  # never trained on
    assert "eval_reward_mean" not in plain.metrics[0]
    logged = [json.loads(line) for line in (tmp_path / "held" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [1, 2]
    for m, p in zip(logged, plain.metrics):
        assert isinstance(m["eval_reward_mean"], float) and m["eval_reward_mean"] != m["reward_mean"]
        assert m["reward_mean"] == p["reward_mean"] and m["nfe"] == p["nfe"] and m["reward_calls"] == p["reward_calls"]


def test_shapes_swap_is_a_probability_and_registered():
    from steer.rewards.registry import load
    from steer.zoo.shapes.evaluate import relational_heldout_captions

    reward = load("shapes-swap")
    captions = relational_heldout_captions(3)
    r = reward(torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)), captions)
    assert r.shape == (3,) and bool(((r >= 0) & (r <= 1)).all())
