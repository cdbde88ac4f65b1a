"""The headline benchmark: steering the shipped shapes pipeline on held-out relational captions.

The base model is the shipped ``StableDiffusionPipeline`` (``steer.zoo.shapes.pipeline()``) at its
default 25 DDIM steps and guidance 4; its NFE per caption (S = 25) is the unit of budget. Every
steering method runs at m x S NFE per caption (m in ``--budgets``), steered by the differentiable
``shapes-clip`` reward, on the 104 held-out relational captions (object pairs never seen in
training). Each is judged by the exact checker (accuracy, never optimised), the mean
``shapes-clip`` reward, and a diversity measure: the mean 1 - cos between the shapes CLIP image
embeddings of two samples per caption (a second seed, on the first ``--diversity-captions``).

Method settings at budget m (NFE per caption in the table is what each actually spent):
best-of-N N = m; FK K = m particles (potential ``max``, λ = 10, the paper's defaults, DDIM η = 1);
DTS* with an NFE budget m·S (its defaults); beam B = 2, M = m/2; zero-order search with an NFE
k = max(1, (m-1)//4) iterations of N = (m-1)//k neighbours (ρ = 0.95), so 1 + N·k <= m chains; ReNO with m iterations (m forward chains; each also
pays a backward pass, so its seconds are ~3x its NFE share).

    python benchmarks/shapes.py [--captions 104] [--budgets 4,8,16] [--methods ...] [--plot PATH]

Takes 19 minutes on 2 quiet CPU cores with the defaults (budgets 4x and 8x, ReNO at 4x only, since
each of its iterations also pays a backward pass; denoiser calls of 64 latents; base model alone:
2600 NFE in 14 s) -- 21 minutes unchunked (``--batch-size 0``), 32 to 38 minutes unchunked on a busier
machine that sampled at 94-102 NFE/s; ``--budgets 4,8,16`` takes about
twice as long, ``--captions 26`` a quarter. Prints a markdown table and writes the accuracy-vs-NFE plot.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from steer.pipelines import from_pipe  # noqa: E402
from steer.zoo.shapes import CPU_BATCH_SIZE, DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_INFERENCE_STEPS, pipeline  # noqa: E402
from steer.zoo.shapes.evaluate import diversity, judge, relational_heldout_captions, steer_captions  # noqa: E402
from steer.zoo.shapes.reward import ShapesClipReward  # noqa: E402

S = DEFAULT_NUM_INFERENCE_STEPS


def method_options(m: int) -> dict[str, tuple[str, dict]]:
    """Method name -> (steer method, options) spending about m·S NFE per caption."""
    return {
        "best-of-N": ("best_of_n", {"n": m}),
        "FK": ("fk", {"particles": m}),
        "DTS*": ("dts_star", {"nfe_budget": m * S}),
        "beam": ("beam", {"beam_width": 2, "candidates": max(m // 2, 1)}),
        "zero-order": ("zero_order", {"iterations": max(1, (m - 1) // 4), "neighbors": (m - 1) // max(1, (m - 1) // 4)}),
        "ReNO": ("reno", {"iterations": m}),
    }


def run(process, reward, captions, div_captions, method, options, seed, chunk):
    images, nfe, seconds = steer_captions(process, captions, method, reward, seed=seed, chunk=chunk, **options)
    acc, mean_r = judge(images, captions, reward)
    again, _, _ = steer_captions(process, div_captions, method, reward, seed=seed + 10_000, chunk=chunk, **options)
    return {"accuracy": acc, "reward": mean_r, "nfe": nfe, "seconds": seconds,
            "diversity": diversity(images[:len(div_captions)], again, reward)}


def table(rows: dict, budgets: list[int]) -> str:
    head = "| method | " + " | ".join(f"{m}× S: acc / reward / div" for m in budgets) + " |"
    lines = [head, "|---" * (len(budgets) + 1) + "|"]
    for name, cells in rows.items():
        out = []
        for m in budgets:
            c = cells.get(m)
            out.append("—" if c is None else f"{c['accuracy']:.1%} / {c['reward']:.2f} / {c['diversity']:.3f}")
        lines.append(f"| {name} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def plot(rows: dict, path: Path, captions: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, cells in rows.items():
        pts = sorted((c["nfe"], c["accuracy"]) for c in cells.values())
        if name == "base":
            ax.axhline(pts[0][1], color="grey", ls="--", label=f"base ({pts[0][1]:.0%})")
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("NFE per caption (denoiser calls)")
    ax.set_ylabel("checker accuracy")
    ax.set_title(f"shapes world: {captions} held-out relational captions")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--captions", type=int, default=104)
    ap.add_argument("--diversity-captions", type=int, default=13)
    ap.add_argument("--budgets", default="4,8")
    ap.add_argument("--reno-budgets", default="4", help="ReNO's budgets (each iteration also pays a backward pass)")
    ap.add_argument("--chunk", type=int, default=52, help="captions per steer.generate call")
    ap.add_argument("--methods", default=",".join(method_options(1)))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=CPU_BATCH_SIZE,
                    help="latents per denoiser call (0: all particles in one call, best on a GPU)")
    ap.add_argument("--plot", default=str(Path(__file__).with_name("shapes.png")))
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    captions = relational_heldout_captions(args.captions)
    div_captions = captions[:args.diversity_captions]
    budgets = [int(b) for b in args.budgets.split(",")]
    names = args.methods.split(",")
    process = from_pipe(pipeline(), num_inference_steps=S, guidance_scale=DEFAULT_GUIDANCE_SCALE,
                        batch_size=args.batch_size or None)
    reward = ShapesClipReward()
    rows: dict[str, dict[int, dict]] = {"base": {1: run(process, reward, captions, div_captions, "best_of_n",
                                                        {"n": 1}, args.seed, args.chunk)}}
    reno_budgets = [int(b) for b in args.reno_budgets.split(",")]
    print(f"base: {rows['base'][1]}", flush=True)
    for m in sorted(set(budgets) | set(reno_budgets)):
        for name, (method, options) in method_options(m).items():
            if name not in names or m not in (reno_budgets if name == "ReNO" else budgets):
                continue
            cell = run(process, reward, captions, div_captions, method, options, args.seed, args.chunk)
            rows.setdefault(name, {})[m] = cell
            print(f"{name} {m}x: {cell}  [{time.time() - t0:.0f}s]", flush=True)
    base = rows["base"][1]
    print(f"\n{len(captions)} held-out relational captions, S = {S} steps, guidance {DEFAULT_GUIDANCE_SCALE}; "
          f"acc = exact-checker accuracy, reward = mean shapes-clip, div = 1 - cos of two seeds' CLIP embeddings "
          f"({len(div_captions)} captions)\n")
    print(table(rows, [1] + sorted(set(budgets) | set(reno_budgets))).replace("| base | ", "| base (1× S) | "))
    print("\naccuracy ÷ base accuracy:")
    for name, cells in rows.items():
        if name != "base":
            print(f"  {name:12s} " + "  ".join(f"{m}×: {c['accuracy'] / max(base['accuracy'], 1e-9):.2f} "
                                              f"(NFE {c['nfe']:.0f}, {c['seconds'] / base['seconds']:.1f}× time)"
                                              for m, c in sorted(cells.items())))
    plot(rows, Path(args.plot), len(captions))
    print(f"\nplot: {args.plot}; total {time.time() - t0:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps({k: {str(m): v for m, v in c.items()} for k, c in rows.items()},
                                              indent=2))
    return rows


if __name__ == "__main__":
    main()
