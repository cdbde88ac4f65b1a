"""Fine-tuning with a brightness reward: per method the reward before/after (fixed seeds) and seconds
per step, on the tiny SD pipeline (random weights) and on the grey world (``tests.fixtures.grey``, a tiny
pixel DDPM trained on grey images, where GRPO and distillation have something real to learn; each
run there is repeated with the reward negated as a control); peak memory of draft with/without gradient checkpointing for K=1
and K=all; the share of a GRPO step spent sampling vs updating.

    python benchmarks/finetune.py [--steps 16]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from steer import chain
from steer.finetune import DistillConfig, DraftConfig, GRPOConfig, distill, draft, grpo
import importlib
from steer.pipelines import from_pipe
from steer.rewards.base import Reward
import _paths  # noqa: F401,E402  (repository root on sys.path: the fixtures live in tests/)
from tests.fixtures.tiny import build  # noqa: E402

PROMPTS = ["a red circle", "a blue square"]
WIDE = ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "conv_out")


class Brightness(Reward):
    name, differentiable = "brightness", True

    def score(self, images, prompts):
        return images.mean(dim=(1, 2, 3))


def process(steps=4):
    return from_pipe(build("sd"), num_inference_steps=steps, guidance_scale=1.0)


def mean_reward(p, noise_level=0.0, n=16):
    g = torch.Generator().manual_seed(123)
    cond = p.prepare([PROMPTS[i % 2] for i in range(n)])
    with torch.no_grad():
        return float(p.decode(chain.run(p, p.init_noise(n, g), cond, noise_level=noise_level, generator=g)).mean())


def method_table(steps: int) -> None:
    runs = {
        "draft K=all": (draft, DraftConfig(max_steps=steps, k=4, learning_rate=1e-2, prompts_per_step=2,
                                           target_modules=WIDE, max_grad_norm=None), 0.0),
        "draft K=1": (draft, DraftConfig(max_steps=steps, k=1, learning_rate=1e-2, prompts_per_step=2,
                                         target_modules=WIDE, max_grad_norm=None), 0.0),
        "alignprop": (draft, DraftConfig(max_steps=steps, variant="alignprop", learning_rate=1e-2,
                                         prompts_per_step=2, target_modules=WIDE, max_grad_norm=None), 0.0),
        "grpo (DDPO)": (grpo, GRPOConfig(max_steps=steps, learning_rate=2e-2, group_size=8, clip_range=0.2,
                                         inner_epochs=2, target_modules=WIDE), 1.0),
        "distill (best_of_n=8)": (distill, DistillConfig(max_steps=steps, steer_method="best_of_n",
                                                         steer_options={"n": 8}, samples_per_prompt=2,
                                                         top_fraction=0.5, learning_rate=1e-2, prompts_per_step=2,
                                                         train_batch_size=2, target_modules=WIDE), 0.0),
    }
    print(f"{'method':24s} {'reward before':>14s} {'after':>10s} {'s/step':>8s}")
    for name, (fn, cfg, level) in runs.items():
        p = process()
        before = mean_reward(p, level)
        with tempfile.TemporaryDirectory() as d:
            result = fn(p, Brightness(), PROMPTS, cfg, out_dir=d)
        after = mean_reward(p, level)
        per_step = sum(m["seconds"] for m in result.metrics) / len(result.metrics)
        print(f"{name:24s} {before:14.5f} {after:10.5f} {per_step:8.3f}")


class Darkness(Brightness):
    name = "darkness"

    def score(self, images, prompts):
        return -images.mean(dim=(1, 2, 3))


def grey_table() -> None:
    """GRPO (η = 1 policy) and distillation (best-of-8, DDIM η = 0) on the grey world: fresh-sample
    brightness before and after, for the brightness reward and for its negation."""
    from tests.fixtures import grey

    pixel = ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "conv_out")
    state = grey.train_state()
    grpo_cfg = GRPOConfig(max_steps=20, learning_rate=1e-2, group_size=16, target_modules=pixel)

    def distill_cfg(space):
        return DistillConfig(steer_method="best_of_n", steer_options={"n": 8}, samples_per_prompt=16, max_steps=40,
                             learning_rate=1e-2, prompts_per_step=1, train_batch_size=8, target_modules=pixel,
                             loss_space=space)

    runs = {"grpo (DDPO, 20 steps)": (grpo, grpo_cfg, 1.0),
            "distill, loss on x̂0 (40)": (distill, distill_cfg("x0"), 0.0),
            "distill, ε-loss (40)": (distill, distill_cfg("model"), 0.0)}
    print("\ngrey world: fresh-sample brightness (64 samples), base -> after, with the reward and negated")
    print(f"{'method':26s} {'base':>7s} {'+reward':>8s} {'-reward':>8s} {'s/step':>7s}")
    for name, (fn, cfg, eta) in runs.items():
        before = grey.brightness(grey.process(state), eta)
        after, secs = [], []
        for reward in (Brightness(), Darkness()):
            if fn is grpo:
                reward = type(reward.__class__.__name__, (type(reward),), {"differentiable": False})()
            p = grey.process(state)
            with tempfile.TemporaryDirectory() as d:
                result = fn(p, reward, ["grey"], cfg, out_dir=d)
            after.append(grey.brightness(p, eta))
            secs.append(sum(m["seconds"] for m in result.metrics) / len(result.metrics))
        print(f"{name:26s} {before:7.4f} {after[0]:8.4f} {after[1]:8.4f} {sum(secs) / 2:7.3f}")


def saved_activation_bytes(k: int, checkpointing: bool, steps: int = 8) -> int:
    """Bytes of tensors autograd saves for backward in one draft step (8-step chain, batch 4): the
    activation memory that gradient checkpointing trades for recomputation. (On a GPU the same run's
    torch.cuda.max_memory_allocated would be the peak; this CPU counter is device independent.)"""
    p = from_pipe(build("sd"), num_inference_steps=steps, guidance_scale=1.0)
    cfg = DraftConfig(max_steps=1, k=k, gradient_checkpointing=checkpointing, prompts_per_step=4)
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with tempfile.TemporaryDirectory() as d, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        draft(p, Brightness(), PROMPTS, cfg, out_dir=d)
    return total[0]


def grpo_share() -> None:
    p = process()
    sample_s = []
    grpo_module = importlib.import_module("steer.finetune.grpo")
    original = grpo_module.sample_batch

    def timed(*a, **k):
        t = time.perf_counter()
        out = original(*a, **k)
        sample_s.append(time.perf_counter() - t)
        return out

    grpo_module.sample_batch = timed
    try:
        with tempfile.TemporaryDirectory() as d:
            result = grpo(p, Brightness(), PROMPTS, GRPOConfig(max_steps=4, group_size=8), out_dir=d)
    finally:
        grpo_module.sample_batch = original
    total = sum(m["seconds"] for m in result.metrics)
    print(f"GRPO step: {total / 4:.3f} s; sampling {sum(sample_s) / total:.0%}, "
          f"updating (log-prob recompute + backward + AdamW) {1 - sum(sample_s) / total:.0%}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--skip-methods", action="store_true", help="only the GRPO share and the memory table")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if not args.skip_methods:
        method_table(args.steps)
        grey_table()
    grpo_share()
    print("activation memory saved for backward, one draft step (8-step chain, batch 4):")
    for k in (1, 8):
        without, with_ = saved_activation_bytes(k, False), saved_activation_bytes(k, True)
        print(f"  K={k}: without checkpointing {without / 2**20:.1f} MiB, with {with_ / 2**20:.1f} MiB "
              f"(ratio {without / max(with_, 1):.1f}x)")


if __name__ == "__main__":
    main()
