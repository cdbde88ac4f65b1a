"""The ``steer generate`` job: load once, steer prompt by prompt, write as each finishes.

Each prompt k is generated with seed ``seed + k``, so the images do not depend on how prompts are
sharded: under ``accelerate launch`` every process takes its share
(``PartialState.split_between_processes``), writes its own images and a per-rank trace, and the
main process merges the traces into ``trace.json``.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Optional

from steer import outputs
from steer.api import generate, resolve_process, resolve_reward


def _distributed():
    """accelerate's PartialState when launched with several processes, else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def _record(k: int, prompt: str, result, path: Path) -> dict[str, Any]:
    return {"index": k, "prompt": prompt, "file": path.name, "reward": float(result.rewards[0]),
            "nfe": result.trace.nfe, "reward_calls": result.trace.reward_calls,
            "backward_calls": result.trace.backward_calls, "seconds": result.trace.seconds,
            "timings": dict(result.trace.timings)}


def _timing(t_load: float, total: float, records: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds by part: load (pipeline + reward), denoise, decode, reward, other (the methods'
    bookkeeping, backward passes, writing images), total."""
    parts = {part: sum(r["timings"].get(part, 0.0) for r in records) for part in ("denoise", "decode", "reward")}
    out = {"load_seconds": t_load, **{f"{k}_seconds": v for k, v in parts.items()}}
    out["other_seconds"] = max(0.0, total - t_load - sum(parts.values()))
    out["total_seconds"] = total
    return out


def run_generate(prompts: list[str], out_dir: Path, *, method: str, reward: str, model: Optional[str], seed: int,
                 steps=None, guidance_scale=None, height=None, width=None, negative_prompt=None,
                 nfe_budget=None, save_all=False, device=None, dtype=None, options=None, progress=None) -> dict:
    """Run the job; returns a summary (written count, NFE per prompt, seconds, timing breakdown)."""
    options = dict(options or {})
    state = _distributed()
    t0 = time.perf_counter()
    if state is not None and device is None:
        device = state.device  # one accelerator per process
    process = resolve_process(model, device=device, dtype=dtype, num_inference_steps=steps,
                              guidance_scale=guidance_scale, height=height, width=width,
                              negative_prompt=negative_prompt)
    reward_model = resolve_reward(reward, device=getattr(process, "device", None), dtype=None)
    t_load = time.perf_counter() - t0
    job = {"method": method, "reward": reward, "model": model or "embedded default", "seed": seed,
           "steps": process.num_steps, "guidance_scale": getattr(process, "guidance_scale", guidance_scale), "height": height, "width": width,
           "negative_prompt": negative_prompt, "nfe_budget": nfe_budget, "options": options,
           "versions": outputs.versions()}
    indices = list(range(len(prompts)))
    records: list[dict[str, Any]] = []
    interrupted = False
    try:
        if state is None:
            _steer_prompts(indices, prompts, out_dir, process, reward_model, job, records, save_all, progress)
        else:
            with state.split_between_processes(indices) as mine:
                _steer_prompts(list(mine), prompts, out_dir, process, reward_model, job, records, save_all, progress)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        timing = _timing(t_load, time.perf_counter() - t0, records)
        trace = dict(job, interrupted=interrupted, timing=timing, images=records)
        if state is None:
            _finish(out_dir, trace, [records])
        else:
            outputs.write_json(out_dir / f"trace.rank{state.process_index}.json", trace)
    if state is not None:
        state.wait_for_everyone()
        if state.is_main_process:
            import json

            parts = [json.loads((out_dir / f"trace.rank{r}.json").read_text()) for r in range(state.num_processes)]
            merged = dict(job, interrupted=any(p["interrupted"] for p in parts),
                          timing={"per_rank": [p["timing"] for p in parts]}, processes=state.num_processes)
            _finish(out_dir, merged, [p["images"] for p in parts])
            for r in range(state.num_processes):
                (out_dir / f"trace.rank{r}.json").unlink()
        state.wait_for_everyone()
    nfe = sum(r["nfe"] for r in records)
    return {"written": len(records), "nfe_per_prompt": nfe / max(len(records), 1),
            "seconds": time.perf_counter() - t0, "timing": timing}


def _steer_prompts(indices, prompts, out_dir, process, reward_model, job, records, save_all, progress) -> None:
    for k in indices:
        if progress is not None:
            progress.prompt(k, len(prompts), prompts[k])
        result = generate(process, prompts[k], method=job["method"], reward=reward_model, seed=job["seed"] + k,
                          nfe_budget=job["nfe_budget"], callback=progress, **job["options"])
        path = out_dir / f"{k:03d}.png"
        info = {"prompt": prompts[k], "model": job["model"], "method": job["method"], "options": job["options"],
                "seed": job["seed"] + k, "reward_spec": job["reward"], "reward": float(result.rewards[0]),
                "steps": job["steps"], "nfe": result.trace.nfe}
        outputs.save_png(path, result.images[0], info)
        if save_all and result.candidates is not None:
            for j, image in enumerate(result.candidates[0]):
                cand = {**info, "candidate": j}
                if result.candidate_rewards is not None:
                    cand["reward"] = float(result.candidate_rewards[0, j])
                outputs.save_png(out_dir / f"{k:03d}_{j:03d}.png", image, cand)
        records.append(_record(k, prompts[k], result, path))


def _finish(out_dir: Path, trace: dict, record_lists: list[list[dict]]) -> None:
    """Write trace.json (records sorted by prompt index) and grid.png of the selected images."""
    from PIL import Image
    import torch
    import numpy as np

    records = sorted((r for rs in record_lists for r in rs), key=lambda r: r["index"])
    trace = dict(trace, images=records, nfe=sum(r["nfe"] for r in records),
                 reward_calls=sum(r["reward_calls"] for r in records),
                 rewards=[r["reward"] for r in records])
    trace["nfe_per_prompt"] = trace["nfe"] / max(len(records), 1)
    outputs.write_json(out_dir / "trace.json", trace)
    if records:
        imgs = [torch.from_numpy(np.array(Image.open(out_dir / r["file"]).convert("RGB"))).permute(2, 0, 1).float() / 255
                for r in records]
        if len({tuple(i.shape) for i in imgs}) == 1:
            outputs.save_png(out_dir / "grid.png", outputs.make_grid(torch.stack(imgs)))
