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

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Optional

from steer import io, outputs
from steer.api import generate, resolve_process, resolve_reward
from steer.errors import SteerError

TRACE, GRID = "trace.json", "grid.png"
IMAGE = re.compile(r"\d{3,}(_\d{3,})?\.png")  # NNN.png and the --save-all candidates NNN_MMM.png
VIDEO = re.compile(r"\d{3,}\.(mp4|webp)")  # a video pipeline's NNN.mp4 (or NNN.webp)
RANK_TRACE = re.compile(r"trace\.rank\d+\.json")
# the settings a resumed run must share with the earlier one (the images' bytes depend on them), with
# the flag that sets each; --device and --save-all may change
SETTINGS = {"method": "--method", "reward": "--reward", "model": "--model", "seed": "--seed", "steps": "--steps",
            "guidance_scale": "--guidance", "height": "--height", "width": "--width",
            "negative_prompt": "--negative-prompt", "nfe_budget": "--nfe-budget", "dtype": "--dtype",
            "options": "the method's options", "eval_reward": "--eval-reward", "num_frames": "--num-frames"}


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


# ---- the output folder --------------------------------------------------------------------------
def earlier_run(out_dir: Path) -> list[str]:
    """The files of an earlier ``steer generate`` run in ``out_dir`` (traces, NNN.png, grid.png)."""
    if not Path(out_dir).is_dir():
        return []
    return sorted(p.name for p in Path(out_dir).iterdir() if p.is_file() and
                  (p.name in (TRACE, GRID) or IMAGE.fullmatch(p.name) or VIDEO.fullmatch(p.name)
                   or RANK_TRACE.fullmatch(p.name)))


def clear_run(out_dir: Path) -> None:
    """Delete an earlier run's traces and images from ``out_dir`` (nothing else there is touched)."""
    for name in earlier_run(out_dir):
        (Path(out_dir) / name).unlink(missing_ok=True)


def _earlier_traces(out_dir: Path) -> list[tuple[Path, dict]]:
    paths = [out_dir / TRACE, *sorted(p for p in out_dir.glob("trace.rank*.json") if RANK_TRACE.fullmatch(p.name))]
    return [(path, _read_trace(path)) for path in paths if path.is_file()]


def _read_trace(path: Path) -> dict:
    """The trace in ``path``, or a one-line ``SteerError`` naming the file, what is wrong and the fix."""
    try:
        trace = json.loads(path.read_bytes().decode("utf-8"))
        wrong = None
    except json.JSONDecodeError as e:
        wrong = f"is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
    except UnicodeDecodeError:
        wrong = "is not UTF-8 text"
    except (ValueError, RecursionError) as e:
        wrong = f"is not JSON steer can read ({e.__class__.__name__})"
    except OSError as e:
        wrong = f"cannot be read ({e.strerror or e.__class__.__name__})"
    if wrong is None and not (isinstance(trace, dict) and isinstance(trace.get("images"), list)
                              and all(isinstance(r, dict) for r in trace["images"])
                              and isinstance(trace.get("settings", {}), dict)):
        wrong = "is not a steer trace (no list of image records)"
    if wrong is not None:
        raise SteerError(f"--resume: {str(path)!r} {wrong}; restore it, or start over with --overwrite "
                         f"(deletes the run's images)")
    return trace


def _sha256(path: Path) -> Optional[str]:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _finished(out_dir: Path, prompts: list[str], settings: dict) -> dict[int, dict]:
    """``--resume``: the records of the earlier run whose image is on disk unchanged, by prompt index;
    an error when its settings or prompts differ."""
    done: dict[int, dict] = {}
    for path, trace in _earlier_traces(out_dir):
        if "settings" not in trace:
            raise SteerError(f"--resume: {path} was written by an older steer and cannot be resumed; start over "
                             f"with --overwrite")
        before = trace["settings"]
        diffs = [f"{k} was {before.get(k)!r}, now {settings[k]!r} ({flag})" for k, flag in SETTINGS.items()
                 if before.get(k) != settings[k]]
        if diffs:
            raise SteerError(f"--resume: the settings differ from those of the run in {out_dir}: {'; '.join(diffs)}; "
                             f"resume with the same settings, or start over with --overwrite")
        for r in trace["images"]:
            k = r.get("index")
            if not isinstance(k, int) or k < 0:
                continue
            if k >= len(prompts) or prompts[k] != r.get("prompt"):
                now = f"now {prompts[k]!r}" if k < len(prompts) else f"now there are only {len(prompts)} prompts"
                raise SteerError(f"--resume: prompt {k + 1} of the run in {out_dir} was {r.get('prompt')!r}, {now}; "
                                 f"resume with the same prompts (more may be appended), or start over with --overwrite")
            name, video = r.get("file"), r.get("video")
            if isinstance(name, str) and IMAGE.fullmatch(name) and r.get("sha256") == _sha256(out_dir / name) and (
                    video is None or (isinstance(video, str) and VIDEO.fullmatch(video)
                                      and r.get("video_sha256") == _sha256(out_dir / video))):
                done[k] = r
    return done


def _claim(out_dir: Path, prompts: list[str], settings: dict, resume: bool, overwrite: bool, state) -> dict[int, dict]:
    """Check and prepare ``out_dir`` before anything loads; returns the finished records when resuming."""
    if resume and overwrite:
        raise SteerError("--resume and --overwrite exclude each other: --resume continues the run in --out, "
                         "--overwrite deletes it; give one")
    earlier = earlier_run(out_dir)
    if earlier and not resume and not overwrite:
        shown = ", ".join(earlier[:3]) + (f" and {len(earlier) - 3} more" if len(earlier) > 3 else "")
        raise SteerError(f"--out {str(out_dir)!r} holds an earlier run ({shown}); continue it with --resume, "
                         f"replace it with --overwrite, or choose another --out")
    done = _finished(out_dir, prompts, settings) if resume else {}
    if state is None or state.is_main_process:
        if overwrite:
            clear_run(out_dir)
        io.remove_stale_temporaries(out_dir)
    if state is not None:
        state.wait_for_everyone()  # no process writes before every process has checked the folder
    return done


# ---- the run ------------------------------------------------------------------------------------
def run_generate(prompts: list[str], out_dir: Path, *, method: str, reward: str, model: Optional[str], seed: int,
                 steps=None, guidance_scale=None, height=None, width=None, negative_prompt=None,
                 nfe_budget=None, save_all=False, device=None, dtype=None, options=None, progress=None,
                 resume: bool = False, overwrite: bool = False, eval_reward: Optional[str] = None,
                 num_frames: Optional[int] = None) -> dict:
    """Run the job; returns a summary (written and skipped counts, NFE per prompt, seconds, timing breakdown).
    ``out_dir`` is held (``io.hold_for_run``) for the whole run: a second run into it is refused."""
    out_dir, state = Path(out_dir), _distributed()
    with io.holding(out_dir, state):
        return _generate(prompts, out_dir, state, method=method, reward=reward, model=model, seed=seed, steps=steps,
                         guidance_scale=guidance_scale, height=height, width=width, negative_prompt=negative_prompt,
                         nfe_budget=nfe_budget, save_all=save_all, device=device, dtype=dtype, options=options,
                         progress=progress, resume=resume, overwrite=overwrite, eval_reward=eval_reward,
                         num_frames=num_frames)


def _generate(prompts: list[str], out_dir: Path, state, *, method, reward, model, seed, steps, guidance_scale, height,
              width, negative_prompt, nfe_budget, save_all, device, dtype, options, progress, resume, overwrite,
              eval_reward, num_frames) -> dict:
    options = dict(options or {})
    t0 = time.perf_counter()
    settings = json.loads(json.dumps(
        {"method": method, "reward": reward, "model": model, "seed": seed, "steps": steps,
         "guidance_scale": guidance_scale, "height": height, "width": width, "negative_prompt": negative_prompt,
         "nfe_budget": nfe_budget, "dtype": None if dtype is None else str(dtype), "options": options,
         "eval_reward": eval_reward, "num_frames": num_frames}, default=str))
    done = _claim(out_dir, prompts, settings, resume, overwrite, state)
    if state is not None and device is None:
        device = state.device  # one accelerator per process
    process = resolve_process(model, device=device, dtype=dtype, num_inference_steps=steps,
                              guidance_scale=guidance_scale, height=height, width=width,
                              negative_prompt=negative_prompt, num_frames=num_frames)
    reward_model = resolve_reward(reward, device=getattr(process, "device", None), dtype=None)
    eval_model = None if eval_reward is None else resolve_reward(eval_reward, device=getattr(process, "device", None))
    t_load = time.perf_counter() - t0
    job = {"method": method, "reward": reward, "model": model or "embedded default", "seed": seed,
           "steps": process.num_steps, "guidance_scale": getattr(process, "guidance_scale", guidance_scale),
           "height": height, "width": width, "negative_prompt": negative_prompt, "nfe_budget": nfe_budget,
           "options": options, "eval_reward": eval_reward, "num_frames": getattr(process, "num_frames", None),
           "versions": outputs.versions(),
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
            _steer_prompts(todo, prompts, out_dir, process, (reward_model, eval_model), job, records, save_all,
                           progress, write_trace)
        else:
            with state.split_between_processes(todo) as mine:
                _steer_prompts(list(mine), prompts, out_dir, process, (reward_model, eval_model), job, records,
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
    """``rewards``: (the steering reward, the held-out eval reward or None)."""
    reward_model, eval_model = rewards
    for k in indices:
        if progress is not None:
            progress.prompt(k, len(prompts), prompts[k])
        result = generate(process, prompts[k], method=job["method"], reward=reward_model, seed=job["seed"] + k,
                          nfe_budget=job["nfe_budget"], callback=progress, eval_reward=eval_model,
                          **job["options"])
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
