"""Fine-tuning checkpoints are safe and honest: nothing is unpickled but tensors and plain values, only
files of the run's own checkpoints/ load, corruption is a one-line error naming the file and the last
good one, a used --out is refused, changed settings on --resume are named. (Bitwise resume:
test_finetune.py.)"""
from __future__ import annotations

import io
import json
import random
import shutil
import warnings

import numpy as np
import pytest
import torch

from steer.errors import SteerError, SteerWarning
from steer.finetune import DraftConfig, checkpoint, draft
from steer.finetune.checkpoint import CheckpointError
from steer.finetune.draft import draft_step
from steer.finetune.trainer import Trainer
from steer.pipelines import from_pipe
from tests.fixtures.tiny import build
from tests.test_finetune import PROMPTS, Brightness

CFG = dict(max_steps=2, checkpoint_every=1, k=1, lora_rank=2)


def tiny_process():
    return from_pipe(build("sd"), num_inference_steps=2, guidance_scale=1.0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real two-step draft run: checkpoints/step-000001.pt, step-000002.pt, latest."""
    out = tmp_path_factory.mktemp("trained") / "run"
    draft(tiny_process(), Brightness(), PROMPTS, DraftConfig(**CFG), out_dir=out)
    return out


@pytest.fixture
def run(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    return out


class Evil:
    """Unpickling this writes a marker file (what a planted checkpoint would do with any code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def one_line(message: str) -> str:
    assert "\n" not in message.strip(), message
    return message


# ---- nothing but tensors and plain values -------------------------------------------------------
def test_a_planted_pickle_is_refused_and_runs_nothing(run, tmp_path):
    marker = tmp_path / "marker"
    path = run / "checkpoints" / "step-000002.pt"
    state = checkpoint.load(path)
    evil = checkpoint.encode({**state, "extra": {"x": Evil(marker)}})  # a valid header and checksum
    path.write_bytes(evil)
    payload = evil[evil.index(b"\n", len(checkpoint.MAGIC)) + 1:]
    torch.load(io.BytesIO(payload), weights_only=False)  # sanity: unpickled the old way, it runs code
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CheckpointError, match="refused to unpickle") as e:
        draft(tiny_process(), Brightness(), PROMPTS, DraftConfig(**CFG), out_dir=run, resume=True)
    assert not marker.exists()
    msg = one_line(str(e.value))
    assert str(path) in msg and "the last good one is" in msg and "step-000001.pt" in msg
    torch.save({"step": 2, "x": Evil(marker)}, path)  # a bare torch pickle, no header
    with pytest.raises(CheckpointError, match="not a steer checkpoint"):
        checkpoint.load(path)
    assert not marker.exists()


def test_a_planted_reward_weight_file_is_refused_and_runs_nothing(tmp_path):
    from steer.rewards.weights import load_state_dict

    marker, path = tmp_path / "marker", tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "x": Evil(marker)}, path)
    with pytest.raises(ValueError, match="refused to unpickle it") as e:
        load_state_dict(path, key="state_dict")
    assert not marker.exists() and str(path) in one_line(str(e.value))
    torch.save({"state_dict": {"module.w": torch.ones(2)}}, path)  # plain tensors load
    assert torch.equal(load_state_dict(path, key="state_dict")["w"], torch.ones(2))


def test_latest_may_only_name_a_checkpoint_of_its_own_folder(run, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(run / "checkpoints" / "step-000002.pt", elsewhere / "x.pt")  # a loadable file, but outside
    pointer = run / "checkpoints" / "latest"
    for name in ("../../elsewhere/x.pt", str(elsewhere / "x.pt"), "../step-000002.pt"):
        pointer.write_text(json.dumps({"file": name, "step": 2}))
        with pytest.raises(CheckpointError, match="not a checkpoint file inside") as e:
            checkpoint.latest(run / "checkpoints")
        assert name in one_line(str(e.value))
    (run / "checkpoints" / "step-000003.pt").symlink_to(elsewhere / "x.pt")  # a symlink leading out
    pointer.write_text(json.dumps({"file": "step-000003.pt", "step": 3}))
    with pytest.raises(CheckpointError, match="not a checkpoint file inside"):
        checkpoint.latest(run / "checkpoints")
    pointer.unlink()  # without latest: the newest file of the folder, symlinks out excluded
    assert checkpoint.latest(run / "checkpoints").name == "step-000002.pt"


def test_plain_values_round_trip_exactly():
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    state = {"step": 7, "rng": checkpoint.rng_state(),
             "extra": {"grpo_batches": {0: {"id": 1, "idx": [0, 0, 1], "steps": [1, 0], "t": torch.arange(6).view(2, 3)}},
                       "pair": (1, 2.5, None, True, "s"), "bf16": torch.ones(2, dtype=torch.bfloat16),
                       "flag": torch.tensor([True, False]), "empty": torch.zeros(0, 4)}}
    back = checkpoint.decode(checkpoint.encode(state))
    assert back["extra"]["pair"] == (1, 2.5, None, True, "s") and list(back["extra"]["grpo_batches"]) == [0]
    assert torch.equal(back["extra"]["grpo_batches"][0]["t"], state["extra"]["grpo_batches"][0]["t"])
    assert back["extra"]["bf16"].dtype == torch.bfloat16 and back["extra"]["empty"].shape == (0, 4)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    checkpoint.set_rng_state(back["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


# ---- corruption: one line, the file, the last good one ------------------------------------------
def _overwrite_middle(path):
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(64)
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-100])


def _empty(path):
    path.write_bytes(b"")


def _nan_tensor(path):
    state = checkpoint.load(path)
    key = next(iter(state["lora"]))
    state["lora"][key] = torch.full_like(state["lora"][key], float("nan"))
    path.write_bytes(checkpoint.encode(state))  # checksum valid: the values are what is wrong


@pytest.mark.parametrize("corrupt, why", [(_overwrite_middle, "sha256 checksum"), (_truncate, "truncated"),
                                          (_empty, "empty"), (_nan_tensor, "NaN/inf values in lora")])
def test_corruption_names_the_file_and_the_last_good_one(run, corrupt, why):
    bad = run / "checkpoints" / "step-000002.pt"
    corrupt(bad)
    with pytest.raises(CheckpointError) as e:
        checkpoint.load(checkpoint.latest(run / "checkpoints"))
    msg = one_line(str(e.value))
    assert why in msg and str(bad) in msg and str(run / "checkpoints" / "step-000001.pt") in msg, msg
    # the fix the message names works: delete the bad file and latest, resume from the good one
    bad.unlink()
    (run / "checkpoints" / "latest").unlink()
    assert checkpoint.load(checkpoint.latest(run / "checkpoints"))["step"] == 1


def test_corrupt_checkpoint_through_the_cli_is_one_line_exit_2(run, tmp_path):
    from tests.test_finetune_cli import invoke

    model = tmp_path / "model"
    build("sd").save_pretrained(model)
    (run / "checkpoints" / "step-000001.pt").write_bytes(b"")
    _truncate(run / "checkpoints" / "step-000002.pt")
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS))
    r = invoke("--method", "draft", "--reward", "tests.test_finetune:Brightness", "--prompts", prompts, "--model", model,
               "--steps", 2, "--guidance", 1, "--out", run, "--resume")
    lines = [ln for ln in r.output.splitlines() if ln.strip() and not ln.startswith(("Loading", "\r"))]
    assert r.exit_code == 2 and lines[-1].startswith("error: checkpoint") and "truncated" in lines[-1], r.output
    assert "no good checkpoint is left" in lines[-1] and "Traceback" not in r.output


def test_a_nan_weight_is_never_written_as_a_checkpoint(tmp_path):
    def blows_up_at_step_2(trainer, generator, step):  # the loss is finite, the weights end up NaN
        record = draft_step(trainer, generator, step)
        if step == 1:
            with torch.no_grad():
                trainer.params[0].fill_(float("nan"))
        return record

    trainer = Trainer(tiny_process(), Brightness(), PROMPTS, DraftConfig(**CFG), tmp_path, method="draft")
    with pytest.raises(FloatingPointError, match=r"draft step 2: .* is NaN/inf, so checkpoint 2 was not written; "
                                                 r"the last good checkpoint .*step-000001\.pt was kept"):
        trainer.run(blows_up_at_step_2)
    assert [p.name for p in checkpoint.step_files(tmp_path / "checkpoints")] == ["step-000001.pt"]
    assert checkpoint.load(checkpoint.latest(tmp_path / "checkpoints"))["step"] == 1


# ---- one run per folder; settings on resume ------------------------------------------------------
def test_a_used_out_is_refused_unless_resume_or_overwrite(run):
    with pytest.raises(SteerError, match="holds an earlier run .*--resume.*--overwrite"):
        draft(tiny_process(), Brightness(), PROMPTS, DraftConfig(**CFG), out_dir=run)
    (run / ".metrics.jsonl.abcd1234.tmp").write_bytes(b"half")  # a write killed midway
    (run / "notes.txt").write_text("mine")
    draft(tiny_process(), Brightness(), PROMPTS, DraftConfig(**{**CFG, "max_steps": 1}), out_dir=run, overwrite=True)
    assert [p.name for p in checkpoint.step_files(run / "checkpoints")] == ["step-000001.pt"]
    assert [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").open()] == [1]
    assert not list(run.glob(".*.tmp")) and (run / "notes.txt").read_text() == "mine"


def test_resume_names_a_changed_setting_and_warns_for_harmless_ones(run):
    with pytest.raises(SteerError, match=r"learning_rate was 0\.0001, now 0\.001 \(--learning-rate\)") as e:
        draft(tiny_process(), Brightness(), PROMPTS, DraftConfig(**CFG, learning_rate=1e-3), out_dir=run, resume=True)
    assert "step-000002.pt" in one_line(str(e.value))
    with pytest.raises(SteerError, match="the prompts differ"):
        draft(tiny_process(), Brightness(), PROMPTS[::-1], DraftConfig(**CFG), out_dir=run, resume=True)
    with pytest.raises(SteerError, match="num_inference_steps was 2, now 3"):
        draft(from_pipe(build("sd"), num_inference_steps=3, guidance_scale=1.0), Brightness(), PROMPTS,
              DraftConfig(**CFG), out_dir=run, resume=True)
    stale = run / "checkpoints" / ".step-000003.pt.abcd1234.tmp"  # a checkpoint write killed midway
    stale.write_bytes(b"half")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = draft(tiny_process(), Brightness(), PROMPTS, DraftConfig(**{**CFG, "max_steps": 3, "keep_checkpoints": 3}),
                       out_dir=run, resume=True)
    notes = [str(w.message) for w in caught if issubclass(w.category, SteerWarning)]
    assert len(notes) == 1 and "keep_checkpoints changed from 2 to 3" in notes[0]  # max_steps: no warning
    assert [m["step"] for m in result.metrics] == [3] and not stale.exists()
