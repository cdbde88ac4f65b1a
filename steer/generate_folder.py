"""The output folder of ``steer generate``: an earlier run's files, and before a run the check that the folder
is free (or ``resume`` / ``overwrite`` says what to do), the finished records a ``--resume`` keeps (same settings,
images on disk unchanged by sha256)."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Optional

from steer import io
from steer.errors import SteerError
from steer.run_options import RunOptions

TRACE, GRID = "trace.json", "grid.png"
IMAGE = re.compile(r"\d{3,}(_\d{3,})?\.png")  # NNN.png and the --save-all candidates NNN_MMM.png
VIDEO = re.compile(r"\d{3,}\.(mp4|webp)")  # a video pipeline's NNN.mp4 (or NNN.webp)
RANK_TRACE = re.compile(r"trace\.rank\d+\.json")
# the settings a resumed run must share with the earlier one (the images' bytes depend on them), with
# the flag that sets each; --device and --save-all may change
SETTINGS = {"method": "--method", "reward": "--reward", "model": "--model",
            **{k: RunOptions.flags()[k] for k in RunOptions().settings()},
            "options": "the method's options", "eval_reward": "--eval-reward"}


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


def claim(out_dir: Path, prompts: list[str], settings: dict, resume: bool, overwrite: bool, state) -> dict[int, dict]:
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
