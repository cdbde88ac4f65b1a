"""FSDP (the environment ``accelerate launch --config_file fsdp.yaml`` sets): two CPU processes (gloo) shard
the tiny SD UNet's frozen weights, keep the LoRA replicated, and train the same LoRA as the DDP run (DRaFT-K,
and DPO with its adapter-off reference); a sharded run resumed from its checkpoint ends where the uninterrupted
one does."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from steer.errors import SteerError

FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}
PROMPTS = ["a red circle", "a blue square", "a green star"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _brightness():
    from steer.rewards.base import Reward

    class Brightness(Reward):
        name, differentiable = "brightness", True

        def score(self, images, prompts):
            return images.mean(dim=(1, 2, 3))

    return Brightness()


def _train(out: str, accelerator, steps: int, resume: bool = False, method: str = "draft"):
    """A DRaFT-K run (or online DPO: a reference forward with the adapter off) of the tiny SD pipeline; returns
    (the LoRA, the rewards, the process)."""
    from steer.finetune import DPOConfig, DraftConfig, dpo, draft, lora
    from steer.pipelines import from_pipe
    from tests.fixtures.tiny import build

    process = from_pipe(build("sd"), num_inference_steps=2, guidance_scale=1.0)
    if method == "dpo":
        fn, cfg = dpo, DPOConfig(max_steps=steps, steer_method="best_of_n", steer_options={"n": 2}, beta=500.0,
                                 learning_rate=1e-2, train_batch_size=2)
    else:
        fn, cfg = draft, DraftConfig(max_steps=steps, k=2, learning_rate=1e-2)
    result = fn(process, _brightness(), PROMPTS, cfg, out_dir=out, accelerator=accelerator, resume=resume)
    return lora.lora_state_dict(process), [m["reward_mean"] for m in result.metrics], process


def _sharding(process) -> dict:
    """How much of the denoiser's base this rank holds: local / full elements of the sharded (DTensor) weights."""
    from torch.distributed.tensor import DTensor

    unet = process.pipe.unet
    sharded = [p for p in unet.parameters() if isinstance(p, DTensor)]
    lora_plain = all(not isinstance(p, DTensor) for n, p in unet.named_parameters() if "lora_" in n)
    return {"local": sum(p.to_local().numel() for p in sharded), "full": sum(p.numel() for p in sharded),
            "classes": sorted({type(m).__name__ for m in unet.modules() if type(m).__name__.startswith("FSDP")}),
            "lora_replicated": lora_plain}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), ACCELERATE_USE_CPU="true")
    torch.set_num_threads(1)
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    ddp, ddp_rewards, _ = _train(os.path.join(out, "ddp"), accelerator, 2)
    ddp_dpo, _, _ = _train(os.path.join(out, "ddp-dpo"), accelerator, 1, method="dpo")
    os.environ.update(FSDP_ENV)
    fsdp_dpo, _, _ = _train(os.path.join(out, "fsdp-dpo"), accelerator, 1, method="dpo")
    fsdp, rewards, process = _train(os.path.join(out, "fsdp"), accelerator, 2)
    _train(os.path.join(out, "resumed"), accelerator, 1)
    resumed, _, _ = _train(os.path.join(out, "resumed"), accelerator, 2, resume=True)
    torch.save({"ddp": ddp, "fsdp": fsdp, "resumed": resumed, "rewards": rewards, "ddp_rewards": ddp_rewards,
                "ddp_dpo": ddp_dpo, "fsdp_dpo": fsdp_dpo, "sharding": _sharding(process)}, os.path.join(out, f"rank{rank}.pt"))
    accelerator.wait_for_everyone()


def test_fsdp_trains_the_ddp_lora_with_the_base_sharded(tmp_path):
    from safetensors.torch import load_file

    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    shard = a["sharding"]
    assert shard["lora_replicated"] and "FSDPBasicTransformerBlock" in shard["classes"]
    assert shard["full"] > 0 and abs(shard["local"] - shard["full"] / 2) <= 0.01 * shard["full"]  # half the base
    assert a["rewards"] == b["rewards"]  # gathered over both ranks
    torch.testing.assert_close(a["rewards"], a["ddp_rewards"], rtol=1e-5, atol=0)  # the sharded forward is the same
    assert any(v.abs().sum() > 0 for k, v in a["fsdp"].items() if "lora_B" in k)  # it did train
    for k in a["ddp"]:
        assert torch.equal(a["fsdp"][k], b["fsdp"][k])  # the replicated LoRA is the same on both ranks
        # the same LoRA as DDP up to float rounding (the gathered weights feed the kernels from other buffers),
        # which Adam's first steps amplify where a gradient is near zero: measured 3.6e-6 at most, on a LoRA whose
        # B entries moved up to 2e-2 (lr 1e-2, 2 steps), so the tolerance is 0.25% of that move
        torch.testing.assert_close(a["fsdp"][k], a["ddp"][k], rtol=0, atol=5e-5)
        assert torch.equal(a["resumed"][k], a["fsdp"][k])  # resumed from step 1: bitwise (measured)
    for k in a["ddp_dpo"]:  # DPO's reference forward runs the sharded denoiser with the adapter switched off
        assert torch.equal(a["fsdp_dpo"][k], b["fsdp_dpo"][k])
        torch.testing.assert_close(a["fsdp_dpo"][k], a["ddp_dpo"][k], rtol=0, atol=5e-5)
    assert any(v.abs().sum() > 0 for k, v in a["fsdp_dpo"].items() if "lora_B" in k)
    saved = load_file(str(tmp_path / "fsdp" / "lora" / "pytorch_lora_weights.safetensors"))
    assert len(saved) == len(a["fsdp"])  # only the LoRA keys, each whole
    assert sorted(v.numel() for v in saved.values()) == sorted(v.numel() for v in a["fsdp"].values())


def test_fsdp1_config_is_refused_in_one_line(monkeypatch):
    from accelerate import Accelerator

    from steer.finetune import sharding

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(SteerError, match="fsdp_version: 2"):
        sharding.plugin(Accelerator(cpu=True))


def test_alignprop_and_unknown_block_classes_are_refused():
    from steer.finetune import DraftConfig, sharding
    from tests.fixtures.tiny import build

    with pytest.raises(SteerError, match="variant draft"):
        sharding.check_method("draft", DraftConfig(variant="alignprop"))
    unet = build("sd").unet
    assert sharding.block_classes(unet) == sorted(n for n in unet._no_split_modules
                                                  if any(type(m).__name__ == n for m in unet.modules()))
    with pytest.raises(SteerError, match="does not contain"):
        sharding.block_classes(unet, ["FluxTransformerBlock"])


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_move_process_moves_what_the_adapter_built_on_its_device(family):
    from steer.finetune.sharding import move_process
    from steer.pipelines import from_pipe
    from tests.fixtures.tiny import build

    process = from_pipe(build(family), num_inference_steps=2)
    move_process(process, torch.device("meta"))  # a device nothing else lives on, so every miss shows
    assert process.device == torch.device("meta")
    schedule = process.schedule
    levels = schedule.alphas_cumprod if schedule.kind == "diffusion" else schedule.sigmas
    assert schedule.timesteps.device.type == "meta" and levels.device.type == "meta"
    assert all(v.device.type == "meta" for v in vars(process).values() if isinstance(v, torch.Tensor))


def test_a_single_process_under_an_fsdp_config_trains_unsharded(tmp_path, monkeypatch):
    from accelerate import Accelerator
    from torch.distributed.tensor import DTensor

    for key, value in FSDP_ENV.items():
        monkeypatch.setenv(key, value)
    state, rewards, process = _train(str(tmp_path / "run"), Accelerator(cpu=True), 1)
    assert not any(isinstance(p, DTensor) for p in process.pipe.unet.parameters())  # one rank: nothing to shard over
    assert len(rewards) == 1 and any(v.abs().sum() > 0 for k, v in state.items() if "lora_B" in k)


def test_device_is_refused_under_an_fsdp_config(monkeypatch):
    from steer.finetune import sharding

    assert sharding.load_devices("cuda:1") == ("cuda:1", None)  # no FSDP config: --device as given
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(SteerError, match="drop --device"):
        sharding.load_devices("cuda:1")
