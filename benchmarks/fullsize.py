"""FK and best-of-N against the plain pipeline at full size (issue 17 item 5; a GPU job).

Random-init Stable Diffusion 1.5 and SDXL at their real sizes (``tests.fixtures.fullsize``: the
UNets, VAEs and text towers of the released configs; no weights, so only times and memory mean
anything), in fp16 on the GPU by default. Per family, at the native resolution and ``--steps`` DDIM
steps with guidance ``--guidance``, timed alternately in one process after a warm-up of each, median
of ``--repeats``:

- ``plain``: ``pipe(prompt, num_images_per_prompt=4, output_type="pt")``, the baseline at equal NFE;
- ``best-of-4``: ``steer.generate(pipe, prompt, method="best_of_n", n=4)`` (4 latents, one reward call);
- ``FK-4``: ``steer.generate(pipe, prompt, method="fk", particles=4)`` (the paper's defaults: x̂0
  decodes and reward calls at every resampling step);
- ``wrap FK-4``: ``steer.wrap(pipe, method="fk", particles=4)`` called like the pipeline.

Ratios are against ``plain``; the goal is FK-4 ≤ 1.15. The reward is ``--reward``: ``pixel`` (a
differentiable colour statistic, ~free, so the ratio is steer's own cost plus FK's decodes) or
``hps-arch`` (a random-init open_clip ViT-H-14 scored as ``HPSReward``: the compute of HPSv2.1, needs
``open_clip_torch``). Peak GPU memory per call from ``torch.cuda.max_memory_allocated``.

    python benchmarks/fullsize.py                                   # sd15 and sdxl, cuda, fp16, 50 steps
    python benchmarks/fullsize.py --families sd15 --steps 30 --reward hps-arch
    python benchmarks/fullsize.py --device cpu --dtype fp32 --size 64 --steps 2 --repeats 1   # a CPU smoke run
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import _paths  # noqa: F401,E402  (repository root on sys.path: the fixtures live in tests/)
from overhead import redness  # noqa: E402

PROMPT = "a photograph of a red fox sitting in the snow, detailed fur, golden hour"
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def make_reward(name: str, device, dtype):
    if name == "pixel":
        return redness
    if name == "hps-arch":
        import open_clip

        from steer.rewards.encoders import open_clip_tokenizer
        from steer.rewards.hps import MODEL_NAME, HPSReward

        model = open_clip.create_model(MODEL_NAME, pretrained=None).to(device=device, dtype=dtype).eval()
        return HPSReward.from_model(model, open_clip_tokenizer(MODEL_NAME))
    raise SystemExit(f"--reward must be pixel or hps-arch, got {name!r}")


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def runners(pipe, reward, size: int, steps: int, guidance: float):
    """name -> zero-argument call producing 4 images' worth of work for PROMPT."""
    import steer

    call = dict(num_inference_steps=steps, guidance_scale=guidance, height=size, width=size)
    wrapped = steer.wrap(pipe, method="fk", reward=reward, particles=4)

    def seed():
        return torch.Generator("cpu").manual_seed(0)

    return {
        "plain": lambda: pipe(PROMPT, num_images_per_prompt=4, generator=seed(), output_type="pt", **call).images,
        "best-of-4": lambda: steer.generate(pipe, PROMPT, method="best_of_n", n=4, reward=reward, seed=0, steps=steps,
                                            guidance_scale=guidance, height=size, width=size).images,
        "FK-4": lambda: steer.generate(pipe, PROMPT, method="fk", particles=4, reward=reward, seed=0, steps=steps,
                                       guidance_scale=guidance, height=size, width=size).images,
        "wrap FK-4": lambda: wrapped(PROMPT, generator=seed(), output_type="pt", **call).images,
    }


def measure(family: str, args) -> list[dict]:
    from tests.fixtures.fullsize import SIZES, build_pipeline

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    pipe = build_pipeline(family, dtype=dtype, device=device)
    size = args.size or SIZES[family]
    calls = runners(pipe, make_reward(args.reward, device, dtype), size, args.steps, args.guidance)
    times: dict[str, list[float]] = {name: [] for name in calls}
    peak: dict[str, float] = {}
    with torch.no_grad():
        for name, fn in calls.items():  # warm-up (and the peak memory of each)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            fn()
            sync(device)
            peak[name] = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else float("nan")
        for _ in range(args.repeats):
            for name, fn in calls.items():
                sync(device)
                t0 = time.perf_counter()
                fn()
                sync(device)
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["plain"])
    return [dict(family=family, size=size, call=name, seconds=statistics.median(ts),
                 ratio=statistics.median(ts) / base, peak_gib=peak[name]) for name, ts in times.items()]


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="*", default=["sd15", "sdxl"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="fp16", choices=sorted(DTYPES))
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--size", type=int, default=None, help="image height = width (default: the family's native)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--reward", default="pixel", help="pixel or hps-arch")
    args = ap.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; pass --device cpu --dtype fp32 for a smoke run")
    name = torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else "cpu"
    print(f"{name}, {args.dtype}, {args.steps} DDIM steps, guidance {args.guidance}, reward {args.reward}, "
          f"median of {args.repeats} alternating runs after a warm-up")
    print()
    print("| family | size | call | seconds | / plain | peak GPU memory (GiB) |")
    print("|---|---|---|---|---|---|")
    rows = []
    for family in args.families:
        for r in measure(family, args):
            rows.append(r)
            print(f"| {r['family']} | {r['size']} | {r['call']} | {r['seconds']:.2f} | {r['ratio']:.3f} | "
                  f"{r['peak_gib']:.1f} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
