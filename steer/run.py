"""The ``steer generate`` job: load once, steer prompt by prompt, write as each finishes.

Each prompt k is generated with seed ``seed + k``, so the images do not depend on how prompts are
sharded or on whether the run was resumed: under ``accelerate launch`` every process takes its share
(``PartialState.split_between_processes``), writes its own images and a per-rank trace, and the
main process merges the traces into ``trace.json``.

The output folder holds one run, and is held by it (``io.hold_for_run``: an OS lock on ``.steer.lock``
that ends with the process) so a second run into it at the same time is refused naming the holder's
PID. ``trace.json`` is rewritten (atomically) after every prompt, so a
killed run leaves a trace listing exactly the images it finished; the trace says ``complete``,
``interrupted`` (Ctrl-C) or ``failed`` with the ``error``. A run into a folder with an earlier one is
refused unless ``resume`` (skip the prompts whose image is on disk and recorded in the trace with
its sha256; every setting must match, more prompts may be appended) or ``overwrite`` (delete the
earlier run's images and traces first). ``grid.png`` is written when every prompt has its image.
A video pipeline's prompt also gets ``NNN.mp4`` (``NNN.webp`` without PyAV; ``outputs.save_video``),
recorded as ``video`` / ``video_sha256`` and checked by ``resume`` like the image (``NNN.png`` is then
its frame grid).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Optional

from steer import io, outputs
from steer.api import resolve_process, resolve_reward, run_method
from steer.catalog import check_options, resolve_method
from steer.errors import SteerError
from steer.generate_folder import GRID, RANK_TRACE, TRACE, claim
from steer.run_options import RunOptions



def _distributed():
    """accelerate's PartialState when launched with several processes, else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def _record(k: int, prompt: str, result, path: Path, sha256: str) -> dict[str, Any]:
    held_out = {} if result.eval_rewards is None else {"eval_reward": float(result.eval_rewards[0])}
    return {"index": k, "prompt": prompt, "file": path.name, "sha256": sha256, "reward": float(result.rewards[0]),
            **held_out,
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


# ---- the run ------------------------------------------------------------------------------------
def run_generate(prompts: list[str], out_dir: Path, *, method: str, reward: str, model: Optional[str],
                 run: RunOptions = RunOptions(), save_all=False, options=None, progress=None, resume: bool = False,
                 overwrite: bool = False, eval_reward: Optional[str] = None) -> dict:
    """Run the job; returns a summary (written and skipped counts, NFE per prompt, seconds, timing breakdown).
    ``run``: the run-wide options, checked (``RunOptions.check``). ``out_dir`` is held (``io.hold_for_run``)
    for the whole run: a second run into it is refused."""
    out_dir, state = Path(out_dir), _distributed()
    with io.holding(out_dir, state):
        return _generate(prompts, out_dir, state, method=method, reward=reward, model=model, run=run,
                         save_all=save_all, options=options, progress=progress, resume=resume, overwrite=overwrite,
                         eval_reward=eval_reward)


def _generate(prompts: list[str], out_dir: Path, state, *, method, reward, model, run: RunOptions, save_all, options,
              progress, resume, overwrite, eval_reward) -> dict:
    options = dict(options or {})
    fn = resolve_method(method)
    check_options(fn, options, method)
    t0 = time.perf_counter()
    settings = json.loads(json.dumps({"method": method, "reward": reward, "model": model, **run.settings(),
                                      "options": options, "eval_reward": eval_reward}, default=str))
    done = claim(out_dir, prompts, settings, resume, overwrite, state)
    device = state.device if state is not None and run.device is None else run.device  # one accelerator per process
    process = resolve_process(model, device=device, dtype=run.dtype, **run.process_options())
    reward_model = resolve_reward(reward, device=getattr(process, "device", None), dtype=None)
    eval_model = None if eval_reward is None else resolve_reward(eval_reward, device=getattr(process, "device", None))
    t_load = time.perf_counter() - t0
    job = {"method": method, "reward": reward, "model": model or "embedded default", "seed": run.seed,
           "steps": process.num_steps, "guidance_scale": getattr(process, "guidance_scale", run.guidance_scale),
           "height": run.height, "width": run.width, "negative_prompt": run.negative_prompt,
           "nfe_budget": run.nfe_budget, "options": options, "eval_reward": eval_reward,
           "num_frames": getattr(process, "num_frames", None), "versions": outputs.versions(),
           "settings": settings, "num_prompts": len(prompts)}
    todo = [k for k in range(len(prompts)) if k not in done]
    if todo and (state is None or state.is_main_process):
        (out_dir / GRID).unlink(missing_ok=True)  # rewritten once every prompt has its image
    records: list[dict[str, Any]] = []  # this process's new records
    status = {"interrupted": False, "failed": False, "error": None}
    own = out_dir / (TRACE if state is None else f"trace.rank{state.process_index}.json")

    def write_trace() -> None:  # after every prompt: what is on disk, so far
        timing = _timing(t_load, time.perf_counter() - t0, records)
        _write_trace(own, dict(job, **status, timing=timing), [list(done.values()), records], len(prompts))

    try:
        if state is None:
            _steer_prompts(todo, prompts, out_dir, process, (fn, reward_model, eval_model), job, records, save_all,
                           progress, write_trace)
        else:
            with state.split_between_processes(todo) as mine:
                _steer_prompts(list(mine), prompts, out_dir, process, (fn, reward_model, eval_model), job, records,
                               save_all, progress, write_trace)
    except KeyboardInterrupt:  # Ctrl-C, and SIGTERM under the commands' boundary
        status["interrupted"] = True
        raise
    except SystemExit as e:  # user code (a reward, a callback) exiting is a failure, not a finished run
        status["failed"] = True
        status["error"] = f"the run was stopped by sys.exit({e.code!r}) in a reward or callback"
        raise SteerError(f"{status['error']}; a reward must return scores or raise an error, not exit") from None
    except BaseException as e:
        status["failed"] = True
        status["error"] = next((ln for ln in str(e).splitlines() if ln.strip()), e.__class__.__name__)
        raise
    finally:
        with io.deferred_interrupts():  # a second Ctrl-C does not cut the trace short
            timing = _timing(t_load, time.perf_counter() - t0, records)
            trace = _write_trace(own, dict(job, **status, timing=timing), [list(done.values()), records],
                                 len(prompts))
            if state is None:
                _finish(out_dir, trace)
    if state is not None:
        state.wait_for_everyone()
        if state.is_main_process:
            parts = [json.loads((out_dir / f"trace.rank{r}.json").read_text()) for r in range(state.num_processes)]
            merged = dict(job, interrupted=any(p["interrupted"] for p in parts),
                          failed=any(p["failed"] for p in parts),
                          error=next((p["error"] for p in parts if p["error"]), None),
                          timing={"per_rank": [p["timing"] for p in parts]}, processes=state.num_processes)
            _finish(out_dir, _write_trace(out_dir / TRACE, merged, [p["images"] for p in parts], len(prompts)))
        state.wait_for_everyone()
    nfe = sum(r["nfe"] for r in records)
    return {"written": len(records), "skipped": len(done), "nfe_per_prompt": nfe / max(len(records), 1),
            "seconds": time.perf_counter() - t0, "timing": timing}


def _steer_prompts(indices, prompts, out_dir, process, rewards, job, records, save_all, progress,
                   after_each) -> None:
    """``rewards``: (the method function, the steering reward, the held-out eval reward or None)."""
    fn, reward_model, eval_model = rewards
    for k in indices:
        if progress is not None:
            progress.prompt(k, len(prompts), prompts[k])
        result = run_method(process, [prompts[k]], fn, job["method"], reward_model, seed=job["seed"] + k,
                            nfe_budget=job["nfe_budget"], callback=progress, eval_model=eval_model,
                            options=job["options"])
        with io.deferred_interrupts():  # a prompt's files, its record and the trace: all or none
            _save_prompt(k, prompts, out_dir, result, job, records, save_all, process)
            after_each()


def _save_prompt(k, prompts, out_dir, result, job, records, save_all, process=None) -> None:
    """Prompt ``k``'s PNG(s) (the selected image last), its video on a video pipeline, and its record."""
    path = out_dir / f"{k:03d}.png"
    info = {"prompt": prompts[k], "model": job["model"], "method": job["method"], "options": job["options"],
            "seed": job["seed"] + k, "reward_spec": job["reward"], "reward": float(result.rewards[0]),
            "steps": job["steps"], "nfe": result.trace.nfe}
    if result.eval_rewards is not None:
        info.update(eval_reward_spec=job["eval_reward"], eval_reward=float(result.eval_rewards[0]))
    if save_all and result.candidates is not None:
        for j, image in enumerate(result.candidates[0]):
            cand = {**info, "candidate": j}
            if result.candidate_rewards is not None:
                cand["reward"] = float(result.candidate_rewards[0, j])
            outputs.save_png(out_dir / f"{k:03d}_{j:03d}.png", image, cand)
    video = _save_video(out_dir / f"{k:03d}", process, result, info) if hasattr(process, "decode_video") else {}
    sha256 = outputs.save_png(path, result.images[0], info)  # the selected image last: then it is recorded
    records.append({**_record(k, prompts[k], result, path, sha256), **video})


def _save_video(stem: Path, process, result, info) -> dict[str, str]:
    """The selected video as ``stem.mp4`` (``.webp`` without PyAV); its record fields."""
    from steer.pipelines.video import video_of

    frames = video_of(process, result.images[:1], None if result.latents is None else result.latents[:1])[0]
    path = stem.with_suffix("." + outputs.video_format())
    fps = float(process.frame_rate)
    sha256 = outputs.save_video(path, frames, fps, {**info, "num_frames": int(frames.shape[0]), "fps": fps})
    return {"video": path.name, "video_sha256": sha256}


def _write_trace(path: Path, trace: dict, record_lists: list[list[dict]], num_prompts: int) -> dict:
    """Write ``trace`` with the records (one per prompt index, sorted) and their totals to ``path``; returns it."""
    by_index = {r["index"]: r for rs in record_lists for r in rs}
    records = [by_index[k] for k in sorted(by_index)]
    trace = dict(trace, images=records, complete=len(records) == num_prompts and not trace.get("failed"),
                 nfe=sum(r["nfe"] for r in records), reward_calls=sum(r["reward_calls"] for r in records),
                 rewards=[r["reward"] for r in records])
    trace["nfe_per_prompt"] = trace["nfe"] / max(len(records), 1)
    outputs.write_json(path, trace)
    return trace


def _finish(out_dir: Path, trace: dict) -> None:
    """Once ``trace.json`` is final: delete per-rank traces, and write grid.png when every prompt has its image."""
    from PIL import Image
    import torch
    import numpy as np

    for stale in out_dir.glob("trace.rank*.json"):
        if RANK_TRACE.fullmatch(stale.name):
            stale.unlink(missing_ok=True)
    records = trace["images"]
    if records and trace["complete"]:
        imgs = [torch.from_numpy(np.array(Image.open(out_dir / r["file"]).convert("RGB"))).permute(2, 0, 1).float() / 255
                for r in records]
        if len({tuple(i.shape) for i in imgs}) == 1:
            outputs.save_png(out_dir / GRID, outputs.make_grid(torch.stack(imgs)))
