"""Peak resident memory per fine-tuning method at full size on the CPU (issue 31 item 5).

Random-init Stable Diffusion 1.5 (``tests.fixtures.fullsize``: the released UNet / VAE / text-tower
configs, no weights, so only memory and time mean anything) at 512², float32 on the CPU, ``--steps`` DDIM
steps (2–4), guidance 1 (no CFG batch), LoRA r = 4 on the attention projections, one optimizer step of each
method at its smallest faithful batch (``CELLS``), the reward a differentiable colour statistic that costs
nothing next to the models. Each cell runs in its own process, which reports:

- ``import``: resident memory after importing torch / diffusers / steer (VmRSS), before any model;
- ``model``: resident memory once the pipeline is built (the weights: ~4.3 GB in float32);
- ``peak``: the process' high-water mark (VmHWM / ``ru_maxrss``) after the step: weights + the step's activations,
  gradients, optimizer state and samples;
- ``half``: an *estimate* for fp16 / bf16 weights and activations, not a measurement: everything above
  ``import`` halves except the LoRA's float32 parameters, gradients and two Adam moments (16 bytes a
  parameter, which steer keeps in float32 at any pipeline dtype). It ignores what a half-precision run keeps
  in float32 besides (kernels' log-probs, rewards: a few MB here) and allocator differences.

    python benchmarks/memory.py                 # the whole table (long on a CPU: several minutes a cell)
    python benchmarks/memory.py --quick         # one cell (distill), to check the script end to end
    python benchmarks/memory.py --methods draft grpo --steps 4
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GB = 1024 ** 3
PROMPTS = ["a photograph of a red fox sitting in the snow", "a blue vase of yellow flowers on a wooden table"]
# method -> (steer.finetune function name, config class name, the cell's options: one step, smallest batch)
CELLS = {
    "draft": ("draft", "DraftConfig", {"k": 1}),                                   # DRaFT-1: UNet + VAE backprop
    "draft_full": ("draft", "DraftConfig", {"k": None}),                           # K = S: the whole chain
    "grpo": ("grpo", "GRPOConfig", {"group_size": 2}),
    "nft": ("nft", "NFTConfig", {"group_size": 2, "train_batch_size": 2}),
    "distill": ("distill", "DistillConfig", {"steer_method": "best_of_n", "steer_options": {"n": 2},
                                             "train_batch_size": 1}),
    "soar": ("soar", "SoarConfig", {"steer_method": "best_of_n", "steer_options": {"n": 2}, "train_batch_size": 1}),
    "dpo": ("dpo", "DPOConfig", {"steer_method": "best_of_n", "steer_options": {"n": 2}, "train_batch_size": 1}),
    "kto": ("kto", "KTOConfig", {"steer_method": "best_of_n", "steer_options": {"n": 2}, "train_batch_size": 1}),
}
QUICK = ["distill"]


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status (Linux only)")


def rss_now() -> int:
    """Resident bytes now (VmRSS)."""
    return _status("VmRSS")


def rss_peak() -> int:
    """The process' resident high-water mark in bytes: VmHWM or ``ru_maxrss`` (KiB on Linux), whichever is higher
    (the kernel's per-thread RSS counters can leave VmHWM a few pages below an earlier VmRSS reading)."""
    return max(_status("VmHWM"), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def run_cell(method: str, steps: int, size: int, family: str = "sd15") -> dict:
    """One method's step in this process; the memory numbers in bytes."""
    import torch

    torch.set_num_threads(1)
    import _paths  # noqa: F401  (the fixtures live in tests/)
    from steer import finetune
    from steer.finetune import lora
    from steer.pipelines import from_pipe
    from steer.rewards.base import Reward
    from tests.fixtures.fullsize import build_pipeline

    class Redness(Reward):
        name, differentiable = "redness", True

        def score(self, images, prompts):
            return images[:, 0].mean((1, 2)) - images[:, 2].mean((1, 2))

    base = rss_now()
    if family == "tiny":  # the tests' tiny SD: checks every cell's plumbing in seconds (memory meaningless)
        from tests.fixtures.tiny import build

        pipe, size = build("sd"), None
    else:
        pipe = build_pipeline(family)
    process = from_pipe(pipe, num_inference_steps=steps, guidance_scale=1.0, height=size, width=size)
    model = rss_now()
    fn_name, config_name, options = CELLS[method]
    options = {k: (steps if v is None else v) for k, v in options.items()}
    config = getattr(finetune, config_name)(max_steps=1, lora_rank=4, **options)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        getattr(finetune, fn_name)(process, Redness(), PROMPTS, config, out_dir=Path(out) / "run")
    seconds = time.perf_counter() - t0
    lora_params = sum(p.numel() for p in lora.trainable_parameters(process))
    return {"method": method, "family": family, "steps": steps, "size": size, "import": base, "model": model,
            "peak": max(rss_peak(), model), "lora_params": lora_params, "seconds": seconds}


def half_estimate(cell: dict) -> float:
    """fp16 / bf16 estimate (bytes): above-import memory halves, the LoRA's fp32 training state does not."""
    lora_state = 16 * cell["lora_params"]  # float32 parameter, gradient, Adam m and v
    return cell["import"] + (cell["peak"] - cell["import"] - lora_state) / 2 + lora_state


def table(cells: list[dict]) -> str:
    head = ("| method | steps | imports (GB) | model fp32 (GB) | peak fp32 (GB) | step above model (GB) | "
            "half estimate (GB) | step seconds |\n|---|---|---|---|---|---|---|---|")
    rows = [f"| {c['method']} | {c['steps']} | {c['import'] / GB:.2f} | {c['model'] / GB:.2f} | {c['peak'] / GB:.2f} | "
            f"{(c['peak'] - c['model']) / GB:.2f} | {half_estimate(c) / GB:.2f} | {c['seconds']:.0f} |" for c in cells]
    return "\n".join([head, *rows])


def spawn(method: str, steps: int, size: int, family: str) -> dict:
    """Run one cell in a fresh process (its own high-water mark), one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = [sys.executable, __file__, "--cell", method, "--steps", str(steps), "--size", str(size), "--family", family]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"cell {method} failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", choices=sorted(CELLS), default=list(CELLS))
    parser.add_argument("--steps", type=int, nargs="+", default=[2], help="chain steps per cell (2-4)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--family", choices=["sd15", "tiny"], default="sd15",
                        help="sd15: the table; tiny: the tests' tiny SD, a seconds-long check of every cell")
    parser.add_argument("--quick", action="store_true", help=f"one cell: {QUICK[0]} at the first --steps")
    parser.add_argument("--json", type=Path, help="also write the cells here")
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if any(not 1 <= s <= 50 for s in args.steps):
        raise SystemExit(f"--steps must be in 1..50, got {args.steps}")
    if args.cell:
        print(json.dumps(run_cell(args.cell, args.steps[0], args.size, args.family)))
        return
    plan = [(m, s) for m in (QUICK if args.quick else args.methods) for s in args.steps[:1 if args.quick else None]]
    cells = []
    for method, steps in plan:
        cells.append(spawn(method, steps, args.size, args.family))
        print(table(cells[-1:]).splitlines()[-1], flush=True)
    print(table(cells))
    if args.json:
        args.json.write_text(json.dumps(cells, indent=2))


if __name__ == "__main__":
    main()
