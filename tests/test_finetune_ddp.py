"""Two CPU processes (gloo, through accelerate) train the same LoRA: each rank draws its own prompts
and noise (DPO: its own online pairs), gradients are averaged, and both ranks end with identical weights."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str, method: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), ACCELERATE_USE_CPU="true")
    torch.set_num_threads(1)
    from accelerate import Accelerator

    from steer.finetune import DPOConfig, DraftConfig, dpo, draft, lora
    from steer.pipelines import from_pipe
    from steer.rewards.base import Reward
    from tests.fixtures.tiny import build

    class Brightness(Reward):
        name, differentiable = "brightness", True

        def score(self, images, prompts):
            return images.mean(dim=(1, 2, 3))

    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == world
    process = from_pipe(build("sd"), num_inference_steps=2, guidance_scale=1.0)
    if method == "dpo":
        fn, cfg = dpo, DPOConfig(max_steps=2, steer_method="best_of_n", steer_options={"n": 2}, beta=500.0,
                                 learning_rate=1e-2, train_batch_size=2)
    else:
        fn, cfg = draft, DraftConfig(max_steps=2, k=2, learning_rate=1e-2)
    result = fn(process, Brightness(), ["a red circle", "a blue square", "a green star"], cfg,
                out_dir=os.path.join(out, "run"), accelerator=accelerator)
    torch.save({"lora": lora.lora_state_dict(process), "rewards": [m["reward_mean"] for m in result.metrics]},
               os.path.join(out, f"rank{rank}.pt"))
    accelerator.wait_for_everyone()


@pytest.mark.parametrize("method", ["draft", "dpo"])
def test_two_process_gloo_run_ends_with_identical_lora(tmp_path, method):
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path), method), nprocs=2, join=True,
                       start_method="spawn")
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert a["lora"].keys() == b["lora"].keys()
    assert all(torch.equal(a["lora"][k], b["lora"][k]) for k in a["lora"])
    assert any(v.abs().sum() > 0 for k, v in a["lora"].items() if "lora_B" in k)  # it did train
    assert a["rewards"] == b["rewards"]  # gathered over both ranks
    assert (tmp_path / "run" / "lora" / "pytorch_lora_weights.safetensors").exists()
