"""The headline benchmark: steering the shipped shapes pipeline, powered and controlled.

Base model: the shipped ``StableDiffusionPipeline`` at its 25 DDIM steps and guidance 4; its NFE per
caption (S = 25) is the unit of budget. Every method is steered by the differentiable ``shapes-clip``
reward on the 104 held-out relational captions (object pairs never seen in training), with
``--seeds`` sampling seeds per caption (default 4: 416 samples per cell), at m x S NFE per caption.

Columns, per cell: exact-checker accuracy (never optimised) with a 95% interval (bootstrap over
captions, each caption's accuracy averaged over the seeds); the optimised reward (mean
``shapes-clip``); a held-out reward that is not optimised — ``swap-p``, the probability the CLIP puts
on the true caption against all of its corruptions (``world.mismatches``: swapped relation, order,
colours, shapes; the registered eval reward ``shapes-swap``), which an image that merely inflates
the cosine does not raise; diversity
(1 - cos of the CLIP image embeddings of seed 0's and seed 1's sample per caption); single-object
accuracy (the 12 single-object captions x the seeds) at the largest budget, as a regression check.

Controls and sharing: one best-of-N run with the deterministic sampler (DDIM η = 0) at the largest
budget gives the base (its first candidate), and best-of-N at every smaller budget (the best of its
first m candidates — i.i.d. samples, so the same estimator as separate runs, at no extra cost);
best-of-N with the stochastic kernel the SMC and tree methods use (η = 1) is the control that
separates "stochastic sampling" from "search". Rows: FK (potential max, λ = 10, the paper's
defaults), FK tempered (adaptive λ, ``lam=inf``), DTS and DTS* (an NFE budget m·S, their defaults),
beam (B = 2, M = m/2), zero-order (k = max(1, (m-1)//4) iterations of N = (m-1)//k neighbours),
ReNO (m iterations, each also paying a backward pass; 4x only by default), SVDD (M = m kernel draws per
step), reward guidance (DPS, n = m chains, a backward pass per step), RBF (max_nfe = m·S: 2 chains x 25
initial draws, the rest rolled over the steps; m >= 4), CARINOX (2 seeds x m/2 ReNO iterations; 4x only).

Every cell is cached under ``--cache`` (accuracy vectors and images), so an interrupted run resumes
where it stopped and the table is printed from whatever is cached (``--report-only``).

    python benchmarks/shapes.py [--seeds 4] [--budgets 4,8] [--bon-max 16] [--rows ...] [--cache DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from steer.budget import Budget  # noqa: E402
from steer.catalog import resolve_method  # noqa: E402
from steer.pipelines import from_pipe  # noqa: E402
from steer.zoo.shapes import CPU_BATCH_SIZE, DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_INFERENCE_STEPS, checker  # noqa: E402
from steer.zoo.shapes import pipeline, world  # noqa: E402
from steer.zoo.shapes.clip import image_embeds  # noqa: E402
from steer.zoo.shapes.evaluate import relational_heldout_captions  # noqa: E402
from steer.scoring import eval_scores  # noqa: E402
from steer.zoo.shapes.reward import ShapesClipReward, ShapesSwapReward  # noqa: E402

S = DEFAULT_NUM_INFERENCE_STEPS
BON = ("best-of-N η=0", "best-of-N η=1")


def row_options(name: str, m: int) -> tuple[str, dict]:
    """(method, options) spending about m·S NFE per caption."""
    k = max(1, (m - 1) // 4)
    return {
        "FK": ("fk", {"particles": m}),
        "FK tempered": ("fk", {"particles": m, "potential": "tempered", "lam": float("inf")}),
        "DTS": ("dts", {"budget": Budget(nfe=m * S)}),
        "DTS*": ("dts_star", {"budget": Budget(nfe=m * S)}),
        "beam": ("beam", {"beam_width": 2, "candidates": max(m // 2, 1)}),
        "zero-order": ("zero_order", {"iterations": k, "neighbors": (m - 1) // k}),
        "ReNO": ("reno", {"iterations": m}),
        "SVDD": ("svdd", {"candidates": m}),
        "reward guidance": ("reward_guidance", {"n": m}),
        "RBF": ("rbf", {"max_nfe": m * S}),
        "CARINOX": ("carinox", {"seeds": 2, "iterations": max(m // 2, 1)}),
    }[name]


def steer_all(process, reward, captions, method, options, seed, chunk):
    """Every caption steered (chunks of ``chunk``, chunk at s seeded seed·10^6 + s): Results, NFE, seconds."""
    fn, out, t = resolve_method(method), [], time.perf_counter()
    for s in range(0, len(captions), chunk):
        g = torch.Generator().manual_seed(seed * 1_000_000 + s)
        out.append(fn(process, reward, captions[s:s + chunk], generator=g, **options))
    return out, sum(r.trace.nfe for r in out) / len(captions), time.perf_counter() - t


def measure(reward, images, captions) -> dict:
    """Per-sample columns of one seed's images (N, 3, H, W); the held-out column is the registered
    eval reward ``shapes-swap`` (the same CLIP), scored as ``eval_reward=`` scores: on the final images only."""
    held_out = ShapesSwapReward(clip_reward=reward)
    with torch.no_grad():
        return {"correct": checker.check(images, captions).float(), "reward": reward(images, captions).float(),
                "swap_p": eval_scores(held_out, images, captions, method="benchmark"),
                "embeds": image_embeds(reward.model, images)}


def bootstrap(per_caption: torch.Tensor, reps: int = 2000) -> tuple[float, float]:
    """95% interval of the mean over captions (rows), resampling captions."""
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(len(per_caption), (reps, len(per_caption)), generator=g)
    means = per_caption[idx].mean(1)
    return float(means.quantile(0.025)), float(means.quantile(0.975))


def summarize(samples: list[dict], nfe: float, seconds: float) -> dict:
    """A cell from its seeds' per-sample columns."""
    correct = torch.stack([s["correct"] for s in samples], 1)  # (N, seeds)
    lo, hi = bootstrap(correct.mean(1))
    cos = (samples[0]["embeds"] * samples[1]["embeds"]).sum(-1) if len(samples) > 1 else torch.ones(1)
    return {"accuracy": float(correct.mean()), "ci": [lo, hi], "n": correct.numel(),
            "reward": float(torch.stack([s["reward"] for s in samples]).mean()),
            "swap_p": float(torch.stack([s["swap_p"] for s in samples]).mean()),
            "diversity": float((1 - cos).mean()), "nfe": nfe, "seconds": seconds}


class Cells:
    """Cached cells: ``path/<row>@<m>.json``; written atomically as each finishes."""

    def __init__(self, path: Path):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)

    def file(self, row: str, m: int) -> Path:
        return self.path / f"{row.replace(' ', '_').replace('*', 'star').replace('=', '')}@{m}.json"

    def get(self, row: str, m: int):
        f = self.file(row, m)
        return json.loads(f.read_text()) if f.exists() else None

    def put(self, row: str, m: int, cell: dict) -> None:
        from steer.io import write_json

        write_json(self.file(row, m), {"row": row, "m": m, **cell})

    def all(self) -> dict:
        out: dict = {}
        for f in sorted(self.path.glob("*.json")):
            c = json.loads(f.read_text())
            out.setdefault(c["row"], {})[c["m"]] = c
        return out


def run_bon(process, reward, captions, singles, name, n, budgets, seeds, chunk, cells: Cells):
    """One best-of-n run per seed; cells for the base (m = 1, η = 0 only) and every budget <= n."""
    wanted = ([1] if name == BON[0] else []) + sorted({m for m in budgets if m <= n} | {n})
    if all(cells.get(name, m) for m in wanted):
        return
    opts = {"n": n, "noise_level": 0.0 if name == BON[0] else 1.0}
    per_m = {m: [] for m in wanted}
    single_m = {m: [] for m in wanted}
    nfe_total, seconds = 0.0, 0.0
    for seed in range(seeds):
        for caps, store in ((captions, per_m), (singles, single_m)):
            results, nfe, sec = steer_all(process, reward, caps, "best_of_n", opts, seed, chunk)
            if caps is captions:
                nfe_total, seconds = nfe_total + nfe / seeds, seconds + sec
            cand = torch.cat([r.candidates for r in results])  # (N, n, 3, H, W)
            cand_r = torch.cat([r.candidate_rewards for r in results])  # (N, n)
            for m in wanted:
                best = cand_r[:, :m].argmax(1)
                store[m].append(measure(reward, cand[torch.arange(len(caps)), best], caps))
    for m in wanted:
        cell = summarize(per_m[m], nfe_total * m / n, seconds * m / n)
        cell["single_accuracy"] = float(torch.stack([s["correct"] for s in single_m[m]]).mean())
        cells.put(name, m, cell)


def run_row(process, reward, captions, singles, name, m, seeds, chunk, cells: Cells) -> None:
    """One cell; ``singles`` (the single-object regression check) only at a row's largest budget."""
    if cells.get(name, m):
        return
    method, options = row_options(name, m)
    samples, single, nfe_total, seconds = [], [], 0.0, 0.0
    for seed in range(seeds):
        results, nfe, sec = steer_all(process, reward, captions, method, options, seed, chunk)
        samples.append(measure(reward, torch.cat([r.images.float() for r in results]), captions))
        nfe_total, seconds = nfe_total + nfe / seeds, seconds + sec
        if singles:
            results, _, _ = steer_all(process, reward, singles, method, options, seed, chunk)
            single.append(checker.check(torch.cat([r.images.float() for r in results]), singles).float())
    cell = summarize(samples, nfe_total, seconds)
    if single:
        cell["single_accuracy"] = float(torch.stack(single).mean())
    cells.put(name, m, cell)


def table(rows: dict, budgets: list[int]) -> str:
    head = "| method | " + " | ".join(f"{m}× S: acc [95% CI] / reward / swap-p / div" for m in budgets) + \
        " | single-object acc (largest budget) |"
    lines = [head, "|---" * (len(budgets) + 2) + "|"]
    for name, cells in rows.items():
        out = []
        for m in budgets:
            c = cells.get(m)
            out.append("—" if c is None else f"{c['accuracy']:.1%} [{c['ci'][0]:.1%}, {c['ci'][1]:.1%}] / "
                       f"{c['reward']:.2f} / {c['swap_p']:.3f} / {c['diversity']:.3f}")
        single = cells[max(cells)].get("single_accuracy")
        lines.append(f"| {name} | " + " | ".join(out) + f" | {'—' if single is None else f'{single:.1%}'} |")
    return "\n".join(lines)


def plot(rows: dict, path: Path, n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    base = rows.get(BON[0], {}).get(1)
    if base:
        ax.axhspan(*base["ci"], color="grey", alpha=0.2)
        ax.axhline(base["accuracy"], color="grey", ls="--", label=f"base ({base['accuracy']:.0%})")
    for name, cells in rows.items():
        pts = sorted((c["nfe"], c["accuracy"], *c["ci"]) for m, c in cells.items() if m > 1)
        if pts:
            x, y = [p[0] for p in pts], [p[1] for p in pts]
            ax.errorbar(x, y, yerr=[[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]], marker="o",
                        capsize=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("NFE per caption (denoiser calls)")
    ax.set_ylabel("checker accuracy (95% CI)")
    ax.set_title(f"shapes world: held-out relational captions, {n} samples per cell")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


ROWS = ("FK", "FK tempered", "DTS*", "DTS", "beam", "zero-order", "ReNO", "SVDD", "reward guidance", "RBF", "CARINOX")
GRADIENT_ROWS = ("ReNO", "CARINOX")  # a backward pass per iteration: run at --reno-budgets only


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--captions", type=int, default=104)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--budgets", default="4,8")
    ap.add_argument("--bon-max", type=int, default=16, help="best-of-N η=0's run (gives every smaller budget)")
    ap.add_argument("--reno-budgets", default="4")
    ap.add_argument("--rows", default=",".join(BON + ROWS))
    ap.add_argument("--chunk", type=int, default=52, help="captions per method call")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=CPU_BATCH_SIZE, help="latents per denoiser call")
    ap.add_argument("--cache", default=str(Path(__file__).with_name("shapes_cells")))
    ap.add_argument("--plot", default=str(Path(__file__).with_name("shapes.png")))
    ap.add_argument("--report-only", action="store_true", help="print the table from the cache")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    cells = Cells(Path(args.cache))
    budgets = [int(b) for b in args.budgets.split(",")]
    names = args.rows.split(",")
    if not args.report_only:
        process = from_pipe(pipeline(), num_inference_steps=S, guidance_scale=DEFAULT_GUIDANCE_SCALE,
                            batch_size=args.batch_size or None)
        reward = ShapesClipReward()
        captions = relational_heldout_captions(args.captions)
        singles = sorted(world.split_captions("test")["single"])
        for name in names:
            if name in BON:
                n = args.bon_max if name == BON[0] else max(budgets)
                run_bon(process, reward, captions, singles, name, n, budgets, args.seeds, args.chunk, cells)
            else:
                row_budgets = [int(b) for b in args.reno_budgets.split(",")] if name in GRADIENT_ROWS else budgets
                for m in row_budgets:
                    run_row(process, reward, captions, singles if m == max(row_budgets) else [], name, m,
                            args.seeds, args.chunk, cells)
            print(f"{name} done [{time.time() - t0:.0f}s]", flush=True)
    rows = {k: v for k, v in sorted(cells.all().items(), key=lambda kv: (BON + ROWS).index(kv[0]))}
    all_budgets = sorted({m for c in rows.values() for m in c})
    print(table(rows, all_budgets))
    plot(rows, Path(args.plot), rows[BON[0]][1]["n"] if rows.get(BON[0], {}).get(1) else 0)
    print(f"\nplot: {args.plot}; this run {time.time() - t0:.0f}s")
    return rows


if __name__ == "__main__":
    main()
