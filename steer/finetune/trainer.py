"""The loop every fine-tuning method shares: LoRA, AdamW, warm-up, gradient accumulation, max-grad-norm,
mixed precision and multi-process gradient averaging (accelerate), EMA, atomic checkpoints with resume,
NaN guards, ``metrics.jsonl`` and experiment trackers (``config.report_to``: accelerate's tensorboard, wandb, ...
get each step's numbers under ``DIR/trackers/``, and every ``log_images_every`` steps the images a method
returns as ``"images"`` when ``trainer.wants_images(step)``).

A method supplies ``micro_step(trainer, generator, step) -> dict`` that computes its loss, calls
``trainer.backward(loss)`` (possibly several times) and returns metrics. Every random choice of step
``k`` comes from ``step_generator(seed, k, rank)``, so a resumed run replays exactly what an
uninterrupted one would have done (bitwise on CPU).

The output folder holds one run; ``run_folder`` refuses a folder holding an earlier one (unless
``overwrite``) and checks on a resume that the settings match the checkpoint's (``settings()``). The
counters (``nfe``, ``reward_calls``) continue across a resume.

Multi-process (``accelerate launch``): each rank draws its own prompts and noise and the LoRA gradients
are averaged over ranks (``distributed``); with an FSDP config the denoiser's frozen weights are sharded
over the ranks and the LoRA stays replicated (``sharding``).
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from steer import io
from steer.budget import Trace
from steer.finetune import checkpoint, lora, run_folder, sharding
from steer.finetune.config import TrainConfig
from steer.finetune.distributed import add_trackers, average_gradients, make_accelerator
from steer.finetune.plot import reward_plot
from steer.finetune.run_log import RunLog
from steer.types import Cond


@dataclass
class TrainResult:
    """What a fine-tuning run returns. ``lora_dir`` loads with ``pipe.load_lora_weights``."""

    lora_dir: Path
    ema_dir: Optional[Path]
    steps: int
    metrics: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The CPU generator of one step on one rank (a hash of the three, so streams never overlap)."""
    digest = hashlib.sha256(f"steer-finetune/{seed}/{step}/{rank}".encode()).digest()
    return torch.Generator("cpu").manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def concat_conds(conds: Sequence[Cond]) -> Cond:
    """Rows of several ``Cond`` of the same family stacked (prompt order kept)."""
    first = conds[0]
    if len(conds) == 1:
        return first
    tensors = {k: torch.cat([c.tensors[k] for c in conds]) for k in first.tensors}
    return replace(first, prompts=tuple(p for c in conds for p in c.prompts), tensors=tensors)


class Trainer(RunLog):
    """Holds the state of one run; ``run(micro_step)`` trains to ``config.max_steps``."""

    def __init__(self, process, reward, prompts: Sequence[str], config: TrainConfig, out_dir, *,
                 method: str, resume: bool = False, overwrite: bool = False, accelerator=None,
                 callback: Optional[Callable] = None, eval_reward=None, needs_prompts: bool = True):
        if needs_prompts and not prompts:
            raise ValueError("no prompts to fine-tune on; pass at least one prompt")
        self.process, self.reward, self.prompts, self.config = process, reward, list(prompts), config
        self.method, self.callback = method, callback
        self.eval_reward = eval_reward  # a held-out reward logged beside the trained one, never trained on
        self.out_dir = Path(out_dir)
        self.accelerator = accelerator or make_accelerator(process, config, self.tracker_dir)
        if accelerator is not None:
            add_trackers(accelerator, config, self.tracker_dir)
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self._prepare_out_dir(resume, overwrite)
        self.pipe = lora.pipeline_of(process)
        self.params = self._lora_params()
        self.sharded = self._shard()  # the block classes FSDP wrapped, or None
        self.optimizer = self.accelerator.prepare_optimizer(torch.optim.AdamW(
            self.params, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
            weight_decay=config.adam_weight_decay, eps=config.adam_epsilon), device_placement=False)
        warm = config.lr_warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer.optimizer, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
        self.ema = [p.detach().clone() for p in self.params] if config.ema_decay else None
        self.trace = Trace(num_prompts=len(self.prompts))
        self.start_step = 0
        self.extra: dict[str, Any] = {}  # method state that must survive a resume (e.g. a GRPO sample batch)
        self._cond_all: Optional[Cond] = None
        self.micro = 0
        self._step_images: Optional[torch.Tensor] = None
        self._tracking = False
        if resume:
            self._resume()

    # ---- setup --------------------------------------------------------------------------
    def _lora_params(self):
        model = lora.denoiser(self.pipe)
        if getattr(model, "peft_config", None) and lora.ADAPTER in model.peft_config:
            params = lora.trainable_parameters(self.pipe)
        else:
            params = lora.attach_lora(self.pipe, self.config.lora_rank, self.config.lora_alpha,
                                      self.config.target_modules, init_seed=self.config.seed)
        if self.config.gradient_checkpointing:
            if not getattr(model, "_supports_gradient_checkpointing", False):
                raise ValueError(f"{type(model).__name__} does not support gradient checkpointing; "
                                 f"set gradient_checkpointing=False")
            model.enable_gradient_checkpointing()
        return params

    def _shard(self) -> Optional[list[str]]:
        """Under an FSDP config, shard the denoiser's frozen weights over the ranks (``sharding``)."""
        fsdp = sharding.plugin(self.accelerator)
        if fsdp is None:
            return None
        if self.world > 1:
            sharding.check_method(self.method, self.config)
        return sharding.shard_denoiser(self.process, lora.denoiser(self.pipe), self.params, self.accelerator, fsdp)

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    def _prepare_out_dir(self, resume: bool, overwrite: bool) -> None:
        """Refuse a folder holding an earlier run (unless ``resume`` / ``overwrite``); delete stale temporaries."""
        run_folder.prepare(self.out_dir, self.checkpoint_dir, self.accelerator, resume, overwrite)

    def settings(self) -> dict[str, Any]:
        """What the run trains with: the config, method, model, chain, reward, prompts, processes. A resume
        compares them with the checkpoint's."""
        return run_folder.settings(self)

    def _resume(self) -> None:
        state = run_folder.resume_state(self.checkpoint_dir, self.method, self.settings)
        if state is None:
            self._truncate_metrics(0)  # a run killed before its first checkpoint starts over
            return
        lora.load_lora_state_dict(self.pipe, state["lora"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state.get("ema") is not None:
            for e, v in zip(self.ema, state["ema"]):
                e.copy_(v)
        self.extra = state.get("extra") or {}
        counters = state.get("counters") or {}
        self.trace.nfe = int(counters.get("nfe", 0))
        self.trace.reward_calls = int(counters.get("reward_calls", 0))
        self.trace.backward_calls = int(counters.get("backward_calls", 0))
        checkpoint.set_rng_state(state["rng"])
        self.start_step = int(state["step"])
        self._truncate_metrics(self.start_step)

    # ---- per step -----------------------------------------------------------------------
    def backward(self, loss: torch.Tensor) -> None:
        """Backward of one micro-batch loss, scaled for gradient accumulation."""
        self.accelerator.backward(loss / self.config.gradient_accumulation_steps)
        self.trace.add_backward()

    def eval_scores(self, images: torch.Tensor, prompts: Sequence[str]) -> Optional[torch.Tensor]:
        """The held-out ``eval_reward`` of a step's images (B,) on the CPU, or None without one. A method
        returns them as ``"eval_rewards"`` in its step record; they never enter a loss."""
        if self.eval_reward is None:
            return None
        from steer.scoring import eval_scores

        return eval_scores(self.eval_reward, images, prompts, method=self.method).float().cpu()

    def pick_prompts(self, generator: torch.Generator, n: Optional[int] = None) -> list[int]:
        """Indices of ``n`` prompts (default ``prompts_per_step``) drawn uniformly with replacement."""
        n = n or self.config.prompts_per_step
        return torch.randint(len(self.prompts), (n,), generator=generator).tolist()

    def cond(self, indices: Sequence[int]) -> Cond:
        """The encoded prompts ``indices`` (every prompt is encoded once per run, in chunks)."""
        if self._cond_all is None:
            chunks = [self.process.prepare(self.prompts[s:s + 32]) for s in range(0, len(self.prompts), 32)]
            self._cond_all = concat_conds(chunks)
        return self._cond_all.index(list(indices))

    def run(self, micro_step: Callable) -> TrainResult:
        t_run = time.perf_counter()
        metrics: list[dict[str, Any]] = []
        self._start_trackers()
        try:
            for step in range(self.start_step, self.config.max_steps):
                t0 = time.perf_counter()
                self._step_images = None
                record = self._one_step(micro_step, step)
                record["seconds"] = time.perf_counter() - t0
                metrics.append(record)
                self._log(record)
                self._track(record)
                if (step + 1) % self.config.checkpoint_every == 0 or step + 1 == self.config.max_steps:
                    self.save_checkpoint(step + 1)
                if self.callback is not None:
                    self.callback(record)
            return self._finish(metrics, time.perf_counter() - t_run)
        finally:
            self._end_trackers()

    def _one_step(self, micro_step: Callable, step: int) -> dict[str, Any]:
        self.optimizer.zero_grad(set_to_none=True)
        records = []
        for micro in range(self.config.gradient_accumulation_steps):
            self.micro = micro
            generator = step_generator(self.config.seed, step * 1000 + micro, self.rank)
            try:
                with self.accelerator.autocast():
                    records.append(micro_step(self, generator, step))
            except FloatingPointError as e:
                raise FloatingPointError(f"{self.method} step {step + 1}: {e}; {self._kept()}") from None
            self._check_loss(records[-1], step)
        images = [r.pop("images") for r in records if r.get("images") is not None]
        if images:
            self._step_images = torch.cat([torch.as_tensor(i).detach().float().cpu() for i in images])
        average_gradients(self.accelerator, self.params, self.world)
        grad_norm = self._clip()
        self.optimizer.step()
        self.scheduler.step()
        self._update_ema()
        return self._summarize(records, step, grad_norm)

    def _check_loss(self, record: dict, step: int) -> None:
        loss = record["loss"]
        if not math.isfinite(loss):
            prompts = record.get("prompts", [])
            raise FloatingPointError(
                f"{self.method} step {step + 1}: loss is {loss} for prompt(s) {prompts[:3]}; {self._kept()}; "
                f"lower learning_rate or max_grad_norm")

    def _kept(self) -> str:
        path = checkpoint.last_good(self.checkpoint_dir)
        return f"the last good checkpoint {path} was kept" if path else "no checkpoint had been written yet"

    def _clip(self) -> float:
        if self.config.max_grad_norm is None:
            grads = [p.grad for p in self.params if p.grad is not None]
            return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))) if grads else 0.0
        return float(self.accelerator.clip_grad_norm_(self.params, self.config.max_grad_norm))

    def _update_ema(self) -> None:
        if self.ema is None:
            return
        d = self.config.ema_decay
        with torch.no_grad():
            for e, p in zip(self.ema, self.params):
                e.mul_(d).add_(p.detach(), alpha=1 - d)

    def state(self) -> dict[str, Any]:
        return {"method": self.method, "config": self.config.to_dict(), "settings": self.settings(),
                "counters": {"nfe": self.trace.nfe, "reward_calls": self.trace.reward_calls,
                             "backward_calls": self.trace.backward_calls},
                "lora": lora.lora_state_dict(self.pipe),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "ema": [e.clone() for e in self.ema] if self.ema is not None else None, "extra": self.extra}

    def save_checkpoint(self, step: int) -> None:
        """Write checkpoint ``step`` (main process); a NaN/inf anywhere in it is an error and nothing is written."""
        state = self.state()
        bad = checkpoint.non_finite(state)
        if bad is not None:  # every rank holds the same weights, so every rank stops here
            raise FloatingPointError(f"{self.method} step {step}: {bad} is NaN/inf, so checkpoint {step} was not "
                                     f"written; {self._kept()}; lower learning_rate or max_grad_norm")
        if self.accelerator.is_main_process:
            with io.deferred_interrupts():  # the file, `latest` and the pruning complete even on Ctrl-C
                checkpoint.save(self.checkpoint_dir, step, state, keep=self.config.keep_checkpoints)
        self.accelerator.wait_for_everyone()

    def _finish(self, metrics: list[dict], seconds: float) -> TrainResult:
        lora_dir, ema_dir = self.out_dir / "lora", None
        if self.accelerator.is_main_process:
            with io.deferred_interrupts():
                lora.save_lora(self.pipe, lora_dir)
                io.write_json(self.out_dir / "config.json", self.config.to_dict())
                if self.ema is not None:
                    ema_dir = self._save_ema()
                reward_plot(self._logged(), self.out_dir / "reward.png")
        self.accelerator.wait_for_everyone()
        return TrainResult(lora_dir=lora_dir, ema_dir=ema_dir, steps=self.config.max_steps, metrics=metrics,
                           seconds=seconds)

    def _save_ema(self) -> Path:
        """Swap the EMA weights in, save them as lora_ema/, swap the trained weights back."""
        with torch.no_grad():
            live = [p.detach().clone() for p in self.params]
            for p, e in zip(self.params, self.ema):
                p.copy_(e)
            path = lora.save_lora(self.pipe, self.out_dir / "lora_ema")
            for p, v in zip(self.params, live):
                p.copy_(v)
        return path
