"""Reproduce the whole shipped shapes world: two CLIPs and the text-to-image pipeline.

A base shapes CLIP, the reward CLIP fine-tuned from it, and the pipeline conditioned on the base
CLIP's text tower:

    python -m steer.zoo.shapes.train --out DIR [--clip-minutes 15] [--reward-minutes 5] [--pipeline-minutes 38]

As in the real setting -- Stable Diffusion conditions on a CLIP's text tower, while the rewards it is
steered by (PickScore, HPSv2) are CLIPs fine-tuned from a base CLIP on a harder objective -- the world
has two CLIPs: the base (``train_clip`` defaults) whose text tower becomes the pipeline's frozen text
encoder, and the reward CLIP ``shapes-clip``, the base fine-tuned with the other axis's relations
as hard negatives and equivalent spellings as positives (``train_clip``: ``perpendicular_negatives``,
``canonical_positives``, relation weight 0.5, learning rate 5e-4). Measured: trained from scratch
with that recipe the CLIP meets its targets (91.8% retrieval) but a pipeline conditioned on its text
tower reached only 17-19% on held-out relational captions, against 31% on the base recipe's tower;
the base recipe alone stops at 89% retrieval. Hence two CLIPs.

Writes ``DIR/clip`` (the reward CLIP; ``steer.zoo.shapes.clip(DIR/clip)`` loads it),
``DIR/pipeline`` (``steer.zoo.shapes.pipeline(path=DIR/pipeline)``), the same layout as the
package's ``steer/zoo/shapes/weights`` (``--out steer/zoo/shapes/weights`` replaces the shipped
models), ``DIR/base_clip`` (the base CLIP; not shipped -- its text tower is the pipeline's
``text_encoder``), and ``DIR/report.json`` with the wall-clock time of each stage and the
evaluations: both CLIPs' retrieval and relation-swap accuracy (``clip_eval``) and the pipeline's
checker accuracy on single-object and held-out relational captions. Every stage is bounded by
wall-clock minutes, so the run fits its budget on a slow machine (with fewer optimisation steps);
defaults total 58 minutes of training plus about 1 of evaluation on 2 CPU cores. The checker is only
used to evaluate.

The shipped world is one run of these defaults (2 CPU cores, 58.8 min in all; its ``report.json``):
base CLIP 1684 steps, retrieval among 100 91.8% on unseen scenes / 71.0% on held-out captions, swap
99.2% / 96.1%; reward CLIP 437 steps, 95.4% / 83.2%, swap 99.2% / 96.2%; pipeline 4454 UNet steps,
checker accuracy 100% single / 29.8% held-out relational at sampling seed 0 (mean of 4 seeds: 96.4% /
24.0%).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for clip/, pipeline/, base_clip/ and report.json")
    ap.add_argument("--clip-minutes", type=float, default=15.0, help="the base CLIP")
    ap.add_argument("--reward-minutes", type=float, default=5.0, help="fine-tuning the base into the reward CLIP")
    ap.add_argument("--pipeline-minutes", type=float, default=38.0)
    ap.add_argument("--clip-steps", type=int, default=10000, help="step cap for each CLIP (minutes usually bind)")
    ap.add_argument("--reward-lr", type=float, default=5e-4, help="reward CLIP: peak fine-tuning learning rate")
    ap.add_argument("--canonical-positives", action=argparse.BooleanOptionalAction, default=True,
                    help="reward CLIP: equivalent spellings are positives (see train_clip)")
    ap.add_argument("--perpendicular-negatives", action=argparse.BooleanOptionalAction, default=True,
                    help="reward CLIP: the other axis's relations join the hard negatives")
    ap.add_argument("--relation-weight", type=float, default=0.5, help="reward CLIP: weight of the relation term")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-images", type=int, default=30000, help="pipeline training scenes")
    ap.add_argument("--clip-pool", type=int, default=16000, help="rendered scenes each CLIP trains on")
    ap.add_argument("--eval-scenes", type=int, default=500, help="scenes per split of each CLIP's evaluation")
    ap.add_argument("--eval-captions", type=int, nargs=2, default=(48, 104), metavar=("SINGLE", "RELATION"),
                    help="single-object and held-out relational captions of the pipeline's evaluation")
    args = ap.parse_args(argv)

    import torch

    from steer.zoo.shapes import train_pipeline
    from steer.zoo.shapes.clip_eval import evaluate as evaluate_clip
    from steer.zoo.shapes.train_clip import ClipTrainConfig, train as train_clip

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:6.0f}s] {msg}", flush=True)

    base = ClipTrainConfig(out=str(out / "base_clip"), steps=args.clip_steps, max_minutes=args.clip_minutes,
                           threads=args.threads, pool=args.clip_pool)
    reward = ClipTrainConfig(out=str(out / "clip"), init=base.out, steps=args.clip_steps,
                             max_minutes=args.reward_minutes, pool=args.clip_pool,
                             lr=args.reward_lr, warmup=20, threads=args.threads,
                             relation_weight=args.relation_weight, canonical_positives=args.canonical_positives,
                             perpendicular_negatives=args.perpendicular_negatives)
    report: dict = {"threads": args.threads, "torch_threads": torch.get_num_threads(),
                    "base_clip_recipe": _recipe(base), "clip_recipe": _recipe(reward),
                    "pipeline_minutes": args.pipeline_minutes}
    for key, cfg in (("base_clip", base), ("clip", reward)):
        t1 = time.time()
        model, tokenizer = train_clip(cfg, log=log)
        report[f"{key}_seconds"] = round(time.time() - t1, 1)
        report[key] = evaluate_clip(model, tokenizer, n=args.eval_scenes)
        for name, value in report[key].items():
            log(f"{key} {name}: {value:.1%}")
    t1 = time.time()
    report["pipeline"] = train_pipeline.train(out / "pipeline", minutes=args.pipeline_minutes,
                                              n_images=args.n_images, threads=args.threads,
                                              clip_dir=base.out, log=log, eval_sizes=tuple(args.eval_captions))
    report["pipeline_seconds"] = round(time.time() - t1, 1)
    report["total_seconds"] = round(time.time() - t0, 1)
    report["weight_bytes"] = sum(p.stat().st_size for d in ("clip", "pipeline")
                                 for p in (out / d).rglob("*.safetensors"))
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"done in {report['total_seconds'] / 60:.1f} min; shipped weights {report['weight_bytes'] / 1e6:.1f} MB; "
        f"report in {out / 'report.json'}")
    return report


def _recipe(cfg) -> dict:
    keys = ("max_minutes", "lr", "relation_weight", "canonical_positives", "perpendicular_negatives")
    return {k: getattr(cfg, k) for k in keys} | {"init": "base_clip" if cfg.init else None}


if __name__ == "__main__":
    main()
