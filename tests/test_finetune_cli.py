"""``steer finetune`` through typer's CliRunner on a tiny app: bad input -> exit 2 and one line; a
tiny run writes a loadable LoRA and metrics; --resume continues."""
from __future__ import annotations

import json

import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from steer.finetune.command import finetune

app = typer.Typer()
app.command()(finetune)
app.command("noop")(lambda: None)  # two commands, so `finetune` is a subcommand as in steer's CLI


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tests.fixtures.tiny import build

    path = tmp_path_factory.mktemp("tiny-sd")
    build("sd").save_pretrained(path)
    return path


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red circle\n\na blue square\n")
    return path


def invoke(*args):
    return CliRunner().invoke(app, ["finetune", *map(str, args)])


@pytest.mark.parametrize("extra, message", [
    (["--method", "ppo"], "--method must be one of"),
    (["--method", "dpo", "--set", "beta=0"], "beta must be a positive number"),
    (["--method", "draft", "--dataset", "pairs.parquet"], "--dataset is read by --method dpo, kto, mapo or inpo"),
    (["--method", "kto", "--set", "source=disk"], "source must be 'steering', 'dataset' or 'verifier'"),
    (["--method", "grpo", "--set", "group_size=1"], "group_size must be >= 2"),
    (["--method", "draft", "--set", "nope=1"], "has no setting 'nope'"),
    (["--method", "draft", "--particles", "4"], "only apply to --method distill, soar, dpo, kto, mapo or nft"),
    (["--method", "distill", "--steer-method", "fkk"], "unknown method 'fkk'"),
    (["--method", "draft", "--resume"], "no checkpoint"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, prompts, extra, message):
    result = invoke("--reward", "jpeg", "--prompts", prompts, "--out", tmp_path / "out", *extra)
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output


def test_missing_prompts_file_exits_2(tmp_path):
    result = invoke("--method", "grpo", "--reward", "jpeg", "--prompts", tmp_path / "none.txt", "--out", tmp_path)
    assert result.exit_code == 2 and "cannot read prompts file" in result.output


def test_grpo_run_then_resume(tmp_path, prompts, model_dir):
    out = tmp_path / "run"
    common = ["--method", "grpo", "--reward", "tests.test_finetune:Brightness", "--prompts", prompts,
              "--model", model_dir, "--steps", "2", "--guidance", "1", "--out", out, "--lora-rank", "2",
              "--set", "group_size=2", "--set", "checkpoint_every=1"]
    first = invoke(*common, "--max-steps", "2")
    assert first.exit_code == 0, first.output
    assert "saved LoRA" in first.output
    progress = [ln for ln in first.output.splitlines() if ln.startswith("step ")]
    assert [ln.split()[1] for ln in progress] == ["1/2", "2/2"] and all("s/step  ETA" in ln for ln in progress)
    with Image.open(out / "reward.png") as plot:  # reward vs step
        assert plot.size == (640, 400) and len(set(plot.convert("RGB").getdata())) > 2
    second = invoke(*common, "--max-steps", "3", "--resume")
    assert second.exit_code == 0, second.output
    steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    from tests.fixtures.tiny import build

    pipe = build("sd")
    pipe.load_lora_weights(str(out / "lora"))
    assert pipe.unet.peft_config["default_0"].r == 2
    assert json.loads((out / "config.json").read_text())["max_steps"] == 3

    # one run per --out: refused without --resume / --overwrite; changed settings named; harmless ones warn
    again = invoke(*common, "--max-steps", "3")
    assert again.exit_code == 2 and "holds an earlier run" in again.output and "--overwrite" in again.output
    changed = invoke(*common, "--max-steps", "3", "--resume", "--lr", "1e-3")
    assert changed.exit_code == 2 and "learning_rate was 0.0003, now 0.001 (--learning-rate)" in changed.output
    harmless = invoke(*common, "--max-steps", "4", "--resume", "--set", "keep_checkpoints=3")
    assert harmless.exit_code == 0, harmless.output
    assert "warning: --resume: keep_checkpoints changed from 2 to 3" in harmless.output
    fresh = invoke(*common, "--max-steps", "1", "--overwrite")
    assert fresh.exit_code == 0, fresh.output
    assert [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-000001.pt"]


def test_dpo_on_a_dataset_needs_no_prompts_or_reward(tmp_path, model_dir):
    from tests.test_preference import _rows, write_parquet

    data = write_parquet(tmp_path / "pairs.parquet", _rows(8, ties=2))
    result = invoke("--method", "dpo", "--dataset", data, "--model", model_dir, "--out", tmp_path / "run",
                    "--max-steps", "2", "--steps", "2", "--set", "train_batch_size=2", "--set", "beta=500")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "lora" / "pytorch_lora_weights.safetensors").exists()
    records = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and records[-1]["implicit_accuracy"] is not None
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["source"] == "dataset" and config["method"] == "dpo"
    missing = invoke("--method", "kto", "--out", tmp_path / "other")
    assert missing.exit_code == 2 and "--prompts FILE is required" in missing.output


@pytest.mark.parametrize("method, extra", [("nft", ["--set", "group_size=2", "--set", "kl_beta=0"]),
                                           ("soar", ["--steer-method", "best_of_n", "--particles", "2",
                                                     "--set", "aux_points=1"])])
def test_new_methods_run_and_announce_their_updates_per_prompt(tmp_path, prompts, model_dir, method, extra):
    """nft and soar run from the CLI; every run states its updates per prompt and warns below the measured need."""
    result = invoke("--method", method, "--reward", "tests.test_finetune:Brightness", "--prompts", prompts,
                    "--model", model_dir, "--steps", "2", "--guidance", "1", "--out", tmp_path / "run",
                    "--lora-rank", "2", "--max-steps", "2", *extra)
    assert result.exit_code == 0, result.output
    per_prompt = 2 * 2 * 1 / 2 if method == "nft" else 4 * 2 / 2  # nft: prompts × group; soar: train_batch_size
    assert f"{method}: 2 steps over 2 prompt(s): {per_prompt:.0f} updates per prompt" in result.output
    assert "warning:" in result.output and "raise --max-steps to ~" in result.output
    assert (tmp_path / "run" / "lora").is_dir()


def test_updates_per_prompt_counts_what_enters_the_loss():
    from steer.finetune.command import updates_per_prompt
    from steer.finetune.config import DistillConfig, DraftConfig, GRPOConfig

    assert updates_per_prompt(GRPOConfig(max_steps=40, prompts_per_step=2, group_size=8), 16) == 40.0
    assert updates_per_prompt(DraftConfig(max_steps=60, prompts_per_step=4, gradient_accumulation_steps=2), 8) == 60.0
    assert updates_per_prompt(DistillConfig(max_steps=150, train_batch_size=4), 16) == 37.5
