"""Overhead of steer's chain abstraction over diffusers' own sampling loop, per family.

For each tiny fixture in ``tests.fixtures.tiny.FAMILIES`` (families whose builder module does not exist
yet are skipped): wall time of steer's deterministic loop — ``process.prepare`` + ``chain.run``
(DDIM η=0 / flow Euler ODE) + ``process.decode`` — divided by the pipeline's own ``pipe(...)`` for
the same prompts, initial latents, steps and guidance (``output_type="pt"``). Both run under
``torch.no_grad()``. The two are timed alternately in one process (after a warm-up of each) and the
medians are compared, so machine load affects both alike. Prints a markdown table.

    python benchmarks/overhead.py [--steps 10] [--repeats 7] [--prompts 2] [--threads 1]
    python benchmarks/overhead.py --wrap [--families sd lumina2 auraflow cogview4]

``--wrap`` times ``steer.wrap(pipe, method=...)`` (best-of-N with n=4 and FK with 4 particles, a cheap
pixel reward) against the plain ``pipe(..., num_images_per_prompt=4)`` at equal NFE, whole (the cost
of the step tap, the callback, decoding and scoring every particle, and FK's x̂0 decodes at its
scoring steps) and with the method's own decodes and reward calls taken out, against the plain call's
denoising loop alone (``output_type="latent"``): the ``loop ratio``, what wrapping adds to the loop.
As wall times of separate calls on a shared CPU are noisy (±10%), the time spent inside steer's own
hooks (the scheduler tap and the method's per-step hook, less the decodes and reward calls made there)
is also summed within each wrapped call; 1 + hooks / plain latent call is the same overhead measured
without the noise of comparing two calls.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import platform
import statistics
import time
from typing import Optional

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads crawl on a loaded CPU

import torch  # noqa: E402
import _paths  # noqa: F401,E402  (repository root on sys.path: the fixtures live in tests/)

# family -> (guidance_scale or None for unconditional, options for both sides, options for pipe(...) only);
# a family whose guidance goes by another name (Qwen-Image's true CFG) sets it in the shared options
SMALL = {"height": 32, "width": 32}
SETTINGS = {
    "sd": (5.0, {}, {}),
    "sd_v": (5.0, {}, {}),
    "sdxl": (5.0, {}, {}),
    "sd3": (5.0, {}, {}),
    "flux": (3.5, {"max_sequence_length": 64}, {}),
    "pixart": (4.5, {"clean_caption": False}, {"use_resolution_binning": False}),  # no bs4 here
    "ddpm": (None, {}, {}),
    "sana": (4.5, SMALL, {"use_resolution_binning": False}),
    "z_image": (4.0, SMALL, {}),
    "qwenimage": ("true_cfg", {**SMALL, "true_cfg_scale": 4.0, "negative_prompt": " "}, {}),
    "flux2": (4.0, SMALL, {}),
    "wan": (5.0, {**SMALL, "num_frames": 5, "max_sequence_length": 64}, {}),
    "ltx": (3.0, {**SMALL, "num_frames": 9, "max_sequence_length": 64}, {}),
}
PROMPTS = ["a red circle above a blue square", "two green triangles", "a yellow star", "a purple ring"]


def available(family: str) -> bool:
    module = {"sd_v": "sd"}.get(family, family)
    return importlib.util.find_spec(f"tests.fixtures.tiny.{module}") is not None


def make_runners(family: str, steps: int, num_prompts: int):
    """(steer_fn, diffusers_fn, pipeline class name): two closures producing the same images."""
    from steer import chain
    from steer.pipelines import from_pipe
    from tests.fixtures import tiny

    guidance, shared, pipe_only = SETTINGS.get(family, (None, {}, {}))
    pipe = tiny.build(family)
    pipe.set_progress_bar_config(disable=True)
    options = dict(num_inference_steps=steps, **shared)
    scale = {} if guidance in (None, "true_cfg") else {"guidance_scale": guidance}
    options.update(scale)
    process = from_pipe(pipe, **options)
    prompts = PROMPTS[:num_prompts]
    x = process.init_noise(num_prompts, torch.Generator().manual_seed(0))

    decode = getattr(process, "decode_video", process.decode)  # video: (B, F, 3, H, W), as pipe(...).frames

    def steer_fn():
        return decode(chain.run(process, x, process.prepare(prompts)))

    if guidance is None:  # unconditional pixel pipelines draw x_T themselves from the generator
        def diffusers_fn():
            return pipe(batch_size=num_prompts, generator=torch.Generator().manual_seed(0),
                        num_inference_steps=steps, output_type="pt").images
    else:
        def diffusers_fn():  # prompt= by name: FLUX.2's first positional argument is an image
            out = pipe(prompt=list(prompts), latents=x.clone(), num_inference_steps=steps, output_type="pt",
                       **scale, **shared, **pipe_only)
            return out.frames if hasattr(out, "frames") else out.images

    return steer_fn, diffusers_fn, type(pipe).__name__


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(family: str, steps: int, repeats: int, num_prompts: int) -> dict:
    steer_fn, diffusers_fn, pipeline = make_runners(family, steps, num_prompts)
    with torch.no_grad():
        max_diff = (steer_fn() - diffusers_fn()).abs().max().item()  # warm-up, and a sanity check
        steer_t, diffusers_t = [], []
        for _ in range(repeats):
            steer_t.append(timed(steer_fn))
            diffusers_t.append(timed(diffusers_fn))
    s, d = statistics.median(steer_t), statistics.median(diffusers_t)
    return dict(family=family, pipeline=pipeline, steer_ms=1e3 * s, diffusers_ms=1e3 * d, ratio=s / d,
                max_diff=max_diff)


WRAP_FAMILIES = ("sd", "lumina2", "auraflow", "cogview4")
WRAP_SIZE = {"lumina2": 64}  # Lumina2Pipeline hard-codes vae_scale_factor 8


def redness(images, _prompts):
    """Redness minus blueness: a differentiable colour statistic that costs nothing next to the denoiser."""
    return images[:, 0].float().mean((1, 2)) - images[:, 2].float().mean((1, 2))


def measure_wrap(family: str, steps: int, repeats: int, num_prompts: int, size: Optional[int] = None) -> list[dict]:
    """Rows (one per method): the wrapped call against the plain call at equal NFE (4 latents per prompt),
    whole and split. Per repeat, alternating: the wrapped call (its trace times its decodes and reward
    calls), the plain call with ``output_type="pt"`` and the plain call with ``output_type="latent"``
    (the denoising loop alone). ``loop ratio`` = (wrapped − its decodes − its reward calls) / plain
    latent call: what steer adds inside the pipeline's loop (scheduler tap, callback, kernel, FK's
    bookkeeping); the rest of ``wrap / plain`` is the method's own work (scoring every particle, FK's
    x̂0 decodes at its scoring steps) and the plain call's post-processing."""
    import steer

    module = importlib.import_module(f"tests.fixtures.tiny.{family}")
    pipe = module.build_pipeline()
    pipe.set_progress_bar_config(disable=True)
    size = size or WRAP_SIZE.get(family, 32)
    call = dict(num_inference_steps=steps, guidance_scale=4.0, height=size, width=size)
    prompts = PROMPTS[:num_prompts]

    def plain(output_type):
        return lambda: pipe(prompts, num_images_per_prompt=4, generator=torch.Generator().manual_seed(0),
                            output_type=output_type, **call)

    rows = []
    for method, options in (("best_of_n", {"n": 4}), ("fk", {"particles": 4})):
        steered = steer.wrap(pipe, method=method, reward=redness, **options)

        hooks = HookClock(steered)

        def wrapped():
            return steered(prompts, generator=torch.Generator().manual_seed(0), output_type="pt", **call)

        with torch.no_grad(), hooks.installed():
            wrapped(), plain("pt")(), plain("latent")()
            w_t, work_t, hook_t, p_t, l_t = [], [], [], [], []
            for _ in range(repeats):
                hooks.seconds = 0.0
                w_t.append(timed(wrapped))
                timings = steered.last["steer_trace"].timings
                work_t.append(timings.get("decode", 0.0) + timings.get("reward", 0.0))
                hook_t.append(hooks.seconds)
                p_t.append(timed(plain("pt")))
                l_t.append(timed(plain("latent")))
        med = statistics.median
        loop = med([w - k for w, k in zip(w_t, work_t)])
        rows.append(dict(family=family, pipeline=type(pipe).__name__, method=method, wrap_ms=1e3 * med(w_t),
                         plain_ms=1e3 * med(p_t), ratio=med(w_t) / med(p_t), work_ms=1e3 * med(work_t),
                         loop_ms=1e3 * loop, latent_ms=1e3 * med(l_t), loop_ratio=loop / med(l_t),
                         hooks_ms=1e3 * med(hook_t), hooks_ratio=1 + med(hook_t) / med(l_t)))
    return rows


class HookClock:
    """Wall time spent in steer's own code inside the pipeline's loop: the scheduler tap after each
    ``scheduler.step`` and the method's per-step hook, less the decodes and reward calls made there
    (FK's scoring, the method's own work, timed by the trace). Summed over a call in ``seconds``."""

    def __init__(self, steered):
        self.steered, self.seconds = steered, 0.0

    def _clocked(self, fn, trace_of):
        def run(*args, **kwargs):
            trace = trace_of(args)
            before = sum(trace.timings.get(k, 0.0) for k in ("decode", "reward"))
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                work = sum(trace.timings.get(k, 0.0) for k in ("decode", "reward")) - before
                self.seconds += time.perf_counter() - t0 - work
        return run

    @contextlib.contextmanager
    def installed(self):
        from steer.wrapping import step as wrap_step

        method, tap_after = self.steered.particles, wrap_step.StepTap._after
        wrap_step.StepTap._after = self._clocked(tap_after, lambda args: args[0].trace)
        method.step = self._clocked(type(method).step.__get__(method), lambda args: method.trace)
        try:
            yield self
        finally:
            wrap_step.StepTap._after = tap_after
            del method.step


def main_wrap(args) -> None:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"steer.wrap vs plain pipe(num_images_per_prompt=4), {args.threads} thread(s), load average {load:.1f}; "
          f"{args.steps} steps, {args.prompts} prompts, median of {args.repeats} alternating runs"
          + (f", {args.size}x{args.size}" if args.size else ""))
    print()
    print("| family | pipeline | method | wrap (ms) | plain (ms) | wrap / plain | decodes + rewards (ms) | "
          "wrap loop (ms) | plain latent (ms) | loop ratio | in steer's hooks (ms) | 1 + hooks / plain latent |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for family in args.families or WRAP_FAMILIES:
        for r in measure_wrap(family, args.steps, args.repeats, args.prompts, args.size):
            print(f"| {r['family']} | {r['pipeline']} | {r['method']} | {r['wrap_ms']:.1f} | {r['plain_ms']:.1f} | "
                  f"{r['ratio']:.3f} | {r['work_ms']:.1f} | {r['loop_ms']:.1f} | {r['latent_ms']:.1f} | "
                  f"{r['loop_ratio']:.3f} | {r['hooks_ms']:.1f} | {r['hooks_ratio']:.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--prompts", type=int, default=2, choices=range(1, len(PROMPTS) + 1))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--families", nargs="*", default=None, help="subset of tests.fixtures.tiny.FAMILIES")
    parser.add_argument("--wrap", action="store_true", help="time steer.wrap against the plain pipeline call")
    parser.add_argument("--size", type=int, default=None, help="--wrap: image height = width (default 32; Lumina2 64)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.wrap:
        return main_wrap(args)
    from tests.fixtures.tiny import FAMILIES

    families = [f for f in (args.families or FAMILIES) if available(f)]
    skipped = [f for f in (args.families or FAMILIES) if f not in families]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{platform.processor() or platform.machine()}, {args.threads} thread(s), load average {load:.1f}; "
          f"{args.steps} steps, {args.prompts} prompts, median of {args.repeats} alternating runs"
          + (f"; skipped (no builder yet): {', '.join(skipped)}" if skipped else ""))
    print()
    print("| family | pipeline | steer (ms) | diffusers (ms) | steer / diffusers | max abs diff |")
    print("|---|---|---|---|---|---|")
    for family in families:
        r = measure(family, args.steps, args.repeats, args.prompts)
        print(f"| {r['family']} | {r['pipeline']} | {r['steer_ms']:.1f} | {r['diffusers_ms']:.1f} | "
              f"{r['ratio']:.3f} | {r['max_diff']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
